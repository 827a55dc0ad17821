"""Training throughput (tokens/s or images/s) and peak memory at MNIST size, as a table.

    python benchmarks/training_throughput.py [--steps 20]

Each preset runs in its own subprocess so that its peak resident memory (ru_maxrss) is its own.
Generators train on random token sequences of the right shape (the speed does not depend on the
data); tokenizers on MNIST images.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

PRESETS = ["mnist-vq", "mnist-msvq", "mnist-kl", "mnist-raster", "mnist-scale", "mnist-markov-scale", "mnist-neighbor",
           "mnist-masked", "mnist-mar", "mnist-tokenbridge"]


def measure(name: str, steps: int) -> dict:
    import resource

    import torch
    import torch.nn.functional as F

    from arvision.data import MnistDataset
    from arvision.presets import GENERATOR_PRESETS, TOKENIZER_PRESETS

    torch.manual_seed(0)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if name not in GENERATOR_PRESETS:  # a name of both (mnist-tokenbridge) is the generator: its tokenizer is fitted, not trained
        p = TOKENIZER_PRESETS[name]
        model = p.model_class(p.config).to(memory_format=torch.channels_last).train()
        data = MnistDataset("train", limit=p.train.batch_size * (steps + 3)).images
        bs, unit = p.train.batch_size, "images"

        def step(i: int):
            x = data[i * bs : (i + 1) * bs].contiguous(memory_format=torch.channels_last)
            o = model(x)
            return F.mse_loss(o.recon, x) + o.quant_loss
    else:
        gp = GENERATOR_PRESETS[name]
        tp = TOKENIZER_PRESETS[gp.tokenizer]
        tok = tp.model_class(tp.config).eval()
        model = gp.model_class(gp.build_config(tok, 10)).train()
        bs, unit = gp.train.batch_size, "tokens"
        layout = tok.layout
        if layout.token_kind == "vectors":  # continuous tokens (MAR)
            tokens = torch.randn(bs, *layout.token_shape)
        else:
            tokens = torch.randint(0, layout.vocab_size, (bs, *layout.token_shape))
        labels = torch.randint(0, 10, (bs,))
        rng = torch.Generator().manual_seed(0)

        def step(i: int):  # what the training loop does: order-specific inputs (masking, teacher forcing) + loss
            inputs, extra = model.training_inputs(tokens, labels, tok, rng)
            return model.training_loss(model(**inputs), tokens, extra)[0]

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for i in range(steps + 3):
        if i == 3:
            t0 = time.perf_counter()
        loss = step(i)
        opt.zero_grad()
        loss.backward()
        opt.step()
    dt = (time.perf_counter() - t0) / steps
    per_step = bs * (tok.num_tokens if unit == "tokens" else 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"preset": name, "params": sum(p.numel() for p in model.parameters()), "batch": bs, "ms_per_step": 1000 * dt,
            "rate": per_step / dt, "unit": unit, "peak_rss_mb": peak / 1024, "model_rss_mb": (peak - base) / 1024}  # fmt: skip


def measure_in_subprocess(name: str, steps: int) -> dict:
    res = subprocess.run([sys.executable, __file__, "--one", name, "--steps", str(steps)], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.steps)))
        return
    rows = []
    for name in PRESETS:
        rows.append(measure_in_subprocess(name, args.steps))
    header = ["preset", "params", "batch", "ms/step", "throughput", "peak RSS MB"]
    print(" | ".join(f"{h:>14}" for h in header))
    print("-" * (17 * len(header)))
    for r in rows:
        cells = [r["preset"], f"{r['params']:,}", r["batch"], f"{r['ms_per_step']:.0f}", f"{r['rate']:.0f} {r['unit']}/s",
                 f"{r['peak_rss_mb']:.0f}"]  # fmt: skip
        print(" | ".join(f"{str(c):>14}" for c in cells))


if __name__ == "__main__":
    main()
