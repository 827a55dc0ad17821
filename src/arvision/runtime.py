"""Process settings for fast CPU inference.

glibc's malloc serves every block above 32 MiB with a fresh ``mmap`` and unmaps it when freed, so
each large activation (one 256 px decoder feature map of 4 images is 168 MB) is page-faulted and
zeroed by the kernel again on every use: ~1 s of VAR's ~8 s decoder on a 2-core CPU
(``benchmarks/official_speed.py``). :func:`keep_freed_memory`, which ``Pipeline.sample`` calls on
CPU, raises glibc's thresholds so that such blocks come from the heap and freed ones stay with the
process for the next tensor (like PyTorch's CUDA caching allocator, up to 1 GiB of free memory is
kept). :func:`release_memory` returns it to the system and puts glibc's thresholds back at the
values its own dynamic rule settles at (32 MiB / 64 MiB). Other C libraries and systems are left
alone; ``ARVISION_REUSE_MEMORY=0`` in the environment turns this off.
"""

from __future__ import annotations

import ctypes
import os
import sys

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


def _set(mmap_threshold: int, trim_threshold: int) -> bool:
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(_LIBC.mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def keep_freed_memory() -> bool:
    """Serve large CPU tensors from reusable heap memory (glibc Linux; no-op elsewhere or when
    ``ARVISION_REUSE_MEMORY=0``). Returns whether the setting is active."""
    if os.environ.get("ARVISION_REUSE_MEMORY", "1") == "0":
        return False
    return _set(_KEEP, _KEEP)


def release_memory() -> None:
    """Give free heap memory back to the system and restore glibc's usual thresholds."""
    if _set(_DEFAULT_MMAP, _DEFAULT_TRIM):
        _LIBC.malloc_trim(0)
