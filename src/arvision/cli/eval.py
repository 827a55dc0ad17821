"""``arvision eval generator|tokenizer``: sample-quality and reconstruction metrics, table + JSON."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from arvision.cli.generate import add_sampling_args, model_kwargs, sampling_kwargs
from arvision.hub import load_pipeline, load_tokenizer
from arvision.modeling import check_card_writable, record_metrics
from arvision.outputs import check_file, check_run_dir, write_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a generator (FID, IS, KID, precision/recall) or a tokenizer (PSNR, SSIM, rFID)")
    what = p.add_subparsers(dest="what", metavar="generator|tokenizer", required=True)

    g = what.add_parser("generator", help="generate N samples and score them against real data",
                        description="Samples are written in chunks to --out as they are made: rerun the same command to "
                                    "resume. Under `torchrun --nproc_per_node K -m arvision eval generator ...` the "
                                    "chunks are shared between processes; the result is the same as with one process.")  # fmt: skip
    g.add_argument("model", help="generator directory or shipped name (e.g. mnist-raster)")
    g.add_argument("-n", "--n", type=int, default=10_000, help="number of samples, class-balanced (default: %(default)s)")
    g.add_argument("--features", choices=["mnist", "inception"],
                   help="feature network: the shipped MNIST classifier or the FID Inception-v3 (default: mnist for 1-channel models, else inception)")  # fmt: skip
    g.add_argument("--inception-weights", metavar="FILE", help="pt_inception-2015-12-05-6726825d.pth or torch-fidelity's file "
                   "(default: $ARVISION_INCEPTION_WEIGHTS)")  # fmt: skip
    g.add_argument("--ref", help="real data: mnist:test, mnist:train, an .npz (arr_0 images or mu/sigma) or a folder "
                   "(default for --features mnist: mnist:test)")  # fmt: skip
    g.add_argument("--out", help="output directory for samples, chunks and report.json (default: eval-MODEL)")
    g.add_argument("--batch-size", type=int, default=100, help="samples per chunk (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="random seed: sample i has its own stream (default: %(default)s)")
    g.add_argument("--kid-subsets", type=int, default=100, help="KID: number of random subsets averaged (default: %(default)s)")
    g.add_argument("--kid-subset-size", type=int, default=1000, help="KID: samples per subset (default: %(default)s)")
    g.add_argument("--overwrite", action="store_true", help="replace the samples of another evaluation run (other settings or model weights) in --out")
    g.add_argument("--record", action="store_true", help="also write the metrics into the model's card (config.json 'info', "
                   "shown by `arvision info`); MODEL must be a writable model directory")  # fmt: skip
    add_sampling_args(g)
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda (default: %(default)s)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.set_defaults(func=run_generator)

    t = what.add_parser("tokenizer", help="reconstruct held-out images: PSNR, SSIM, codebook usage, perplexity, rFID")
    t.add_argument("model", help="tokenizer directory or shipped name (e.g. mnist-vq)")
    t.add_argument("--data", default="mnist", help="'mnist' (built in) or a folder of images (default: %(default)s)")
    t.add_argument("--split", default="test", help="MNIST split (default: %(default)s)")
    t.add_argument("--limit", type=int, help="evaluate on the first N images only")
    t.add_argument("--features", choices=["none", "mnist", "inception"], default="none", help="also compute rFID with this network")
    t.add_argument("--inception-weights", metavar="FILE", help="the FID Inception-v3 weights file (for --features inception)")
    t.add_argument("--batch-size", type=int, default=200, help="images per batch (default: %(default)s)")
    t.add_argument("--out", help="write the report as JSON to this file (with the per-code usage counts)")
    t.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda (default: %(default)s)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=run_tokenizer)


def print_report(title: str, report: dict) -> None:
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in report.items() if not isinstance(v, (dict, list))]
    width = max(len(k) for k, _ in rows)
    print(title)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


def run_generator(args: argparse.Namespace) -> int:
    from arvision.evaluate import evaluate_generator
    from arvision.metrics.features import get_feature_extractor, load_reference
    from arvision import distributed
    from arvision.runtime import check_precision

    out = Path(args.out or f"eval-{Path(args.model).name}")
    check_run_dir(out, "--out", overwrite=args.overwrite, marker="run.json", what="evaluation run")
    if args.record:
        check_card_writable(args.model)
    dist, device = distributed.init(args.device)
    pipe = load_pipeline(args.model, device=device)
    pipe.sampling_config(**sampling_kwargs(args))  # bad settings fail before the reference features are computed
    check_precision(args.precision, device)
    channels = pipe.tokenizer.config.in_channels
    kind = args.features or ("mnist" if channels == 1 else "inception")
    ref_spec = args.ref or ("mnist:test" if kind == "mnist" else None)
    if ref_spec is None:
        raise ValueError("--features inception needs --ref: a reference batch (.npz with arr_0 or mu/sigma) or a folder of real images")
    extractor = get_feature_extractor(kind, inception_weights=args.inception_weights, device=device)
    progress = not args.no_progress and dist.is_main
    reference = None
    if dist.is_main:
        reference = load_reference(ref_spec, extractor, channels=channels, image_size=pipe.tokenizer.config.image_size, progress=progress)
    with warnings.catch_warnings():  # an -n rounded up to whole classes: one line, not a warning with a source line
        warnings.showwarning = lambda message, *_: print(f"arvision eval: warning: {message}", file=sys.stderr)
        report = evaluate_generator(
            pipe, extractor, reference, n=args.n, out_dir=out, batch_size=args.batch_size, seed=args.seed,
            progress=not args.no_progress, dist=dist, model=str(args.model), kid_subsets=args.kid_subsets,
            kid_subset_size=args.kid_subset_size, overwrite=args.overwrite, **sampling_kwargs(args), **model_kwargs(args),
        )  # fmt: skip
    if report is not None:
        report["reference"] = ref_spec
        write_json(out / "report.json", report)
        print_report(f"{args.model}: {report['num_samples']} samples vs {ref_spec} ({kind} features)", report)
        print(f"wrote {out / 'report.json'} and {out / 'samples.npz'}")
        if args.record:
            path = record_metrics(args.model, report, eval_data=f"{report['num_samples']:,} samples vs {ref_spec}, {kind} features")
            print(f"recorded the metrics in {path} (see: arvision info {args.model})")
    return 0


def run_tokenizer(args: argparse.Namespace) -> int:
    from arvision.data import get_dataset
    from arvision.evaluate import evaluate_tokenizer
    from arvision.metrics.features import get_feature_extractor

    if args.out:
        check_file(args.out, "--out", kind="JSON report")
    tok = load_tokenizer(args.model, device=args.device)
    c = tok.config
    ds = get_dataset(args.data, split=args.split, image_size=c.image_size, channels=c.in_channels)
    features = None if args.features == "none" else get_feature_extractor(args.features, inception_weights=args.inception_weights,
                                                                           device=args.device)  # fmt: skip
    report = evaluate_tokenizer(tok, ds, batch_size=args.batch_size, limit=args.limit, progress=not args.no_progress, features=features,
                                code_counts=args.out is not None)  # per-code usage in the JSON report
    report = {"model": str(args.model), "data": args.data, **report}
    print_report(f"{args.model} on {args.data}", report)
    if args.out:
        write_json(args.out, report)
        print(f"wrote {args.out}")
    return 0
