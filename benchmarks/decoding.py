"""Fast decoding of the raster order: plain vs SJD vs a draft model vs LANTERN, same seeds, one run.

    python benchmarks/decoding.py [--n 10000] [--batch-size 100] [--draft mnist-raster-draft] [--official] [--json PATH]

For every method and setting on ``mnist-raster`` (each model's default guidance, cfg 2): target
forward passes (per batch: the batch runs until its slowest row is complete; per image: the
pass at which an image was complete, what it costs alone), draft-model passes, mean accepted
length, ms/image at the given batch size, MNIST-FID (shipped classifier features against the
MNIST test set, as ``orders.py``) and class accuracy of ``--n`` samples, the classes cycled.

``--official`` adds the cost of one verification pass at the official GPT-B size (random
weights, batch 4, cfg 4): ms per pass when it feeds W draft tokens at once, against one plain
decoding step. On a 2-core CPU a pass over W + 1 positions costs more than a pass over one, so
fewer passes mean less time only while the window stays cheap; the table says where.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _common import mnist_fid, official_size_pipeline, scatter_plot

import arvision
from arvision.metrics.features import MnistFeatures, load_reference
from arvision.metrics.mnist_classifier import class_accuracy
from arvision.samplers import DecodeState, Step

SETTINGS = [
    ("plain", {}),
    ("SJD, window 8", {"decoding": "sjd", "window": 8}),
    ("SJD, window 16", {"decoding": "sjd", "window": 16}),
    ("draft model, window 2", {"decoding": "speculative", "window": 2, "draft": True}),
    ("draft model, window 4", {"decoding": "speculative", "window": 4, "draft": True}),
    ("LANTERN (Jacobi), k 16, delta 0.05", {"decoding": "lantern", "window": 8, "lantern_k": 16, "lantern_delta": 0.05}),
    ("LANTERN (Jacobi), k 16, delta 0.1", {"decoding": "lantern", "window": 8, "lantern_k": 16, "lantern_delta": 0.1}),
    ("LANTERN (Jacobi), k 16, delta 0.15", {"decoding": "lantern", "window": 8, "lantern_k": 16, "lantern_delta": 0.15}),
    ("LANTERN (Jacobi), k 32, delta 0.2", {"decoding": "lantern", "window": 8, "lantern_k": 32, "lantern_delta": 0.2}),
    ("LANTERN (draft), k 16, delta 0.1, window 4", {"decoding": "lantern", "window": 4, "lantern_k": 16, "lantern_delta": 0.1,
                                                     "draft": True}),
]  # fmt: skip


def run(pipe, draft, n: int, batch: int, options: dict, classifier, extractor, reference) -> dict:
    options = dict(options)
    if options.pop("draft", False):
        options["draft"] = draft
    classes = [i % 10 for i in range(n)]
    t0 = time.perf_counter()
    out = pipe.sample(classes, 1, seed=0, batch_size=batch, **options)
    wall = time.perf_counter() - t0
    s = out.stats
    return {
        "passes_per_batch": s.forward_passes_per_image, "passes_per_image": s.mean_passes_per_image,
        "draft_passes_per_batch": s.draft_passes / max(s.batches, 1), "accepted": s.mean_accepted_length,
        "ms_per_image": 1000 * wall / n, "fid": mnist_fid(extractor, reference, out.images),
        "class_accuracy": class_accuracy(classifier, out.images, out.labels),
    }


@torch.no_grad()
def official_pass_cost(windows: tuple[int, ...], repeats: int = 3) -> list[tuple[int, float]]:
    """ms per GPT-B pass (batch 4, cfg 4: 8 rows) over W + 1 positions after a 128-token prefix."""
    pipe = official_size_pipeline("gpt-b")
    g = pipe.generator
    rows, L = 8, g.num_tokens
    cond = g.class_emb(torch.tensor([980, 437, 22, 562] * 2))
    tokens = torch.randint(0, g.config.vocab_size, (rows, L))
    state = DecodeState(tokens_BL=tokens, known_BL=tokens >= 0, open_BL=tokens < 0)
    cache = g.new_cache(rows)
    g.step(state, Step(0, 0, 0, 129), cond, cache)  # the prefix: class token + 128 tokens
    out = []
    for W in windows:
        times = []
        for _ in range(repeats + 1):
            cache.truncate(129)
            t0 = time.perf_counter()
            g.step(state, Step(0, 129, 129, 129 + W + 1 if W else 130), cond, cache)
            times.append(time.perf_counter() - t0)
        out.append((W, 1000 * sorted(times[1:])[len(times[1:]) // 2]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000, help="samples per setting (classes cycled)")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--model", default="mnist-raster")
    ap.add_argument("--draft", default="mnist-raster-draft", help="draft model for the draft-model rows")
    ap.add_argument("--only", nargs="*", help="run only the settings whose name contains one of these words")
    ap.add_argument("--official", action="store_true", help="also time GPT-B verification passes (random weights)")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--plot", default="bench-decoding.png", help="PNG plot of MNIST-FID against target passes per image")
    args = ap.parse_args()
    pipe, draft = arvision.load(args.model), arvision.load(args.draft)
    classifier, extractor = arvision.load("mnist-classifier"), MnistFeatures()
    reference = load_reference("mnist:test", extractor, progress=False)
    rows = []
    for name, options in SETTINGS:
        if args.only and not any(w.lower() in name.lower() for w in args.only):
            continue
        r = run(pipe, draft, args.n, args.batch_size, options, classifier, extractor, reference)
        rows.append({"setting": name, **r})
        print(f"  {name}: {r}", flush=True)
    base = rows[0] if rows and rows[0]["setting"] == "plain" else None
    print(f"\n{args.model}, {args.n} samples per setting (classes cycled), batch {args.batch_size}, seed 0, "
          f"{torch.get_num_threads()} thread(s); MNIST-FID against {reference.name}; draft model {args.draft}\n")  # fmt: skip
    head = ["setting", "target passes / batch", "/ image", "fewer (image)", "draft passes", "accepted / pass",
            "ms / image", "speed-up", "MNIST-FID", "vs plain", "class acc"]  # fmt: skip
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        fewer = base["passes_per_image"] / r["passes_per_image"] if base else float("nan")
        speed = base["ms_per_image"] / r["ms_per_image"] if base else float("nan")
        dfid = 100 * (r["fid"] / base["fid"] - 1) if base else float("nan")
        print(f"| {r['setting']} | {r['passes_per_batch']:.1f} | {r['passes_per_image']:.1f} | {fewer:.2f}x | "
              f"{r['draft_passes_per_batch']:.0f} | {r['accepted']:.2f} | {r['ms_per_image']:.1f} | {speed:.2f}x | "
              f"{r['fid']:.2f} | {dfid:+.1f} % | {100 * r['class_accuracy']:.1f} % |")  # fmt: skip
    if rows:
        scatter_plot([(r["setting"], r["passes_per_image"], r["fid"]) for r in rows], args.plot,
                     f"MNIST-FID (lower is better) of {args.model} by decoding method, {args.n} samples each",
                     "target forward passes per image (log scale)")  # fmt: skip
        print(f"\nplot -> {args.plot}")
    official = []
    if args.official:
        official = official_pass_cost((0, 1, 2, 4, 8, 16))
        print("\nGPT-B (official size, random weights), 8 rows (batch 4 with cfg), after a 128-token prefix:\n")
        print("| drafts per pass W | positions | ms / pass | vs one plain step |\n|---|---|---|---|")
        for W, ms in official:
            print(f"| {W} | {W + 1 if W else 1} | {ms:.1f} | {ms / official[0][1]:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "official": official, "n": args.n}, indent=2))


if __name__ == "__main__":
    main()
