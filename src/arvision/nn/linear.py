"""Linear layers with a CPU inference fast path: oneDNN weights packed once, reused every call.

PyTorch's default fp32 CPU matmul reads an (N, K) weight at 7-14 GB/s when the input has a few
rows, which is exactly the shape of autoregressive decoding (batch x 1 token per step). oneDNN
with the weight reordered once into its blocked layout streams it 2-4x faster, and is still
~1.15x faster on the large matrices of next-scale decoding (measured on a 2-core AVX-512 CPU,
``benchmarks/official_speed.py``). The arithmetic is the same fp32 multiply-add; only the
summation order differs (results agree with ``F.linear`` to ~1e-6 relative).

The fast path is taken only when it cannot change anything else: CPU float32 inputs, gradients
off (``torch.no_grad`` / ``torch.inference_mode``), oneDNN present. Training and every other device
use ``F.linear``. The packed copy lives on the layer (not in its state dict) and is rebuilt when
the weight changes (new storage or an in-place update); it costs one extra copy of the weights
in memory while cached. ``ARVISION_PACKED_LINEAR=0`` in the environment, or
``set_packed_linear(False)``, turns the fast path off.
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
    return (_AVAILABLE and _state["enabled"] and not torch.is_grad_enabled() and x.device.type == "cpu"
            and x.dtype == torch.float32 and weight.dtype == torch.float32 and x.shape[-1] > 0)  # fmt: skip


def _packed_weight(layer: Linear) -> Tensor:
    w = layer.weight
    key = (w.data_ptr(), w._version, tuple(w.shape))
    cached = layer.__dict__.get("_packed_weight")
    if cached is None or cached[0] != key:
        cached = (key, torch.ops.mkldnn._reorder_linear_weight(w.detach()))
        layer.__dict__["_packed_weight"] = cached  # a plain attribute: never in the state dict
    return cached[1]


# activation name -> (oneDNN post-op, its algorithm, the same function in torch)
_ACTIVATIONS = {
    "gelu_tanh": ("gelu", "tanh", lambda y: F.gelu(y, approximate="tanh")),
    "silu": ("swish", "", F.silu),
}


def linear(x: Tensor, layer: Linear, bias: Tensor | None, activation: str | None = None) -> Tensor:
    """``F.linear(x, layer.weight, bias)``, then ``activation`` ("gelu_tanh", "silu" or None),
    through the packed weight (activation fused) when that is safe."""
    if packed_linear_active(x, layer.weight):
        post_op, algorithm = _ACTIVATIONS[activation][:2] if activation else ("none", "")
        try:
            return torch.ops.mkldnn._linear_pointwise(x, _packed_weight(layer), bias, post_op, [], algorithm)
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
