"""Pure functions from logits to tokens: guidance, temperature, top-k, top-p, sampling.

They follow the anchors' definitions exactly (so that converted official models give official
outputs): top-k keeps every logit >= the k-th largest (ties kept); top-p drops the tokens whose
ascending cumulative probability is <= 1 - p (the most likely token is always kept); sampling is
one ``torch.multinomial`` call over all rows with the caller's generator.

Legend: N rows (batch x positions), V vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

from arvision.samplers import rng as rng_


def guidance_weight(cfg: float, schedule: str, step: int, num_steps: int, progress: float | None = None) -> float:
    """The guidance strength of ``step`` (0-based) out of ``num_steps`` (see SamplingConfig);
    ``progress``: the share of tokens decided after the step (``mar-linear``; default (step + 1) / num_steps)."""
    if schedule == "linear":
        return cfg * step / max(num_steps - 1, 1)
    if schedule == "mar-linear":
        return 1 + (cfg - 1) * ((step + 1) / num_steps if progress is None else progress)
    return cfg


def apply_guidance(cond_NV: Tensor, uncond_NV: Tensor, weight: float, schedule: str) -> Tensor:
    """Classifier-free guidance on logits, in each anchor's own arithmetic.

    ``constant`` (LlamaGen) and ``mar-linear`` (MAR): uncond + w (cond - uncond). ``linear`` (VAR):
    (1 + w) cond - w uncond.
    """
    if schedule == "linear":
        return cond_NV.mul(1 + weight) - uncond_NV.mul(weight)
    return uncond_NV + (cond_NV - uncond_NV) * weight


def filter_top_k(logits_NV: Tensor, k: int) -> Tensor:
    if k <= 0 or k >= logits_NV.shape[-1]:
        return logits_NV
    kth = logits_NV.topk(k, dim=-1).values[..., -1:]
    return logits_NV.masked_fill(logits_NV < kth, float("-inf"))


def filter_top_p(logits_NV: Tensor, p: float) -> Tensor:
    if p <= 0 or p >= 1:
        return logits_NV
    sorted_logits, idx = logits_NV.sort(dim=-1, descending=False)
    remove_sorted = sorted_logits.softmax(-1).cumsum(-1) <= 1 - p
    remove_sorted[..., -1] = False
    return logits_NV.masked_fill(remove_sorted.scatter(-1, idx, remove_sorted), float("-inf"))


def sampling_probs(logits_NV: Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 0.0) -> Tensor:
    """The float distribution sampling draws from: temperature, then top-k, then top-p, then softmax.
    (``top_k == 1``, greedy, is an argmax in :func:`sample_logits`, not a draw from these.)
    bf16 logits (a head run under bf16 autocast) are taken to float32 first (a no-op for fp32)."""
    logits_NV = logits_NV.float()
    if temperature != 1.0:
        logits_NV = logits_NV / max(temperature, 1e-5)
    return filter_top_p(filter_top_k(logits_NV, top_k), top_p).float().softmax(-1)


def sample_logits(logits_NV: Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 0.0,
                  generator: "rng_.Rng" = None) -> Tensor:  # fmt: skip
    """Token ids (N,) drawn from ``logits_NV``; ``top_k == 1`` is greedy (argmax, no randomness).
    Under bf16 autocast (``precision="bf16"``) a top-k draw is made among the k largest logits
    alone: the same distribution up to ties at the k-th logit, fewer random numbers.
    ``generator``: a ``torch.Generator`` or per-image :class:`~arvision.samplers.rng.RowStreams`."""
    if top_k == 1:
        return logits_NV.argmax(-1)
    if 1 < top_k < logits_NV.shape[-1] and torch.is_autocast_enabled(logits_NV.device.type):
        # bf16 sampling: draw among the k candidates only (the same distribution, but other draws
        # than the fp32 path's draw over the whole vocabulary, which must match the official code).
        # LlamaGen GPT-B, top-k 2000 of 16384: the exponentials of the draw were 5 % of a sample.
        values_NK, ids_NK = logits_NV.float().topk(top_k, dim=-1, sorted=False)  # order is irrelevant to a draw: 1.7x faster
        probs = sampling_probs(values_NK, temperature=temperature, top_p=top_p)
        return ids_NK.gather(-1, rng_.multinomial(probs, 1, generator, replacement=True)).squeeze(-1)
    probs = sampling_probs(logits_NV, temperature=temperature, top_k=top_k, top_p=top_p)
    return rng_.multinomial(probs, 1, generator, replacement=True).squeeze(-1)


def sample_categorical(logits_BTV: Tensor, s, rng: "rng_.Rng" = None) -> Tensor:
    """Token ids (B, T) from logits (B, T, V) with the settings ``s`` (a SamplingConfig)."""
    B, T, V = logits_BTV.shape
    return sample_logits(logits_BTV.reshape(-1, V), temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, generator=rng).view(B, T)
