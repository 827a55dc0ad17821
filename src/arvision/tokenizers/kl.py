"""KL autoencoder tokenizer: continuous tokens, no codebook (LDM's KL-f autoencoder, Rombach et
al. 2022, arXiv:2112.10752, §3 and App. G; the tokenizer of MAR, Li et al. 2024, arXiv:2406.11838).

encoder -> conv_out (2 * z_channels, "double_z") -> quant_conv (-> 2 * D) -> diagonal Gaussian
posterior N(mean, exp(logvar)) over a (D, h, w) latent -> post_quant_conv (D -> z_channels) ->
decoder. An image's tokens are the latent in raster order, channels last: token l is position
(l // w, l % w) and holds its D channels, times ``scale_factor`` (MAR's 0.2325, chosen so that
tokens have about unit variance; :meth:`KLTokenizer.decode` divides it out again).

Training minimises the reconstruction error of a posterior *sample* (reparameterisation) plus
``kl_weight`` x KL(posterior || N(0, I)). The KL is LDM's: summed over the latent's D*h*w
dimensions, averaged over the batch; it is then divided by the image's C*H*W values because the
training loop's reconstruction loss is a per-value mean where LDM's is a per-image sum. So a
``kl_weight`` means here what it means in LDM's configs (1e-6 for its KL-f8/f16 models).

Legend: B batch, C channels, H/W image side, h/w latent side, D token (latent) width, L = h*w.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from arvision.modeling import register_model
from arvision.nn.conv import ConvDecoder, ConvEncoder
from arvision.tokenizers.base import AutoencoderConfig, ConvTokenizer
from arvision.tokenizers.layout import TokenLayout

# LDM's clamp of the log-variance (official MAR ``DiagonalGaussianDistribution``).
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


@dataclass(frozen=True, kw_only=True)
class KLConfig(AutoencoderConfig):
    """:class:`AutoencoderConfig` with a Gaussian bottleneck instead of a codebook.

    Args:
        embed_dim: D, the width of a token (latent channels); ``quant_conv`` maps the encoder's
            2 * z_channels to 2 * D (mean and log-variance), ``post_quant_conv`` D to z_channels.
        kl_weight: weight of the KL term in LDM's convention (see the module docstring).
        scale_factor: tokens = latent * scale_factor (MAR: 0.2325, for ~unit-variance tokens).
        decoder_attn_lowest: self-attention at the decoder's lowest resolution; None = the same
            as ``attn_lowest`` (the encoder's). MAR's VAE has it in the encoder only.
        codebook_size, codebook_dim, beta: unused (a KL tokenizer has no codebook); must stay 0.
    """

    embed_dim: int = 16
    kl_weight: float = 1e-6
    scale_factor: float = 1.0
    decoder_attn_lowest: bool | None = None
    codebook_size: int = 0
    codebook_dim: int = 0
    beta: float = 0.0

    def check_bottleneck(self) -> None:
        if self.codebook_size or self.codebook_dim or self.beta:
            raise ValueError(
                "a KL tokenizer has no codebook: leave codebook_size, codebook_dim and beta at 0 and set embed_dim "
                f"(the token width), got codebook_size={self.codebook_size}, codebook_dim={self.codebook_dim}, "
                f"beta={self.beta}"
            )
        if self.embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {self.embed_dim}")
        if not (self.kl_weight >= 0 and math.isfinite(self.kl_weight)):
            raise ValueError(f"kl_weight must be a finite number >= 0, got {self.kl_weight}")
        if not (self.scale_factor > 0 and math.isfinite(self.scale_factor)):
            raise ValueError(f"scale_factor must be a finite number > 0, got {self.scale_factor}")

    @property
    def attn_lowest_decoder(self) -> bool:
        return self.attn_lowest if self.decoder_attn_lowest is None else self.decoder_attn_lowest


class Posterior(NamedTuple):
    """Diagonal Gaussian over the latent: ``mean`` and ``logvar`` (clamped), each (B, D, h, w)."""

    mean: Tensor
    logvar: Tensor

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None, *, noise: Tensor | None = None) -> Tensor:
        """mean + std * noise; noise ~ N(0, I) drawn from ``generator`` (on its device) unless given."""
        if noise is None:
            dev = generator.device if generator is not None else self.mean.device
            noise = torch.randn(self.mean.shape, generator=generator, device=dev, dtype=self.mean.dtype)
        return self.mean + self.std * noise.to(self.mean.device)

    def kl(self) -> Tensor:
        """KL(N(mean, var) || N(0, I)) per image, summed over the D*h*w latent dims: (B,)."""
        return 0.5 * (self.mean.square() + self.logvar.exp() - 1.0 - self.logvar).sum(dim=(1, 2, 3))


@dataclass
class KLOutput:
    """Training forward: reconstruction of a posterior sample, weighted KL loss (``quant_loss``, the
    name the training loop adds) and the unweighted per-batch KL (for logging)."""

    recon: Tensor
    quant_loss: Tensor
    kl: Tensor


@register_model
class KLTokenizer(ConvTokenizer):
    """KL autoencoder: (B, C, H, W) <-> (B, h*w, D) continuous tokens in raster order."""

    model_type = "kl_tokenizer"
    config_class = KLConfig
    config: KLConfig

    def build_autoencoder(self) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
        """The conv stacks of the VQ tokenizers around a Gaussian: the encoder ends in 2 * z_channels
        (mean and log-variance), ``quant_conv`` maps them to 2 * D; the decoder may skip attention."""
        c = self.config
        arch = dict(ch=c.ch, ch_mult=c.ch_mult, num_res_blocks=c.num_res_blocks, groups=c.norm_groups,
                    dropout=c.dropout, attn_mid=c.attn_mid)  # fmt: skip
        k = c.quant_conv_kernel
        return (ConvEncoder(in_channels=c.in_channels, z_channels=2 * c.z_channels, attn_lowest=c.attn_lowest, **arch),
                ConvDecoder(out_channels=c.in_channels, z_channels=c.z_channels, attn_lowest=c.attn_lowest_decoder, **arch),
                nn.Conv2d(2 * c.z_channels, 2 * c.embed_dim, k, padding=k // 2), nn.Conv2d(c.embed_dim, c.z_channels, k, padding=k // 2))  # fmt: skip

    def build_quantizer(self) -> None:
        return None  # no codebook: a diagonal Gaussian posterior (``posterior``)

    # -- layout ---------------------------------------------------------------------------------
    @property
    def grid_size(self) -> int:
        return self.config.latent_size

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def layout(self) -> TokenLayout:
        n = self.grid_size
        return TokenLayout("grid", 0, grid=(n, n), code_dim=self.embed_dim, continuous=True)

    # -- latent <-> tokens ----------------------------------------------------------------------
    @staticmethod
    def latent_to_tokens(z_BDhw: Tensor) -> Tensor:
        """(B, D, h, w) -> (B, h*w, D), raster order, channels last (MAR's patchify with patch size 1)."""
        return z_BDhw.flatten(2).transpose(1, 2).contiguous()

    def tokens_to_latent(self, tokens_BLD: Tensor) -> Tensor:
        """(B, h*w, D) -> (B, D, h, w)."""
        n = self.grid_size
        return tokens_BLD.transpose(1, 2).reshape(tokens_BLD.shape[0], self.embed_dim, n, n)

    # -- encode / decode ------------------------------------------------------------------------
    def encode_posterior(self, images_BCHW: Tensor) -> Posterior:
        """The posterior over the (unscaled) latent: ``mean``, ``logvar`` (clamped to [-30, 20]), (B, D, h, w)."""
        mean, logvar = self.encode_latent(images_BCHW).chunk(2, dim=1)  # quant_conv(encoder(x)) = LDM's "moments"
        return Posterior(mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX))

    @torch.no_grad()
    def encode(self, images: Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Images (B, C, H, W) in [-1, 1] -> tokens (B, h*w, D) = scale_factor * (posterior mean, or a
        sample drawn with ``generator`` when ``sample``)."""
        post = self.encode_posterior(images)
        z = post.sample(generator) if sample else post.mean
        return self.latent_to_tokens(z * self.config.scale_factor)

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        """Tokens (B, h*w, D) -> images (B, C, H, W); clamped to [-1, 1] only if ``clamp_output``."""
        self.check_tokens(tokens)
        p = next(self.parameters())
        z = self.tokens_to_latent(tokens.to(device=p.device, dtype=p.dtype)) / self.config.scale_factor
        return self.decode_latent(z)

    def forward(self, images_BCHW: Tensor, *, generator: torch.Generator | None = None) -> KLOutput:
        """Training pass: reconstruction (not clamped) of a posterior sample and the weighted KL."""
        post = self.encode_posterior(images_BCHW)
        recon = self.decoder(self.post_quant_conv(post.sample(generator)))
        kl = post.kl().mean()
        per_value = kl / images_BCHW[0].numel()  # LDM sums the reconstruction loss per image; ours is a mean
        return KLOutput(recon=recon, quant_loss=self.config.kl_weight * per_value, kl=kl.detach())

    def check_tokens(self, tokens: Tensor) -> None:
        L, D = self.num_tokens, self.embed_dim
        if not isinstance(tokens, Tensor) or tokens.ndim != 3 or tuple(tokens.shape[1:]) != (L, D):
            got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be a (B, {L}, {D}) float tensor of continuous tokens (raster order, channels "
                             f"last), got {got}")  # fmt: skip
        if not tokens.is_floating_point():
            raise ValueError(f"this tokenizer's tokens are continuous (B, {L}, {D}) vectors, not ids: got dtype {tokens.dtype}")
        if not torch.isfinite(tokens).all():
            raise ValueError(
                "the tokens contain NaN/inf values: the generator (or the code that produced them) diverged; "
                "they cannot be decoded"
            )
