"""``arvision train tokenizer``: train a tokenizer from a preset, with checkpoints and ``--resume``."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from arvision.presets import TOKENIZER_PRESETS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model")
    what = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    t = what.add_parser(
        "tokenizer",
        help="train an image tokenizer",
        description="Train a tokenizer. Checkpoints go to OUT/checkpoint.pt; a killed run continues with --resume. "
        "At the end OUT holds the model (config.json + model.safetensors) and metrics.json.",
    )
    t.add_argument("--preset", choices=list(TOKENIZER_PRESETS), help="model + training settings (required unless --resume)")
    t.add_argument("--data", default="mnist", help="'mnist' (built in) or a folder of images (default: %(default)s)")
    t.add_argument("--steps", type=int, help="optimizer steps (default: the preset's)")
    t.add_argument("--batch-size", type=int, help="images per step (default: the preset's)")
    t.add_argument("--lr", type=float, help="peak learning rate (default: the preset's)")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    t.add_argument("--eval-limit", type=int, help="evaluate on at most this many held-out images")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=run_tokenizer)


def run_tokenizer(args: argparse.Namespace) -> int:
    from arvision.train.tokenizer import train_tokenizer

    metrics = train_tokenizer(
        args.out, preset=args.preset, data=args.data, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        resume=args.resume, device=args.device, progress=not args.no_progress, eval_limit=args.eval_limit,
        command="arvision " + shlex.join(sys.argv[1:]) if sys.argv[0].endswith("arvision") else None,
    )  # fmt: skip
    print(json.dumps(metrics, indent=2))
    print(f"saved to {args.out} (inspect with: arvision info {args.out})")
    return 0
