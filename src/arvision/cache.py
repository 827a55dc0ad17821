"""An on-disk cache for work that depends only on files: reference features of ``eval``, the
encoded data set of ``train generator``.

Entries live under :func:`cache_dir` (``$ARVISION_CACHE``, else ``$XDG_CACHE_HOME/arvision``, else
``~/.cache/arvision``), one safetensors file per key. The key is a JSON-able dict that names
everything the result depends on: the weights of the network that computed it (a content hash)
and the identity of the input files (path, size and modification time of every file; see
:func:`path_identity`). A file whose key does not match, that cannot be read or whose tensors fail
the caller's check is recomputed and overwritten, never trusted. Writes are atomic
(:func:`arvision.modeling.write_safetensors`), so a killed process leaves no half entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

Tensors = dict[str, torch.Tensor]


def cache_dir(kind: str | None = None) -> Path:
    """The cache folder (``kind``: its sub-folder, e.g. "features"), not created here."""
    root = os.environ.get("ARVISION_CACHE")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "arvision"
    return Path(root) / kind if kind else Path(root)


def module_hash(module: nn.Module) -> str:
    """sha256 of a module's state dict (names, dtypes, shapes and values): the identity of a
    network whatever file it was loaded from."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def path_identity(path: str | os.PathLike) -> dict:
    """What a file or folder looked like: its resolved path and, for every file (a folder's
    recursively, in sorted order), the relative name, size and modification time in ns. A changed,
    added or removed file changes the identity."""
    p = Path(path).resolve()
    if p.is_file():
        st = p.stat()
        return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    h = hashlib.sha256()
    n = 0
    for root, dirs, files in os.walk(p):
        dirs.sort()
        for f in sorted(files):
            st = (Path(root) / f).stat()
            h.update(f"{os.path.relpath(Path(root) / f, p)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            n += 1
    return {"path": str(p), "files": n, "listing_sha256": h.hexdigest()}


def entry_path(kind: str, key: dict) -> Path:
    """The cache file of ``key`` in the sub-folder ``kind``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir(kind) / f"{digest}.safetensors"


def load_entry(path: Path, key: dict, check: Callable[[Tensors], bool] | None = None) -> tuple[Tensors, dict] | None:
    """(tensors, metadata) of the cache file ``path`` when it holds ``key`` and passes ``check``;
    None when it is missing, unreadable, for another key or fails the check."""
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            if json.loads(meta.get("key", "null")) != json.loads(json.dumps(key)):
                return None
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception:  # noqa: BLE001 - any damage: recompute
        return None
    if check is not None and not check(tensors):
        return None
    return tensors, meta


def save_entry(path: Path, key: dict, tensors: Tensors, metadata: dict[str, str] | None = None) -> Path | None:
    """Write a cache file atomically; a cache that cannot be written (read-only home, full disk)
    costs the next run the recomputation, not this run its result: None then."""
    from arvision.modeling import write_safetensors

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_safetensors({k: v.contiguous() for k, v in tensors.items()}, path,
                                 metadata={**(metadata or {}), "key": json.dumps(key)})  # fmt: skip
    except OSError:
        return None
