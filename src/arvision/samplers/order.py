"""What an order is to the decoding loop: a plan of forward passes and a state it updates.

An order (one per generator class, defined beside it in ``generators/``) says

* :meth:`Order.plan`: the forward passes of one decoding run, each a :class:`Step` (the sequence
  positions it computes, the token positions it predicts, the decoding step it belongs to);
  it validates the settings first (a setting the order cannot use is an error);
* :meth:`Order.start`: the initial :class:`DecodeState` (tokens, which are fixed by the caller,
  which are still open);
* :meth:`Order.update`: how a step's (guided) logits change the state;
* :meth:`Order.stop_early` (optional): whether every row is complete before the plan's end.

The model computes the logits of a step with ``generator.step(state, step, cond, cache)``; the
loop (:func:`arvision.samplers.loop.decode`) owns everything else. Registering an order with
:func:`register_order` puts it into the conformance suite (``tests/test_conformance.py``).

Legend: B batch, L tokens of the layout, T positions of one step, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol

import torch
from torch import Tensor

from arvision.samplers.config import HEAD_SETTINGS, ORDER_SETTINGS, SamplingConfig
from arvision.samplers.logits import sample_categorical
from arvision.samplers.rng import Rng, rand

if TYPE_CHECKING:
    from arvision.nn.kv_cache import KVCache

ORDERS: dict[str, type["Order"]] = {}


class Decoder(Protocol):
    """What the loop needs of a generator (``arvision.generators.Generator`` is one): its order, its
    condition part (``class_emb.encode``), its head, token count and the one step contract."""

    order_class: type["Order"]
    class_emb: torch.nn.Module
    head: Head
    num_tokens: int

    def new_cache(self, rows: int) -> "KVCache | None": ...

    def step(self, state: "DecodeState", step: "Step", cond_RD: Tensor, cache: "KVCache | None") -> Tensor: ...


def register_order(cls: type["Order"]) -> type["Order"]:
    """Class decorator: make ``cls`` a known order (and a subject of the conformance suite)."""
    ORDERS[cls.name] = cls
    return cls


@dataclass(frozen=True)
class Step:
    """One forward pass.

    Args:
        index: number of the pass in the plan.
        group: the decoding step it belongs to (a token, scale, ring or masked step): what the
            cfg schedule and ``cfg_interval`` count. Refinement passes of one scale share a group.
        start, end: sequence positions [start, end) this pass computes (and writes to the cache).
        targets: token positions (T,) whose logits the pass returns, in order; None = the token
            positions [start, end) (sequence and token positions coincide).
        sub, subs: the pass's number among the passes of its group and their count.
        blocks: the backbone blocks the pass runs (a weight-shared subnet, ``depth_schedule``);
            None = every block.
        progress: share of the tokens decided after this pass (what MAR's guidance schedule
            reads); None = (group + 1) / groups.
        output: what the pass's logits are over: "tokens" (the layout's vocabulary) or labels of
            the order's own (coarse-to-fine: "coarse", its coarse labels). An order with more than
            one kind has ``reference_logits`` return a dict keyed by it.
    """

    index: int
    group: int
    start: int
    end: int
    targets: Tensor | None = None
    sub: int = 0
    subs: int = 1
    blocks: tuple[int, ...] | None = None
    progress: float | None = None
    output: str = "tokens"

    @property
    def predicts(self) -> Tensor | slice:
        """Index of the token positions the pass's logits belong to."""
        return self.targets if self.targets is not None else slice(self.start, self.end)


@dataclass
class DecodeState:
    """The tokens being decoded in the tokenizer's layout: ids (B, L), or continuous tokens /
    per-channel ids (B, L, D).

    ``known_BL``: fixed by the caller (editing), never changed; ``open_BL``: not decided yet;
    ``extra``: what an order carries between steps (next-scale: the accumulated latent); every
    tensor in it has the batch as its first dimension, so that a search can select rows.
    """

    tokens_BL: Tensor
    known_BL: Tensor
    open_BL: Tensor
    extra: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.any_known = bool(self.known_BL.any())

    def fill(self, index: Tensor | slice, ids_BT: Tensor) -> None:
        """Decide the tokens at ``index``; the known ones keep their value."""
        if self.any_known:
            known = self.known_BL[:, index]
            ids_BT = torch.where(known.view(*known.shape, *[1] * (ids_BT.ndim - known.ndim)), self.tokens_BL[:, index], ids_BT)
        self.tokens_BL[:, index] = ids_BT
        self.open_BL[:, index] = False


class Head(Protocol):
    """What the loop needs of a head (``CategoricalHead`` is one): guidance and sampling."""

    def guide(self, cond: Tensor, uncond: Tensor, weight: float, schedule: str) -> Tensor: ...

    def sample(self, out_BT: Tensor, s: SamplingConfig, rng: torch.Generator | None) -> Tensor: ...


@dataclass
class Sampler:
    """Settings + random-number generator + the head that turns a step's outputs into token ids."""

    settings: SamplingConfig
    rng: Rng = None  # a torch.Generator or per-image RowStreams (arvision.samplers.rng)
    head: Head | None = None  # None: categorical sampling of logits

    def sample(self, logits_BTV: Tensor) -> Tensor:
        if self.head is not None:
            return self.head.sample(logits_BTV, self.settings, self.rng)
        return sample_categorical(logits_BTV, self.settings, self.rng)


def check_num_steps(steps: int, num_tokens: int, what: str) -> None:
    if steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {steps}")
    if steps > num_tokens:
        raise ValueError(
            f"num_steps={steps} is more than the {num_tokens} tokens of {what}: each step must reveal at least one "
            f"token, so use at most {num_tokens} steps"
        )


class Order:
    """Base of the decoding orders; see the module docstring. Subclasses set ``name`` and
    override :meth:`plan` (and :meth:`update`/:meth:`start` where the default does not fit)."""

    name: ClassVar[str]
    own_settings: ClassVar[tuple[str, ...]] = ()  # which of ORDER_SETTINGS this order reads

    def __init__(self, generator, tokenizer=None) -> None:
        self.generator = generator
        self.tokenizer = tokenizer

    # -- settings and plan -----------------------------------------------------------------------
    def check(self, s: SamplingConfig) -> None:
        """A clear error for a setting this order cannot use (before any work is done)."""
        for name in ORDER_SETTINGS:
            if name not in self.own_settings and getattr(s, name) != SamplingConfig.__dataclass_fields__[name].default:
                users = " and ".join(sorted(o.name for o in ORDERS.values() if name in o.own_settings))
                what = f"always takes {self.generator.num_steps} steps" if name == "num_steps" else f"does not use {name}"
                where = f"{name} applies to the {users} order(s)" if users else f"no order supports {name} yet"
                raise ValueError(f"{name}={getattr(s, name)!r}: the {self.name} order {what}; {where}, so leave it unset")
        head = getattr(self.generator, "head", None)
        own = getattr(head, "own_settings", ("top_k", "top_p"))
        for name in HEAD_SETTINGS:
            if name not in own and getattr(s, name) not in (SamplingConfig.__dataclass_fields__[name].default, None, 1.0):
                kind = "continuous tokens (a diffusion head)" if name != "diffusion_steps" else "discrete tokens (a categorical head)"
                raise ValueError(f"{name}={getattr(s, name)!r}: this model samples {kind}, which have no {name}; leave it unset")

    def plan(self, s: SamplingConfig) -> list[Step]:
        """The forward passes for settings ``s`` (a clear error for a value the order cannot use)."""
        raise NotImplementedError

    def skip_known(self, plan: list[Step], known_BL: Tensor) -> list[Step]:
        """The plan for a run where ``known_BL`` is fixed (editing); orders that can compute known
        tokens together (a known raster prefix) merge their passes here. Default: unchanged."""
        return plan

    def new_cache(self, rows: int) -> "KVCache | None":
        return self.generator.new_cache(rows)

    # -- state -----------------------------------------------------------------------------------
    def start(self, batch_size: int, prior_BL: Tensor | None, known_BL: Tensor | None, device: torch.device) -> DecodeState:
        L = self.generator.num_tokens
        fill = getattr(self.generator, "mask_id", 0)  # open tokens: the mask id where the model has one
        if known_BL is None:
            known_BL = torch.zeros(batch_size, L, dtype=torch.bool, device=device)
        kind = getattr(self.generator, "token_kind", "ids")
        per_token = () if kind == "ids" else (self.generator.config.token_dim,)  # vectors / one id per channel: (B, L, D)
        dtype = torch.float32 if kind == "vectors" else torch.long
        tokens = torch.full((batch_size, L, *per_token), fill, dtype=dtype, device=device)
        if prior_BL is not None:
            tokens = torch.where(known_BL.view(batch_size, L, *[1] * len(per_token)), prior_BL.to(device, dtype), tokens)
        return DecodeState(tokens_BL=tokens, known_BL=known_BL, open_BL=~known_BL)

    def update(self, state: DecodeState, step: Step, logits_BTV: Tensor, sampler: Sampler) -> None:
        """Default: sample every token position the step predicts."""
        state.fill(step.predicts, sampler.sample(logits_BTV))

    def stop_early(self, state: DecodeState) -> bool:
        """Whether every row is complete before the plan's end (variable-length sequences: each row
        has ended); if so the order fills what is left and the loop stops. Default: never."""
        return False

    def preview(self, state: DecodeState) -> Tensor | None:
        """The image decoded so far, (B, C, H, W) in [-1, 1], or None where the order has no
        partial image (what a test-time search scores between steps; next-scale: the latent so far)."""
        return None

    def images(self, state: DecodeState) -> Tensor:
        """The images (B, C, H, W) in [-1, 1] of a finished state: the tokenizer decodes the tokens.
        An order whose tokens do not say the image alone overrides it (FlexVAR: the schedule sets
        the resolution, and the finest scale's codes are in the state)."""
        return self.tokenizer.decode(state.tokens_BL)

    def images_ok(self, state: DecodeState) -> tuple[Tensor, Tensor]:
        """:meth:`images` and which of them decoded, (B,) bool. A codec tokenizer (JPEG bytes) can be
        handed tokens that are no valid stream: it decodes them to blank images and says which."""
        if getattr(self.tokenizer, "may_fail_to_decode", False):
            return self.tokenizer.decode(state.tokens_BL, return_ok=True)
        images = self.images(state)
        return images, torch.ones(images.shape[0], dtype=torch.bool, device=images.device)


# -- masked decoding: shared by the masked order and refinement inside a scale -------------------
def _still_masked(n: int, steps: int) -> list[int]:
    out, prev = [], n
    for t in range(steps):
        m = math.floor(n * math.cos(math.pi / 2 * (t + 1) / steps)) if t < steps - 1 else 0
        m = min(max(min(m, prev - 1), steps - 1 - t), prev)  # the outer min only matters when n < steps
        out.append(m)
        prev = m
    return out


def mask_schedule(num_tokens: int, steps: int) -> list[int]:
    """Tokens still masked after each of ``steps`` steps: MaskGIT's cosine, floor(L cos(pi/2 (t+1)/S)),
    made strictly decreasing and ending at 0, so every step reveals at least one token."""
    check_num_steps(steps, num_tokens, "the grid")
    return _still_masked(num_tokens, steps)


def row_schedules(open_B: Tensor, steps: int) -> Tensor:
    """(steps, B) tokens still masked after each step, per row: the cosine schedule over each row's
    own open tokens (rows differ when editing fixes some tokens)."""
    table = {n: _still_masked(n, steps) for n in set(open_B.tolist())}
    return torch.tensor([table[n] for n in open_B.tolist()], dtype=torch.long, device=open_B.device).T


def reveal_step(logits_BLV: Tensor, tokens_BL: Tensor, open_BL: Tensor, keep_masked: Tensor | int, progress: float,
                sampler: Sampler) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One MaskGIT step: sample every open position, then keep the ``keep_masked`` (per row) least
    confident of them masked. Confidence is the log-probability of the sampled token plus Gumbel
    noise scaled by ``choice_temperature * (1 - progress)`` (annealed to 0 at the last step).

    Returns the updated (tokens, open) pair.
    """
    s, rng = sampler.settings, sampler.rng
    B, L, V = logits_BLV.shape
    cand = sampler.sample(logits_BLV)
    keep = torch.as_tensor(keep_masked, device=logits_BLV.device).reshape(-1, 1)
    if not bool(keep.any()):
        return torch.where(open_BL, cand, tokens_BL), torch.zeros_like(open_BL)
    logp = (logits_BLV.float() / s.temperature).log_softmax(-1).gather(-1, cand.unsqueeze(-1)).squeeze(-1)
    u = rand((B, L), rng, device=logits_BLV.device).clamp_(1e-20, 1 - 1e-7)
    conf = logp + s.choice_temperature * (1 - progress) * -torch.log(-torch.log(u))
    conf = conf.masked_fill(~open_BL, float("inf"))
    still = conf.argsort(dim=1, stable=True).argsort(dim=1) < keep  # the least confident stay masked
    return torch.where(open_BL & ~still, cand, tokens_BL), still


def reveal_pass(state: DecodeState, step: Step, logits_BTV: Tensor, sampler: Sampler) -> None:
    """Masked pass ``step.sub`` of ``step.subs`` over the tokens [step.start, step.end): reveal the
    confident ones on the cosine schedule of each row's open tokens (fixed at the group's first pass)."""
    part = slice(step.start, step.end)
    if step.sub == 0:
        state.extra["keep"] = row_schedules(state.open_BL[:, part].sum(1), step.subs).T  # (B, steps): rows first, as all state
    state.tokens_BL[:, part], state.open_BL[:, part] = reveal_step(
        logits_BTV, state.tokens_BL[:, part], state.open_BL[:, part], state.extra["keep"][:, step.sub], (step.sub + 1) / step.subs, sampler
    )
