"""VQ grid tokenizer (LlamaGen's VQ-16/VQ-8 design; Sun et al. 2024, arXiv:2406.06525, §2.1).

An image becomes an h x w grid of codebook ids, flattened in raster order to (B, h*w).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from arvision.modeling import register_model
from arvision.tokenizers.base import AutoencoderConfig, Tokenizer
from arvision.tokenizers.layout import TokenLayout
from arvision.tokenizers.quantizers import VectorQuantizer


@dataclass(frozen=True, kw_only=True)
class VQConfig(AutoencoderConfig):
    """:class:`AutoencoderConfig` plus ``l2_norm``: cosine nearest-neighbour codes (LlamaGen default)."""

    l2_norm: bool = True


@register_model
class VQTokenizer(Tokenizer):
    """Single-scale vector-quantized tokenizer: (B, C, H, W) <-> (B, h*w) ids in raster order."""

    model_type = "vq_tokenizer"
    config_class = VQConfig
    config: VQConfig

    def build_quantizer(self) -> VectorQuantizer:
        c = self.config
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
