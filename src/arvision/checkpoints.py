"""Reading checkpoint files safely: ``read_checkpoint(path) -> {name: tensor}`` (official releases,
published LPIPS weights).

Official releases come in several containers:

* a bare ``state_dict`` (VAR's HF files, LlamaGen's FSDP exports for XXL/3B);
* ``{"model": state, "optimizer": ..., "steps": ..., "args": argparse.Namespace, "ema": ...}``
  (LlamaGen DDP training checkpoints, ``vq_ds16_c2i.pt``, ``c2i_*.pt``);
* ``{"module": state}`` (DeepSpeed) or ``{"state_dict": state}`` (Lightning and friends);
* ``.safetensors`` files.

Nothing is ever unpickled with ``weights_only=False``: files are read with
``torch.load(weights_only=True)``, whose restricted unpickler rebuilds only tensors and plain
containers, with one extra allowed class, :class:`argparse.Namespace` (an attribute bag; its
construction runs no code of the file). A pickle that names any other callable (``os.system``,
a training-script class) is refused with :class:`~arvision.errors.ModelFileError`, never run.

Prefixes added by ``torch.compile`` (``_orig_mod.``) and DDP/DeepSpeed (``module.``) are stripped.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import struct
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from arvision.errors import ModelFileError

# Containers tried in this order; "ema" only when asked for (the released files keep the
# weights the authors evaluated under "model").
CONTAINER_KEYS = ("model", "state_dict", "module")
_PREFIXES = ("_orig_mod.", "module.")
_ZIP_MAGIC = b"PK\x03\x04"


def read_checkpoint(path: str | os.PathLike, *, what: str = "a PyTorch checkpoint", ema: bool = False,
                    key: str | None = None) -> dict[str, Tensor]:  # fmt: skip
    """The weights stored in ``path`` as a flat ``{name: tensor}`` dict on the CPU.

    Args:
        path: a ``.pth``/``.pt`` file written by ``torch.save`` (zip or legacy format) or a
            ``.safetensors`` file.
        what: what the file should be, named in error messages (e.g. "the VAR VQVAE checkpoint
            vae_ch160v4096z32.pth").
        ema: take the exponential-moving-average weights (``ckpt["ema"]``) instead of
            ``ckpt["model"]`` when the file holds both.
        key: an explicit dotted path to the state dict inside the file (e.g.
            ``"trainer.var_wo_ddp"``); overrides the automatic choice.

    Raises:
        ModelFileError: the file is missing, empty, truncated or corrupt, not a PyTorch
            checkpoint, holds pickled objects other than tensors and plain containers, or
            holds no tensors where expected.
    """
    p = Path(path)
    obj = _load(p, what)
    state = _unwrap(obj, p, what, ema=ema, key=key)
    return strip_prefixes(state)


def strip_prefixes(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Remove ``torch.compile``'s ``_orig_mod.`` and DDP's ``module.`` from every key (anywhere a
    wrapped module's name can appear: at the start and after a dot)."""
    out = {}
    for k, v in state.items():
        for prefix in _PREFIXES:
            k = re.sub(rf"(^|\.){re.escape(prefix)}", r"\1", k)
        if k in out:
            raise ModelFileError(f"two tensors map to '{k}' once the wrapper prefixes {_PREFIXES} are removed")
        out[k] = v
    return out


# -- loading -----------------------------------------------------------------------------------
def _load(p: Path, what: str) -> Any:
    if not p.exists():
        raise ModelFileError(f"no such file '{p}': expected {what}")
    if p.is_dir():
        raise ModelFileError(f"'{p}' is a directory: expected {what} (a single .pth/.pt/.safetensors file)")
    size = p.stat().st_size
    if size == 0:
        raise ModelFileError(f"'{p}' is empty: expected {what}; the download or copy was interrupted")
    with open(p, "rb") as f:
        head = f.read(16)
    if _looks_like_safetensors(head, size):
        return _load_safetensors(p, what)
    if not (head.startswith(_ZIP_MAGIC) or head[:1] == b"\x80"):
        raise ModelFileError(
            f"'{p}' is not a PyTorch checkpoint (it starts with {head[:8]!r}, neither a torch.save zip archive "
            f"nor a pickle): expected {what}"
        )
    try:
        # argparse.Namespace is allowed because LlamaGen's training checkpoints store their
        # command-line arguments; everything else stays forbidden.
        with torch.serialization.safe_globals([argparse.Namespace]):
            # mmap (zip format only) keeps multi-GB files out of RAM until the model copies them.
            return torch.load(p, map_location="cpu", weights_only=True, mmap=head.startswith(_ZIP_MAGIC))
    except pickle.UnpicklingError as e:
        msg = str(e)
        m = re.search(r"(?:GLOBAL|global) ([\w.]+)", msg)
        if m:
            raise ModelFileError(
                f"'{p}' pickles a Python object ({m.group(1)}) besides tensors, and arvision never runs arbitrary "
                f"pickled code. If you trust the file, extract its state dict with your own code "
                f"(torch.save(ckpt['model'], 'weights.pth')) and convert that. Expected {what}"
            ) from None
        m = re.search(r"WeightsUnpickler error: *\n*(.*)", msg)
        detail = m.group(1).strip() if m else _first_line(msg)
        raise ModelFileError(
            f"'{p}' cannot be read safely: it is corrupt, or a pickle that torch.save did not write ({detail}); "
            f"expected {what}"
        ) from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, struct.error) as e:
        raise ModelFileError(
            f"'{p}' is truncated or corrupt ({type(e).__name__}: {_first_line(str(e))}); expected {what}: "
            "re-download or re-copy it"
        ) from None


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    n = struct.unpack("<Q", head[:8])[0]
    return head[8:9] == b"{" and 8 + n <= size


def _load_safetensors(p: Path, what: str) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(p), device="cpu")
    except Exception as e:  # safetensors raises its own error types
        raise ModelFileError(f"'{p}' is a truncated or corrupt safetensors file ({_first_line(str(e))}): expected {what}") from None


def _first_line(msg: str) -> str:
    line = msg.strip().splitlines()[0] if msg.strip() else ""
    return line.split(". ")[0][:200]


# -- containers --------------------------------------------------------------------------------
def _is_state(obj: Any) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(isinstance(k, str) for k in obj) and all(
        isinstance(v, Tensor) for v in obj.values()
    )


def _unwrap(obj: Any, p: Path, what: str, *, ema: bool, key: str | None) -> dict[str, Tensor]:
    if not isinstance(obj, dict):
        raise ModelFileError(f"'{p}' holds a {type(obj).__name__}, not a state dict: expected {what}")
    if key is not None:
        cur: Any = obj
        for part in key.split("."):
            if not isinstance(cur, dict) or part not in cur:
                raise ModelFileError(f"'{p}' has no entry '{key}' (top-level keys: {_keys(obj)}): expected {what}")
            cur = cur[part]
        return _tensors_only(cur, p, what, f"['{key}']")
    if ema:
        if "ema" not in obj:
            raise ModelFileError(f"'{p}' has no 'ema' weights (top-level keys: {_keys(obj)}); convert without ema")
        return _tensors_only(obj["ema"], p, what, "['ema']")
    for k in CONTAINER_KEYS:
        if k in obj and isinstance(obj[k], dict):
            return _tensors_only(obj[k], p, what, f"['{k}']")
    if "ema" in obj and isinstance(obj["ema"], dict) and not any(isinstance(v, Tensor) for v in obj.values()):
        return _tensors_only(obj["ema"], p, what, "['ema']")
    return _tensors_only(obj, p, what, "")


def _tensors_only(obj: Any, p: Path, what: str, where: str) -> dict[str, Tensor]:
    """The tensors of a state dict; plain-number entries (e.g. a step counter) are ignored."""
    if not isinstance(obj, dict):
        raise ModelFileError(f"'{p}'{where} holds a {type(obj).__name__}, not a state dict: expected {what}")
    state = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if not state:
        raise ModelFileError(
            f"'{p}'{where} holds no tensors (keys: {_keys(obj)}): expected {what}; if the weights are nested "
            "elsewhere, pass key='a.b' to read_checkpoint"
        )
    return state


def _keys(obj: dict) -> str:
    keys = [str(k) for k in obj]
    return ", ".join(keys[:10]) + (f", ... (+{len(keys) - 10} more)" if len(keys) > 10 else "")


# -- shape inference shared by the converters --------------------------------------------------
