"""Calibrate a generator's sampling defaults: sweep a grid, keep the best MNIST-FID above a class-accuracy floor.

``arvision tune MODEL --out DIR [--grid cfg=0.5,1,2 --grid temperature=0.9,1] [-n 2000] [--min-accuracy 0.97]``

Every grid point (the cartesian product of the given values, each a sampling setting of
:class:`~arvision.samplers.SamplingConfig`) is checked for the model's order before any work,
then sampled with ``n`` class-balanced images and scored like ``arvision eval generator`` against a
**held-out** reference (default ``mnist:train:10000``, the first 10,000 training images: the test split stays for
the final figures), one
resumable evaluation directory per point under ``DIR/points``. The chosen point is the lowest FID
among those whose class accuracy reaches the floor; if none does, the most accurate point is
reported and nothing is written. The tuned model (the same weights, the chosen settings as its
defaults, the table in its card under ``info["calibration"]``) goes to ``DIR/model``.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any, Sequence

from arvision.outputs import write_json, write_text
from arvision.samplers.config import SamplingConfig

# what is swept when no grid is given: the guidance strength around each schedule's "off" value
DEFAULT_CFG = {"linear": (0.0, 0.5, 1.0, 1.5, 2.0, 3.0), "constant": (1.0, 1.5, 2.0, 3.0, 4.0), "mar-linear": (1.0, 2.0, 3.0, 4.0, 5.0)}


def parse_grid(specs: Sequence[str]) -> dict[str, list[Any]]:
    """``["cfg=0.5,1", "cfg_schedule=linear"]`` -> {"cfg": [0.5, 1.0], "cfg_schedule": ["linear"]}, typed
    like the SamplingConfig fields; a clear error for an unknown name or an empty list."""
    fields = {f.name: f for f in dataclasses.fields(SamplingConfig)}
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip().replace("-", "_")
        if not sep:
            raise ValueError(f"grid entry {spec!r}: write NAME=V1,V2,... (e.g. cfg=0.5,1,2)")
        if name not in fields:
            raise ValueError(f"grid entry {spec!r}: {name!r} is not a sampling setting; use one of {sorted(fields)}")
        items = [v.strip() for v in values.split(",") if v.strip()]
        if not items:
            raise ValueError(f"grid entry {spec!r} has no values: an empty grid has nothing to choose from")
        grid[name] = [_typed(name, fields[name].default, v) for v in items]
    return grid


def _typed(name: str, default: Any, text: str) -> Any:
    if text.lower() == "none":
        return None
    try:
        if isinstance(default, bool):
            return text.lower() in ("1", "true", "yes")
        if isinstance(default, int) or name in ("num_steps", "draft_scales", "diffusion_steps", "num_tokens"):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if name in ("depth_schedule", "scales"):
            return tuple(int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"grid value {text!r} for {name} is not a number") from None
    return text


def grid_points(pipe, grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination, each checked against the model's order (a clear error before any sampling)."""
    if not grid:
        schedule = pipe.defaults.cfg_schedule
        grid = {"cfg": list(DEFAULT_CFG[schedule])}
    if any(not v for v in grid.values()):
        raise ValueError("the grid is empty: give at least one value per setting")
    points = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    for p in points:
        pipe.sampling_config(**p)
    return points


def tune(pipe, out_dir: str | Path, *, grid: dict[str, list[Any]] | None = None, n: int = 2000, min_accuracy: float = 0.97,
         reference: str = "mnist:train:10000", features: str = "mnist", batch_size: int = 500, seed: int = 0,
         progress: bool = True, model: str | None = None, inception_weights: str | None = None,
         precision: str = "fp32") -> dict[str, Any]:  # fmt: skip
    """Sweep ``grid`` (default: guidance strength) for ``pipe``; return the report (also DIR/calibration.json).
    ``precision``: how every point is sampled ("fp32" or "bf16", see ``Pipeline.sample``)."""
    from arvision.evaluate import evaluate_generator
    from arvision.metrics.features import get_feature_extractor, load_reference
    from arvision.runtime import check_precision

    if not 0 <= min_accuracy <= 1:
        raise ValueError(f"min_accuracy is a share of the samples in [0, 1], got {min_accuracy}")
    if pipe.num_classes < 2 and min_accuracy > 0:
        raise ValueError("this model has no class labels to check: class accuracy needs a class-conditional model; "
                         "pass --min-accuracy 0 to tune on FID alone")  # fmt: skip
    if features != "mnist" and min_accuracy > 0:
        raise ValueError("class accuracy is measured by the MNIST classifier (--features mnist); with other features "
                         "pass --min-accuracy 0")  # fmt: skip
    points = grid_points(pipe, grid or {})
    check_precision(precision, pipe.device)
    out = Path(out_dir)
    extractor = get_feature_extractor(features, inception_weights=inception_weights)
    c = pipe.tokenizer.config
    ref = load_reference(reference, extractor, channels=c.in_channels, image_size=c.image_size, progress=progress)
    floor = _floor(extractor, ref, reference, n)
    rows = []
    for i, point in enumerate(points):
        if progress:
            print(f"[{i + 1}/{len(points)}] {point}", flush=True)
        rep = evaluate_generator(pipe, extractor, ref, n=n, out_dir=out / "points" / f"{i:03d}", batch_size=batch_size,
                                 seed=seed, progress=progress, model=model, precision=precision, **point)  # fmt: skip
        rows.append({"settings": point, "fid": rep["fid"], "class_accuracy": rep.get("class_accuracy"),
                     "precision": rep.get("precision"), "recall": rep.get("recall")})  # fmt: skip
    ok = [r for r in rows if (r["class_accuracy"] or 0) >= min_accuracy or min_accuracy == 0]
    best = min(ok, key=lambda r: r["fid"]) if ok else max(rows, key=lambda r: r["class_accuracy"] or 0)
    report = {"model": model, "n": n, "reference": reference, "features": features, "min_accuracy": min_accuracy,
              "seed": seed, "rows": rows, "chosen": best["settings"] if ok else None, "best": best,
              "reached_floor": bool(ok), "real_data_floor": floor, "sampling_precision": precision}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "calibration.json", report)  # atomic, the usual file mode
    write_text(out / "calibration.md", table(report))
    if ok:
        save_tuned(pipe, best["settings"], report, out / "model")
    return report


def _floor(extractor, ref, reference: str, n: int) -> dict[str, float] | None:
    """The same metrics for ``n`` real images from the same split that are not in the reference
    (MNIST train images after the first K of an ``mnist:train:K`` reference): what a perfect
    generator would score at this sample size. (The MNIST test split is not used: its two halves
    come from different writers and sit measurably apart from the training digits.)"""
    from arvision.data import load_mnist
    from arvision.evaluate import score_features
    from arvision.metrics.features import mnist_reference

    mnist = mnist_reference(reference)
    if extractor.name != "mnist" or mnist is None or mnist[0] != "train" or mnist[1] is None:
        return None
    images, labels = load_mnist("train")
    k = mnist[1]
    if k + n > len(images):
        return None
    feats, logits = extractor.extract(images[k : k + n, None])
    sc = score_features(feats, logits, ref, kid_subsets=10)
    return {"fid": sc["fid"], "class_accuracy": float((logits.argmax(1) == labels[k : k + n]).double().mean()),
            "precision": sc["precision"], "recall": sc["recall"]}  # fmt: skip


def save_tuned(pipe, settings: dict[str, Any], report: dict[str, Any], directory: Path) -> Path:
    """The same weights with ``settings`` as the sampling defaults and the calibration in the card."""
    gen = pipe.generator
    old, old_info = gen.config, gen.info
    tuned = pipe.sampling_config(**settings)
    gen.config = dataclasses.replace(old, sampling=tuned)
    info = {**old_info, "calibration": {k: v for k, v in report.items() if k != "best"}}
    try:
        return pipe.save_pretrained(directory, info=info)
    finally:
        gen.config, gen.info = old, old_info


def table(report: dict[str, Any]) -> str:
    """The sweep as a markdown table (the chosen row in bold)."""
    lines = [f"Calibration of {report['model']}: {report['n']} samples per setting vs {report['reference']} "
             f"({report['features']} features), class-accuracy floor {100 * report['min_accuracy']:.1f} %", "",
             "| settings | MNIST-FID | class accuracy | precision | recall |", "|---|---|---|---|---|"]  # fmt: skip
    floor = report.get("real_data_floor")
    if floor:
        lines.append(f"| real data: other MNIST training images (the floor) | {floor['fid']:.2f} | {100 * floor['class_accuracy']:.2f} % | "
                     f"{floor['precision']:.3f} | {floor['recall']:.3f} |")  # fmt: skip
    for r in report["rows"]:
        acc = "-" if r["class_accuracy"] is None else f"{100 * r['class_accuracy']:.2f} %"
        name = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
        if r["settings"] == report["chosen"]:
            name = f"**{name}**"
        ratio = f" ({r['fid'] / floor['fid']:.1f}x the floor)" if floor else ""
        lines.append(f"| {name} | {r['fid']:.2f}{ratio} | {acc} | {r['precision']:.3f} | {r['recall']:.3f} |")
    if not report["reached_floor"]:
        lines += ["", f"No setting reached the floor; the most accurate was {report['best']['settings']} "
                      f"({100 * (report['best']['class_accuracy'] or 0):.2f} %). Nothing was written."]  # fmt: skip
    return "\n".join(lines) + "\n"
