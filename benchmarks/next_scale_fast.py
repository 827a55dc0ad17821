"""Fast next-scale decoding on MNIST: CoDe (a small refiner takes the later scales) and VARiant
(the later scales run a weight-shared subnet), against plain ``mnist-scale``.

    python benchmarks/next_scale_fast.py                        # shipped models, 10,000 samples per row
    python benchmarks/next_scale_fast.py --n 2000 --refiner runs/mnist-scale-refiner --variant runs/mnist-scale-variant

Rows: plain ``mnist-scale``; CoDe with ``mnist-scale`` drafting the first K scales and
``--refiner`` (``mnist-scale-refiner``, depth 2) the rest, for each K of ``--ks``;
``--variant`` (``mnist-scale-variant``, trained with its subnets) at full depth and on each depth
schedule of ``SCHEDULES`` (blocks per scale, scales 1,2,3,4,5,7); and one schedule on plain
``mnist-scale``, whose subnets were never trained, to show what the training buys. Every row uses
one guidance strength and temperature, ``--cfg`` / ``--temperature`` (default 0.75 and 1.15,
``mnist-scale``'s calibrated defaults; linear schedule), so that the rows differ only in how the
scales are decoded. (Until 2026-12-03 the table was measured at cfg 2, temperature 1: the defaults
when it was first made.)

Columns: sequential forward passes per image, split into the large model's and the small
model's (CoDe's refiner, or the subnet's passes); relative compute = sum over the passes of blocks
x positions computed, against plain decoding (a proxy for the linear layers' FLOPs; attention and
the tokenizer are not in it); ms/image at batch ``--time-batch`` (generation + decoding to
pixels, and tokens only), the median of ``--repeats`` runs taken in turn over the rows so that
they share the background load, on ``--threads`` torch threads; MNIST-FID and class accuracy of
``--n`` class-balanced samples (seeded per chunk of 500), scored by the shipped MNIST classifier
against the MNIST test set, as in ``orders.py``.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import subprocess
import time
from pathlib import Path

import torch

import arvision
from arvision.evaluate import balanced_labels
from arvision.metrics.features import MnistFeatures, load_reference, to_uint8
from arvision.metrics.generative import FeatureStats, frechet_distance
from arvision.pipeline import weights_digest

SCHEDULES = [(6, 6, 6, 6, 3, 3), (6, 6, 6, 3, 3, 3), (6, 6, 3, 3, 3, 3), (6, 6, 6, 2, 2, 2), (6, 6, 2, 2, 2, 2)]
UNTRAINED = (6, 6, 6, 3, 3, 3)
CHUNK = 500


def rows(args) -> list[dict]:
    out = [{"label": "plain", "model": "mnist-scale", "refiner": None, "sampling": {}}]
    out += [{"label": f"CoDe, K = {k}", "model": "mnist-scale", "refiner": args.refiner, "sampling": {"draft_scales": k}}
            for k in args.ks]  # fmt: skip
    out.append({"label": "VARiant model, full depth", "model": args.variant, "refiner": None, "sampling": {}})
    out += [{"label": f"VARiant {','.join(map(str, d))}", "model": args.variant, "refiner": None, "sampling": {"depth_schedule": d}}
            for d in SCHEDULES]  # fmt: skip
    out.append({"label": f"subnet {','.join(map(str, UNTRAINED))} on mnist-scale (not trained for it)", "model": "mnist-scale",
                "refiner": None, "sampling": {"depth_schedule": UNTRAINED}})  # fmt: skip
    return out


def cost(pipe, refiner, sampling: dict) -> tuple[int, int, float]:
    """(passes of the large model, passes of the small model / subnet, relative compute)."""
    g, ranges = pipe.generator, pipe.generator.scale_ranges
    D, L = g.config.transformer.depth, g.num_tokens
    K = sampling.get("draft_scales")
    if K is not None:
        d = refiner.generator.config.transformer.depth
        return K, len(ranges) - K, (D * ranges[K - 1][1] + d * L) / (D * L)  # the refiner's first pass covers scales < K too
    blocks = g.schedule_blocks(sampling.get("depth_schedule"))
    work = sum((b - a) * (D if blk is None else len(blk)) for (a, b), blk in zip(ranges, blocks))
    small = sum(blk is not None for blk in blocks)
    return len(ranges) - small, small, work / (D * L)


def samples(pipe, refiner, sampling: dict, n: int, seed: int, cache: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images, labels) of n class-balanced samples; cached in ``cache`` (reruns reuse them)."""
    if cache.is_file():
        saved = torch.load(cache, weights_only=True)
        return saved["images"], saved["labels"]
    labels = balanced_labels(n, pipe.num_classes)
    images = []
    for i in range(0, n, CHUNK):
        lab = labels[i : i + CHUNK].tolist()
        res = pipe.sample(lab, 1, seed=seed * 1_000_003 + i // CHUNK, batch_size=len(lab), refiner=refiner, **sampling)
        images.append(to_uint8(res.images))
    images = torch.cat(images)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"images": images, "labels": labels}, cache)
    return images, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="samples per row for MNIST-FID and class accuracy")
    ap.add_argument("--refiner", default="mnist-scale-refiner", help="CoDe's refiner (shipped name or directory)")
    ap.add_argument("--variant", default="mnist-scale-variant", help="the model trained with subnets (shipped name or directory)")
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 3, 4], help="CoDe's draft_scales values")
    ap.add_argument("--time-batch", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cfg", type=float, default=0.75, help="guidance of every row (linear schedule; mnist-scale's calibrated cfg)")
    ap.add_argument("--temperature", type=float, default=1.15,
                    help="of every row (pinned to mnist-scale's calibrated value, not read from the models, so that the table "
                         "does not move when they are re-calibrated)")
    ap.add_argument("--samples", default="bench-next-scale-fast",
                    help="cache of the generated samples (reruns reuse them; keyed by the models' weights and settings)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the report (markdown) here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    pipes = {name: arvision.load(name) for name in {"mnist-scale", args.variant}}
    refiner = arvision.load(args.refiner)
    table = rows(args)
    for r in table:
        r["pipe"], r["ref"] = pipes[r["model"]], (refiner if r["refiner"] else None)
        r["sampling"] = {"cfg": args.cfg, "temperature": args.temperature, **r["sampling"]}

    # timing: every row once per round, rounds repeated; the median per row
    labels = balanced_labels(args.time_batch, 10).tolist()
    times = {i: {"pixels": [], "tokens": []} for i in range(len(table))}
    for r in table:  # warm-up
        r["pipe"].sample(labels[:10], 1, batch_size=10, refiner=r["ref"], **r["sampling"])
    for _ in range(args.repeats):
        for i, r in enumerate(table):
            for kind in ("pixels", "tokens"):
                t0 = time.perf_counter()
                r["pipe"].sample(labels, 1, batch_size=args.time_batch, decode=kind == "pixels", refiner=r["ref"], **r["sampling"])
                times[i][kind].append(time.perf_counter() - t0)

    extractor = MnistFeatures()
    reference = load_reference("mnist:test", extractor, progress=False)
    for i, r in enumerate(table):
        r["ms"] = 1000 * statistics.median(times[i]["pixels"]) / args.time_batch
        r["ms_tokens"] = 1000 * statistics.median(times[i]["tokens"]) / args.time_batch
        r["large"], r["small"], r["compute"] = cost(r["pipe"], r["ref"], r["sampling"])
        tag = f"{Path(str(r['model'])).name}-{'-'.join(f'{k}{v}' for k, v in r['sampling'].items())}".replace(" ", "").replace(",", "_")
        if r["ref"] is not None:
            tag += f"-{Path(str(r['refiner'])).name}-{weights_digest(r['ref'].generator)[:12]}"
        tag += f"-{weights_digest(r['pipe'].generator)[:12]}"  # a retrained model under the same name gets new samples
        cache = Path(args.samples) / f"{tag}-n{args.n}-s{args.seed}.pt"
        images, got = samples(r["pipe"], r["ref"], r["sampling"], args.n, args.seed, cache)
        feats, logits = extractor.extract(images, 500)
        r["fid"] = frechet_distance(FeatureStats.of(feats), reference.stats)
        r["acc"] = float((logits.argmax(1) == got).double().mean())
        print(f"{r['label']}: FID {r['fid']:.2f}, acc {100 * r['acc']:.2f} %, {r['ms']:.2f} ms/image", flush=True)

    base = table[0]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [
        f"{args.n} samples per row at cfg {args.cfg:g} (linear), temperature {args.temperature:g}; MNIST-FID: shipped classifier features vs the MNIST test set (as in orders.py); "
        f"ms/image at batch {args.time_batch}, median of {args.repeats} interleaved runs, {torch.get_num_threads()} torch thread(s); "
        f"run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC at commit {commit} (+ working tree).",
        f"Refiner: {args.refiner}; VARiant model: {args.variant}. Passes: large model / small model (refiner or subnet). "
        "Compute: blocks x positions computed, relative to plain.",
        "",
        "| decoding | model | passes (large + small) | compute | ms/image | speed-up | ms/image, tokens only | speed-up, tokens | "
        "MNIST-FID | FID vs plain | class acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in table:
        model = Path(str(r["model"])).name + (f" + {Path(str(r['refiner'])).name}" if r["ref"] is not None else "")
        lines.append(f"| {r['label']} | {model} | {r['large']} + {r['small']} | {r['compute']:.2f} | {r['ms']:.2f} | "
                     f"{base['ms'] / r['ms']:.2f}x | {r['ms_tokens']:.2f} | {base['ms_tokens'] / r['ms_tokens']:.2f}x | "
                     f"{r['fid']:.2f} | {100 * (r['fid'] / base['fid'] - 1):+.0f} % | {100 * r['acc']:.2f} % |")  # fmt: skip
    lines += ["", f"total {time.perf_counter() - t_start:.0f} s"]
    report = "\n".join(lines)
    print("\n" + report)
    if args.out:
        head = "# Fast next-scale decoding: CoDe and VARiant\n\n```\npython benchmarks/next_scale_fast.py\n```\n\n"
        Path(args.out).write_text(head + report + "\n")


if __name__ == "__main__":
    main()
