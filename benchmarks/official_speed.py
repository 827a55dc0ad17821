"""arvision vs the official VAR / LlamaGen code, side by side, on the same random weights.

    python benchmarks/official_speed.py --var-repo PATH/TO/VAR --llamagen-repo PATH/TO/LlamaGen [--precision bf16]

The official repositories are NOT part of arvision and are never fetched by it: point the flags
at local checkouts (needs ``huggingface_hub`` importable for their imports). Without the flags only
arvision is timed. Settings: VAR-d16 + VQVAE ch=160, batch 4, cfg 1.5, top-k 900, top-p 0.96;
GPT-B + VQ-16, batch 4, cfg 4, top-k 2000, 256 tokens; times include decoding to pixels.

Every part runs in its own process, so that neither side inherits the other's settings (threads,
malloc thresholds, autocast, packed weights) and the two repositories' top-level ``utils``
packages never meet:

1. a check process builds the official model (random weights), converts its weights into arvision's and
   compares tokens: greedy (top-k 1) tokens must be identical in fp32 (for VAR the seeded
   top-k/top-p tokens too); with ``--precision bf16`` it reports how many of arvision's bf16 tokens
   agree with the official fp32 ones. It saves both models' weights for steps 2 and 3.
2. a timing process runs only the official code (with those weights);
3. a timing process runs only arvision with those weights at ``--precision``.

Each timing process times the full call and the tokenizer decoder alone, in turns, after a
warm-up (median of ``--repeats``); ``--rounds`` alternates official and arvision processes to
spread slow drifts of the machine over both. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from _common import official_size_pipeline

LABELS = [980, 437, 22, 562]
SETTINGS = {"var": dict(cfg=1.5, top_k=900, top_p=0.96), "llamagen": dict(cfg=4.0, top_k=2000)}


def official_seed() -> torch.Generator:
    """One generator for the whole batch, seeded 0, as the official samplers draw (arvision's int
    seeds give every image its own stream, which draws other tokens)."""
    return torch.Generator().manual_seed(0)


MODELS = {"var": ("var-d16", "VAR-d16 + VQVAE ch=160"), "llamagen": ("gpt-b", "LlamaGen GPT-B + VQ-16")}


# -- the official models (same seeded weights in every process) ----------------------------------
def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Fill every parameter with small random values (the official VAR builder leaves the VAE uninitialised)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1 and ("norm" in name or name.endswith("weight")):
                p.copy_(1 + 0.02 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))


def official_var(repo: str):
    """(vae, var) of the official code with random weights; ``var.picked`` collects the
    sampled token ids scale by scale and ``vae.last_fhat`` the f_hat its decoder got."""
    sys.path.insert(0, repo)
    from models import build_vae_var  # the official code

    vae, var = build_vae_var(device="cpu", flash_if_available=False, fused_if_available=False)
    randomize_(vae, 1)
    with torch.no_grad():
        for p in var.head.parameters():  # spread the logits so that sampling is not uniform
            p.mul_(50)
    vae.eval(), var.eval()
    var.picked = []
    var.vae_quant_proxy[0].embedding.register_forward_hook(lambda m, args, out: var.picked.append(args[0]))
    decode = vae.fhat_to_img
    vae.fhat_to_img = lambda f_hat: (setattr(vae, "last_fhat", f_hat), decode(f_hat))[1]
    return vae, var


def official_llamagen(repo: str):
    """(vq, gpt, generate) of the official code with random weights."""
    sys.path.insert(0, repo)
    from autoregressive.models.generate import generate  # the official code
    from autoregressive.models.gpt import GPT_models
    from tokenizer.tokenizer_image.vq_model import VQ_models

    gpt = GPT_models["GPT-B"](vocab_size=16384, block_size=256, num_classes=1000, cls_token_num=1, model_type="c2i").eval()
    with torch.no_grad():
        gpt.output.weight.normal_(0, 0.02)  # the official init zeroes the head: every logit would tie
    vq = VQ_models["VQ-16"](codebook_size=16384, codebook_embed_dim=8).eval()
    return vq, gpt, generate


MODEL_CACHE: dict = {}


def _official(which: str, repo: str, weights: str | None = None):
    """The official model of ``which``, built once per process (with the check process's weights
    from ``weights``, so that both timing processes run the very weights the check compared)."""
    if which not in MODEL_CACHE:
        MODEL_CACHE[which] = official_var(repo) if which == "var" else official_llamagen(repo)
        if weights:
            state = torch.load(weights, weights_only=True)
            for name, module in zip(("a", "b"), MODEL_CACHE[which][:2]):
                module.load_state_dict(state[name])
    return MODEL_CACHE[which]


def run_official(which: str, repo: str, top_k: int, top_p: float = 0.0) -> tuple[torch.Tensor, Callable[[], object]]:
    """(tokens (4, L) of one official call with these settings, the decoder call on its output)."""
    labels = torch.tensor(LABELS)
    if which == "var":
        vae, var = _official(which, repo)
        var.picked.clear()
        var.autoregressive_infer_cfg(B=4, label_B=labels, cfg=1.5, top_k=top_k, top_p=top_p, g_seed=0)
        f_hat = vae.last_fhat
        return torch.cat(var.picked, 1), lambda: vae.fhat_to_img(f_hat)
    vq, gpt, generate = _official(which, repo)
    idx = generate(gpt, labels, 256, cfg_scale=4.0, cfg_interval=-1, temperature=1.0, top_p=1.0, sample_logits=True, top_k=top_k)
    vq.decode_code(idx, shape=[4, 8, 16, 16])
    return idx.long(), lambda: vq.decode_code(idx, shape=[4, 8, 16, 16])


# -- arvision ------------------------------------------------------------------------------------
def arvision_pipeline(which: str, weights: str | None):
    pipe = official_size_pipeline(MODELS[which][0])
    if weights:
        from safetensors.torch import load_file

        state = load_file(weights)
        pipe.tokenizer.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("tok.")})
        pipe.generator.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("gen.")})
    return pipe


def convert(which: str, repo: str):
    """The arvision pipeline holding the official model's weights (converted)."""
    from arvision.convert import llamagen_gpt_state, llamagen_vq_state, var_state, var_vae_state

    pipe = official_size_pipeline(MODELS[which][0])  # then the official model, from the RNG state after it
    if which == "var":
        vae, var = _official(which, repo)
        pipe.tokenizer.load_state_dict(var_vae_state(vae.state_dict()))
        pipe.generator.load_state_dict(var_state(var.state_dict()))
    else:
        vq, gpt, _ = _official(which, repo)
        pipe.tokenizer.load_state_dict(llamagen_vq_state(vq.state_dict(), 5))
        pipe.generator.load_state_dict(llamagen_gpt_state(gpt.state_dict()))
    return pipe


def check(which: str, repo: str, precision: str, weights: str) -> dict:
    """Token equality (fp32) / agreement (bf16) with the official code; saves the converted weights."""
    from arvision.modeling import write_safetensors

    pipe = convert(which, repo)
    out: dict = {}
    with torch.inference_mode():
        greedy, _ = run_official(which, repo, 1)
        mine = pipe.sample(LABELS, 1, seed=official_seed(), **{**SETTINGS[which], "top_k": 1, "top_p": 0.0}, decode=False).tokens
        out["greedy_tokens_identical"] = bool(torch.equal(mine, greedy))
        if which == "var":
            seeded, _ = run_official(which, repo, 900, 0.96)
            mine = pipe.sample(LABELS, 1, seed=official_seed(), **SETTINGS[which], decode=False).tokens
            out["seeded_tokens_identical"] = bool(torch.equal(mine, seeded))
        if precision != "fp32":
            low = pipe.sample(LABELS, 1, seed=official_seed(), **{**SETTINGS[which], "top_k": 1, "top_p": 0.0}, decode=False, precision=precision)
            out[f"{precision}_greedy_agreement"] = (low.tokens == greedy).double().mean().item()
            if which == "var":
                low = pipe.sample(LABELS, 1, seed=official_seed(), **SETTINGS[which], decode=False, precision=precision)
                out[f"{precision}_seeded_agreement"] = (low.tokens == seeded).double().mean().item()
    state = {**{f"tok.{k}": v for k, v in pipe.tokenizer.state_dict().items()},
             **{f"gen.{k}": v for k, v in pipe.generator.state_dict().items()}}  # fmt: skip
    write_safetensors({k: v.contiguous() for k, v in state.items()}, weights)
    torch.save({name: {k: v for k, v in m.state_dict().items() if "kv_cache" not in k}  # LlamaGen's caches are buffers
                for name, m in zip(("a", "b"), _official(which, repo)[:2])}, weights + ".official.pt")  # fmt: skip
    return out


def median_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, timed in turns after one warm-up round."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats + 1):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if r:
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def time_official(which: str, repo: str, weights: str, repeats: int) -> dict:
    s = SETTINGS[which]
    _official(which, repo, weights + ".official.pt")
    with torch.inference_mode():
        _, decoder = run_official(which, repo, s["top_k"], s.get("top_p", 0.0))
        return median_times({"total": lambda: run_official(which, repo, s["top_k"], s.get("top_p", 0.0)), "decoder": decoder}, repeats)


def time_arvision(which: str, weights: str | None, precision: str, repeats: int) -> dict:
    from arvision.runtime import precision_scope, reuse_freed_memory

    pipe = arvision_pipeline(which, weights)
    tok = pipe.tokenizer
    with torch.inference_mode():
        tokens = pipe.sample(LABELS, 1, seed=official_seed(), **SETTINGS[which], decode=False).tokens
        f_hat = tok.tokens_to_fhat(tokens) if which == "var" else None

        def decoder():  # as inside Pipeline.sample: its memory setting and precision, for this call only
            with reuse_freed_memory(), precision_scope(precision, "cpu"):
                return tok.fhat_to_images(f_hat) if which == "var" else tok.decode(tokens)

        return median_times({"total": lambda: pipe.sample(LABELS, 1, seed=official_seed(), precision=precision, **SETTINGS[which]),
                             "decoder": decoder}, repeats)  # fmt: skip


# -- driver ----------------------------------------------------------------------------------------
def _child(args: argparse.Namespace, which: str, role: str, weights: str | None) -> dict:
    cmd = [sys.executable, __file__, "--one", which, "--role", role, "--repeats", str(args.repeats), "--threads", str(args.threads),
           "--precision", args.precision]  # fmt: skip
    repo = args.var_repo if which == "var" else args.llamagen_repo
    if repo:
        cmd += ["--repo", repo]
    if weights:
        cmd += ["--weights", weights]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"{which} ({role}) failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace, which: str, tmp: Path) -> dict:
    repo = args.var_repo if which == "var" else args.llamagen_repo
    result: dict = {"model": MODELS[which][1]}
    weights = None
    if repo:
        weights = str(tmp / f"{which}.safetensors")
        result.update(_child(args, which, "check", weights))
    runs: dict[str, list[dict]] = {"official": [], "arvision": []}
    for _ in range(args.rounds):
        if repo:
            runs["official"].append(_child(args, which, "official", weights))
        runs["arvision"].append(_child(args, which, "arvision", weights))
    for side, rs in runs.items():
        if rs:
            result[f"{side}_s"] = statistics.median(r["total"] for r in rs)
            result[f"{side}_decoder_s"] = statistics.median(r["decoder"] for r in rs)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--var-repo", help="local checkout of FoundationVision/VAR")
    ap.add_argument("--llamagen-repo", help="local checkout of FoundationVision/LlamaGen")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="arvision's sampling precision (the official code runs fp32)")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per process (after one warm-up)")
    ap.add_argument("--rounds", type=int, default=1, help="official/arvision process pairs per model")
    ap.add_argument("--models", default="var,llamagen", help="comma-separated: var, llamagen")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--one", choices=["var", "llamagen"], help=argparse.SUPPRESS)
    ap.add_argument("--role", choices=["check", "official", "arvision"], help=argparse.SUPPRESS)
    ap.add_argument("--repo", help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        if args.role == "check":
            res = check(args.one, args.repo, args.precision, args.weights)
        elif args.role == "official":
            res = time_official(args.one, args.repo, args.weights, args.repeats)
        else:
            res = time_arvision(args.one, args.weights, args.precision, args.repeats)
        print(json.dumps(res))
        return
    with tempfile.TemporaryDirectory() as tmp:
        rows = [compare(args, which, Path(tmp)) for which in args.models.split(",")]
    print(f"torch {torch.__version__}, {args.threads} thread(s), cpu, batch 4 with guidance, arvision in {args.precision}, "
          f"median of {args.repeats} per process x {args.rounds} round(s); official and arvision in separate processes\n")  # fmt: skip
    print(f"{'model':<24} {'part':<26} {'official s':>10} {'arvision s':>10} {'speed-up':>9}")
    for r in rows:
        parts = {"total (sample + decode)": ("official_s", "arvision_s"), "decoder": ("official_decoder_s", "arvision_decoder_s")}
        split = {k: r[k] - r[k.replace("_s", "_decoder_s")] for k in ("official_s", "arvision_s") if k in r}
        for part, (o, a) in parts.items():
            _row(r["model"], part, r.get(o), r[a])
        _row(r["model"], "transformer + sampling", split.get("official_s"), split["arvision_s"])
        checks = [f"{k.replace('_', ' ')}: {v if isinstance(v, bool) else f'{v:.1%}'}" for k, v in r.items()
                  if k.endswith(("identical", "agreement"))]  # fmt: skip
        if checks:
            print(f"{'':<24} {', '.join(checks)}")


def _row(model: str, part: str, official: float | None, ours: float) -> None:
    off = f"{official:10.2f}" if official is not None else f"{'-':>10}"
    ratio = f"{official / ours:8.2f}x" if official is not None else f"{'-':>9}"
    print(f"{model:<24} {part:<26} {off} {ours:10.2f} {ratio}")


if __name__ == "__main__":
    main()
