"""What every class-conditional generator shares: config, class embedding with a null class,
output head, weight init and the teacher-forced loss.

A generation order (``next_token.py``, ``next_scale.py``, ...) adds only its input embedding,
its attention mask and a ``step`` for incremental decoding; the backbone is
:class:`arvision.nn.transformer.Transformer` for all of them.

Legend: B batch, L tokens, C width, V vocabulary (codebook size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arvision.config import Config
from arvision.modeling import PretrainedModel
from arvision.nn.linear import Linear
from arvision.nn.transformer import Transformer, TransformerConfig

CFG_SCHEDULES = ("constant", "linear")


@dataclass(frozen=True, kw_only=True)
class SamplingConfig(Config):
    """Default sampling settings of a model; every one can be overridden per call.

    Guidance conventions differ between the anchors and each model keeps its own:

    * ``constant`` (LlamaGen): logits = uncond + cfg * (cond - uncond) at every step; 1 = off.
      ``cfg_interval`` >= 0 stops guiding after that many decoding steps (LlamaGen's cfg_interval).
    * ``linear`` (VAR): t = cfg * k / (K - 1) at step k of K, logits = (1 + t) cond - t uncond;
      0 = off. The weight ramps from 0 at the first step to ``cfg`` at the last.

    ``top_k`` 0 and ``top_p`` 0 (or 1) disable the filters; ``top_k=1`` is greedy decoding.

    Orders whose number of decoding steps is a sampling choice read ``num_steps`` (masked: steps
    for the whole grid; Markovian next-scale with refinement: steps per scale); None = the
    model's default. ``choice_temperature`` scales the annealed Gumbel noise added to the
    confidences that decide which tokens a masked step keeps (MaskGIT: 4.5).
    """

    cfg: float = 1.0
    cfg_schedule: str = "constant"
    cfg_interval: int = -1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0
    num_steps: int | None = None
    choice_temperature: float = 4.5

    def __post_init__(self) -> None:
        if self.cfg_schedule not in CFG_SCHEDULES:
            raise ValueError(f"cfg_schedule must be one of {CFG_SCHEDULES}, got {self.cfg_schedule!r}")
        if not math.isfinite(self.cfg) or self.cfg < 0:
            raise ValueError(f"cfg must be a finite number >= 0, got {self.cfg}")
        if self.cfg_interval < -1:
            raise ValueError(f"cfg_interval must be -1 (guide every step) or >= 0, got {self.cfg_interval}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 <= self.top_p <= 1:
            raise ValueError(f"top_p must be in [0, 1] (0 or 1 = off), got {self.top_p}")
        if self.num_steps is not None and (isinstance(self.num_steps, bool) or self.num_steps < 1):
            raise ValueError(f"num_steps must be a positive number of decoding steps (None = the model's default), got {self.num_steps}")
        if not self.choice_temperature >= 0:
            raise ValueError(f"choice_temperature must be >= 0, got {self.choice_temperature}")

    def guided(self) -> bool:
        return self.cfg != (1.0 if self.cfg_schedule == "constant" else 0.0)


@dataclass(frozen=True, kw_only=True)
class GeneratorConfig(Config):
    """Shared generator settings.

    Args:
        transformer: the backbone.
        vocab_size: tokenizer codebook size V.
        num_classes: class ids 0..num_classes-1; id ``num_classes`` is the null class (guidance).
        class_dropout: probability of replacing a label by the null class in training.
        head_bias: bias on the output head (VAR: yes, LlamaGen: no).
        init_std: std of the truncated-normal init; -1 = sqrt(1 / (3 C)) (VAR's rule).
        sampling: default sampling settings (see :class:`SamplingConfig`).
    """

    transformer: TransformerConfig
    vocab_size: int
    num_classes: int
    class_dropout: float = 0.1
    head_bias: bool = False
    init_std: float = 0.02
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self) -> None:
        if self.vocab_size < 2 or self.num_classes < 1:
            raise ValueError("vocab_size must be >= 2 and num_classes >= 1")
        if not 0 <= self.class_dropout < 1:
            raise ValueError(f"class_dropout must be in [0, 1), got {self.class_dropout}")


@dataclass(frozen=True, kw_only=True)
class GridConfig(GeneratorConfig):
    """A generator over an n x n VQ token grid with 2D RoPE. Args: grid_size: side n (L = n^2)."""

    grid_size: int = 16
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.uses_rope and self.transformer.head_dim % 4:
            raise ValueError("2D RoPE needs head_dim divisible by 4")

    @property
    def uses_rope(self) -> bool:
        return True


class Generator(PretrainedModel):
    """Base class of the generation orders."""

    config: GeneratorConfig
    order: str  # name of the generation order, e.g. "next-token"
    tokenizer_kind = "grid"  # "grid": a VQ token grid (config.grid_size); "multiscale": a multi-scale tokenizer

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__(config)
        t = config.transformer
        self.class_emb = nn.Embedding(config.num_classes + 1, t.width)
        self.transformer = Transformer(t)
        self.head = Linear(t.width, config.vocab_size, bias=config.head_bias)

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    @property
    def num_tokens(self) -> int:
        raise NotImplementedError

    @property
    def num_steps(self) -> int:
        """Forward passes of plain (unguided, non-speculative) sampling."""
        raise NotImplementedError

    def new_cache(self, batch_size: int):
        return self.transformer.new_cache(batch_size, self.num_tokens + 1)

    def init_weights(self) -> None:
        """Truncated-normal init; zero biases; small head; AdaLN gates near zero (VAR's recipe)."""
        C = self.config.transformer.width
        std = self.config.init_std if self.config.init_std > 0 else math.sqrt(1 / C / 3)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        depth = self.config.transformer.depth
        with torch.no_grad():
            self.head.weight.mul_(0.02)
            for block in self.transformer.blocks:
                block.attn.proj.weight.div_(math.sqrt(2 * depth))
                out = block.mlp.w2 if block.mlp.swiglu else block.mlp.fc2
                out.weight.div_(math.sqrt(2 * depth))
                if hasattr(block, "ada_lin"):
                    w = block.ada_lin[-1].weight
                    w[2 * C :].mul_(0.5)  # scales and shifts
                    w[: 2 * C].mul_(1e-3)  # gates: blocks start close to the identity
            if hasattr(self.transformer, "head_nm"):
                self.transformer.head_nm.ada_lin[-1].weight.mul_(0.5)

    def drop_labels(self, labels_B: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Training-time label dropout: each label becomes the null class with prob ``class_dropout``."""
        p = self.config.class_dropout
        if p <= 0:
            return labels_B
        drop = torch.rand(labels_B.shape, generator=generator, device=labels_B.device) < p
        return torch.where(drop, torch.full_like(labels_B, self.null_class), labels_B)

    def training_inputs(self, tokens_BL: Tensor, labels_B: Tensor, tokenizer,
                        generator: torch.Generator | None = None) -> tuple[dict, dict]:  # fmt: skip
        """(keyword arguments of ``forward``, extras for :meth:`training_loss`) for a batch of
        tokenised images; the training loop calls ``model(**inputs)`` so DDP sees the forward."""
        return {"tokens_BL": tokens_BL, "labels_B": labels_B}, {}

    def training_loss(self, logits_BLV: Tensor, tokens_BL: Tensor, extra: dict) -> tuple[Tensor, Tensor]:
        """(loss, token accuracy) of the logits ``forward`` returned for :meth:`training_inputs`."""
        return self.loss(logits_BLV, tokens_BL)

    def loss(self, logits_BLV: Tensor, tokens_BL: Tensor, weights_L: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Cross-entropy (per-token, optionally weighted over positions) and token accuracy."""
        ce_BL = F.cross_entropy(logits_BLV.flatten(0, 1).float(), tokens_BL.flatten(), reduction="none").view(tokens_BL.shape)
        if weights_L is None:
            loss = ce_BL.mean()
        else:
            loss = (ce_BL * weights_L).sum(1).mean() / weights_L.sum()
        acc = (logits_BLV.argmax(-1) == tokens_BL).float().mean()
        return loss, acc
