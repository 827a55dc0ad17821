"""``arvision.load``: open a model directory or a model shipped inside the package, by name."""

from __future__ import annotations

import os

import torch

import arvision.generators  # noqa: F401  (their @register_model fills the model registry)
import arvision.metrics.mnist_classifier  # noqa: F401
from arvision.devices import check_device
from arvision.modeling import PretrainedModel, list_models, load_model, read_model_config, resolve, shipped_models_dir  # noqa: F401
from arvision.pipeline import Pipeline
from arvision.tokenizers import Tokenizer


def load(name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu") -> PretrainedModel | Pipeline:
    """Load a model by shipped name (``"mnist-vq"``) or from a directory written by ``save_pretrained``.

    The class is rebuilt from the directory's ``config.json``: a tokenizer directory gives a
    tokenizer (whichever kind), a generator directory a :class:`~arvision.pipeline.Pipeline`
    (generator + its tokenizer + sampling defaults).
    """
    check_device(device)  # a clear error before anything is read
    path = resolve(name_or_path)
    if str(read_model_config(path)["model_type"]).endswith("_generator"):
        return Pipeline.from_pretrained(path, device=device)
    return load_model(path, map_location=device)


def load_pipeline(name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu") -> Pipeline:
    """:func:`load`, insisting on a generator pipeline (a clear error for a tokenizer or classifier)."""
    obj = load(name_or_path, device=device)
    if not isinstance(obj, Pipeline):
        raise ValueError(f"{name_or_path} is a {obj.model_type} model, not a generator: pass a generator (e.g. mnist-raster)")
    return obj


def load_tokenizer(name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu") -> Tokenizer:
    """:func:`load`, insisting on a tokenizer; a generator directory is pointed to its ``tokenizer/``."""
    obj = load(name_or_path, device=device)
    if isinstance(obj, Tokenizer):
        return obj
    if isinstance(obj, PretrainedModel):
        raise ValueError(f"{name_or_path} is a {obj.model_type} model, not a tokenizer: pass a tokenizer (e.g. mnist-vq)")
    raise ValueError(f"{name_or_path} is a generator, not a tokenizer: its tokenizer is {resolve(name_or_path) / 'tokenizer'}")
