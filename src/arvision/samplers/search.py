"""Test-time search: spend more generator compute per image, keep what a reward prefers.

* :class:`BestOfN` (every order): decode N candidates per requested image, keep the one with the
  highest reward. The baseline every search is compared with at equal compute.
* :class:`TTSVAR` (next-scale orders; Chen et al. 2025, "TTS-VAR", arXiv:2507.18537): candidates
  decode scale by scale in one batch whose size per scale descends (``batch_sizes``: many cheap
  coarse candidates, few expensive fine ones). After a *cluster* scale the batch shrinks by
  clustering-based diversity search: features of each candidate's partial image, k-means with as
  many clusters as the next batch size, the candidate nearest each centre kept (coarse tokens are
  hard to judge by a reward, so keep structural variety). After a *resample* scale the next batch
  is drawn with replacement by potential selection: the reward of each partial image turns into a
  potential (``value``: the current reward; ``diff``: its gain since the candidate's last scored
  scale; ``max``/``sum``: over the candidate's scored history, which follows its lineage) and the
  draw is proportional to exp(``lam`` * potential) within each request. After the last scale the
  best final candidate by reward is kept.

Compute is counted per candidate: ``stats.candidate_passes`` = forward passes x the candidates
each one computed (a best-of-N with N candidates over S scales costs N x S per image), and
``stats.reward_evaluations`` = images scored. ``budget`` is in units of one plain decoding per
image: best-of-N decodes ``budget`` candidates; TTS-VAR's default schedule places its selections
where the paper does (clusters after ~2/13 and ~5/13 of the scales, resampling after ~6/13, 8/13
and 10/13) and descends from 1.25 x ``budget`` to 0.75 x ``budget`` candidates within ``budget`` x S
candidate passes. The paper's steeper 4:2:1 descent (16 -> 4 over 13 scales) leaves few final
candidates to choose from at equal passes and measured worse on MNIST (README, "Test-time
search"); pass ``batch_sizes`` for it.

Legend: B rows of the batch (requests x candidates), Q requests, K candidates per request, L tokens.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from arvision.config import Config
from arvision.samplers.config import SamplingConfig
from arvision.rewards import check_scores
from arvision.samplers.loop import DecodeOutput, DecodeRun, SamplingStats, check_settings
from arvision.samplers.order import Order
from arvision.samplers.rng import Rng, expand, multinomial, randint, request_stream, rng_device

POTENTIALS = ("value", "diff", "max", "sum")
RewardFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True, kw_only=True)
class BestOfN(Config):
    """Best-of-N: ``n`` candidates per image (None = the call's ``budget``)."""

    n: int | None = None

    def __post_init__(self) -> None:
        if self.n is not None and (isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1):
            raise ValueError(f"BestOfN.n must be a positive number of candidates per image, got {self.n!r}")


@dataclass(frozen=True, kw_only=True)
class TTSVAR(Config):
    """TTS-VAR settings (see the module docstring); None = derived from the budget and the number of scales.

    Args:
        batch_sizes: candidates per image decoding each scale; may change only after a cluster
            scale (shrink) or a resample scale (any size).
        cluster_scales: scales (0-based) after which k-means diversity selection shrinks the batch.
        resample_scales: scales after which the next batch is drawn by potential.
        potential: "value", "diff", "max" or "sum" (over the candidate's scored history).
        lam: sharpness of the draw, exp(lam * potential) (TTS-VAR: 10 for rewards of order 1).
        features: what clustering compares: "pixels" (the partial image area-downsampled to
            ``feature_size`` x ``feature_size``) or a callable images (B, C, H, W) in [0, 1] -> (B, D).
    """

    batch_sizes: tuple[int, ...] | None = None
    cluster_scales: tuple[int, ...] | None = None
    resample_scales: tuple[int, ...] | None = None
    potential: str = "value"
    lam: float = 1.0
    features: str | Callable[[Tensor], Tensor] = "pixels"
    feature_size: int = 8

    def __post_init__(self) -> None:
        if self.potential not in POTENTIALS:
            raise ValueError(f"potential must be one of {POTENTIALS}, got {self.potential!r}")
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise ValueError(f"lam (sharpness of the potential draw) must be a finite number >= 0, got {self.lam}")
        if self.batch_sizes is not None and (not self.batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1
                                                                        for b in self.batch_sizes)):  # fmt: skip
            raise ValueError(f"batch_sizes must be positive candidate counts, one per scale, got {self.batch_sizes}")
        if not callable(self.features) and self.features != "pixels":
            raise ValueError(f"features must be 'pixels' or a callable images -> (B, D) features, got {self.features!r}")
        if self.feature_size < 1:
            raise ValueError(f"feature_size must be >= 1, got {self.feature_size}")

    def schedule(self, num_scales: int, budget: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(batch sizes, cluster scales, resample scales) for ``num_scales`` scales within ``budget``
        plain decodings per image; a clear error for settings that do not fit."""
        S = num_scales
        at = lambda f: min(max(round(S * f), 1), S - 1)  # noqa: E731  (a share of the scales -> a scale index)
        clusters = self.cluster_scales if self.cluster_scales is not None else tuple(sorted({at(2 / 13), at(5 / 13)} - {S - 1}))
        resample = self.resample_scales if self.resample_scales is not None else tuple(
            sorted({at(f) for f in (6 / 13, 8 / 13, 10 / 13)} - set(clusters) - {S - 1}))  # fmt: skip
        for name, scales in (("cluster_scales", clusters), ("resample_scales", resample)):
            if any(not 0 <= k < S - 1 for k in scales):
                raise ValueError(f"{name}={scales}: selection happens after a scale that has a next one, 0..{S - 2} for {S} scales")
        if set(clusters) & set(resample):
            raise ValueError(f"scale(s) {sorted(set(clusters) & set(resample))} are both cluster and resample scales: pick one each")
        sizes = self.batch_sizes or _default_sizes(S, budget, set(clusters) | set(resample))
        if len(sizes) != S:
            raise ValueError(f"batch_sizes={sizes}: give one candidate count per scale, {S} for this model")
        for k in range(S - 1):
            if sizes[k + 1] != sizes[k] and k not in clusters and k not in resample:
                raise ValueError(f"batch_sizes={sizes}: the batch changes after scale {k}, which is neither a cluster nor a "
                                 f"resample scale (cluster_scales={clusters}, resample_scales={resample})")  # fmt: skip
            if k in clusters and sizes[k + 1] > sizes[k]:
                raise ValueError(f"batch_sizes={sizes}: clustering after scale {k} keeps one candidate per cluster, so the "
                                 f"batch cannot grow there ({sizes[k]} -> {sizes[k + 1]}); grow it at a resample scale")  # fmt: skip
        if sum(sizes) > budget * S:
            raise ValueError(f"batch_sizes={sizes} cost {sum(sizes)} candidate passes per image, more than budget={budget} "
                             f"plain decodings of {S} scales ({budget * S}); raise the budget or shrink the batches")  # fmt: skip
        return tuple(sizes), tuple(clusters), tuple(resample)


def _default_sizes(S: int, budget: int, selections: set[int]) -> tuple[int, ...]:
    """Candidates per scale descending from 1.25 x budget to 0.75 x budget, changing only after a
    selection scale, trimmed (largest first) to fit ``budget`` x S candidate passes."""
    sizes, size = [], None
    for k in range(S):
        if size is None or k - 1 in selections:
            size = max(1, math.floor(budget * (1.25 - 0.5 * k / max(S - 1, 1)) + 0.5))
        sizes.append(size)
    while sum(sizes) > budget * S:
        i = max(range(S), key=lambda j: (sizes[j], -j))  # the largest, the first of equals
        j = i
        while j + 1 < S and sizes[j + 1] == sizes[i] and j not in selections:  # a run between selections shrinks together
            j += 1
        for t in range(i, j + 1):
            sizes[t] -= 1
    return tuple(sizes)


def check_budget(budget) -> int:
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise TypeError(f"budget must be an integer number of plain decodings per image, got {budget!r}")
    if budget < 1:
        raise ValueError(f"budget={budget} is smaller than the request: every image needs at least one plain decoding, so "
                         "use budget >= 1 (budget N = the compute of N candidates per image)")  # fmt: skip
    return budget


def search_record(search: "str | BestOfN | TTSVAR", *, budget: int | None, reward) -> dict:
    """What a run records of a test-time search (``run.json`` of ``eval generator`` and of
    ``generate --out-dir``): the method, its settings, the budget and the reward, JSON-safe (a
    callable reward by its repr)."""
    method = search if isinstance(search, str) else type(search).__name__
    settings = {} if isinstance(search, str) else dataclasses.asdict(search)
    return json.loads(json.dumps({"method": method, **settings, "budget": budget, "reward": reward}, default=repr))


def make_search(search: "str | BestOfN | TTSVAR") -> "BestOfN | TTSVAR":
    if isinstance(search, (BestOfN, TTSVAR)):
        return search
    if search in ("best-of-n", "bon"):
        return BestOfN()
    if search in ("tts-var", "ttsvar"):
        return TTSVAR()
    raise ValueError(f"unknown search {search!r}: use 'best-of-n', 'tts-var' or a BestOfN(...) / TTSVAR(...) instance")


def _score(reward: RewardFn, images_BCHW: Tensor, labels_B: Tensor) -> Tensor:
    return check_scores(reward(images_BCHW.add(1).div(2).clamp(0, 1), labels_B), images_BCHW.shape[0])


def _best_per_request(scores_B: Tensor, K: int) -> Tensor:
    """Row index of the best of each request's K consecutive candidates (ties: the first)."""
    Q = scores_B.shape[0] // K
    return scores_B.view(Q, K).argmax(1) + torch.arange(Q) * K


def kmeans(x_ND: Tensor, k: int, rng: Rng, iters: int = 25) -> Tensor:
    """Centres (k, D) (float64) of k-means on the rows of ``x`` (k <= N): a k-means++ start drawn
    with ``rng``, then Lloyd iterations until nothing moves (a centre that loses every row stays put)."""
    N = x_ND.shape[0]
    x = x_ND.double()
    first = int(randint(N, (1,), rng, device=rng_device(rng)))
    centres = [x[first]]
    for _ in range(1, k):  # k-means++: the next centre drawn proportionally to the squared distance
        d2 = torch.cdist(x, torch.stack(centres)).amin(1).square()
        nxt = int(multinomial((d2 / d2.sum()).to(rng_device(rng)), 1, rng)) if d2.sum() > 0 else len(centres)
        centres.append(x[nxt])
    c = torch.stack(centres)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(1)
        new = torch.stack([x[assign == j].mean(0) if (assign == j).any() else c[j] for j in range(k)])
        if torch.equal(new, c):
            break
        c = new
    return c


def kmeans_select(x_ND: Tensor, k: int, rng: Rng, iters: int = 25) -> Tensor:
    """Indices of ``k`` distinct rows of ``x``: k-means (k-means++ start), the row nearest each centre."""
    N = x_ND.shape[0]
    if k >= N:
        return torch.arange(N)
    d = torch.cdist(kmeans(x_ND, k, rng, iters), x_ND.double())  # (k, N)
    chosen: list[int] = []
    for j in range(k):  # nearest member to each centre, distinct (a centre whose nearest is taken takes its next)
        for i in d[j].argsort().tolist():
            if i not in chosen:
                chosen.append(i)
                break
    return torch.tensor(chosen)


@torch.no_grad()
def best_of_n(generator, tokenizer, labels_Q: Tensor, s: SamplingConfig, rng: Rng, *, reward: RewardFn,
              n: int, decode_fn: Callable[..., DecodeOutput], progress: bool = False) -> tuple[DecodeOutput, Tensor, Tensor]:  # fmt: skip
    """(output, images in [-1, 1], scores) of the best of ``n`` candidates per request; ``decode_fn``
    decodes a batch (the plain loop or speculative decoding)."""
    t0 = time.perf_counter()
    labels_B = labels_Q.repeat_interleave(n)
    out = decode_fn(generator, tokenizer, labels_B, s, expand(rng, n), progress=progress)  # candidate 0: the plain image's stream
    images = generator.order_class(generator, tokenizer).images(out.state)  # the order's images (FlexVAR: the schedule's size)
    scores = _score(reward, images, labels_B)
    best = _best_per_request(scores, n).to(out.tokens.device)
    st = out.stats
    stats = SamplingStats(forward_passes=st.forward_passes, tokens=st.tokens, images=len(labels_Q), batches=1,
                          seconds=time.perf_counter() - t0, draft_passes=st.draft_passes,
                          passes_until_done=st.passes_until_done // n, candidate_passes=st.candidate_passes,
                          reward_evaluations=len(labels_B))  # fmt: skip
    return DecodeOutput(tokens=out.tokens[best], state=out.state, stats=stats), images[best], scores[best.cpu()]


@torch.no_grad()
def tts_var(generator, tokenizer, labels_Q: Tensor, s: SamplingConfig, rng: Rng, *, reward: RewardFn,
            budget: int, config: TTSVAR, progress: bool = False) -> tuple[DecodeOutput, Tensor, Tensor]:  # fmt: skip
    """(output, images in [-1, 1], scores) of TTS-VAR for every request (see the module docstring)."""
    t0 = time.perf_counter()
    groups = check_settings(generator, s, tokenizer)[-1].group + 1
    if generator.order_class.preview is Order.preview:  # no partial image to score
        raise ValueError(f"search='tts-var' scores partial images between scales, which the {generator.order_class.name} order does not "
                         "have: use it with a next-scale model (e.g. mnist-scale), or search='best-of-n' for any order")  # fmt: skip
    sizes, clusters, resample = config.schedule(groups, budget)
    Q = labels_Q.shape[0]
    run = DecodeRun(generator, tokenizer, labels_Q.repeat_interleave(sizes[0]), s, expand(rng, sizes[0]))
    history: Tensor | None = None  # (B, scored scales so far): the candidates' rewards along their lineage
    evaluations = 0
    last = {st.group: st.index for st in run.plan}
    for step in tqdm(run.plan, desc="tts-var", leave=False) if progress else run.plan:
        run.step(step)
        k = step.group
        if step.index != last[k] or k == groups - 1 or (k not in clusters and k not in resample):
            continue
        K, K_next = sizes[k], sizes[k + 1]
        images = run.order.preview(run.state)
        if k in clusters:
            feats = _features(images, config)
            rows = torch.cat([kmeans_select(feats[q * K : (q + 1) * K], K_next, request_stream(rng, q)) + q * K for q in range(Q)])
        else:
            scores = _score(reward, images, run.labels_B)
            evaluations += len(scores)
            history = scores[:, None] if history is None else torch.cat([history, scores[:, None]], 1)
            weights = (config.lam * _potential(history, config.potential)).view(Q, K).softmax(1)
            drawn = multinomial(weights.to(rng_device(rng)), K_next, rng, replacement=True).cpu()
            rows = (drawn + torch.arange(Q)[:, None] * K).flatten()
        run.select(rows)
        if history is not None:
            history = history[rows]
    images = run.order.images(run.state)
    scores = _score(reward, images, run.labels_B)
    evaluations += len(scores)
    best = _best_per_request(scores, sizes[-1]).to(images.device)
    out = run.output(t0)
    st = out.stats
    st.images, st.passes_until_done, st.reward_evaluations = Q, len(run.plan) * Q, evaluations
    st.seconds = time.perf_counter() - t0
    return DecodeOutput(tokens=out.tokens[best], state=out.state, stats=st), images[best], scores[best.cpu()]


def _features(images_BCHW: Tensor, config: TTSVAR) -> Tensor:
    x = images_BCHW.add(1).div(2).clamp(0, 1)
    if callable(config.features):
        f = config.features(x)
        if not isinstance(f, Tensor) or f.ndim != 2 or f.shape[0] != x.shape[0] or not torch.isfinite(f).all():
            raise ValueError(f"the clustering features must be a finite tensor ({x.shape[0]}, D), got "
                             f"{tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__}")  # fmt: skip
        return f.float().cpu()
    return F.adaptive_avg_pool2d(x.float(), config.feature_size).flatten(1).cpu()


def _potential(history_BT: Tensor, kind: str) -> Tensor:
    """The potential of each candidate from its scored history (last column = now)."""
    now = history_BT[:, -1]
    if kind == "value" or history_BT.shape[1] == 1:
        return now
    if kind == "diff":
        return now - history_BT[:, -2]
    if kind == "max":
        return history_BT.amax(1)
    return history_BT.sum(1)
