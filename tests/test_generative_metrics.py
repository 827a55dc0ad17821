"""FID, IS, KID and precision/recall against closed forms, scipy and naive loops."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from arvision.metrics import (
    FeatureStats,
    fid_from_features,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    precision_recall,
)


def _scipy_fid(x: np.ndarray, y: np.ndarray) -> float:
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_streaming_stats_match_numpy_in_any_batching() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(257, 12)) * rng.uniform(0.1, 5, size=12) + 1e3  # large offset: naive sums lose digits
    s = FeatureStats(12)
    for chunk in np.array_split(x, [1, 5, 100, 101]):
        s.update(chunk)
    np.testing.assert_allclose(s.mean.numpy(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(s.cov.numpy(), np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)
    a, b = FeatureStats.of(x[:100]), FeatureStats.of(x[100:])
    a.merge(b)
    np.testing.assert_allclose(a.cov.numpy(), np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)


def test_fid_matches_scipy_and_closed_form() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(400, 16)), rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16)) * 0.5 + 0.3
    assert fid_from_features(x, y) == pytest.approx(_scipy_fid(x, y), rel=1e-8)
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-8)
    # two Gaussians with diagonal covariances: FID = |dmu|^2 + sum (sqrt(a) - sqrt(b))^2
    d = 5
    a = FeatureStats.from_moments(np.zeros(d), np.diag([1.0, 2, 3, 4, 5]))
    b = FeatureStats.from_moments(np.ones(d), np.diag([4.0, 2, 1, 4, 9]))
    expected = d + sum((np.sqrt(p) - np.sqrt(q)) ** 2 for p, q in zip([1, 2, 3, 4, 5], [4, 2, 1, 4, 9]))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-12)


def test_fid_is_finite_for_singular_covariances() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(20, 64)), rng.normal(size=(20, 64)) + 0.1  # rank 19 < 64
    fid = fid_from_features(x, y)
    assert np.isfinite(fid) and fid > 0
    assert fid == pytest.approx(_scipy_fid(x, y), rel=1e-5)


def test_stats_round_trip_and_reference_moments(tmp_path) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 8))
    s = FeatureStats.of(x)
    s.save(tmp_path / "ref.npz")
    r = FeatureStats.load(tmp_path / "ref.npz")
    assert frechet_distance(s, r) == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(ValueError, match="dimension"):
        frechet_distance(s, FeatureStats.of(rng.normal(size=(50, 9))))
    with pytest.raises(ValueError, match="NaN"):
        FeatureStats.of(np.full((3, 8), np.nan))


def test_inception_score_closed_forms() -> None:
    # one-hot confident predictions spread uniformly over K classes: IS = K; identical predictions: IS = 1
    k = 10
    logits = torch.full((100, k), -1e4, dtype=torch.float64)
    logits[torch.arange(100), torch.arange(100) % k] = 0
    mean, std = inception_score(logits, splits=1)
    assert mean == pytest.approx(k, rel=1e-9) and std == 0
    assert inception_score(torch.zeros(50, k), splits=5)[0] == pytest.approx(1.0)
    # against a direct numpy transcription of the definition
    rng = np.random.default_rng(4)
    z = rng.normal(size=(90, 7)) * 3
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    scores = []
    for part in np.array_split(p, 3):
        py = part.mean(0)
        scores.append(np.exp((part * (np.log(part) - np.log(py))).sum(1).mean()))
    mean, std = inception_score(z, splits=3)
    assert mean == pytest.approx(np.mean(scores), rel=1e-10) and std == pytest.approx(np.std(scores), rel=1e-8)


def test_kid_matches_naive_unbiased_mmd() -> None:
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(40, 6)), rng.normal(size=(30, 6)) + 0.5
    mean, std = kernel_inception_distance(x, y, subsets=1, subset_size=1000)  # subset = whole sets, capped at 30
    assert std == 0

    def k(a, b):
        return (a @ b / 6 + 1) ** 3

    # with subset_size capped to 30, the x subset is a random 30 of 40: recompute with the same permutation
    g = torch.Generator().manual_seed(0)
    xs = x[torch.randperm(40, generator=g)[:30].numpy()]
    ys = y[torch.randperm(30, generator=g)[:30].numpy()]
    m = 30
    kxx = sum(k(xs[i], xs[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(ys[i], ys[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(xs[i], ys[j]) for i in range(m) for j in range(m)) / (m * m)
    assert mean == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-9)
    a, b = rng.normal(size=(600, 6)), rng.normal(size=(600, 6))
    same = kernel_inception_distance(a, b, subsets=10, subset_size=300)[0]
    shifted = kernel_inception_distance(a, b + 0.5, subsets=10, subset_size=300)[0]
    assert abs(same) < shifted / 20  # unbiased: ~0 for one distribution


def test_precision_recall_matches_naive_knn() -> None:
    rng = np.random.default_rng(6)
    real, fake = rng.normal(size=(60, 4)), rng.normal(size=(45, 4)) * 1.5 + 0.7

    def naive(support, queries, k=3):
        d = np.linalg.norm(support[:, None] - support[None], axis=-1)
        radii = np.sort(d, axis=1)[:, k]  # index 0 is the point itself
        dq = np.linalg.norm(queries[:, None] - support[None], axis=-1)
        return float((dq <= radii[None]).any(1).mean())

    p, r = precision_recall(real, fake, k=3)
    assert p == pytest.approx(naive(real, fake)) and r == pytest.approx(naive(fake, real))
    assert precision_recall(real, real) == (1.0, 1.0)
    with pytest.raises(ValueError, match="k must be"):
        precision_recall(real[:3], fake, k=3)
