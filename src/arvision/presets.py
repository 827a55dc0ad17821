"""Named configs: ``tiny-*`` for tests, ``mnist-*`` for the shipped models, official sizes.

A preset is a model config plus the training settings that go with it, so
``arvision train tokenizer --preset mnist-vq`` needs no other flag to reproduce a shipped model.
"""

from __future__ import annotations

from dataclasses import dataclass

from arvision.config import Config
from arvision.tokenizers import MultiScaleVQConfig, MultiScaleVQTokenizer, Tokenizer, VQConfig, VQTokenizer


@dataclass(frozen=True, kw_only=True)
class TokenizerTrainConfig(Config):
    """Tokenizer training settings.

    Args:
        steps: optimizer steps.
        batch_size: images per step.
        lr: peak AdamW learning rate (linear warm-up, cosine decay to ``lr * min_lr_ratio``).
        restart_every: restart codes unused in the last ``restart_every`` steps (0 = never);
            restarts stop after ``restart_until`` of training so the codebook can settle.
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
    restart_every: int = 100
    restart_until: float = 0.9
    ckpt_every: int = 250
    holdout: float = 0.05
    seed: int = 0
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.lr <= 0:
            raise ValueError("lr must be > 0")


@dataclass(frozen=True)
class TokenizerPreset:
    description: str
    model_class: type[Tokenizer]
    config: VQConfig | MultiScaleVQConfig
    train: TokenizerTrainConfig


_MNIST_ARCH = dict(image_size=28, in_channels=1, ch=16, ch_mult=(1, 2, 4), num_res_blocks=1, z_channels=32,
                   norm_groups=8, attn_lowest=False, attn_mid=False)  # fmt: skip
_TINY_ARCH = dict(image_size=16, in_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=8,
                  norm_groups=4, codebook_size=32, codebook_dim=4)  # fmt: skip
_TINY_TRAIN = TokenizerTrainConfig(steps=4, batch_size=8, warmup_steps=1, restart_every=2, ckpt_every=2)

TOKENIZER_PRESETS: dict[str, TokenizerPreset] = {
    "tiny-vq": TokenizerPreset("tiny VQ tokenizer for tests (16x16, 8x8 tokens)", VQTokenizer, VQConfig(**_TINY_ARCH), _TINY_TRAIN),
    "tiny-msvq": TokenizerPreset(
        "tiny multi-scale tokenizer for tests (16x16, scales 1,2,4,8)",
        MultiScaleVQTokenizer,
        MultiScaleVQConfig(**_TINY_ARCH, patch_nums=(1, 2, 4, 8), quant_conv_kernel=3),
        _TINY_TRAIN,
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


def get_tokenizer_preset(name: str) -> TokenizerPreset:
    if name not in TOKENIZER_PRESETS:
        raise ValueError(f"unknown tokenizer preset '{name}'; choose one of: {', '.join(TOKENIZER_PRESETS)}")
    return TOKENIZER_PRESETS[name]
