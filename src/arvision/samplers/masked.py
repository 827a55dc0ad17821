"""Parallel decoding loops: masked (MaskGIT), next-neighbour (NAR) and Markovian next-scale (HMAR).

Like the autoregressive loops they take an explicit ``torch.Generator``, guide by doubling the
batch ([conditional; null class]) and return statistics. The masked reveal step is one pure
function (:func:`reveal_step`) shared by whole-grid masked decoding and by refinement inside a
scale.

Legend: B batch, L tokens (or the tokens of one scale), V vocabulary.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from arvision.generators.base import SamplingConfig
from arvision.generators.markov_scale import MarkovScaleGenerator
from arvision.generators.masked import MaskedGenerator
from arvision.generators.neighbor import NeighborGenerator
from arvision.samplers.autoregressive import SamplingStats, doubled, guide, with_null
from arvision.samplers.logits import sample_logits


def check_num_steps(steps: int, num_tokens: int, what: str) -> None:
    if steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {steps}")
    if steps > num_tokens:
        raise ValueError(
            f"num_steps={steps} is more than the {num_tokens} tokens of {what}: each step must reveal at least one "
            f"token, so use at most {num_tokens} steps"
        )


def masked_steps(model: MaskedGenerator, s: SamplingConfig) -> int:
    """The validated number of steps of masked decoding (``s.num_steps``, default: the model's)."""
    S = s.num_steps or model.default_steps
    check_num_steps(S, model.num_tokens, "the grid")
    return S


def markov_steps(model: MarkovScaleGenerator, s: SamplingConfig) -> int:
    """The validated number of refinement steps per scale (default 1 = plain Markovian next-scale)."""
    R = s.num_steps or 1
    if R > 1 and not model.config.refine:
        raise ValueError(f"num_steps={R}: this model was trained without refinement inside a scale (refine=False); use 1")
    check_num_steps(R, max(p * p for p in model.config.patch_nums), "the largest scale")
    return R


def mask_schedule(num_tokens: int, steps: int) -> list[int]:
    """Tokens still masked after each of ``steps`` steps: MaskGIT's cosine, floor(L cos(pi/2 (t+1)/S)),
    made strictly decreasing and ending at 0, so every step reveals at least one token."""
    check_num_steps(steps, num_tokens, "the grid")
    out, prev = [], num_tokens
    for t in range(steps):
        m = math.floor(num_tokens * math.cos(math.pi / 2 * (t + 1) / steps)) if t < steps - 1 else 0
        m = max(min(m, prev - 1), steps - 1 - t)
        out.append(m)
        prev = m
    return out


def reveal_step(logits_BLV: Tensor, tokens_BL: Tensor, unknown_BL: Tensor, keep_masked: int, progress: float,
                s: SamplingConfig, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One MaskGIT step: sample every unknown position, then keep the ``keep_masked`` least confident
    of them masked. Confidence is the log-probability of the sampled token plus Gumbel noise scaled
    by ``choice_temperature * (1 - progress)`` (annealed to 0 at the last step).

    Returns the updated (tokens, unknown) pair.
    """
    B, L, V = logits_BLV.shape
    cand = sample_logits(logits_BLV.reshape(-1, V), temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                         generator=generator).view(B, L)  # fmt: skip
    if keep_masked == 0:
        return torch.where(unknown_BL, cand, tokens_BL), torch.zeros_like(unknown_BL)
    logp = (logits_BLV.float() / s.temperature).log_softmax(-1).gather(-1, cand.unsqueeze(-1)).squeeze(-1)
    u = torch.rand(B, L, generator=generator, device=logits_BLV.device).clamp_(1e-20, 1 - 1e-7)
    conf = logp + s.choice_temperature * (1 - progress) * -torch.log(-torch.log(u))
    conf = conf.masked_fill(~unknown_BL, float("inf"))
    still = conf.argsort(dim=1, stable=True).argsort(dim=1) < keep_masked  # the least confident stay masked
    return torch.where(unknown_BL & ~still, cand, tokens_BL), still


@torch.no_grad()
def sample_masked(model: MaskedGenerator, labels_B: Tensor, s: SamplingConfig,
                  generator: torch.Generator | None = None) -> tuple[Tensor, SamplingStats]:  # fmt: skip
    """MaskGIT decoding of the whole grid in ``s.num_steps`` (default: the model's) bidirectional passes."""
    t0 = time.perf_counter()
    B, L, guided = labels_B.shape[0], model.num_tokens, s.guided()
    S = masked_steps(model, s)
    schedule = mask_schedule(L, S)
    labels_in = with_null(model, labels_B, guided)
    tokens = torch.full((B, L), model.mask_id, dtype=torch.long, device=labels_B.device)
    unknown = torch.ones(B, L, dtype=torch.bool, device=labels_B.device)
    for t in range(S):
        tokens_in = doubled(tokens, guided)
        logits = guide(model(tokens_in, labels_in), B, s, t, S, True)
        tokens, unknown = reveal_step(logits, tokens, unknown, schedule[t], (t + 1) / S, s, generator)
    return tokens, SamplingStats(forward_passes=S, tokens=B * L, images=B, batches=1, seconds=time.perf_counter() - t0)


@torch.no_grad()
def sample_neighbor(model: NeighborGenerator, labels_B: Tensor, s: SamplingConfig,
                    generator: torch.Generator | None = None, *, use_cache: bool = True) -> tuple[Tensor, SamplingStats]:  # fmt: skip
    """Ring-by-ring decoding: 2n - 1 forward passes. ``use_cache=False`` recomputes the whole
    sequence every ring (the reference the cached path must agree with)."""
    t0 = time.perf_counter()
    B, L, guided = labels_B.shape[0], model.num_tokens, s.guided()
    labels_in = with_null(model, labels_B, guided)
    cache = model.new_cache(labels_in.shape[0]) if use_cache else None
    tokens = torch.zeros(B, L, dtype=torch.long, device=labels_B.device)
    R = model.num_steps
    for d in range(R):
        start, end = model.ring_ranges[d]
        tokens_in = doubled(tokens, guided)
        if use_cache:
            logits = model.step(d, labels_in, tokens_in, cache)
        else:
            logits = model(tokens_in, labels_in)[:, model.order_L[start:end]]
        use_cfg = s.cfg_interval < 0 or d <= s.cfg_interval
        logits = guide(logits, B, s, d, R, use_cfg)
        V = logits.shape[-1]
        idx = sample_logits(logits.reshape(-1, V), temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                            generator=generator).view(B, -1)  # fmt: skip
        tokens[:, model.order_L[start:end]] = idx
    return tokens, SamplingStats(forward_passes=R, tokens=B * L, images=B, batches=1, seconds=time.perf_counter() - t0)


@torch.no_grad()
def sample_markov_scale(model: MarkovScaleGenerator, tokenizer, labels_B: Tensor, s: SamplingConfig,
                        generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, SamplingStats]:  # fmt: skip
    """Markovian next-scale decoding, no KV cache: each scale from the previous accumulated latent
    alone, in ``num_steps`` masked refinement steps (capped by the scale's token count; default 1).
    Returns (tokens (B, L), final f_hat, stats)."""
    t0 = time.perf_counter()
    R = markov_steps(model, s)
    B, guided = labels_B.shape[0], s.guided()
    labels_in = with_null(model, labels_B, guided)
    cond = model.class_emb(labels_in)
    f_hat = tokenizer.empty_fhat(B)
    x_next, pieces, passes = None, [], 0
    S = len(model.config.patch_nums)
    for si, (start, end) in enumerate(model.scale_ranges):
        n = end - start
        steps = min(R, n)
        tokens = torch.full((B, n), model.mask_id, dtype=torch.long, device=labels_B.device)
        unknown = torch.ones(B, n, dtype=torch.bool, device=labels_B.device)
        for t, keep in enumerate(mask_schedule(n, steps)):
            tok_in = doubled(tokens, guided) if model.config.refine else None
            logits = guide(model.step(si, cond, x_next, None, tok_in), B, s, si, S, True)
            tokens, unknown = reveal_step(logits, tokens, unknown, keep, (t + 1) / steps, s, generator)
            passes += 1
        pieces.append(tokens)
        f_hat, nxt = tokenizer.next_scale_input(si, f_hat, tokens)
        if si < S - 1:
            x_next = doubled(nxt, guided)
    out = torch.cat(pieces, 1)
    return out, f_hat, SamplingStats(forward_passes=passes, tokens=out.numel(), images=B, batches=1, seconds=time.perf_counter() - t0)
