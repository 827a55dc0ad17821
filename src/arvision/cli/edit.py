"""``arvision edit DIR --image x.png --mask m.png --class 3 -o out.png``: in/out-painting.

Regenerates the masked pixels of one or more images with a generator pipeline
(:meth:`arvision.pipeline.Pipeline.sample_edit`); the rest keeps the input's own tokens. The mask
is a PNG (nonzero = regenerate) or a preset ``--region`` (``center``: in-painting, ``border``:
out-painting around the centre half, or one half of the image).
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor

from arvision.cli.generate import add_sampling_args, model_kwargs, sampling_kwargs
from arvision.data.images import REGIONS, load_image, load_mask, region_mask, save_image
from arvision.errors import DataError
from arvision.hub import load_pipeline
from arvision.outputs import check_image_file

GREY = 0.5  # masked pixels in --comparison, in [0, 1]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("edit", help="regenerate a masked region of images (in-painting, out-painting)")
    p.add_argument("model", help="generator directory or shipped name (e.g. mnist-raster, mnist-masked)")
    p.add_argument("--image", nargs="+", required=True, metavar="FILE",
                   help="image files (png, jpg, ...); resized and centre-cropped to the model's size")  # fmt: skip
    where = p.add_mutually_exclusive_group()
    where.add_argument("--mask", nargs="+", metavar="PNG",
                       help="mask image(s), nonzero/white = regenerate: one for all images or one per image")  # fmt: skip
    where.add_argument("--region", choices=REGIONS,
                       help="preset mask: a half of the image, the centre square of half the side (in-painting) "
                            "or everything but it (border: out-painting)")  # fmt: skip
    p.add_argument("--class", dest="classes", required=True, metavar="ID[,ID...]",
                   help="class to generate: one id for all images, or comma-separated, one per image")  # fmt: skip
    add_sampling_args(p)
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same edits (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="images edited at once (default: %(default)s)")
    p.add_argument("-o", "--output", default="edited.png",
                   help="PNG: the edited image, or a grid of them for several images (default: %(default)s)")  # fmt: skip
    p.add_argument("--comparison", metavar="PNG", help="also write a grid with rows input / masked input (grey) / output")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda (default: %(default)s)")
    p.set_defaults(func=run)


def parse_class_ids(text: str, n_images: int, num_classes: int) -> list[int]:
    """``--class``: one id for every image, or one per image; each within the model's classes."""
    try:
        ids = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise ValueError(f"--class must be an integer or comma-separated integers, got {text!r}") from None
    if not ids:
        raise ValueError("--class is empty: pass one class id, or one per image")
    if len(ids) == 1:
        ids *= n_images
    if len(ids) != n_images:
        raise ValueError(f"--class has {len(ids)} ids for {n_images} images: pass one id, or one per image")
    for c in ids:
        if not 0 <= c < num_classes:
            raise ValueError(f"--class {c} is out of range: this model knows classes 0..{num_classes - 1}")
    return ids


def read_masks(args: argparse.Namespace, n_images: int, size: int) -> Tensor:
    """(1 or n_images, 1, size, size) bool from ``--mask`` files or the ``--region`` preset."""
    if args.region:
        return region_mask(args.region, size)
    if not args.mask:
        raise ValueError("say what to regenerate: pass --mask FILE (white = regenerate) or --region "
                         f"{{{','.join(REGIONS)}}}")  # fmt: skip
    if len(args.mask) not in (1, n_images):
        raise ValueError(f"{len(args.mask)} masks for {n_images} images: pass one mask for all images, or one per image")
    try:
        return torch.cat([load_mask(p, size) for p in args.mask])
    except DataError as e:
        raise DataError(f"--mask: {e}") from e


def show_mask(images: Tensor, mask: Tensor) -> Tensor:
    """``images`` in [0, 1] with the masked pixels set to mid-grey."""
    return images.masked_fill(mask.to(images.device).expand(images.shape[0], images.shape[1], -1, -1), GREY)


def comparison_grid(rows: list[Tensor], path: str, per_row: int = 10) -> None:
    """Write rows of images (each (N, C, H, W) in [0, 1]) in blocks of ``per_row`` columns."""
    n = rows[0].shape[0]
    cols = min(n, per_row)
    tiles = []
    for i in range(0, n, cols):
        for r in rows:
            part = r[i : i + cols].cpu()
            tiles += [part, torch.zeros(cols - part.shape[0], *part.shape[1:])]
    save_image(torch.cat(tiles) * 2 - 1, path, nrow=cols)


def run(args: argparse.Namespace) -> int:
    check_image_file(args.output, "-o")
    if args.comparison:
        check_image_file(args.comparison, "--comparison")
    pipe = load_pipeline(args.model, device=args.device)
    c = pipe.tokenizer.config
    ids = parse_class_ids(args.classes, len(args.image), pipe.num_classes)
    mask = read_masks(args, len(args.image), c.image_size)
    x = torch.stack([load_image(p, c.image_size, c.in_channels) for p in args.image]).add(1).div(2)
    out = pipe.sample_edit(x, mask, classes=ids, seed=args.seed, batch_size=args.batch_size,
                           progress=True, **sampling_kwargs(args), **model_kwargs(args))  # fmt: skip
    n = x.shape[0]
    path = save_image(out.images * 2 - 1, args.output, nrow=min(n, 8), padding=0 if n == 1 else 2)
    if args.comparison:
        comparison_grid([x, show_mask(x, mask), out.images], args.comparison)
    s, kept = out.stats, out.known.float().mean().item()
    print(f"{n} image(s) in {s.seconds:.2f} s, {s.forward_passes_per_image:.0f} forward passes/image, "
          f"{100 * kept:.0f} % of tokens kept from the input -> {path}"
          + (f" (comparison: {args.comparison})" if args.comparison else ""))  # fmt: skip
    return 0
