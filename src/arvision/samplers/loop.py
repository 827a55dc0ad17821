"""The one decoding loop every order runs through.

The loop owns what the orders share: the condition and its null for guidance (the batch runs
doubled, [conditional; null] rows), the cfg schedule and ``cfg_interval`` per decoding step,
temperature / top-k / top-p through a seeded :class:`~arvision.samplers.order.Sampler`,
statistics, progress and a per-step callback. The order (``generators/``) says what each
forward pass computes and how its logits update the state; the generator computes the logits.

Legend: B batch, R rows of a forward pass (2B when guiding), L tokens, T positions, V vocabulary.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from arvision.samplers.collaborative import collaborate
from arvision.samplers.config import SamplingConfig
from arvision.samplers.logits import guidance_weight
from arvision.samplers.order import DecodeState, Decoder, Sampler, Step
from arvision.samplers.rng import Rng, select


@dataclass
class SamplingStats:
    """What sampling cost: sequential generator forward passes (per batch, summed over batches),
    tokens produced, images, batches and wall time."""

    forward_passes: int = 0
    tokens: int = 0
    images: int = 0
    batches: int = 0
    seconds: float = 0.0
    draft_passes: int = 0  # forward passes of a draft model (speculative decoding)
    passes_until_done: int = 0  # summed over images: target passes until each image was complete
    candidate_passes: int = 0  # forward passes x the rows (candidate images) each computed: the compute of a search
    reward_evaluations: int = 0  # images a test-time search scored (partial or final)
    undecodable: int = 0  # images whose tokens the tokenizer could not decode (a codec: no valid JPEG stream); blank

    def __iadd__(self, other: "SamplingStats") -> "SamplingStats":
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)
        return self

    @property
    def forward_passes_per_image(self) -> float:
        """Sequential forward passes that produced each image (= per batch, since a batch runs together)."""
        return self.forward_passes / max(self.batches, 1)

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / max(self.images, 1)

    @property
    def mean_passes_per_image(self) -> float:
        """Target passes an image needed until it was complete (in a batch, speculative decoding
        finishes rows at different passes; the batch itself runs until its slowest row is done)."""
        return self.passes_until_done / max(self.images, 1)

    @property
    def mean_accepted_length(self) -> float:
        """Tokens per sequential target forward pass (1 for raster decoding; more with speculative decoding)."""
        return self.tokens / max(self.images, 1) / max(self.forward_passes_per_image, 1)


@dataclass
class StepInfo:
    """What a per-step callback sees: the step, its guided logits (B, T, V) and the state before
    the update (``state`` is live: the callback may read it, the loop updates it next)."""

    step: Step
    logits: Tensor
    state: DecodeState
    cfg_weight: float | None

    @property
    def probs(self) -> Tensor:
        return self.logits.float().softmax(-1)


@dataclass
class DecodeOutput:
    tokens: Tensor
    state: DecodeState
    stats: SamplingStats


def guide(head, out_RTV: Tensor, B: int, s: SamplingConfig, group: int, num_groups: int,
          progress: float | None = None) -> tuple[Tensor, float | None]:  # fmt: skip
    """The (B, T, V) outputs of decoding step ``group`` of ``num_groups``: guided by the null rows
    (R = 2B) when ``s`` guides this step, else the conditional rows; and the guidance weight used.
    Outputs of a low-precision forward pass (bf16 sampling) are taken to float32 first: guidance,
    temperature, top-k/top-p and the softmax never run in bf16."""
    if out_RTV.dtype in (torch.bfloat16, torch.float16):
        out_RTV = out_RTV.float()
    if out_RTV.shape[0] == B:
        return out_RTV, None
    if not s.guides_step(group):
        return out_RTV[:B], None
    weight = guidance_weight(s.cfg, s.cfg_schedule, group, num_groups, progress)
    return head.guide(out_RTV[:B], out_RTV[B:], weight, s.cfg_schedule), weight


def check_settings(generator: Decoder, s: SamplingConfig, tokenizer=None) -> list[Step]:
    """The plan of ``generator``'s order for ``s``: a clear error for any setting it cannot use
    (``tokenizer``: for settings that depend on it, constrained decoding)."""
    order = generator.order_class(generator, tokenizer)
    order.check(s)
    return order.plan(s)


class DecodeRun:
    """One batch being decoded: the order, its plan, the condition rows, state, KV cache and sampler.

    :func:`decode` runs every step of the plan; a test-time search (``samplers/search.py``) runs
    them one by one and between steps keeps, drops or duplicates candidates with :meth:`select`.
    Arguments as in :func:`decode`.
    """

    def __init__(self, generator: Decoder, tokenizer, labels_B: Tensor, s: SamplingConfig, rng: Rng = None,
                 *, prior_BL: Tensor | None = None, known_BL: Tensor | None = None,
                 callback: Callable[[StepInfo], None] | None = None, refiner: Decoder | None = None) -> None:  # fmt: skip
        if s.decoding != "plain":
            raise ValueError(f"decoding={s.decoding!r} runs in arvision.samplers.speculative.speculative_decode "
                             "(Pipeline.sample routes it there); decode() is the plain loop")  # fmt: skip
        self.generator, self.s, self.callback = generator, s, callback
        self.order = order = generator.order_class(generator, tokenizer)
        order.check(s)
        self.plan = order.plan(s) if known_BL is None else order.skip_known(order.plan(s), known_BL)
        self.labels_B = labels_B
        self.cond_RD = generator.class_emb.encode(labels_B, with_null=s.guided())
        self.state = order.start(labels_B.shape[0], prior_BL, known_BL, labels_B.device)
        self.cache = order.new_cache(self.cond_RD.shape[0])
        self.sampler = Sampler(s, rng, generator.head)
        self.num_groups = self.plan[-1].group + 1
        self.run = generator.step
        self.candidate_passes = 0  # rows (candidates) x passes, counted per pass
        self.passes = 0  # forward passes run (fewer than the plan's when the order stops early)
        if refiner is not None or s.draft_scales is not None:  # CoDe: the later steps on a small refiner
            self.plan, self.run = collaborate(generator, refiner, tokenizer, self.plan, labels_B, s)

    @property
    def batch_size(self) -> int:
        return self.labels_B.shape[0]

    @torch.no_grad()
    def step(self, step: Step) -> None:
        """One forward pass: guided outputs, the callback, the order's update of the state."""
        B, s = self.batch_size, self.s
        out = self.run(self.state, step, self.cond_RD, self.cache)
        logits, weight = guide(self.generator.head, out, B, s, step.group, self.num_groups, step.progress)
        if self.callback is not None:
            self.callback(StepInfo(step, logits, self.state, weight))
        self.order.update(self.state, step, logits, self.sampler)
        self.candidate_passes += B
        self.passes += 1

    @torch.no_grad()
    def select(self, rows_N: Tensor) -> None:
        """Continue with the candidates ``rows_N`` (indices into the batch; repeats duplicate a
        candidate, left-out rows are dropped): the state, condition rows and KV cache follow."""
        B, st = self.batch_size, self.state
        rows_N = rows_N.to(self.labels_B.device)
        if self.cond_RD.shape[0] != B:  # guided: [conditional; null] rows
            guided_rows = torch.cat([rows_N, rows_N + B])
        else:
            guided_rows = rows_N
        self.labels_B = self.labels_B[rows_N]
        self.cond_RD = self.cond_RD[guided_rows]
        if self.cache is not None:
            self.cache.select(guided_rows)
        st.tokens_BL, st.known_BL, st.open_BL = st.tokens_BL[rows_N], st.known_BL[rows_N], st.open_BL[rows_N]
        for k, v in st.extra.items():
            assert v.shape[0] == B, f"state.extra[{k!r}] has {v.shape[0]} rows, not the batch's {B}"
            st.extra[k] = v[rows_N]
        self.sampler.rng = select(self.sampler.rng, rows_N)  # per-image streams follow their candidates

    def output(self, t0: float) -> DecodeOutput:
        """The decoded batch and what it cost (``t0``: ``time.perf_counter()`` at the start)."""
        B, L, P = self.batch_size, self.state.tokens_BL.shape[1], self.passes
        stats = SamplingStats(forward_passes=P, tokens=B * L, images=B, batches=1, seconds=time.perf_counter() - t0,
                              passes_until_done=P * B, candidate_passes=self.candidate_passes)  # fmt: skip
        return DecodeOutput(tokens=self.state.tokens_BL, state=self.state, stats=stats)


@torch.no_grad()
def decode(generator: Decoder, tokenizer, labels_B: Tensor, s: SamplingConfig, rng: Rng = None, *,
           prior_BL: Tensor | None = None, known_BL: Tensor | None = None,
           callback: Callable[[StepInfo], None] | None = None, progress: bool = False,
           refiner: Decoder | None = None) -> DecodeOutput:  # fmt: skip
    """Decode one batch with ``generator``'s order.

    ``prior_BL``/``known_BL``: tokens fixed by the caller (editing); every other token is
    generated. ``callback(info)`` runs after each forward pass, before the state update.
    ``refiner``: a small model of the same order that decodes the steps from ``s.draft_scales``
    on (CoDe, ``samplers/collaborative.py``).
    """
    t0 = time.perf_counter()
    run = DecodeRun(generator, tokenizer, labels_B, s, rng, prior_BL=prior_BL, known_BL=known_BL, callback=callback, refiner=refiner)
    for step in tqdm(run.plan, desc=f"decode {run.order.name}", leave=False) if progress else run.plan:
        run.step(step)
        if run.order.stop_early(run.state):  # e.g. every JPEG stream has ended: the rest is padding
            break
    return run.output(t0)


def sample_next_token(model, labels_B: Tensor, s: SamplingConfig, generator: torch.Generator | None = None) -> tuple[Tensor, SamplingStats]:
    """Raster decoding (kept for callers of the former per-order loops): (tokens (B, L), stats)."""
    out = decode(model, None, labels_B, s, generator)
    return out.tokens, out.stats


def sample_next_scale(model, tokenizer, labels_B: Tensor, s: SamplingConfig,
                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, SamplingStats]:  # fmt: skip
    """Next-scale decoding (kept for callers of the former per-order loops): (tokens, final f_hat, stats)."""
    out = decode(model, tokenizer, labels_B, s, generator)
    return out.tokens, out.state.extra["f_hat"], out.stats
