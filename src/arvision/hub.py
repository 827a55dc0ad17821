"""``arvision.load``: open a model directory or a model shipped inside the package, by name."""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

import arvision.generators  # noqa: F401  (their @register_model fills the model registry)
import arvision.metrics.mnist_classifier  # noqa: F401
import arvision.tokenizers  # noqa: F401
from arvision.errors import ModelFileError
from arvision.modeling import PretrainedModel, load_model, read_model_config

if TYPE_CHECKING:
    from arvision.pipeline import Pipeline
    from arvision.tokenizers import Tokenizer


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


def load(name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu") -> "PretrainedModel | Pipeline":
    """Load a model by shipped name (``"mnist-vq"``) or from a directory written by ``save_pretrained``.

    The class is rebuilt from the directory's ``config.json``: a tokenizer directory gives a
    tokenizer (whichever kind), a generator directory a :class:`~arvision.pipeline.Pipeline`
    (generator + its tokenizer + sampling defaults).
    """
    from arvision.pipeline import Pipeline

    path = resolve(name_or_path)
    if read_model_config(path)["model_type"].endswith("_generator"):
        return Pipeline.from_pretrained(path, device=device)
    return load_model(path, map_location=device)


def load_pipeline(name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu") -> "Pipeline":
    """:func:`load`, insisting on a generator pipeline (a clear error for a tokenizer or classifier)."""
    from arvision.pipeline import Pipeline

    obj = load(name_or_path, device=device)
    if not isinstance(obj, Pipeline):
        raise ValueError(f"{name_or_path} is a {obj.model_type} model, not a generator: pass a generator (e.g. mnist-raster)")
    return obj


def load_tokenizer(name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu") -> "Tokenizer":
    """:func:`load`, insisting on a tokenizer; a generator directory is pointed to its ``tokenizer/``."""
    from arvision.tokenizers import Tokenizer

    obj = load(name_or_path, device=device)
    if isinstance(obj, Tokenizer):
        return obj
    if isinstance(obj, PretrainedModel):
        raise ValueError(f"{name_or_path} is a {obj.model_type} model, not a tokenizer: pass a tokenizer (e.g. mnist-vq)")
    raise ValueError(f"{name_or_path} is a generator, not a tokenizer: its tokenizer is {resolve(name_or_path) / 'tokenizer'}")
