"""Multi-scale VQ without residuals, FlexVAR's tokenizer (Jiao et al. 2025, arXiv:2502.20313, §3.1).

Every scale quantizes the *image* at that scale, not a residual: the encoder latent (B, D, h, w)
is area-downsampled to side s and looked up in one shared (l2-normalised) codebook, so the
tokens of side s stand alone and decode by themselves to an image of s * downsample pixels (the
encoder/decoder are fully convolutional). Tokens are the scales of ``patch_nums`` concatenated
coarse to fine, (B, L) with L = sum s^2, as for VAR's residual pyramid; any other strictly
increasing list of sides (a FlexVAR sampling schedule) is laid out the same way and passed as
``scales=``. The finest scale alone gives the image, so :meth:`decode` reads only the last one.

Training (:meth:`training_loss`, called by ``arvision train tokenizer``) makes every scale's
quantized latent decode to the image area-downsampled to that size, and every
``upsample_every``-th step trains on the batch upsampled 2x, so that the decoder also works on
latents twice the trained side (FlexVAR samples above its training resolution).

What a FlexVAR generator reads lives here too: :meth:`teacher_forcing_input` (every scale's input
at once, for training) and :meth:`next_scale_input` (one step of sampling): the codes of scale
k-1 bicubic-upsampled to side s_k.

Legend: B batch, C image channels, D code dimension, s side of a scale, L tokens, V codebook.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from arvision.modeling import register_model
from arvision.tokenizers.base import AutoencoderConfig, ConvTokenizer, TokenizerOutput
from arvision.tokenizers.layout import TokenLayout
from arvision.tokenizers.quantizers import VectorQuantizer


def check_schedule(scales: Sequence[int], *, max_side: int, what: str = "scales") -> tuple[int, ...]:
    """A schedule of sides as a tuple: strictly increasing positive ints up to ``max_side``, else a clear error."""
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence) or not scales:
        raise ValueError(f"{what} must be a non-empty sequence of sides, e.g. (1, 2, 4, 7), got {scales!r}")
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in scales):
        raise ValueError(f"{what} must be positive integer sides, got {tuple(scales)}")
    if any(b <= a for a, b in zip(scales, scales[1:])):
        raise ValueError(f"{what}={tuple(scales)}: the sides must be strictly increasing (each step predicts a larger token map)")
    if scales[-1] > max_side:
        raise ValueError(f"{what}={tuple(scales)}: the largest side is {scales[-1]}, but this model supports sides up to {max_side}")
    return tuple(scales)


@dataclass(frozen=True, kw_only=True)
class FlexScaleConfig(AutoencoderConfig):
    """:class:`AutoencoderConfig` plus the sides of the token layout and the training options.

    Args:
        patch_nums: sides of the layout (what ``encode`` returns), strictly increasing; the last
            equals the latent side. A FlexVAR generator trains on random subsets of them.
        l2_norm: cosine nearest neighbour on l2-normalised codes (FlexVAR's VQ, as LlamaGen's).
        train_scales: coarser scales decoded per training step besides the finest (drawn at random;
            all of them when it is at least len(patch_nums) - 1).
        upsample_every: every this many steps, train on the batch upsampled 2x (0 = never).
    """

    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    l2_norm: bool = True
    train_scales: int = 2
    upsample_every: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        pn = self.patch_nums
        if not pn or pn[0] < 1 or any(b <= a for a, b in zip(pn, pn[1:])):
            raise ValueError(f"patch_nums must be strictly increasing positive ints, got {pn}")
        if pn[-1] != self.latent_size:
            raise ValueError(f"the last scale ({pn[-1]}) must equal the latent side image_size/{self.downsample} = {self.latent_size}")
        if self.train_scales < 0 or self.upsample_every < 0:
            raise ValueError("train_scales and upsample_every must be >= 0")


@register_model
class FlexScaleTokenizer(ConvTokenizer):
    """Independent multi-scale VQ: (B, C, H, W) <-> (B, L) ids, every scale its own quantization."""

    model_type = "flexscale_tokenizer"
    config_class = FlexScaleConfig
    config: FlexScaleConfig
    quantize: VectorQuantizer

    def build_quantizer(self) -> VectorQuantizer:
        c = self.config
        return VectorQuantizer(c.codebook_size, c.codebook_dim, beta=c.beta, l2_norm=c.l2_norm)

    # -- token layout -----------------------------------------------------------------------------
    @property
    def patch_nums(self) -> tuple[int, ...]:
        return self.config.patch_nums

    @property
    def layout(self) -> TokenLayout:
        return TokenLayout("flex-scales", self.codebook_size, scales=self.patch_nums, code_dim=self.config.codebook_dim)

    @property
    def max_side(self) -> int:
        """The largest side the decoder was trained for: 2x the latent side with 2x training steps."""
        return self.config.latent_size * (2 if self.config.upsample_every else 1)

    def split_scales(self, tokens_BL: Tensor, scales: Sequence[int] | None = None) -> list[Tensor]:
        """(B, L) -> [(B, s^2)] per side of ``scales`` (default: the layout's)."""
        out, a = [], 0
        for s in scales or self.patch_nums:
            out.append(tokens_BL[:, a : a + s * s])
            a += s * s
        return out

    def _tokens(self, tokens: Tensor, scales: Sequence[int] | None) -> tuple[Tensor, tuple[int, ...]]:
        scales = self.patch_nums if scales is None else check_schedule(scales, max_side=self.max_side)
        if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.is_floating_point() or tokens.dtype == torch.bool:
            raise ValueError(f"tokens must be a (B, L) integer tensor, got {getattr(tokens, 'shape', type(tokens))}")
        L = sum(s * s for s in scales)
        if tokens.shape[1] != L:
            hint = "" if scales != self.patch_nums else "; tokens of another schedule decode with decode(tokens, scales=...)"
            raise ValueError(f"the scales {scales} take {L} tokens per image, got {tokens.shape[1]}{hint}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.codebook_size):
            raise ValueError(f"token ids must be in [0, {self.codebook_size}), got [{tokens.min().item()}, {tokens.max().item()}]")
        return tokens.long().to(self._device()), scales

    # -- encode / decode ----------------------------------------------------------------------------
    def scale_latent(self, f_BDhw: Tensor, side: int) -> Tensor:
        """The latent at side ``side`` (area-downsampled; the finest is the latent itself)."""
        return f_BDhw if side == f_BDhw.shape[-1] else F.interpolate(f_BDhw, size=(side, side), mode="area")

    @torch.no_grad()
    def encode(self, images: Tensor, scales: Sequence[int] | None = None) -> Tensor:
        """Images (B, C, H, W) in [-1, 1] -> ids (B, L), the sides of ``scales`` (default: the layout's) concatenated."""
        scales = self.patch_nums if scales is None else check_schedule(scales, max_side=self.config.latent_size)
        f = self.encode_latent(images)
        return torch.cat([self.quantize.quantize(self.scale_latent(f, s)) for s in scales], 1)

    def codes(self, idx_Bl: Tensor, side: int) -> Tensor:
        """Codes of one scale's ids (B, s^2) as a latent (B, D, s, s) (l2-normalised with ``l2_norm``)."""
        return self.quantize.embed(idx_Bl.long(), side, side)

    @torch.no_grad()
    def decode(self, tokens: Tensor, scales: Sequence[int] | None = None) -> Tensor:
        """Ids (B, L) of ``scales`` (default: the layout's) -> images (B, C, H, W) in [-1, 1] from the
        finest scale alone, H = W = scales[-1] * downsample."""
        tokens, scales = self._tokens(tokens, scales)
        s = scales[-1]
        return self.decode_latent(self.codes(tokens[:, -s * s :], s))

    # -- FlexVAR generator helpers -----------------------------------------------------------------
    def next_scale_input(self, idx_Bl: Tensor, side: int, next_side: int) -> Tensor:
        """The input of the step after scale ``side``: its codes bicubic-upsampled to ``next_side``,
        (B, next_side^2, D) row-major (FlexVAR's next token map)."""
        up = F.interpolate(self.codes(idx_Bl, side), size=(next_side, next_side), mode="bicubic")
        return up.flatten(2).transpose(1, 2)

    def teacher_forcing_input(self, tokens: Tensor, scales: Sequence[int] | None = None) -> Tensor:
        """Inputs of scales 1..K-1 of ``scales`` at once, (B, L - scales[0]^2, D): for teacher-forced training."""
        tokens, scales = self._tokens(tokens, scales)
        parts = self.split_scales(tokens, scales)
        return torch.cat([self.next_scale_input(parts[k], scales[k], scales[k + 1]) for k in range(len(scales) - 1)], 1)

    # -- training ----------------------------------------------------------------------------------
    def forward(self, images_BCHW: Tensor) -> TokenizerOutput:
        """The finest scale's reconstruction and quantizer loss (the plain autoencoder pass)."""
        out = self.quantize(self.encode_latent(images_BCHW))
        recon = self.decoder(self.post_quant_conv(out.z_q))
        return TokenizerOutput(recon=recon, quant_loss=out.loss, indices=out.indices, candidates=out.candidates)

    def training_loss(self, images_BCHW: Tensor, step: int, generator: torch.Generator | None = None
                      ) -> tuple[Tensor, Tensor, TokenizerOutput]:  # fmt: skip
        """(loss, reconstruction MSE, quantizer output) of one training step.

        The finest scale and ``train_scales`` coarser ones drawn at random are quantized and
        decoded; each reconstruction is compared with the image area-downsampled to its size. Every
        ``upsample_every``-th step the batch is bilinearly upsampled 2x first (latent side 2h) and
        only its finest scale is decoded, so the decoder learns the larger latents a generator
        samples at twice the resolution.
        """
        c = self.config
        big = c.upsample_every > 0 and step % c.upsample_every == c.upsample_every - 1
        if big:
            images_BCHW = F.interpolate(images_BCHW, scale_factor=2, mode="bilinear", align_corners=False).clamp(-1, 1)
            images_BCHW = images_BCHW.contiguous(memory_format=torch.channels_last)
        f = self.quant_conv(self.encoder(images_BCHW))
        n = f.shape[-1]
        coarse = [] if big else list(self.patch_nums[:-1])  # 2x steps (4x the pixels) decode the finest scale only
        k = min(c.train_scales, len(coarse))
        pick = torch.randperm(len(coarse), generator=generator)[:k].tolist() if k < len(coarse) else range(len(coarse))
        sides = [coarse[i] for i in sorted(pick)] + [n]
        rec = quant = f.new_zeros(())
        indices, candidates = [], []
        for s in sides:
            o = self.quantize(self.scale_latent(f, s))
            recon = self.decoder(self.post_quant_conv(o.z_q))
            target = images_BCHW if s == n else F.interpolate(images_BCHW, size=recon.shape[-2:], mode="area")
            rec, quant = rec + F.mse_loss(recon, target), quant + o.loss
            indices.append(o.indices)
            candidates.append(o.candidates)
        rec, quant = rec / len(sides), quant / len(sides)
        out = TokenizerOutput(recon=recon, quant_loss=quant, indices=torch.cat(indices, 1), candidates=torch.cat(candidates))
        return rec + quant, rec, out
