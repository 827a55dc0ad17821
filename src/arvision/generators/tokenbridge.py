"""TokenBridge generator: raster next-token generation over per-channel ids with a light
autoregressive head over the channels (Wang et al. 2025, "Bridging Continuous and Discrete Tokens
for Autoregressive Visual Generation", arXiv:2503.16430, §3.2).

A TokenBridge token is D ids, one per latent channel, each in 0..V-1 (``tokenizers/tokenbridge.py``).
A softmax over the V^D joint values is out of reach, so the backbone gives each position one
vector h and a small causal transformer over the channels (the "dimension-wise autoregressive
head") predicts channel 0 from h, channel 1 from h and channel 0, and so on: the sequence of the
head is [proj(h), E_0[id_0], ..., E_{D-2}[id_{D-2}]] + per-channel positions, AdaLN-conditioned on
proj(h), position d giving the logits of channel d through its own output layer (as in the
official ``forward_channel_ar``). Training is teacher-forced cross-entropy over every channel.

The backbone and its decoding are the raster next-token order's (``next_token.py``): same KV
cache, prefix-known skipping (editing), ``cfg_interval``. What changes: the input embedding of a
token is the sum of D per-channel embedding tables, the order's state holds (B, L, D) ids, and the
head guides inside its own sampling: the loop hands it the conditional and null rows
(:meth:`ChannelARHead.guide` defers), and :meth:`ChannelARHead.sample` runs the channels in order,
feeding both rows the same sampled ids and guiding each channel's logits (constant: uncond +
w (cond - uncond); "linear": VAR's (1 + t) cond - t uncond). The official code instead mixes the
backbone vectors once (z_uncond + w (z_cond - z_uncond)) and samples the channels from the mix, and
it permutes the channels into a frequency-based order; here the channels keep their order.

Legend: B batch, L tokens, T positions of one call, C backbone width, W head width, D channels,
V levels per channel, N rows of the head (tokens over batch and positions, row-major).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arvision.config import Config
from arvision.generators.next_token import NextTokenConfig, NextTokenGenerator
from arvision.modeling import register_model
from arvision.nn.linear import Linear
from arvision.nn.transformer import Transformer, TransformerConfig
from arvision.samplers.config import SamplingConfig
from arvision.samplers.logits import apply_guidance, sample_logits


@dataclass(frozen=True, kw_only=True)
class ChannelHeadConfig(Config):
    """Args: width, depth, num_heads, mlp_ratio: the head's causal transformer over the channels
    (TokenBridge-L: width 1024, depth 4); channels (D), bins (V) and cond_dim (the backbone width)
    are filled in from the generator's config."""

    width: int = 64
    depth: int = 1
    num_heads: int = 2
    mlp_ratio: float = 4.0
    channels: int = 1
    bins: int = 2
    cond_dim: int = 1

    def __post_init__(self) -> None:
        for name in ("width", "depth", "num_heads", "channels", "cond_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"channel head: {name} must be >= 1, got {getattr(self, name)}")
        if self.bins < 2:
            raise ValueError(f"channel head: bins must be >= 2, got {self.bins}")

    @property
    def transformer(self) -> TransformerConfig:
        """Pre-norm blocks with AdaLN on proj(h) (the official CausalBlock), GELU MLP with biases."""
        return TransformerConfig(depth=self.depth, width=self.width, num_heads=self.num_heads, conditioning="adaln",
                                 cond_dim=self.width, attention="plain", qkv_bias="qkv", proj_bias=True, norm="layernorm",
                                 norm_eps=1e-6, mlp="gelu", mlp_ratio=self.mlp_ratio, mlp_bias=True)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class TokenBridgeGenConfig(NextTokenConfig):
    """:class:`NextTokenConfig` over tokens of ``token_dim`` channel ids (``vocab_size`` = levels per
    channel), with the channel head ``channel_head`` (its sizes are filled in from this config)."""

    token_dim: int
    channel_head: ChannelHeadConfig = field(default_factory=ChannelHeadConfig)
    token_kind: ClassVar[str] = "channel-ids"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.token_dim < 1:
            raise ValueError(f"token_dim (channels per token) must be >= 1, got {self.token_dim}")
        head = self.channel_head.replace(channels=self.token_dim, bins=self.vocab_size, cond_dim=self.transformer.width)
        object.__setattr__(self, "channel_head", head)


@dataclass
class GuidedChannels:
    """The head's conditioning vectors of a guided step, (B, T, W) each: guidance acts on every
    channel's logits inside :meth:`ChannelARHead.sample`, so :meth:`ChannelARHead.guide` defers it."""

    cond: Tensor
    uncond: Tensor
    weight: float
    schedule: str


class ChannelEmbedding(nn.Module):
    """Ids (..., D) -> the sum of D per-channel embeddings (..., C): one (D * V, C) table, channel d
    at rows d V .. d V + V - 1."""

    def __init__(self, channels: int, bins: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels * bins, dim))
        self.register_buffer("offsets", torch.arange(channels) * bins, persistent=False)
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids + self.offsets, self.weight).sum(-2)


class ChannelARHead(nn.Module):
    """Backbone vectors h (B, T, C) -> per-channel logits, channel d given h and channels < d."""

    own_settings = ("top_k", "top_p")  # the sampling settings it reads (besides temperature)

    def __init__(self, config: ChannelHeadConfig) -> None:
        super().__init__()
        self.config = c = config
        D, V, W = c.channels, c.bins, c.width
        self.proj = Linear(c.cond_dim, W)  # official ``condition_proj``
        self.prev_embed = ChannelEmbedding(max(D - 1, 1), V, W)  # inputs: channels 0..D-2
        self.pos_embed = nn.Parameter(torch.zeros(D, W))
        self.blocks = Transformer(c.transformer)
        self.out_weight = nn.Parameter(torch.empty(D, V, W))  # one output layer per channel
        self.out_bias = nn.Parameter(torch.zeros(D, V))
        self.init_weights()

    def init_weights(self, std: float = 0.02) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for p in (self.prev_embed.weight, self.pos_embed, self.out_weight):
            nn.init.trunc_normal_(p, std=std)
        nn.init.zeros_(self.out_bias)

    def forward(self, h_BTC: Tensor) -> Tensor:
        """The head's conditioning vectors (B, T, W): what a decoding step returns to the loop."""
        return self.proj(h_BTC)

    # -- the channel transformer -----------------------------------------------------------------
    def channel_logits(self, cond_NW: Tensor, prev_Nk: Tensor) -> Tensor:
        """Logits (N, k + 1, V) of channels 0..k given the first k channels' ids (N, k)."""
        N, k = prev_Nk.shape
        x = cond_NW.unsqueeze(1)
        if k:
            emb = F.embedding(prev_Nk + self.prev_embed.offsets[:k], self.prev_embed.weight)  # (N, k, W)
            x = torch.cat([x, emb], 1)
        x = self.blocks(x + self.pos_embed[: k + 1], cond_BD=cond_NW, is_causal=True)
        return torch.einsum("nkw,kvw->nkv", x, self.out_weight[: k + 1]) + self.out_bias[: k + 1]

    def logits(self, cond_BTW: Tensor, ids_BTD: Tensor) -> Tensor:
        """Teacher-forced logits (B, T, D, V): channel d sees the true ids of channels < d."""
        B, T, D = ids_BTD.shape
        out = self.channel_logits(cond_BTW.reshape(B * T, -1), ids_BTD.reshape(B * T, D)[:, : D - 1])
        return out.view(B, T, D, -1)

    def loss(self, logits_BTDV: Tensor, ids_BTD: Tensor, weights_T: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Cross-entropy over every channel (optionally weighted over positions) and channel accuracy."""
        V = logits_BTDV.shape[-1]
        ce_BTD = F.cross_entropy(logits_BTDV.reshape(-1, V).float(), ids_BTD.reshape(-1), reduction="none").view(ids_BTD.shape)
        if weights_T is None:
            loss = ce_BTD.mean()
        else:
            loss = (ce_BTD.mean(-1) * weights_T).sum(1).mean() / weights_T.sum()
        acc = (logits_BTDV.argmax(-1) == ids_BTD).float().mean()
        return loss, acc

    # -- the decoding loop's head protocol (arvision.samplers.order.Head) --
    def guide(self, cond_BTW: Tensor, uncond_BTW: Tensor, weight: float, schedule: str) -> GuidedChannels:
        """Defer guidance to every channel's logits (see :meth:`sample`)."""
        return GuidedChannels(cond_BTW, uncond_BTW, weight, schedule)

    @torch.no_grad()
    def sample(self, out: Tensor | GuidedChannels, s: SamplingConfig, rng: torch.Generator | None) -> Tensor:
        """Ids (B, T, D): channel 0, then 1 given 0, ...; each channel's logits guided (when ``out``
        is guided) by ``apply_guidance``, then temperature / top-k / top-p and one draw from ``rng``
        per channel (rows in (b, t) order). Both halves of a guided batch see the same sampled ids."""
        guided = isinstance(out, GuidedChannels)
        cond = out.cond if guided else out
        if cond.ndim != 3:
            raise ValueError(f"expected the head's conditioning vectors (B, T, W), got shape {tuple(cond.shape)}")
        B, T, W = cond.shape
        N, D = B * T, self.config.channels
        rows = torch.cat([out.cond.reshape(N, W), out.uncond.reshape(N, W)]) if guided else cond.reshape(N, W)
        ids = torch.zeros(N, 0, dtype=torch.long, device=cond.device)
        with torch.autocast(cond.device.type, enabled=False):  # the head samples: fp32 even under bf16 sampling
            return self._sample_channels(rows.float(), ids, out, s, rng, guided).view(B, T, D)

    def _sample_channels(self, rows: Tensor, ids: Tensor, out, s: SamplingConfig, rng, guided: bool) -> Tensor:
        N, D = ids.shape[0], self.config.channels
        for d in range(D):
            prev = torch.cat([ids, ids]) if guided else ids
            logits = self.channel_logits(rows, prev)[:, d].float()  # (R, V); causal prefix: channels < d unchanged; fp32 under bf16
            if guided:
                logits = apply_guidance(logits[:N], logits[N:], out.weight, out.schedule)
            nxt = sample_logits(logits, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, generator=rng)
            ids = torch.cat([ids, nxt.unsqueeze(1)], 1)
        return ids


@register_model
class TokenBridgeGenerator(NextTokenGenerator):
    """Class-conditional raster-order generator over TokenBridge's per-channel ids (B, L, D)."""

    model_type = "tokenbridge_generator"
    config_class = TokenBridgeGenConfig
    config: TokenBridgeGenConfig
    layout_map = {"grid_size": "side", "token_dim": "code_dim"}

    def build_token_embedding(self) -> nn.Module:
        c = self.config
        return ChannelEmbedding(c.token_dim, c.vocab_size, c.transformer.width)

    def build_head(self) -> nn.Module:
        return ChannelARHead(self.config.channel_head)

    def forward(self, tokens_BL: Tensor, labels_B: Tensor) -> Tensor:
        """Teacher-forced logits (B, L, D, V): token l from the class and the tokens < l (the
        backbone), channel d from the channels < d of token l (the head)."""
        return self.head.logits(self.head(self.hidden(tokens_BL, labels_B)), tokens_BL)

    def reference_logits(self, tokens_BL: Tensor, labels_B: Tensor, tokenizer=None) -> Tensor:
        """The head's conditioning vectors (B, L, W) with every token known: what each decoding step
        returns (a step's channel logits depend on the ids it samples)."""
        return self.head(self.hidden(tokens_BL, labels_B))
