"""How a tokenizer lays its tokens out, so that generators can be derived from and checked
against it without knowing the tokenizer's class.

* ``grid``: an h x w grid in raster order (VQ, LlamaGen);
* ``scales``: a pyramid of pn x pn grids, coarse to fine, concatenated (VAR's multi-scale VQ);
  ``code_dim`` is the width of the latent a next-scale generator reads;
* ``flex-scales``: the same pyramid layout, but every scale quantizes the image at that scale on
  its own, not a residual (FlexVAR), so a generator may pick any subset of sides;
* ``sequence``: a 1-D sequence of ``length`` tokens (room for TiTok/FlexTok, JPEG bytes).

``end_id``/``pad_id`` (sequences of variable length, JPEG bytes): a sequence ends with the token
``end_id`` and every token after it is ``pad_id``; None = every token counts.

``continuous``: the tokens are ``code_dim``-dimensional float vectors (B, L, code_dim) instead
of ids (a KL autoencoder's latents, MAR); ``vocab_size`` is then 0. ``channel_bins`` > 0: every
token is ``code_dim`` ids (B, L, code_dim), one per latent channel, each in 0..channel_bins-1
(TokenBridge's dimension-wise quantization); ``vocab_size`` is then ``channel_bins``.

Legend: B batch, H/W image side, L tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

KINDS = ("grid", "scales", "flex-scales", "sequence")
SCALE_KINDS = ("scales", "flex-scales")


@dataclass(frozen=True)
class TokenLayout:
    kind: str
    vocab_size: int
    grid: tuple[int, int] = (0, 0)
    scales: tuple[int, ...] = ()
    length: int = 0
    code_dim: int = 0
    continuous: bool = False
    channel_bins: int = 0
    end_id: int | None = None
    pad_id: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"token layout kind must be one of {KINDS}, got {self.kind!r}")
        if (self.end_id is None) != (self.pad_id is None):
            raise ValueError("end_id and pad_id go together: a sequence that ends early is padded after its end token")
        if self.end_id is not None and not (0 <= self.end_id < self.vocab_size and 0 <= self.pad_id < self.vocab_size
                                            and self.end_id != self.pad_id):  # fmt: skip
            raise ValueError(f"end_id and pad_id must be two different ids in 0..{self.vocab_size - 1}, "
                             f"got {self.end_id} and {self.pad_id}")  # fmt: skip
        if (self.continuous or self.channel_bins) and self.code_dim < 1:
            raise ValueError("continuous or channel-quantized tokens need code_dim >= 1 (the token's width)")

    @property
    def token_kind(self) -> str:
        """"ids" (one codebook id per token), "vectors" (continuous) or "channel-ids" (one id per channel)."""
        return "vectors" if self.continuous else "channel-ids" if self.channel_bins else "ids"

    @property
    def token_shape(self) -> tuple[int, ...]:
        """Shape of one image's tokens: (L,) ids, or (L, code_dim) vectors / channel ids."""
        return (self.num_tokens,) if self.token_kind == "ids" else (self.num_tokens, self.code_dim)

    @property
    def side(self) -> int:
        """Side of a square grid."""
        return self.grid[0]

    @property
    def num_tokens(self) -> int:
        if self.kind == "grid":
            return self.grid[0] * self.grid[1]
        if self.kind in SCALE_KINDS:
            return sum(p * p for p in self.scales)
        return self.length

    def describe(self) -> str:
        what = {"ids": "", "vectors": f" of continuous {self.code_dim}-d tokens",
                "channel-ids": f" of {self.code_dim}-channel tokens ({self.channel_bins} levels per channel)"}[self.token_kind]
        if self.kind == "grid":
            return f"a {self.grid[0]}x{self.grid[1]} token grid{what}"
        if self.kind in SCALE_KINDS:
            kind = "independently quantized token scales" if self.kind == "flex-scales" else "token scales"
            return f"{kind} {'/'.join(map(str, self.scales))}{what}"
        ends = " (at most; an end token, then padding)" if self.end_id is not None else ""
        return f"a sequence of {self.length} tokens{what}{ends}"

    def token_mask(self, mask_B1HW: Tensor) -> Tensor:
        """(B, L) bool: the tokens to regenerate for a pixel mask (True = regenerate).

        On a grid (and the finest scale) a token is regenerated when any pixel of its cell is
        masked, so every masked pixel is regenerated. On the coarser scales of a pyramid, whose
        cells are large, a token is regenerated when more than half of its cell is masked:
        regenerating every coarse cell the mask touches would redraw the coarse structure of the
        kept region too (the finer scales are residuals on top of it), and the kept pixels would
        drift far from the input.
        """
        m = mask_B1HW.float()
        if self.kind == "grid":
            return F.adaptive_max_pool2d(m, self.grid).flatten(1) > 0
        if self.kind in SCALE_KINDS:
            *coarse, last = self.scales
            parts = [F.adaptive_avg_pool2d(m, p).flatten(1) > 0.5 for p in coarse]
            return torch.cat([*parts, F.adaptive_max_pool2d(m, last).flatten(1) > 0], 1)
        raise ValueError("a 1-D token sequence has no spatial layout: region editing needs a grid or scales")
