"""Encode + decode throughput of the shipped MNIST tokenizers (images/s), printed as a table.

    python benchmarks/tokenizer_throughput.py                 # shipped MNIST tokenizers
    python benchmarks/tokenizer_throughput.py --official      # also VAR VQVAE / LlamaGen VQ-16 sizes (random weights, 256px)

Times are the median of ``--repeats`` runs after one warm-up, with ``torch.inference_mode``.
"""

from __future__ import annotations

import argparse

import torch
from _common import timed

import arvision
from arvision.data import MnistDataset
from arvision.presets import TOKENIZER_PRESETS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", default="1,64,256")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--official", action="store_true", help="also time official-size architectures at batch 4")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), device cpu\n")
    rows = []
    mnist = MnistDataset("test").images
    with torch.inference_mode():
        for name in ("mnist-vq", "mnist-msvq"):
            tok = arvision.load(name)
            for bs in (int(b) for b in args.batch_sizes.split(",")):
                x = mnist[:bs]
                tokens = tok.encode(x)
                t_enc = timed(lambda: tok.encode(x), args.repeats)
                t_dec = timed(lambda: tok.decode(tokens), args.repeats)
                rows.append((name, bs, tok.num_tokens, bs / t_enc, bs / t_dec, bs / (t_enc + t_dec)))
        if args.official:
            for name in ("var-vae", "llamagen-vq16"):
                p = TOKENIZER_PRESETS[name]
                tok = p.model_class(p.config).eval()
                x = torch.rand(4, 3, 256, 256) * 2 - 1
                tokens = tok.encode(x)
                t_enc = timed(lambda: tok.encode(x), max(1, args.repeats // 2))
                t_dec = timed(lambda: tok.decode(tokens), max(1, args.repeats // 2))
                rows.append((name + " (random)", 4, tok.num_tokens, 4 / t_enc, 4 / t_dec, 4 / (t_enc + t_dec)))
    header = ("tokenizer", "batch", "tokens", "encode img/s", "decode img/s", "enc+dec img/s")
    print(" | ".join(f"{h:>14}" for h in header))
    print("-" * (17 * len(header)))
    for r in rows:
        print(" | ".join([f"{r[0]:>14}", f"{r[1]:>14}", f"{r[2]:>14}"] + [f"{v:>14.1f}" for v in r[3:]]))


if __name__ == "__main__":
    main()
