"""Do the shipped generators draw the digit they are asked for? Class accuracy by the MNIST classifier.

    python benchmarks/generator_quality.py [--n 100] [--seed 0]

For every shipped MNIST generator: ``n`` samples of each digit with the model's default sampling
settings (and without guidance), classified by the shipped ``mnist-classifier``; prints accuracy,
the worst class, time and forward passes per image. The real-data row is the classifier on the
MNIST test set (the ceiling).
"""

from __future__ import annotations

import argparse

import torch

import arvision
from arvision.data import MnistDataset
from arvision.metrics.mnist_classifier import class_accuracy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="samples per class")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    clf = arvision.load("mnist-classifier")
    test = MnistDataset("test")
    rows = [("MNIST test set", "-", "-", class_accuracy(clf, (test.images + 1) / 2, test.labels), "-", "-", "-")]
    for name in ("mnist-raster", "mnist-scale"):
        pipe = arvision.load(name)
        for label, opts in (("default", {}), ("no guidance", {"cfg": 1.0 if pipe.defaults.cfg_schedule == "constant" else 0.0})):
            out = pipe.sample(list(range(10)), args.n, seed=args.seed, batch_size=100, **opts)
            pred = clf.predict(out.images * 2 - 1)
            per_class = torch.stack([(pred[out.labels == c] == c).float().mean() for c in range(10)])
            worst = int(per_class.argmin())
            cfg = pipe.sampling_config(**opts)
            rows.append((name, label, f"{cfg.cfg} ({cfg.cfg_schedule})", (pred == out.labels).float().mean().item(),
                         f"{worst}: {100 * per_class[worst]:.0f}%", f"{1000 * out.stats.seconds_per_image:.1f}",
                         f"{out.stats.forward_passes_per_image:.0f}"))  # fmt: skip
    header = ["model", "sampling", "cfg", "class accuracy", "worst class", "ms/image", "passes/image"]
    print(" | ".join(f"{h:>15}" for h in header))
    print("-" * (18 * len(header)))
    for r in rows:
        print(" | ".join(f"{(f'{100 * r[3]:.1f}%' if i == 3 else str(c)):>15}" for i, c in enumerate(r)))


if __name__ == "__main__":
    main()
