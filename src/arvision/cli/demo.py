"""``arvision demo``: the shipped MNIST models, offline, in well under a minute.

For every shipped generator (one per generation order) it writes a grid with one row per digit
class and prints the time and forward passes per image; then an in-painting grid (centre square
regenerated) and an out-painting grid (all but the centre regenerated) of ten real test digits, with
the share of tokens kept and the shipped classifier's accuracy on the completions; it also writes the
shipped tokenizers' reconstructions of real test digits.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from arvision.data import MnistDataset
from arvision.data.images import region_mask, save_image
from arvision.hub import list_models, load, load_pipeline
from arvision.metrics import ReconstructionMeter
from arvision.metrics.mnist_classifier import class_accuracy
from arvision.outputs import check_dir
from arvision.pipeline import Pipeline

DEMO_TOKENIZERS = ("mnist-vq", "mnist-fsq", "mnist-lfq", "mnist-bsq", "mnist-fq", "mnist-msvq", "mnist-kl", "mnist-flexscale",
                   "mnist-1d")
DEMO_GENERATORS = ("mnist-raster", "mnist-scale", "mnist-markov-scale", "mnist-neighbor", "mnist-masked", "mnist-mar",
                   "mnist-tokenbridge", "mnist-flexvar", "mnist-1d-raster", "mnist-ctf", "mnist-jpeg")
DEMO_EDITS = (("inpaint", "center"), ("outpaint", "border"))  # file suffix, preset region (cli/edit.py)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the shipped MNIST models (every order) and write PNG grids")
    p.add_argument("-o", "--out", default="arvision-demo", help="output folder (default: %(default)s)")
    p.add_argument("-n", type=int, default=8, help="samples per class (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise ValueError("-n must be >= 1")
    out = check_dir(args.out, "-o")
    shipped = list_models()
    t_start = time.perf_counter()
    print(f"generating {args.n} samples of each of the 10 digit classes with every shipped generation order")
    pipes: dict[str, Pipeline] = {}
    for name in (g for g in DEMO_GENERATORS if g in shipped):
        pipe = pipes[name] = load_pipeline(name)
        res = pipe.sample(list(range(pipe.num_classes)), args.n, seed=args.seed)
        # one row per class: reorder [class-major] samples into a (class, n) grid
        path = save_image(res.images * 2 - 1, out / f"{name}.png", nrow=args.n)
        s = res.stats
        print(f"  {name:<18} {pipe.generator.order:<13} {1000 * s.seconds_per_image:6.1f} ms/image  "
              f"{s.forward_passes_per_image:4.0f} forward passes/image  -> {path}")  # fmt: skip
    test = MnistDataset("test")
    if pipes and "mnist-classifier" in shipped:
        edit_demo(pipes, test, out, args.seed)
    x = test.images[:20]
    for name in (t for t in DEMO_TOKENIZERS if t in shipped):
        tok = load(name)
        with torch.no_grad():
            y = tok.decode(tok.encode(x))
        meter = ReconstructionMeter()
        meter.update(y, x)
        path = save_image(torch.cat([x, y]), out / f"{name}-reconstructions.png", nrow=10)
        print(f"  {name:<18} tokenizer       PSNR {meter.compute()['psnr']:.2f} dB on 20 test digits -> {path}")
    print(f"done in {time.perf_counter() - t_start:.1f} s (rows = classes 0-9; edits: masked inputs above; "
          "reconstructions: originals above)")  # fmt: skip
    return 0


def edit_demo(pipes: dict[str, Pipeline], test: MnistDataset, out: Path, seed: int) -> None:
    """In- and out-paint the first test digit of every class (as that class) with every generator."""
    idx = [int((test.labels == c).nonzero()[0, 0]) for c in range(10)]
    x, labels = test.images[idx].add(1).div(2), test.labels[idx]
    classifier = load("mnist-classifier")
    size = x.shape[-1]
    print(f"editing 10 test digits: in-painting regenerates the centre {size // 2}x{size // 2} pixels, "
          "out-painting everything else")  # fmt: skip
    for name, pipe in pipes.items():
        if pipe.tokenizer.layout.kind == "sequence":  # 1-D tokens have no place in the image: no region to regenerate
            continue
        parts = []
        for suffix, region in DEMO_EDITS:
            mask = region_mask(region, size)
            res = pipe.sample_edit(x, mask, classes=labels.tolist(), seed=seed)
            shown = x.masked_fill(mask, 0.5)  # the regenerated region in grey
            save_image(torch.cat([shown, res.images]) * 2 - 1, out / f"{name}-{suffix}.png", nrow=10)
            acc = class_accuracy(classifier, res.images, labels)
            parts.append(f"{suffix} {100 * res.known.float().mean().item():2.0f} % kept, {100 * acc:3.0f} % class acc")
        print(f"  {name:<18} {'   '.join(parts)} -> {out / name}-*paint.png")
