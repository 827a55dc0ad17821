"""Evaluation drivers: a tokenizer on held-out images, a generator's samples against real data.

:func:`evaluate_generator` generates ``n`` class-balanced samples in fixed-size chunks; sample i
has its own random stream (``image_seeds(seed, n)[i]``), so the samples do not depend on the chunk
size, on how many processes share the work or on where an interrupted run resumed. Every chunk is written to ``out_dir/chunks/`` (images, labels, features,
logits) as soon as it is done: a rerun skips finished chunks. Under ``torchrun`` rank r takes
chunks r, r+W, ...; rank 0 then reads every chunk exactly once and computes the metrics.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from arvision.errors import DataError
from arvision.metrics import CodebookStats, ReconstructionMeter
from arvision.metrics.features import FeatureExtractor, Reference, save_samples_npz, to_uint8
from arvision.metrics.generative import FeatureStats, frechet_distance, inception_score, kernel_inception_distance, precision_recall
from arvision.outputs import check_memory, write_json
from arvision.pipeline import pop_call_options
from arvision.runtime import check_precision
from arvision.samplers.collaborative import check_pairing
from arvision.samplers.rng import image_seeds
from arvision.samplers.search import search_record
from arvision.tokenizers import Tokenizer

if TYPE_CHECKING:
    from arvision.pipeline import Pipeline
    from arvision.distributed import DistInfo


@torch.no_grad()
def evaluate_tokenizer(
    tokenizer: Tokenizer, dataset: Dataset, *, batch_size: int = 256, limit: int | None = None, progress: bool = True,
    features: FeatureExtractor | None = None, timing: bool = False, code_counts: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Encode + decode ``dataset`` in order and return reconstruction and codebook metrics.

    PSNR and SSIM are means of per-image values on images mapped to [0, 1]; ``codebook_usage`` is
    the percentage of codes used at least once over the whole set; ``code_perplexity`` is
    exp(entropy) of the code frequencies. A tokenizer with continuous tokens has no codebook:
    instead ``token_std`` is the standard deviation of all token values and ``token_std_min`` /
    ``token_std_max`` the smallest and largest per-channel one (a generator wants them near 1).
    With ``features``, ``rfid`` is the FID between the reconstructions and the originals under
    that network. With ``timing``, ``encode_ms`` and ``decode_ms`` are the wall time per image of
    encode and decode at ``batch_size`` (the first batch, a warm-up, not counted when there are more).
    ``dead_codes`` is the number of codes never used; with ``code_counts`` the per-code counts are
    returned too (a list of V ints, ``code_counts``).
    """
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    continuous = tokenizer.layout.continuous
    recon = ReconstructionMeter()
    codes = _TokenStats() if continuous else CodebookStats(tokenizer.codebook_size)
    real_stats = fake_stats = None
    if features is not None:
        real_stats, fake_stats = FeatureStats(features.dim), FeatureStats(features.dim)
    device = tokenizer.device
    was_training = tokenizer.training
    tokenizer.eval()
    n_batches = -(-len(dataset) // batch_size)
    seconds, timed = [0.0, 0.0], 0
    for i, x in enumerate(tqdm(ordered_batches(dataset, batch_size), total=n_batches, desc="evaluate", disable=not progress, leave=False)):
        x = x.to(device)
        t0 = time.perf_counter()
        tokens = tokenizer.encode(x)
        t1 = time.perf_counter()
        y = tokenizer.decode(tokens)
        t2 = time.perf_counter()
        if timing and (i > 0 or n_batches == 1):
            seconds[0], seconds[1], timed = seconds[0] + t1 - t0, seconds[1] + t2 - t1, timed + x.shape[0]
        codes.update(tokens)
        recon.update(y, x)
        if features is not None:
            real_stats.update(features(to_uint8((x + 1) / 2))[0])
            fake_stats.update(features(to_uint8((y + 1) / 2))[0])
    tokenizer.train(was_training)
    out: dict[str, Any] = {**recon.compute(), **codes.as_dict()}
    if not continuous:
        out["dead_codes"] = int((codes.counts == 0).sum())
        if code_counts:
            out["code_counts"] = codes.counts.tolist()
    if features is not None:
        out[f"rfid_{features.name}"] = frechet_distance(fake_stats, real_stats)
    if timing:
        out["encode_ms"], out["decode_ms"] = 1000 * seconds[0] / timed, 1000 * seconds[1] / timed
    return out


@torch.no_grad()
def evaluate_prefixes(tokenizer: Tokenizer, dataset: Dataset, lengths: Sequence[int], *, batch_size: int = 256,
                      limit: int | None = None) -> dict[int, dict[str, float]]:  # fmt: skip
    """Reconstruction PSNR/SSIM when only the first k tokens are decoded, for each k in ``lengths``
    (a tokenizer of 1-D sequences whose ``decode`` takes a prefix, e.g. ``OneDimTokenizer``)."""
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    meters = {k: ReconstructionMeter() for k in lengths}
    device = next(tokenizer.parameters()).device
    was_training = tokenizer.training
    tokenizer.eval()
    for x in ordered_batches(dataset, batch_size):
        x = x.to(device)
        tokens = tokenizer.encode(x)
        for k, meter in meters.items():
            meter.update(tokenizer.decode(tokens[:, :k]), x)
    tokenizer.train(was_training)
    return {k: meter.compute() for k, meter in meters.items()}

class _TokenStats:
    """Per-channel mean/std of continuous tokens (B, L, D), accumulated in float64."""

    def __init__(self) -> None:
        self.n, self.sum, self.sumsq = 0, 0.0, 0.0

    def update(self, tokens_BLD: torch.Tensor) -> None:
        t = tokens_BLD.detach().reshape(-1, tokens_BLD.shape[-1]).double().cpu()
        self.n += t.shape[0]
        self.sum, self.sumsq = self.sum + t.sum(0), self.sumsq + t.square().sum(0)

    def as_dict(self) -> dict[str, float]:
        mean = self.sum / self.n
        var = (self.sumsq / self.n - mean.square()).clamp_min(0)  # per channel
        total = (self.sumsq.sum() / self.n / len(mean) - mean.mean() ** 2).clamp_min(0)
        std = var.sqrt()
        return {"token_std": total.sqrt().item(), "token_std_min": std.min().item(), "token_std_max": std.max().item()}


def ordered_batches(dataset: Dataset, batch_size: int) -> Iterator[torch.Tensor]:
    """Image batches in dataset order (in-memory datasets are sliced without a DataLoader)."""
    images = getattr(dataset, "images", None)
    if isinstance(images, torch.Tensor):
        for i in range(0, len(images), batch_size):
            yield images[i : i + batch_size]
        return
    for x, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        yield x


# -- generators ---------------------------------------------------------------------------------
def balanced_count(n: int, num_classes: int) -> int:
    """``n`` rounded up to a multiple of ``num_classes`` (warns when it changes): equal samples per class."""
    if num_classes > 1 and n % num_classes:
        up = -(-n // num_classes) * num_classes
        warnings.warn(f"n={n} is not a multiple of the {num_classes} classes: generating {up} samples ({up // num_classes} "
                      "per class) so that every class is equally represented (an uneven mix biases FID and KID)",
                      stacklevel=3)  # fmt: skip
        return up
    return n


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """``n`` class ids cycling 0, 1, ..., K-1, 0, 1, ... (every class within one of n/K)."""
    return torch.arange(n) % num_classes


def _save_chunk(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # atomic: an interrupted write never leaves a half chunk


def _load_chunk(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path) as f:
            return {k: f[k] for k in ("images", "labels", "features", "logits", "undecodable") if k != "undecodable" or k in f}
    except Exception:  # noqa: BLE001 - unreadable chunk: regenerate it
        return None


def evaluate_generator(
    pipe: "Pipeline", extractor: FeatureExtractor, reference: Reference | None, *, n: int, out_dir: str | os.PathLike,
    batch_size: int = 100, seed: int = 0, progress: bool = True, dist: "DistInfo | None" = None, model: str | None = None,
    kid_subsets: int = 100, kid_subset_size: int = 1000, pr_k: int = 3, overwrite: bool = False, **sampling,
) -> dict | None:  # fmt: skip
    """Generate ``n`` class-balanced samples, extract features and score them against ``reference``.

    An ``n`` that is not a multiple of the number of classes is rounded up to the next multiple
    (with a warning; ``n_requested`` in ``run.json``): with some classes one sample short, the
    class mix would differ from the reference's and bias FID and KID. ``out_dir`` holding another
    evaluation run is refused unless ``overwrite`` (its samples are then deleted).

    Returns the report (also written to ``out_dir/report.json``) on rank 0 and None on other ranks.
    Samples are written to ``out_dir/samples.npz`` (``arr_0`` uint8 NHWC, ``arr_1`` labels).
    """
    from arvision.distributed import DistInfo, barrier

    dist = dist or DistInfo()
    if n < 2:
        raise ValueError(f"n must be at least 2 samples, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if kid_subsets < 1 or kid_subset_size < 2:  # checked before sampling, not after it
        raise ValueError(f"KID needs kid_subsets >= 1 and kid_subset_size >= 2, got {kid_subsets} and {kid_subset_size}")
    out = Path(out_dir)
    chunks_dir = out / "chunks"
    requested, n = n, balanced_count(n, pipe.num_classes)
    c = pipe.tokenizer.config
    check_memory(n * (c.in_channels * c.image_size**2 + 4 * extractor.dim + 8), f"scoring n={n:,} samples",
                 "lower -n (the samples, their features and labels are held together to score them)")  # fmt: skip
    models = pop_call_options(sampling)  # models, search, precision: not settings
    s = pipe.sampling_config(**sampling)  # checked: bad settings fail before any file is written
    check_pairing(models.get("refiner") is not None, s)
    precision = check_precision(models.get("precision") or "fp32", pipe.device)
    models = pipe.resolve_models(models)  # a draft or refiner loaded once, not per chunk
    # the weights, not only the name: a model retrained under the same name must not resume old samples
    run = {"model": model or pipe.info.get("preset", "?"), "weights": pipe.weights_record(models), "n": n, "batch_size": batch_size,
           "seed": seed, "seeding": "per-image", "sampling": s.to_dict(), "features": extractor.name, "sampling_precision": precision}  # fmt: skip
    if n != requested:
        run["n_requested"] = requested
    if models.get("search") is not None:  # a test-time search: recorded, and its reward loaded once
        from arvision.rewards import get_reward

        run["search"] = search_record(models["search"], budget=models.get("budget"), reward=models.get("reward"))
        if models.get("reward") is not None:
            models["reward"] = get_reward(models["reward"], device=pipe.device)
    manifest = out / "run.json"
    if dist.is_main:
        chunks_dir.mkdir(parents=True, exist_ok=True)
        if manifest.is_file():
            old = json.loads(manifest.read_text())
            old.setdefault("sampling_precision", "fp32")  # recorded since bf16 sampling exists; before, every run was fp32
            settings = lambda r: {k: v for k, v in r.items() if k != "n_requested"}  # -n 15 and 16: the same 20 samples
            if settings(old) != settings(run):
                if not overwrite:
                    diff = sorted(k for k in run if old.get(k) != run[k])
                    raise DataError(f"{out} holds samples of another evaluation run (different {', '.join(diff)}): "
                                    "pass --overwrite to replace them, or use a fresh output directory")  # fmt: skip
                for f in [*chunks_dir.glob("*.npz"), out / "report.json", out / "samples.npz"]:  # only this run's own files
                    f.unlink(missing_ok=True)
            if old != run:
                write_json(manifest, run)
        else:
            write_json(manifest, run)
    barrier(dist)
    labels = balanced_labels(n, pipe.num_classes)
    n_chunks = -(-n // batch_size)
    mine = [i for i in range(n_chunks) if i % dist.world_size == dist.rank]
    todo = [i for i in mine if _load_chunk(chunks_dir / f"{i:06d}.npz") is None]
    seconds = {"generate": 0.0, "features": 0.0}
    steps: list[float] = []
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"samples (rank {dist.rank})" if dist.enabled else "samples",
               unit="chunk", disable=not progress)  # fmt: skip
    for i in todo:
        lab = labels[i * batch_size : (i + 1) * batch_size]
        t0 = time.perf_counter()
        res = pipe.sample(lab.tolist(), 1, seed=image_seeds(seed, len(lab), start=i * batch_size), batch_size=len(lab), **models, **sampling)
        images = to_uint8(res.images).cpu()
        t1 = time.perf_counter()
        feats, logits = extractor(images)
        seconds["generate"] += t1 - t0
        seconds["features"] += time.perf_counter() - t1
        steps.append(res.stats.candidate_passes / max(res.stats.images, 1) if "search" in run else res.stats.forward_passes_per_image)
        _save_chunk(chunks_dir / f"{i:06d}.npz", images=images.numpy(), labels=lab.numpy(),
                    features=feats.cpu().numpy(), logits=logits.cpu().numpy(),
                    undecodable=np.array(res.stats.undecodable))  # fmt: skip
        bar.update(1)
    bar.close()
    barrier(dist)
    if not dist.is_main:
        return None
    parts = []
    for i in range(n_chunks):
        c = _load_chunk(chunks_dir / f"{i:06d}.npz")
        if c is None:
            raise DataError(f"chunk {i} of {out} is missing or unreadable after generation; rerun to regenerate it")
        parts.append(c)
    images = torch.from_numpy(np.concatenate([c["images"] for c in parts]))
    got_labels = torch.from_numpy(np.concatenate([c["labels"] for c in parts]))
    feats = torch.from_numpy(np.concatenate([c["features"] for c in parts]))
    logits = torch.from_numpy(np.concatenate([c["logits"] for c in parts]))
    save_samples_npz(out / "samples.npz", images, got_labels)
    report = {**run, "num_samples": len(feats)}
    report.update(score_features(feats, logits, reference, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, pr_k=pr_k))
    if getattr(pipe.tokenizer, "may_fail_to_decode", False):  # a codec: generated streams that are no valid file are blank
        bad = sum(int(c.get("undecodable", 0)) for c in parts)
        report["undecodable"], report["decode_rate"] = bad, 1 - bad / len(feats)
    if extractor.name == "mnist":
        report["class_accuracy"] = float((logits.argmax(1) == got_labels).double().mean())
    if todo and dist.world_size == 1:  # timings of this process's work (absent when everything was resumed)
        made = sum(min(batch_size, n - i * batch_size) for i in todo)
        report["seconds_per_image"] = seconds["generate"] / made
        report["feature_seconds_per_image"] = seconds["features"] / made
        key = "candidate_passes_per_image" if "search" in run else "forward_passes_per_image"  # a search: every candidate's
        report[key] = sum(steps) / len(steps)
    write_json(out / "report.json", report)
    return report


def score_features(features: torch.Tensor, logits: torch.Tensor, reference: Reference | None, *, kid_subsets: int = 100,
                   kid_subset_size: int = 1000, pr_k: int = 3, is_splits: int = 10) -> dict[str, float]:  # fmt: skip
    """FID/KID/precision/recall against ``reference`` (those it allows) and IS of ``logits``."""
    out: dict[str, float] = {}
    splits = min(is_splits, len(logits))
    out["is"], out["is_std"] = inception_score(logits, splits)
    if reference is None:
        return out
    if reference.stats.dim != features.shape[1]:
        raise DataError(f"reference {reference.name} has {reference.stats.dim}-d features, the samples {features.shape[1]}-d")
    out["fid"] = frechet_distance(FeatureStats.of(features), reference.stats)
    if reference.features is not None:
        out["kid"], out["kid_std"] = kernel_inception_distance(features, reference.features, subsets=kid_subsets,
                                                               subset_size=kid_subset_size)  # fmt: skip
        if min(len(features), len(reference.features)) > pr_k:
            out["precision"], out["recall"] = precision_recall(reference.features, features, k=pr_k)
    return out
