"""Sample quality of every shipped MNIST generator: MNIST-FID, IS, KID, precision/recall, class accuracy.

    python benchmarks/generator_quality.py [--n 10000] [--batch-size 500] [--out bench-quality]

Each model draws ``n`` class-balanced samples with its default sampling settings (the same as
``arvision eval generator MODEL --n N``), scored with the shipped MNIST classifier's features
against the MNIST test set. The first row is the real-data floor: MNIST train (first ``n``) against
test; "acc no cfg" is the class accuracy of 100 samples per class without guidance. The last
columns say where the time goes: generation vs feature extraction vs the metric
maths (FID, KID, precision/recall).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import arvision
from arvision.data import load_mnist
from arvision.evaluate import evaluate_generator, score_features
from arvision.metrics.features import MnistFeatures, load_reference
from arvision.metrics.mnist_classifier import class_accuracy

MODELS = ("mnist-raster", "mnist-scale", "mnist-markov-scale", "mnist-neighbor", "mnist-masked", "mnist-flexvar")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench-quality", help="sample chunks go here (reruns resume)")
    args = ap.parse_args()
    extractor = MnistFeatures()
    reference = load_reference("mnist:test", extractor, progress=False)
    rows = []
    images, labels = load_mnist("train")
    t0 = time.perf_counter()
    feats, logits = extractor.extract(images[: args.n, None], 500)
    t1 = time.perf_counter()
    real = score_features(feats, logits, reference)
    t2 = time.perf_counter()
    acc = float((logits.argmax(1) == labels[: args.n]).double().mean())
    rows.append(("MNIST train (floor)", real, acc, float("nan"), float("nan"), t1 - t0, t2 - t1))
    classifier = arvision.load("mnist-classifier")
    for name in MODELS:
        pipe = arvision.load(name)
        out = Path(args.out) / name
        t0 = time.perf_counter()
        r = evaluate_generator(pipe, extractor, reference, n=args.n, out_dir=out, batch_size=args.batch_size, seed=args.seed, model=name)
        total = time.perf_counter() - t0
        gen = r.get("seconds_per_image", float("nan")) * args.n
        feat = r.get("feature_seconds_per_image", float("nan")) * args.n
        off = {"cfg": 1.0 if pipe.defaults.cfg_schedule == "constant" else 0.0}  # guidance off, 100 per class
        res = pipe.sample(list(range(pipe.num_classes)), 100, seed=args.seed, batch_size=args.batch_size, **off)
        acc_off = class_accuracy(classifier, res.images, res.labels)
        rows.append((name, r, r["class_accuracy"], acc_off, gen, feat, total - gen - feat))
    print(f"{args.n} samples per row, MNIST classifier features (128-d), reference: MNIST test (10,000)\n")
    cols = ["model", "MNIST-FID", "IS", "KID", "precision", "recall", "class acc", "acc no cfg", "gen s", "features s", "metrics s"]
    print(" | ".join(f"{c:>19}" if i == 0 else f"{c:>10}" for i, c in enumerate(cols)))
    for name, r, acc, acc_off, gen, feat, rest in rows:
        vals = [f"{r['fid']:.3f}", f"{r['is']:.3f}", f"{r['kid']:.3f}", f"{r['precision']:.3f}", f"{r['recall']:.3f}",
                f"{100 * acc:.2f}%", f"{100 * acc_off:.1f}%", f"{gen:.1f}", f"{feat:.1f}", f"{rest:.1f}"]  # fmt: skip
        print(" | ".join([f"{name:>19}"] + [f"{v:>10}" for v in vals]))


if __name__ == "__main__":
    main()
