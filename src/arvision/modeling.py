"""Model files: ``config.json`` + ``model.safetensors``, and the registry that rebuilds models.

A model directory holds:

* ``config.json``: ``{"format": 1, "arvision_version", "model_type", "config", "info"}`` where
  ``config`` is the model's resolved config (see :mod:`arvision.config`) and ``info`` a free-form
  model card (description, training command and data, metrics);
* ``model.safetensors``: the weights (no pickle anywhere), whose sha256 is recorded in
  ``config.json`` so that a corrupted file is reported instead of loaded.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from arvision.config import Config
from arvision.devices import check_device
from arvision.errors import ModelFileError
from arvision.modelcheck import build_guarded, check_header, read_safetensors_header
from arvision.outputs import atomic_path, umask, write_text

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

M = TypeVar("M", bound="PretrainedModel")
_REGISTRY: dict[str, type["PretrainedModel"]] = {}


def register_model(cls: type[M]) -> type[M]:
    """Class decorator: make ``cls`` loadable by its ``model_type``."""
    _REGISTRY[cls.model_type] = cls
    return cls


def registered_model_types() -> list[str]:
    return sorted(_REGISTRY)


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write a safetensors file atomically (an interrupted save never leaves a half-written file)
    with the usual permissions: safetensors creates 0600 files, ``config.json`` beside them is
    0644 (under umask 022), so the weights get the same mode as any new file."""
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


_umask = umask  # the old private name


class PretrainedModel(nn.Module):
    """Base of every saveable arvision model: ``save_pretrained`` / ``from_pretrained``."""

    model_type: ClassVar[str]
    config_class: ClassVar[type[Config]]

    def __init__(self, config: Config) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        self.info: dict[str, Any] = {}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory: str | os.PathLike, *, info: dict[str, Any] | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        weights = write_safetensors(state, out / WEIGHTS_NAME)
        if info is not None:
            self.info = dict(info)
        meta = {
            "format": FORMAT_VERSION,
            "arvision_version": _version(),
            "model_type": self.model_type,
            "config": self.config.to_dict(),
            "weights_sha256": _sha256(weights),
            "info": self.info,
        }
        write_text(out / CONFIG_NAME, json.dumps(meta, indent=2) + "\n")
        return out

    @classmethod
    def from_pretrained(cls: type[M], directory: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> M:
        """Rebuild a model of this class from a directory written by :meth:`save_pretrained`."""
        model = load_model(directory, map_location=map_location)
        if not isinstance(model, cls):
            raise ModelFileError(
                f"{directory} holds a '{model.model_type}' model, not a '{cls.model_type}'; "
                "use arvision.load(directory) to open any model type"
            )
        return model


def shipped_models_dir() -> Path:
    return Path(str(importlib.resources.files("arvision") / "assets" / "models"))


def list_models() -> dict[str, str]:
    """Shipped models: ``{name: one-line description}``."""
    root = shipped_models_dir()
    out: dict[str, str] = {}
    if root.is_dir():
        for d in sorted(p for p in root.iterdir() if (p / "config.json").is_file()):
            out[d.name] = str(read_model_config(d).get("info", {}).get("description", ""))
    return out


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A shipped model's directory for a known name, else the path itself."""
    path = Path(name_or_path)
    if not path.exists():
        shipped = shipped_models_dir() / str(name_or_path)
        if isinstance(name_or_path, str) and "/" not in name_or_path and (shipped / "config.json").is_file():
            return shipped
        names = ", ".join(list_models()) or "none"
        raise ModelFileError(
            f"'{name_or_path}' is neither a model directory nor a shipped model name (shipped: {names})"
        )
    return path


def read_model_config(directory: str | os.PathLike) -> dict[str, Any]:
    """Parse and validate ``config.json`` of a model directory."""
    d = Path(directory)
    if not d.exists():
        raise ModelFileError(
            f"no model at '{d}': pass a directory written by save_pretrained, or a shipped model name (see `arvision models`)"
        )
    if not d.is_dir():
        raise ModelFileError(f"'{d}' is a file, but a model is a directory with {CONFIG_NAME} and {WEIGHTS_NAME}")
    cfg_path = d / CONFIG_NAME
    if not cfg_path.is_file():
        raise ModelFileError(
            f"'{d}' has no {CONFIG_NAME}, so it is not an arvision model directory "
            "(official VAR/LlamaGen checkpoints must be converted first)"
        )
    try:
        meta = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{cfg_path} is not valid JSON ({e}); the file is corrupt, re-save or re-download the model") from e
    if not isinstance(meta, dict) or "model_type" not in meta or "config" not in meta:
        raise ModelFileError(f"{cfg_path} lacks 'model_type'/'config': it was not written by arvision's save_pretrained")
    fmt = meta.get("format", 1)
    if isinstance(fmt, bool) or not isinstance(fmt, int) or fmt < 1:
        raise ModelFileError(f"{cfg_path} has format {fmt!r}, which is not a format number (1..{FORMAT_VERSION}); "
                             "the file was edited or is corrupt: re-save or re-download the model")  # fmt: skip
    if fmt > FORMAT_VERSION:
        raise ModelFileError(
            f"{cfg_path} has format {fmt}, newer than this arvision supports ({FORMAT_VERSION}); "
            "upgrade arvision (pip install -U arvision) to load it"
        )
    return meta


def load_model(directory: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> PretrainedModel:
    """Rebuild whichever model class ``directory`` holds, with its weights.

    The registry is filled by the model modules themselves (``@register_model``); importing
    ``arvision`` imports every shipped kind (``arvision.hub``), so this layer imports none of them.
    """
    check_device(map_location)
    d = Path(directory)
    meta = read_model_config(d)
    model_type = meta["model_type"]
    if not isinstance(model_type, str) or model_type not in _REGISTRY:
        raise ModelFileError(
            f"{d} holds a model of type '{model_type}', unknown to arvision {_version()} "
            f"(known: {', '.join(registered_model_types())}); it may need a newer arvision"
        )
    cls = _REGISTRY[model_type]
    try:
        config = cls.config_class.from_dict(meta["config"])
    except Exception as e:  # the config's own checks (ValueError/TypeError) or a value they did not foresee
        raise ModelFileError(f"{d / CONFIG_NAME}: invalid config for '{model_type}': {e or type(e).__name__}") from e
    weights = d / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelFileError(f"missing weights file {weights}: the model directory is incomplete; re-save or re-download it")
    model = build_guarded(lambda: cls(config), source=str(d / CONFIG_NAME))  # refuses sizes beyond this machine
    check_header(model, read_safetensors_header(weights), source=str(weights))  # before reading any weight
    state = load_weights(weights, expected_sha256=meta.get("weights_sha256"))
    load_state_dict_checked(model, state, source=str(weights))
    info = meta.get("info")
    model.info = dict(info) if isinstance(info, dict) else {}
    return model.to(map_location).eval()


def load_weights(path: Path, *, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors file, turning every failure into a clear :class:`ModelFileError`."""
    if not path.is_file():
        raise ModelFileError(f"missing weights file {path}: the model directory is incomplete; re-save or re-download it")
    if expected_sha256 is not None and _sha256(path) != expected_sha256:
        raise ModelFileError(
            f"{path} does not match the sha256 recorded in {CONFIG_NAME}: the file is truncated or corrupt; "
            "re-save or re-download the model"
        )
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for bad headers / sizes
        raise ModelFileError(f"{path} is truncated or corrupt and cannot be read ({e}); re-save or re-download it") from e


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """``load_state_dict(strict=True)`` with a readable list of missing/unexpected/mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_abbrev(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_abbrev(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {_abbrev(shapes)}")
        raise ModelFileError(f"weights in {source} do not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def _abbrev(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n} more)" if len(items) > n else "")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _version() -> str:
    from arvision import __version__

    return __version__


# What `eval generator --record` keeps in a model card (the rest stays in the run's report.json).
CARD_METRICS = ("fid", "kid", "kid_std", "is", "precision", "recall", "class_accuracy", "num_samples", "decode_rate", "undecodable")


def check_card_writable(name_or_path: str | os.PathLike) -> Path:
    """The model directory whose card ``record_metrics`` will update, checked before any work."""
    from arvision.outputs import check_file

    d = resolve(name_or_path)
    read_model_config(d)
    check_file(d / CONFIG_NAME, "--record: model card")
    if not os.access(d / CONFIG_NAME, os.W_OK):
        raise ModelFileError(f"--record: {d / CONFIG_NAME} is read-only; copy the model to a folder you can write")
    return d


def record_metrics(name_or_path: str | os.PathLike, report: dict[str, Any], *, eval_data: str) -> Path:
    """Write measured metrics (``CARD_METRICS`` of an evaluation report, with its sampling settings)
    into a model's card: ``info["metrics"]`` and ``info["eval_data"]`` of ``config.json``.

    Only the card changes (atomically); the weights and their recorded sha256 stay as they are.
    """
    d = resolve(name_or_path)
    meta = read_model_config(d)
    info = meta["info"] if isinstance(meta.get("info"), dict) else {}
    metrics = {k: round(v, 4) if isinstance(v, float) else v for k, v in report.items() if k in CARD_METRICS}
    if isinstance(report.get("sampling"), dict):
        metrics["sampling"] = report["sampling"]
    meta["info"] = {**info, "metrics": metrics, "eval_data": eval_data}
    write_text(d / CONFIG_NAME, json.dumps(meta, indent=2) + "\n")
    return d / CONFIG_NAME
