"""arvision vs the official VAR / LlamaGen code, side by side, on the same random weights.

    python benchmarks/official_speed.py --var-repo PATH/TO/VAR --llamagen-repo PATH/TO/LlamaGen

The official repositories are NOT part of arvision and are never fetched by it: point the flags
at local checkouts (needs ``huggingface_hub`` for VAR's imports). Each comparison runs in its own
subprocess (both repositories have a top-level ``utils`` package). Without the flags, only
arvision is timed. Settings: VAR-d16 + VQVAE ch=160, batch 4, cfg 1.5, top-k 900, top-p 0.96;
GPT-B + VQ-16, batch 4, cfg 4, top-k 2000, 256 tokens; times include decoding to pixels.
Before timing, the script checks that greedy (top-k 1) tokens are identical (and for VAR the
seeded top-k/top-p tokens too). The table splits each total into transformer + sampling and the
tokenizer decoder; official and arvision calls are timed in turns. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch
from _common import official_size_pipeline

from arvision.runtime import keep_freed_memory, release_memory

LABELS = [980, 437, 22, 562]


def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Fill every parameter with small random values (the official VAR builder leaves the VAE uninitialised)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1 and ("norm" in name or name.endswith("weight")):
                p.copy_(1 + 0.02 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))


def alternate(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, timed in turns (a, b, a, b, ...) after one warm-up round so
    that slow drifts of the machine hit both sides alike. The official code runs under glibc's usual
    malloc settings, arvision (also its decoder timed alone) under ``keep_freed_memory`` as in
    ``Pipeline.sample``."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats + 1):
        for k, fn in fns.items():
            release_memory() if k.startswith("official") else keep_freed_memory()
            t0 = time.perf_counter()
            fn()
            if r:
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def run_var(repo: str | None, repeats: int) -> dict:
    from arvision.convert import var_state, var_vae_state

    pipe = official_size_pipeline("var-d16")
    tok, gen = pipe.tokenizer, pipe.generator
    labels = torch.tensor(LABELS)
    result: dict = {"model": "VAR-d16 + VQVAE ch=160"}
    fns: dict[str, Callable[[], object]] = {}
    if repo:
        sys.path.insert(0, repo)
        from models import build_vae_var  # the official code

        vae, var = build_vae_var(device="cpu", flash_if_available=False, fused_if_available=False)
        randomize_(vae, 1)
        with torch.no_grad():
            for p in var.head.parameters():  # spread the logits so that sampling is not uniform
                p.mul_(50)
        vae.eval(), var.eval()
        tok.load_state_dict(var_vae_state(vae.state_dict()))
        gen.load_state_dict(var_state(var.state_dict()))
        picked: list[torch.Tensor] = []  # the official sampler's token ids, scale by scale
        var.vae_quant_proxy[0].embedding.register_forward_hook(lambda m, args, out: picked.append(args[0]))

        def official(top_k: int, top_p: float) -> torch.Tensor:
            picked.clear()
            return var.autoregressive_infer_cfg(B=4, label_B=labels, cfg=1.5, top_k=top_k, top_p=top_p, g_seed=0)

        with torch.inference_mode():
            mine = pipe.sample(LABELS, 1, seed=0, cfg=1.5, top_k=1)
            ref = official(1, 0.0)
            result["greedy_tokens_identical"] = bool(torch.equal(mine.tokens, torch.cat(picked, 1)))
            result["greedy_max_abs_diff"] = (mine.images - ref).abs().max().item()
            mine = pipe.sample(LABELS, 1, seed=0, cfg=1.5, top_k=900, top_p=0.96)
            ref = official(900, 0.96)
            result["seeded_tokens_identical"] = bool(torch.equal(mine.tokens, torch.cat(picked, 1)))
            f_hat = tok.tokens_to_fhat(mine.tokens)
        fns["official"] = lambda: official(900, 0.96)
        fns["official_decoder"] = lambda: vae.fhat_to_img(f_hat)
    else:
        with torch.inference_mode():
            f_hat = tok.tokens_to_fhat(pipe.sample(LABELS, 1, seed=0, cfg=1.5, top_k=900, top_p=0.96, decode=False).tokens)
    fns["arvision"] = lambda: pipe.sample(LABELS, 1, seed=0, cfg=1.5, top_k=900, top_p=0.96)
    fns["arvision_decoder"] = lambda: tok.fhat_to_images(f_hat)
    with torch.inference_mode():
        result.update({f"{k}_s": v for k, v in alternate(fns, repeats).items()})
    return result


def run_llamagen(repo: str | None, repeats: int) -> dict:
    from arvision.convert import llamagen_gpt_state, llamagen_vq_state

    pipe = official_size_pipeline("gpt-b")
    tok, gen = pipe.tokenizer, pipe.generator
    labels = torch.tensor(LABELS)
    result: dict = {"model": "LlamaGen GPT-B + VQ-16"}
    fns: dict[str, Callable[[], object]] = {}
    if repo:
        sys.path.insert(0, repo)
        from autoregressive.models.generate import generate  # the official code
        from autoregressive.models.gpt import GPT_models
        from tokenizer.tokenizer_image.vq_model import VQ_models

        gpt = GPT_models["GPT-B"](vocab_size=16384, block_size=256, num_classes=1000, cls_token_num=1, model_type="c2i").eval()
        with torch.no_grad():
            gpt.output.weight.normal_(0, 0.02)  # the official init zeroes the head: every logit would tie
        vq = VQ_models["VQ-16"](codebook_size=16384, codebook_embed_dim=8).eval()
        tok.load_state_dict(llamagen_vq_state(vq.state_dict(), 5))
        gen.load_state_dict(llamagen_gpt_state(gpt.state_dict()))

        def official(top_k: int) -> torch.Tensor:
            idx = generate(gpt, labels, 256, cfg_scale=4.0, cfg_interval=-1, temperature=1.0, top_p=1.0, sample_logits=True,
                           top_k=top_k)  # fmt: skip
            vq.decode_code(idx, shape=[4, 8, 16, 16])
            return idx

        with torch.inference_mode():
            mine = pipe.sample(LABELS, 1, seed=0, cfg=4.0, top_k=1, decode=False).tokens
            ref = official(1)
        result["greedy_tokens_identical"] = bool(torch.equal(mine, ref.long()))
        fns["official"] = lambda: official(2000)
        fns["official_decoder"] = lambda: vq.decode_code(ref, shape=[4, 8, 16, 16])
    with torch.inference_mode():
        tokens = pipe.sample(LABELS, 1, seed=0, cfg=4.0, top_k=2000, decode=False).tokens
    fns["arvision"] = lambda: pipe.sample(LABELS, 1, seed=0, cfg=4.0, top_k=2000)
    fns["arvision_decoder"] = lambda: tok.decode(tokens)
    with torch.inference_mode():
        result.update({f"{k}_s": v for k, v in alternate(fns, repeats).items()})
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--var-repo", help="local checkout of FoundationVision/VAR")
    ap.add_argument("--llamagen-repo", help="local checkout of FoundationVision/LlamaGen")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--one", choices=["var", "llamagen"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        fn = run_var if args.one == "var" else run_llamagen
        print(json.dumps(fn(args.var_repo if args.one == "var" else args.llamagen_repo, args.repeats)))
        return
    rows = []
    for which in ("var", "llamagen"):
        cmd = [sys.executable, __file__, "--one", which, "--repeats", str(args.repeats), "--threads", str(args.threads)]
        for flag in ("var_repo", "llamagen_repo"):
            if getattr(args, flag):
                cmd += [f"--{flag.replace('_', '-')}", getattr(args, flag)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            sys.exit(f"{which} failed:\n{res.stderr[-3000:]}")
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(f"torch {torch.__version__}, {args.threads} thread(s), cpu, batch 4 with guidance, median of {args.repeats} "
          "(official and arvision timed in turns)\n")  # fmt: skip
    print(f"{'model':<24} {'part':<26} {'official s':>10} {'arvision s':>10} {'speed-up':>9}")
    for r in rows:
        parts = {"total (sample + decode)": ("official_s", "arvision_s"), "decoder": ("official_decoder_s", "arvision_decoder_s")}
        split = {k: r[k] - r[k.replace("_s", "_decoder_s")] for k in ("official_s", "arvision_s") if k in r}
        for part, (o, a) in parts.items():
            _row(r["model"], part, r.get(o), r[a])
        _row(r["model"], "transformer + sampling", split.get("official_s"), split["arvision_s"])
        if "greedy_tokens_identical" in r:
            same = f"greedy tokens identical: {r['greedy_tokens_identical']}"
            if "seeded_tokens_identical" in r:
                same += (f", seeded top-k/top-p tokens identical: {r['seeded_tokens_identical']}, "
                         f"greedy images max |diff| {r['greedy_max_abs_diff']:.1e}")  # fmt: skip
            print(f"{'':<24} {same}")


def _row(model: str, part: str, official: float | None, ours: float) -> None:
    off = f"{official:10.2f}" if official is not None else f"{'-':>10}"
    ratio = f"{official / ours:8.2f}x" if official is not None else f"{'-':>9}"
    print(f"{model:<24} {part:<26} {off} {ours:10.2f} {ratio}")


if __name__ == "__main__":
    main()
