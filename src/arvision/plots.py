"""Small PNG plots drawn with Pillow only (no matplotlib dependency), for benchmark tables."""

from __future__ import annotations

import math
import os
from pathlib import Path

from PIL import Image, ImageDraw

_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def _axes(d: ImageDraw.ImageDraw, W: int, H: int, m: int, x_ticks: list[tuple[float, str]], y_ticks: list[tuple[float, str]],
          title: str, xlabel: tuple[float, str]) -> None:
    """The frame of a W x H plot with margin m: left and bottom axes, ticks at the given pixel
    positions with their labels, the title top left and the x label at (its x position, text)."""
    d.line([(m, m), (m, H - m), (W - m, H - m)], fill="black", width=2)
    for x, label in x_ticks:
        d.line([(x, H - m), (x, H - m + 6)], fill="black")
        d.text((x - 12, H - m + 10), label, fill="black")
    for y, label in y_ticks:
        d.line([(m - 6, y), (m, y)], fill="black")
        d.text((m - 45, y - 6), label, fill="black")
    d.text((xlabel[0], H - 30), xlabel[1], fill="black")
    d.text((10, 20), title, fill="black")


def scatter_plot(points: list[tuple[str, float, float]], path: str | os.PathLike, title: str, xlabel: str) -> None:
    """PNG scatter of labelled (label, x, y) points, x on a log scale."""
    W, H, m = 900, 560, 70
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    xs = [math.log10(x) for _, x, _ in points]
    x0, x1 = math.floor(min(xs) * 2) / 2, math.ceil(max(xs) * 2) / 2 + 0.25
    y1 = max(y for _, _, y in points) * 1.15

    def px(lx: float, y: float) -> tuple[float, float]:
        return m + (lx - x0) / (x1 - x0) * (W - 2 * m), H - m - y / y1 * (H - 2 * m)

    x_ticks = [(px(k / 2, 0)[0], f"{10 ** (k / 2):.3g}") for k in range(int(x0 * 2), int(x1 * 2) + 1)]
    _axes(d, W, H, m, x_ticks, [(px(x0, y1 * k / 5)[1], f"{y1 * k / 5:.1f}") for k in range(6)], title, (W / 2 - 120, xlabel))
    taken: list[tuple[float, float, float, float]] = []  # label boxes drawn so far: a new label moves below them
    for i, (label, x, y) in enumerate(points):
        cx, cy = px(math.log10(x), y)
        c = _COLORS[i % len(_COLORS)]
        d.ellipse([cx - 6, cy - 6, cx + 6, cy + 6], fill=c)
        left, top, right, bottom = d.textbbox((cx + 9, cy - 7), label)
        while any(left < r and l < right and top < b and t < bottom for l, t, r, b in taken):
            top, bottom = top + 13, bottom + 13
        taken.append((left, top, right, bottom))
        d.text((left, top), label, fill=c)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def line_plot(series: dict[str, list[tuple[float, float]]], path: str | os.PathLike, title: str, xlabel: str) -> None:
    """PNG of one or more named lines of (x, y) points on linear axes (y from 0), with a legend."""
    W, H, m = 900, 560, 70
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    pts = [p for line in series.values() for p in line]
    x0, x1 = min(x for x, _ in pts), max(x for x, _ in pts)
    x1 = x1 if x1 > x0 else x0 + 1
    y1 = max(y for _, y in pts) * 1.15 or 1.0

    def px(x: float, y: float) -> tuple[float, float]:
        return m + (x - x0) / (x1 - x0) * (W - 2 * m), H - m - y / y1 * (H - 2 * m)

    xs = sorted({x for x, _ in pts})
    x_ticks = [(px(x, 0)[0], f"{x:.4g}") for x in (xs if len(xs) <= 12 else [x0 + (x1 - x0) * k / 5 for k in range(6)])]  # at the points when few
    _axes(d, W, H, m, x_ticks, [(px(x0, y1 * k / 5)[1], f"{y1 * k / 5:.3g}") for k in range(6)], title, (W / 2 - 60, xlabel))
    for i, (name, line) in enumerate(series.items()):
        c = _COLORS[i % len(_COLORS)]
        xy = [px(x, y) for x, y in sorted(line)]
        if len(xy) > 1:
            d.line(xy, fill=c, width=2)
        for cx, cy in xy:
            d.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=c)
        d.text((W - m - d.textlength(name), m + 16 * i), name, fill=c)  # right-aligned inside the frame
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
