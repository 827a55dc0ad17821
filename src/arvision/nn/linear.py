"""Linear layers with a CPU inference fast path: oneDNN weights packed once, reused every call.

PyTorch's default fp32 CPU matmul reads an (N, K) weight at 7-14 GB/s when the input has a few
rows, which is exactly the shape of autoregressive decoding (batch x 1 token per step). oneDNN
with the weight reordered once into its blocked layout streams it 2-4x faster, and is still
~1.15x faster on the large matrices of next-scale decoding (measured on a 2-core AVX-512 CPU,
``benchmarks/official_speed.py``). The arithmetic is the same fp32 multiply-add; only the
summation order differs (results agree with ``F.linear`` to ~1e-6 relative).

The fast path is taken only when it cannot change anything else: CPU float32 inputs, gradients
off (``torch.no_grad`` / ``torch.inference_mode``), oneDNN present. Under CPU bf16 autocast
(``precision="bf16"`` sampling) the same path runs on a bf16 packed copy of the weight (AMX /
AVX512-BF16 kernels; the op is not one autocast knows, so the cast is made here). Training and every other device
use ``F.linear``. The packed copy lives on the layer (not in its state dict) and is rebuilt when
the weight changes (new storage or an in-place update); it costs one extra copy of the weights
in memory while cached, so a layer is packed only while that leaves 1 GiB and 20 % of the
system memory available (the rest use ``F.linear``). ``ARVISION_PACKED_LINEAR=0`` in the
environment, or ``set_packed_linear(False)``, turns the fast path off.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_state = {"enabled": os.environ.get("ARVISION_PACKED_LINEAR", "1") != "0"}
_AVAILABLE = (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
              and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))  # fmt: skip


def set_packed_linear(enabled: bool) -> None:
    """Turn the oneDNN packed-weight path for CPU inference on or off (process-wide)."""
    _state["enabled"] = bool(enabled)


def packed_linear_active(x: Tensor, weight: Tensor) -> bool:
    """Whether ``linear`` takes the packed path for this input and weight."""
    return _packed_dtype(x, weight) is not None


def _packed_dtype(x: Tensor, weight: Tensor) -> torch.dtype | None:
    """The dtype the packed path computes this call in: float32, or bfloat16 under CPU bf16 autocast
    (bf16 sampling: a bf16 packed copy of the weight, AMX/AVX512-BF16 kernels); None = ``F.linear``."""
    if not (_AVAILABLE and _state["enabled"] and not torch.is_grad_enabled() and x.device.type == "cpu"
            and weight.dtype == torch.float32 and x.shape[-1] > 0):  # fmt: skip
        return None
    if torch.is_autocast_enabled("cpu"):
        bf16 = torch.get_autocast_dtype("cpu") == torch.bfloat16 and x.dtype in (torch.float32, torch.bfloat16)
        return torch.bfloat16 if bf16 else None
    return torch.float32 if x.dtype == torch.float32 else None


def available_memory() -> tuple[int, int] | None:
    """(available, total) bytes of system memory from /proc/meminfo, or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.split()[1:2]}
        return info["MemAvailable"], info["MemTotal"]
    except (OSError, KeyError, ValueError):
        return None


def _room_for(nbytes: int) -> bool:
    """A packed copy must leave at least 1 GiB and 20 % of the memory available: on a machine that
    holds the model but not two copies of it, the layers that no longer fit use ``F.linear``."""
    mem = available_memory()
    return mem is None or mem[0] - nbytes >= max(1 << 30, mem[1] // 5)


def _packed_weight(layer: Linear, dtype: torch.dtype = torch.float32) -> Tensor | None:
    """The layer's packed weight in ``dtype``, packing it on first use (None when memory is short).
    One packed copy per layer: asking for another dtype replaces it."""
    w = layer.weight
    key = (w.data_ptr(), w._version, tuple(w.shape), dtype)
    cached = layer.__dict__.get("_packed_weight")
    if cached is None or cached[0] != key:
        layer.__dict__.pop("_packed_weight", None)  # free a stale copy before judging the room
        room = _room_for(w.numel() * dtype.itemsize)
        packed = torch.ops.mkldnn._reorder_linear_weight(w.detach().to(dtype)) if room else None
        cached = (key, packed)
        layer.__dict__["_packed_weight"] = cached  # a plain attribute: never in the state dict
    return cached[1]


# activation name -> (oneDNN post-op, its algorithm, the same function in torch)
_ACTIVATIONS = {
    "gelu_tanh": ("gelu", "tanh", lambda y: F.gelu(y, approximate="tanh")),
    "gelu": ("gelu", "none", F.gelu),
    "silu": ("swish", "", F.silu),
}


def linear(x: Tensor, layer: Linear, bias: Tensor | None, activation: str | None = None) -> Tensor:
    """``F.linear(x, layer.weight, bias)``, then ``activation`` ("gelu_tanh", "silu" or None),
    through the packed weight (activation fused) when that is safe; in bf16 under CPU bf16 autocast."""
    dtype = _packed_dtype(x, layer.weight)
    if dtype is not None:
        post_op, algorithm = _ACTIVATIONS[activation][:2] if activation else ("none", "")
        try:
            packed = _packed_weight(layer, dtype)
            if packed is not None:
                x, bias = x.to(dtype), None if bias is None else bias.to(dtype)  # no-ops in fp32
                return torch.ops.mkldnn._linear_pointwise(x, packed, bias, post_op, [], algorithm)
        except (RuntimeError, NotImplementedError) as e:  # a torch build whose oneDNN lacks this path
            warnings.warn(f"packed oneDNN linear unavailable ({e}); using F.linear from now on", stacklevel=2)
            set_packed_linear(False)
    y = F.linear(x, layer.weight, bias)
    return _ACTIVATIONS[activation][2](y) if activation else y


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) that uses :func:`linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self, self.bias)

    def __getstate__(self) -> dict:
        # copy.deepcopy / pickle: the packed copy is an opaque oneDNN tensor; it is rebuilt on use.
        state = self.__dict__.copy()
        state.pop("_packed_weight", None)
        return state
