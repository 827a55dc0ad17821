"""Where the time of an FID goes: feature extraction vs the metric maths, for 10k samples.

    python benchmarks/fid_timing.py [--n 10000] [--inception-weights FILE] [--inception-n N]

Samples are the shipped mnist-raster's (generated once into bench-fid/ and reused); the reference
is the MNIST test set. Rows: MNIST classifier features (128-d) and the FID Inception (2048-d,
299x299). Without ``--inception-weights`` the Inception runs on random weights: the cost is the same,
the FID value is meaningless. ``--inception-n`` extracts Inception features for fewer samples and
extrapolates the extraction time linearly to ``n`` (marked in the table).
"""

from __future__ import annotations

import argparse
import time

import torch

import arvision
from arvision.data import load_mnist
from arvision.evaluate import evaluate_generator
from arvision.metrics import FeatureStats, frechet_distance, kernel_inception_distance, precision_recall
from arvision.metrics.features import InceptionFeatures, MnistFeatures, load_images_npz
from arvision.metrics.inception import FIDInceptionV3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--inception-weights")
    ap.add_argument("--inception-n", type=int, help="extract Inception features for this many samples and extrapolate")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--out", default="bench-fid")
    args = ap.parse_args()
    torch.manual_seed(0)
    mnist = MnistFeatures()
    evaluate_generator(arvision.load("mnist-raster"), mnist, None, n=args.n, out_dir=args.out, batch_size=500, model="mnist-raster")
    fake = load_images_npz(f"{args.out}/samples.npz")
    real = load_mnist("test")[0][: args.n, None]
    if args.inception_weights:
        inception = InceptionFeatures(args.inception_weights)
    else:
        inception = InceptionFeatures.__new__(InceptionFeatures)
        inception.net = FIDInceptionV3()
    print(f"{args.n} samples vs {len(real)} MNIST test images, {torch.get_num_threads()} threads\n")
    print(f"{'features':>10} | {'extract s':>10} | {'ms/image':>9} | {'FID s':>7} | {'KID s':>7} | {'PR s':>7} | {'extraction share':>16} | {'FID':>8}")
    for name, ext, m in (("mnist", mnist, args.n), ("inception", inception, args.inception_n or args.n)):
        t0 = time.perf_counter()
        f_fake = ext.extract(fake[:m], args.batch_size, progress=True)[0]
        f_real = ext.extract(real[:m], args.batch_size, progress=True)[0]
        extract = (time.perf_counter() - t0) * args.n / m
        t1 = time.perf_counter()
        fid = frechet_distance(FeatureStats.of(f_fake), FeatureStats.of(f_real))
        t2 = time.perf_counter()
        kernel_inception_distance(f_fake, f_real)
        t3 = time.perf_counter()
        precision_recall(f_real, f_fake)
        t4 = time.perf_counter()
        share = extract / (extract + t2 - t1)
        mark = "*" if m != args.n else ""
        fid_text = "n/a" if name == "inception" and not args.inception_weights else f"{fid:.3f}"  # random weights
        print(f"{name:>10} | {extract:>9.1f}{mark:1} | {1000 * extract / (2 * args.n):>9.2f} | {t2 - t1:>7.2f} | {t3 - t2:>7.2f} | "
              f"{t4 - t3:>7.2f} | {100 * share:>15.1f}% | {fid_text:>8}")  # fmt: skip
    print("\nextract s: features of the samples and of the reference (2n images); * = extrapolated from --inception-n."
          "\nextraction share: of the FID's total (extraction + FID maths); KID and PR are optional extras.")  # fmt: skip


if __name__ == "__main__":
    main()
