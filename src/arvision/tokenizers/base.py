"""The interface every image tokenizer shares.

``encode(images) -> tokens`` and ``decode(tokens) -> images``, where images are float tensors
(B, C, H, W) in [-1, 1] and tokens are int64 (B, L) in the tokenizer's token layout (raster order
for a grid, scales concatenated coarse to fine for a pyramid). ``forward`` is the training pass.
PIL helpers wrap both for users who hold pictures rather than tensors.

Legend: B batch, C channels, H/W image side, h/w latent side, D code dimension, L tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar, Sequence

import torch
from PIL import Image
from torch import Tensor, nn

from arvision.config import Config
from arvision.modeling import PretrainedModel
from arvision.nn.conv import ConvDecoder, ConvEncoder
from arvision.tokenizers.layout import TokenLayout

if TYPE_CHECKING:
    from arvision.tokenizers.grammar import TokenGrammar


@dataclass(frozen=True, kw_only=True)
class AutoencoderConfig(Config):
    """Conv autoencoder + codebook sizes shared by the VQ tokenizers.

    Args:
        image_size: side of the (square) input images.
        in_channels: 1 (grayscale) or 3 (RGB).
        ch, ch_mult, num_res_blocks: encoder/decoder widths; downsampling is 2^(len(ch_mult)-1).
        z_channels: encoder output width; ``quant_conv`` maps it to ``codebook_dim``.
        norm_groups: GroupNorm groups (32 in the anchors); must divide every width.
        attn_lowest, attn_mid: self-attention at the lowest resolution / in the middle block.
        quant_conv_kernel: 1 (LlamaGen) or 3 (VAR).
        codebook_size, codebook_dim: V and D.
        beta: commitment loss weight.
        clamp_output: clamp decoded images to [-1, 1] (VAR does, LlamaGen does not).
    """

    image_size: int = 256
    in_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 256
    norm_groups: int = 32
    dropout: float = 0.0
    attn_lowest: bool = True
    attn_mid: bool = True
    quant_conv_kernel: int = 1
    codebook_size: int = 16384
    codebook_dim: int = 8
    beta: float = 0.25
    clamp_output: bool = True

    def __post_init__(self) -> None:
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grayscale) or 3 (RGB), got {self.in_channels}")
        if not self.ch_mult or any(m <= 0 for m in self.ch_mult):
            raise ValueError(f"ch_mult must be a non-empty tuple of positive ints, got {self.ch_mult}")
        if self.norm_groups < 1:
            raise ValueError(f"norm_groups must be >= 1, got {self.norm_groups}")
        for width in {self.ch * m for m in self.ch_mult}:
            if width % self.norm_groups:
                raise ValueError(f"norm_groups={self.norm_groups} must divide every width ch*ch_mult, but not {width}")
        if self.image_size % self.downsample:
            raise ValueError(f"image_size {self.image_size} must be a multiple of the downsampling factor {self.downsample}")
        if self.quant_conv_kernel % 2 == 0:
            raise ValueError(f"quant_conv_kernel must be odd, got {self.quant_conv_kernel}")
        self.check_bottleneck()

    def check_bottleneck(self) -> None:
        """Validate the fields between encoder and decoder (a codebook here; KLConfig overrides it)."""
        if self.codebook_size < 2 or self.codebook_dim < 1:
            raise ValueError("codebook_size must be >= 2 and codebook_dim >= 1")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.downsample


@dataclass
class TokenizerOutput:
    """Training forward of a tokenizer: reconstruction, quantizer loss, ids, restart candidates."""

    recon: Tensor
    quant_loss: Tensor
    indices: Tensor
    candidates: Tensor


AlignmentHook = Callable[[list[Tensor], Tensor], Tensor]


class Tokenizer(PretrainedModel):
    """What every tokenizer offers: a token layout, ``encode``/``decode``, input and token checks,
    bits per image and PIL helpers. Learned conv autoencoders build on :class:`ConvTokenizer`;
    transformer (1-D), codec (JPEG) and post-training (TokenBridge) tokenizers subclass this
    directly.
    """

    config: Config
    # A codec (JPEG bytes) can be handed token sequences that are no valid stream; it then decodes
    # them to blank images and says which with ``decode(tokens, return_ok=True)``. Learned
    # tokenizers decode every sequence.
    may_fail_to_decode: ClassVar[bool] = False

    # -- to be provided by subclasses ----------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        """L: tokens per image (from the layout)."""
        return self.layout.num_tokens

    @property
    def layout(self) -> "TokenLayout":
        """How the tokens are laid out (what generators are derived from and checked against)."""
        raise NotImplementedError

    def encode(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, tokens: Tensor) -> Tensor:
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def grammar(self) -> "TokenGrammar | None":
        """The automaton of the valid token sequences, for grammar-constrained decoding
        (``SamplingConfig.constrained``); None: every sequence of ids decodes."""
        return None

    def bits_per_image(self) -> float | None:
        """Bits of one image's tokens as fixed-length codes: L * log2(V) ids (L * D * log2(levels)
        for per-channel ids); None for continuous tokens."""
        lay = self.layout
        if lay.continuous:
            return None
        return lay.num_tokens * math.log2(lay.vocab_size) * (lay.code_dim if lay.channel_bins else 1)

    @torch.no_grad()
    def reconstruct(self, images_BCHW: Tensor) -> Tensor:
        """decode(encode(images)), in [-1, 1]."""
        return self.decode(self.encode(images_BCHW))

    def check_images(self, images: Tensor) -> None:
        """Raise a clear error if ``images`` is not (B, C, S, S) float in [-1, 1] at the trained size."""
        c = self.config
        expected = f"(B, {c.in_channels}, {c.image_size}, {c.image_size})"
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a torch.Tensor {expected}, got {type(images).__name__}; use encode_pil for PIL images")
        if images.ndim != 4:
            raise ValueError(f"images must have shape {expected}, got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"images must be float in [-1, 1], got dtype {images.dtype}; convert uint8 with x / 127.5 - 1")
        if images.shape[1] != c.in_channels:
            raise ValueError(
                f"this tokenizer takes {c.in_channels}-channel images {expected}, got {images.shape[1]} channels"
            )
        if images.shape[-2:] != (c.image_size, c.image_size):
            raise ValueError(
                f"wrong image size {tuple(images.shape[-2:])}: this tokenizer was built for "
                f"{c.image_size}x{c.image_size}; resize (e.g. arvision.data.resize_center_crop) first"
            )
        if not torch.isfinite(images).all():  # NaN would pass the range test below and decode to garbage
            raise ValueError("images contain NaN or inf values; check the code that produced them (images are float in [-1, 1])")
        if images.numel() and (images.min() < -1.01 or images.max() > 1.01):
            raise ValueError(
                f"images must be in [-1, 1], got values in [{images.min().item():.3g}, {images.max().item():.3g}]; "
                "convert [0, 255] images with x / 127.5 - 1"
            )

    def check_tokens(self, tokens: Tensor) -> None:
        if not isinstance(tokens, Tensor) or tokens.ndim != 2:
            raise ValueError(f"tokens must be a (B, {self.num_tokens}) integer tensor, got {getattr(tokens, 'shape', type(tokens))}")
        if tokens.is_floating_point() or tokens.dtype == torch.bool:
            raise TypeError(f"tokens must be integers, got dtype {tokens.dtype}")
        if tokens.shape[1] != self.num_tokens:
            raise ValueError(f"this tokenizer uses {self.num_tokens} tokens per image, got {tokens.shape[1]}")
        self.check_ids(tokens)

    def check_ids(self, ids: Tensor) -> None:
        """A clear error for ids outside the codebook (else: an index error deep in torch, a device assert on CUDA)."""
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.codebook_size):
            raise ValueError(f"token ids must be in [0, {self.codebook_size}), got [{ids.min().item()}, {ids.max().item()}]")

    # -- PIL helpers ----------------------------------------------------------------------------
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def device(self) -> torch.device:
        """Where the tokenizer runs (a codec without parameters says it through a buffer)."""
        return self._device()

    def pil_to_images(self, pictures: Sequence[Image.Image]) -> Tensor:
        """Resize + centre-crop PIL images to the tokenizer's size; (B, C, S, S) in [-1, 1]."""
        from arvision.data.images import pil_to_tensor, resize_center_crop

        c = self.config
        return torch.stack([pil_to_tensor(resize_center_crop(p, c.image_size), c.in_channels) for p in pictures]).to(self._device())

    @torch.no_grad()
    def encode_pil(self, pictures: Sequence[Image.Image]) -> Tensor:
        return self.encode(self.pil_to_images(pictures))

    @torch.no_grad()
    def decode_pil(self, tokens: Tensor) -> list[Image.Image]:
        from arvision.data.images import tensor_to_pil

        return [tensor_to_pil(x) for x in self.decode(tokens).cpu()]


class ConvTokenizer(Tokenizer):
    """Conv encoder -> quant_conv -> bottleneck -> post_quant_conv -> conv decoder (the LDM/taming
    layout of every anchor's tokenizer): the VQ family builds a quantizer (:meth:`build_quantizer`),
    the KL tokenizer a Gaussian bottleneck of its own (:meth:`build_autoencoder` and no quantizer).

    ``alignment_hook``: an optional ``hook(code_maps, images) -> loss`` added to the quantizer
    loss in training, e.g. FQGAN's alignment of one sub-codebook with a frozen semantic encoder's
    features. ``code_maps`` are the quantized maps (B, D_k, h, w): one per sub-codebook of a
    factorized quantizer, else the whole latent. Not saved with the model.
    """

    config: AutoencoderConfig
    alignment_hook: AlignmentHook | None = None

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__(config)
        self.encoder, self.decoder, self.quant_conv, self.post_quant_conv = self.build_autoencoder()
        quantizer = self.build_quantizer()
        if quantizer is not None:
            self.quantize = quantizer

    def build_autoencoder(self) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
        """(encoder, decoder, quant_conv, post_quant_conv) for a ``codebook_dim``-wide latent."""
        c = self.config
        arch = dict(
            ch=c.ch, ch_mult=c.ch_mult, num_res_blocks=c.num_res_blocks, z_channels=c.z_channels,
            groups=c.norm_groups, dropout=c.dropout, attn_lowest=c.attn_lowest, attn_mid=c.attn_mid,
        )  # fmt: skip
        k = c.quant_conv_kernel
        return (ConvEncoder(in_channels=c.in_channels, **arch), ConvDecoder(out_channels=c.in_channels, **arch),
                nn.Conv2d(c.z_channels, c.codebook_dim, k, padding=k // 2), nn.Conv2d(c.codebook_dim, c.z_channels, k, padding=k // 2))  # fmt: skip

    def build_quantizer(self) -> nn.Module | None:
        """The bottleneck's quantizer (None: the subclass has no codebook, e.g. the KL tokenizer)."""
        raise NotImplementedError

    def encode_latent(self, images_BCHW: Tensor) -> Tensor:
        """Pre-quantization latent (B, D, h, w)."""
        self.check_images(images_BCHW)
        return self.quant_conv(self.encoder(images_BCHW))

    def decode_latent(self, z_BDhw: Tensor) -> Tensor:
        """Image (B, C, H, W) from a (quantized) latent."""
        if z_BDhw.device.type == "cpu":
            # oneDNN convolutions run ~15 % faster on channels_last activations (measured on the
            # 256 px VAR and LlamaGen decoders); results agree to ~5e-5.
            z_BDhw = z_BDhw.contiguous(memory_format=torch.channels_last)
            if torch.is_autocast_enabled("cpu") and not torch.is_grad_enabled():
                # bf16 sampling: channels_last weights too, so that autocast's bf16 copies need no
                # reorder (the LlamaGen VQ-16 decoder: 2.7 -> 2.0 s for 4 images on one core). The
                # values are unchanged; fp32 convolutions give bit-identical images either way.
                self.post_quant_conv.to(memory_format=torch.channels_last)
                self.decoder.to(memory_format=torch.channels_last)
        x = self.decoder(self.post_quant_conv(z_BDhw))
        return x.clamp(-1, 1) if self.config.clamp_output else x

    def forward(self, images_BCHW: Tensor) -> TokenizerOutput:
        """Training pass: reconstruction (not clamped, so gradients flow) and quantizer loss."""
        z = self.encode_latent(images_BCHW)
        with torch.autocast(z.device.type, enabled=False):  # nearest codes and rounding in fp32 under bf16 autocast
            out = self.quantize(z.float())
        recon = self.decoder(self.post_quant_conv(out.z_q))
        loss = out.loss
        if self.alignment_hook is not None:
            loss = loss + self.alignment_hook(out.parts if out.parts is not None else [out.z_q], images_BCHW)
        return TokenizerOutput(recon=recon, quant_loss=loss, indices=out.indices, candidates=out.candidates)
