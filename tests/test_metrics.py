"""Tests for arvision.metrics: PSNR/SSIM against closed forms and skimage, codebook statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from arvision.metrics import (
    PSNR_CAP_DB,
    SSIM_MIN_SIZE,
    CodebookStats,
    ReconstructionMeter,
    code_perplexity,
    codebook_usage,
    psnr,
    ssim,
)

skmetrics = pytest.importorskip("skimage.metrics")


def _sk_ssim(a_CHW: np.ndarray, b_CHW: np.ndarray, data_range: float) -> float:
    """skimage's SSIM in the Wang et al. 2004 setting, on one (C, H, W) image pair."""
    kwargs = dict(
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=data_range
    )
    if a_CHW.shape[0] == 1:
        return float(skmetrics.structural_similarity(a_CHW[0], b_CHW[0], **kwargs))
    return float(skmetrics.structural_similarity(a_CHW, b_CHW, channel_axis=0, **kwargs))


def _structured_pair(b: int, c: int, h: int, w: int, gen: torch.Generator) -> tuple:
    """Smooth gradients + texture as the reference, a noisy clipped copy as the reconstruction."""
    yy = torch.linspace(0, 1, h, dtype=torch.float64).view(1, 1, h, 1)
    xx = torch.linspace(0, 1, w, dtype=torch.float64).view(1, 1, 1, w)
    phase = torch.rand(b, c, 1, 1, generator=gen, dtype=torch.float64)
    ref = 0.5 * yy + 0.3 * xx + 0.2 * torch.sin(6.0 * (xx + yy) + 6.0 * phase)
    ref = ref + 0.05 * torch.randn(b, c, h, w, generator=gen, dtype=torch.float64)
    rec = ref + 0.1 * torch.randn(b, c, h, w, generator=gen, dtype=torch.float64)
    return rec.clamp(0, 1), ref.clamp(0, 1)


# ------------------------------------------------------------------------------------------- PSNR


@pytest.mark.parametrize("d", [0.5, 0.1, 0.01])
def test_psnr_constant_offset_closed_form(d: float) -> None:
    gen = torch.Generator().manual_seed(0)
    y = 0.5 * torch.rand(3, 3, 8, 8, generator=gen, dtype=torch.float64)
    out = psnr(y + d, y, data_range=1.0)
    assert out.shape == (3,) and out.dtype == torch.float64
    expected = torch.full((3,), 10 * math.log10(1 / d**2), dtype=torch.float64)
    torch.testing.assert_close(out, expected)


def test_psnr_is_per_image_and_scales_with_data_range() -> None:
    y = torch.zeros(2, 1, 4, 4)
    x = torch.stack([torch.full((1, 4, 4), 0.1), torch.full((1, 4, 4), 0.2)])
    out = psnr(x, y)
    expected = torch.tensor([20.0, 10 * math.log10(25.0)], dtype=torch.float64)
    torch.testing.assert_close(out, expected)
    # Same relative error on a [0, 255] scale gives the same PSNR.
    torch.testing.assert_close(psnr(x * 255, y * 255, data_range=255.0), out)


def test_psnr_matches_skimage() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 16, 16, generator=gen, dtype=torch.float64)
    y = torch.rand(2, 3, 16, 16, generator=gen, dtype=torch.float64)
    ours = psnr(x, y)
    for i in range(2):
        ref = skmetrics.peak_signal_noise_ratio(y[i].numpy(), x[i].numpy(), data_range=1.0)
        assert ours[i].item() == pytest.approx(ref, abs=1e-9)


def test_psnr_identical_is_inf() -> None:
    x = torch.rand(2, 3, 8, 8)
    out = psnr(x, x.clone())
    assert torch.isinf(out).all() and (out > 0).all()


# ------------------------------------------------------------------------------------------- SSIM


def test_ssim_identical_is_one() -> None:
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(ssim(x, x.clone()), torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("hw", [(28, 28), (32, 48)])
@pytest.mark.parametrize("kind", ["random", "structured"])
def test_ssim_matches_skimage(channels: int, hw: tuple[int, int], kind: str) -> None:
    gen = torch.Generator().manual_seed(3)
    h, w = hw
    if kind == "random":
        x = torch.rand(2, channels, h, w, generator=gen, dtype=torch.float64)
        noise = torch.rand(2, channels, h, w, generator=gen, dtype=torch.float64)
        y = (x + 0.3 * noise).clamp(0, 1)
    else:
        x, y = _structured_pair(2, channels, h, w, gen)
    ours = ssim(x, y, data_range=1.0)
    assert ours.shape == (2,) and ours.dtype == torch.float64
    for i in range(2):
        assert ours[i].item() == pytest.approx(_sk_ssim(x[i].numpy(), y[i].numpy(), 1.0), abs=1e-5)


def test_ssim_matches_skimage_other_data_range_and_float32_input() -> None:
    gen = torch.Generator().manual_seed(4)
    x, y = _structured_pair(1, 3, 24, 20, gen)
    x, y = (2 * x - 1).float(), (2 * y - 1).float()  # [-1, 1] float32
    ours = ssim(x, y, data_range=2.0)
    ref = _sk_ssim(x[0].double().numpy(), y[0].double().numpy(), 2.0)
    assert ours.item() == pytest.approx(ref, abs=1e-5)


def test_ssim_minimum_size() -> None:
    assert SSIM_MIN_SIZE == 11
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(1, 1, 11, 11, generator=gen, dtype=torch.float64)
    y = torch.rand(1, 1, 11, 11, generator=gen, dtype=torch.float64)
    assert ssim(x, y).item() == pytest.approx(_sk_ssim(x[0].numpy(), y[0].numpy(), 1.0), abs=1e-5)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 1, 10, 32), torch.rand(1, 1, 10, 32))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 1, 32, 10), torch.rand(1, 1, 32, 10))


# --------------------------------------------------------------------------------- input checks


@pytest.mark.parametrize("fn", [psnr, ssim])
def test_image_metric_errors(fn) -> None:
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="same shape"):
        fn(x, torch.rand(1, 3, 16, 17))
    with pytest.raises(ValueError, match="4 dims"):
        fn(x[0], x[0])
    with pytest.raises(ValueError, match="data_range"):
        fn(x, x, data_range=0.0)
    with pytest.raises(ValueError, match="data_range"):
        fn(x, x, data_range=-1.0)


# ------------------------------------------------------------------------------- codebook stats


@pytest.mark.parametrize("k,v", [(1, 8), (5, 8), (8, 8), (3, 1024)])
def test_codebook_uniform_closed_form(k: int, v: int) -> None:
    idx = torch.arange(k).repeat(7).view(7, k)  # every one of k codes exactly 7 times
    stats = CodebookStats(v)
    stats.update(idx)
    assert stats.total == 7 * k
    assert stats.usage == pytest.approx(k / v)
    assert stats.perplexity == pytest.approx(k)
    assert stats.counts.dtype == torch.int64 and stats.counts.shape == (v,)
    assert stats.as_dict() == pytest.approx({"codebook_usage": 100 * k / v, "code_perplexity": k})
    assert codebook_usage(idx, v) == pytest.approx(k / v)
    assert code_perplexity(idx, v) == pytest.approx(k)


def test_codebook_nonuniform_perplexity() -> None:
    idx = torch.tensor([0, 0, 0, 2])  # p = (3/4, 0, 1/4, 0)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert code_perplexity(idx, 4) == pytest.approx(math.exp(entropy))
    assert codebook_usage(idx, 4) == pytest.approx(0.5)


def test_codebook_accumulation_equals_one_batch() -> None:
    gen = torch.Generator().manual_seed(6)
    batches = [torch.randint(0, 50, (4, 3, 5), generator=gen) for _ in range(3)]
    acc, whole = CodebookStats(64), CodebookStats(64)
    for b in batches:
        acc.update(b)
    whole.update(torch.cat(batches))
    assert torch.equal(acc.counts, whole.counts)
    assert acc.total == whole.total == 180
    assert acc.as_dict() == whole.as_dict()
    acc.reset()
    assert acc.total == 0 and acc.usage == 0.0 and acc.perplexity == 0.0


def test_codebook_errors() -> None:
    stats = CodebookStats(8)
    with pytest.raises(ValueError, match="out of range"):
        stats.update(torch.tensor([0, 8]))
    with pytest.raises(ValueError, match="out of range"):
        stats.update(torch.tensor([-1, 3]))
    with pytest.raises(ValueError, match="integer"):
        stats.update(torch.tensor([0.0, 1.0]))
    assert stats.total == 0  # failed updates leave the counts untouched
    with pytest.raises(ValueError, match="codebook_size"):
        CodebookStats(0)


# ------------------------------------------------------------------------- reconstruction meter


def test_meter_accumulation_matches_direct_computation() -> None:
    gen = torch.Generator().manual_seed(7)
    x01, y01 = _structured_pair(5, 3, 16, 16, gen)
    x, y = 2 * x01 - 1, 2 * y01 - 1  # [-1, 1]
    meter = ReconstructionMeter()
    meter.update(x[:2], y[:2])
    meter.update(x[2:], y[2:])
    out = meter.compute()
    assert out["num_images"] == 5
    assert out["psnr"] == pytest.approx(psnr(x01, y01).mean().item(), abs=1e-9)
    assert out["ssim"] == pytest.approx(ssim(x01, y01).mean().item(), abs=1e-9)


def test_meter_caps_infinite_psnr() -> None:
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    y = x.clone()
    y[1] = 0.0
    meter = ReconstructionMeter()
    meter.update(x, y)
    out = meter.compute()
    finite = psnr((x[1:] + 1) / 2, (y[1:] + 1) / 2).item()
    assert out["psnr"] == pytest.approx((PSNR_CAP_DB + finite) / 2)
    assert math.isfinite(out["psnr"])
    meter.reset()
    assert meter.compute()["num_images"] == 0
    with pytest.raises(ValueError, match="same shape"):
        meter.update(x, y[:1])
