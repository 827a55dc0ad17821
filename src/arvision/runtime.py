"""Process settings for fast inference, each scoped to the call that needs it.

**Freed memory kept for reuse (CPU, glibc).** glibc's malloc serves every block above 32 MiB with
a fresh ``mmap`` and unmaps it when freed, so each large activation (one 256 px decoder feature map
of 4 images is 168 MB) is page-faulted and zeroed by the kernel again on every use: ~1 s of VAR's
~8 s decoder on a 2-core CPU (``benchmarks/official_speed.py``). Inside
``with reuse_freed_memory():`` (what ``Pipeline.sample`` does on CPU) glibc's thresholds are raised
so that such blocks come from the heap and freed ones stay with the process for the next tensor
(like PyTorch's CUDA caching allocator, up to 1 GiB of free memory is kept). When the outermost
scope ends (scopes nest and may be entered from several threads: a counter under a lock), the
previous state comes back: the process-wide opt-in :func:`keep_freed_memory` if someone made it,
else glibc's thresholds at the values its own dynamic rule settles at in a PyTorch process
(32 MiB / 64 MiB; glibc has no getter and no way back to the dynamic rule once a threshold was
set) and the kept memory is returned to the system (``malloc_trim``). :func:`memory_reuse_state`
tells what is in force. Other C libraries and systems are left alone; ``ARVISION_REUSE_MEMORY=0``
in the environment turns this off.

**Precision.** :func:`precision_scope` runs a block under ``torch.autocast`` in bf16 (``"bf16"``)
or changes nothing (``"fp32"``, the default everywhere); :func:`check_precision` says clearly when
a device cannot compute in bf16 at full speed (CPUs without AVX512-BF16/AMX, GPUs without bf16).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
import threading
from typing import Iterator

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP = 1 << 30  # serve blocks up to 1 GiB from the heap; trim only above 1 GiB of free heap
_DEFAULT_MMAP, _DEFAULT_TRIM = 32 << 20, 64 << 20


def _load_glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # glibc only (musl has no such thresholds)
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_glibc()
_lock = threading.Lock()
_state = {"scopes": 0, "opt_in": False, "active": False}  # open reuse_freed_memory scopes; keep_freed_memory(); set now


def _set(mmap_threshold: int, trim_threshold: int) -> bool:
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(_LIBC.mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def _wanted() -> bool:
    return os.environ.get("ARVISION_REUSE_MEMORY", "1") != "0"


def _restore_defaults() -> None:
    """glibc's steady-state thresholds, and the kept free memory back to the system (lock held)."""
    if _set(_DEFAULT_MMAP, _DEFAULT_TRIM):
        _LIBC.malloc_trim(0)
    _state["active"] = False


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[bool]:
    """Keep large freed CPU blocks for reuse while the block runs (glibc Linux; no-op elsewhere or
    when ``ARVISION_REUSE_MEMORY=0``); yields whether the setting is in force. Nested and
    concurrent scopes share one setting, undone when the last one ends (see the module docstring)."""
    with _lock:
        _state["scopes"] += 1
        if not _state["active"] and _wanted():
            _state["active"] = _set(_KEEP, _KEEP)
        active = _state["active"]
    try:
        yield active
    finally:
        with _lock:
            _state["scopes"] -= 1
            if _state["scopes"] == 0 and _state["active"] and not _state["opt_in"]:
                _restore_defaults()


def keep_freed_memory() -> bool:
    """Process-wide opt-in: keep large freed CPU blocks for reuse from now on, also outside
    :func:`reuse_freed_memory` scopes, until :func:`release_memory`. Returns whether it is active."""
    if not _wanted():
        return False
    with _lock:
        if not _state["active"]:
            _state["active"] = _set(_KEEP, _KEEP)
        _state["opt_in"] = _state["active"]
        return _state["active"]


def release_memory() -> None:
    """End the process-wide opt-in and give the kept memory back (open scopes keep theirs until they end)."""
    with _lock:
        _state["opt_in"] = False
        if _state["scopes"] == 0:
            _restore_defaults()


def memory_reuse_state() -> dict[str, int | bool]:
    """What is in force: ``active`` (glibc's thresholds raised now), ``scopes`` (open
    :func:`reuse_freed_memory` blocks) and ``opt_in`` (:func:`keep_freed_memory` was called)."""
    with _lock:
        return dict(_state)


# -- precision ----------------------------------------------------------------------------------
PRECISIONS = ("fp32", "bf16")


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), None where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return None


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); without, oneDNN emulates bf16
    and it is slower than fp32. Read from /proc/cpuinfo on Linux; elsewhere from PyTorch's oneDNN."""
    flags = _cpu_flags()
    if flags is None:
        check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        return bool(check()) if check is not None else False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX bf16 tiles (Intel Sapphire Rapids and later; /proc/cpuinfo)."""
    return "amx_bf16" in (_cpu_flags() or ())


def check_precision(precision: str, device: str | torch.device) -> str:
    """``precision`` validated for ``device``: "fp32" (always) or "bf16" (CPUs with AVX512-BF16 or
    AMX, CUDA GPUs with bf16); a ValueError that says what to use instead otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use 'fp32' (default, exact) or 'bf16' (faster on CPUs "
                         "with AVX512-BF16/AMX and on GPUs)")  # fmt: skip
    if precision == "fp32":
        return precision
    kind = torch.device(device).type
    if kind == "cpu" and not cpu_has_bf16():
        raise ValueError("precision 'bf16' needs a CPU with AVX512-BF16 or AMX (this one would emulate bf16, slower than "
                         "fp32): use precision 'fp32', or a GPU")  # fmt: skip
    if kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("precision 'bf16' needs a GPU with bf16 support (Ampere or newer): use precision 'fp32'")
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"precision 'bf16' runs on CPUs and CUDA GPUs, not on {kind}: use precision 'fp32'")
    return precision


def precision_scope(precision: str, device: str | torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in bf16 on ``device`` for ``"bf16"``; nothing at all for ``"fp32"`` (so
    fp32 results stay bit-identical to code that never heard of precision). Checked first."""
    check_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def compute_dtype(device: str | torch.device, default: torch.dtype) -> torch.dtype:
    """The dtype matmuls produce on ``device`` now: autocast's when it is on there, else ``default``
    (what a KV cache should hold so that it matches the keys and values written into it)."""
    kind = torch.device(device).type
    if kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return default


def fp32_attention(device: str | torch.device) -> bool:
    """Whether attention on ``device`` runs in float32 between bf16 matmuls now: under CPU autocast
    on a CPU without AMX.

    There PyTorch's bf16 attention kernel has no AMX tiles to pack for and is slower than its
    float32 one (AVX512-BF16 AMD EPYC, one query over 256 cached keys with GPT-B's heads: 1040 vs
    134 us; VAR-d16's last scale: 43 vs 36 ms; docs/performance.md), and float32 attention is the
    more accurate. With AMX that kernel packs its blocks for the AMX tiles (not measured here: no
    such CPU was at hand), so attention stays in autocast's bf16 there."""
    return torch.device(device).type == "cpu" and torch.is_autocast_enabled("cpu") and not cpu_has_amx()


def attention_dtype(device: str | torch.device, default: torch.dtype) -> torch.dtype:
    """The dtype attention runs in on ``device`` now, and a KV cache holds: float32 where
    :func:`fp32_attention` says so, else :func:`compute_dtype`."""
    return torch.float32 if fp32_attention(device) else compute_dtype(device, default)
