"""Speculative decoding of the next-token order: a proposer drafts, one target pass verifies, an
acceptor decides, the KV cache rolls back to the accepted prefix.

* Proposers: :class:`JacobiProposer` (SJD, Teng et al. 2024, arXiv:2410.01699: the target drafts
  for itself; tokens not yet accepted are re-drafted from the target's last probabilities, new
  window positions start from random tokens or, spatially aware, from the token above) and
  :class:`DraftModelProposer` (a small generator with the same tokenizer).
* Acceptors: exact speculative sampling (accept a draft d with min(1, p(d) / q(d)); on rejection
  sample norm(max(0, p - q)): the output distribution is that of plain sampling) and LANTERN's
  relaxed acceptance (Jang et al. 2024, arXiv:2410.03355: p(d) pooled over d's nearest codes in
  the tokenizer's latent space, at most ``lantern_delta`` of extra probability mass). LANTERN
  assumes drafts sampled from a model (q close to p); Jacobi's random initialisations (q uniform)
  are therefore always judged exactly: relaxed, a uniform draft would be accepted whenever its
  neighbourhood holds 1/V of probability, which measured MNIST-FID 22.5 -> 46.5.

A verification pass feeds positions [n, n + W + 1): the last accepted token and W drafts, and
returns the target's probabilities for tokens n .. n + W (the last one is a bonus token when every
draft stands). In a batch, every row keeps the accepted prefix common to all rows plus one token
(its next accepted draft, or its correction), so rows stay aligned; each kept token is an exact
sample either way.

Legend: B batch, R rows (2B when guiding), L tokens, W drafts, T verified positions, V vocabulary, k neighbours.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor

from arvision.samplers.config import SamplingConfig
from arvision.samplers.logits import sampling_probs
from arvision.samplers.loop import DecodeOutput, SamplingStats, StepInfo, guide
from arvision.samplers.order import DecodeState, Step
from arvision.samplers.rng import Rng, multinomial, rand, randint


def target_probs(logits_BTV: Tensor, s: SamplingConfig) -> Tensor:
    """The distribution plain sampling draws from (temperature, top-k, top-p; top-k 1 = one-hot argmax)."""
    if s.top_k == 1:
        return F.one_hot(logits_BTV.argmax(-1), logits_BTV.shape[-1]).float()
    return sampling_probs(logits_BTV.float(), temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)


def draw(probs_NV: Tensor, rng: Rng) -> Tensor:
    return multinomial(probs_NV.reshape(-1, probs_NV.shape[-1]), 1, rng).view(probs_NV.shape[:-1])


def latent_neighbours(codes_VD: Tensor, k: int) -> Tensor:
    """(V, k) the k nearest codes of every code (itself first), by L2 distance in the latent space."""
    if k > codes_VD.shape[0]:
        raise ValueError(f"lantern_k={k} is larger than the codebook ({codes_VD.shape[0]} codes)")
    return torch.cdist(codes_VD.float(), codes_VD.float()).topk(k, largest=False).indices


def relaxed_prob(p_BWV: Tensor, d_BW: Tensor, neighbours_Vk: Tensor, delta: float) -> Tensor:
    """LANTERN's p~(d): p(d) plus the probability of d's nearest codes, taken in order of distance while
    the added mass stays <= delta (so the relaxed distribution is within total variation delta)."""
    p_nb = p_BWV.gather(-1, neighbours_Vk[d_BW])  # (B, W, k), column 0 = d itself
    extra = p_nb[..., 1:]
    return p_nb[..., 0] + (extra * (extra.cumsum(-1) <= delta)).sum(-1)


class JacobiProposer:
    """SJD: drafts from the target's own previous pass; ``init`` "random" (uniform tokens, q uniform)
    or "spatial" (the token above in the grid, a point mass; random in the first row)."""

    passes = 0
    free = True  # drafting costs no forward pass

    def __init__(self, vocab_size: int, grid_side: int, rng: Rng, init: str = "random") -> None:
        if init not in ("random", "spatial"):
            raise ValueError(f"Jacobi init must be 'random' or 'spatial', got {init!r}")
        self.V, self.side, self.rng, self.init = vocab_size, grid_side, rng, init
        self.d_BW: Tensor | None = None  # drafts carried over from the last pass, for tokens [start, start + W)
        self.q_BWV: Tensor | None = None
        self.start = 0
        self.fresh_BW: Tensor | None = None  # drafts of the last proposal that are initialisations, not model samples

    def propose(self, tokens_BL: Tensor, n: int, W: int) -> tuple[Tensor, Tensor]:
        B = tokens_BL.shape[0]
        d = tokens_BL.new_zeros(B, W)
        q = torch.zeros(B, W, self.V, device=tokens_BL.device)
        carried = 0
        if self.d_BW is not None and self.start <= n:
            off = n - self.start
            carried = max(0, min(W, self.d_BW.shape[1] - off))
            d[:, :carried], q[:, :carried] = self.d_BW[:, off : off + carried], self.q_BWV[:, off : off + carried]
        self.fresh_BW = torch.zeros(B, W, dtype=torch.bool, device=tokens_BL.device)
        self.fresh_BW[:, carried:] = True
        for j in range(carried, W):
            pos = n + j
            if self.init == "spatial" and pos >= self.side:
                above = d[:, j - self.side] if j >= self.side else tokens_BL[:, pos - self.side]
                d[:, j] = above
                q[:, j].scatter_(1, above[:, None], 1.0)
            else:
                d[:, j] = randint(self.V, (B,), self.rng, device=tokens_BL.device)
                q[:, j] = 1.0 / self.V
        return d, q

    def observe(self, p_BTV: Tensor, n: int, n_new: int, cache_len: int) -> None:
        """Re-draft the tokens after the accepted ones from this pass's probabilities (Jacobi update)."""
        rest = p_BTV[:, n_new - n :]
        self.start = n_new
        self.d_BW, self.q_BWV = (draw(rest, self.rng), rest) if rest.shape[1] else (None, None)


class DraftModelProposer:
    """A small generator of the same order and tokenizer drafts W tokens, one pass each, with its
    own KV cache (rolled back with the target's)."""

    def __init__(self, draft, s: SamplingConfig, cond_RD: Tensor, rng: Rng) -> None:
        self.model, self.s, self.cond, self.rng = draft, s, cond_RD, rng
        self.cache = draft.new_cache(cond_RD.shape[0])
        self.passes = 0
        self.free = False

    def propose(self, tokens_BL: Tensor, n: int, W: int) -> tuple[Tensor, Tensor]:
        B, L = tokens_BL.shape
        work = tokens_BL.clone()
        state = DecodeState(tokens_BL=work, known_BL=work < 0, open_BL=work < 0)
        ds, qs = [], []
        start = self.cache.length
        for j in range(W):
            logits = self.model.step(state, Step(0, n + j, start, n + j + 1), self.cond, self.cache)[:, -1:]
            logits, _ = guide(self.model.head, logits, B, self.s, n + j, L)
            q = target_probs(logits, self.s)
            d = draw(q, self.rng)
            work[:, n + j] = d[:, 0]
            ds.append(d)
            qs.append(q)
            start = n + j + 1
            self.passes += 1
        return torch.cat(ds, 1), torch.cat(qs, 1)

    def observe(self, p_BTV: Tensor, n: int, n_new: int, cache_len: int) -> None:
        self.cache.truncate(min(n_new, self.cache.length))


@torch.no_grad()
def speculative_decode(generator, tokenizer, labels_B: Tensor, s: SamplingConfig, rng: Rng = None, *,
                       draft=None, prior_BL: Tensor | None = None, known_BL: Tensor | None = None, callback=None,
                       progress: bool = False) -> DecodeOutput:  # fmt: skip
    """Decode one batch of the next-token order with ``s.decoding`` in ("sjd", "speculative", "lantern").

    ``draft``: a generator of the same order and tokenizer (required for "speculative"; "lantern"
    uses it when given, else Jacobi drafts). Stats: ``forward_passes`` counts target passes,
    ``draft_passes`` the draft model's.
    """
    t0 = time.perf_counter()
    order = generator.order_class(generator, tokenizer)
    order.check(s)
    check_speculative(generator, tokenizer, s, draft)
    B, L, device = labels_B.shape[0], generator.num_tokens, labels_B.device
    cond = generator.class_emb.encode(labels_B, with_null=s.guided())
    state = order.start(B, prior_BL, known_BL, device)
    known = state.known_BL
    cache = generator.new_cache(cond.shape[0])
    if s.decoding == "sjd" or (s.decoding == "lantern" and draft is None):
        proposer = JacobiProposer(generator.config.vocab_size, generator.config.grid_size, rng, s.jacobi_init)
    else:
        proposer = DraftModelProposer(draft, s, draft.class_emb.encode(labels_B, with_null=s.guided()), rng)
    neighbours = None
    if s.decoding == "lantern":
        neighbours = latent_neighbours(tokenizer.quantize.codes().detach().to(device), s.lantern_k)
    n, passes = 0, 0
    done_B = torch.zeros(B, dtype=torch.long, device=device)  # the pass after which each row was complete
    frontier_B = torch.zeros(B, dtype=torch.long, device=device)  # per row: tokens [0, frontier) are decided
    pos_L = torch.arange(L, device=device)
    while n < L:
        # Jacobi drafts cost nothing: every row gets `window` new ones past its own accepted run (rows
        # run ahead of the slowest one); a draft model drafts `window` tokens from the common prefix
        ahead = int(frontier_B.max()) - n if proposer.free else 0
        W = min(ahead + s.window, L - n)
        d, q = proposer.propose(state.tokens_BL, n, W)
        fixed = known[:, n : n + W] | (pos_L[n : n + W] < frontier_B[:, None])  # known, or decided by an earlier pass
        d = torch.where(fixed, state.tokens_BL[:, n : n + W], d)
        state.tokens_BL[:, n : n + W] = d
        end = min(n + W + 1, L)
        out = generator.step(state, Step(passes, n, cache.length, end), cond, cache)
        p = torch.cat([target_probs(guide(generator.head, out[:, t : t + 1], B, s, n + t, L)[0], s) for t in range(end - n)], 1)
        if callback is not None:
            callback(StepInfo(Step(passes, n, n, end), p.log(), state, None))
        passes += 1
        # accept each draft with min(1, p(d) / q(d)) (LANTERN: the relaxed p~(d)); a row keeps its leading run
        pd, qd = p[:, :W].gather(-1, d[..., None])[..., 0], q.gather(-1, d[..., None])[..., 0]
        if neighbours is not None:  # relaxed only for drafts sampled from a model, never for initialisations
            fresh = getattr(proposer, "fresh_BW", None)
            relaxed = relaxed_prob(p[:, :W], d, neighbours, s.lantern_delta)
            pd = relaxed if fresh is None else torch.where(fresh, pd, relaxed)
        accept = (rand((B, W), rng, device=device) * qd < pd) | fixed
        run_B = accept.long().cumprod(1).sum(1)
        # the token after the run: a sample from the residual max(0, p - q) after a rejection, the bonus
        # token from the last position when every draft stands (none at the end of the sequence)
        at = run_B.clamp_max(end - n - 1)
        p_at, q_at = p[torch.arange(B), at], torch.cat([q, torch.zeros_like(q[:, :1])], 1)[torch.arange(B), at]
        residual = torch.where(run_B[:, None] < W, (p_at - q_at).clamp_min(0), p_at)
        residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p_at)
        nxt = draw(residual, rng)
        has_next = n + run_B < L
        idx = (n + at).clamp_max(L - 1)
        keep = known[torch.arange(B), idx] | (idx < frontier_B) | ~has_next
        state.tokens_BL[torch.arange(B), idx] = torch.where(keep, state.tokens_BL[torch.arange(B), idx], nxt)
        frontier_B = torch.maximum(frontier_B, n + run_B + has_next.long())
        done_B = torch.where((frontier_B >= L) & (done_B == 0), passes, done_B)
        n_new = int(frontier_B.min())
        cache.truncate(n_new)
        proposer.observe(p, n, n_new, cache.length)
        n = n_new
    state.open_BL[:] = False
    stats = SamplingStats(forward_passes=passes, tokens=B * L, images=B, batches=1, seconds=time.perf_counter() - t0,
                          draft_passes=proposer.passes, passes_until_done=int(done_B.sum()),
                          candidate_passes=passes * B)  # fmt: skip
    return DecodeOutput(tokens=state.tokens_BL, state=state, stats=stats)


def check_speculative(generator, tokenizer, s: SamplingConfig, draft) -> None:
    """Clear errors for a draft model that cannot serve this generator and for missing pieces."""
    if getattr(generator, "token_kind", "ids") != "ids":
        raise ValueError(f"decoding={s.decoding!r} verifies drafts against categorical probabilities, but this model generates "
                         f"{generator.token_kind} tokens: use decoding='plain'")  # fmt: skip
    if s.decoding == "speculative" and draft is None:
        raise ValueError("decoding='speculative' needs a draft model: pass draft=... (e.g. mnist-raster-draft), or use decoding='sjd'")
    if s.decoding == "sjd" and draft is not None:
        raise ValueError("decoding='sjd' drafts with the model itself; a draft model is used by decoding='speculative' or 'lantern'")
    if draft is not None:
        if draft.order != generator.order:
            raise ValueError(f"the draft model decodes in the {draft.order} order, the target in the {generator.order} order")
        draft.check_layout(tokenizer.layout)
        if draft.config.num_classes != generator.config.num_classes:
            raise ValueError(f"the draft model knows {draft.config.num_classes} classes, the target {generator.config.num_classes}")
    if s.decoding == "lantern" and s.lantern_k > tokenizer.codebook_size:
        raise ValueError(f"lantern_k={s.lantern_k} is larger than the codebook ({tokenizer.codebook_size} codes)")
