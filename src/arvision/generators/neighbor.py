"""Next-neighbour generation (NAR; He et al. 2025, "Neighboring Autoregressive Modeling",
arXiv:2503.10696).

Tokens are decoded in rings of growing Manhattan distance d = i + j from the top-left corner:
ring 0 is cell (0, 0), ring d holds every cell with i + j = d. All cells of a ring are predicted
in one forward pass from what is already known, so an n x n grid takes 2n - 1 passes instead of
n^2.

The sequence is [class token, then every cell except (0, 0) in ring order (row-major inside a
ring)]. Sequence position p predicts cell ``order[p]``: the class token predicts (0, 0), and the
position of cell (i, j) has as input the tokens of its two *earlier neighbours* (up (i-1, j) and
left (i, j-1), both in ring d - 1; a border id V where a neighbour does not exist) plus the 2D
RoPE of (i, j) itself. Attention is causal over rings: a position sees every position of its own
ring and of earlier rings, so one ring's cells are predicted together while everything they may
depend on is already decoded. (NAR predicts the right and lower neighbours with two
dimension-oriented heads; this is the same ring order and context with one head and per-cell
queries, which keeps it on the shared backbone.)

Legend: B batch, L tokens (grid side n, L = n*n), T positions of one ring, C width, V vocabulary.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from arvision.generators.base import GridConfig, GridGenerator
from arvision.generators.next_token import rope_2d_table
from arvision.generators.parts import match_rows
from arvision.modeling import register_model
from arvision.nn.kv_cache import KVCache
from arvision.nn.transformer import group_causal_mask
from arvision.samplers.config import SamplingConfig
from arvision.samplers.order import DecodeState, Order, Step, register_order


@dataclass(frozen=True, kw_only=True)
class NeighborConfig(GridConfig):
    """Config of :class:`NeighborGenerator` (grid size and RoPE base, see :class:`GridConfig`)."""


def ring_order(n: int) -> tuple[Tensor, Tensor]:
    """(raster index of each cell in decoding order, its ring i + j): rings ascending, row-major inside."""
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    ring = (i + j).flatten()
    order = sorted(range(n * n), key=lambda c: (c // n + c % n, c))  # ring[c] in plain ints: builds on the meta device too
    order_L = torch.tensor(order)
    return order_L, ring[order_L]


@register_order
class NeighborOrder(Order):
    """One ring of equal Manhattan distance per forward pass; fixed tokens (editing) are kept."""

    name = "next-neighbor"

    def plan(self, s: SamplingConfig) -> list[Step]:
        g = self.generator
        return [Step(d, d, a, b, g.order_L[a:b]) for d, (a, b) in enumerate(g.ring_ranges)]


@register_model
class NeighborGenerator(GridGenerator):
    """Class-conditional next-neighbour (ring-by-ring) generator over a VQ token grid."""

    model_type = "neighbor_generator"
    config_class = NeighborConfig
    config: NeighborConfig
    order_class = NeighborOrder

    def __init__(self, config: NeighborConfig) -> None:
        super().__init__(config)
        n, C, V = config.grid_size, config.transformer.width, config.vocab_size
        self.up_embeddings = nn.Embedding(V + 1, C)  # + border id V
        self.left_embeddings = nn.Embedding(V + 1, C)
        order, ring = ring_order(n)
        i, j = order // n, order % n
        none = n * n  # index of the border column appended to the tokens
        self.register_buffer("order_L", order, persistent=False)
        self.register_buffer("inverse_order_L", order.argsort(), persistent=False)
        self.register_buffer("up_L", torch.where(i > 0, order - n, none), persistent=False)
        self.register_buffer("left_L", torch.where(j > 0, order - 1, none), persistent=False)
        self.register_buffer("attn_mask", group_causal_mask(ring, ring), persistent=False)
        table = rope_2d_table(n, config.transformer.head_dim, config.rope_base, num_prefix=1)
        seq_rows = torch.cat([torch.zeros(1, dtype=torch.long), 1 + order[1:]])  # class token: zero rotation
        self.register_buffer("rope_table", table[seq_rows], persistent=False)
        rings = sorted(c // n + c % n for c in range(n * n))  # ring of each position in decoding order (plain ints: meta-safe)
        bounds = [bisect.bisect_left(rings, r) for r in range(2 * n)]
        self.ring_ranges: list[tuple[int, int]] = list(zip(bounds[:-1], bounds[1:]))
        self.init_weights()

    def _embed(self, cond_BC: Tensor, tokens_BL: Tensor, start: int, end: int) -> Tensor:
        """Input embeddings of sequence positions [start, end) from raster tokens (unknown ones unused)."""
        parts = []
        if start == 0:
            parts.append(cond_BC.unsqueeze(1))
            start = 1
        if end > start:
            padded = torch.cat([tokens_BL, tokens_BL.new_full((tokens_BL.shape[0], 1), self.config.vocab_size)], 1)
            up, left = padded[:, self.up_L[start:end]], padded[:, self.left_L[start:end]]
            parts.append(self.up_embeddings(up) + self.left_embeddings(left))
        return torch.cat(parts, 1)

    def _adaln(self, cond_BC: Tensor) -> Tensor | None:
        return cond_BC if self.config.transformer.conditioning == "adaln" else None

    def forward(self, tokens_BL: Tensor, labels_B: Tensor) -> Tensor:
        """Teacher-forced logits (B, L, V) in raster order: each cell sees the class and earlier rings."""
        cond = self.class_emb(labels_B)
        x = self._embed(cond, tokens_BL, 0, self.num_tokens)
        h = self.transformer(x, cond_BD=self._adaln(cond), attn_mask=self.attn_mask, rope=self.rope_table)
        return self.head(h)[:, self.inverse_order_L]

    def step(self, state: DecodeState, step: Step, cond_RD: Tensor, cache: KVCache | None) -> Tensor:
        """Logits (R, T, V) of the cells ``order_L[start:end]`` (ring ``step.group``) given the decoded
        rings in ``cache``; the new positions see the cache and each other, so no mask. Without a cache
        every position up to ``end`` is recomputed (the reference the cached path must agree with)."""
        start, end = step.start, step.end
        first = start if cache is not None else 0
        x = self._embed(cond_RD, match_rows(state.tokens_BL, cond_RD.shape[0]), first, end)
        mask = None if cache is not None else self.attn_mask[:end, :end]
        h = self.transformer(x, cond_BD=self._adaln(cond_RD), attn_mask=mask, rope=self.rope_table[first:end], cache=cache, start=first)
        return self.head(h)[:, start - first :]
