"""Checks that turn a bad model directory into a clear error instead of an out-of-memory kill.

A ``config.json`` edited by hand, written by another version or damaged on disk can ask for a
model of any size: built as is, a width of 10^9 makes PyTorch try to allocate terabytes (the
process is killed, or the machine swaps for minutes). :func:`build_guarded` builds the model under
a guard that refuses, before allocating, any tensor that would not fit in this machine's memory
(and stops after an absurd number of tensors), reporting the bytes the whole model needs; then
:func:`read_safetensors_header` reads the weights file's header (names, dtypes, shapes: 8 + N
bytes, no tensor data, every field checked against the file size) and :func:`check_header` names
the first tensor that does not fit the model, before any weight is read.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn.modules.module as torch_module
from torch import nn
from torch.overrides import TorchFunctionMode

from arvision.errors import ModelFileError

# Bytes per element of each safetensors dtype (the format's own names).
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}  # fmt: skip
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on the JSON header
# The largest models arvision builds (VAR-d30, LlamaGen-XXL) have < 1,000 weight tensors; building
# a skeleton costs ~0.2 ms per tensor, so a config asking for more than this is refused in < 5 s.
MAX_TENSORS = 20_000

Header = dict[str, tuple[str, tuple[int, ...]]]


def physical_memory() -> int | None:
    """Bytes of RAM of this machine (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def available_memory() -> int | None:
    """Bytes a new allocation can take without swapping: Linux's MemAvailable, else the RAM size.
    (A model that fits the RAM but not what is free would push the machine into swap, or be killed.)"""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return physical_memory()


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"  # unreachable


def read_safetensors_header(path: Path) -> Header:
    """``{name: (dtype, shape)}`` from a safetensors file's header, checked against the file's size;
    no tensor is read. Every malformation is a :class:`ModelFileError`."""
    fix = "the file is truncated or corrupt; re-save or re-download the model"
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelFileError(f"{path} is {size} bytes, too short for a safetensors file: {fix}")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, MAX_HEADER_BYTES):
            raise ModelFileError(f"{path}: its header claims {n} bytes but the file has {size}: {fix}")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ModelFileError(f"{path}: the safetensors header is not valid JSON ({e}): {fix}") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: the safetensors header is not a JSON object: {fix}")
    data_bytes = size - 8 - n
    out: Header = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        out[name] = _check_entry(path, name, entry, data_bytes, fix)
    return out


def _check_entry(path: Path, name: str, entry: object, data_bytes: int, fix: str) -> tuple[str, tuple[int, ...]]:
    bad = f"{path}: tensor '{name}' has a malformed header entry {str(entry)[:120]}: {fix}"
    if not isinstance(entry, dict):
        raise ModelFileError(bad)
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES or not _int_list(shape) or not _int_list(offsets) or len(offsets) != 2:
        raise ModelFileError(bad)
    start, end = offsets
    if not 0 <= start <= end <= data_bytes or end - start != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise ModelFileError(f"{path}: tensor '{name}' {dtype}{shape} does not fit its byte range {offsets} "
                             f"({data_bytes} data bytes in the file): {fix}")  # fmt: skip
    return dtype, tuple(shape)


def _int_list(x: object) -> bool:
    return isinstance(x, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in x)


class _TooLarge(Exception):
    """Raised from inside a guarded build to stop it before an allocation."""


class _TooMany(_TooLarge):
    """Raised from inside a guarded build after :data:`MAX_TENSORS` tensors."""


def _requested_numel(func, args: tuple, kwargs: dict) -> int | None:
    """Elements a factory call asks for, read from its arguments (None when they do not say)."""
    if func is torch.arange:
        nums = [a for a in args if isinstance(a, (int, float))]
        start, end, step = (0, nums[0], 1) if len(nums) == 1 else (*nums[:2], nums[2] if len(nums) > 2 else 1)
        return max(math.ceil((end - start) / step), 0) if step else None
    if func is torch.linspace:
        return args[2] if len(args) > 2 else kwargs.get("steps")
    if func is torch.eye:
        return args[0] * (args[1] if len(args) > 1 and isinstance(args[1], int) else args[0])
    size = kwargs.get("size")
    if size is None:
        if func is torch.randint:
            size = next((a for a in args if isinstance(a, (tuple, list, torch.Size))), None)
        elif args and isinstance(args[0], (tuple, list, torch.Size)):
            size = args[0]
        elif func is not torch.full:
            size = args
    if isinstance(size, int):
        size = (size,)
    return math.prod(size) if isinstance(size, (tuple, list, torch.Size)) and all(isinstance(n, int) for n in size) else None


_FACTORIES = (torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn, torch.randint, torch.arange,
              torch.linspace, torch.eye)  # fmt: skip


class _AllocationGuard(TorchFunctionMode):
    """Refuse any factory call that would take more than the memory this machine has left after the
    weights registered so far, and stop after :data:`MAX_TENSORS` weight tensors: a config that asks
    for a model larger than the machine fails at once, before the allocation."""

    def __init__(self, available: int | None) -> None:
        super().__init__()
        self.available, self.registered, self.count = available, 0, 0

    def on_register(self, module: nn.Module, name: str, t: torch.Tensor | None) -> None:
        if t is None:
            return
        self.registered += t.numel() * t.element_size()
        self.count += 1
        if self.count > MAX_TENSORS:
            raise _TooMany(f"it asks for more than {MAX_TENSORS} weight tensors (arvision's largest models have < 1,000)")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.available is not None and func in _FACTORIES:
            try:
                n = _requested_numel(func, args, kwargs)
            except (TypeError, ValueError, OverflowError, ZeroDivisionError):
                n = None
            dtype = kwargs.get("dtype") or torch.get_default_dtype()
            if n is not None and n * dtype.itemsize > self.available - self.registered:
                raise _TooLarge(f"one of its tensors alone needs {human_bytes(n * dtype.itemsize)}")
        return func(*args, **kwargs)


def build_guarded(build: Callable[[], nn.Module], *, source: str, available: int | None = None) -> nn.Module:
    """``build()``, refused before allocating when the config asks for more memory than this machine
    has free (``available``, default: :func:`available_memory`) or for an absurd number of tensors;
    any failure of the config to build a model is a :class:`ModelFileError` naming the config file."""
    guard = _AllocationGuard(available_memory() if available is None else available)
    hooks = [torch_module.register_module_parameter_registration_hook(guard.on_register),
             torch_module.register_module_buffer_registration_hook(guard.on_register)]  # fmt: skip
    try:
        with guard:
            return build()
    except _TooLarge as e:
        need = None if isinstance(e, _TooMany) else _meta_bytes(build)
        figure = f"its weights need {human_bytes(need)} ({need} bytes)" if need else str(e)
        raise ModelFileError(f"the config in {source} describes a model too large for this machine: {figure}, but it has "
                             f"{human_bytes(guard.available or 0)} of memory free; the config is corrupt or the model needs a "
                             "bigger machine") from None  # fmt: skip
    except Exception as e:  # any failure here comes from the config's values (negative, huge, wrong types)
        raise ModelFileError(f"the config in {source} cannot build a model ({type(e).__name__}: {str(e)[:300]}); "
                             "the file is corrupt or was edited by hand: re-save or re-download the model") from None  # fmt: skip
    finally:
        for h in hooks:
            h.remove()


def _meta_bytes(build: Callable[[], nn.Module]) -> int | None:
    """Bytes of the weights ``build()`` makes, found on the meta device (no memory; only for error
    messages: meta ops import torch._dynamo, ~3 s). None if it cannot be built there."""
    guard = _AllocationGuard(None)
    hooks = [torch_module.register_module_parameter_registration_hook(guard.on_register),
             torch_module.register_module_buffer_registration_hook(guard.on_register)]  # fmt: skip
    try:
        with torch.device("meta"):
            build()
        return guard.registered
    except Exception:
        return None
    finally:
        for h in hooks:
            h.remove()


def check_header(skeleton: nn.Module, header: Header, *, source: str) -> None:
    """A :class:`ModelFileError` naming the first tensor of ``header`` that does not fit ``skeleton``."""
    own = skeleton.state_dict()
    missing = [k for k in own if k not in header]
    unexpected = [k for k in header if k not in own]
    shapes = [k for k in own if k in header and header[k][1] != tuple(own[k].shape)]
    if not (missing or unexpected or shapes):
        return
    if shapes:
        k = shapes[0]
        first = f"'{k}' is {header[k][0]}{list(header[k][1])} in the file but {list(own[k].shape)} in the config"
    elif missing:
        first = f"'{missing[0]}' is missing from the file"
    else:
        first = f"the file has a tensor '{unexpected[0]}' the config's model lacks"
    counts = ", ".join(f"{len(v)} {what}" for v, what in ((shapes, "mis-shaped"), (missing, "missing"), (unexpected, "unexpected")) if v)
    raise ModelFileError(f"the weights in {source} do not fit {type(skeleton).__name__} built from the config beside "
                         f"them ({counts}); first: {first}. "
                         "The config and weights come from different models: re-save or re-download the model")  # fmt: skip
