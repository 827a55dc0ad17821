"""Where an order loses its sample quality: the first K steps taken from real digits, the rest generated.

    python benchmarks/real_prefix.py [--models mnist-scale,mnist-raster] [--n 10000] [--batch-size 500]
                                     [--out bench-real-prefix] [--md benchmarks/results/real_prefix.md]

For every model, the first ``--n`` MNIST *training* digits are encoded with the model's tokenizer;
the tokens of their first K decoding steps are kept (next-scale orders: the first K scales; grid
orders: the first K token rows; 1-D sequences: the first K tokens) and the model generates the rest
with the digit's own class (``Pipeline.sample_completion``, the model's default sampling settings,
seed 0). The completions are scored as every MNIST-FID in the README: features of the shipped MNIST
classifier against the MNIST test set, where the first 10,000 training digits themselves score the
real-data floor (1.99). K = 0 is plain sampling (with the training digits' class mix); K = all is
the tokenizer's reconstruction of those digits.

Read across K: the FID that is left once K steps are real is what the remaining steps cost. If it
falls to the reconstruction's level only when (nearly) every step is real, the last steps lose the
quality; if it falls early, the first (coarse) steps do, and the model's own coarse choices are what
the later steps cannot recover from (exposure bias: training always conditions on real coarse steps).

Each (model, K) row is saved to ``--out`` as it finishes, so an interrupted run resumes; rows of
other weights or settings are recomputed (the key holds the weights' digest).
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch

import arvision
from arvision.data import MnistDataset
from arvision.metrics.features import MnistFeatures, load_reference, to_uint8
from arvision.evaluate import score_features
from arvision.metrics.generative import FeatureStats, frechet_distance
from arvision.pipeline import weights_digest

MODELS = ("mnist-scale", "mnist-markov-scale", "mnist-raster")


def prefix_points(layout) -> list[tuple[str, int]]:
    """(what is kept, number of tokens kept) for K = 0 .. every step of the layout."""
    if layout.kind == "scales":
        sides, points = layout.scales, [("nothing", 0)]
        for k in range(1, len(sides) + 1):
            points.append((f"scales {'+'.join(f'{s}x{s}' for s in sides[:k])}", sum(s * s for s in sides[:k])))
        return points
    if layout.kind == "grid":
        rows, cols = layout.grid
        return [("nothing", 0)] + [(f"rows 0-{k - 1}" if k > 1 else "row 0", k * cols) for k in range(1, rows + 1)]
    L = layout.num_tokens
    return [("nothing", 0)] + [(f"tokens 0-{k - 1}", k) for k in sorted({1, L // 8, L // 4, L // 2, 3 * L // 4, L}) if k]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated shipped names or directories")
    ap.add_argument("--n", type=int, default=10_000, help="training digits completed per row")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench-real-prefix", help="finished rows (JSON), reused by reruns")
    ap.add_argument("--md", default=None, help="write the table here too (e.g. benchmarks/results/real_prefix.md)")
    args = ap.parse_args()

    t_all = time.perf_counter()
    extractor = MnistFeatures()
    reference = load_reference("mnist:test", extractor, progress=False)
    data = MnistDataset("train", limit=args.n)
    labels = torch.as_tensor(data.labels)
    real_feats, _ = extractor.extract(to_uint8(data.images.add(1).div(2)), 500)
    floor = frechet_distance(FeatureStats.of(real_feats), reference.stats)
    print(f"floor: the {args.n:,} training digits themselves, MNIST-FID {floor:.2f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models.split(","):
        pipe = arvision.load(name)
        digest = weights_digest(pipe.generator)[:12]
        tokens = torch.cat([pipe.tokenizer.encode(data.images[b : b + args.batch_size]) for b in range(0, args.n, args.batch_size)])
        L = tokens.shape[1]
        for what, k in prefix_points(pipe.tokenizer.layout):
            path = out / f"{Path(name).name}-{digest}-k{k}-n{args.n}-s{args.seed}.json"
            if path.is_file():
                row = json.loads(path.read_text())
            else:
                known = torch.zeros(L, dtype=torch.bool)
                known[:k] = True
                t0 = time.perf_counter()
                res = pipe.sample_completion(tokens, known, classes=labels.tolist(), seed=args.seed, batch_size=args.batch_size)
                feats, logits = extractor.extract(to_uint8(res.images), 500)  # the shipped classifier's features and logits
                sc = score_features(feats, logits, reference, kid_subsets=10)  # the scorer of eval generator (FID, precision/recall k=3)
                row = {"model": Path(name).name, "kept": what, "kept_tokens": k, "tokens": L, "fid": sc["fid"],
                       "class_accuracy": (logits.argmax(1) == labels).float().mean().item(),
                       "precision": sc["precision"], "recall": sc["recall"],
                       "seconds": round(time.perf_counter() - t0, 1), "sampling": pipe.sampling_config().to_dict()}  # fmt: skip
                path.write_text(json.dumps(row, indent=1))
            rows.append(row)
            print(f"{row['model']:<20} {row['kept']:<32} {row['kept_tokens']:>4}/{L}: MNIST-FID {row['fid']:6.2f}, "
                  f"class acc {100 * row['class_accuracy']:.2f} %, precision {row['precision']:.3f}, recall {row['recall']:.3f}")  # fmt: skip

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"The first K decoding steps of {args.n:,} MNIST training digits kept, the rest generated by each model at its default",
             f"settings (seed {args.seed}); MNIST-FID against the MNIST test set; those {args.n:,} real digits score {floor:.2f} (the floor). "
             f"Run {when}.", "",
             "| model | kept from the real digit | tokens kept | MNIST-FID | x floor | class acc | precision | recall |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| `{r['model']}` | {r['kept']} | {r['kept_tokens']} / {r['tokens']} | {r['fid']:.2f} | {r['fid'] / floor:.1f}x | "
                     f"{100 * r['class_accuracy']:.2f} % | {r['precision']:.3f} | {r['recall']:.3f} |")  # fmt: skip
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    if args.md:
        Path(args.md).write_text(table)
    print(f"total {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
