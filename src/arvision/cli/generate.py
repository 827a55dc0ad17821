"""``arvision generate DIR --classes 0,1,2 -n 8 --cfg 2 --seed 0 -o grid.png``."""

from __future__ import annotations

import argparse
from pathlib import Path

from arvision.data.images import save_image
from arvision.hub import load_pipeline
from arvision.outputs import check_dir, check_image_file, check_run_dir
from arvision.stream import RUN_FILE, check_in_memory, generate_to_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate class-conditional samples with a generator pipeline")
    p.add_argument("model", help="generator directory or shipped name (e.g. mnist-raster, mnist-scale)")
    p.add_argument("--classes", help="comma-separated class ids (default: every class)")
    p.add_argument("-n", type=int, default=8, help="samples per class (default: %(default)s)")
    add_sampling_args(p)
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same images (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="images decoded at once (default: %(default)s)")
    p.add_argument("-o", "--output", help="image grid, one row per class; .png, .jpg, .webp, ... (default: samples.png "
                                          "unless --out-dir)")  # fmt: skip
    p.add_argument("--save-individual", metavar="DIR", help="also write every sample as DIR/CLASS_INDEX.png")
    p.add_argument("--out-dir", metavar="DIR", help="large runs: write the images chunk by chunk as DIR/shard-NNNNNN.npz "
                   "(arr_0 uint8 NHWC, arr_1 labels) with bounded memory; rerun the same command to resume")  # fmt: skip
    p.add_argument("--chunk-size", type=int, default=1000, help="--out-dir: images per shard (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="--out-dir: start afresh in a folder that holds another run or files")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1, mps (default: %(default)s)")
    p.set_defaults(func=run)


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """The sampling options every sampling command takes (defaults: the model's own)."""
    p.add_argument("--cfg", type=float, help="guidance strength (default: the model's; see --cfg-schedule)")
    p.add_argument("--cfg-schedule", choices=["constant", "linear", "mar-linear"],
                   help="constant (LlamaGen), linear ramp (VAR) or MAR's ramp with the share of decided tokens")
    p.add_argument("--cfg-interval", type=int, help="guide only the first steps (LlamaGen's cfg_interval; -1 = all)")
    p.add_argument("--temperature", type=float, help="softmax temperature of the token draws (default: the model's, usually 1)")
    p.add_argument("--top-k", type=int, help="0 = off, 1 = greedy")
    p.add_argument("--top-p", type=float, help="0 or 1 = off")
    p.add_argument("--steps", type=int, dest="num_steps",
                   help="decoding steps where the order lets you choose (masked, MAR: whole grid, default: the model's, else 8; "
                        "markov-scale: refinement steps per scale, default 1)")  # fmt: skip
    p.add_argument("--diffusion-steps", type=int, help="continuous tokens (MAR): denoising steps per token (default: the model's)")
    p.add_argument("--choice-temperature", type=float, help="Gumbel noise on masked-step confidences (default 4.5)")
    p.add_argument("--decoding", choices=["plain", "sjd", "speculative", "lantern"],
                   help="next-token order: speculative Jacobi decoding, a draft model (--draft) or LANTERN's relaxed acceptance")
    p.add_argument("--window", type=int, help="draft tokens verified per target pass (default 8)")
    p.add_argument("--jacobi-init", choices=["random", "spatial"], help="SJD: new draft positions start random or from the token above")
    p.add_argument("--draft", help="draft model (directory or shipped name, e.g. mnist-raster-draft) for --decoding speculative/lantern")
    p.add_argument("--lantern-k", type=int, help="LANTERN: latent neighbours pooled per token (default 8)")
    p.add_argument("--lantern-delta", type=float, help="LANTERN: total-variation budget in [0, 1] (default 0.1)")  # fmt: skip
    p.add_argument("--refiner", help="next-scale (CoDe): small refiner model (e.g. mnist-scale-refiner) for the scales from --draft-scales")
    p.add_argument("--draft-scales", type=int, help="next-scale (CoDe): scales drawn by the model before the refiner takes over")
    p.add_argument("--depth-schedule", type=parse_depths,
                   help="next-scale (VARiant): blocks per scale, comma-separated, e.g. 6,6,6,3,3,3 (mnist-scale-variant)")
    p.add_argument("--scales", type=parse_sides,
                   help="FlexVAR (flex-scale order): side of every step's token map, comma-separated, e.g. 1,2,4,7 "
                        "(4 steps); the last side sets the resolution (mnist-flexvar: 14 -> 56 px)")  # fmt: skip
    p.add_argument("--num-tokens", type=int,
                   help="1-D token sequences (next-token-1d order): generate only the first k tokens (k forward passes) "
                        "and decode that prefix (default: all)")  # fmt: skip
    p.add_argument("--constrained", action=argparse.BooleanOptionalAction, default=None,
                   help="JPEG bytes: grammar-constrained decoding, only bytes that keep the stream decodable are drawn "
                        "(default: the model's; --no-constrained samples freely)")  # fmt: skip
    add_precision_arg(p)
    add_search_args(p)


def add_precision_arg(p: argparse.ArgumentParser) -> None:
    """``--precision``: how sampling computes (an argument of the call, not a saved model setting)."""
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="fp32 (default: exact, the official code's arithmetic) or bf16 (autocast: faster on CPUs with "
                        "AVX512-BF16/AMX and on GPUs; tokens may differ where rounding tips a draw)")  # fmt: skip


def add_search_args(p: argparse.ArgumentParser) -> None:
    """Test-time search options (arvision.samplers.search)."""
    g = p.add_argument_group("test-time search", "spend --budget plain decodings per image, keep what --reward prefers")
    g.add_argument("--search", choices=["best-of-n", "tts-var"],
                   help="best-of-n (any order) or tts-var (next-scale orders: descending batch, clustering, resampling)")
    g.add_argument("--reward", help="mnist-classifier (default with --search), classifier:DIR, realism (vs MNIST train) or "
                                    "realism:REFERENCE (an image folder, .npz or mnist:SPLIT)")  # fmt: skip
    g.add_argument("--budget", type=int, help="compute per image in plain decodings (best-of-n: the number of candidates)")
    g.add_argument("--tts-batch-sizes", type=parse_depths, help="tts-var: candidates per image at each scale, e.g. 7,7,4,2,2,2")
    g.add_argument("--cluster-scales", type=parse_depths, help="tts-var: scales (0-based) after which k-means keeps diverse candidates")
    g.add_argument("--resample-scales", type=parse_depths, help="tts-var: scales after which candidates are resampled by potential")
    g.add_argument("--potential", choices=["value", "diff", "max", "sum"], help="tts-var: potential from the reward history (default value)")
    g.add_argument("--tts-lambda", type=float, help="tts-var: sharpness of the resampling draw exp(lambda * potential) (default 1)")


def sampling_kwargs(args: argparse.Namespace) -> dict:
    return {"cfg": args.cfg, "cfg_schedule": args.cfg_schedule, "cfg_interval": args.cfg_interval,
            "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "num_steps": args.num_steps,
            "choice_temperature": args.choice_temperature, "decoding": args.decoding, "window": args.window,
            "jacobi_init": args.jacobi_init, "draft_scales": args.draft_scales, "depth_schedule": args.depth_schedule,
            "lantern_k": args.lantern_k, "lantern_delta": args.lantern_delta, "diffusion_steps": args.diffusion_steps,
            "scales": args.scales, "num_tokens": args.num_tokens, "constrained": args.constrained}  # fmt: skip


def model_kwargs(args: argparse.Namespace) -> dict:
    """What a sampling command passes beside the settings: a draft model, a CoDe refiner, a search, the precision."""
    return {**{k: getattr(args, k) for k in ("draft", "refiner") if getattr(args, k)}, **search_kwargs(args),
            "precision": getattr(args, "precision", None) or "fp32"}  # fmt: skip


def search_kwargs(args: argparse.Namespace) -> dict:
    """``search``/``reward``/``budget`` for ``Pipeline.sample`` from the search options (none without --search)."""
    from arvision.samplers.search import TTSVAR

    options = {"batch_sizes": "tts_batch_sizes", "cluster_scales": "cluster_scales", "resample_scales": "resample_scales",
               "potential": "potential", "lam": "tts_lambda"}  # TTSVAR field -> option
    tts = {k: getattr(args, o) for k, o in options.items() if getattr(args, o) is not None}
    if args.search is None:
        if tts or args.reward or args.budget is not None:
            raise ValueError("--reward, --budget and the tts-var options need --search best-of-n or --search tts-var")
        return {}
    if tts and args.search != "tts-var":
        raise ValueError(f"--{options[next(iter(tts))].replace('_', '-')} is a tts-var option; --search {args.search} does not use it")
    search = TTSVAR(**tts) if args.search == "tts-var" else args.search
    return {"search": search, "reward": args.reward or "mnist-classifier", "budget": args.budget}


def _parse_ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None


def parse_depths(text: str) -> tuple[int, ...]:
    return _parse_ints(text, "block counts such as 6,6,6,3,3,3")


def parse_sides(text: str) -> tuple[int, ...]:
    return _parse_ints(text, "sides such as 1,2,4,7")


def parse_classes(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise ValueError(f"--classes must be comma-separated integers, got {text!r}") from None


def check_outputs(args: argparse.Namespace) -> None:
    """Every output location, before the model is loaded."""
    if args.out_dir is not None:
        if args.output is not None:
            raise ValueError("-o writes one grid held in memory; with --out-dir the images go to DIR's shards "
                             "(add --save-individual DIR2 for PNGs): drop one of the two")  # fmt: skip
        check_run_dir(args.out_dir, "--out-dir", overwrite=args.overwrite, marker=RUN_FILE, what="generation run")
    else:
        check_image_file(args.output or "samples.png", "-o")
    if args.save_individual:
        check_dir(args.save_individual, "--save-individual")


def run(args: argparse.Namespace) -> int:
    check_outputs(args)
    pipe = load_pipeline(args.model, device=args.device)
    classes = parse_classes(args.classes)
    if args.out_dir is not None:
        return run_streaming(args, pipe, classes)
    c = pipe.tokenizer.config
    side = max(c.image_size, args.scales[-1] * c.downsample) if args.scales else c.image_size
    check_in_memory(len(pipe.labels_for(classes, args.n)), c.in_channels, side, nrow=args.n)
    out = pipe.sample(
        classes, args.n, seed=args.seed, batch_size=args.batch_size, progress=True,
        **sampling_kwargs(args), **model_kwargs(args)
    )
    path = save_image(out.images * 2 - 1, args.output or "samples.png", nrow=args.n)
    if args.save_individual:
        d = Path(args.save_individual)
        for i, (img, c) in enumerate(zip(out.images, out.labels.tolist())):
            save_image(img[None] * 2 - 1, d / f"{c}_{i % args.n:04d}.png", padding=0)
    s = out.stats
    search = "" if out.scores is None else (f", search: {s.candidate_passes / s.images:.1f} candidate passes/image, "
                                             f"mean reward {out.scores.mean():.4f}")  # fmt: skip
    if s.undecodable:  # a codec tokenizer (JPEG bytes): streams that are no valid file are drawn blank
        search += f", {s.undecodable} of {s.images} token streams did not decode (drawn blank)"
    print(f"{s.images} images in {s.seconds:.2f} s ({1000 * s.seconds_per_image:.1f} ms/image, "
          f"{s.forward_passes_per_image:.2f} forward passes/image{search}) -> {path}")  # fmt: skip
    return 0


def run_streaming(args: argparse.Namespace, pipe, classes: list[int] | None) -> int:
    """``--out-dir``: chunk by chunk, resumable (arvision.stream)."""
    r = generate_to_dir(pipe, args.out_dir, classes, args.n, seed=args.seed, chunk_size=args.chunk_size,
                        batch_size=args.batch_size, overwrite=args.overwrite, individual=args.save_individual,
                        model=str(args.model), **sampling_kwargs(args), **model_kwargs(args))  # fmt: skip
    made = (f"{r['images_made']:,} made in {r['seconds']:.1f} s ({r['forward_passes_per_image']:.2f} forward passes/image)"
            if r["images_made"] else "nothing left to make")  # fmt: skip
    print(f"{r['images']:,} images in {r['chunks']} shards ({r['chunks_resumed']} already done, {made}) -> {r['out_dir']}")
    return 0
