"""Sampling settings: the defaults a model ships with, every one overridable per call."""

from __future__ import annotations

import math
from dataclasses import dataclass

from arvision.config import Config

CFG_SCHEDULES = ("constant", "linear", "mar-linear")
DECODINGS = ("plain", "sjd", "speculative", "lantern")  # plain, or speculative with a Jacobi / draft-model proposer


@dataclass(frozen=True, kw_only=True)
class SamplingConfig(Config):
    """Default sampling settings of a model; every one can be overridden per call.

    Guidance conventions differ between the anchors and each model keeps its own:

    * ``constant`` (LlamaGen): logits = uncond + cfg * (cond - uncond) at every step; 1 = off.
    * ``linear`` (VAR): t = cfg * k / (K - 1) at step k of K, logits = (1 + t) cond - t uncond;
      0 = off. The weight ramps from 0 at the first step to ``cfg`` at the last.
    * ``mar-linear`` (MAR): w = 1 + (cfg - 1) * (share of tokens decided after the step),
      output = uncond + w (cond - uncond); 1 = off. Guidance grows as the image fills in.

    A *step* is what an order decodes at once: a token (next-token), a scale (the next-scale
    orders), a ring (next-neighbour), a masked step. ``cfg_interval`` = k >= 0 guides steps
    0 .. k + 1 only and samples the rest from the conditional logits (LlamaGen's cfg_interval,
    which counts decode steps after the first one); -1 guides every step.

    ``top_k`` 0 and ``top_p`` 0 (or 1) disable the filters; ``top_k=1`` is greedy decoding.

    Orders whose number of decoding steps is a sampling choice read ``num_steps`` (masked: steps
    for the whole grid; Markovian next-scale with refinement: steps per scale); None = the
    model's default. ``choice_temperature`` scales the annealed Gumbel noise added to the
    confidences that decide which tokens a masked step keeps (MaskGIT: 4.5).

    Fast decoding (issue 13): ``decoding`` "plain", "sjd" (speculative Jacobi decoding: the model
    drafts ``window`` tokens for itself; new positions start from ``jacobi_init`` "random" tokens or
    "spatial", the token above), "speculative" (a small draft model drafts them) or
    "lantern" (speculative with LANTERN's relaxed acceptance: a token's probability pooled over its
    ``lantern_k`` nearest codes in the tokenizer's latent space, within total-variation
    ``lantern_delta``). Next-scale order: ``draft_scales`` = K (CoDe: the first K scales by the
    model, the rest by a small refiner passed as ``refiner=``) and ``depth_schedule`` (VARiant: one
    depth per scale, the number of blocks of the weight-shared subnet that scale runs; depths may
    not grow and their subnets must nest, see ``generators/next_scale.py``).

    Continuous tokens (a diffusion head, MAR): ``diffusion_steps`` = denoising steps per token
    (None = the head's default, MAR: 100); ``temperature`` scales the noise of every denoising
    step (MAR's temperature). ``top_k``/``top_p`` apply to categorical heads only.

    FlexVAR (``flex-scale`` order): ``scales`` = the side of every step's token map, coarse to
    fine (None = the model's training sides): the number of steps and, with the last side, the
    output resolution (last side x the tokenizer's downsampling) are chosen at sampling time.

    1-D token sequences (``next-token-1d`` order): ``num_tokens`` = k generates only the first k
    tokens (k forward passes) and the tokenizer decodes that prefix (None = all of them).
    ``constrained``: grammar-constrained decoding for tokenizers whose token sequences can be
    invalid (JPEG bytes): tokens that would leave the sequence no valid completion within the
    layout's length get probability 0 and the rest are renormalised
    (``arvision.tokenizers.grammar``); plain decoding only.
    """

    cfg: float = 1.0
    cfg_schedule: str = "constant"
    cfg_interval: int = -1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0
    num_steps: int | None = None
    choice_temperature: float = 4.5
    decoding: str = "plain"
    window: int = 8
    jacobi_init: str = "random"
    lantern_k: int = 8
    lantern_delta: float = 0.1
    draft_scales: int | None = None
    depth_schedule: tuple[int, ...] | None = None
    diffusion_steps: int | None = None
    scales: tuple[int, ...] | None = None
    num_tokens: int | None = None
    constrained: bool = False

    def __post_init__(self) -> None:
        if self.cfg_schedule not in CFG_SCHEDULES:
            raise ValueError(f"cfg_schedule must be one of {CFG_SCHEDULES}, got {self.cfg_schedule!r}")
        if not math.isfinite(self.cfg) or self.cfg < 0:
            raise ValueError(f"cfg must be a finite number >= 0, got {self.cfg}")
        if self.cfg_interval < -1:
            raise ValueError(f"cfg_interval must be -1 (guide every step) or >= 0, got {self.cfg_interval}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 <= self.top_p <= 1:
            raise ValueError(f"top_p must be in [0, 1] (0 or 1 = off), got {self.top_p}")
        if self.num_steps is not None and (isinstance(self.num_steps, bool) or self.num_steps < 1):
            raise ValueError(f"num_steps must be a positive number of decoding steps (None = the model's default), got {self.num_steps}")
        if not self.choice_temperature >= 0:
            raise ValueError(f"choice_temperature must be >= 0, got {self.choice_temperature}")
        if self.decoding not in DECODINGS:
            raise ValueError(f"decoding must be one of {DECODINGS}, got {self.decoding!r}")
        if self.jacobi_init not in ("random", "spatial"):
            raise ValueError(f"jacobi_init must be 'random' (uniform tokens) or 'spatial' (the token above), got {self.jacobi_init!r}")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"window (draft tokens per verification) must be an integer >= 1, got {self.window!r}")
        if isinstance(self.lantern_k, bool) or not isinstance(self.lantern_k, int) or self.lantern_k < 1:
            raise ValueError(f"lantern_k (latent neighbours pooled per token) must be an integer >= 1, got {self.lantern_k!r}")
        if not 0 <= self.lantern_delta <= 1:
            raise ValueError(f"lantern_delta (total-variation budget) must be in [0, 1], got {self.lantern_delta}")
        if self.draft_scales is not None and (isinstance(self.draft_scales, bool) or self.draft_scales < 1):
            raise ValueError(f"draft_scales must be a positive number of scales (None = off), got {self.draft_scales}")
        if self.depth_schedule is not None and (not self.depth_schedule or any(isinstance(d, bool) or not isinstance(d, int) or d < 1
                                                                               for d in self.depth_schedule)):  # fmt: skip
            raise ValueError(f"depth_schedule must be positive block counts per scale (None = full depth), got {self.depth_schedule}")
        if self.diffusion_steps is not None and (isinstance(self.diffusion_steps, bool) or not isinstance(self.diffusion_steps, int)
                                                 or self.diffusion_steps < 1):  # fmt: skip
            raise ValueError(f"diffusion_steps must be a positive number of denoising steps (None = the head's default), "
                             f"got {self.diffusion_steps!r}")  # fmt: skip

        if self.scales is not None and (isinstance(self.scales, (str, bytes)) or not self.scales
                                        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in self.scales)):  # fmt: skip
            raise ValueError(f"scales must be positive token-map sides, coarse to fine, e.g. (1, 2, 4, 7) (None = the "
                             f"model's own), got {self.scales!r}")  # fmt: skip
        if isinstance(self.scales, list):
            object.__setattr__(self, "scales", tuple(self.scales))
        if self.num_tokens is not None and (isinstance(self.num_tokens, bool) or not isinstance(self.num_tokens, int)
                                            or self.num_tokens < 1):  # fmt: skip
            raise ValueError(f"num_tokens must be a positive number of tokens (None = all of them), got {self.num_tokens!r}")

        if not isinstance(self.constrained, bool):
            raise ValueError(f"constrained must be True or False (grammar-constrained decoding), got {self.constrained!r}")

    def guided(self) -> bool:
        return self.cfg != (0.0 if self.cfg_schedule == "linear" else 1.0)

    def guides_step(self, step: int) -> bool:
        """Whether decoding step ``step`` (0-based) is guided (see ``cfg_interval``)."""
        return self.guided() and (self.cfg_interval < 0 or step <= self.cfg_interval + 1)


# settings only some orders read (each order lists its own in Order.own_settings)
ORDER_SETTINGS = ("num_steps", "choice_temperature", "decoding", "window", "jacobi_init", "lantern_k", "lantern_delta",
                  "draft_scales", "depth_schedule", "scales", "num_tokens", "constrained")  # fmt: skip
# settings only some heads read (each head lists its own in ``own_settings``; categorical: top_k, top_p)
HEAD_SETTINGS = ("top_k", "top_p", "diffusion_steps")
