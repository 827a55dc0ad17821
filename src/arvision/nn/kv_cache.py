"""An explicit, pre-allocated key/value cache: plain state owned by the caller, never hidden
inside a module.

The backbone writes each layer's keys/values at explicit sequence positions
``[start, start + T)`` (:meth:`write`) and then :meth:`commit` sets the cache's length to
``start + T``. Writing at ``start < length`` overwrites the later positions, and
:meth:`truncate` rolls back to the first ``n`` positions explicitly: what speculative decoding
needs to discard rejected drafts.

Shapes: B batch, H heads, S max positions, T new positions, Dh head dimension.
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Static cache of ``num_layers`` x (B, H, S, Dh) keys and values."""

    def __init__(self, *, num_layers: int, batch_size: int, num_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:  # fmt: skip
        shape = (num_layers, batch_size, num_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def write(self, layer: int, start: int, k_BHTD: Tensor, v_BHTD: Tensor) -> tuple[Tensor, Tensor]:
        """Write ``layer``'s keys/values of positions [start, start+T); return all keys/values of
        positions [0, start+T) (B, H, start+T, Dh). ``start`` may not leave a gap after ``length``."""
        end = start + k_BHTD.shape[2]
        if not 0 <= start <= self.length:
            raise ValueError(f"cannot write at position {start}: the cache holds positions [0, {self.length})")
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions requested, cache holds {self.max_len}")
        if k_BHTD.shape[0] != self.batch_size:
            raise ValueError(f"the cache was made for {self.batch_size} rows, got {k_BHTD.shape[0]}")
        self.k[layer, :, :, start:end] = k_BHTD
        self.v[layer, :, :, start:end] = v_BHTD
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def commit(self, end: int) -> None:
        """The positions [0, end) are now valid (called by the backbone after all layers wrote)."""
        self.length = end

    def select(self, rows: Tensor) -> None:
        """Keep the rows ``rows`` (B',) of every layer, in that order (repeats duplicate a row): a
        test-time search keeping, dropping or duplicating candidates between steps."""
        self.k, self.v = self.k[:, rows], self.v[:, rows]

    def truncate(self, n: int) -> None:
        """Keep only the first ``n`` positions (later writes overwrite the rest)."""
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {n}")
        self.length = n
