"""arvision vs the official VAR / LlamaGen code, side by side, on the same random weights.

    python benchmarks/official_speed.py --var-repo PATH/TO/VAR --llamagen-repo PATH/TO/LlamaGen

The official repositories are NOT part of arvision and are never fetched by it: point the flags
at local checkouts (needs ``huggingface_hub`` for VAR's imports). Each comparison runs in its own
subprocess (both repositories have a top-level ``utils`` package). Without the flags, only
arvision is timed. Settings: VAR-d16 + VQVAE ch=160, batch 4, cfg 1.5, top-k 900, top-p 0.96;
GPT-B + VQ-16, batch 4, cfg 4, top-k 2000, 256 tokens; times include decoding to pixels.
Before timing, the script checks that greedy (top-k 1) outputs are identical.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch
from _common import official_size_pipeline, timed

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


def run_var(repo: str | None, repeats: int) -> dict:
    from arvision.convert import var_state, var_vae_state

    pipe = official_size_pipeline("var-d16")
    tok, gen = pipe.tokenizer, pipe.generator
    labels = torch.tensor(LABELS)
    result: dict = {"model": "VAR-d16 + VQVAE ch=160"}
    official = None
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
        official = var

    def ours(**kw):
        return pipe.sample(LABELS, 1, seed=0, **kw).images

    with torch.inference_mode():
        if official is not None:
            mine = ours(cfg=1.5, top_k=1)
            ref = official.autoregressive_infer_cfg(B=4, label_B=labels, cfg=1.5, top_k=1, top_p=0.0, g_seed=0)
            result["greedy_max_abs_diff"] = (mine - ref).abs().max().item()
            mine = ours(cfg=1.5, top_k=900, top_p=0.96)
            ref = official.autoregressive_infer_cfg(B=4, label_B=labels, cfg=1.5, top_k=900, top_p=0.96, g_seed=0)
            result["seeded_fid_setting_max_abs_diff"] = (mine - ref).abs().max().item()
            result["official_s"] = timed(lambda: official.autoregressive_infer_cfg(B=4, label_B=labels, cfg=1.5, top_k=900,
                                                                                 top_p=0.96, g_seed=0), repeats)  # fmt: skip
        out = pipe.sample(LABELS, 1, seed=0, cfg=1.5, top_k=900, top_p=0.96, decode=False)
        f_hat = tok.tokens_to_fhat(out.tokens)
        result["arvision_s"] = timed(lambda: ours(cfg=1.5, top_k=900, top_p=0.96), repeats)
        result["arvision_decoder_s"] = timed(lambda: tok.fhat_to_images(f_hat), repeats)
    return result


def run_llamagen(repo: str | None, repeats: int) -> dict:
    from arvision.convert import llamagen_gpt_state, llamagen_vq_state

    pipe = official_size_pipeline("gpt-b")
    tok, gen = pipe.tokenizer, pipe.generator
    labels = torch.tensor(LABELS)
    result: dict = {"model": "LlamaGen GPT-B + VQ-16"}
    official = None
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
        official = (gpt, vq, generate)

    def theirs(**kw):
        gpt, vq, generate = official
        idx = generate(gpt, labels, 256, cfg_scale=4.0, cfg_interval=-1, temperature=1.0, top_p=1.0, sample_logits=True, **kw)
        return idx, vq.decode_code(idx, shape=[4, 8, 16, 16])

    with torch.inference_mode():
        if official is not None:
            mine = pipe.sample(LABELS, 1, seed=0, cfg=4.0, top_k=1, decode=False).tokens
            ref, _ = theirs(top_k=1)
            result["greedy_tokens_identical"] = bool(torch.equal(mine, ref.long()))
            result["official_s"] = timed(lambda: theirs(top_k=2000), repeats)
            result["official_decoder_s"] = timed(lambda: official[1].decode_code(ref, shape=[4, 8, 16, 16]), repeats)
        tokens = pipe.sample(LABELS, 1, seed=0, cfg=4.0, top_k=2000, decode=False).tokens
        result["arvision_s"] = timed(lambda: pipe.sample(LABELS, 1, seed=0, cfg=4.0, top_k=2000), repeats)
        result["arvision_decoder_s"] = timed(lambda: tok.decode(tokens), repeats)
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
    print(f"torch {torch.__version__}, {args.threads} thread(s), cpu, batch 4 with guidance, median of {args.repeats}\n")
    header = ["model", "official s", "arvision s", "speed-up", "arvision decoder s", "same outputs"]
    print(" | ".join(f"{h:>22}" for h in header))
    print("-" * (25 * len(header)))
    for r in rows:
        off = r.get("official_s")
        same = r.get("greedy_tokens_identical", None)
        if "greedy_max_abs_diff" in r:
            same = f"greedy {r['greedy_max_abs_diff']:.1e}, seeded {r['seeded_fid_setting_max_abs_diff']:.1e}"
        cells = [r["model"], f"{off:.2f}" if off else "-", f"{r['arvision_s']:.2f}", f"{off / r['arvision_s']:.2f}x" if off else "-",
                 f"{r['arvision_decoder_s']:.2f}", "-" if same is None else str(same)]  # fmt: skip
        print(" | ".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main()
