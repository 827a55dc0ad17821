"""1-D tokenizer: an image becomes a sequence of K latent tokens, coarse to fine.

TiTok (Yu et al. 2024, "An Image is Worth 32 Tokens for Reconstruction and Generation",
arXiv:2406.07550, §3.2): a transformer encoder reads the image's patch tokens together with K
learned latent queries; the K query outputs are vector-quantized; a transformer decoder reads the
K codes together with one learned mask token per patch and predicts the patches. The tokens are a
1-D sequence with no spatial meaning of their own.

FlexTok (Bachmann et al. 2025, arXiv:2502.13967, §3.1): nested dropout. In training, each image
keeps a random prefix of k of its K tokens and the rest are replaced by a learned "dropped"
embedding, so the first tokens learn to carry the coarse content and any prefix decodes to a
coarser image. :meth:`OneDimTokenizer.decode` takes any prefix of 1..K tokens.

Two additions, for training in minutes on a CPU: each latent query (and each mask token of the
decoder) also gets a learned linear mix of the patch tokens (latent tokens), so the model starts
as a linear autoencoder instead of a plateau where the decoder predicts the mean image and
ignores the codes (seen with attention alone: 12 dB after 400 steps); and ``quant_warmup`` steps
decode the latents before quantization (a plain autoencoder) while dead-code restarts move the
codebook onto the encoder's outputs.

``stem="conv"`` reads and writes pixels with the project's conv encoder/decoder (the stack of the
grid tokenizers, downsampling by ``patch_size``) instead of one linear map per patch: the
transformers then see a grid of conv features, and the decoder's mask tokens become the conv
decoder's input grid. The tokens stay a 1-D sequence of K ids; only the pixel interface changes.
Hybrid CNN + transformer 1-D tokenizers do the same at scale; on MNIST it is what brings the
full-length reconstruction of 32-48 tokens to the grid tokenizers' PSNR.

Legend: B batch, C channels, H/W image side, p patch side, N = (H/p)^2 patches, K latent tokens,
k tokens kept, D code dimension, E transformer width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arvision.config import Config
from arvision.modeling import register_model
from arvision.nn.conv import ConvDecoder, ConvEncoder
from arvision.nn.transformer import Transformer, TransformerConfig
from arvision.tokenizers.base import Tokenizer, TokenizerOutput
from arvision.tokenizers.layout import TokenLayout
from arvision.tokenizers.implicit import FSQuantizer, check_fsq_levels
from arvision.tokenizers.quantizers import VectorQuantizer


@dataclass(frozen=True, kw_only=True)
class OneDimConfig(Config):
    """A 1-D (TiTok/FlexTok-style) tokenizer.

    Args:
        image_size, in_channels: square input images (1 grayscale or 3 RGB channels).
        patch_size: side p of the patches the encoder reads and the decoder predicts.
        num_latents: K, tokens per image.
        width, num_heads, mlp_ratio: the encoder's and decoder's transformer.
        encoder_depth, decoder_depth: blocks of each.
        codebook_size, codebook_dim, beta, l2_norm: the vector quantizer (V, D, commitment
            weight, cosine nearest neighbour).
        quantizer, levels: "vq" (a learned codebook) or "fsq" (finite scalar quantization with
            ``levels`` per channel: codebook_dim = len(levels), codebook_size = their product).
        quant_warmup: training steps that decode the (normalised) latents before quantization.
        nested_dropout: share of training images that keep only a random prefix of k < K tokens
            (k log-uniform in 1..K-1, so short prefixes are seen as often as long ones); 0 = off.
        clamp_output: clamp decoded images to [-1, 1].
        stem: "linear" (one linear map per patch, ViT-style) or "conv" (conv encoder/decoder that
            downsample by ``patch_size``, a power of 2).
        conv_ch, conv_res_blocks, conv_groups: the conv stem's base width (doubling per level),
            residual blocks per level and GroupNorm groups.
    """

    image_size: int = 28
    in_channels: int = 1
    patch_size: int = 4
    num_latents: int = 32
    width: int = 128
    num_heads: int = 4
    mlp_ratio: float = 4.0
    encoder_depth: int = 4
    decoder_depth: int = 4
    codebook_size: int = 256
    codebook_dim: int = 8
    beta: float = 0.25
    l2_norm: bool = True
    quant_warmup: int = 0
    quantizer: str = "vq"
    levels: tuple[int, ...] = ()
    nested_dropout: float = 0.5
    clamp_output: bool = True
    stem: str = "linear"
    conv_ch: int = 16
    conv_res_blocks: int = 1
    conv_groups: int = 8

    def __post_init__(self) -> None:
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grayscale) or 3 (RGB), got {self.in_channels}")
        if self.patch_size < 1 or self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.num_latents < 1:
            raise ValueError(f"num_latents must be >= 1, got {self.num_latents}")
        if self.codebook_size < 2 or self.codebook_dim < 1:
            raise ValueError("codebook_size must be >= 2 and codebook_dim >= 1")
        if min(self.encoder_depth, self.decoder_depth) < 1:
            raise ValueError("encoder_depth and decoder_depth must be >= 1")
        if not 0 <= self.nested_dropout <= 1:
            raise ValueError(f"nested_dropout is a share of the training images, in [0, 1]; got {self.nested_dropout}")
        if self.quant_warmup < 0:
            raise ValueError(f"quant_warmup must be >= 0 steps, got {self.quant_warmup}")
        if self.quantizer not in ("vq", "fsq"):
            raise ValueError(f"quantizer must be 'vq' or 'fsq' for a 1-D tokenizer, got {self.quantizer!r}")
        if self.quantizer == "fsq":
            check_fsq_levels(self.levels, self.codebook_dim, self.codebook_size)
        if self.stem not in ("linear", "conv"):
            raise ValueError(f"stem must be 'linear' or 'conv', got {self.stem!r}")
        if self.stem == "conv":
            p = self.patch_size
            if p & (p - 1):
                raise ValueError(f"a conv stem downsamples by powers of 2: patch_size must be 1, 2, 4, 8, ...; got {p}")
            bad = [w for w in (self.conv_ch * m for m in self.conv_mult) if w % self.conv_groups]
            if self.conv_ch < 1 or self.conv_groups < 1 or bad:
                raise ValueError(f"conv_groups={self.conv_groups} must divide every conv width "
                                 f"{[self.conv_ch * m for m in self.conv_mult]} (conv_ch={self.conv_ch})")  # fmt: skip
        self.transformer(1)  # width / heads checked there

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def conv_mult(self) -> tuple[int, ...]:
        """Width multipliers of the conv stem's levels: 1, 2, 4, ... (log2(patch_size) + 1 levels)."""
        return tuple(2**i for i in range(self.patch_size.bit_length()))

    def conv_arch(self) -> dict:
        """Keyword arguments of :class:`ConvEncoder` / :class:`ConvDecoder` for the conv stem."""
        return dict(ch=self.conv_ch, ch_mult=self.conv_mult, num_res_blocks=self.conv_res_blocks, z_channels=self.width,
                    groups=self.conv_groups, attn_lowest=False, attn_mid=False)  # fmt: skip

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.patch_size**2

    def transformer(self, depth: int) -> TransformerConfig:
        """A bidirectional ViT-style stack (LayerNorm, GELU MLP, biases) of ``depth`` blocks."""
        return TransformerConfig(depth=depth, width=self.width, num_heads=self.num_heads, conditioning="prefix",
                                 attention="plain", qkv_bias="qkv", proj_bias=True, norm="layernorm", norm_eps=1e-6,
                                 mlp="gelu-exact", mlp_ratio=self.mlp_ratio, mlp_bias=True)  # fmt: skip


def patchify(x_BCHW: Tensor, p: int) -> Tensor:
    """(B, C, H, W) -> (B, N, C*p*p) in raster order of the patches."""
    B, C, H, W = x_BCHW.shape
    x = x_BCHW.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, (H // p) * (W // p), C * p * p)


def unpatchify(x_BNP: Tensor, p: int, C: int) -> Tensor:
    """Inverse of :func:`patchify`: (B, N, C*p*p) -> (B, C, H, W)."""
    B, N, _ = x_BNP.shape
    n = math.isqrt(N)
    return x_BNP.reshape(B, n, n, C, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, C, n * p, n * p)


@register_model
class OneDimTokenizer(Tokenizer):
    """Images (B, C, H, W) <-> K ids (B, K), a 1-D sequence ordered coarse to fine."""

    model_type = "onedim_tokenizer"
    config_class = OneDimConfig
    config: OneDimConfig

    def __init__(self, config: OneDimConfig) -> None:
        super().__init__(config)
        c, E, N, K = config, config.width, config.num_patches, config.num_latents
        if c.stem == "conv":
            self.pixel_encoder = ConvEncoder(in_channels=c.in_channels, **c.conv_arch())
            self.pixel_decoder = ConvDecoder(out_channels=c.in_channels, **c.conv_arch())
        else:
            self.patch_in = nn.Linear(c.patch_dim, E)
        self.enc_pos = nn.Parameter(torch.zeros(1, N, E))
        self.latent_queries = nn.Parameter(torch.zeros(1, K, E))
        self.read_in = nn.Parameter(torch.zeros(K, N))  # linear pooling of the patch tokens into the queries
        self.encoder = Transformer(c.transformer(c.encoder_depth))
        self.to_code = nn.Linear(E, c.codebook_dim)
        self.quantize = (FSQuantizer(c.levels) if c.quantizer == "fsq"
                         else VectorQuantizer(c.codebook_size, c.codebook_dim, beta=c.beta, l2_norm=c.l2_norm))  # fmt: skip
        self.from_code = nn.Linear(c.codebook_dim, E)
        self.dropped = nn.Parameter(torch.zeros(1, 1, E))  # stands in for every token after the kept prefix
        self.dec_latent_pos = nn.Parameter(torch.zeros(1, K, E))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, E))
        self.dec_pos = nn.Parameter(torch.zeros(1, N, E))
        self.read_out = nn.Parameter(torch.zeros(N, K))  # linear unpooling of the latent tokens into the mask tokens
        self.decoder = Transformer(c.transformer(c.decoder_depth))
        if c.stem == "linear":
            self.patch_out = nn.Linear(E, c.patch_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():  # the conv stem keeps PyTorch's default init, as the grid tokenizers do
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for p in (self.enc_pos, self.latent_queries, self.dropped, self.dec_latent_pos, self.mask_token, self.dec_pos):
            nn.init.trunc_normal_(p, std=0.02)
        nn.init.normal_(self.read_in, std=self.config.num_patches**-0.5)
        nn.init.normal_(self.read_out, std=self.config.num_latents**-0.5)

    # -- layout ---------------------------------------------------------------------------------
    @property
    def layout(self) -> TokenLayout:
        return TokenLayout("sequence", self.codebook_size, length=self.config.num_latents, code_dim=self.config.codebook_dim)

    # -- the two halves -------------------------------------------------------------------------
    def encode_latent(self, images_BCHW: Tensor) -> Tensor:
        """Pre-quantization latent tokens as (B, D, 1, K) (the quantizer's (B, D, h, w) with h = 1)."""
        self.check_images(images_BCHW)
        x_BNE = self.pixels_in(images_BCHW) + self.enc_pos
        queries = self.latent_queries + torch.einsum("kn,bne->bke", self.read_in, x_BNE)
        h = self.encoder(torch.cat([x_BNE, queries], 1))
        z_BKD = self.to_code(h[:, x_BNE.shape[1] :])
        return z_BKD.transpose(1, 2).unsqueeze(2)

    def decode_codes(self, z_BkD: Tensor, keep_B: Tensor | None = None) -> Tensor:
        """Images (B, C, H, W), not clamped, from the codes of a prefix of k <= K tokens (B, k, D).

        Positions k..K-1 get the learned "dropped" embedding; ``keep_B`` (B,) drops more per image
        (position i is kept when i < keep_B[b]), as nested dropout does in training.
        """
        c = self.config
        B, k, _ = z_BkD.shape
        x = self.from_code(z_BkD)
        if k < c.num_latents:
            x = torch.cat([x, self.dropped.expand(B, c.num_latents - k, -1)], 1)
        if keep_B is not None:
            kept_BK1 = (torch.arange(c.num_latents, device=x.device) < keep_B[:, None]).unsqueeze(-1)
            x = torch.where(kept_BK1, x, self.dropped.to(x.dtype))
        masks = self.mask_token + self.dec_pos + torch.einsum("nk,bke->bne", self.read_out, x)
        h = self.decoder(torch.cat([x + self.dec_latent_pos, masks], 1))
        return self.pixels_out(h[:, c.num_latents :])

    def pixels_in(self, images_BCHW: Tensor) -> Tensor:
        """Images (B, C, H, W) -> patch tokens (B, N, E), raster order."""
        if self.config.stem == "conv":
            return self.pixel_encoder(images_BCHW).flatten(2).transpose(1, 2)
        return self.patch_in(patchify(images_BCHW, self.config.patch_size))

    def pixels_out(self, x_BNE: Tensor) -> Tensor:
        """Decoder outputs at the patch positions (B, N, E) -> images (B, C, H, W), not clamped."""
        c = self.config
        if c.stem == "conv":
            n = c.image_size // c.patch_size
            return self.pixel_decoder(x_BNE.transpose(1, 2).reshape(x_BNE.shape[0], -1, n, n))
        return unpatchify(self.patch_out(x_BNE), c.patch_size, c.in_channels)

    # -- training -------------------------------------------------------------------------------
    def forward(self, images_BCHW: Tensor, keep_B: Tensor | None = None, *, quantized: bool = True) -> TokenizerOutput:
        """Training pass: reconstruction (not clamped) from the first ``keep_B`` tokens of each image
        (None = all K); ``quantized=False`` decodes the (normalised) latents themselves (warm-up)."""
        z = self.encode_latent(images_BCHW)
        out = self.quantize(z)
        z_q = out.z_q if quantized else (F.normalize(z, dim=1) if self.config.l2_norm and self.config.quantizer == "vq" else z)
        z_BKD = z_q.squeeze(2).transpose(1, 2)
        recon = self.decode_codes(z_BKD, keep_B)
        return TokenizerOutput(recon=recon, quant_loss=out.loss, indices=out.indices, candidates=out.candidates)

    def draw_keep(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """Nested dropout's prefix lengths (B,): K for a share 1 - ``nested_dropout`` of the images,
        else k = floor(K^u), u ~ U[0, 1), log-uniform in 1..K-1."""
        K, share = self.config.num_latents, self.config.nested_dropout
        u = torch.rand(batch_size, generator=generator)
        drop = torch.rand(batch_size, generator=generator) < share
        k = torch.exp(u * math.log(K)).floor().long().clamp(1, K)
        return torch.where(drop, k, torch.full_like(k, K))

    def training_loss(self, images_BCHW: Tensor, step: int, generator: torch.Generator | None = None
                      ) -> tuple[Tensor, Tensor, TokenizerOutput]:  # fmt: skip
        """(loss, reconstruction MSE, output) of one training step with nested dropout (the
        training loop's hook for tokenizers with a loss of their own)."""
        keep = self.draw_keep(images_BCHW.shape[0], generator).to(images_BCHW.device)
        out = self(images_BCHW, keep, quantized=step >= self.config.quant_warmup)
        rec = F.mse_loss(out.recon, images_BCHW)
        return rec + out.quant_loss, rec, out

    # -- tokens <-> images ----------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images (B, C, H, W) in [-1, 1] -> ids (B, K), coarse to fine."""
        return self.quantize.quantize(self.encode_latent(images))

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        """Ids (B, k) -> images (B, C, H, W) in [-1, 1]: all K tokens, or any prefix of 1..K of them."""
        self.check_tokens(tokens)
        ids = tokens.to(self._device()).long()
        x = self.decode_codes(self.quantize.embed(ids, 1, ids.shape[1]).squeeze(2).transpose(1, 2))
        return x.clamp(-1, 1) if self.config.clamp_output else x

    def check_tokens(self, tokens: Tensor) -> None:
        """A clear error unless ``tokens`` is (B, k) integer ids with 1 <= k <= K."""
        K = self.num_tokens
        if not isinstance(tokens, Tensor) or tokens.ndim != 2:
            raise ValueError(f"tokens must be a (B, k) integer tensor with k <= {K}, got {getattr(tokens, 'shape', type(tokens))}")
        if tokens.is_floating_point() or tokens.dtype == torch.bool:
            raise TypeError(f"tokens must be integers, got dtype {tokens.dtype}")
        if not 1 <= tokens.shape[1] <= K:
            raise ValueError(f"this tokenizer decodes 1 to {K} tokens per image (a prefix of its {K}-token sequence), "
                             f"got {tokens.shape[1]}")  # fmt: skip
        self.check_ids(tokens)
