"""``arvision bench tokenizers``: every tokenizer measured on the same images, as one table and plot."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark models side by side")
    what = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    t = what.add_parser(
        "tokenizers",
        help="PSNR, SSIM, rFID, codebook usage, bits per image and speed of tokenizers",
        description="Reconstruct the same images with every tokenizer and print one table: PSNR, SSIM, rFID (MNIST "
        "features for 28x28 grayscale, Inception-v3 for RGB with --inception-weights), codebook usage and perplexity, "
        "bits per image, encode/decode ms per image. OUT gets tokenizers.json (resumable), tokenizers.md and tokenizers.png.",
    )
    t.add_argument("models", nargs="*", help="tokenizer directories or shipped names (default: every shipped tokenizer)")
    t.add_argument("--data", default="mnist", help="'mnist' (built in) or a folder of images (default: %(default)s)")
    t.add_argument("--split", default="test", help="MNIST split (default: %(default)s)")
    t.add_argument("--limit", type=int, help="use the first N images only")
    t.add_argument("--features", choices=["auto", "none", "mnist", "inception"], default="auto",
                   help="rFID network: auto = MNIST features for 28x28 grayscale tokenizers, Inception for RGB ones when "
                        "--inception-weights is given, else no rFID (default: %(default)s)")
    t.add_argument("--inception-weights", metavar="FILE", help="the FID Inception-v3 weights file (rFID of RGB tokenizers)")
    t.add_argument("--batch-size", type=int, default=200, help="images per batch, also for the timings (default: %(default)s)")
    t.add_argument("--out", default="bench-tokenizers", help="output folder (default: %(default)s)")
    t.add_argument("--overwrite", action="store_true", help="replace a finished benchmark in --out instead of resuming it")
    t.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.set_defaults(func=run_tokenizers)


def run_tokenizers(args: argparse.Namespace) -> int:
    from arvision.benchmark import bench_tokenizers, table

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    rows = bench_tokenizers(
        args.models, data=args.data, split=args.split, limit=args.limit, features=args.features,
        inception_weights=args.inception_weights, batch_size=args.batch_size, device=args.device, out_dir=args.out,
        overwrite=args.overwrite, progress=not args.no_progress,
    )  # fmt: skip
    print(table(rows))
    print(f"wrote {args.out}/tokenizers.md, tokenizers.json and tokenizers.png")
    return 0
