"""Masked generation (MaskGIT; Chang et al. 2022, arXiv:2202.04200): bidirectional, any order.

Every step sees the whole grid: known tokens, and a ``[MASK]`` id (= V) where a token is still
unknown. Training masks a random share ``cos(pi/2 * u)``, u ~ U(0, 1), of each grid and predicts
the masked tokens; sampling starts from an all-masked grid and reveals the most confident
predictions in S steps (``samplers.masked``), so S is chosen at sampling time, not at training
time. With a random order and discrete tokens this is also MAR's setting (Li et al. 2024).

The class is a prefix token (or AdaLN), positions are 2D RoPE over the grid, attention is
bidirectional (no mask, no KV cache: every step recomputes the grid).

Legend: B batch, L tokens (grid side n, L = n*n), C width, V vocabulary (mask id = V).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from arvision.generators.base import GridConfig, GridGenerator
from arvision.generators.next_token import rope_2d_table
from arvision.generators.parts import match_rows
from arvision.modeling import register_model
from arvision.nn.kv_cache import KVCache
from arvision.samplers.config import SamplingConfig
from arvision.samplers.order import DecodeState, Order, Sampler, Step, check_num_steps, register_order, reveal_pass


MaskedConfig = GridConfig  # grid size and RoPE base: masked decoding has no settings of its own


def cosine_mask_ratio(u: Tensor) -> Tensor:
    """MaskGIT's schedule: the share of masked tokens at progress u in [0, 1] (1 -> 0)."""
    return torch.cos(u * (math.pi / 2))


def random_mask(n_mask: Tensor | int, B: int, L: int, generator: torch.Generator | None, device) -> Tensor:
    """(B, L) bool: the first ``n_mask`` (an int, or (B, 1) per row) positions of a random order per row."""
    rank = torch.rand(B, L, generator=generator, device=device).argsort(1).argsort(1)
    return rank < n_mask


def cosine_training_mask(B: int, L: int, generator: torch.Generator | None, device) -> Tensor:
    """MaskGIT's training mask (B, L): per row u ~ U(0, 1), then ceil(L * cos(pi/2 u)) random
    positions (at least one); draws u, then the order, from ``generator``."""
    u = torch.rand(B, 1, generator=generator, device=device)
    return random_mask((cosine_mask_ratio(u) * L).ceil().clamp(1, L), B, L, generator, device)


@register_order
class MaskedOrder(Order):
    """``num_steps`` bidirectional passes over the whole grid, each revealing the most confident
    open tokens on MaskGIT's cosine schedule (per row, over the row's own open tokens; fixed
    tokens are never masked)."""

    name = "masked"
    own_settings = ("num_steps", "choice_temperature")

    def plan(self, s: SamplingConfig) -> list[Step]:
        S, L = s.num_steps or self.generator.default_steps, self.generator.num_tokens
        check_num_steps(S, L, "the grid")
        return [Step(t, t, 0, L, sub=t, subs=S) for t in range(S)]

    def update(self, state: DecodeState, step: Step, logits_BTV: Tensor, sampler: Sampler) -> None:
        reveal_pass(state, step, logits_BTV, sampler)


@register_model
class MaskedGenerator(GridGenerator):
    """Class-conditional masked-token generator over a VQ token grid."""

    model_type = "masked_generator"
    config_class = MaskedConfig
    config: MaskedConfig
    order_class = MaskedOrder
    default_steps = 8

    def __init__(self, config: MaskedConfig) -> None:
        super().__init__(config)
        self.tok_embeddings = nn.Embedding(config.vocab_size + 1, config.transformer.width)  # + [MASK]
        prefix = 1 if config.transformer.conditioning == "prefix" else 0
        table = rope_2d_table(config.grid_size, config.transformer.head_dim, config.rope_base, num_prefix=prefix)
        self.register_buffer("rope_table", table, persistent=False)
        self.init_weights()

    @property
    def mask_id(self) -> int:
        return self.config.vocab_size

    def new_cache(self, batch_size: int) -> None:
        return None  # every pass recomputes the whole grid bidirectionally

    def forward(self, tokens_BL: Tensor, labels_B: Tensor) -> Tensor:
        """Logits (B, L, V) for every grid position given a partly masked grid (mask id = V)."""
        return self._logits(tokens_BL, self.class_emb(labels_B))

    def step(self, state: DecodeState, step: Step, cond_RD: Tensor, cache: KVCache | None = None) -> Tensor:
        """Logits (R, L, V) of the whole grid given the decoded and still-masked tokens."""
        return self._logits(match_rows(state.tokens_BL, cond_RD.shape[0]), cond_RD)

    def _logits(self, tokens_BL: Tensor, cond: Tensor) -> Tensor:
        x = self.tok_embeddings(tokens_BL)
        if self.config.transformer.conditioning == "prefix":
            h = self.transformer(torch.cat([cond.unsqueeze(1), x], 1), rope=self.rope_table)[:, 1:]
        else:
            h = self.transformer(x, cond_BD=cond, rope=self.rope_table)
        return self.head(h)

    def training_inputs(self, tokens_BL: Tensor, labels_B: Tensor, tokenizer,
                        generator: torch.Generator | None = None) -> tuple[dict, dict]:  # fmt: skip
        """Mask ceil(L * cos(pi/2 u)) random positions of each grid (at least one)."""
        B, L = tokens_BL.shape
        masked = cosine_training_mask(B, L, generator, tokens_BL.device)
        return {"tokens_BL": torch.where(masked, self.mask_id, tokens_BL), "labels_B": labels_B}, {"masked_BL": masked}

    def training_loss(self, logits_BLV: Tensor, tokens_BL: Tensor, extra: dict) -> tuple[Tensor, Tensor]:
        """Cross-entropy and accuracy over the masked positions only."""
        m = extra["masked_BL"]
        return self.loss(logits_BLV[m].unsqueeze(0), tokens_BL[m].unsqueeze(0))
