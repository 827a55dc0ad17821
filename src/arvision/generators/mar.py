"""MAR: masked autoregressive generation over continuous tokens (Li et al. 2024, arXiv:2406.11838).

No vector quantization: the tokens are a KL autoencoder's latents (B, L, D), and every token's
distribution is a small diffusion model (:mod:`arvision.generators.diffusion`) conditioned on
the backbone's vector z for that position. The backbone is MAE-shaped, two instances of the
shared transformer:

* **encoder** over the *visible* tokens only, after ``buffer_size`` leading positions that all
  hold the class embedding (``z_proj`` -> + learned positions -> ``z_proj_ln`` -> blocks -> norm);
* **decoder** over every position: the encoder's outputs where a token is visible, a learned
  ``mask_token`` where it is not (+ learned positions -> blocks -> norm), then + a learned
  "diffusion position" per token: z (B, L, C_dec).

Training masks a random share of each image (a truncated normal on [mask_ratio_min, 1], one draw
per batch, as in MAR; or MaskGIT's cosine share per image, ``mask_schedule``) in a random order
and trains the head on the masked tokens. Sampling (:class:`MarOrder`) starts from an all-masked
image and, in ``num_steps`` steps, fills the tokens of a random order on MAR's cosine schedule,
each by running the diffusion head.

Official checkpoints (LTH14/mar) load unchanged through ``arvision.convert.from_mar``: the
parameter names below are MAR's except ``encoder_blocks``/``decoder_blocks`` (here
``encoder.blocks``/``decoder.blocks``), ``encoder_norm``/``decoder_norm`` (``encoder.norm``,
``decoder.norm``), ``class_emb`` + ``fake_latent`` (one table whose last row is the null class)
and ``diffloss`` (``head``). Differences from the official code: no dropout in the blocks (MAR
trains with 0.1 attention/projection dropout), and the random order comes from the caller's
``torch.Generator`` (MAR draws it with numpy's global generator); given the same order, the
sampling run is the official one draw for draw.

Legend: B batch, R rows (2B when guiding), L tokens, D token channels, C width, N rows of the head.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from arvision.generators.base import Generator, GeneratorConfig
from arvision.generators.diffusion import DiffusionHead, DiffusionHeadConfig, GuidedRows
from arvision.generators.masked import cosine_training_mask, random_mask
from arvision.generators.parts import ClassCondition, match_rows
from arvision.modeling import PretrainedModel, register_model
from arvision.nn.kv_cache import KVCache
from arvision.nn.transformer import Transformer, TransformerConfig
from arvision.samplers.config import SamplingConfig
from arvision.samplers.order import DecodeState, Order, Sampler, Step, check_num_steps, register_order
from arvision.samplers.rng import RowStreams, rand


def mar_backbone(depth: int, width: int, heads: int) -> TransformerConfig:
    """MAR's blocks (timm ViT): LayerNorm eps 1e-6, qkv and projection biases, exact-GELU MLP 4x."""
    return TransformerConfig(depth=depth, width=width, num_heads=heads, conditioning="prefix", attention="plain",
                             qkv_bias="qkv", proj_bias=True, norm="layernorm", norm_eps=1e-6, mlp="gelu-exact",
                             mlp_bias=True)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class MarConfig(GeneratorConfig):
    """Args (see the module docstring):
        transformer / decoder: the encoder's and the decoder's blocks (``mar_backbone``).
        grid_size: side n of the token grid (L = n*n); token_dim: channels D of a token.
        buffer_size: leading class positions of the encoder (MAR: 64).
        mask_ratio_min: the training mask share is drawn from a normal (mean 1, std 0.25)
            truncated to [mask_ratio_min, 1] (``mask_schedule="mar"``).
        mask_schedule: how training draws the share of masked tokens. "mar" (MAR's): one share per
            batch from the truncated normal above, so at most ``1 - mask_ratio_min`` of the tokens
            are ever visible in training, while sampling's last steps see up to ``1 - 1/L``; the
            loss of a short-trained model then rises again as more tokens are known (``mnist-mar``,
            docs/calibration.md). "cosine" (MaskGIT's): a share cos(pi/2 u), u ~ U(0, 1), per image,
            the distribution of the masked share over the steps of sampling's cosine schedule;
            at least one token masked; ``mask_ratio_min`` is not used.
        head: the diffusion head (its token_dim / cond_dim are filled in from this config).
    """

    vocab_size: int = 0  # continuous tokens
    decoder: TransformerConfig
    grid_size: int
    token_dim: int
    buffer_size: int = 64
    mask_ratio_min: float = 0.7
    mask_schedule: Literal["mar", "cosine"] = "mar"
    head: DiffusionHeadConfig = field(default_factory=lambda: DiffusionHeadConfig(token_dim=1, cond_dim=1))
    token_kind: ClassVar[str] = "vectors"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.grid_size < 1 or self.token_dim < 1 or self.buffer_size < 1:
            raise ValueError("grid_size, token_dim and buffer_size must be >= 1")
        if not 0 < self.mask_ratio_min <= 1:
            raise ValueError(f"mask_ratio_min must be in (0, 1], got {self.mask_ratio_min}")
        if self.mask_schedule not in ("mar", "cosine"):
            raise ValueError(f"mask_schedule must be 'mar' (MAR's truncated normal) or 'cosine' (MaskGIT's), got {self.mask_schedule!r}")
        for t in (self.transformer, self.decoder):
            if t.conditioning != "prefix":
                raise ValueError("MAR's blocks take the class through the buffer positions: use conditioning='prefix'")
        # the head's sizes follow the token and the decoder
        object.__setattr__(self, "head", self.head.replace(token_dim=self.token_dim, cond_dim=self.decoder.width))

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2


def mar_mask_lengths(num_tokens: Tensor | int, steps: int) -> list[Tensor]:
    """Tokens still masked after each of ``steps`` steps (per row for a tensor of open counts):
    MAR's rule, max(1, min(open - 1, floor(n cos(pi/2 (t + 1) / S)))) and 0 after the last step."""
    n = torch.as_tensor(num_tokens)
    left, out = n.clone(), []
    for t in range(steps):
        if t == steps - 1:
            m = torch.zeros_like(n)
        else:
            m = torch.floor(n.double() * math.cos(math.pi / 2 * (t + 1) / steps)).long()
            m = torch.minimum(torch.clamp(torch.minimum(left - 1, m), min=1), left)
        out.append(m)
        left = m
    return out


def truncated_normal(lo: float, hi: float, mean: float, std: float, generator: torch.Generator | None, device) -> float:
    """One draw of N(mean, std^2) truncated to [lo, hi] (inverse CDF)."""
    a, b = (torch.tensor([(lo - mean) / std, (hi - mean) / std], dtype=torch.float64)).unbind()
    u = torch.rand(1, generator=generator, device=device, dtype=torch.float64).cpu()
    p = torch.special.ndtr(a) + u * (torch.special.ndtr(b) - torch.special.ndtr(a))
    return float((mean + std * torch.special.ndtri(p)).clamp(lo, hi))


def select_rows(out: Tensor | GuidedRows, m_BL: Tensor) -> Tensor | GuidedRows:
    """The (1, N, C) rows of ``out`` (B, L, C) where ``m_BL``, in (image, position) order; both halves
    of guided rows."""
    if isinstance(out, GuidedRows):
        return dataclasses.replace(out, cond=out.cond[m_BL].unsqueeze(0), uncond=out.uncond[m_BL].unsqueeze(0))
    return out[m_BL].unsqueeze(0)


@register_order
class MarOrder(Order):
    """``num_steps`` passes; each fills the open tokens that leave MAR's cosine schedule, in a
    random order drawn once per image (known tokens go last in it: they are never masked)."""

    name = "mar"
    own_settings = ("num_steps",)

    def plan(self, s: SamplingConfig) -> list[Step]:
        S, L = s.num_steps or self.generator.default_steps, self.generator.num_tokens
        check_num_steps(S, L, "the grid")
        # guidance reads the share decided after each step as MAR computes it: its last step counts
        # one token as still masked (the rule's max(1, ...)) although it fills every token
        left = [max(int(m), 1) for m in mar_mask_lengths(L, S)]
        return [Step(t, t, 0, L, sub=t, subs=S, progress=(L - left[t]) / L) for t in range(S)]

    def update(self, state: DecodeState, step: Step, out: Tensor | GuidedRows, sampler: Sampler) -> None:
        B, L = state.open_BL.shape
        if step.sub == 0:
            if "orders" not in state.extra:  # the random order (a caller may set its own)
                keys = rand((B, L), sampler.rng, device=state.open_BL.device) + state.known_BL
                state.extra["orders"] = keys.argsort(dim=1, stable=True)
            state.extra["rank"] = state.extra["orders"].argsort(1)  # position -> its place in the order
            state.extra["left"] = mar_mask_lengths(state.open_BL.sum(1), step.subs)
        rank = state.extra["rank"]
        still = (rank < state.extra["left"][step.sub].to(rank.device).unsqueeze(1)) & state.open_BL
        fill = state.open_BL & ~still
        if bool(fill.any()):
            rows = select_rows(out, fill)
            if isinstance(sampler.rng, RowStreams):  # the rows are tokens of several images: each from its image's stream
                sampler = Sampler(sampler.settings, sampler.rng.regroup(fill.nonzero()[:, 0]), sampler.head)
            state.tokens_BL[fill] = sampler.sample(rows)[0].to(state.tokens_BL.dtype)
        state.open_BL = still


@register_model
class MarGenerator(Generator):
    """Class-conditional MAR over a grid of continuous tokens (config: :class:`MarConfig`)."""

    model_type = "mar_generator"
    config_class = MarConfig
    config: MarConfig
    order_class = MarOrder
    layout_map = {"grid_size": "side", "token_dim": "code_dim"}
    default_steps = 8

    def __init__(self, config: MarConfig) -> None:
        PretrainedModel.__init__(self, config)  # not Generator's parts: MAR has its own encoder-decoder
        enc, dec, L, buf = config.transformer, config.decoder, config.num_tokens, config.buffer_size
        self.class_emb = ClassCondition(config.num_classes, enc.width)
        self.z_proj = nn.Linear(config.token_dim, enc.width)
        self.z_proj_ln = nn.LayerNorm(enc.width, eps=1e-6)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, buf + L, enc.width))
        self.encoder = Transformer(enc)
        self.decoder_embed = nn.Linear(enc.width, dec.width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec.width))
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, buf + L, dec.width))
        self.decoder = Transformer(dec)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, L, dec.width))
        self.head = DiffusionHead(config.head)
        self.init_weights()

    @property
    def num_tokens(self) -> int:
        return self.config.num_tokens

    def new_cache(self, batch_size: int) -> None:
        return None  # every step recomputes the grid bidirectionally

    def init_weights(self) -> None:
        """MAR's init: xavier-uniform linears with zero biases, N(0, 0.02) embeddings and positions."""
        for name, m in self.named_modules():
            if name.startswith("head"):
                continue  # the head has its own init
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for p in (self.class_emb.weight, self.mask_token, self.encoder_pos_embed_learned, self.decoder_pos_embed_learned,
                  self.diffusion_pos_embed_learned):  # fmt: skip
            nn.init.normal_(p, std=0.02)

    # -- the network ---------------------------------------------------------------------------------
    def encoder_features(self, tokens_BLD: Tensor, masked_BL: Tensor, cond_BC: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """The encoder over the buffer and the visible tokens: (outputs (B, n, C_enc), which of the
        buffer + L positions they are (B, buf + L), which outputs are real (B, n) or None when every
        row has the same n)."""
        B, L, _ = tokens_BLD.shape
        buf = self.config.buffer_size
        keep = torch.cat([masked_BL.new_ones(B, buf), ~masked_BL], 1)  # (B, buf + L)
        x = torch.cat([cond_BC.unsqueeze(1).expand(B, buf, -1), self.z_proj(tokens_BLD)], 1)
        x = self.z_proj_ln(x + self.encoder_pos_embed_learned)
        counts = keep.sum(1)
        if bool((counts == counts[0]).all()):  # MAR's path: the same number of visible tokens per row
            h = self.encoder(x[keep].view(B, int(counts[0]), -1))
            valid = None
        else:  # rows differ (editing): pad to the longest row, padded keys masked out
            n = int(counts.max())
            idx = (~keep).to(torch.int8).argsort(dim=1, stable=True)[:, :n]
            valid = torch.arange(n, device=x.device) < counts.unsqueeze(1)
            mask = valid[:, None, None, :]  # (B, 1, 1, n): who may be attended to
            h = self.encoder(x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1])), attn_mask=mask)
        return h, keep, valid

    def features(self, tokens_BLD: Tensor, masked_BL: Tensor, cond_BC: Tensor) -> Tensor:
        """z (B, L, C_dec): what the diffusion head is conditioned on, for every position, given the
        visible tokens (``masked_BL`` False) and the class embeddings ``cond_BC``."""
        h, keep, valid = self.encoder_features(tokens_BLD, masked_BL, cond_BC)
        B, buf, L = h.shape[0], self.config.buffer_size, tokens_BLD.shape[1]
        h = self.decoder_embed(h)
        y = self.mask_token.to(h.dtype).expand(B, buf + L, -1).clone()
        if valid is None:
            y[keep] = h.reshape(-1, h.shape[-1])
        else:
            y[keep] = h[valid]
        y = self.decoder(y + self.decoder_pos_embed_learned)
        return y[:, buf:] + self.diffusion_pos_embed_learned

    def reference_logits(self, tokens_BL: Tensor, labels_B: Tensor, tokenizer=None) -> Tensor:
        """z (B, L, C_dec) with every token visible (what each step computes when all are known)."""
        return self.features(tokens_BL, torch.zeros(tokens_BL.shape[:2], dtype=torch.bool, device=tokens_BL.device),
                             self.class_emb.encode(labels_B))  # fmt: skip

    def step(self, state: DecodeState, step: Step, cond_RD: Tensor, cache: KVCache | None = None) -> Tensor:
        """z (R, L, C_dec) of the whole grid given the decided tokens (the open ones are masked)."""
        R = cond_RD.shape[0]
        return self.features(match_rows(state.tokens_BL, R), match_rows(state.open_BL, R), cond_RD)

    # -- training ------------------------------------------------------------------------------------
    def training_inputs(self, tokens_BL: Tensor, labels_B: Tensor, tokenizer,
                        generator: torch.Generator | None = None) -> tuple[dict, dict]:  # fmt: skip
        """ceil(L * share) tokens of a random order per image masked; the share from the config's
        ``mask_schedule`` (MAR: one per batch from the truncated normal; cosine: one per image)."""
        B, L = tokens_BL.shape[:2]
        if self.config.mask_schedule == "cosine":
            masked = cosine_training_mask(B, L, generator, tokens_BL.device)
        else:
            share = truncated_normal(self.config.mask_ratio_min, 1.0, 1.0, 0.25, generator, tokens_BL.device)
            masked = random_mask(math.ceil(L * share), B, L, generator, tokens_BL.device)
        return {"tokens_BL": tokens_BL, "labels_B": labels_B, "masked_BL": masked, "rng": generator}, {}

    def forward(self, tokens_BL: Tensor, labels_B: Tensor, masked_BL: Tensor, rng: torch.Generator | None = None) -> Tensor:
        """The training loss: the diffusion head's loss on the masked tokens."""
        if not torch.isfinite(tokens_BL).all():
            raise ValueError("the tokens contain NaN/inf: check the tokenizer's latents (a diverged KL autoencoder?)")
        z = self.features(tokens_BL, masked_BL, self.class_emb(labels_B))
        return self.head.loss(z.flatten(0, 1), tokens_BL.flatten(0, 1), masked_BL.flatten().float(), rng=rng)

    def training_loss(self, loss: Tensor, tokens_BL: Tensor, extra: dict) -> tuple[Tensor, Tensor]:
        return loss, loss.new_tensor(float("nan"))  # no token accuracy for continuous tokens

