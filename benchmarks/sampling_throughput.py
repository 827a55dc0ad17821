"""Sampling speed of every order, at MNIST size (shipped models) and at the official sizes.

    python benchmarks/sampling_throughput.py              # shipped MNIST pipelines + official sizes
    python benchmarks/sampling_throughput.py --skip-official

Official sizes use random weights: VAR-d16 (depth 16, width 1024, 10 scales up to 16x16) with the
VAR VQVAE decoder (ch=160), batch 4, cfg 1.5, top-k 900, top-p 0.96; LlamaGen GPT-B (12 layers,
width 768, 256 tokens) with the VQ-16 decoder, batch 4, cfg 4, top-k 2000. Seconds include decoding
to pixels and are split into generator and tokenizer-decoder time.

For a comparison with the official code, run both on the same machine in one go:
``benchmarks/official_speed.py`` (figures taken on different machines are not comparable).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import official_size_pipeline

import arvision
from arvision.pipeline import Pipeline


def time_pipeline(pipe: Pipeline, classes: list[int], repeats: int, **sampling) -> tuple[float, float, float]:
    """(median seconds per batch, generator seconds, decoder seconds) over ``repeats`` runs after a warm-up."""
    totals, gens = [], []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        out = pipe.sample(classes, 1, seed=r, decode=False, **sampling)
        t1 = time.perf_counter()
        with torch.inference_mode():
            pipe.tokenizer.decode(out.tokens)
        t2 = time.perf_counter()
        if r > 0:
            totals.append(t2 - t0)
            gens.append(t1 - t0)
    total, gen = statistics.median(totals), statistics.median(gens)
    return total, gen, total - gen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-official", action="store_true", help="only the shipped MNIST pipelines")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), cpu\n")
    rows = []
    for name in ("mnist-raster", "mnist-scale", "mnist-masked", "mnist-neighbor", "mnist-markov-scale"):
        try:
            pipe = arvision.load(name)
        except ValueError:
            continue
        for batch in (10, 100):
            classes = [i % 10 for i in range(batch)]
            total, gen, dec = time_pipeline(pipe, classes, args.repeats)
            rows.append((name, batch, pipe.defaults.cfg, pipe.generator.num_steps, total, gen, dec, batch / total))
    if not args.skip_official:
        settings = {"var-d16": dict(cfg=1.5, top_k=900, top_p=0.96), "gpt-b": dict(cfg=4.0, top_k=2000)}
        for name, s in settings.items():
            pipe = official_size_pipeline(name)
            total, gen, dec = time_pipeline(pipe, [980, 437, 22, 562], max(1, args.repeats - 1), **s)
            rows.append((name + " (random)", 4, s["cfg"], pipe.generator.num_steps, total, gen, dec, 4 / total))
    header = ["model", "batch", "cfg", "steps", "s/batch", "generator s", "decoder s", "img/s"]
    print(" | ".join(f"{h:>16}" for h in header))
    print("-" * (19 * len(header)))
    for name, b, cfg, steps, total, gen, dec, ips in rows:
        cells = [name, b, cfg, steps, f"{total:.2f}", f"{gen:.2f}", f"{dec:.2f}", f"{ips:.1f}"]
        print(" | ".join(f"{str(c):>16}" for c in cells))


if __name__ == "__main__":
    main()
