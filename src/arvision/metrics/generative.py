"""Sample-quality metrics on feature vectors: FID, IS, KID and precision/recall.

All maths runs in float64. The conventions are the ones published numbers use:

- **FID** (Heusel et al.): ``|mu1-mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2)`` with unbiased
  covariances. The trace of the matrix square root is computed from the eigenvalues of the
  symmetric PSD matrix ``S1^1/2 S2 S1^1/2`` (same eigenvalues as ``S1 S2``), with negative rounding
  noise clamped to 0, so near-singular covariances (fewer samples than dimensions) stay finite.
- **IS** (Salimans et al.): ``exp(E_x KL(p(y|x) || p(y)))`` over ``splits`` equal chunks, reported
  as mean and standard deviation over the chunks; computed from logits (torch-fidelity feeds it
  the Inception logits without the fc bias).
- **KID** (Binkowski et al.): the unbiased MMD^2 estimate with the cubic polynomial kernel
  ``(x.y / d + 1)^3``, averaged over random subsets.
- **Precision / recall** (Kynkaanniemi et al.): the share of one set inside the union of k-NN
  balls (k = 3) of the other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def _as_features(x: Tensor | np.ndarray, name: str) -> Tensor:
    x = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) array of feature vectors, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or infinite values: check the images and the feature network")
    return x


class FeatureStats:
    """Streaming float64 mean and covariance of feature vectors (Chan et al.'s pairwise update).

    ``update`` batches of any size, ``merge`` the statistics of another shard; ``cov`` is the
    unbiased covariance (as ``numpy.cov``). Saves to / loads from ``.npz`` with ``mu``, ``sigma``
    and ``n``.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.n = 0
        self.mean = torch.zeros(dim, dtype=torch.float64)
        self.m2 = torch.zeros(dim, dim, dtype=torch.float64)

    @classmethod
    def of(cls, features_ND: Tensor | np.ndarray) -> "FeatureStats":
        x = _as_features(features_ND, "features")
        s = cls(x.shape[1])
        s.update(x)
        return s

    def update(self, features_ND: Tensor | np.ndarray) -> None:
        x = _as_features(features_ND, "features")
        if x.shape[1] != self.dim:
            raise ValueError(f"features have dimension {x.shape[1]}, these statistics {self.dim}")
        other = FeatureStats(self.dim)
        other.n, other.mean = x.shape[0], x.mean(0)
        centred = x - other.mean
        other.m2 = centred.T @ centred
        self.merge(other)

    def merge(self, other: "FeatureStats") -> None:
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of dimension {other.dim} into {self.dim}")
        if other.n == 0:
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.m2 = self.m2 + other.m2 + torch.outer(delta, delta) * (self.n * other.n / n)
        self.mean = self.mean + delta * (other.n / n)
        self.n = n

    @property
    def cov(self) -> Tensor:
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 samples, these statistics have {self.n}")
        return self.m2 / (self.n - 1)

    def save(self, path: str | os.PathLike) -> None:
        np.savez(path, mu=self.mean.numpy(), sigma=self.cov.numpy(), n=np.int64(self.n))

    @classmethod
    def from_moments(cls, mu: Tensor | np.ndarray, sigma: Tensor | np.ndarray, n: int = 0) -> "FeatureStats":
        """Statistics from a precomputed mean and covariance (e.g. a reference batch's ``mu``/``sigma``)."""
        mu_t = torch.as_tensor(np.asarray(mu), dtype=torch.float64).reshape(-1)
        sigma_t = torch.as_tensor(np.asarray(sigma), dtype=torch.float64)
        if sigma_t.shape != (mu_t.numel(), mu_t.numel()):
            raise ValueError(f"sigma must be ({mu_t.numel()}, {mu_t.numel()}) to match mu, got {tuple(sigma_t.shape)}")
        s = cls(mu_t.numel())
        s.mean, s.n = mu_t, max(int(n), 2)
        s.m2 = sigma_t * (s.n - 1)
        return s

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureStats":
        with np.load(Path(path)) as f:
            if "mu" not in f or "sigma" not in f:
                raise ValueError(f"{path} has no 'mu'/'sigma' arrays (keys: {sorted(f.keys())})")
            return cls.from_moments(f["mu"], f["sigma"], int(f["n"]) if "n" in f else 0)


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """FID between two feature distributions given their statistics."""
    if a.dim != b.dim:
        raise ValueError(f"cannot compare features of dimension {a.dim} and {b.dim}: use the same feature network for both")
    s1, s2 = a.cov, b.cov
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    w1, v1 = torch.linalg.eigh(s1)
    sqrt_s1 = (v1 * w1.clamp(min=0).sqrt()) @ v1.T
    m = sqrt_s1 @ s2 @ sqrt_s1
    trace_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    diff = a.mean - b.mean
    fid = diff @ diff + torch.trace(s1) + torch.trace(s2) - 2 * trace_sqrt
    return float(fid.clamp(min=0))


def fid_from_features(x_ND: Tensor | np.ndarray, y_ND: Tensor | np.ndarray) -> float:
    return frechet_distance(FeatureStats.of(x_ND), FeatureStats.of(y_ND))


def inception_score(logits_NK: Tensor | np.ndarray, splits: int = 10) -> tuple[float, float]:
    """(mean, std) of the Inception Score over ``splits`` consecutive chunks of the samples."""
    logits = _as_features(logits_NK, "logits")
    if not 1 <= splits <= logits.shape[0]:
        raise ValueError(f"splits must be between 1 and the number of samples ({logits.shape[0]}), got {splits}")
    log_p = torch.log_softmax(logits, dim=1)
    scores = []
    for chunk in torch.tensor_split(log_p, splits):
        log_py = torch.logsumexp(chunk, 0) - np.log(chunk.shape[0])
        kl = (chunk.exp() * (chunk - log_py)).sum(1).mean()
        scores.append(kl.exp())
    s = torch.stack(scores)
    return float(s.mean()), float(s.std(unbiased=False))


def _poly_kernel(x: Tensor, y: Tensor, degree: int, gamma: float, coef0: float) -> Tensor:
    return (x @ y.T * gamma + coef0) ** degree


def kernel_inception_distance(x_ND: Tensor | np.ndarray, y_ND: Tensor | np.ndarray, *, subsets: int = 100,
                              subset_size: int = 1000, degree: int = 3, gamma: float | None = None,
                              coef0: float = 1.0, seed: int = 0) -> tuple[float, float]:  # fmt: skip
    """(mean, std) over ``subsets`` random subsets of the unbiased MMD^2 with a polynomial kernel.

    ``subset_size`` is capped by the smaller set; ``gamma`` defaults to ``1 / D``.
    """
    x, y = _as_features(x_ND, "x"), _as_features(y_ND, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"cannot compare features of dimension {x.shape[1]} and {y.shape[1]}")
    if subsets < 1:
        raise ValueError(f"KID needs subsets >= 1, got {subsets}")
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set and subset_size >= 2")
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        xs = x[torch.randperm(x.shape[0], generator=g)[:m]]
        ys = y[torch.randperm(y.shape[0], generator=g)[:m]]
        kxx, kyy, kxy = (_poly_kernel(p, q, degree, gamma, coef0) for p, q in ((xs, xs), (ys, ys), (xs, ys)))
        mmd = ((kxx.sum() - kxx.diagonal().sum()) + (kyy.sum() - kyy.diagonal().sum())) / (m * (m - 1)) - 2 * kxy.mean()
        values.append(mmd)
    v = torch.stack(values)
    return float(v.mean()), float(v.std(unbiased=False))


def _knn_radii(x: Tensor, k: int) -> Tensor:
    """Distance of every row of ``x`` to its k-th nearest other row."""
    return torch.cat([torch.cdist(x[i : i + 2048], x).kthvalue(k + 1, dim=1).values for i in range(0, x.shape[0], 2048)])


def _coverage(queries: Tensor, support: Tensor, radii: Tensor) -> float:
    inside = [(torch.cdist(queries[i : i + 2048], support) <= radii).any(1) for i in range(0, queries.shape[0], 2048)]
    return float(torch.cat(inside).double().mean())


def precision_recall(real_ND: Tensor | np.ndarray, fake_ND: Tensor | np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision (fake samples inside the real manifold) and recall (real inside fake)."""
    real, fake = _as_features(real_ND, "real features"), _as_features(fake_ND, "fake features")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"cannot compare features of dimension {real.shape[1]} and {fake.shape[1]}")
    if k < 1 or k >= min(real.shape[0], fake.shape[0]):
        raise ValueError(f"k must be in 1..{min(real.shape[0], fake.shape[0]) - 1} for these sample sizes, got {k}")
    return _coverage(fake, real, _knn_radii(real, k)), _coverage(real, fake, _knn_radii(fake, k))


@dataclass(frozen=True)
class GenerativeScores:
    """The scores of one sample set against a reference (None where not computed)."""

    fid: float
    inception_score: float | None = None
    inception_score_std: float | None = None
    kid: float | None = None
    kid_std: float | None = None
    precision: float | None = None
    recall: float | None = None

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in self.__dict__.items() if v is not None}
