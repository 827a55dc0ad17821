"""Tokenizer reconstruction metrics: PSNR, SSIM and codebook statistics.

Everything here is pure torch and runs on whatever device the inputs live on. Image metrics are
computed in float64 and returned per image, shape ``(B,)``; a dataset-level number is the mean of
the per-image values (that is what :class:`ReconstructionMeter` reports), *not* the metric of a
pooled MSE.

SSIM reproduces ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=R, channel_axis=...)`` -- the setting that matches
Wang et al. 2004 -- to floating-point precision; see :func:`ssim` for the details.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "PSNR_CAP_DB",
    "SSIM_MIN_SIZE",
    "CodebookStats",
    "ReconstructionMeter",
    "code_perplexity",
    "codebook_usage",
    "psnr",
    "ssim",
]

# SSIM constants (Wang et al. 2004, and skimage with gaussian_weights=True).
_SSIM_SIGMA = 1.5
_SSIM_TRUNCATE = 3.5  # skimage's choice: gives an 11-tap filter for sigma 1.5
_SSIM_RADIUS = int(_SSIM_TRUNCATE * _SSIM_SIGMA + 0.5)  # scipy.ndimage's radius rule -> 5
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03

SSIM_MIN_SIZE = 2 * _SSIM_RADIUS + 1
"""Smallest image height/width SSIM accepts: the Gaussian window size, 2 * 5 + 1 = 11."""

PSNR_CAP_DB = 100.0
"""PSNR value that :class:`ReconstructionMeter` substitutes for the +inf of identical images."""


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------


def _check_data_range(data_range: float) -> float:
    try:
        value = float(data_range)
    except (TypeError, ValueError):
        raise ValueError(f"data_range must be a positive number, got {data_range!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"data_range must be a positive finite number, got {data_range!r}")
    return value


def _check_image_pair(x_BCHW: Tensor, y_BCHW: Tensor) -> tuple[Tensor, Tensor]:
    """Validate two image batches and return them as float64."""
    for name, t in (("x_BCHW", x_BCHW), ("y_BCHW", y_BCHW)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 4:
            raise ValueError(
                f"{name} must have 4 dims (B, C, H, W), got {t.ndim} dims with shape "
                f"{tuple(t.shape)}; add a batch/channel dim with unsqueeze if needed"
            )
        if t.dtype == torch.bool or t.is_complex():
            raise ValueError(f"{name} must be a real numeric tensor, got dtype {t.dtype}")
    if x_BCHW.shape != y_BCHW.shape:
        raise ValueError(
            f"x_BCHW and y_BCHW must have the same shape, got {tuple(x_BCHW.shape)} "
            f"and {tuple(y_BCHW.shape)}"
        )
    if x_BCHW.device != y_BCHW.device:
        raise ValueError(
            f"x_BCHW and y_BCHW must be on the same device, got {x_BCHW.device} and {y_BCHW.device}"
        )
    _, c, h, w = x_BCHW.shape
    if c == 0 or h == 0 or w == 0:
        raise ValueError(f"images must be non-empty, got shape {tuple(x_BCHW.shape)}")
    return x_BCHW.to(torch.float64), y_BCHW.to(torch.float64)


# --------------------------------------------------------------------------------------------
# PSNR
# --------------------------------------------------------------------------------------------


def psnr(x_BCHW: Tensor, y_BCHW: Tensor, data_range: float = 1.0) -> Tensor:
    """Per-image peak signal-to-noise ratio in dB.

    ``PSNR = 10 * log10(data_range**2 / MSE)`` with the MSE taken over C, H and W of each image,
    computed in float64. Identical images (MSE 0) give ``+inf``. A dataset-level "mean PSNR" is
    the mean of these per-image values (callers average them; :class:`ReconstructionMeter` does
    this and caps the infinities at :data:`PSNR_CAP_DB`).

    Args:
        x_BCHW: images, shape (B, C, H, W), any real dtype.
        y_BCHW: reference images, same shape as ``x_BCHW``.
        data_range: max - min of the pixel value range (1.0 for [0, 1] images, 255 for uint8).

    Returns:
        float64 tensor of shape (B,) on the inputs' device.

    Raises:
        ValueError: on non-4D or mismatched inputs, or a non-positive ``data_range``.
    """
    r = _check_data_range(data_range)
    x, y = _check_image_pair(x_BCHW, y_BCHW)
    mse_B = (x - y).square().flatten(1).mean(dim=1)
    # r**2 / 0 = +inf -> log10(+inf) = +inf, so identical images give +inf without special-casing.
    return 10.0 * torch.log10(r * r / mse_B)


# --------------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------------


def _gaussian_kernel_K(device: torch.device) -> Tensor:
    """scipy.ndimage's 1-D Gaussian kernel for sigma 1.5, truncate 3.5: 11 taps, sums to 1."""
    t_K = torch.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1, dtype=torch.float64, device=device)
    w_K = torch.exp(-0.5 * t_K.square() / _SSIM_SIGMA**2)
    return w_K / w_K.sum()


def _blur_valid(x_NHW: Tensor, w_K: Tensor) -> Tensor:
    """Separable Gaussian filter keeping only fully-inside ('valid') positions.

    Returns shape (N, H - 2r, W - 2r) with r = len(w_K) // 2.
    """
    k = w_K.numel()
    x_N1HW = x_NHW.unsqueeze(1)
    x_N1HW = F.conv2d(x_N1HW, w_K.view(1, 1, 1, k))  # along W
    x_N1HW = F.conv2d(x_N1HW, w_K.view(1, 1, k, 1))  # along H
    return x_N1HW.squeeze(1)


def ssim(x_BCHW: Tensor, y_BCHW: Tensor, data_range: float = 1.0) -> Tensor:
    """Per-image structural similarity (Wang et al. 2004), averaged over channels.

    Gaussian-weighted SSIM with an 11x11 window (sigma 1.5), K1 = 0.01, K2 = 0.03 and population
    (not sample) covariances, computed per channel in float64, averaged over the SSIM map and then
    over channels. This equals::

        skimage.metrics.structural_similarity(
            a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
            data_range=data_range, channel_axis=-1)   # or channel_axis=None for grayscale

    to floating-point precision. Border handling: skimage filters with scipy.ndimage
    ``mode='reflect'`` (edge pixel repeated) and then discards ``(11 - 1) // 2 = 5`` pixels at
    every border before averaging. The pixels it keeps are exactly those whose 11x11 window lies
    fully inside the image, so no reflected value ever reaches the average; here the filter is a
    padding-free ('valid') separable convolution, which gives the same numbers with less work.

    Args:
        x_BCHW: images, shape (B, C, H, W) with H, W >= :data:`SSIM_MIN_SIZE` (11).
        y_BCHW: reference images, same shape.
        data_range: max - min of the pixel value range (sets C1 = (K1 R)^2, C2 = (K2 R)^2).

    Returns:
        float64 tensor of shape (B,) on the inputs' device; 1.0 for identical images.

    Raises:
        ValueError: on non-4D or mismatched inputs, a non-positive ``data_range``, or images
            smaller than 11x11 (the window size 2 * int(3.5 * 1.5 + 0.5) + 1 = 11 that skimage
            also requires for these settings).
    """
    r = _check_data_range(data_range)
    x, y = _check_image_pair(x_BCHW, y_BCHW)
    b, c, h, w = x.shape
    if h < SSIM_MIN_SIZE or w < SSIM_MIN_SIZE:
        raise ValueError(
            f"ssim needs images of at least {SSIM_MIN_SIZE}x{SSIM_MIN_SIZE} pixels (the Gaussian "
            f"window size for sigma {_SSIM_SIGMA}), got H x W = {h}x{w}"
        )
    w_K = _gaussian_kernel_K(x.device)
    x_NHW = x.reshape(b * c, h, w)
    y_NHW = y.reshape(b * c, h, w)
    # Filter all five moment maps in one pass: (5N, H, W) -> (5N, H', W').
    stacked = torch.cat([x_NHW, y_NHW, x_NHW * x_NHW, y_NHW * y_NHW, x_NHW * y_NHW])
    ux, uy, uxx, uyy, uxy = _blur_valid(stacked, w_K).chunk(5)
    vx = uxx - ux * ux
    vy = uyy - uy * uy
    vxy = uxy - ux * uy
    c1 = (_SSIM_K1 * r) ** 2
    c2 = (_SSIM_K2 * r) ** 2
    a1 = 2 * ux * uy + c1
    a2 = 2 * vxy + c2
    b1 = ux * ux + uy * uy + c1
    b2 = vx + vy + c2
    s_NHW = (a1 * a2) / (b1 * b2)
    return s_NHW.mean(dim=(1, 2)).view(b, c).mean(dim=1)


# --------------------------------------------------------------------------------------------
# codebook statistics
# --------------------------------------------------------------------------------------------


def _check_codebook_size(codebook_size: int) -> int:
    if isinstance(codebook_size, bool) or not isinstance(codebook_size, int) or codebook_size <= 0:
        raise ValueError(f"codebook_size must be a positive int, got {codebook_size!r}")
    return codebook_size


class CodebookStats:
    """Accumulates how often each code of a codebook is used, over any number of batches.

    Example::

        stats = CodebookStats(16384)
        for images in loader:
            stats.update(tokenizer.encode(images))  # int64 indices, any shape
        print(stats.as_dict())  # {"codebook_usage": 97.3, "code_perplexity": 12003.5}

    Counts are kept as an int64 (V,) tensor on the CPU.
    """

    def __init__(self, codebook_size: int) -> None:
        """Args: codebook_size: number of codes V (> 0); valid indices are 0..V-1."""
        self.codebook_size = _check_codebook_size(codebook_size)
        self._counts_V = torch.zeros(self.codebook_size, dtype=torch.int64)

    def reset(self) -> None:
        """Forget all counts."""
        self._counts_V.zero_()

    def update(self, indices: Tensor) -> None:
        """Add the codes in ``indices`` (integer tensor of any shape, values in [0, V)).

        Raises:
            ValueError: if ``indices`` is not an integer tensor or holds a value outside [0, V).
        """
        if not isinstance(indices, Tensor):
            raise ValueError(f"indices must be a torch.Tensor, got {type(indices).__name__}")
        if indices.dtype == torch.bool or indices.is_floating_point() or indices.is_complex():
            raise ValueError(f"indices must be an integer tensor, got dtype {indices.dtype}")
        flat = indices.detach().reshape(-1).to(torch.int64)
        if flat.numel() == 0:
            return
        lo, hi = int(flat.min()), int(flat.max())
        if lo < 0 or hi >= self.codebook_size:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"code index {bad} is out of range for codebook_size {self.codebook_size} "
                f"(valid indices are 0..{self.codebook_size - 1})"
            )
        self._counts_V += torch.bincount(flat, minlength=self.codebook_size).cpu()

    @property
    def counts(self) -> Tensor:
        """int64 tensor of shape (V,): how many times each code was seen (a copy)."""
        return self._counts_V.clone()

    @property
    def total(self) -> int:
        """Number of indices seen so far."""
        return int(self._counts_V.sum())

    @property
    def usage(self) -> float:
        """Fraction of the V codes seen at least once, in [0, 1] (0.0 before any update)."""
        return int((self._counts_V > 0).sum()) / self.codebook_size

    @property
    def perplexity(self) -> float:
        """``exp(H)`` of the empirical code distribution, H the entropy in nats.

        Codes with zero count contribute 0 to H. Ranges from 1 (one code used) to V (all codes used
        equally often); 0.0 before any update.
        """
        total = self.total
        if total == 0:
            return 0.0
        p = self._counts_V[self._counts_V > 0].to(torch.float64) / total
        entropy = -(p * p.log()).sum()
        return float(entropy.exp())

    def as_dict(self) -> dict[str, float]:
        """``{"codebook_usage": percent in [0, 100], "code_perplexity": exp(entropy)}``."""
        return {"codebook_usage": 100.0 * self.usage, "code_perplexity": self.perplexity}

    def __repr__(self) -> str:
        return (
            f"CodebookStats(codebook_size={self.codebook_size}, total={self.total}, "
            f"usage={self.usage:.4f}, perplexity={self.perplexity:.2f})"
        )


def codebook_usage(indices: Tensor, codebook_size: int) -> float:
    """Fraction (in [0, 1]) of the ``codebook_size`` codes that occur in ``indices`` (any shape)."""
    stats = CodebookStats(codebook_size)
    stats.update(indices)
    return stats.usage


def code_perplexity(indices: Tensor, codebook_size: int) -> float:
    """Perplexity ``exp(entropy)`` (natural log) of the code distribution in ``indices``."""
    stats = CodebookStats(codebook_size)
    stats.update(indices)
    return stats.perplexity


# --------------------------------------------------------------------------------------------
# reconstruction meter
# --------------------------------------------------------------------------------------------


class ReconstructionMeter:
    """Accumulates per-image PSNR and SSIM of reconstructions over many batches.

    Inputs are in [-1, 1] (the tokenizer convention). Each batch is mapped to [0, 1] with
    ``(x + 1) / 2`` and clamped to [0, 1] (as it would be when saved as an image, so decoder
    overshoot is not scored), then scored with ``data_range=1``. :meth:`compute` returns the mean
    over all images; an infinite PSNR (an exactly reproduced image) counts as
    :data:`PSNR_CAP_DB` = 100 dB so that one perfect image does not make the mean infinite.

    Example::

        meter = ReconstructionMeter()
        for x in loader:
            meter.update(tokenizer.reconstruct(x), x)
        meter.compute()  # {"psnr": 24.1, "ssim": 0.71, "num_images": 50000}
    """

    def __init__(self) -> None:
        """Start empty."""
        self.reset()

    def reset(self) -> None:
        """Forget all accumulated images."""
        self._psnr_sum = 0.0
        self._ssim_sum = 0.0
        self._num_images = 0

    @torch.no_grad()
    def update(self, x_BCHW: Tensor, y_BCHW: Tensor) -> None:
        """Add a batch: ``x_BCHW`` reconstructions and ``y_BCHW`` targets, both in [-1, 1].

        Raises:
            ValueError: on non-4D or mismatched inputs, or images smaller than 11x11.
        """
        x, y = _check_image_pair(x_BCHW, y_BCHW)
        x01 = ((x + 1) / 2).clamp(0, 1)
        y01 = ((y + 1) / 2).clamp(0, 1)
        psnr_B = psnr(x01, y01, data_range=1.0).clamp(max=PSNR_CAP_DB)
        ssim_B = ssim(x01, y01, data_range=1.0)
        self._psnr_sum += float(psnr_B.sum())
        self._ssim_sum += float(ssim_B.sum())
        self._num_images += x.shape[0]

    def compute(self) -> dict[str, float]:
        """``{"psnr": mean dB (inf capped at 100), "ssim": mean, "num_images": count}``.

        Means are NaN when no image has been added.
        """
        n = self._num_images
        if n == 0:
            return {"psnr": math.nan, "ssim": math.nan, "num_images": 0}
        return {"psnr": self._psnr_sum / n, "ssim": self._ssim_sum / n, "num_images": n}
