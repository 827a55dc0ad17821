"""Test-time search at equal compute: plain sampling, best-of-N and TTS-VAR on a next-scale model.

    python benchmarks/test_time_search.py [--model mnist-scale] [--n-per-class 200] [--budgets 2,4] [--cfg 0]

For each budget N (the compute of N plain decodings per image), best-of-N decodes N candidates
and TTS-VAR runs its default schedule for that budget (``arvision.samplers.search``), both with
the classifier reward (log p of the requested digit). "cand. passes" counts every candidate's
forward passes per image (best-of-N: N x scales) and "cand. tokens" the token positions they
computed (coarse scales are cheap); "rewards" counts the images scored. Class accuracy, MNIST-FID,
precision and recall are on the shipped classifier's features against the MNIST test set, like
`arvision eval generator`. Note that the reward and the class-accuracy judge are the same
classifier here: accuracy measures how well the search optimises the reward; FID and recall show
what it costs in diversity. ``--tts`` adds TTS-VAR variants (``name=batch;clusters;resamples;potential;lam``).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import arvision
from arvision.evaluate import balanced_labels, score_features
from arvision.metrics.features import MnistFeatures, load_reference, to_uint8
from arvision.samplers.search import TTSVAR


def parse_tts(spec: str) -> tuple[str, TTSVAR]:
    name, _, rest = spec.partition("=")
    sizes, clusters, resample, potential, lam = (rest.split(";") + [""] * 5)[:5]
    ints = lambda t: tuple(int(x) for x in t.split(",") if x)  # noqa: E731
    return name, TTSVAR(batch_sizes=ints(sizes) or None, cluster_scales=ints(clusters), resample_scales=ints(resample),
                        potential=potential or "value", lam=float(lam or 1.0))  # fmt: skip


def partial_reward_auc(pipe, reward, labels: torch.Tensor, args) -> None:
    """Per scale: the reward of the partial image (what TTS-VAR scores) against whether the final
    image is classified right; AUC 0.5 = no information, 1 = perfect."""
    from arvision.samplers.loop import DecodeRun

    scores = []
    for b in range(0, len(labels), args.batch_size):
        lab = labels[b : b + args.batch_size]
        run = DecodeRun(pipe.generator, pipe.tokenizer, lab, pipe.sampling_config(cfg=args.cfg, temperature=args.temperature), torch.Generator().manual_seed(args.seed + b))
        per_scale = []
        for step in run.plan:
            run.step(step)
            per_scale.append(reward(run.order.preview(run.state).add(1).div(2).clamp(0, 1), lab))
        scores.append(torch.stack(per_scale, 1))
    sc = torch.cat(scores)
    right = sc[:, -1] > -math.log(2)  # the final image shows the requested digit with p > 1/2
    aucs = [float((sc[right, k][:, None] > sc[~right, k][None]).double().mean()) for k in range(sc.shape[1])]
    print("partial-reward AUC per scale (final class right vs wrong): " + ", ".join(f"{a:.2f}" for a in aucs))
    # An oracle pruner on these independent trajectories: draw sizes[0] of them per request, keep the
    # sizes[k + 1] best partial rewards after scale k (no duplicates), return the best final one.
    # Keeping a trajectory and continuing it is the same in distribution as continuing it afresh.
    S, g = sc.shape[1], torch.Generator().manual_seed(0)
    for b in (int(x) for x in args.budgets.split(",")):
        for sizes in {(b,) * S, TTSVAR().schedule(S, b)[0]}:
            reward_sum = right_sum = 0.0
            for _ in range(3000):
                idx = torch.randperm(len(sc), generator=g)[: sizes[0]]
                for k in range(S - 1):
                    idx = idx[sc[idx, k].argsort(descending=True)[: sizes[k + 1]]]
                best = float(sc[idx, -1].max())
                reward_sum, right_sum = reward_sum + best, right_sum + (best > -math.log(2))
            what = "best-of-N" if len(set(sizes)) == 1 else "oracle top-k pruning"
            print(f"  {what} {list(sizes)}: mean reward {reward_sum / 3000:.4f}, class acc. {100 * right_sum / 3000:.2f} %")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mnist-scale")
    ap.add_argument("--n-per-class", type=int, default=200)
    ap.add_argument("--budgets", default="2,4")
    ap.add_argument("--cfg", type=float, help="guidance (default: the model's own)")
    ap.add_argument("--temperature", type=float, help="sampling temperature (default: the model's own; the README's table: 1)")
    ap.add_argument("--reward", default="mnist-classifier")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--auc", action="store_true", help="also: how well each scale's partial reward predicts the final class")
    ap.add_argument("--tts", action="append", default=[], help="extra TTS-VAR variant name=sizes;clusters;resamples;potential;lam")
    args = ap.parse_args()
    pipe = arvision.load(args.model)
    extractor = MnistFeatures()
    reference = load_reference("mnist:test", extractor, progress=False)
    from arvision.rewards import get_reward

    reward = get_reward(args.reward)
    labels = balanced_labels(args.n_per_class * pipe.num_classes, pipe.num_classes)
    tokens_per_scale = [p * p for p in getattr(pipe.generator.config, "patch_nums", ())]

    def row(name: str, **kw) -> None:
        t0 = time.perf_counter()
        out = pipe.sample(labels.tolist(), 1, seed=args.seed, batch_size=args.batch_size, cfg=args.cfg,
                          temperature=args.temperature, **kw)
        secs = time.perf_counter() - t0
        feats, logits = extractor.extract(to_uint8(out.images))
        sc = score_features(feats, logits, reference, kid_subsets=10)
        acc = float((logits.argmax(1) == out.labels).double().mean())
        r = out.scores if out.scores is not None else reward(out.images, out.labels)
        st, n = out.stats, len(labels)
        search = kw.get("search")
        sizes = search.schedule(len(tokens_per_scale), kw["budget"])[0] if isinstance(search, TTSVAR) else None
        per_cand = sum(tokens_per_scale)
        cand_tokens = (sum(b * t for b, t in zip(sizes, tokens_per_scale)) if sizes else
                       per_cand * st.candidate_passes / max(st.forward_passes_per_image, 1) / n)  # fmt: skip
        print(f"| {name} | {st.candidate_passes / n:.1f} | {cand_tokens:.0f} | {st.reward_evaluations / n:.1f} | "
              f"{r.mean():.4f} | {100 * acc:.2f} % | {sc['fid']:.2f} | {sc['precision']:.3f} | {sc['recall']:.3f} | "
              f"{1000 * secs / n:.1f} |", flush=True)  # fmt: skip

    s = pipe.sampling_config(cfg=args.cfg, temperature=args.temperature)
    print(f"{args.model}, cfg {s.cfg}, temperature {s.temperature}, {len(labels)} images, reward {args.reward}")
    print("| method | cand. passes / image | cand. tokens / image | rewards / image | mean reward | class acc. | MNIST-FID | "
          "precision | recall | ms / image |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    row("plain")
    if args.auc:
        partial_reward_auc(pipe, reward, labels, args)
    for b in (int(x) for x in args.budgets.split(",")):
        row(f"best-of-{b}", search="best-of-n", reward=reward, budget=b)
        tts = TTSVAR()
        sizes, clusters, resample = tts.schedule(len(tokens_per_scale), b)
        row(f"TTS-VAR, budget {b} {list(sizes)}, clusters {list(clusters)}, resample {list(resample)}",
            search=tts, reward=reward, budget=b)  # fmt: skip
        for spec in args.tts:
            name, variant = parse_tts(spec)
            try:
                variant.schedule(len(tokens_per_scale), b)
            except ValueError as e:
                print(f"| TTS-VAR {name}, budget {b} | skipped: {e} |")
                continue
            row(f"TTS-VAR {name}, budget {b}", search=variant, reward=reward, budget=b)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
