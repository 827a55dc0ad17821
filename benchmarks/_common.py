"""Shared by the benchmark scripts: timing, and official-size pipelines with random weights."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from arvision.plots import scatter_plot  # noqa: F401  (re-exported for the scripts)


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def mnist_fid(extractor, reference, images_01: torch.Tensor) -> float:
    """MNIST-FID of images in [0, 1] against a loaded reference (features of the shipped classifier)."""
    from arvision.metrics.features import to_uint8
    from arvision.metrics.generative import FeatureStats, frechet_distance

    feats, _ = extractor.extract(to_uint8(images_01), 500)
    return frechet_distance(FeatureStats.of(feats), reference.stats)


def official_size_pipeline(name: str):
    """A Pipeline of the official-size generator preset ``name`` (e.g. "var-d16", "gpt-b") with its
    tokenizer, 1000 classes and random weights (seed 0)."""
    from arvision.pipeline import Pipeline
    from arvision.presets import GENERATOR_PRESETS, TOKENIZER_PRESETS

    gp = GENERATOR_PRESETS[name]
    tp = TOKENIZER_PRESETS[gp.tokenizer]
    torch.manual_seed(0)
    tok = tp.model_class(tp.config).eval()
    return Pipeline(tok, gp.model_class(gp.build_config(tok, 1000)).eval())
