"""Data: built-in MNIST, folders of images, image conversion and grids. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from arvision.data.folder import IMAGE_EXTENSIONS, ImageFolder
from arvision.data.images import load_image, make_grid, pil_to_tensor, resize_center_crop, save_image, tensor_to_pil
from arvision.data.mnist import MnistDataset, load_mnist
from arvision.errors import DataError


def get_dataset(spec: str, *, split: str = "train", image_size: int, channels: int) -> Dataset:
    """``"mnist"`` (the built-in copy, ``split`` train/test) or a folder of images (``split`` ignored)."""
    if spec == "mnist":
        return MnistDataset(split, image_size=image_size, channels=channels)
    if Path(spec).exists():
        return ImageFolder(spec, image_size=image_size, channels=channels)
    raise DataError(f"unknown data '{spec}': use 'mnist' (built in) or the path of a folder of images")


def split_dataset(ds: Dataset, holdout: float, seed: int = 0) -> tuple[Subset, Subset]:
    """Deterministic (train, held-out) split; the held-out part has at least one item."""
    n = len(ds)  # type: ignore[arg-type]
    if n < 2:
        raise DataError(f"need at least 2 images to hold some out for evaluation, got {n}")
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    k = min(max(1, round(n * holdout)), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(ds, sorted(perm[k:])), Subset(ds, sorted(perm[:k]))


__all__ = [
    "IMAGE_EXTENSIONS", "ImageFolder", "MnistDataset", "get_dataset", "load_image", "load_mnist", "make_grid",
    "pil_to_tensor", "resize_center_crop", "save_image", "split_dataset", "tensor_to_pil",
]  # fmt: skip
