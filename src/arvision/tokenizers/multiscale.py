"""Multi-scale residual VQ tokenizer (VAR; Tian et al. 2024, arXiv:2404.02905).

An image becomes a pyramid of id maps, pn_0 x pn_0, ..., pn_{S-1} x pn_{S-1}, whose codes are
upsampled, refined and summed into one latent f_hat. Tokens are the scales concatenated coarse
to fine, (B, L) with L = sum pn_k^2. Parameter names follow VAR's ``VQVAE``.

The helpers a next-scale generator needs live here too: :meth:`teacher_forcing_input` (inputs of
all scales at once, for training) and :meth:`next_scale_input` (one step during sampling).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from arvision.modeling import register_model
from arvision.tokenizers.base import AutoencoderConfig, ConvTokenizer
from arvision.tokenizers.layout import TokenLayout
from arvision.tokenizers.quantizers import MultiScaleQuantizer


@dataclass(frozen=True, kw_only=True)
class MultiScaleVQConfig(AutoencoderConfig):
    """:class:`AutoencoderConfig` plus the scale schedule and VAR's phi options.

    Args:
        patch_nums: side of every scale, strictly increasing; the last equals the latent side.
        quant_resi: phi mixing ratio (VAR: 0.5).
        share_quant_resi: number of shared phi convs (VAR: 4; 0 = one per scale).
        znorm: cosine nearest neighbour instead of squared L2 (VAR: False).
    """

    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    quant_resi: float = 0.5
    share_quant_resi: int = 4
    znorm: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        pn = self.patch_nums
        if not pn or any(b <= a for a, b in zip(pn, pn[1:])) or pn[0] < 1:
            raise ValueError(f"patch_nums must be strictly increasing positive ints, got {pn}")
        if pn[-1] != self.latent_size:
            raise ValueError(
                f"the last scale ({pn[-1]}) must equal the latent side image_size/{self.downsample} = {self.latent_size}"
            )
        if self.share_quant_resi < 0:
            raise ValueError("share_quant_resi must be >= 0")


@register_model
class MultiScaleVQTokenizer(ConvTokenizer):
    """Multi-scale residual VQ: (B, C, H, W) <-> (B, L) ids, L = sum(pn^2), coarse scales first."""

    model_type = "msvq_tokenizer"
    config_class = MultiScaleVQConfig
    config: MultiScaleVQConfig
    quantize: MultiScaleQuantizer

    def build_quantizer(self) -> MultiScaleQuantizer:
        c = self.config
        return MultiScaleQuantizer(
            c.codebook_size, c.codebook_dim, patch_nums=c.patch_nums, beta=c.beta,
            quant_resi=c.quant_resi, share_quant_resi=c.share_quant_resi, znorm=c.znorm,
        )  # fmt: skip

    # -- token layout -----------------------------------------------------------------------------
    @property
    def patch_nums(self) -> tuple[int, ...]:
        return self.config.patch_nums

    @property
    def layout(self) -> TokenLayout:
        return TokenLayout("scales", self.codebook_size, scales=self.patch_nums, code_dim=self.config.codebook_dim)

    @property
    def scale_ranges(self) -> list[tuple[int, int]]:
        """[start, end) of each scale in the flat (B, L) token layout."""
        out, start = [], 0
        for pn in self.patch_nums:
            out.append((start, start + pn * pn))
            start += pn * pn
        return out

    def split_scales(self, tokens_BL: Tensor) -> list[Tensor]:
        """(B, L) -> [(B, pn_k^2)] per scale."""
        return [tokens_BL[:, a:b] for a, b in self.scale_ranges]

    # -- encode / decode --------------------------------------------------------------------------
    @torch.no_grad()
    def encode_scales(self, images: Tensor) -> list[Tensor]:
        """Images (B, C, H, W) in [-1, 1] -> ids per scale [(B, pn_k^2)] (VAR's ``img_to_idxBl``)."""
        return self.quantize.quantize(self.encode_latent(images))[0]

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images (B, C, H, W) in [-1, 1] -> ids (B, L), scales concatenated coarse to fine."""
        return torch.cat(self.encode_scales(images), 1)

    @torch.no_grad()
    def cumulative_latents(self, images: Tensor) -> list[Tensor]:
        """f_hat after each scale [(B, D, h, w)] while encoding (the latent path of the pyramid)."""
        return self.quantize.quantize(self.encode_latent(images), return_fhats=True)[1]

    def tokens_to_fhat(self, tokens: Tensor | Sequence[Tensor]) -> Tensor:
        """Latent f_hat (B, D, h, w) from ids, flat (B, L) or per scale; a prefix of scales is allowed."""
        idx_list = self._as_scales(tokens)
        return self.quantize.indices_to_fhat(idx_list, self.config.latent_size)

    @torch.no_grad()
    def decode(self, tokens: Tensor | Sequence[Tensor]) -> Tensor:
        """Ids (B, L) or per-scale list -> images (B, C, H, W) in [-1, 1]."""
        if isinstance(tokens, Tensor):
            self.check_tokens(tokens)
        # contiguous: the same memory layout as the f_hat of sampling, so both decode bit-identically
        return self.decode_latent(self.tokens_to_fhat(tokens).contiguous())

    def fhat_to_images(self, f_hat: Tensor) -> Tensor:
        """Decode an accumulated latent (e.g. at the end of next-scale sampling)."""
        return self.decode_latent(f_hat)

    # -- next-scale generator helpers ----------------------------------------------------------
    @property
    def first_len(self) -> int:
        """Tokens of the first scale, which a next-scale generator predicts from the class alone."""
        return self.patch_nums[0] ** 2

    def teacher_forcing_input(self, tokens: Tensor | Sequence[Tensor]) -> Tensor:
        """Inputs for scales 1..S-1 at once, (B, L - first_len, D): for teacher-forced training."""
        return self.quantize.teacher_forcing_input(self._as_scales(tokens), self.config.latent_size)

    def embed_scale(self, idx_Bl: Tensor, si: int) -> Tensor:
        """Codes of scale ``si`` ids (B, pn^2) as (B, D, pn, pn)."""
        return self.quantize.embed(idx_Bl, si)

    def empty_fhat(self, batch_size: int) -> Tensor:
        w = self.quantize.embedding.weight
        n = self.config.latent_size
        return w.new_zeros(batch_size, w.shape[1], n, n)

    def next_scale_input(self, si: int, f_hat: Tensor, idx_Bl: Tensor) -> tuple[Tensor, Tensor]:
        """Sampling step: add scale ``si``'s ids to f_hat; return (f_hat, input of scale si+1).

        The input is (B, pn_{si+1}^2, D) (flattened row-major, like the teacher-forcing input),
        or after the last scale the final f_hat as (B, h*w, D).
        """
        f_hat, nxt = self.quantize.next_scale_input(si, f_hat, self.embed_scale(idx_Bl, si))
        return f_hat, nxt.flatten(2).transpose(1, 2)

    def _as_scales(self, tokens: Tensor | Sequence[Tensor]) -> list[Tensor]:
        if isinstance(tokens, Tensor):
            self.check_tokens(tokens)
            return self.split_scales(tokens.long().to(self._device()))
        idx_list = [t.long().to(self._device()) for t in tokens]
        if len(idx_list) > len(self.patch_nums) or any(
            t.ndim != 2 or t.shape[1] != pn * pn for t, pn in zip(idx_list, self.patch_nums)
        ):
            raise ValueError(f"per-scale tokens must be [(B, pn^2)] for patch_nums {self.patch_nums}")
        for t in idx_list:
            self.check_ids(t)
        return idx_list
