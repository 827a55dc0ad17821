"""FlexVAR: next-scale generation without residual prediction (Jiao et al. 2025, arXiv:2502.20313).

Step k predicts the s_k x s_k tokens of scale k *themselves* (the tokenizer quantizes every scale
of the image on its own, ``tokenizers/flexscale.py``), not a residual on top of the earlier
scales. Its input is the codes of scale k-1 bicubic-upsampled to s_k (the tokenizer's
``next_scale_input``); the first step's input is the class embedding plus ``pos_start``.
Attention is block-causal over scales (a KV cache in decoding), the class conditions every block
through AdaLN, as in VAR.

What makes the schedule a sampling choice:

* **scale-aware positions**: one learned 2-D grid ``pos_grid`` (G x G, G = ``max_side``,
  initialised with FlexVAR's sin/cos grid) area-interpolated to each side, so a position says
  where a token sits in the image whatever the side; there is no per-index level embedding that
  would tie the model to one schedule. Above the training sides the positions are the largest
  training side's, bicubic-upsampled (``pos_above``): reading the grid's finer cells there, as
  FlexVAR does, drew textured noise at 2x on MNIST (61 % class accuracy against 98 %, 200 samples);
* **random schedules in training**: every batch draws its own strictly increasing subset of the
  training sides (first and last always, each side between kept with ``keep_prob``, the full list
  with ``full_prob``), as FlexVAR's trainer does;
* at sampling, ``scales`` (a :class:`SamplingConfig` setting) is any strictly increasing list that
  starts at the model's first side and ends at most at ``max_side`` (default 2x the training
  latent side): the number of steps is its length, the output side its last side x the
  tokenizer's downsampling. Sides above the training sides were never seen; they are decoded
  greedily (``greedy_above``), as FlexVAR's inference does above its training resolution.

Legend: B batch, R rows of a pass (2B when guiding), L tokens of a schedule, s side, C width,
Cv code dimension, V vocabulary, G side of the position grid.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arvision.generators.base import Generator, GeneratorConfig
from arvision.generators.parts import match_rows
from arvision.modeling import register_model
from arvision.nn.kv_cache import KVCache
from arvision.nn.linear import Linear
from arvision.nn.transformer import group_causal_mask
from arvision.samplers.config import SamplingConfig
from arvision.samplers.order import DecodeState, Order, Sampler, Step, register_order
from arvision.tokenizers.flexscale import check_schedule


@dataclass(frozen=True, kw_only=True)
class FlexVARConfig(GeneratorConfig):
    """Args:
        patch_nums: the training sides (the tokenizer's layout); also the default schedule.
        code_dim: the tokenizer's code dimension Cv.
        max_side: the largest side sampling accepts and the side of the position grid; 0 = twice
            the last training side.
        keep_prob: training: probability that each side between the first and the last is in a
            batch's schedule.
        full_prob: training: probability that a batch uses every training side.
        greedy_above: sample the sides above the training sides greedily (top-k 1).
        pos_above: positions of the sides above the training sides: "upsample" (the largest training
            side's, bicubic-upsampled) or "grid" (the grid area-interpolated, FlexVAR's rule).
    """

    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    code_dim: int = 8
    max_side: int = 0
    keep_prob: float = 0.6
    full_prob: float = 0.1
    greedy_above: bool = True
    pos_above: str = "upsample"
    head_bias: bool = True
    init_std: float = -1.0
    sampling: SamplingConfig = SamplingConfig(cfg=1.5, cfg_schedule="linear")

    def __post_init__(self) -> None:
        super().__post_init__()
        pn = self.patch_nums
        if not pn or pn[0] < 1 or any(b <= a for a, b in zip(pn, pn[1:])):
            raise ValueError(f"patch_nums must be strictly increasing positive sides, got {pn}")
        if self.max_side and self.max_side < pn[-1]:
            raise ValueError(f"max_side ({self.max_side}) must be at least the last training side {pn[-1]} (0 = twice it)")
        if self.pos_above not in ("upsample", "grid"):
            raise ValueError(f"pos_above must be 'upsample' or 'grid', got {self.pos_above!r}")
        if not 0 <= self.keep_prob <= 1 or not 0 <= self.full_prob <= 1:
            raise ValueError(f"keep_prob and full_prob are probabilities, got {self.keep_prob}, {self.full_prob}")

    @property
    def largest_side(self) -> int:
        return self.max_side or 2 * self.patch_nums[-1]


def schedule_ranges(scales: Sequence[int]) -> list[tuple[int, int]]:
    """[start, end) of each side's tokens in a schedule's flat layout."""
    ends = list(itertools.accumulate(s * s for s in scales))
    return list(zip([0] + ends[:-1], ends))


@register_order
class FlexScaleOrder(Order):
    """One scale of the schedule ``scales`` per pass (KV cache); each finished scale's codes give
    the next input (``x_next``) and the image so far (``codes``, (B, Cv, s, s)). Fixed tokens
    (editing, at the tokenizer's own schedule) replace the sampled ones at every scale."""

    name = "flex-scale"
    own_settings = ("scales",)
    scales: tuple[int, ...] | None = None  # the schedule of the last plan

    def plan(self, s: SamplingConfig) -> list[Step]:
        self.scales = self.generator.check_scales(s.scales)
        return [Step(k, k, a, b) for k, (a, b) in enumerate(schedule_ranges(self.scales))]

    def _schedule(self) -> tuple[int, ...]:
        return self.scales if self.scales is not None else self.generator.config.patch_nums

    def new_cache(self, rows: int) -> KVCache:
        return self.generator.transformer.new_cache(rows, sum(s * s for s in self._schedule()))

    def start(self, batch_size: int, prior_BL: Tensor | None, known_BL: Tensor | None, device: torch.device) -> DecodeState:
        scales = self._schedule()
        L = sum(s * s for s in scales)
        for name, t in (("prior_BL", prior_BL), ("known_BL", known_BL)):
            if t is not None and t.shape[1] != L:
                raise ValueError(f"{name} has {t.shape[1]} tokens per image but the scales {scales} take {L}: editing keeps "
                                 "tokens of the tokenizer's own scales, so edit with the default scales")  # fmt: skip
        known = torch.zeros(batch_size, L, dtype=torch.bool, device=device) if known_BL is None else known_BL
        tokens = torch.zeros(batch_size, L, dtype=torch.long, device=device)
        if prior_BL is not None:
            tokens = torch.where(known, prior_BL.to(device, torch.long), tokens)
        return DecodeState(tokens_BL=tokens, known_BL=known, open_BL=~known)

    def update(self, state: DecodeState, step: Step, logits_BTV: Tensor, sampler: Sampler) -> None:
        scales, k = self._schedule(), step.group
        side = scales[k]
        if side > self.generator.config.patch_nums[-1] and self.generator.config.greedy_above:  # never trained: greedy
            sampler = Sampler(sampler.settings.replace(top_k=1, top_p=0.0), sampler.rng, sampler.head)
        state.fill(step.predicts, sampler.sample(logits_BTV))
        idx = state.tokens_BL[:, step.predicts]
        state.extra["codes"] = self.tokenizer.codes(idx, side)
        if k < len(scales) - 1:
            state.extra["x_next"] = self.tokenizer.next_scale_input(idx, side, scales[k + 1])

    def preview(self, state: DecodeState) -> Tensor | None:
        """The latest finished scale decoded on its own, upsampled (bilinear) to the output size."""
        codes = state.extra.get("codes")
        if codes is None:
            return None
        images = self.tokenizer.decode_latent(codes)
        size = self._schedule()[-1] * self.tokenizer.config.downsample
        if images.shape[-1] != size:
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(-1, 1)
        return images

    def images(self, state: DecodeState) -> Tensor:
        """The finest scale's codes decoded (its side sets the resolution)."""
        return self.tokenizer.decode_latent(state.extra["codes"])


@register_model
class FlexVARGenerator(Generator):
    """Class-conditional FlexVAR generator over an independent multi-scale tokenizer."""

    model_type = "flexvar_generator"
    config_class = FlexVARConfig
    config: FlexVARConfig
    order_class = FlexScaleOrder
    layout_kind = "flex-scales"
    layout_map = {"patch_nums": "scales", "code_dim": "code_dim"}

    def __init__(self, config: FlexVARConfig) -> None:
        super().__init__(config)
        C, G = config.transformer.width, config.largest_side
        self.word_embed = Linear(config.code_dim, C)
        self.pos_start = nn.Parameter(torch.empty(1, 1, C))
        self.pos_grid = nn.Parameter(sincos_grid(C, G) * math.sqrt(2 / C / 3))  # RMS = VAR's init std
        self.init_weights()
        nn.init.trunc_normal_(self.pos_start, std=(1 / C / 3) ** 0.5)

    @property
    def num_tokens(self) -> int:
        """Tokens of the default schedule (the training sides)."""
        return sum(p * p for p in self.config.patch_nums)

    def check_scales(self, scales: Sequence[int] | None) -> tuple[int, ...]:
        """The schedule to decode (None = the training sides), or a clear error for one this model cannot run."""
        pn = self.config.patch_nums
        if scales is None:
            return pn
        top = self.config.largest_side
        if isinstance(scales, Sequence) and scales and isinstance(scales[-1], int) and scales[-1] > top:
            raise ValueError(f"scales={tuple(scales)}: the last side sets the output resolution and this model supports "
                             f"sides up to {top} (its largest training side is {pn[-1]}), got {scales[-1]}")  # fmt: skip
        scales = check_schedule(scales, max_side=top)
        if scales[0] != pn[0]:
            fixed = (pn[0],) + tuple(s for s in scales if s > pn[0])
            raise ValueError(f"scales={scales}: the first step predicts the {pn[0]}x{pn[0]} map from the class alone, so "
                             f"the schedule must start at side {pn[0]} (e.g. {fixed})")  # fmt: skip
        return scales

    # -- embeddings ----------------------------------------------------------------------------------
    def scale_pos(self, side: int) -> Tensor:
        """Positions of a side x side map (1, s^2, C): the grid area-interpolated to that side. Above
        the training sides (``pos_above="upsample"``): the largest training side's positions,
        bicubic-upsampled; the grid's own finer cells only ever learned through their averages."""
        top = self.config.patch_nums[-1]
        if side > top and self.config.pos_above == "upsample":
            pos = F.interpolate(self._grid_at(top), size=(side, side), mode="bicubic", align_corners=False)
        else:
            pos = self._grid_at(side)
        return pos.flatten(2).transpose(1, 2)

    def _grid_at(self, side: int) -> Tensor:
        return self.pos_grid if side == self.pos_grid.shape[-1] else F.interpolate(self.pos_grid, size=(side, side), mode="area")

    def _start(self, cond_RD: Tensor, side: int) -> Tensor:
        return cond_RD.unsqueeze(1).expand(-1, side * side, -1) + self.pos_start

    def draw_schedule(self, generator: torch.Generator | None = None) -> tuple[int, ...]:
        """A training schedule: the first and last training sides, each side between with ``keep_prob``
        (the full list with ``full_prob``)."""
        pn, c = self.config.patch_nums, self.config
        u = torch.rand(len(pn), generator=generator, device=None if generator is None else generator.device).tolist()
        if u[0] < c.full_prob:
            return pn
        return (pn[0], *(s for s, v in zip(pn[1:-1], u[1:-1]) if v < c.keep_prob), pn[-1]) if len(pn) > 1 else pn

    # -- training ----------------------------------------------------------------------------------
    def forward(self, labels_B: Tensor, x_BLCv: Tensor, scales: Sequence[int] | None = None) -> Tensor:
        """Teacher-forced logits (B, L, V) of the schedule ``scales`` (default: the training sides)
        from the tokenizer's ``teacher_forcing_input`` (B, L - scales[0]^2, Cv)."""
        scales = tuple(scales or self.config.patch_nums)
        cond = self.class_emb(labels_B)
        x = torch.cat([self._start(cond, scales[0]), self.word_embed(x_BLCv.float())], 1)
        x = x + torch.cat([self.scale_pos(s) for s in scales], 1)
        lvl = torch.cat([torch.full((s * s,), k, device=x.device) for k, s in enumerate(scales)])
        return self.head(self.transformer(x, cond_BD=cond, attn_mask=group_causal_mask(lvl, lvl)))

    def training_inputs(self, tokens_BL: Tensor, labels_B: Tensor, tokenizer,
                        generator: torch.Generator | None = None) -> tuple[dict, dict]:  # fmt: skip
        """A random schedule for the batch: its tokens (the targets) and inputs."""
        scales = self.draw_schedule(generator)
        parts = tokenizer.split_scales(tokens_BL)
        targets = torch.cat([parts[self.config.patch_nums.index(s)] for s in scales], 1)
        with torch.no_grad():
            x_in = tokenizer.teacher_forcing_input(targets, scales)
        return {"labels_B": labels_B, "x_BLCv": x_in, "scales": scales}, {"targets": targets}

    def training_loss(self, logits_BLV: Tensor, tokens_BL: Tensor, extra: dict) -> tuple[Tensor, Tensor]:
        return self.loss(logits_BLV, extra.get("targets", tokens_BL))

    def reference_logits(self, tokens_BL: Tensor, labels_B: Tensor, tokenizer=None) -> Tensor:
        return self(labels_B, tokenizer.teacher_forcing_input(tokens_BL))

    # -- decoding ----------------------------------------------------------------------------------
    def step(self, state: DecodeState, step: Step, cond_RD: Tensor, cache: KVCache | None) -> Tensor:
        """Logits (R, s^2, V) of scale ``step.group``; every earlier scale is in the cache and fully visible."""
        side = math.isqrt(step.end - step.start)
        x = self._start(cond_RD, side) if step.group == 0 else self.word_embed(match_rows(state.extra["x_next"], cond_RD.shape[0]))
        h = self.transformer(x + self.scale_pos(side), cond_BD=cond_RD, cache=cache, start=step.start)
        return self.head(h)


def sincos_grid(dim: int, side: int) -> Tensor:
    """FlexVAR's 2-D sin/cos position grid (1, dim, side, side): even channels sin(y w_i), odd
    channels cos(x w_i), w_i = 10000^(-2i/dim)."""
    w = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))  # (dim/2,)
    coords = torch.arange(side, dtype=torch.float32)
    grid = torch.empty(dim, side, side)
    grid[0::2] = torch.sin(coords.view(1, side, 1) * w.view(-1, 1, 1)).expand(-1, side, side)
    grid[1::2] = torch.cos(coords.view(1, 1, side) * w[: dim // 2].view(-1, 1, 1)).expand(-1, side, side)
    return grid.unsqueeze(0)
