"""Built-in MNIST (LeCun, Cortes and Burges; CC BY-SA 3.0), shipped inside the package.

``train`` holds the classic 60,000 training images (50,000 train + 10,000 validation, in that
order), ``test`` the 10,000 test images. No download ever happens.
"""

from __future__ import annotations

import importlib.resources
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from arvision.errors import DataError

SPLITS = ("train", "test")


def default_mnist_path() -> Path:
    return Path(str(importlib.resources.files("arvision") / "assets" / "data" / "mnist.npz"))


@lru_cache(maxsize=4)
def _read(path: str) -> dict[str, np.ndarray]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"MNIST file not found at {p}; reinstall arvision (it ships the data) or pass path=")
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:
        raise DataError(f"{p} is not a readable MNIST .npz file ({e}); reinstall arvision or pass a valid path") from e
    for split in SPLITS:
        imgs, labels = data.get(f"{split}_images"), data.get(f"{split}_labels")
        if imgs is None or labels is None or imgs.ndim != 3 or imgs.shape[1:] != (28, 28) or len(imgs) != len(labels):
            raise DataError(f"{p} lacks valid '{split}_images' (N, 28, 28) / '{split}_labels' (N,) arrays: the file is corrupt")
    return data


def load_mnist(split: str = "train", path: str | os.PathLike | None = None) -> tuple[Tensor, Tensor]:
    """MNIST images uint8 (N, 28, 28) and labels int64 (N,) of ``split`` ("train" or "test")."""
    if split not in SPLITS:
        raise DataError(f"unknown MNIST split '{split}'; use one of {SPLITS}")
    data = _read(str(path or default_mnist_path()))
    return torch.from_numpy(data[f"{split}_images"]), torch.from_numpy(data[f"{split}_labels"].astype(np.int64))


class MnistDataset(Dataset):
    """MNIST as float images (channels, size, size) in [-1, 1] with int labels, held in memory.

    Args:
        split: "train" or "test".
        image_size: output side; 28 keeps the originals, other sizes are resized bilinearly once.
        channels: 1 (grey) or 3 (grey repeated to RGB).
        limit: keep only the first ``limit`` images.
        path: another copy of ``mnist.npz``.
    """

    num_classes = 10
    class_names = [str(i) for i in range(10)]

    def __init__(self, split: str = "train", *, image_size: int = 28, channels: int = 1, limit: int | None = None,
                 path: str | os.PathLike | None = None) -> None:  # fmt: skip
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        imgs, labels = load_mnist(split, path)
        if limit is not None:
            imgs, labels = imgs[:limit], labels[:limit]
        x = imgs.float().div(127.5).sub(1).unsqueeze(1)
        if image_size != 28:
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True).clamp(-1, 1)
        self.images = x.repeat(1, channels, 1, 1) if channels == 3 else x
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i], int(self.labels[i])
