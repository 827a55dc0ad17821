"""How a tokenizer lays its tokens out, so that generators can be derived from and checked
against it without knowing the tokenizer's class.

* ``grid``: an h x w grid in raster order (VQ, LlamaGen);
* ``scales``: a pyramid of pn x pn grids, coarse to fine, concatenated (VAR's multi-scale VQ);
  ``code_dim`` is the width of the latent a next-scale generator reads;
* ``sequence``: a 1-D sequence of ``length`` tokens (room for TiTok/FlexTok, JPEG bytes).

Legend: B batch, H/W image side, L tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

KINDS = ("grid", "scales", "sequence")


@dataclass(frozen=True)
class TokenLayout:
    kind: str
    vocab_size: int
    grid: tuple[int, int] = (0, 0)
    scales: tuple[int, ...] = ()
    length: int = 0
    code_dim: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"token layout kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def num_tokens(self) -> int:
        if self.kind == "grid":
            return self.grid[0] * self.grid[1]
        if self.kind == "scales":
            return sum(p * p for p in self.scales)
        return self.length

    def describe(self) -> str:
        if self.kind == "grid":
            return f"a {self.grid[0]}x{self.grid[1]} token grid"
        if self.kind == "scales":
            return f"token scales {'/'.join(map(str, self.scales))}"
        return f"a sequence of {self.length} tokens"

    def token_mask(self, mask_B1HW: Tensor) -> Tensor:
        """(B, L) bool: the tokens a pixel mask touches (a token is touched when any pixel of its
        cell is True; cells of the coarser scales cover larger areas)."""
        m = mask_B1HW.float()
        if self.kind == "grid":
            return F.adaptive_max_pool2d(m, self.grid).flatten(1) > 0
        if self.kind == "scales":
            return torch.cat([F.adaptive_max_pool2d(m, p).flatten(1) for p in self.scales], 1) > 0
        raise ValueError("a 1-D token sequence has no spatial layout: region editing needs a grid or scales")
