"""``arvision bench tokenizers``: every tokenizer on the same images, one table (VTBench-style).

For each tokenizer: PSNR, SSIM, rFID (the shipped MNIST classifier's features for 28x28
grayscale tokenizers, Inception-v3 for RGB ones when its weights file is given), codebook usage
and perplexity, bits per image and encode / decode milliseconds per image. Each tokenizer reads
the images at its own size and channels (a folder of mixed sizes is resized and centre-cropped;
unreadable files are skipped and counted). Rows are written to ``OUT/tokenizers.json`` as they are
finished, so an interrupted run continues where it stopped; ``OUT/tokenizers.md`` holds the table
and ``OUT/tokenizers.png`` PSNR against bits per image.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

from arvision.data import get_dataset
from arvision.evaluate import evaluate_tokenizer
from arvision.hub import load_tokenizer
from arvision.metrics.features import FeatureExtractor, get_feature_extractor
from arvision.modeling import _REGISTRY, list_models, read_model_config, resolve, shipped_models_dir
from arvision.outputs import check_run_dir, write_json, write_text
from arvision.plots import scatter_plot
from arvision.tokenizers import Tokenizer

RESULTS = "tokenizers.json"
COLUMNS = (("tokenizer", "tokenizer"), ("tokens", "tokens"), ("bits_per_image", "bits/image"), ("psnr", "PSNR dB"),
           ("ssim", "SSIM"), ("rfid", "rFID"), ("codebook_usage", "usage %"), ("code_perplexity", "perplexity"),
           ("encode_ms", "encode ms/img"), ("decode_ms", "decode ms/img"))  # fmt: skip


def shipped_tokenizers() -> list[str]:
    """Names of the shipped tokenizers (models whose type is a :class:`Tokenizer`)."""
    names = []
    for name in list_models():
        cls = _REGISTRY.get(str(read_model_config(resolve(name)).get("model_type")))
        if cls is not None and issubclass(cls, Tokenizer):
            names.append(name)
    return names


def _label(name: str) -> str:
    """A shipped model's folder (e.g. a generator's tokenizer/) by its short name, anything else as given."""
    try:
        return str(Path(name).resolve().relative_to(shipped_models_dir().resolve()))
    except (ValueError, OSError):
        return name


def _features_for(tok: Tokenizer, kind: str, inception_weights: str | None, device: str,
                  cache: dict[str, FeatureExtractor]) -> FeatureExtractor | None:  # fmt: skip
    c = tok.config
    if kind == "auto":
        kind = "mnist" if (c.in_channels, c.image_size) == (1, 28) else "inception" if inception_weights and c.in_channels == 3 else "none"
    if kind == "none":
        return None
    if kind == "mnist" and (c.in_channels, c.image_size) != (1, 28):
        raise ValueError(f"MNIST features need 28x28 grayscale images, but this tokenizer takes {c.in_channels}-channel "
                         f"{c.image_size}x{c.image_size} images; use --features inception (RGB) or none")  # fmt: skip
    if kind not in cache:
        cache[kind] = get_feature_extractor(kind, inception_weights=inception_weights, device=device)
    return cache[kind]


def bench_tokenizers(
    models: Sequence[str] | None = None, *, data: str = "mnist", split: str = "test", limit: int | None = None,
    features: str = "auto", inception_weights: str | None = None, batch_size: int = 200, device: str = "cpu",
    out_dir: str | os.PathLike | None = None, overwrite: bool = False, progress: bool = True,
) -> list[dict[str, Any]]:  # fmt: skip
    """Measure ``models`` (default: every shipped tokenizer) on ``data``; return one row per model.

    With ``out_dir`` the rows, a Markdown table and a plot are written there, and rows already in
    ``out_dir`` from a run with the same settings are reused (the run resumes).
    """
    if features not in ("auto", "none", "mnist", "inception"):
        raise ValueError(f"features must be auto, none, mnist or inception, got {features!r}")
    names = [str(m) for m in models] if models else shipped_tokenizers()
    if not names:
        raise ValueError("no tokenizers to measure: name some (directories or shipped names)")
    settings = {"data": data, "split": split, "limit": limit, "features": features, "batch_size": batch_size}
    done: dict[str, dict] = {}
    out = Path(out_dir) if out_dir is not None else None
    resumable = out is not None and check_run_dir(out, "--out", overwrite=overwrite, marker=RESULTS,
                                                  own=("tokenizers.md", "tokenizers.png"), what="tokenizer benchmark")  # fmt: skip
    if resumable and not overwrite:
        previous = json.loads((out / RESULTS).read_text())
        if previous.get("settings") != settings:
            raise ValueError(f"{out} holds a benchmark with other settings ({previous.get('settings')}); "
                             "pass another --out or --overwrite")  # fmt: skip
        done = {r["tokenizer"]: r for r in previous.get("rows", [])}
    labels = {name: _label(name) for name in names}  # a shipped sub-folder by its short name (rows, resuming)
    toks = {name: load_tokenizer(name, device=device) for name in names if labels[name] not in done}  # every name checked up front
    extractors: dict[str, FeatureExtractor] = {}
    rows = []
    for name in names:
        if labels[name] in done:
            rows.append(done[labels[name]])
            continue
        tok = toks[name]
        c = tok.config
        ds = get_dataset(data, split=split, image_size=c.image_size, channels=c.in_channels)
        extractor = _features_for(tok, features, inception_weights, device, extractors)
        t0 = time.time()
        m = evaluate_tokenizer(tok, ds, batch_size=batch_size, limit=limit, progress=progress, features=extractor, timing=True)
        row = {"tokenizer": labels[name], "tokens": tok.num_tokens, "bits_per_image": tok.bits_per_image(),
               "rfid": next((v for k, v in m.items() if k.startswith("rfid_")), None),
               "rfid_features": extractor.name if extractor else None, "seconds": round(time.time() - t0, 1), **m}  # fmt: skip
        rows.append(row)
        if out is not None:
            write_json(out / RESULTS, {"settings": settings, "rows": rows})
        if progress:
            print(f"{name}: PSNR {row['psnr']:.2f} dB, usage {row.get('codebook_usage', float('nan')):.1f} %")
        del toks[name]
    if out is not None:
        write_json(out / RESULTS, {"settings": settings, "rows": rows})
        write_text(out / "tokenizers.md", table(rows) + "\n")
        plot(rows, out / "tokenizers.png", data)
    return rows


def plot(rows: Sequence[dict[str, Any]], path: Path, data: str) -> None:
    """PSNR against rFID (log scale) when every row has an rFID, else against bits per image."""
    if all(r.get("rfid") for r in rows):
        points, xlabel = [(r["tokenizer"], r["rfid"], r["psnr"]) for r in rows], f"rFID ({rows[0]['rfid_features']} features, log scale, lower is better)"
    else:
        points, xlabel = [(r["tokenizer"], r["bits_per_image"], r["psnr"]) for r in rows if r["bits_per_image"]], "bits per image (log scale)"
    if points:
        scatter_plot(points, path, f"PSNR (dB, higher is better) of each tokenizer on {data}", xlabel)


def _cell(key: str, v: Any) -> str:
    if v is None:
        return "continuous" if key == "bits_per_image" else "-"
    if isinstance(v, float):
        return f"{v:.0f}" if key == "bits_per_image" else f"{v:.3f}" if key in ("ssim", "encode_ms", "decode_ms") else f"{v:.2f}"
    return str(v)


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(k, r.get(k)) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)
