"""MAR's loss as a function of how much of the image is known (teacher forcing).

    python benchmarks/mar_context.py [--models mnist-mar,runs/other-mar] [--n 512] [--shares 1,0.9,...]

Each model sees the first N MNIST test digits as `mnist-kl` tokens with a share of them masked (a
random order per image, 4 draws averaged) and reports its diffusion loss per masked token, the
training loss of MAR. More known tokens should never make the prediction worse. A model trained
with MAR's mask share (a normal truncated to [0.7, 1]: at most 30 % of the tokens visible) has
never seen the mostly-known images of sampling's last steps, and its loss can rise there; a model
trained with the cosine share (``mask_schedule="cosine"``) has.
"""

from __future__ import annotations

import argparse
import math

import torch

import arvision
from arvision.data import load_mnist


@torch.no_grad()
def context_losses(pipe, images_u8: torch.Tensor, labels: torch.Tensor, shares: list[float], draws: int = 4) -> list[float]:
    """Mean diffusion loss per masked token at each masked share (same images, orders and noise for every model)."""
    tokens = pipe.tokenizer.encode(images_u8[:, None].float() / 127.5 - 1)
    B, L = tokens.shape[:2]
    out = []
    for share in shares:
        total = 0.0
        for d in range(draws):
            g = torch.Generator().manual_seed(d)
            masked = torch.rand(B, L, generator=g).argsort(1).argsort(1) < math.ceil(L * share)
            total += pipe.generator(tokens, labels, masked, rng=g).item()
        out.append(total / draws)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mnist-mar", help="MAR generators (shipped names or directories), comma-separated")
    p.add_argument("--n", type=int, default=512, help="MNIST test digits (default 512)")
    p.add_argument("--shares", default="1,0.9,0.8,0.7,0.5,0.3,0.1", help="shares of the tokens masked")
    args = p.parse_args()
    shares = [float(s) for s in args.shares.split(",")]
    images, labels = load_mnist("test")
    images, labels = images[: args.n], labels[: args.n].long()
    rows = {}
    for name in args.models.split(","):
        pipe = arvision.load(name)
        rows[name] = context_losses(pipe, images, labels, shares)
    print(f"diffusion loss per masked token, {args.n} MNIST test digits, 4 random orders each")
    print("| model | " + " | ".join(f"{s:.0%} masked" for s in shares) + " |")
    print("|---|" + "---:|" * len(shares))
    for name, losses in rows.items():
        print(f"| `{name}` | " + " | ".join(f"{v:.4f}" for v in losses) + " |")


if __name__ == "__main__":
    main()
