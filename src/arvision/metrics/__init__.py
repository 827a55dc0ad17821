"""Metrics: tokenizer reconstruction quality (PSNR, SSIM) and codebook statistics."""

from __future__ import annotations

from arvision.metrics.reconstruction import (
    PSNR_CAP_DB,
    SSIM_MIN_SIZE,
    CodebookStats,
    ReconstructionMeter,
    code_perplexity,
    codebook_usage,
    psnr,
    ssim,
)

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
