"""MNIST-FID of every shipped generator sampled in bf16 vs fp32 (same seeds, same settings).

    python benchmarks/precision_quality.py [--n 2000] [--models mnist-raster,mnist-scale] [--out bench-precision]
        [--write benchmarks/results/precision.md]

Each model is evaluated twice with ``arvision eval generator MODEL -n N --precision P`` (one
process per run, one run at a time, MNIST classifier features against the MNIST test set, the
model's default sampling settings, seed 0: image i gets the same random stream in both runs).
The table gives both FIDs, their relative difference (the target: within 2 %), class accuracy
and seconds per image. Runs resume from ``--out`` (the eval chunks), so an interrupted
comparison continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import arvision
from arvision.hub import list_models
from arvision.pipeline import Pipeline


def shipped_generators() -> list[str]:
    """Every shipped model that loads as a generator pipeline."""
    names = []
    for name in sorted(list_models()):
        try:
            if isinstance(arvision.load(name), Pipeline):
                names.append(name)
        except Exception:  # noqa: BLE001 - tokenizers and classifiers that do not load as pipelines
            continue
    return names


def evaluate(model: str, precision: str, n: int, out: Path, batch_size: int) -> dict:
    """report.json of one ``arvision eval generator`` run (run in its own process)."""
    run_dir = out / f"{model}-{precision}"
    cmd = [sys.executable, "-m", "arvision", "eval", "generator", model, "-n", str(n), "--batch-size", str(batch_size),
           "--precision", precision, "--out", str(run_dir), "--no-progress"]  # fmt: skip
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
    report = json.loads((run_dir / "report.json").read_text())
    report["wall_s"] = time.perf_counter() - t0
    return report


def table(rows: list[dict], n: int) -> str:
    lines = [f"MNIST-FID, {n} samples per run, seed 0, default sampling settings, MNIST test reference\n",
             "| model | FID fp32 | FID bf16 | difference | within 2 % | class acc fp32 | class acc bf16 | s/image fp32 | s/image bf16 |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        a, b = r["fp32"], r["bf16"]
        rel = (b["fid"] - a["fid"]) / a["fid"]
        sec = [f"{x['seconds_per_image'] * 1000:.1f} ms" if "seconds_per_image" in x else "-" for x in (a, b)]
        lines.append(f"| {r['model']} | {a['fid']:.3f} | {b['fid']:.3f} | {rel:+.2%} | {'yes' if abs(rel) <= 0.02 else '**no**'} | "
                     f"{a.get('class_accuracy', float('nan')):.4f} | {b.get('class_accuracy', float('nan')):.4f} | {sec[0]} | {sec[1]} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--models", help="comma-separated (default: every shipped generator)")
    ap.add_argument("--out", default="bench-precision", help="eval run directories (reruns resume)")
    ap.add_argument("--write", help="also write the table to this markdown file")
    args = ap.parse_args()
    models = args.models.split(",") if args.models else shipped_generators()
    out = Path(args.out)
    rows = []
    for model in models:
        row = {"model": model}
        for precision in ("fp32", "bf16"):
            row[precision] = evaluate(model, precision, args.n, out, args.batch_size)
            print(f"{model} {precision}: FID {row[precision]['fid']:.3f} ({row[precision]['wall_s']:.0f} s)", flush=True)
        rows.append(row)
        (out / "precision.json").write_text(json.dumps(rows, indent=2))
    text = table(rows, args.n)
    print(text)
    if args.write:
        Path(args.write).write_text(text)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
