"""An explicit, pre-allocated key/value cache, passed into the backbone by the sampler.

The cache is plain state owned by the caller (never hidden inside a module): the sampler creates
it, the backbone writes each layer's keys/values at positions ``[length, length + T)`` and then
``advance(T)`` moves the write position. ``truncate(n)`` rolls back to the first ``n`` positions,
which is what speculative decoding needs to discard rejected drafts.

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

    def update(self, layer: int, k_BHTD: Tensor, v_BHTD: Tensor) -> tuple[Tensor, Tensor]:
        """Write this step's keys/values for ``layer``; return all keys/values so far (B, H, length+T, Dh)."""
        end = self.length + k_BHTD.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions requested, cache holds {self.max_len}")
        self.k[layer, :, :, self.length : end] = k_BHTD
        self.v[layer, :, :, self.length : end] = v_BHTD
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, num_positions: int) -> None:
        """Commit the positions written by the last forward pass."""
        self.length += num_positions

    def truncate(self, n: int) -> None:
        """Keep only the first ``n`` positions (later writes overwrite the rest)."""
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {n}")
        self.length = n
