"""Editing: N MNIST test digits with the bottom half masked and the true class, every shipped order.

    python benchmarks/editing.py [--n 1000] [--models mnist-raster mnist-scale ...] [--seed 0] [--batch-size 64] [--json PATH]

The first ``--n`` MNIST test digits get rows 14..27 masked (True = regenerate) and are completed
by ``Pipeline.sample_edit`` with their true class, one seed for the whole set, each model's
default sampling settings. Per shipped generator:

- class accuracy of the completions (shipped MNIST classifier), checked against the floor >= 95 %;
- tokens kept: the share of tokens ``known`` (not touched by the mask on any grid / scale), and
  the share of those whose output token equals the input's own token
  (``tokenizer.encode(x * 2 - 1)``, computed here independently); it must be 100.0 %;
- pixel error of the kept region against the input, beside the tokenizer's own reconstruction
  (``tokenizer.reconstruct(x * 2 - 1)`` mapped to [0, 1]) against the input, and their ratio.
  MSE is on [0, 1] pixels, pooled over the images; PSNR = 10 log10(1 / MSE) of that pooled MSE;
- MNIST-FID of the completions, of the tokenizer reconstructions and of the real inputs, all
  against the same reference as ``orders.py`` / ``generator_quality.py`` (MNIST test, 10,000
  images, features of the shipped classifier). The inputs are the first N of that reference, so
  their figure is the floor a set of N real digits reaches (FID of N images carries a bias of
  its own, so only compare figures at the same N);
- wall seconds per image of the whole ``sample_edit`` call (encode + decode loop + decoding to
  pixels) and sequential generator forward passes per image.

"Kept region" here means the unmasked pixels, the top half (rows 0..13). That is not the same as
the pixels of kept tokens: on the 7x7 grid a token covers 4x4 pixels, so token row 3 (pixels
12..15) is touched by the mask and regenerated, and only rows 0..11 lie in kept cells of the
finest grid (column "rows 0..11"). On the scale orders the coarse scales follow
``TokenLayout.token_mask``: a coarse token is regenerated only when more than half of its cell
is masked (for this mask the 1x1 token and the cells straddling the border, e.g. the middle row
of the 3x3 scale, keep the input's token) while the finest scale regenerates every touched cell.
Coarse codes are bicubic-upsampled (and refined by a convolution) before they are summed, so
regenerated coarse cells just below the border still bleed into it. Besides, the tokenizer's
decoder is convolutional: its receptive field crosses the mask border, so kept tokens near the
border are decoded next to new neighbours. The kept-region error of an edit can therefore exceed the
reconstruction's, mostly near the border (per-row MSE of the top half is in ``--json``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import arvision
from _common import mnist_fid
from arvision.data import MnistDataset
from arvision.metrics.features import MnistFeatures, load_reference
from arvision.metrics.mnist_classifier import class_accuracy

MODELS = ("mnist-raster", "mnist-scale", "mnist-markov-scale", "mnist-neighbor", "mnist-masked")
ORDER = {"mnist-raster": "next-token (raster)", "mnist-scale": "next-scale", "mnist-markov-scale": "markov-scale",
         "mnist-neighbor": "next-neighbor", "mnist-masked": "masked"}  # fmt: skip
FLOOR = 0.95
MASK_FROM = 14  # rows MASK_FROM.. are masked (the bottom half of 28)
INTERIOR = 8  # rows 0..7: at least one 4-px token row away from the regenerated cells (rows 12..)


def mse(a: torch.Tensor, b: torch.Tensor, region: torch.Tensor) -> float:
    """Pooled mean squared error of a vs b over the pixels where ``region`` (broadcastable) is True."""
    region = region.expand_as(a)
    return float((a - b).pow(2)[region].mean())


def psnr(m: float) -> float:
    return 10 * math.log10(1 / m) if m > 0 else math.inf


def kept_cells(pipe, known: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(B, 1, H, W) bool: pixels whose token on the finest grid / last scale is kept."""
    layout = pipe.tokenizer.layout
    g = layout.grid if layout.kind == "grid" else (layout.scales[-1],) * 2
    last = known[:, -g[0] * g[1] :].float().view(-1, 1, *g)
    return F.interpolate(last, size=(H, W), mode="nearest") > 0.5


def run_model(name: str, x: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, args, classifier, extractor,
              reference) -> dict:  # fmt: skip
    pipe = arvision.load(name)
    H, W = x.shape[-2:]
    pipe.sample_edit(x[:2], mask, classes=labels[:2].tolist(), seed=args.seed, batch_size=2)  # warm-up
    t0 = time.perf_counter()
    out = pipe.sample_edit(x, mask, classes=labels.tolist(), seed=args.seed, batch_size=args.batch_size)
    wall = time.perf_counter() - t0
    with torch.no_grad():
        prior = pipe.tokenizer.encode(x * 2 - 1)
        recon = pipe.tokenizer.reconstruct(x * 2 - 1).add(1).div(2).clamp(0, 1)
    known = out.known
    same = (out.tokens == prior)[known]
    top = ~mask  # (1, 1, H, W): the kept region, rows 0..13
    cells = kept_cells(pipe, known, H, W)  # (B, 1, H, W): pixels of kept finest-grid tokens
    e_top, r_top = mse(out.images, x, top), mse(recon, x, top)
    e_cell, r_cell = mse(out.images, x, cells), mse(recon, x, cells)
    rows_edit = (out.images - x).pow(2).mean((0, 1, 3))[:MASK_FROM].tolist()
    rows_recon = (recon - x).pow(2).mean((0, 1, 3))[:MASK_FROM].tolist()
    interior = sum(rows_edit[:INTERIOR]) / sum(rows_recon[:INTERIOR])  # one token row (4 px) away from regenerated cells
    return {
        "order": ORDER.get(name, name), "model": name, "tokenizer": pipe.info.get("training", {}).get("tokenizer", "?"),
        "sampling": pipe.defaults.to_dict(),
        "tokens_kept": float(known.float().mean()), "kept_equal_input": float(same.float().mean()) if len(same) else float("nan"),
        "class_accuracy": class_accuracy(classifier, out.images, labels),
        "class_accuracy_recon": class_accuracy(classifier, recon, labels),
        "mse_top_edit": e_top, "mse_top_recon": r_top, "mse_top_ratio": e_top / r_top,
        "psnr_top_edit": psnr(e_top), "psnr_top_recon": psnr(r_top),
        "mse_cells_edit": e_cell, "mse_cells_recon": r_cell, "mse_cells_ratio": e_cell / r_cell,
        "kept_cell_rows": int(cells[0, 0, :, 0].sum()), "mse_interior_ratio": interior,
        "mse_per_row_edit": rows_edit, "mse_per_row_recon": rows_recon,
        "fid_edit": mnist_fid(extractor, reference, out.images), "fid_recon": mnist_fid(extractor, reference, recon),
        "seconds_per_image": wall / len(x), "forward_passes_per_image": out.stats.forward_passes_per_image,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="the first N MNIST test digits")
    ap.add_argument("--models", nargs="+", default=list(MODELS), help="shipped generators (or model directories)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--json", help="also write every figure (and per-row MSE of the top half) here")
    args = ap.parse_args()
    t_start = time.perf_counter()
    ds = MnistDataset("test", limit=args.n)
    x, labels = ds.images.add(1).div(2).clamp(0, 1), ds.labels
    H, W = x.shape[-2:]
    mask = torch.zeros(1, 1, H, W, dtype=torch.bool)
    mask[..., MASK_FROM:, :] = True
    classifier = arvision.load("mnist-classifier")
    extractor = MnistFeatures()
    reference = load_reference("mnist:test", extractor, progress=False)
    inputs = {"class_accuracy": class_accuracy(classifier, x, labels), "fid": mnist_fid(extractor, reference, x)}
    rows = [run_model(m, x, labels, mask, args, classifier, extractor, reference) for m in args.models]
    total = time.perf_counter() - t_start

    print(f"{len(x)} MNIST test digits (the first {len(x)}), rows {MASK_FROM}..{H - 1} masked, true class, seed {args.seed}, "
          f"batch {args.batch_size}, each model's default sampling; {torch.get_num_threads()} torch thread(s).")  # fmt: skip
    print(f"MNIST-FID: shipped classifier features (128-d) against {reference.name} ({len(reference.features):,} images), "
          f"as in orders.py / generator_quality.py. Real inputs: class acc {100 * inputs['class_accuracy']:.1f} %, "
          f"MNIST-FID {inputs['fid']:.2f}. Kept region = top half, rows 0..{MASK_FROM - 1}; "
          f"'rows 0..11' = pixels of kept finest-grid tokens; 'rows 0..7' = one token row away from any regenerated "
          f"cell. MSE on [0, 1] pixels; ratio = edit / reconstruction.\n")  # fmt: skip
    head = ["order", "model", "tokens kept", "kept = input", "class acc", f">= {100 * FLOOR:.0f} %", "acc recon",
            "MSE top: edit", "recon", "ratio", "MSE rows 0..11: edit", "recon", "ratio", "ratio rows 0..7",
            "MNIST-FID edit", "recon", "inputs", "s/image", "passes/image"]  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        ok = "PASS" if r["class_accuracy"] >= FLOOR else "FAIL"
        print(f"| {r['order']} | {r['model']} | {100 * r['tokens_kept']:.1f} % | {100 * r['kept_equal_input']:.1f} % | "
              f"{100 * r['class_accuracy']:.1f} % | {ok} | {100 * r['class_accuracy_recon']:.1f} % | "
              f"{r['mse_top_edit']:.5f} | {r['mse_top_recon']:.5f} | {r['mse_top_ratio']:.2f} | "
              f"{r['mse_cells_edit']:.5f} | {r['mse_cells_recon']:.5f} | {r['mse_cells_ratio']:.2f} | {r['mse_interior_ratio']:.2f} | "
              f"{r['fid_edit']:.2f} | {r['fid_recon']:.2f} | {inputs['fid']:.2f} | "
              f"{r['seconds_per_image']:.4f} | {r['forward_passes_per_image']:g} |")  # fmt: skip
    fails = [r["model"] for r in rows if r["class_accuracy"] < FLOOR]
    print(f"\nclass accuracy >= {100 * FLOOR:.0f} %: " + ("every order PASS" if not fails else "FAIL: " + ", ".join(fails)))
    print(f"total {total:.0f} s")
    if args.json:
        report = {"n": len(x), "mask_rows": [MASK_FROM, H - 1], "seed": args.seed, "batch_size": args.batch_size,
                  "threads": torch.get_num_threads(), "reference": reference.name, "inputs": inputs, "rows": rows,
                  "seconds_total": total, "date": datetime.datetime.now().isoformat(timespec="seconds")}  # fmt: skip
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"json -> {args.json}")


if __name__ == "__main__":
    main()
