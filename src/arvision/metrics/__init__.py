"""Metrics: sample quality (FID, IS, KID, precision/recall on Inception or MNIST features), tokenizer
reconstruction quality (PSNR, SSIM) and codebook statistics."""

from __future__ import annotations

from arvision.metrics.generative import (
    FeatureStats,
    fid_from_features,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    precision_recall,
)
from arvision.metrics.inception import FIDInceptionV3, load_inception
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
    "FIDInceptionV3",
    "FeatureStats",
    "fid_from_features",
    "frechet_distance",
    "inception_score",
    "kernel_inception_distance",
    "load_inception",
    "precision_recall",
    "PSNR_CAP_DB",
    "SSIM_MIN_SIZE",
    "CodebookStats",
    "ReconstructionMeter",
    "code_perplexity",
    "codebook_usage",
    "psnr",
    "ssim",
]
