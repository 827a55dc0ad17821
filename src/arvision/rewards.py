"""Rewards for test-time search: one score per image, higher is better.

A reward is any callable ``reward(images, labels) -> scores`` with images (B, C, H, W) float in
[0, 1] (the pipeline's convention), labels (B,) the requested class ids and scores (B,) floats.
Search methods (``samplers/search.py``) check what a reward returns with :func:`check_scores`.
Shipped:

* :class:`ClassifierReward`: log-probability of the requested class under a classifier (the
  shipped ``mnist-classifier`` by default): "does it show the digit that was asked for?";
* :class:`RealismReward`: the realism score of Kynkäänniemi et al. 2019 (arXiv:1904.06991, §5) in
  a feature space against reference images (an image folder, an ``.npz`` or ``mnist:train``):
  max over reference samples i of r_i / ||f(x) - f_i||, r_i the distance of f_i to its k-th
  nearest reference neighbour; > 1 inside the reference manifold. As in the paper, the half of
  the reference with the largest radii is left out (outliers would make everything "realistic").

``get_reward("mnist-classifier")``, ``get_reward("realism:DIR")`` or a callable (returned as is):
what the ``--reward`` option of the CLI takes.
"""

from __future__ import annotations

import os
from typing import Callable, Union

import torch
from torch import Tensor

RewardFn = Callable[[Tensor, Tensor], Tensor]
RewardSpec = Union[str, RewardFn]


def check_scores(scores, batch_size: int, name: str = "the reward") -> Tensor:
    """``scores`` as a float tensor (B,), or a clear error for the wrong type, shape or a NaN."""
    if not isinstance(scores, Tensor):
        try:
            scores = torch.as_tensor(scores, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must return one float per image (a tensor of shape ({batch_size},)), "
                            f"got {type(scores).__name__}") from None  # fmt: skip
    if scores.ndim == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]
    if tuple(scores.shape) != (batch_size,):
        raise ValueError(f"{name} must return one score per image, shape ({batch_size},), got shape {tuple(scores.shape)}")
    if not (scores.is_floating_point() or scores.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must return float scores, got dtype {scores.dtype}")
    scores = scores.detach().float().cpu()
    if not torch.isfinite(scores).all():
        bad = int((~torch.isfinite(scores)).sum())
        raise ValueError(f"{name} returned {bad} NaN or infinite score(s) of {batch_size}: a reward must give a finite "
                         "score to every image (check it on blank or partial images, which a search scores too)")  # fmt: skip
    return scores


class ClassifierReward:
    """log p(label | image) under ``classifier`` (a directory or shipped name; default ``mnist-classifier``)."""

    def __init__(self, classifier: str | os.PathLike = "mnist-classifier", device: str | torch.device = "cpu") -> None:
        from arvision.metrics.mnist_classifier import MnistClassifier
        from arvision.modeling import resolve

        self.net = MnistClassifier.from_pretrained(resolve(classifier), map_location=device).eval()
        self.name = f"classifier log p(class) ({classifier})"

    @torch.no_grad()
    def __call__(self, images: Tensor, labels: Tensor) -> Tensor:
        logp = self.net(images.float() * 2 - 1).log_softmax(-1)
        if labels.min() < 0 or labels.max() >= logp.shape[1]:
            raise ValueError(f"the classifier knows classes 0..{logp.shape[1] - 1}, got labels up to {int(labels.max())}")
        return logp.gather(1, labels.to(logp.device).long().view(-1, 1))[:, 0].cpu()


class RealismReward:
    """Realism score against ``reference`` (``mnist:train``, an image folder or an ``.npz`` of images)
    in ``features`` space ("mnist" or "inception"), ``k``-th neighbour radii."""

    def __init__(self, reference: str = "mnist:train", *, features: str = "mnist", k: int = 3,
                 inception_weights: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 channels: int = 1, image_size: int = 28) -> None:  # fmt: skip
        from arvision.metrics.features import get_feature_extractor, load_reference
        from arvision.metrics.generative import _knn_radii

        self.extractor = get_feature_extractor(features, inception_weights=inception_weights, device=device)
        ref = load_reference(reference, self.extractor, channels=channels, image_size=image_size, progress=False)
        if ref.features is None:
            raise ValueError(f"reference {reference} holds only mean/covariance statistics; the realism score needs "
                             "the reference images' features (a folder, mnist:train or an .npz of images)")  # fmt: skip
        if len(ref.features) <= 2 * k:
            raise ValueError(f"reference {reference} has {len(ref.features)} images; the realism score with k={k} needs more than {2 * k}")
        radii = _knn_radii(ref.features, k)
        keep = radii <= radii.median()  # the paper's pruning: drop the half of the reference with the largest radii
        self.features_ND, self.radii_N = ref.features[keep], radii[keep]
        self.name = f"realism ({features} features vs {reference})"

    @torch.no_grad()
    def __call__(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        from arvision.metrics.features import to_uint8

        f, _ = self.extractor.extract(to_uint8(images.float().cpu()))
        out = []
        for i in range(0, len(f), 256):
            d = torch.cdist(f[i : i + 256], self.features_ND).clamp_min(1e-8)
            out.append((self.radii_N / d).amax(1))
        return torch.cat(out)


def get_reward(spec: RewardSpec, *, device: str | torch.device = "cpu") -> RewardFn:
    """A reward from a name (``mnist-classifier``, ``classifier:DIR``, ``realism``, ``realism:REFERENCE``)
    or a callable (returned unchanged)."""
    if callable(spec):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"reward must be a callable reward(images, labels) -> scores or a name, got {type(spec).__name__}")
    kind, _, arg = spec.partition(":")
    if kind in ("mnist-classifier", "classifier"):
        return ClassifierReward(arg or "mnist-classifier", device=device)
    if kind == "realism":
        return RealismReward(arg or "mnist:train", device=device)
    raise ValueError(f"unknown reward {spec!r}: use mnist-classifier, classifier:DIR (a classifier directory), realism "
                     "(vs MNIST train), realism:REFERENCE (an image folder, .npz or mnist:SPLIT) or pass a callable")  # fmt: skip
