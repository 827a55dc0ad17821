"""Feature networks for sample-quality metrics, and the reference sets they are compared with.

Two networks give (features, logits) for a batch of images:

- ``inception``: the FID Inception-v3 (pool3, 2048-d; logits without bias for IS), from a local
  weight file. The standard for ImageNet-scale numbers.
- ``mnist``: the shipped MNIST classifier (128-d penultimate features; 10-way logits). Cheap and
  meaningful for digits: MNIST-FID, MNIST-IS (at most 10) and class accuracy.

A reference is the real-data side of FID/KID/precision/recall: the built-in MNIST splits
(``mnist:test``, ``mnist:train``), an ``.npz`` with ``arr_0`` (uint8 NHWC images, the layout of the
ADM/guided-diffusion evaluation suite) and/or precomputed ``mu``/``sigma`` (as in
``VIRTUAL_imagenet256_labeled.npz``), or a folder of images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from arvision.cache import entry_path, load_entry, path_identity, save_entry
from arvision.errors import DataError
from arvision.metrics.generative import FeatureStats
from arvision.outputs import atomic_path

FeatureKind = Literal["inception", "mnist"]


def to_uint8(images_01: Tensor) -> Tensor:
    """[0, 1] float images -> uint8 0..255 (round to nearest), as when saving PNGs."""
    return images_01.clamp(0, 1).mul(255).round().to(torch.uint8)


class FeatureExtractor:
    """Callable on uint8 (B, C, H, W) images; returns float32 (features (B, D), logits (B, K))."""

    name: str
    dim: int
    net: torch.nn.Module

    def __call__(self, images_u8: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def identity(self) -> str:
        """Name and weights hash of the network (what cached reference features are keyed on)."""
        if getattr(self, "_identity", None) is None:
            from arvision.cache import module_hash

            self._identity = f"{self.name}:{module_hash(self.net)}"
        return self._identity

    @torch.no_grad()
    def extract(self, images_u8: Tensor, batch_size: int = 100, progress: bool = False) -> tuple[Tensor, Tensor]:
        feats, logits = [], []
        for b in tqdm(range(0, len(images_u8), batch_size), desc=f"{self.name} features", disable=not progress, leave=False):
            f, lg = self(images_u8[b : b + batch_size])
            feats.append(f.cpu())
            logits.append(lg.cpu())
        return torch.cat(feats), torch.cat(logits)


class InceptionFeatures(FeatureExtractor):
    name, dim = "inception", 2048

    def __init__(self, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> None:
        from arvision.metrics.inception import load_inception

        self.net = load_inception(weights, device=device)

    @torch.no_grad()
    def __call__(self, images_u8: Tensor) -> tuple[Tensor, Tensor]:
        out = self.net(images_u8, ("2048", "logits_unbiased"))
        return out["2048"], out["logits_unbiased"]


class MnistFeatures(FeatureExtractor):
    name, dim = "mnist", 128

    def __init__(self, classifier: str | os.PathLike = "mnist-classifier", device: str | torch.device = "cpu") -> None:
        from arvision.metrics.mnist_classifier import MnistClassifier
        from arvision.modeling import resolve

        self.net = MnistClassifier.from_pretrained(resolve(classifier), map_location=device).eval()
        self.dim = self.net.config.feature_dim

    @torch.no_grad()
    def __call__(self, images_u8: Tensor) -> tuple[Tensor, Tensor]:
        f = self.net.features(images_u8.float() / 127.5 - 1)
        return f, self.net.out(f)


def get_feature_extractor(kind: str, *, inception_weights: str | os.PathLike | None = None,
                          device: str | torch.device = "cpu") -> FeatureExtractor:  # fmt: skip
    if kind == "inception":
        return InceptionFeatures(inception_weights, device)
    if kind == "mnist":
        return MnistFeatures(device=device)
    raise ValueError(f"unknown feature network {kind!r}: use 'mnist' (digits) or 'inception' (FID Inception-v3)")


# -- sample files -------------------------------------------------------------------------------
def save_samples_npz(path: str | os.PathLike, images_u8_BCHW: Tensor, labels: Tensor | None = None) -> Path:
    """Write samples as the evaluation suites expect: ``arr_0`` uint8 (N, H, W, C), ``arr_1`` labels."""
    if images_u8_BCHW.dtype != torch.uint8:
        raise ValueError(f"samples must be uint8, got {images_u8_BCHW.dtype}: convert with to_uint8()")
    arrays = {"arr_0": images_u8_BCHW.permute(0, 2, 3, 1).contiguous().numpy()}
    if labels is not None:
        arrays["arr_1"] = labels.cpu().numpy().astype(np.int64)
    path = Path(path)
    with atomic_path(path) as tmp:  # complete or absent, never half written (a resumed run trusts what exists)
        np.savez(tmp, **arrays)
    return path


def _read_npz(path: str | os.PathLike, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of an .npz file that has them (no pickles); a DataError if unreadable."""
    try:
        with np.load(Path(path), allow_pickle=False) as f:
            return {k: f[k] for k in keys if k in f}
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"cannot read {path} as an .npz file of arrays ({e})") from None


def load_images_npz(path: str | os.PathLike) -> Tensor:
    """uint8 (N, C, H, W) from an ``.npz`` whose ``arr_0`` holds uint8 NHWC (or NHW grey) images."""
    arr = _read_npz(path, ("arr_0",)).get("arr_0")
    if arr is None:
        raise DataError(f"{path} has no 'arr_0' image array")
    if arr.dtype != np.uint8 or arr.ndim not in (3, 4):
        raise DataError(f"{path}: arr_0 must be uint8 images (N, H, W, C) or (N, H, W), got {arr.dtype} {arr.shape}")
    t = torch.from_numpy(arr)
    return t[:, None] if t.ndim == 3 else t.permute(0, 3, 1, 2).contiguous()


@dataclass
class Reference:
    """Real-data side of a comparison: statistics always, features when images were available."""

    name: str
    stats: FeatureStats
    features: Tensor | None = None
    logits: Tensor | None = None


def mnist_reference(spec: str) -> tuple[str, int | None] | None:
    """(split, first N images or None) of a reference ``mnist[:SPLIT[:N]]``; None for other references."""
    if not spec.startswith("mnist"):
        return None
    _, split, count = (spec.split(":") + ["", ""])[:3]
    if count and (not count.isdigit() or int(count) < 2):
        raise DataError(f"reference {spec!r}: mnist:SPLIT:N takes the first N >= 2 images of the split")
    return split or "test", int(count) if count else None


def _reference_images(spec: str, *, channels: int, image_size: int) -> Iterator[Tensor]:
    """uint8 image batches of a reference given as ``mnist:SPLIT[:N]``, an .npz with ``arr_0`` or a folder."""
    mnist = mnist_reference(spec)
    if mnist is not None:
        from arvision.data import load_mnist

        images, _ = load_mnist(mnist[0])  # uint8 (N, 28, 28)
        yield images[: mnist[1], None]
        return
    p = Path(spec)
    if p.suffix == ".npz":
        yield load_images_npz(p)
        return
    if p.is_dir():
        from arvision.data import ImageFolder
        from torch.utils.data import DataLoader

        for x, _ in DataLoader(ImageFolder(p, image_size=image_size, channels=channels), batch_size=200):
            yield to_uint8((x + 1) / 2)
        return
    raise DataError(f"reference {spec!r} not found: use mnist:test / mnist:train (mnist:train:10000 = its first 10,000), an .npz (arr_0 images or mu/sigma) or a folder of images")


def reference_identity(spec: str, *, channels: int, image_size: int) -> dict:
    """What the reference images of ``spec`` depend on: the spec, the files behind it (path, size,
    modification time; every file of a folder) and, for a folder, the size and channels it is read at."""
    mnist = mnist_reference(spec)
    if mnist is not None:
        from arvision.data.mnist import default_mnist_path

        return {"spec": spec, "mnist": list(mnist), "file": path_identity(default_mnist_path())}
    p = Path(spec)
    if not p.exists():
        raise DataError(f"reference {spec!r} not found: use mnist:test / mnist:train (mnist:train:10000 = its first 10,000), an .npz (arr_0 images or mu/sigma) or a folder of images")
    ident = {"spec": spec, "file": path_identity(p)}
    return {**ident, "channels": channels, "image_size": image_size} if p.is_dir() else ident


def load_reference(spec: str, extractor: FeatureExtractor, *, channels: int = 3, image_size: int = 256,
                   batch_size: int = 200, progress: bool = True, cache: bool = True) -> Reference:  # fmt: skip
    """Features/statistics of the reference ``spec`` under ``extractor`` (see the module docstring).

    With ``cache`` (default) the features are computed once per (network weights, reference files)
    and kept in ``arvision.cache.cache_dir("features")``: a changed reference file or network
    recomputes them, so does a damaged cache file."""
    p = Path(spec)
    if p.suffix == ".npz" and p.is_file():
        arrays = _read_npz(p, ("arr_0", "mu", "sigma"))
        if "arr_0" not in arrays and {"mu", "sigma"} <= set(arrays):
            stats = FeatureStats.from_moments(arrays["mu"], arrays["sigma"])
            if stats.dim != extractor.dim:
                raise DataError(f"{p} holds {stats.dim}-d statistics but the {extractor.name} features are "
                                f"{extractor.dim}-d: use the feature network the reference was made with")  # fmt: skip
            return Reference(str(p), stats)
    key = entry = None
    if cache:
        key = {"features": extractor.identity(), "reference": reference_identity(spec, channels=channels, image_size=image_size)}
        entry = load_entry(entry_path("features", key), key, lambda t: _valid_features(t, extractor.dim))
    if entry is not None:
        features, logits = entry[0]["features"], entry[0]["logits"]
        return Reference(spec, FeatureStats.of(features), features, logits)
    feats, logits = [], []
    for batch in _reference_images(spec, channels=channels, image_size=image_size):
        f, lg = extractor.extract(batch, batch_size, progress)
        feats.append(f)
        logits.append(lg)
    features = torch.cat(feats)
    if len(features) < 2:
        raise DataError(f"reference {spec} has {len(features)} image(s); FID needs at least 2")
    logits = torch.cat(logits)
    if key is not None:
        save_entry(entry_path("features", key), key, {"features": features, "logits": logits})
    return Reference(spec, FeatureStats.of(features), features, logits)


def _valid_features(t: dict[str, Tensor], dim: int) -> bool:
    """A cache entry worth trusting: features (N, dim) and logits (N, K), N >= 2, all finite."""
    f, lg = t.get("features"), t.get("logits")
    return (f is not None and lg is not None and f.ndim == 2 and f.shape[1] == dim and lg.ndim == 2 and len(lg) == len(f) >= 2
            and f.dtype == torch.float32 and bool(torch.isfinite(f).all()) and bool(torch.isfinite(lg).all()))  # fmt: skip
