"""Raster next-token generation over continuous tokens: the next-token order with MAR's diffusion
head instead of a softmax (the causal variant MAR's paper compares against, Li et al. 2024, §5.1).

It shows that the head is a part: the backbone, order, KV cache, guidance and editing are the
next-token generator's; only the input (a linear map of the previous token's D channels instead
of an embedding lookup) and the head (:class:`~arvision.generators.diffusion.DiffusionHead`:
a diffusion loss in training, denoising in sampling) change.

Legend: B batch, L tokens, D token channels, C width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from arvision.generators.diffusion import DiffusionHead, DiffusionHeadConfig
from arvision.generators.next_token import NextTokenConfig, NextTokenGenerator
from arvision.modeling import register_model
from arvision.nn.linear import Linear


@dataclass(frozen=True, kw_only=True)
class ContinuousNextTokenConfig(NextTokenConfig):
    """:class:`NextTokenConfig` over continuous tokens. Args: token_dim: channels D of a token;
    head: the diffusion head (its token_dim / cond_dim are filled in from this config)."""

    vocab_size: int = 0
    token_dim: int
    head: DiffusionHeadConfig = field(default_factory=lambda: DiffusionHeadConfig(token_dim=1, cond_dim=1))
    token_kind: ClassVar[str] = "vectors"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.token_dim < 1:
            raise ValueError(f"token_dim must be >= 1, got {self.token_dim}")
        object.__setattr__(self, "head", self.head.replace(token_dim=self.token_dim, cond_dim=self.transformer.width))


@register_model
class ContinuousNextTokenGenerator(NextTokenGenerator):
    """Class-conditional raster generator over a grid of continuous tokens (a KL tokenizer)."""

    model_type = "continuous_next_token_generator"
    config_class = ContinuousNextTokenConfig
    config: ContinuousNextTokenConfig
    layout_map = {"grid_size": "side", "token_dim": "code_dim"}

    def build_token_embedding(self) -> nn.Module:
        # tokens are vectors, not ids; arvision's Linear: its packed CPU path gives every row the same
        # sums whatever the batch size (F.linear's BLAS kernel does not), so a seeded image does not
        # depend on the batch it is sampled in (tests/test_conformance.py)
        return Linear(self.config.token_dim, self.config.transformer.width)

    def build_head(self) -> nn.Module:
        return DiffusionHead(self.config.head)

    def reference_logits(self, tokens_BL: Tensor, labels_B: Tensor, tokenizer=None) -> Tensor:
        """Backbone vectors (B, L, C) with every token known (what each decoding step computes)."""
        return self.hidden(tokens_BL, labels_B)

    def training_inputs(self, tokens_BL: Tensor, labels_B: Tensor, tokenizer,
                        generator: torch.Generator | None = None) -> tuple[dict, dict]:  # fmt: skip
        return {"tokens_BL": tokens_BL, "labels_B": labels_B, "rng": generator}, {}

    def forward(self, tokens_BL: Tensor, labels_B: Tensor, rng: torch.Generator | None = None) -> Tensor:
        """The training loss: the diffusion loss of every token given the tokens before it."""
        if not torch.isfinite(tokens_BL).all():
            raise ValueError("the tokens contain NaN/inf: check the tokenizer's latents")
        return self.head.loss(self.hidden(tokens_BL, labels_B).flatten(0, 1), tokens_BL.flatten(0, 1), rng=rng)

    def training_loss(self, loss: Tensor, tokens_BL: Tensor, extra: dict) -> tuple[Tensor, Tensor]:
        return loss, loss.new_tensor(float("nan"))  # no token accuracy for continuous tokens
