"""What every class-conditional generator shares: config, the condition and head parts, weight
init, the teacher-forced loss, the token-layout contract and the step contract.

A generation order (``next_token.py``, ``next_scale.py``, ...) adds only its input embedding,
its attention mask, ``step`` (one forward pass of decoding, the same signature for every order)
and its :class:`~arvision.samplers.order.Order` (the decoding plan and state updates); the
backbone is :class:`arvision.nn.transformer.Transformer` for all of them.

Legend: B batch, L tokens, C width, V vocabulary (codebook size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from arvision.config import Config
from arvision.generators.parts import CategoricalHead, ClassCondition
from arvision.modeling import PretrainedModel
from arvision.nn.kv_cache import KVCache
from arvision.nn.transformer import Transformer, TransformerConfig
from arvision.samplers.config import SamplingConfig
from arvision.samplers.order import DecodeState, Order, Step
from arvision.tokenizers.layout import TokenLayout

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
    token_kind: ClassVar[str] = "ids"  # the tokens it generates (TokenLayout.token_kind)

    def __post_init__(self) -> None:
        if (self.token_kind != "vectors" and self.vocab_size < 2) or self.num_classes < 1:
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
    order_class: type[Order]  # the decoding order (plan + state updates), defined beside the generator
    layout_kind = "grid"  # the token layout it generates (see arvision.tokenizers.layout)
    layout_map = {"grid_size": "side"}  # config field -> the TokenLayout attribute it is derived from

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__(config)
        t = config.transformer
        self.class_emb = ClassCondition(config.num_classes, t.width)
        self.transformer = Transformer(t)
        self.head = self.build_head()

    def build_head(self) -> nn.Module:
        """The head part (categorical logits over the codebook; a diffusion head for continuous tokens)."""
        return CategoricalHead(self.config.transformer.width, self.config.vocab_size, bias=self.config.head_bias)

    @property
    def order(self) -> str:
        """Name of the generation order, e.g. "next-token"."""
        return self.order_class.name

    @property
    def token_kind(self) -> str:
        """The tokens it generates: "ids", "vectors" (continuous, a diffusion head) or "channel-ids"
        (TokenBridge); declared once, on the config class."""
        return self.config.token_kind

    @property
    def null_class(self) -> int:
        return self.class_emb.null_id

    # -- token layout ------------------------------------------------------------------------------
    @classmethod
    def layout_fields(cls, layout: TokenLayout) -> dict:
        """The config fields that come from the tokenizer's layout (vocabulary, grid / scales)."""
        if layout.kind != cls.layout_kind or (layout.kind == "grid" and layout.grid[0] != layout.grid[1]):
            need = {"grid": "a VQ grid tokenizer (e.g. mnist-vq)", "scales": "a multi-scale tokenizer (e.g. mnist-msvq)",
                    "flex-scales": "a multi-scale tokenizer without residuals (FlexVAR's, e.g. mnist-flexvar's)",
                    "sequence": "a tokenizer of 1-D token sequences"}
            raise ValueError(f"the {cls.order_class.name} order needs {need.get(cls.layout_kind, cls.layout_kind)}, "
                             f"but this tokenizer has {layout.describe()}")  # fmt: skip
        kind = cls.config_class.token_kind
        if layout.token_kind != kind:
            need = {"ids": "a discrete tokenizer (codebook ids, e.g. mnist-vq)",
                    "vectors": "a continuous tokenizer (a KL autoencoder, e.g. mnist-kl)",
                    "channel-ids": "a channel-quantized tokenizer (TokenBridge, e.g. mnist-tokenbridge's)"}  # fmt: skip
            raise ValueError(f"{cls.__name__} generates {kind} tokens and needs {need[kind]}, "
                             f"but this tokenizer has {layout.describe()}")  # fmt: skip
        return {"vocab_size": layout.vocab_size, **{k: getattr(layout, a) for k, a in cls.layout_map.items()}}

    @classmethod
    def config_for(cls, layout: TokenLayout, **fields) -> GeneratorConfig:
        """This generator's config for a tokenizer's layout (a clear error if the order cannot use it)."""
        return cls.config_class(**fields, **cls.layout_fields(layout))

    @classmethod
    def config_for_tokenizer(cls, tokenizer, **fields) -> GeneratorConfig:
        """This generator's config for a tokenizer: :meth:`config_for` its layout, plus what an order
        derives from the tokenizer's weights (coarse-to-fine: the k-means clusters of its codes)."""
        return cls.config_for(tokenizer.layout, **fields)

    def check_layout(self, layout: TokenLayout) -> None:
        """A clear error when this generator cannot decode into ``layout``."""
        for name, want in self.layout_fields(layout).items():
            have = getattr(self.config, name)
            if have != want:
                raise ValueError(f"the tokenizer gives {name}={want} but the generator was built for {name}={have}: "
                                 "use the tokenizer the generator was trained with")  # fmt: skip

    # -- decoding ----------------------------------------------------------------------------------
    def reference_logits(self, tokens_BL: Tensor, labels_B: Tensor, tokenizer=None) -> Tensor:
        """Logits (B, L, V) in layout order with every token known, in one full forward pass:
        what each decoding step must reproduce when the state holds these tokens."""
        return self(tokens_BL, labels_B)

    def step(self, state: DecodeState, step: Step, cond_RD: Tensor, cache: KVCache | None) -> Tensor:
        """One forward pass of decoding: logits (R, T, V) of ``step.targets``, given the decoded
        ``state`` and the condition rows ``cond_RD`` (R = B, or 2B with the null rows when guiding;
        the state's B rows are repeated to match). Computes sequence positions
        [step.start, step.end) and writes their keys/values there in ``cache``."""
        raise NotImplementedError

    @property
    def num_tokens(self) -> int:
        raise NotImplementedError

    @property
    def num_steps(self) -> int:
        """Forward passes of sampling at the model's default settings (its order's plan)."""
        return len(self.order_class(self).plan(self.config.sampling))

    def new_cache(self, batch_size: int) -> KVCache | None:
        return self.transformer.new_cache(batch_size, self.num_tokens + 1)

    def init_weights(self) -> None:
        """Truncated-normal init; zero biases; small head; AdaLN gates near zero (VAR's recipe)."""
        C = self.config.transformer.width
        std = self.config.init_std if self.config.init_std > 0 else math.sqrt(1 / C / 3)
        categorical = isinstance(self.head, CategoricalHead)  # other heads initialise themselves
        for name, m in self.named_modules():
            if not categorical and name.startswith("head"):
                continue
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        depth = self.config.transformer.depth
        with torch.no_grad():
            if categorical:
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
        return self.class_emb.drop(labels_B, self.config.class_dropout, generator)

    def training_inputs(self, tokens_BL: Tensor, labels_B: Tensor, tokenizer,
                        generator: torch.Generator | None = None) -> tuple[dict, dict]:  # fmt: skip
        """(keyword arguments of ``forward``, extras for :meth:`training_loss`) for a batch of
        tokenised images; the training loop calls ``model(**inputs)`` so DDP sees the forward."""
        return {"tokens_BL": tokens_BL, "labels_B": labels_B}, {}

    def training_loss(self, logits_BLV: Tensor, tokens_BL: Tensor, extra: dict) -> tuple[Tensor, Tensor]:
        """(loss, token accuracy) of the logits ``forward`` returned for :meth:`training_inputs`;
        the training loop adds ``extra["progress"]`` (step / steps) for losses with a schedule."""
        return self.loss(logits_BLV, tokens_BL)

    def loss(self, logits_BLV: Tensor, tokens_BL: Tensor, weights_L: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The head's loss: cross-entropy (optionally weighted over positions) and token accuracy."""
        return self.head.loss(logits_BLV, tokens_BL, weights_L)


class GridGenerator(Generator):
    """Base of the orders over an n x n token grid (config: :class:`GridConfig`)."""

    config: GridConfig

    @property
    def num_tokens(self) -> int:
        return self.config.grid_size**2
