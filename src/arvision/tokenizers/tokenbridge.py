"""TokenBridge tokenizer: a frozen KL autoencoder + post-training dimension-wise quantization.

TokenBridge (Wang et al. 2025, "Bridging Continuous and Discrete Tokens for Autoregressive Visual
Generation", arXiv:2503.16430, §3.1) keeps the continuous tokenizer as it was trained and
discretizes its latents afterwards, with no gradient training: every channel of a token is
quantized *independently* to B levels. The official recipe (github.com/YuqingWang1029/TokenBridge,
``models/tokenbridge.py``) maps each channel onto a standard-normal scale clipped to +-3 sigma,
cuts it into B bins of equal probability under N(0, 1) (the bins are narrow where the latents are
dense) and decodes a bin to the mean of the truncated normal over it; a value goes to the nearest
such centre. The official code uses one fixed range for every channel ([-5, 5] <-> +-3 sigma); here
the per-channel mean and standard deviation are fitted on the training latents (:func:`fit_stats`),
so the same recipe fits any KL autoencoder. ``method="uniform"`` (B equal-width bins on +-clip
sigma, centred) is the plain alternative the paper compares against.

An image's tokens are the KL tokens (raster order, channels last) as ids: (B, L, D) int64, each in
0..bins-1; :meth:`TokenBridgeTokenizer.dequantize` maps them back to the bin centres (B, L, D) and
:meth:`~TokenBridgeTokenizer.decode` decodes those with the KL decoder.

Legend: B batch, C channels, H/W image side, L tokens, D token channels, V bins (levels per channel),
N values of one channel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor

from arvision.config import Config
from arvision.modeling import register_model
from arvision.tokenizers.base import Tokenizer
from arvision.tokenizers.kl import KLConfig, KLTokenizer
from arvision.tokenizers.layout import TokenLayout

METHODS = ("gaussian", "uniform")


@dataclass(frozen=True, kw_only=True)
class TokenBridgeConfig(Config):
    """Args:
        kl: the frozen KL autoencoder's config (its weights are stored in this model's file).
        bins: V, levels per channel (TokenBridge: 64 on ImageNet; 16 suffice for MNIST).
        method: "gaussian" (TokenBridge: equal-probability bins of N(0, 1), truncated-normal
            means as centres) or "uniform" (equal-width bins).
        clip_std: channels are clipped to mean +- clip_std * std before quantization (TokenBridge: 3).
    """

    kl: KLConfig
    bins: int = 16
    method: str = "gaussian"
    clip_std: float = 3.0

    def __post_init__(self) -> None:
        if not isinstance(self.kl, KLConfig):
            raise TypeError(f"kl must be a KLConfig (the continuous tokenizer's config), got {type(self.kl).__name__}")
        if isinstance(self.bins, bool) or not isinstance(self.bins, int) or self.bins < 2:
            raise ValueError(f"bins must be an integer >= 2 (levels per channel), got {self.bins!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not (math.isfinite(self.clip_std) and self.clip_std > 0):
            raise ValueError(f"clip_std must be a finite number > 0 (the clipping range in standard deviations), "
                             f"got {self.clip_std}")  # fmt: skip

    # what the code that handles any tokenizer reads from ``tokenizer.config``
    @property
    def image_size(self) -> int:
        return self.kl.image_size

    @property
    def in_channels(self) -> int:
        return self.kl.in_channels

    @property
    def latent_size(self) -> int:
        return self.kl.latent_size


def standard_levels(bins: int, method: str, clip: float) -> Tensor:
    """The V centres (float64, ascending) of one channel on the standardised scale.

    "gaussian": boundaries Phi^-1(k / V), k = 0..V, clipped to +-clip; each centre is the mean of
    N(0, 1) truncated to its bin (official ``_init_gaussian_quantization``). "uniform": the
    midpoints of V equal bins of [-clip, clip].
    """
    if method == "uniform":
        return -clip + (torch.arange(bins, dtype=torch.float64) + 0.5) * (2 * clip / bins)
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    p = torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1]
    edges = torch.cat([torch.tensor([-clip], dtype=torch.float64), normal.icdf(p).clamp(-clip, clip),
                       torch.tensor([clip], dtype=torch.float64)])  # fmt: skip
    a, b = edges[:-1], edges[1:]
    pdf = lambda x: torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)  # noqa: E731
    mass = normal.cdf(b) - normal.cdf(a)
    # a bin squeezed to nothing by the clip (V large vs clip) keeps its midpoint
    return torch.where(mass > 1e-12, (pdf(a) - pdf(b)) / mass.clamp_min(1e-300), (a + b) / 2)


def fit_stats(tokens: Iterable[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-channel mean and standard deviation (D,) of continuous tokens (B, L, D) given in
    batches, accumulated in float64 (the order of the batches does not matter beyond rounding)."""
    n, total, sq = 0, None, None
    for t in tokens:
        x = t.detach().reshape(-1, t.shape[-1]).double().cpu()
        n += x.shape[0]
        total = x.sum(0) if total is None else total + x.sum(0)
        sq = x.square().sum(0) if sq is None else sq + x.square().sum(0)
    if not n:
        raise ValueError("no tokens to fit the quantization on: the dataset is empty")
    mean = total / n
    std = (sq / n - mean.square()).clamp_min(0).sqrt()
    return mean, std.clamp_min(1e-6)  # a dead channel gets a tiny range instead of a division by 0


@register_model
class TokenBridgeTokenizer(Tokenizer):
    """Images (B, C, H, W) <-> per-channel ids (B, L, D) of a frozen KL autoencoder's tokens."""

    model_type = "tokenbridge_tokenizer"
    config_class = TokenBridgeConfig
    config: TokenBridgeConfig

    def __init__(self, config: TokenBridgeConfig) -> None:
        super().__init__(config)
        self.kl = KLTokenizer(config.kl).requires_grad_(False)
        D = config.kl.embed_dim
        # (D, V) bin centres in token units; until fitted, every channel is taken as N(0, 1)
        self.register_buffer("centers", self.levels(torch.zeros(D, dtype=torch.float64), torch.ones(D, dtype=torch.float64)))

    def levels(self, mean_D: Tensor, std_D: Tensor) -> Tensor:
        """(D, V) float32 centres for per-channel mean and std: mean + std * standard levels."""
        c = self.config
        z = standard_levels(c.bins, c.method, c.clip_std)
        return (mean_D.double()[:, None] + std_D.double()[:, None] * z[None]).float()

    # -- layout ---------------------------------------------------------------------------------
    @property
    def grid_size(self) -> int:
        return self.kl.grid_size

    @property
    def embed_dim(self) -> int:
        return self.kl.embed_dim

    @property
    def codebook_size(self) -> int:
        """Levels per channel (what the training loop's token cache and the codebook statistics read)."""
        return self.config.bins

    @property
    def layout(self) -> TokenLayout:
        n = self.grid_size
        return TokenLayout("grid", self.config.bins, grid=(n, n), code_dim=self.embed_dim, channel_bins=self.config.bins)

    # -- fitting (no gradients) -----------------------------------------------------------------
    @torch.no_grad()
    def fit_tokens(self, tokens: Iterable[Tensor]) -> dict[str, list[float]]:
        """Fit the per-channel range on continuous KL tokens (B, L, D) given in batches; returns
        the fitted mean and std per channel (also kept in ``info["quantization"]``)."""
        mean, std = fit_stats(tokens)
        if mean.numel() != self.embed_dim:
            raise ValueError(f"the tokens have {mean.numel()} channels but the KL tokenizer gives {self.embed_dim}")
        self.centers.copy_(self.levels(mean, std))
        fitted = {"mean": [round(v, 6) for v in mean.tolist()], "std": [round(v, 6) for v in std.tolist()]}
        c = self.config
        self.info["quantization"] = {"bins": c.bins, "method": c.method, "clip_std": c.clip_std, **fitted}
        return fitted

    @torch.no_grad()
    def fit(self, images: Iterable[Tensor], *, base: KLTokenizer | None = None) -> "TokenBridgeTokenizer":
        """Post-training quantization: take the KL weights of ``base`` (a trained KL tokenizer, e.g.
        ``arvision.load("mnist-kl")``; None keeps the ones in place) and fit the bins on the KL tokens
        of ``images`` (batches (B, C, H, W) in [-1, 1]). Deterministic: no randomness is involved."""
        if base is not None:
            if not isinstance(base, KLTokenizer):
                raise ValueError(f"TokenBridge quantizes a KL tokenizer's continuous tokens; base is a {type(base).__name__}")
            if base.config != self.config.kl:
                raise ValueError("the base KL tokenizer's config differs from this TokenBridge config's `kl`: build the config "
                                 "from it, TokenBridgeConfig(kl=base.config, bins=...)")  # fmt: skip
            self.kl.load_state_dict(base.state_dict())
        self.kl.eval()
        device = self.centers.device
        self.fit_tokens(self.kl.encode(x.to(device)) for x in images)
        return self

    # -- quantization ---------------------------------------------------------------------------
    def quantize_tokens(self, tokens_BLD: Tensor) -> Tensor:
        """Continuous tokens (B, L, D) -> ids (B, L, D) int64: the nearest bin centre per channel
        (values beyond the outer centres go to the outer bins, i.e. they are clipped)."""
        self.kl.check_tokens(tokens_BLD)
        c = self.centers
        mids_DV1 = (c[:, 1:] + c[:, :-1]) / 2
        x_DN = tokens_BLD.to(c.dtype).reshape(-1, self.embed_dim).T.contiguous()
        ids_DN = torch.searchsorted(mids_DV1.contiguous(), x_DN)
        return ids_DN.T.reshape(tokens_BLD.shape)

    def dequantize(self, ids_BLD: Tensor) -> Tensor:
        """Ids (B, L, D) -> the bin centres (B, L, D) float: the continuous tokens decoding uses."""
        self.check_tokens(ids_BLD)
        ids = ids_BLD.to(self.centers.device).long()
        D = self.embed_dim
        return self.centers[torch.arange(D, device=ids.device), ids]  # (B, L, D): centre[d, ids[..., d]]

    # -- encode / decode ------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images (B, C, H, W) in [-1, 1] -> ids (B, L, D) int64 (the KL posterior means, quantized)."""
        return self.quantize_tokens(self.kl.encode(images))

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        """Ids (B, L, D) -> images (B, C, H, W) through the bin centres and the KL decoder."""
        return self.kl.decode(self.dequantize(tokens))

    def forward(self, images_BCHW: Tensor) -> Tensor:
        raise RuntimeError("a TokenBridge tokenizer is not trained by gradients: it is fitted on the latents of a trained KL "
                           "tokenizer (tokenizer.fit(batches, base=kl), or `arvision train tokenizer --preset mnist-tokenbridge`)")  # fmt: skip

    def check_tokens(self, tokens: Tensor) -> None:
        L, D, V = self.num_tokens, self.embed_dim, self.config.bins
        if not isinstance(tokens, Tensor) or tokens.ndim != 3 or tuple(tokens.shape[1:]) != (L, D):
            got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be (B, {L}, {D}) integer ids, one per token and channel (raster order, channels "
                             f"last), got {got}")  # fmt: skip
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise TypeError(f"TokenBridge tokens are integer ids (B, {L}, {D}), got dtype {tokens.dtype}; continuous tokens "
                            "belong to the KL tokenizer (quantize them with quantize_tokens)")  # fmt: skip
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= V):
            raise ValueError(f"token ids must be in [0, {V}) (the {V} levels per channel), "
                             f"got [{tokens.min().item()}, {tokens.max().item()}]")  # fmt: skip

