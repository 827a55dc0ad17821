"""One fair comparison of the generation orders on MNIST: quality against sampling cost.

    python benchmarks/orders.py                                    # the shipped models
    python benchmarks/orders.py --train-steps 800 --runs runs/orders  # retrain every order at one budget

Every discrete order uses the same backbone size (depth 6, width 128, 4 heads), the same data, batch
64 and learning rate, and the tokenizer it allows (the grid orders ``mnist-vq``, the scale orders
``mnist-msvq``). The continuous rows use ``mnist-kl`` (same conv stack and 7x7x8 latent as
``mnist-vq``, a Gaussian bottleneck instead of a codebook): MAR (4 + 4 blocks of width 128 and a
diffusion head) and TokenBridge (``mnist-kl``'s latents quantized per channel after training,
the raster backbone of ``mnist-raster`` with a small autoregressive head over the channels). With ``--train-steps`` every order is trained from scratch for the same number of
steps in this process (reruns resume and skip finished runs); without it the shipped models are
scored and their own training budgets are printed. Each row draws ``--n`` class-balanced samples
with the model's default guidance, scored by the shipped MNIST classifier (MNIST-FID against the
test set, class accuracy). Seconds per image are timed separately on one batch of
``--time-batch`` images (generation + decoding, 2 CPU threads); training tokens/s is measured by
``training_throughput.py`` (20 steps at batch 64, each order in its own process). A PNG plot of MNIST-FID against
milliseconds per image is written to ``--plot``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from _common import scatter_plot

import arvision
from arvision.evaluate import balanced_labels, evaluate_generator
from arvision.metrics.features import MnistFeatures, load_reference
from arvision.train.generator import train_generator
from training_throughput import measure_in_subprocess

# (row label, shipped model = training preset, sampling overrides)
ROWS = [
    ("next-token (raster)", "mnist-raster", {}),
    ("next-scale", "mnist-scale", {}),
    ("markov-scale", "mnist-markov-scale", {}),
    ("markov-scale, 2 refine steps", "mnist-markov-scale", {"num_steps": 2}),
    ("next-neighbor", "mnist-neighbor", {}),
    ("masked, 4 steps", "mnist-masked", {"num_steps": 4}),
    ("masked, 8 steps", "mnist-masked", {"num_steps": 8}),
    ("masked, 16 steps (default)", "mnist-masked", {}),
    ("MAR, 8 x 25 steps", "mnist-mar", {"num_steps": 8, "diffusion_steps": 25}),  # decoding x denoising steps
    ("MAR, 16 x 50 (default)", "mnist-mar", {}),
    ("TokenBridge (channel-AR head, raster)", "mnist-tokenbridge", {}),
]


def seconds_per_image(pipe, overrides: dict, n: int, repeats: int = 3) -> float:
    labels = balanced_labels(n, pipe.num_classes).tolist()
    pipe.sample(labels[:10], 1, batch_size=10, **overrides)  # warm-up
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        pipe.sample(labels, 1, batch_size=n, **overrides)
        best = min(best, time.perf_counter() - t0)
    return best / n


def plot(rows: list[dict], path: Path) -> None:
    """Scatter of MNIST-FID against ms/image (log x), one labelled point per row."""
    points = [(r["label"], r["ms"], r["fid"]) for r in rows]
    scatter_plot(points, path, "MNIST-FID (lower is better) of each generation order, same backbone, MNIST",
                 "sampling time, ms per image (log scale)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="samples per row for MNIST-FID and class accuracy")
    ap.add_argument("--train-steps", type=int, help="retrain every order from scratch for this many steps")
    ap.add_argument("--runs", default="runs/orders", help="training runs and their samples (with --train-steps)")
    ap.add_argument("--samples", default="bench-quality", help="sample chunks of the shipped models (reruns resume)")
    ap.add_argument("--time-batch", type=int, default=100, help="batch size of the timing runs")
    ap.add_argument("--plot", default="bench-orders.png", help="PNG plot of MNIST-FID against ms/image")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true",
                    help="replace sample chunks in --samples that other weights or settings made (refused without it)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (1 when another job shares the machine)")
    ap.add_argument("--only", help="comma-separated models: score only their rows (e.g. mnist-mar,mnist-tokenbridge)")
    args = ap.parse_args()
    rows_to_run = [r for r in ROWS if not args.only or r[1] in args.only.split(",")]
    torch.set_num_threads(args.threads)
    runs = Path(args.runs)
    extractor = MnistFeatures()
    reference = load_reference("mnist:test", extractor, progress=False)
    models: dict[str, str | Path] = {}
    for _, name, _ in rows_to_run:
        if name in models:
            continue
        if args.train_steps:
            out = runs / f"{name}-{args.train_steps}"
            if not (out / "model.safetensors").is_file():
                resume = (out / "checkpoint.pt").is_file()
                print(f"training {name} for {args.train_steps} steps -> {out}")
                kw = {} if resume else {"preset": name, "steps": args.train_steps}
                train_generator(out, resume=resume, progress=True, **kw)
            models[name] = out
        else:
            models[name] = name
    # training speed measured here, one order at a time (the run's own figure depends on what else ran)
    train_speed = {name: measure_in_subprocess(name, 20)["rate"] for name in models}
    rows = []
    for label, name, overrides in rows_to_run:
        pipe = arvision.load(models[name])
        tag = name + "".join(f"-{k}{v}" for k, v in overrides.items())
        # shipped models: the same sample chunks as benchmarks/generator_quality.py (computed once, reused)
        out = runs / "eval" / f"{tag}-{args.train_steps}" if args.train_steps else Path(args.samples) / tag
        r = evaluate_generator(pipe, extractor, reference, n=args.n, out_dir=out, batch_size=500, seed=args.seed,
                               model=tag, progress=True, overwrite=args.overwrite, **overrides)  # fmt: skip
        tr = pipe.info.get("training", {})
        rows.append({
            "label": label, "model": name, "fid": r["fid"], "acc": r["class_accuracy"],
            "passes": pipe.sample([0], 1, **overrides).stats.forward_passes_per_image,
            "ms": 1000 * seconds_per_image(pipe, overrides, args.time_batch),
            "steps": tr.get("steps", "?"), "tok_s": train_speed[name],
            "params": pipe.generator.num_parameters() / 1e6, "tokenizer": tr.get("tokenizer", "?"),
        })  # fmt: skip
    budget = f"{args.train_steps} training steps each" if args.train_steps else "shipped models (training steps per row)"
    print(f"\n{args.n} samples per row, MNIST-FID vs MNIST test (classifier features), {budget}; "
          f"ms/image at batch {args.time_batch}, {torch.get_num_threads()} threads\n")  # fmt: skip
    head = ["order", "tokenizer", "MNIST-FID", "class acc", "passes/image", "ms/image", "train steps", "train tokens/s", "params"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print(f"| {r['label']} | {r['tokenizer']} | {r['fid']:.2f} | {100 * r['acc']:.2f} % | {r['passes']:g} | "
              f"{r['ms']:.2f} | {r['steps']} | {r['tok_s']:,.0f} | {r['params']:.2f} M |")  # fmt: skip
    plot(rows, Path(args.plot))
    print(f"\nplot -> {args.plot}")


if __name__ == "__main__":
    main()
