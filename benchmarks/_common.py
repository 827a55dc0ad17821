"""Shared by the benchmark scripts: timing, and official-size pipelines with random weights."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


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


def scatter_plot(points: list[tuple[str, float, float]], path, title: str, xlabel: str) -> None:
    """PNG scatter of labelled (label, x, y) points, x on a log scale (PIL only, no matplotlib)."""
    import math
    from pathlib import Path

    from PIL import Image, ImageDraw

    W, H, m = 900, 560, 70
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    xs = [math.log10(x) for _, x, _ in points]
    x0, x1 = math.floor(min(xs) * 2) / 2, math.ceil(max(xs) * 2) / 2 + 0.25
    y1 = max(y for _, _, y in points) * 1.15

    def px(lx: float, y: float) -> tuple[float, float]:
        return m + (lx - x0) / (x1 - x0) * (W - 2 * m), H - m - y / y1 * (H - 2 * m)

    d.line([(m, m), (m, H - m), (W - m, H - m)], fill="black", width=2)
    for k in range(int(x0 * 2), int(x1 * 2) + 1):
        x, _ = px(k / 2, 0)
        d.line([(x, H - m), (x, H - m + 6)], fill="black")
        d.text((x - 12, H - m + 10), f"{10 ** (k / 2):.3g}", fill="black")
    for k in range(6):
        _, yy = px(x0, y1 * k / 5)
        d.line([(m - 6, yy), (m, yy)], fill="black")
        d.text((m - 45, yy - 6), f"{y1 * k / 5:.1f}", fill="black")
    d.text((W / 2 - 120, H - 30), xlabel, fill="black")
    d.text((10, 20), title, fill="black")
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
    for i, (label, x, y) in enumerate(points):
        cx, cy = px(math.log10(x), y)
        c = colors[i % len(colors)]
        d.ellipse([cx - 6, cy - 6, cx + 6, cy + 6], fill=c)
        d.text((cx + 9, cy - 7), label, fill=c)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
