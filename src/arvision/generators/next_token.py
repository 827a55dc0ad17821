"""Raster next-token generation (LlamaGen; Sun et al. 2024, arXiv:2406.06525).

The sequence is [class token, t_0, ..., t_{L-2}] and position p predicts token t_p, so a grid of
L tokens takes L forward passes with a KV cache (one prefill of the class token, then one token
per step). Positions are 2D RoPE over the token grid (the class token gets a zero rotation, as in
LlamaGen) or learned absolute embeddings.

Legend: B batch, L tokens (grid side n, L = n*n), T positions in one call, C width, V vocabulary.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from arvision.generators.base import GridConfig, GridGenerator
from arvision.generators.parts import match_rows
from arvision.modeling import register_model
from arvision.nn.kv_cache import KVCache
from arvision.nn.transformer import group_causal_mask
from arvision.samplers.config import SamplingConfig
from arvision.samplers.order import DecodeState, Order, Step, register_order

POSITIONS = ("rope2d", "learned")


@dataclass(frozen=True, kw_only=True)
class NextTokenConfig(GridConfig):
    """Args: positions: "rope2d" (LlamaGen) or "learned" absolute embeddings (see :class:`GridConfig`)."""

    positions: str = "rope2d"

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        super().__post_init__()

    @property
    def uses_rope(self) -> bool:
        return self.positions == "rope2d"


def rope_2d_table(grid_size: int, head_dim: int, base: float, num_prefix: int = 1) -> Tensor:
    """(num_prefix + n*n, head_dim/2, 2) cos/sin table of LlamaGen's 2D RoPE.

    Rotation pairs 0..Dh/4-1 turn with the row, Dh/4..Dh/2-1 with the column (raster order);
    the prefix rows are all zero, so RoPE zeroes q and k of the class token exactly as LlamaGen's
    ``precompute_freqs_cis_2d`` does.
    """
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    t = torch.arange(grid_size, dtype=torch.float32)
    f = torch.outer(t, freqs)  # (n, Dh/4)
    grid = torch.cat([f[:, None, :].expand(-1, grid_size, -1), f[None, :, :].expand(grid_size, -1, -1)], dim=-1)
    table = torch.stack([grid.cos(), grid.sin()], dim=-1).flatten(0, 1)  # (n*n, Dh/2, 2)
    return torch.cat([torch.zeros(num_prefix, half, 2), table])


@register_order
class NextTokenOrder(Order):
    """One token per forward pass: pass i computes sequence position i (the class token for i = 0,
    else token i - 1) and predicts token i. Fixed tokens (editing) are teacher-forced."""

    name = "next-token"
    own_settings = ("decoding", "window", "jacobi_init", "lantern_k", "lantern_delta")  # speculative decoding (samplers/speculative.py)

    def plan(self, s: SamplingConfig) -> list[Step]:
        return [Step(i, i, i, i + 1) for i in range(self.generator.num_tokens)]

    @staticmethod
    def merged_prefix(known_BL: Tensor) -> int:
        """Tokens p of the prefix known in every row (capped at L - 1): one pass teacher-forces them
        (positions 0..p) and samples token p (:meth:`skip_known`)."""
        return min(int(known_BL.all(0).long().cumprod(0).sum()), known_BL.shape[1] - 1)

    def skip_known(self, plan: list[Step], known_BL: Tensor) -> list[Step]:
        """A prefix known in every row is teacher-forced in one pass (positions 0..p, token p sampled)."""
        p = min(self.merged_prefix(known_BL), len(plan) - 1)
        return plan if p == 0 else [Step(0, p, 0, p + 1)] + [dataclasses.replace(st, index=st.index - p) for st in plan[p + 1 :]]


@register_model
class NextTokenGenerator(GridGenerator):
    """Class-conditional raster-order generator over a VQ token grid."""

    model_type = "next_token_generator"
    config_class = NextTokenConfig
    config: NextTokenConfig
    order_class = NextTokenOrder

    def __init__(self, config: NextTokenConfig) -> None:
        super().__init__(config)
        C = config.transformer.width
        self.tok_embeddings = self.build_token_embedding()
        if config.positions == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, C))
        else:
            self.register_buffer("rope_table", self.build_rope_table(), persistent=False)
        self.init_weights()
        if config.positions == "learned":
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def build_rope_table(self) -> Tensor:
        """(1 + L, Dh/2, 2) cos/sin of the class token and the L token positions (2D RoPE over the grid)."""
        c = self.config
        return rope_2d_table(c.grid_size, c.transformer.head_dim, c.rope_base)

    def build_token_embedding(self) -> nn.Module:
        """Token -> input vector (an embedding table over the codebook)."""
        return nn.Embedding(self.config.vocab_size, self.config.transformer.width)

    def _embed(self, cond_BC: Tensor, tokens_BT: Tensor | None, start: int) -> Tensor:
        """Input embeddings of sequence positions [start, start + T); position 0 is the class token."""
        parts = []
        if start == 0:
            parts.append(cond_BC.unsqueeze(1))
        if tokens_BT is not None and tokens_BT.shape[1] > 0:
            parts.append(self.tok_embeddings(tokens_BT))
        x = torch.cat(parts, 1)
        if self.config.positions == "learned":
            x = x + self.pos_embed[:, start : start + x.shape[1]]
        return x

    def _rope(self, start: int, length: int) -> Tensor | None:
        return self.rope_table[start : start + length] if self.config.uses_rope else None

    def _adaln(self, cond_BC: Tensor) -> Tensor | None:
        return cond_BC if self.config.transformer.conditioning == "adaln" else None

    def hidden(self, tokens_BL: Tensor, labels_B: Tensor) -> Tensor:
        """Teacher-forced backbone outputs (B, L, C): position p sees the class and tokens < p."""
        cond = self.class_emb(labels_B)
        x = self._embed(cond, tokens_BL[:, :-1], 0)
        return self.transformer(x, cond_BD=self._adaln(cond), is_causal=True, rope=self._rope(0, x.shape[1]))

    def forward(self, tokens_BL: Tensor, labels_B: Tensor) -> Tensor:
        """Teacher-forced logits (B, L, V): position p sees the class and tokens < p."""
        return self.head(self.hidden(tokens_BL, labels_B))

    def causal_inputs(self, state: DecodeState) -> Tensor:
        """The ids (B, L) the causal passes read: the tokens (coarse-to-fine: its coarse labels)."""
        return state.tokens_BL

    def step_inputs(self, state: DecodeState, cond_RD: Tensor, start: int, end: int) -> Tensor:
        """Input embeddings (R, T, C) of sequence positions [start, end) in a decoding step."""
        tokens = match_rows(self.causal_inputs(state)[:, max(start - 1, 0) : end - 1], cond_RD.shape[0])
        return self._embed(cond_RD, tokens, start)

    def step(self, state: DecodeState, step: Step, cond_RD: Tensor, cache: KVCache | None) -> Tensor:
        """Positions [start, end): the class token at 0, token p - 1 at position p; position p predicts token p.
        Several positions at once (speculative verification) attend causally among themselves."""
        start, end = step.start, step.end
        x = self.step_inputs(state, cond_RD, start, end)
        T = x.shape[1]
        mask = None
        if T > 1:
            pos = torch.arange(end, device=x.device)
            mask = group_causal_mask(pos[start:], pos if cache is not None else pos[start:])
        h = self.transformer(x, cond_BD=self._adaln(cond_RD), attn_mask=mask, rope=self._rope(start, T), cache=cache, start=start)
        return self.head(h)
