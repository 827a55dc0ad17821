"""``arvision reconstruct DIR IMAGES... -o grid.png``: originals beside their reconstructions."""

from __future__ import annotations

import argparse
import time

import torch

from arvision.data.images import load_image, save_image
from arvision.hub import load_tokenizer
from arvision.metrics import ReconstructionMeter
from arvision.outputs import check_image_file


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconstruct", help="encode and decode images with a tokenizer; write originals beside reconstructions")
    p.add_argument("model", help="tokenizer directory or shipped name (e.g. mnist-vq)")
    p.add_argument("images", nargs="+", help="image files (png, jpg, webp, bmp); resized and centre-cropped to the model's size")
    p.add_argument("-o", "--output", default="reconstruction.png", help="output image grid: .png, .jpg, ... (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda (default: %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_image_file(args.output, "-o")
    tok = load_tokenizer(args.model, device=args.device)
    c = tok.config
    x = torch.stack([load_image(p, c.image_size, c.in_channels) for p in args.images]).to(args.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        tokens = tok.encode(x)
        y = tok.decode(tokens)
    dt = time.perf_counter() - t0
    meter = ReconstructionMeter()
    meter.update(y, x)
    m = meter.compute()
    # Rows of originals above rows of reconstructions, 8 per row.
    n = x.shape[0]
    per_row = min(n, 8)
    rows = []
    for i in range(0, n, per_row):
        pad = per_row - min(per_row, n - i)
        blank = torch.full((pad, *x.shape[1:]), -1.0)
        rows += [torch.cat([x[i : i + per_row].cpu(), blank]), torch.cat([y[i : i + per_row].cpu(), blank])]
    path = save_image(torch.cat(rows), args.output, nrow=per_row)
    print(f"{n} image(s), {tokens.shape[1]} tokens each, {1000 * dt / n:.1f} ms/image; "
          f"PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}")  # fmt: skip
    print(f"wrote {path} (top: originals, bottom: reconstructions)")
    return 0
