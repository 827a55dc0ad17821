"""VQ grid tokenizer (LlamaGen's VQ-16/VQ-8 design; Sun et al. 2024, arXiv:2406.06525, §2.1).

An image becomes an h x w grid of codebook ids, flattened in raster order to (B, h*w). The
quantizer is a part: a learned codebook (``vq``, LlamaGen), finite scalar levels (``fsq``),
lookup-free bits (``lfq``) or binary spherical bits (``bsq``), or K factorized sub-codebooks
(``fq``, FQGAN); see :mod:`arvision.tokenizers.implicit`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from arvision.modeling import register_model
from arvision.tokenizers.base import AutoencoderConfig, ConvTokenizer
from arvision.tokenizers.layout import TokenLayout
from arvision.tokenizers.implicit import MAX_BITS, FactorizedQuantizer, FSQuantizer, LookupFreeQuantizer, check_fsq_levels
from arvision.tokenizers.quantizers import VectorQuantizer

QUANTIZERS = ("vq", "fsq", "lfq", "bsq", "fq")


@dataclass(frozen=True, kw_only=True)
class VQConfig(AutoencoderConfig):
    """:class:`AutoencoderConfig` plus the quantizer.

    Args:
        quantizer: "vq" (learned codebook), "fsq", "lfq", "bsq" or "fq" (factorized codebooks).
        l2_norm: vq: cosine nearest-neighbour codes (LlamaGen default).
        levels: fsq: levels per channel; needs codebook_dim = len(levels), codebook_size = prod(levels).
        entropy_weight: lfq/bsq: weight of the entropy penalty; needs codebook_size = 2^codebook_dim.
        num_codebooks: fq: K sub-codebooks of codebook_size^(1/K) codes, each on codebook_dim/K channels.
        disentangle_weight: fq: weight of FQGAN's disentanglement loss.
    """

    quantizer: str = "vq"
    l2_norm: bool = True
    levels: tuple[int, ...] = ()
    entropy_weight: float = 0.1
    num_codebooks: int = 1
    disentangle_weight: float = 0.1

    def check_bottleneck(self) -> None:
        super().check_bottleneck()
        q, D, V = self.quantizer, self.codebook_dim, self.codebook_size
        if q not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {q!r}")
        if q != "fsq" and self.levels:
            raise ValueError(f"levels are the settings of the fsq quantizer, not of {q!r}; drop them or set quantizer='fsq'")
        if q != "fq" and self.num_codebooks != 1:
            raise ValueError(f"num_codebooks is a setting of the fq quantizer, not of {q!r}; drop it or set quantizer='fq'")
        if q == "fsq":
            check_fsq_levels(self.levels, D, V)
        if q in ("lfq", "bsq"):
            if D > MAX_BITS:
                raise ValueError(f"{q} with codebook_dim={D} would have 2^{D} codes; at most {MAX_BITS} bits are supported "
                                 "(a generator's softmax over more ids is impractical): lower codebook_dim")  # fmt: skip
            if V != 2**D:
                raise ValueError(f"{q} has one bit per channel: codebook_dim={D} gives 2^{D} = {2**D} codes, "
                                 f"but codebook_size is {V}; set codebook_size={2**D}")  # fmt: skip
        if q == "fq":
            K = self.num_codebooks
            if K < 2:
                raise ValueError(f"fq needs num_codebooks >= 2 (K sub-codebooks), got {K}; use quantizer='vq' for one codebook")
            if D % K:
                raise ValueError(f"fq: num_codebooks={K} must divide codebook_dim={D} (each sub-codebook takes D/K channels)")
            if self.sub_codebook_size**K != V:
                raise ValueError(f"fq: codebook_size={V} must be the K-th power of the sub-codebook size "
                                 f"(e.g. {self.sub_codebook_size}^{K} = {self.sub_codebook_size**K}) for num_codebooks={K}")  # fmt: skip

    @property
    def sub_codebook_size(self) -> int:
        """fq: codes per sub-codebook."""
        return round(self.codebook_size ** (1 / self.num_codebooks))


@register_model
class VQTokenizer(ConvTokenizer):
    """Single-scale vector-quantized tokenizer: (B, C, H, W) <-> (B, h*w) ids in raster order."""

    model_type = "vq_tokenizer"
    config_class = VQConfig
    config: VQConfig

    def build_quantizer(self) -> nn.Module:
        c = self.config
        if c.quantizer == "fsq":
            return FSQuantizer(c.levels)
        if c.quantizer in ("lfq", "bsq"):
            return LookupFreeQuantizer(c.codebook_dim, spherical=c.quantizer == "bsq", beta=c.beta, entropy_weight=c.entropy_weight)
        if c.quantizer == "fq":
            return FactorizedQuantizer(c.sub_codebook_size, c.codebook_dim, c.num_codebooks, beta=c.beta,
                                       disentangle_weight=c.disentangle_weight)  # fmt: skip
        return VectorQuantizer(c.codebook_size, c.codebook_dim, beta=c.beta, l2_norm=c.l2_norm)

    @property
    def grid_size(self) -> int:
        return self.config.latent_size

    @property
    def layout(self) -> TokenLayout:
        n = self.grid_size
        return TokenLayout("grid", self.codebook_size, grid=(n, n), code_dim=self.config.codebook_dim)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images (B, C, H, W) in [-1, 1] -> ids (B, h*w), raster order."""
        return self.quantize.quantize(self.encode_latent(images))

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        """Ids (B, h*w) -> images (B, C, H, W) in [-1, 1]."""
        self.check_tokens(tokens)
        n = self.grid_size
        return self.decode_latent(self.quantize.embed(tokens.to(self._device()).long(), n, n))
