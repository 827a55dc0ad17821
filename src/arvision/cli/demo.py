"""``arvision demo``: what the shipped models do, offline, in a few seconds."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from arvision.data import MnistDataset
from arvision.data.images import save_image
from arvision.hub import load
from arvision.metrics import ReconstructionMeter

DEMO_TOKENIZERS = ("mnist-vq", "mnist-msvq")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the shipped MNIST models on built-in data and write PNGs")
    p.add_argument("-o", "--out", default="arvision-demo", help="output folder (default: %(default)s)")
    p.add_argument("-n", type=int, default=4, help="digits per class (default: %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise ValueError("-n must be >= 1")
    out = Path(args.out)
    test = MnistDataset("test")
    # n test digits of every class, classes in order: one column per class in the grid.
    picks = [int(i) for c in range(10) for i in (test.labels == c).nonzero().flatten()[: args.n]]
    x = test.images[picks]
    order = torch.arange(len(picks)).view(10, args.n).t().flatten()  # row r = r-th digit of each class
    for name in DEMO_TOKENIZERS:
        tok = load(name)
        t0 = time.perf_counter()
        with torch.no_grad():
            tokens = tok.encode(x)
            y = tok.decode(tokens)
        dt = time.perf_counter() - t0
        meter = ReconstructionMeter()
        meter.update(y, x)
        m = meter.compute()
        grid = torch.cat([x[order], y[order]])
        path = save_image(grid, out / f"{name}-reconstructions.png", nrow=10)
        print(f"{name:<11} {tokens.shape[1]:>3} tokens/image  PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.3f}  "
              f"{1000 * dt / len(x):.2f} ms/image  -> {path}")  # fmt: skip
    print("top half: MNIST test digits; bottom half: their reconstructions (one column per class)")
    return 0
