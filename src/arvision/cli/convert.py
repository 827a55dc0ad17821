"""``arvision convert var|llamagen|mar``: official checkpoints -> an arvision model directory."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from arvision.outputs import check_run_dir
from arvision.pipeline import Pipeline


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert official VAR / LlamaGen / MAR checkpoints into an arvision model directory",
                       description="Read official checkpoint files (locally, without running pickled code), infer the "
                       "architecture from the tensors and write a directory that arvision.load opens. See docs/convert.md.")  # fmt: skip
    kinds = p.add_subparsers(dest="source", metavar="SOURCE", required=True)

    v = kinds.add_parser("var", help="VAR: vae_ch160v4096z32.pth + var_dNN.pth")
    v.add_argument("--vae", required=True, metavar="FILE", help="official VQVAE file (vae_ch160v4096z32.pth)")
    v.add_argument("--var", required=True, metavar="FILE", help="official VAR file (var_d16.pth ... var_d36.pth)")
    v.add_argument("--depth", type=int, help="check: number of blocks (inferred)")
    v.add_argument("--heads", type=int, help="attention heads (inferred; needed only without cosine attention)")
    v.add_argument("--patch-nums", type=_int_list, metavar="1,2,...", help="scale schedule (inferred; for custom schedules)")
    v.add_argument("--shared-aln", action=argparse.BooleanOptionalAction, default=None, help="check: shared AdaLN (inferred)")
    v.add_argument("--image-size", type=int, help="check: output side in pixels (inferred from the VAE and scales)")
    v.add_argument("--quant-resi", type=float, default=0.5, help="VAE phi mixing ratio, not stored in the file (default: %(default)s)")
    _common(v)
    v.set_defaults(func=run_var)

    g = kinds.add_parser("llamagen", help="LlamaGen: vq_ds16_c2i.pt / vq_ds8_c2i.pt + c2i_*.pt")
    g.add_argument("--vq", required=True, metavar="FILE", help="official VQ file (vq_ds16_c2i.pt, vq_ds8_c2i.pt)")
    g.add_argument("--gpt", required=True, metavar="FILE", help="official class-conditional GPT file (c2i_B_256.pt, ...)")
    g.add_argument("--image-size", type=int, help="training resolution of the GPT (256, 384); default: from freqs_cis or the file name")
    g.add_argument("--heads", type=int, help="attention heads (inferred for the official sizes)")
    _common(g)
    g.set_defaults(func=run_llamagen)

    m = kinds.add_parser("mar", help="MAR: the KL-16 VAE (kl16.ckpt) + a MAR checkpoint (mar_base/large/huge checkpoint-last.pth)")
    m.add_argument("--vae", required=True, metavar="FILE", help="official KL VAE file (kl16.ckpt)")
    m.add_argument("--mar", required=True, metavar="FILE", help="official MAR file ({'model', 'model_ema'}, checkpoint-last.pth)")
    m.add_argument("--heads", type=_int_list, metavar="E,D", help="attention heads of the encoder and decoder (inferred for the official sizes)")
    m.add_argument("--image-size", type=int, help="output side in pixels (default: token grid x VAE downsampling)")
    m.add_argument("--no-ema", dest="ema", action="store_false", help="take the 'model' weights instead of 'model_ema' (what MAR samples with)")
    m.add_argument("--out", required=True, metavar="DIR", help="output model directory")
    m.add_argument("--overwrite", action="store_true", help="replace an existing model in --out")
    m.set_defaults(func=run_mar)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="output model directory")
    p.add_argument("--ema", action="store_true", help="take the 'ema' weights of a training checkpoint instead of 'model'")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model in --out")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _check_out(args: argparse.Namespace) -> Path:
    """--out: a writable folder that holds no model or other files (unless --overwrite), checked before reading."""
    check_run_dir(args.out, "--out", overwrite=args.overwrite, what="converted model")
    return Path(args.out)


def run_var(args: argparse.Namespace) -> int:
    from arvision.convert import from_var

    out = _check_out(args)
    t0 = time.perf_counter()
    pipe = from_var(args.vae, args.var, depth=args.depth, heads=args.heads, patch_nums=args.patch_nums,
                    shared_aln=args.shared_aln, image_size=args.image_size, quant_resi=args.quant_resi, ema=args.ema)  # fmt: skip
    return _save(pipe, out, t0)


def run_llamagen(args: argparse.Namespace) -> int:
    from arvision.convert import from_llamagen

    out = _check_out(args)
    t0 = time.perf_counter()
    pipe = from_llamagen(args.vq, args.gpt, image_size=args.image_size, heads=args.heads, ema=args.ema)
    return _save(pipe, out, t0)


def run_mar(args: argparse.Namespace) -> int:
    from arvision.convert import from_mar

    out = _check_out(args)
    if args.heads is not None and len(args.heads) != 2:
        raise ValueError(f"--heads takes two numbers, the encoder's and the decoder's heads (e.g. 16,16), got {args.heads}")
    t0 = time.perf_counter()
    pipe = from_mar(args.vae, args.mar, ema=args.ema, heads=args.heads, image_size=args.image_size)
    return _save(pipe, out, t0)


def describe(pipe: Pipeline) -> list[tuple[str, str]]:
    """(field, value) rows of a converted pipeline's architecture and default sampling."""
    g, tok = pipe.generator, pipe.tokenizer
    t, tc, s = g.config.transformer, tok.config, pipe.defaults
    rows = [
        ("generator", f"{g.order}: depth {t.depth}, width {t.width}, heads {t.num_heads} (head dim {t.head_dim}), "
                      f"{t.conditioning} conditioning{', shared AdaLN' if t.shared_adaln else ''}, {t.attention} attention"),
        ("classes", f"{g.config.num_classes} (+ null class {g.null_class})"),
        ("tokens", tok.layout.describe()),
    ]  # fmt: skip
    if hasattr(g.config, "decoder"):
        d = g.config.decoder
        rows.insert(1, ("decoder", f"depth {d.depth}, width {d.width}, heads {d.num_heads}; diffusion head "
                                   f"{g.config.head.depth} blocks x {g.config.head.width}"))  # fmt: skip
    if hasattr(g.config, "patch_nums"):
        rows.append(("scales", f"{g.config.patch_nums} ({g.num_tokens} tokens)"))
    else:
        rows.append(("token grid", f"{g.config.grid_size}x{g.config.grid_size} ({g.num_tokens} tokens)"))
    rows += [
        ("tokenizer", f"{tok.model_type}: ch {tc.ch}, ch_mult {tc.ch_mult}, {tc.num_res_blocks} res blocks, z {tc.z_channels}, "
                      + (f"codebook {tc.codebook_size} x {tc.codebook_dim}" if tc.codebook_size else f"{tok.layout.code_dim}-d latents")
                      + f", downsample {tc.downsample}"),
        ("image size", f"{tc.image_size} px"),
        ("parameters", f"generator {g.num_parameters():,}, tokenizer {tok.num_parameters():,}"),
        ("default sampling", f"cfg {s.cfg} ({s.cfg_schedule}), top_k {s.top_k}, top_p {s.top_p}, temperature {s.temperature}"
                             + (f", {s.num_steps} steps" if s.num_steps else "") + (f", {s.diffusion_steps} diffusion steps" if s.diffusion_steps else "")),
    ]  # fmt: skip
    return rows


def _save(pipe: Pipeline, out: Path, t0: float) -> int:
    rows = describe(pipe)
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    pipe.save_pretrained(out)
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s; open it with arvision.load({str(out)!r}) "
          f"or `arvision generate {out}`")  # fmt: skip
    return 0
