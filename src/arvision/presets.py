"""Named configs: ``tiny-*`` for tests, ``mnist-*`` for the shipped models, official sizes.

A preset is a model config plus the training settings that go with it, so
``arvision train tokenizer --preset mnist-vq`` needs no other flag to reproduce a shipped model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from arvision.config import Config
from arvision.tokenizers import KLConfig, KLTokenizer, MultiScaleVQConfig, MultiScaleVQTokenizer, Tokenizer, VQConfig, VQTokenizer
from arvision.tokenizers.flexscale import FlexScaleConfig, FlexScaleTokenizer
from arvision.tokenizers.onedim import OneDimConfig, OneDimTokenizer
from arvision.tokenizers.tokenbridge import TokenBridgeConfig, TokenBridgeTokenizer


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Config):
    """Settings every training loop shares.

    Args:
        steps: optimizer steps.
        batch_size: examples per step (global under DDP).
        lr: peak AdamW learning rate (linear warm-up, cosine decay to ``lr * min_lr_ratio``).
        ckpt_every: steps between resumable checkpoints.
    """

    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.0
    betas: tuple[float, ...] = (0.9, 0.95)
    grad_clip: float = 1.0
    ckpt_every: int = 250
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.lr <= 0:
            raise ValueError("lr must be > 0")


@dataclass(frozen=True, kw_only=True)
class TokenizerTrainConfig(TrainConfig):
    """Args: restart_every: restart codes unused in the last ``restart_every`` steps (0 = never);
    restarts stop after ``restart_until`` of training so the codebook can settle. holdout: share of
    a folder dataset kept for the final evaluation (MNIST uses its test split)."""

    restart_every: int = 100
    restart_until: float = 0.9
    holdout: float = 0.05
    num_workers: int = 0
    base: str | None = None  # post-training tokenizers (TokenBridge): the trained tokenizer to fit on; None = built in place
    # real images (arvision.train.adversarial): LPIPS from local files, PatchGAN after a warm-up, EMA, bf16 autocast
    perceptual_weight: float = 0.0
    perceptual_net: tuple[str, ...] = ()
    disc_weight: float = 0.0
    disc_start: int = 0
    disc_layers: int = 3
    ema: float = 0.0
    mixed_precision: str = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.perceptual_weight < 0 or self.disc_weight < 0 or self.disc_start < 0:
            raise ValueError("perceptual_weight, disc_weight and disc_start must be >= 0")
        if self.perceptual_weight > 0 and not self.perceptual_net:
            raise ValueError("a perceptual loss needs the LPIPS weights: --perceptual-net VGG16_FILE LPIPS_LIN_FILE "
                             "(or one file holding both); nothing is downloaded")  # fmt: skip
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if self.mixed_precision not in ("none", "bf16"):
            raise ValueError(f"mixed_precision must be 'none' or 'bf16', got {self.mixed_precision!r}")
        if self.disc_layers < 1:
            raise ValueError(f"disc_layers must be >= 1, got {self.disc_layers}")


@dataclass(frozen=True)
class TokenizerPreset:
    description: str
    model_class: type[Tokenizer]
    config: VQConfig | MultiScaleVQConfig | KLConfig | FlexScaleConfig | TokenBridgeConfig | OneDimConfig
    train: TokenizerTrainConfig


_MNIST_ARCH = dict(image_size=28, in_channels=1, ch=16, ch_mult=(1, 2, 4), num_res_blocks=1, z_channels=32,
                   norm_groups=8, attn_lowest=False, attn_mid=False)  # fmt: skip
_TINY_ARCH = dict(image_size=16, in_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=8,
                  norm_groups=4, codebook_size=32, codebook_dim=4)  # fmt: skip
_TINY_TRAIN = TokenizerTrainConfig(steps=4, batch_size=8, warmup_steps=1, restart_every=2, ckpt_every=2)
_NO_CODEBOOK = ("codebook_size", "codebook_dim")
_TINY_KL_ARCH = {k: v for k, v in _TINY_ARCH.items() if k not in _NO_CODEBOOK}

TOKENIZER_PRESETS: dict[str, TokenizerPreset] = {
    "tiny-vq": TokenizerPreset("tiny VQ tokenizer for tests (16x16, 8x8 tokens)", VQTokenizer, VQConfig(**_TINY_ARCH), _TINY_TRAIN),
    "tiny-msvq": TokenizerPreset(
        "tiny multi-scale tokenizer for tests (16x16, scales 1,2,4,8)",
        MultiScaleVQTokenizer,
        MultiScaleVQConfig(**_TINY_ARCH, patch_nums=(1, 2, 4, 8), quant_conv_kernel=3),
        _TINY_TRAIN,
    ),
    **{f"tiny-{q}": TokenizerPreset(f"tiny {q.upper()} grid tokenizer for tests (16x16, 8x8 tokens, 32 ids)", VQTokenizer,
                                    VQConfig(**{**_TINY_ARCH, **kw}), _TINY_TRAIN)
       for q, kw in {"fsq": dict(quantizer="fsq", levels=(4, 4, 2), codebook_dim=3), "lfq": dict(quantizer="lfq", codebook_dim=5),
                     "bsq": dict(quantizer="bsq", codebook_dim=5),
                     "fq": dict(quantizer="fq", num_codebooks=2, codebook_size=36)}.items()},  # fmt: skip
    "tiny-kl": TokenizerPreset(
        "tiny KL tokenizer for tests (16x16, 8x8 continuous 4-d tokens)", KLTokenizer,
        KLConfig(**_TINY_KL_ARCH, embed_dim=4, kl_weight=1e-6), _TINY_TRAIN.replace(restart_every=0),
    ),
    "mnist-vq": TokenizerPreset(
        "MNIST VQ grid tokenizer: 28x28 grayscale -> 7x7 ids, codebook 256 (l2-normalised)",
        VQTokenizer,
        VQConfig(**_MNIST_ARCH, codebook_size=256, codebook_dim=8, l2_norm=True),
        TokenizerTrainConfig(steps=2000, batch_size=64, lr=2e-3),
    ),
    "mnist-msvq": TokenizerPreset(
        "MNIST multi-scale residual tokenizer: 28x28 grayscale -> scales 1,2,3,4,5,7 (104 ids), codebook 256",
        MultiScaleVQTokenizer,
        MultiScaleVQConfig(**_MNIST_ARCH, codebook_size=256, codebook_dim=16, patch_nums=(1, 2, 3, 4, 5, 7),
                           quant_conv_kernel=3),  # fmt: skip
        TokenizerTrainConfig(steps=2000, batch_size=64, lr=2e-3),
    ),
    # The same conv stack, 7x7 grid and bit budget (8 bits per token) as mnist-vq with other quantizers
    # (arvision.tokenizers.implicit); FSQ has nothing to restart, LFQ/BSQ restart dead bits, FQ its sub-codebooks.
    "mnist-fsq": TokenizerPreset(
        "MNIST FSQ grid tokenizer: 28x28 grayscale -> 7x7 ids, 4 channels x 4 levels (256 codes, no codebook)",
        VQTokenizer, VQConfig(**_MNIST_ARCH, quantizer="fsq", levels=(4, 4, 4, 4), codebook_size=256, codebook_dim=4),
        TokenizerTrainConfig(steps=2000, batch_size=64, lr=2e-3, restart_every=0),
    ),
    "mnist-lfq": TokenizerPreset(
        "MNIST LFQ grid tokenizer: 28x28 grayscale -> 7x7 ids, 8 sign bits per token (256 codes, entropy penalty)",
        VQTokenizer, VQConfig(**_MNIST_ARCH, quantizer="lfq", codebook_size=256, codebook_dim=8, entropy_weight=0.2),
        TokenizerTrainConfig(steps=2000, batch_size=64, lr=2e-3),  # restarts revive dead bits
    ),
    "mnist-bsq": TokenizerPreset(
        "MNIST BSQ grid tokenizer: 28x28 grayscale -> 7x7 ids, 8 bits on the unit sphere per token (256 codes)",
        VQTokenizer, VQConfig(**_MNIST_ARCH, quantizer="bsq", codebook_size=256, codebook_dim=8, entropy_weight=0.2),
        TokenizerTrainConfig(steps=2000, batch_size=64, lr=2e-3),  # restarts revive dead bits
    ),
    "mnist-fq": TokenizerPreset(
        "MNIST factorized-codebook tokenizer (FQGAN): 28x28 grayscale -> 7x7 ids, 2 sub-codebooks of 16 codes "
        "(4-d each, id = i0 + 16 i1, 256 ids), disentanglement loss",
        VQTokenizer, VQConfig(**_MNIST_ARCH, quantizer="fq", num_codebooks=2, codebook_size=256, codebook_dim=8),
        TokenizerTrainConfig(steps=2000, batch_size=64, lr=2e-3),
    ),
    # The same conv stack and latent (7x7x8) as mnist-vq, with a Gaussian bottleneck instead of a codebook.
    "mnist-kl": TokenizerPreset(
        "MNIST KL tokenizer: 28x28 grayscale -> 7x7 continuous 8-d tokens (MAR-style VAE)",
        KLTokenizer,
        KLConfig(**_MNIST_ARCH, embed_dim=8, kl_weight=1e-4, scale_factor=1.0),
        TokenizerTrainConfig(steps=2000, batch_size=64, lr=2e-3, restart_every=0),
    ),
    # Official architectures (weights come from `arvision convert`, not from training here).
    "llamagen-vq16": TokenizerPreset(
        "LlamaGen VQ-16 architecture (256px, 16x16 ids, codebook 16384x8)",
        VQTokenizer,
        VQConfig(image_size=256, ch=128, z_channels=256, codebook_size=16384, codebook_dim=8, clamp_output=False),
        TokenizerTrainConfig(),
    ),
    "var-vae": TokenizerPreset(
        "VAR multi-scale VQVAE architecture (256px, 10 scales up to 16x16, codebook 4096x32, ch=160)",
        MultiScaleVQTokenizer,
        MultiScaleVQConfig(image_size=256, ch=160, z_channels=32, codebook_size=4096, codebook_dim=32, quant_conv_kernel=3),
        TokenizerTrainConfig(),
    ),
}

# TokenBridge: a KL tokenizer's latents quantized per channel after training; "training" fits the bins on them.
TOKENIZER_PRESETS["tiny-tokenbridge"] = TokenizerPreset(
    "tiny TokenBridge tokenizer for tests (tiny-kl built in place, 4 channels x 8 levels)", TokenBridgeTokenizer,
    TokenBridgeConfig(kl=TOKENIZER_PRESETS["tiny-kl"].config, bins=8), _TINY_TRAIN.replace(restart_every=0),
)
TOKENIZER_PRESETS["mnist-tokenbridge"] = TokenizerPreset(
    "MNIST TokenBridge tokenizer: mnist-kl's 7x7 8-d tokens, each channel quantized to 16 levels (uniform bins, "
    "mean +- 3 std)",
    TokenBridgeTokenizer, TokenBridgeConfig(kl=TOKENIZER_PRESETS["mnist-kl"].config, bins=16, method="uniform", clip_std=3.0),
    TokenizerTrainConfig(restart_every=0, base="mnist-kl"),
)

# FlexVAR: every scale quantizes the image at that scale (no residuals); the decoder also trains on 2x images.
TOKENIZER_PRESETS["tiny-flexscale"] = TokenizerPreset(
    "tiny FlexVAR multi-scale tokenizer for tests (16x16, independent scales 1,2,4,8, decodes 2x)", FlexScaleTokenizer,
    FlexScaleConfig(**_TINY_ARCH, patch_nums=(1, 2, 4, 8), train_scales=1, upsample_every=2), _TINY_TRAIN,
)
TOKENIZER_PRESETS["mnist-flexscale"] = TokenizerPreset(
    "MNIST FlexVAR tokenizer: 28x28 grayscale -> independently quantized scales 1-7 (140 ids), codebook 256 "
    "(l2-normalised), decoder trained up to 14x14 latents (56 px)",
    FlexScaleTokenizer,
    FlexScaleConfig(**_MNIST_ARCH, codebook_size=256, codebook_dim=8, patch_nums=(1, 2, 3, 4, 5, 6, 7), train_scales=1,
                    upsample_every=6),  # fmt: skip
    TokenizerTrainConfig(steps=1000, batch_size=64, lr=2e-3),
)


# 1-D tokens (TiTok/FlexTok): K latent tokens read by a transformer, any prefix decodes (nested dropout).
TOKENIZER_PRESETS["tiny-1d"] = TokenizerPreset(
    "tiny 1-D tokenizer for tests (16x16, 8 tokens, codebook 32, nested dropout)", OneDimTokenizer,
    OneDimConfig(image_size=16, in_channels=1, patch_size=4, num_latents=8, width=32, num_heads=2, encoder_depth=1,
                 decoder_depth=1, codebook_size=32, codebook_dim=4),  # fmt: skip
    _TINY_TRAIN,
)
TOKENIZER_PRESETS["mnist-1d"] = TokenizerPreset(
    "MNIST 1-D tokenizer (TiTok/FlexTok-style): 28x28 grayscale -> 48 ids of 8 bits (FSQ, 4 channels x 4 levels), "
    "coarse to fine: any prefix decodes (nested dropout); conv stem",
    OneDimTokenizer,
    OneDimConfig(image_size=28, in_channels=1, patch_size=4, num_latents=48, width=128, num_heads=4, encoder_depth=2,
                 decoder_depth=4, quantizer="fsq", levels=(4, 4, 4, 4), codebook_size=256, codebook_dim=4,
                 nested_dropout=0.25, stem="conv"),  # fmt: skip
    TokenizerTrainConfig(steps=3000, batch_size=64, lr=2e-3, restart_every=0),
)


def get_tokenizer_preset(name: str) -> TokenizerPreset:
    if name not in TOKENIZER_PRESETS:
        raise ValueError(f"unknown tokenizer preset '{name}'; choose one of: {', '.join(TOKENIZER_PRESETS)}")
    return TOKENIZER_PRESETS[name]


# ------------------------------------------------------------------------------------------
# Generators: a backbone + order; vocabulary, grid and scales come from the tokenizer.
# ------------------------------------------------------------------------------------------

from arvision.generators import (  # noqa: E402
    MarkovScaleGenerator, MaskedGenerator, NeighborGenerator, NextScaleGenerator, NextTokenGenerator,
)  # fmt: skip
from arvision.generators.base import Generator, GeneratorConfig  # noqa: E402
from arvision.generators.diffusion import DiffusionHeadConfig  # noqa: E402
from arvision.generators.flexvar import FlexVARGenerator  # noqa: E402
from arvision.generators.continuous import ContinuousNextTokenGenerator  # noqa: E402
from arvision.generators.mar import MarGenerator, mar_backbone  # noqa: E402
from arvision.generators.sequence import SequenceGenerator  # noqa: E402
from arvision.generators.tokenbridge import ChannelHeadConfig, TokenBridgeGenerator  # noqa: E402
from arvision.nn.transformer import TransformerConfig  # noqa: E402
from arvision.samplers.config import SamplingConfig  # noqa: E402


def llamagen_backbone(depth: int, width: int, heads: int) -> TransformerConfig:
    """LlamaGen's GPT: prefix class token, RMSNorm, SwiGLU, no biases, plain attention (+ 2D RoPE)."""
    return TransformerConfig(depth=depth, width=width, num_heads=heads, conditioning="prefix", attention="plain",
                             norm="rmsnorm", norm_eps=1e-5, mlp="swiglu", mlp_bias=False, proj_bias=False)  # fmt: skip


def var_backbone(depth: int, width: int, heads: int, *, shared_adaln: bool = False) -> TransformerConfig:
    """VAR's transformer: AdaLN, cosine attention, q/v biases, LayerNorm eps 1e-6, GELU-tanh MLP."""
    return TransformerConfig(depth=depth, width=width, num_heads=heads, conditioning="adaln", cond_dim=width,
                             shared_adaln=shared_adaln, attention="cosine", qkv_bias="qv", proj_bias=True,
                             norm="layernorm", norm_eps=1e-6, mlp="gelu", mlp_bias=True)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class GeneratorTrainConfig(TrainConfig):
    """Args: ema: decay of an exponential moving average of the weights (0 = off); when on, the
    EMA weights are the ones saved at the end. init: start from the weights of this generator
    (shipped name or directory, trained with the same tokenizer; fine-tuning) instead of a random
    init. eval_every: every this many steps (and at the end) sample ``eval_samples`` class-balanced
    images with the weights that would be saved, and record MNIST-FID and class accuracy against
    the MNIST test set: the training curve (0 = off; MNIST-sized models only)."""

    steps: int = 3000
    weight_decay: float = 0.05
    grad_clip: float = 2.0
    ema: float = 0.0
    init: str | None = None
    eval_every: int = 0
    eval_samples: int = 1000

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0 steps (0 = no training curve), got {self.eval_every}")
        if self.eval_samples < 20:
            raise ValueError(f"eval_samples must be >= 20 (two per class at least; 1000 or more for a usable FID), got {self.eval_samples}")


@dataclass(frozen=True)
class GeneratorPreset:
    """Args: extra: order-specific config fields (e.g. ``refine`` of the Markovian next-scale order)."""

    description: str
    model_class: type[Generator]
    transformer: TransformerConfig
    tokenizer: str  # default tokenizer (shipped name or preset) the generator is trained on
    train: GeneratorTrainConfig
    sampling: SamplingConfig
    extra: dict = field(default_factory=dict)

    def build_config(self, tokenizer: Tokenizer, num_classes: int) -> GeneratorConfig:
        """The generator config for this tokenizer and number of classes (a clear error if the order cannot use it)."""
        return self.model_class.config_for_tokenizer(tokenizer, transformer=self.transformer, num_classes=num_classes,
                                                     sampling=self.sampling, **self.extra)  # fmt: skip


_TINY_GEN_TRAIN = GeneratorTrainConfig(steps=4, batch_size=8, warmup_steps=1, ckpt_every=2)

GENERATOR_PRESETS: dict[str, GeneratorPreset] = {
    "tiny-raster": GeneratorPreset("tiny next-token generator for tests", NextTokenGenerator,
                                   llamagen_backbone(2, 32, 2), "tiny-vq", _TINY_GEN_TRAIN, SamplingConfig(cfg=2.0)),
    "tiny-scale": GeneratorPreset("tiny next-scale generator for tests", NextScaleGenerator, var_backbone(2, 32, 2),
                                  "tiny-msvq", _TINY_GEN_TRAIN, SamplingConfig(cfg=1.5, cfg_schedule="linear")),
    "tiny-masked": GeneratorPreset("tiny masked (MaskGIT-style) generator for tests", MaskedGenerator,
                                   llamagen_backbone(2, 32, 2), "tiny-vq", _TINY_GEN_TRAIN, SamplingConfig(cfg=2.0)),
    "tiny-neighbor": GeneratorPreset("tiny next-neighbour generator for tests", NeighborGenerator,
                                     llamagen_backbone(2, 32, 2), "tiny-vq", _TINY_GEN_TRAIN, SamplingConfig(cfg=2.0)),
    "tiny-mar": GeneratorPreset("tiny MAR (continuous tokens, diffusion head) for tests", MarGenerator, mar_backbone(2, 32, 2),
                                "tiny-kl", _TINY_GEN_TRAIN, SamplingConfig(cfg=2.0, cfg_schedule="mar-linear"),
                                {"decoder": mar_backbone(2, 32, 2), "buffer_size": 2,
                                 "head": DiffusionHeadConfig(token_dim=1, cond_dim=1, width=32, depth=2, sampling_steps=5)}),  # fmt: skip
    "tiny-raster-continuous": GeneratorPreset("tiny raster next-token generator with a diffusion head for tests",
                                              ContinuousNextTokenGenerator, llamagen_backbone(2, 32, 2), "tiny-kl", _TINY_GEN_TRAIN,
                                              SamplingConfig(cfg=2.0),
                                              {"head": DiffusionHeadConfig(token_dim=1, cond_dim=1, width=32, depth=2, sampling_steps=5)}),  # fmt: skip
    "tiny-markov-scale": GeneratorPreset("tiny Markovian next-scale generator (with refinement) for tests",
                                         MarkovScaleGenerator, var_backbone(2, 32, 2), "tiny-msvq", _TINY_GEN_TRAIN,
                                         SamplingConfig(cfg=1.5, cfg_schedule="linear"), {"refine": True}),
    "mnist-raster": GeneratorPreset(
        "MNIST class-conditional raster next-token generator (LlamaGen-style) on mnist-vq, 7x7 tokens",
        NextTokenGenerator, llamagen_backbone(6, 128, 4), "mnist-vq",
        GeneratorTrainConfig(steps=2500, batch_size=64, lr=2e-3), SamplingConfig(cfg=1.6, top_k=0),  # calibrated (docs/calibration.md)
    ),  # fmt: skip
    "mnist-raster-draft": GeneratorPreset(
        "MNIST draft model for speculative decoding of mnist-raster: raster next-token, depth 2, on mnist-vq",
        NextTokenGenerator, llamagen_backbone(2, 128, 4), "mnist-vq",
        GeneratorTrainConfig(steps=2500, batch_size=64, lr=2e-3), SamplingConfig(cfg=2.0),
    ),  # fmt: skip
    "mnist-scale": GeneratorPreset(
        "MNIST class-conditional next-scale generator (VAR-style) on mnist-msvq, scales 1-7",
        NextScaleGenerator, var_backbone(6, 128, 4), "mnist-msvq",
        GeneratorTrainConfig(steps=1500, batch_size=64, lr=2e-3),
        SamplingConfig(cfg=0.75, cfg_schedule="linear", temperature=1.15),  # calibrated (docs/calibration.md)
    ),  # fmt: skip
    "mnist-scale-refiner": GeneratorPreset(
        "MNIST next-scale refiner for collaborative decoding (CoDe) with mnist-scale: depth 2, trained on scales 3x3-7x7 only",
        NextScaleGenerator, var_backbone(2, 128, 4), "mnist-msvq",
        GeneratorTrainConfig(steps=1500, batch_size=64, lr=2e-3), SamplingConfig(cfg=2.0, cfg_schedule="linear"),
        {"scale_loss_weights": (0.0, 0.0, 1.0, 1.0, 1.0, 1.0)},
    ),  # fmt: skip
    "mnist-scale-variant": GeneratorPreset(
        "MNIST next-scale generator with weight-shared subnets of 2 and 3 blocks for the later scales (VARiant), "
        "fine-tuned from mnist-scale with a progressive loss share",
        NextScaleGenerator, var_backbone(6, 128, 4), "mnist-msvq",
        GeneratorTrainConfig(steps=400, batch_size=64, lr=5e-4, warmup_steps=20, init="mnist-scale"),
        SamplingConfig(cfg=2.0, cfg_schedule="linear"),
        {"subnet_depths": (2, 3), "subnet_from": (2, 3), "subnet_loss_share": (0.8, 0.5, 0.2)},
    ),  # fmt: skip
    "mnist-masked": GeneratorPreset(
        "MNIST class-conditional masked generator (MaskGIT-style, 16 steps by default) on mnist-vq, 7x7 tokens",
        MaskedGenerator, llamagen_backbone(6, 128, 4), "mnist-vq",
        GeneratorTrainConfig(steps=2500, batch_size=64, lr=2e-3),
        SamplingConfig(cfg=1.25, choice_temperature=15.0, temperature=1.1, num_steps=16),  # calibrated (docs/calibration.md)
    ),  # fmt: skip
    "mnist-neighbor": GeneratorPreset(
        "MNIST class-conditional next-neighbour generator (NAR-style, 13 ring steps) on mnist-vq, 7x7 tokens",
        NeighborGenerator, llamagen_backbone(6, 128, 4), "mnist-vq",
        GeneratorTrainConfig(steps=2500, batch_size=64, lr=2e-3), SamplingConfig(cfg=1.5),
    ),  # fmt: skip
    "mnist-markov-scale": GeneratorPreset(
        "MNIST class-conditional Markovian next-scale generator (HMAR-style, no KV cache, optional refinement) on mnist-msvq",
        MarkovScaleGenerator, var_backbone(6, 128, 4), "mnist-msvq",
        GeneratorTrainConfig(steps=1500, batch_size=64, lr=2e-3),
        SamplingConfig(cfg=0.75, cfg_schedule="linear", temperature=1.15),  # calibrated (docs/calibration.md)
        {"refine": True},
    ),  # fmt: skip
    "mnist-mar": GeneratorPreset(
        "MNIST class-conditional MAR (masked autoregressive, continuous tokens, diffusion head) on mnist-kl, 7x7 tokens",
        MarGenerator, mar_backbone(4, 128, 4), "mnist-kl",
        GeneratorTrainConfig(steps=4000, batch_size=64, lr=1e-3, weight_decay=0.02, ema=0.999),
        SamplingConfig(cfg=6.0, cfg_schedule="mar-linear", temperature=1.05, num_steps=16, diffusion_steps=50),  # calibrated (docs/calibration.md)
        {"decoder": mar_backbone(4, 128, 4), "buffer_size": 4,
         # MAR's truncated-normal mask share (>= 0.7 masked) never shows the model the mostly-known
         # images of sampling's last steps; with 49 tokens and a short training the loss then rises
         # with more context: MaskGIT's cosine share per image trains every stage (docs/calibration.md)
         "mask_schedule": "cosine",
         # MAR's head is 3 blocks of width 1024 for 16-d tokens with diffusion_batch_mul 4; 128 wide for
         # 8-d tokens and 2 noise draws per token keep training on a 2-core CPU under half an hour.
         # mnist-kl's training tokens lie in [-6.43, 6.43]: the predicted clean token is clamped to
         # that range at sampling (see DiffusionHeadConfig.clip_xstart)
         "head": DiffusionHeadConfig(token_dim=1, cond_dim=1, width=128, depth=3, batch_mul=2, sampling_steps=50,
                                     clip_xstart=6.5)},
    ),  # fmt: skip
    # Official architectures (random weights here; real weights through `arvision convert`).
    "gpt-b": GeneratorPreset("LlamaGen GPT-B (12 layers, width 768), 256 tokens", NextTokenGenerator,
                             llamagen_backbone(12, 768, 12), "llamagen-vq16", GeneratorTrainConfig(),
                             SamplingConfig(cfg=4.0, top_k=2000)),  # fmt: skip
    "var-d16": GeneratorPreset("VAR-d16 (depth 16, width 1024), 10 scales up to 16x16", NextScaleGenerator,
                               var_backbone(16, 1024, 16), "var-vae", GeneratorTrainConfig(),
                               SamplingConfig(cfg=1.5, cfg_schedule="linear", top_k=900, top_p=0.96)),  # fmt: skip
}

# TokenBridge: raster next-token over per-channel ids, a small causal transformer over the channels as the head.
GENERATOR_PRESETS["tiny-tokenbridge"] = GeneratorPreset(
    "tiny TokenBridge generator (raster order, channel-autoregressive head) for tests", TokenBridgeGenerator,
    llamagen_backbone(2, 32, 2), "tiny-tokenbridge", _TINY_GEN_TRAIN, SamplingConfig(cfg=2.0),
    {"channel_head": ChannelHeadConfig(width=16, depth=1, num_heads=2)},
)
GENERATOR_PRESETS["mnist-tokenbridge"] = GeneratorPreset(
    "MNIST class-conditional TokenBridge generator: raster next-token over mnist-kl's tokens quantized per channel, "
    "channel-autoregressive head, 7x7 tokens",
    TokenBridgeGenerator, llamagen_backbone(6, 128, 4), "mnist-tokenbridge",
    GeneratorTrainConfig(steps=2000, batch_size=64, lr=2e-3), SamplingConfig(cfg=1.5),  # calibrated (docs/calibration.md)
    {"channel_head": ChannelHeadConfig(width=64, depth=1, num_heads=2)},
)

# FlexVAR: next-scale without residuals, any schedule at sampling (scale-aware positions, random training schedules).
GENERATOR_PRESETS["tiny-flexvar"] = GeneratorPreset(
    "tiny FlexVAR generator for tests (any schedule of sides up to 16)", FlexVARGenerator, var_backbone(2, 32, 2),
    "tiny-flexscale", _TINY_GEN_TRAIN, SamplingConfig(cfg=1.5, cfg_schedule="linear"),
)
GENERATOR_PRESETS["mnist-flexvar"] = GeneratorPreset(
    "MNIST class-conditional FlexVAR generator (next-scale without residuals, VAR backbone) on mnist-flexscale: "
    "trained on random schedules of sides 1-7, sampled with any schedule of sides up to 14 (56 px)",
    FlexVARGenerator, var_backbone(6, 128, 4), "mnist-flexscale",
    GeneratorTrainConfig(steps=1500, batch_size=64, lr=2e-3),
    SamplingConfig(cfg=1.5, cfg_schedule="linear", temperature=1.3),  # calibrated (docs/calibration.md)
)


# 1-D tokens (TiTok/FlexTok): raster next-token over the sequence with 1-D RoPE; fewer tokens at sampling (num_tokens).
GENERATOR_PRESETS["tiny-1d-raster"] = GeneratorPreset(
    "tiny next-token generator over a 1-D token sequence for tests", SequenceGenerator, llamagen_backbone(2, 32, 2),
    "tiny-1d", _TINY_GEN_TRAIN, SamplingConfig(cfg=2.0),
)
GENERATOR_PRESETS["mnist-1d-raster"] = GeneratorPreset(
    "MNIST class-conditional next-token generator (LlamaGen-style, 1-D RoPE) on mnist-1d's 48-token sequences; "
    "num_tokens=k draws the first k tokens (a coarser image in k passes)",
    SequenceGenerator, llamagen_backbone(6, 128, 4), "mnist-1d",
    GeneratorTrainConfig(steps=3000, batch_size=64, lr=2e-3), SamplingConfig(cfg=1.3),
)

def get_generator_preset(name: str) -> GeneratorPreset:
    if name not in GENERATOR_PRESETS:
        raise ValueError(f"unknown generator preset '{name}'; choose one of: {', '.join(GENERATOR_PRESETS)}")
    return GENERATOR_PRESETS[name]


# CTF coarse-to-fine
# Raster next-token over k-means clusters of the codes, then every code in one bidirectional pass (generators/ctf.py).
from arvision.generators.ctf import CTFGenerator  # noqa: E402

GENERATOR_PRESETS["tiny-ctf"] = GeneratorPreset(
    "tiny coarse-to-fine generator for tests (4 coarse labels of tiny-vq's 32 codes)", CTFGenerator,
    llamagen_backbone(2, 32, 2), "tiny-vq", _TINY_GEN_TRAIN, SamplingConfig(cfg=2.0), {"num_coarse": 4, "fine_depth": 1},
)
GENERATOR_PRESETS["mnist-ctf"] = GeneratorPreset(
    "MNIST class-conditional coarse-to-fine generator (CTF) on mnist-vq, 7x7 tokens: raster next-token over 32 k-means "
    "clusters of the 256 codes, then every code in one bidirectional pass (49 + 1 passes)",
    CTFGenerator, llamagen_backbone(6, 128, 4), "mnist-vq",
    GeneratorTrainConfig(steps=2000, batch_size=64, lr=2e-3), SamplingConfig(cfg=1.5),
    {"num_coarse": 32, "fine_depth": 2},
)  # fmt: skip


# JPEG-LM: bytes of JPEG files
# The tokens are the bytes of each image's canonical JPEG file (Pillow, fixed quality; the shared header is stored
# once in the tokenizer), then END and PAD (tokenizers/jpeg.py); raster next-token over the 1-D byte sequence.
from arvision.generators.sequence import SequenceGenerator  # noqa: E402
from arvision.tokenizers.jpeg import JpegConfig, JpegTokenizer  # noqa: E402

TOKENIZER_PRESETS["tiny-jpeg"] = TokenizerPreset(
    "tiny JPEG byte tokenizer for tests (8x8 grayscale, quality 25, at most 39 bytes + END)", JpegTokenizer,
    JpegConfig(image_size=8, quality=25, max_len=40), _TINY_TRAIN.replace(restart_every=0),
)
TOKENIZER_PRESETS["mnist-jpeg-codec"] = TokenizerPreset(
    "MNIST JPEG byte tokenizer: the scan bytes of each 28x28 image's JPEG file (Pillow, quality 25, baseline, standard "
    "Huffman tables; the 328-byte header is shared), then END and PAD: at most 199 bytes + END",
    JpegTokenizer, JpegConfig(image_size=28, quality=25, max_len=200), TokenizerTrainConfig(restart_every=0),
)
TOKENIZER_PRESETS["mnist-jpeg-rst-codec"] = TokenizerPreset(
    "MNIST JPEG byte tokenizer with a restart marker after every 8x8 block (Pillow, quality 25, baseline, standard "
    "Huffman tables, restart interval 1): each block starts on a byte boundary with its DC coded afresh, after FF D0..D7; "
    "at most 235 bytes + END (MNIST train; test: 219)",
    JpegTokenizer, JpegConfig(image_size=28, quality=25, max_len=236, restart_interval=1), TokenizerTrainConfig(restart_every=0),
)
GENERATOR_PRESETS["tiny-jpeg"] = GeneratorPreset(
    "tiny JPEG-LM generator for tests (raster next-token over JPEG bytes, PAD after END)", SequenceGenerator,
    llamagen_backbone(2, 32, 2), "tiny-jpeg", _TINY_GEN_TRAIN, SamplingConfig(cfg=2.0),
)
GENERATOR_PRESETS["mnist-jpeg"] = GeneratorPreset(
    "MNIST class-conditional JPEG-LM generator: raster next-token over the bytes of JPEG files with a restart marker after "
    "every 8x8 block (mnist-jpeg-rst-codec: quality 25, up to 236 tokens, PAD after END); beside each byte it reads where "
    "the JPEG parser stands after it (block, coefficient, part of a Huffman code: SequenceConfig.parse_state)",
    SequenceGenerator, llamagen_backbone(4, 128, 4), "mnist-jpeg",
    GeneratorTrainConfig(steps=5000, batch_size=64, lr=2e-3), SamplingConfig(cfg=2.0, temperature=0.6, constrained=True),
    {"parse_state": True},
)  # tokenizer: the shipped model's tokenizer/ (made by `train tokenizer --preset mnist-jpeg-rst-codec`); temperature 0.6 and
# cfg 2 calibrated by `arvision tune` (docs/jpeg.md); constrained: only bytes that keep the stream a valid scan are drawn
GENERATOR_PRESETS["mnist-jpeg-plain"] = GeneratorPreset(
    "MNIST class-conditional JPEG-LM generator over the bytes alone: raster next-token over mnist-jpeg-codec's streams "
    "(quality 25, no restart markers, up to 200 tokens, PAD after END), no parser state",
    SequenceGenerator, llamagen_backbone(4, 128, 4), "mnist-jpeg-codec",
    GeneratorTrainConfig(steps=5000, batch_size=64, lr=2e-3), SamplingConfig(cfg=2.0, constrained=True),
)  # the first JPEG-LM runs (docs/jpeg.md): 12.25 % class accuracy after 5000 steps
GENERATOR_PRESETS["mnist-jpeg-rst"] = GeneratorPreset(
    "MNIST class-conditional JPEG-LM generator over JPEG files with a restart marker after every block (mnist-jpeg-rst-codec: "
    "quality 25, up to 236 tokens, PAD after END), so that the stream marks where each 8x8 block starts; no parser state",
    SequenceGenerator, llamagen_backbone(4, 128, 4), "mnist-jpeg-rst-codec",
    GeneratorTrainConfig(steps=5000, batch_size=64, lr=2e-3), SamplingConfig(cfg=2.0, temperature=0.2, constrained=True),
)  # temperature 0.2: 63.85 % class accuracy after 3000 steps against 21.8 % at 1.0 (docs/jpeg.md)
GENERATOR_PRESETS["tiny-jpeg-parse"] = GeneratorPreset(
    "tiny JPEG-LM generator reading the parser state for tests", SequenceGenerator, llamagen_backbone(2, 32, 2), "tiny-jpeg",
    _TINY_GEN_TRAIN, SamplingConfig(cfg=2.0), {"parse_state": True},
)
