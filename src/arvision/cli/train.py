"""``arvision train tokenizer``: train a tokenizer from a preset, with checkpoints and ``--resume``."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from arvision.presets import GENERATOR_PRESETS, TOKENIZER_PRESETS

OVERWRITE_HELP = ("start afresh in an --out that already holds a run, a model or other files (refused without it; "
                  "the old checkpoint is removed, other files are replaced as the new run writes them)")


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
    t.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    t.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    t.add_argument("--eval-limit", type=int, help="evaluate on at most this many held-out images")
    r = t.add_argument_group("losses for real images (see docs/tokenizers.md)")
    r.add_argument("--perceptual-weight", type=float, help="weight of the LPIPS perceptual loss (default: the preset's, 0)")
    r.add_argument("--perceptual-net", nargs="+", metavar="FILE",
                   help="LPIPS weights, local files: torchvision's vgg16 weights and LPIPS's vgg.pth lin layers, or one "
                        "file holding both (.pth read safely, or .safetensors); nothing is downloaded")
    r.add_argument("--disc-weight", type=float, help="weight of the PatchGAN adversarial loss, scaled by VQGAN's adaptive weight (default: 0)")
    r.add_argument("--disc-start", type=int, help="steps on the reconstruction loss alone before the adversarial loss starts")
    r.add_argument("--ema", type=float, help="EMA decay of the saved weights, e.g. 0.999 (default: the preset's, off)")
    r.add_argument("--mixed-precision", choices=["none", "bf16"],
                   help="bf16 autocast for the forward pass (CPUs with AVX512-BF16/AMX, GPUs; default: none)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=run_tokenizer)

    g = what.add_parser(
        "generator",
        help="train a class-conditional generator on a tokenizer's tokens",
        description="Train a generator (next-token or next-scale, by preset). The data is encoded once and cached in "
        "OUT/tokens.safetensors. Checkpoints go to OUT/checkpoint.pt (--resume continues exactly). Multi-process: "
        "torchrun --nproc_per_node N -m arvision train generator ... (gloo on CPU, nccl on GPU; DDP, or FSDP with --fsdp; "
        "multi-node: see docs/training.md).",
    )
    g.add_argument("--preset", choices=list(GENERATOR_PRESETS), help="order + backbone + training settings")
    g.add_argument("--tokenizer", help="tokenizer directory or shipped name (default: the preset's, e.g. mnist-vq)")
    g.add_argument("--data", default="mnist", help="'mnist' or a folder of images with class sub-folders (default: %(default)s)")
    g.add_argument("--steps", type=int, help="optimizer steps (default: the preset's)")
    g.add_argument("--batch-size", type=int, help="global batch size (split across processes)")
    g.add_argument("--lr", type=float, help="peak learning rate (default: the preset's)")
    g.add_argument("--ema", type=float, help="EMA decay of the saved weights, e.g. 0.999 (default: the preset's)")
    g.add_argument("--init", help="start from this generator's weights (shipped name or directory; default: the preset's)")
    g.add_argument("--eval-every", type=int, metavar="N",
                   help="training curve: every N steps and at the end, MNIST-FID and class accuracy of --eval-samples "
                        "samples (against the MNIST test set) go to OUT/curve.json, OUT/curve.png and the model card "
                        "(default: off)")
    g.add_argument("--eval-samples", type=int, metavar="N", help="samples per point of the training curve (default: 1000)")
    g.add_argument("--out", required=True, help="run directory: checkpoint, token cache, then the model")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    g.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    g.add_argument("--device", default="cpu", help="torch device (default: %(default)s; under torchrun: one per process)")
    g.add_argument("--fsdp", action="store_true",
                   help="shard weights, gradients and optimizer state across the torchrun processes (FSDP2) instead of "
                        "replicating them (DDP); checkpoints stay whole, so a resume may change the process count")
    g.add_argument("--mixed-precision", choices=["none", "bf16"], default="none",
                   help="with --fsdp: bf16 compute from fp32 weights; gradients reduced in fp32 (default: %(default)s)")
    g.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute each transformer block's activations in the backward pass: less memory, ~1/3 more compute")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.set_defaults(func=run_generator)


def run_tokenizer(args: argparse.Namespace) -> int:
    from arvision.train.tokenizer import train_tokenizer

    metrics = train_tokenizer(
        args.out, preset=args.preset, data=args.data, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        resume=args.resume, overwrite=args.overwrite, device=args.device, progress=not args.no_progress, eval_limit=args.eval_limit,
        command=_command(), perceptual_weight=args.perceptual_weight,
        perceptual_net=tuple(args.perceptual_net) if args.perceptual_net else None, disc_weight=args.disc_weight,
        disc_start=args.disc_start, ema=args.ema, mixed_precision=args.mixed_precision,
    )  # fmt: skip
    print(json.dumps(metrics, indent=2))
    print(f"saved to {args.out} (inspect with: arvision info {args.out})")
    return 0


def run_generator(args: argparse.Namespace) -> int:
    from arvision.train.generator import train_generator

    result = train_generator(
        args.out, preset=args.preset, tokenizer=args.tokenizer, data=args.data, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, ema=args.ema, init=args.init, resume=args.resume, overwrite=args.overwrite,
        device=args.device, fsdp=args.fsdp, mixed_precision=args.mixed_precision,
        activation_checkpointing=args.activation_checkpointing, progress=not args.no_progress, command=_command(),
        eval_every=args.eval_every, eval_samples=args.eval_samples,
    )  # fmt: skip
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        print(json.dumps(result, indent=2))
        print(f"saved to {args.out} (try: arvision generate {args.out} -o samples.png)")
    return 0


def _command() -> str | None:
    name = Path(sys.argv[0]).name
    if name == "arvision":
        return "arvision " + shlex.join(sys.argv[1:])
    if name == "__main__.py":
        return "python -m arvision " + shlex.join(sys.argv[1:])
    return None
