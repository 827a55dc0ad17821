"""``arvision tune MODEL --out DIR``: calibrate the sampling defaults (see arvision.tune)."""

from __future__ import annotations

import argparse

from arvision.cli.generate import add_precision_arg
from arvision.hub import load_pipeline
from arvision.outputs import check_run_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="sweep sampling settings, keep the best MNIST-FID above a class-accuracy floor",
                       description="Every grid point is sampled and scored against a held-out reference (default the first "
                                   "10,000 MNIST training images; the test split stays for the final figures). The tuned model (same weights, "
                                   "chosen defaults, the table in its card) is written to OUT/model. Rerun to resume.")  # fmt: skip
    p.add_argument("model", help="generator directory or shipped name")
    p.add_argument("--out", required=True, help="directory for the sweep (resumable), calibration.md/json and the tuned model")
    p.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2",
                   help="a sampling setting and its values, repeatable (e.g. --grid cfg=0.5,1,2 --grid temperature=0.9,1; "
                        "scales/depth_schedule: sides joined by '/', e.g. scales=1/2/4/7); default: the guidance strength")  # fmt: skip
    p.add_argument("-n", "--n", type=int, default=2000, help="samples per grid point, class-balanced (default: %(default)s)")
    p.add_argument("--min-accuracy", type=float, default=0.97, help="class-accuracy floor in [0, 1] (default: %(default)s)")
    p.add_argument("--ref", default="mnist:train:10000", help="held-out reference (default: %(default)s)")
    p.add_argument("--features", choices=["mnist", "inception"], default="mnist", help="feature network for the FID")
    p.add_argument("--inception-weights", metavar="FILE", help="the FID Inception-v3 weights file (for --features inception)")
    p.add_argument("--batch-size", type=int, default=500, help="samples per chunk (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the samples (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="write into an --out that holds a model or other files")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda (default: %(default)s)")
    add_precision_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from arvision.tune import parse_grid, table, tune

    grid = parse_grid(args.grid)
    check_run_dir(args.out, "--out", overwrite=args.overwrite, marker="points", what="tuning run")  # "points": ours, resumed
    pipe = load_pipeline(args.model, device=args.device)
    report = tune(pipe, args.out, grid=grid, n=args.n, min_accuracy=args.min_accuracy, reference=args.ref,
                  features=args.features, batch_size=args.batch_size, seed=args.seed, progress=not args.no_progress,
                  model=str(args.model), inception_weights=args.inception_weights, precision=args.precision)  # fmt: skip
    print(table(report), end="")
    if report["reached_floor"]:
        print(f"tuned model (defaults {report['chosen']}) -> {args.out}/model")
        return 0
    print(f"no setting reached the class-accuracy floor {args.min_accuracy}; the best is reported above")
    return 1
