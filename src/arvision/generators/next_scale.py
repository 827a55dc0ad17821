"""Next-scale generation (VAR; Tian et al. 2024, arXiv:2404.02905, §3).

Step k predicts all pn_k x pn_k tokens of scale k at once. Its inputs are the multi-scale
tokenizer's *accumulated* latent after scales < k, area-downsampled to pn_k (the tokenizer's
``teacher_forcing_input`` / ``next_scale_input``), embedded by a linear ``word_embed``; the first
scale's input is the class embedding plus ``pos_start``. Attention is block-causal by scale, and
the class conditions every block through AdaLN (or a prefix, if configured so).

Two ways to make the later (larger) scales cheaper, both chosen at sampling time:

* ``draft_scales`` = K with a refiner (CoDe, Chen et al. 2024, arXiv:2411.17787): this model
  drafts scales < K, a small next-scale model refines the rest (``samplers/collaborative.py``).
  The refiner's first pass also computes the drafted scales, teacher-forced from the inputs the
  state kept (``x_in``), to fill its own KV cache: one pass, so the passes stay one per scale.
* ``depth_schedule`` (VARiant, Chen et al. 2025, arXiv:2511.16546): scale k runs a weight-shared
  subnet of ``depth_schedule[k]`` blocks (``Transformer.subnet``: equidistant, first and last
  kept), attending to the keys/values the earlier scales wrote in those blocks. Subnets must nest
  (a scale runs only blocks every earlier scale ran). A model trained with ``subnet_depths``
  learns the subnets beside the full network (progressive loss share, ``subnet_loss_share``).

Legend: B batch, L tokens over all scales, S scales, C width, Cv code dimension, V vocabulary.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from arvision.generators.base import Generator, GeneratorConfig
from arvision.generators.parts import match_rows
from arvision.modeling import register_model
from arvision.nn.kv_cache import KVCache
from arvision.nn.linear import Linear
from arvision.nn.transformer import group_causal_mask
from arvision.samplers.config import SamplingConfig
from arvision.samplers.order import DecodeState, Order, Sampler, Step, register_order


@dataclass(frozen=True, kw_only=True)
class NextScaleConfig(GeneratorConfig):
    """Args: patch_nums: the tokenizer's scales; code_dim: its code dimension Cv;
    scale_loss_weights: optional per-scale loss weights (default: every token weighs the same;
    CoDe's refiner weighs only the scales it refines).

    VARiant training (``subnet_depths`` non-empty): every step also runs a weight-shared subnet
    of a depth drawn from ``subnet_depths`` on the scales from one drawn from ``subnet_from`` on
    (the earlier scales run every block), and the loss is (1 - r) * full + r * subnet, where the
    subnet's share r follows ``subnet_loss_share``: one value per equal stage of training
    (progressive: e.g. (0.8, 0.5, 0.2) first teaches the subnets, then hands back to the full model).
    """

    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    code_dim: int = 32
    scale_loss_weights: tuple[float, ...] | None = None
    subnet_depths: tuple[int, ...] = ()
    subnet_from: tuple[int, ...] = ()
    subnet_loss_share: tuple[float, ...] = (0.5,)
    head_bias: bool = True
    init_std: float = -1.0
    sampling: SamplingConfig = SamplingConfig(cfg=1.5, cfg_schedule="linear")

    def __post_init__(self) -> None:
        super().__post_init__()
        w, S, D = self.scale_loss_weights, len(self.patch_nums), self.transformer.depth
        if w is not None and (len(w) != S or any(x < 0 for x in w) or sum(w) <= 0):
            raise ValueError(f"scale_loss_weights needs {S} non-negative weights, got {w}")
        if self.subnet_depths:
            if any(not 1 <= d < D for d in self.subnet_depths):
                raise ValueError(f"subnet_depths are subnet depths below the model's {D} blocks (1..{D - 1}), got {self.subnet_depths}")
            if not self.subnet_from or any(not 1 <= k < S for k in self.subnet_from):
                raise ValueError(f"subnet_from needs the first scale(s) the subnet runs, 1..{S - 1} (scale 0 always runs "
                                 f"every block), got {self.subnet_from}")  # fmt: skip
        if not self.subnet_loss_share or any(not 0 <= r <= 1 for r in self.subnet_loss_share):
            raise ValueError(f"subnet_loss_share needs the subnet's loss share (in [0, 1]) per stage of training, "
                             f"got {self.subnet_loss_share}")  # fmt: skip


@register_order
class NextScaleOrder(Order):
    """One scale per pass; the tokenizer adds each finished scale to f_hat and gives the next input
    (kept in ``x_next``, and with every earlier one in ``x_in``). Fixed tokens (editing) replace the
    sampled ones at every scale, as in VAR's zero-shot editing. Reads ``draft_scales`` (CoDe, with
    a refiner given to the loop) and ``depth_schedule`` (VARiant; see the module docstring)."""

    name = "next-scale"
    own_settings = ("draft_scales", "depth_schedule")

    def plan(self, s: SamplingConfig) -> list[Step]:
        ranges = self.generator.scale_ranges
        if s.draft_scales is not None:
            if s.draft_scales > len(ranges):
                raise ValueError(f"draft_scales={s.draft_scales}: this model has {len(ranges)} scales; the drafter takes the "
                                 f"first 1..{len(ranges)} of them ({len(ranges)} = all, the refiner never runs)")  # fmt: skip
            if s.depth_schedule is not None:
                raise ValueError("draft_scales and depth_schedule both make the later scales cheaper (a small refiner, or a "
                                 "subnet of this model): set one of them")  # fmt: skip
        blocks = self.generator.schedule_blocks(s.depth_schedule)
        return [Step(si, si, a, b, blocks=blk) for si, ((a, b), blk) in enumerate(zip(ranges, blocks))]

    def preview(self, state: DecodeState) -> Tensor | None:
        """The accumulated latent of the scales so far, decoded (coarse scales: a blurred image)."""
        f_hat = state.extra.get("f_hat")
        return None if f_hat is None else self.tokenizer.fhat_to_images(f_hat)

    decide = Order.update  # how a pass fills the scale's tokens (the Markovian order refines instead)

    def update(self, state: DecodeState, step: Step, logits_BTV: Tensor, sampler: Sampler) -> None:
        self.decide(state, step, logits_BTV, sampler)
        if step.sub == step.subs - 1:  # the scale is complete: add it to f_hat (tokenizer work), get the next input
            tokens = state.tokens_BL[:, step.predicts]
            f_hat = state.extra["f_hat"] if step.group else self.tokenizer.empty_fhat(tokens.shape[0])
            state.extra["f_hat"], x_next = self.tokenizer.next_scale_input(step.group, f_hat, tokens)
            state.extra["x_next"] = x_next
            if step.group < len(self.generator.scale_ranges) - 1:  # after the last scale x_next is f_hat, no input
                state.extra["x_in"] = torch.cat([state.extra["x_in"], x_next], 1) if step.group else x_next


@register_model
class NextScaleGenerator(Generator):
    """Class-conditional next-scale generator over a multi-scale residual VQ tokenizer."""

    model_type = "next_scale_generator"
    config_class = NextScaleConfig
    config: NextScaleConfig
    order_class = NextScaleOrder
    layout_kind = "scales"
    layout_map = {"patch_nums": "scales", "code_dim": "code_dim"}

    def __init__(self, config: NextScaleConfig) -> None:
        super().__init__(config)
        C, pn = config.transformer.width, config.patch_nums
        self.first_len = pn[0] ** 2
        self.word_embed = Linear(config.code_dim, C)
        self.pos_start = nn.Parameter(torch.empty(1, self.first_len, C))
        self.pos_1LC = nn.Parameter(torch.empty(1, self.num_tokens, C))
        self.lvl_embed = nn.Embedding(len(pn), C)
        lvl = torch.cat([torch.full((p * p,), i) for i, p in enumerate(pn)])
        self.register_buffer("lvl_1L", lvl.view(1, -1), persistent=False)
        self.register_buffer("attn_mask", group_causal_mask(lvl, lvl), persistent=False)
        weights = torch.tensor([w for w, p in zip(config.scale_loss_weights, pn) for _ in range(p * p)]) if config.scale_loss_weights else None
        self.register_buffer("loss_weights_L", weights, persistent=False)
        self.init_weights()
        std = (1 / C / 3) ** 0.5
        nn.init.trunc_normal_(self.pos_start, std=std)
        nn.init.trunc_normal_(self.pos_1LC, std=std)

    @property
    def num_tokens(self) -> int:
        return sum(p * p for p in self.config.patch_nums)

    @property
    def scale_ranges(self) -> list[tuple[int, int]]:
        ends = list(itertools.accumulate(p * p for p in self.config.patch_nums))
        return list(zip([0] + ends[:-1], ends))

    def _lvl_pos(self, start: int, end: int) -> Tensor:
        return self.lvl_embed(self.lvl_1L[:, start:end]) + self.pos_1LC[:, start:end]

    def _teacher_inputs(self, cond_BD: Tensor, x_BLCv: Tensor) -> Tensor:
        """Input embeddings of every scale at once, from the tokenizer's ``teacher_forcing_input``."""
        sos = cond_BD.unsqueeze(1).expand(-1, self.first_len, -1) + self.pos_start
        return torch.cat([sos, self.word_embed(x_BLCv.float())], 1) + self._lvl_pos(0, self.num_tokens)

    # -- subnets (VARiant) --------------------------------------------------------------------------
    def schedule_blocks(self, depth_schedule: tuple[int, ...] | None) -> list[tuple[int, ...] | None]:
        """The blocks each scale runs under ``depth_schedule`` (blocks per scale; None = every block),
        or a clear error for a schedule this model cannot run."""
        pn, D = self.config.patch_nums, self.config.transformer.depth
        if depth_schedule is None:
            return [None] * len(pn)
        if len(depth_schedule) != len(pn):
            raise ValueError(f"depth_schedule={depth_schedule}: give one depth per scale, {len(pn)} for the scales {pn}")
        if any(d > D for d in depth_schedule):
            raise ValueError(f"depth_schedule={depth_schedule}: this model has {D} blocks, so each depth must be 1..{D}")
        out, before = [], tuple(range(D))
        for si, d in enumerate(depth_schedule):
            blocks = self.transformer.subnet(d)
            if not set(blocks) <= set(before):
                raise ValueError(f"depth_schedule={depth_schedule}: scale {si} would run blocks {list(blocks)} but scale {si - 1} "
                                 f"ran only {list(before)}, so their keys/values are not cached; use depths that do not grow "
                                 f"and whose subnets nest (e.g. {D} then {max(D // 2, 1)}, or halve the depth)")  # fmt: skip
            out.append(None if d == D else blocks)
            before = blocks
        return out

    def block_ends(self, depth_schedule: tuple[int, ...] | None) -> list[int]:
        """``depth_schedule`` as ``Transformer.forward``'s ``block_ends``: per block, the end of the last
        scale that runs it (subnets nest, so each block runs a prefix of the scales)."""
        ends = [0] * self.config.transformer.depth
        for (_, end), blocks in zip(self.scale_ranges, self.schedule_blocks(depth_schedule)):
            for i in range(len(ends)) if blocks is None else blocks:
                ends[i] = end
        return ends

    def subnet_share(self, progress: float) -> float:
        """The subnet's share of the VARiant training loss at ``progress`` (0..1) of training."""
        shares = self.config.subnet_loss_share
        return shares[min(int(progress * len(shares)), len(shares) - 1)]

    # -- training ----------------------------------------------------------------------------------
    def forward(self, labels_B: Tensor, x_BLCv: Tensor, subnet_ends: list[int] | None = None) -> Tensor:
        """Teacher-forced logits (B, L, V) from the tokenizer's ``teacher_forcing_input`` (B, L - first_len, Cv).

        ``subnet_ends`` (VARiant training; see :meth:`block_ends`): a second pass in which block b
        computes only positions [0, subnet_ends[b]) runs too, and its logits are appended
        (B, 2L, V), so that the training loop's one call of the model covers both."""
        cond = self.class_emb(labels_B)
        x = self._teacher_inputs(cond, x_BLCv)
        logits = self.head(self.transformer(x, cond_BD=cond, attn_mask=self.attn_mask))
        if subnet_ends is None:
            return logits
        sub = self.head(self.transformer(x, cond_BD=cond, attn_mask=self.attn_mask, block_ends=subnet_ends))
        return torch.cat([logits, sub], 1)

    def training_inputs(self, tokens_BL: Tensor, labels_B: Tensor, tokenizer,
                        generator: torch.Generator | None = None) -> tuple[dict, dict]:  # fmt: skip
        with torch.no_grad():
            x_in = tokenizer.teacher_forcing_input(tokens_BL)
        inputs, c = {"labels_B": labels_B, "x_BLCv": x_in}, self.config
        if not c.subnet_depths:
            return inputs, {}

        def draw(options: tuple[int, ...]) -> int:
            return options[int(torch.randint(len(options), (1,), generator=generator, device=tokens_BL.device))]

        depth, first = draw(c.subnet_depths), draw(c.subnet_from)
        schedule = (c.transformer.depth,) * first + (depth,) * (len(c.patch_nums) - first)
        inputs["subnet_ends"] = self.block_ends(schedule)
        return inputs, {"subnet_start": self.scale_ranges[first][0]}

    def reference_logits(self, tokens_BL: Tensor, labels_B: Tensor, tokenizer=None) -> Tensor:
        return self(labels_B, tokenizer.teacher_forcing_input(tokens_BL))

    def training_loss(self, logits_BLV: Tensor, tokens_BL: Tensor, extra: dict) -> tuple[Tensor, Tensor]:
        """Cross-entropy (scale-weighted); VARiant: mixed with the subnet's on the scales it ran,
        at the share for ``extra["progress"]`` (the training loop's step / steps)."""
        L, w = tokens_BL.shape[1], self.loss_weights_L
        loss, acc = self.loss(logits_BLV[:, :L], tokens_BL, w)
        if "subnet_start" not in extra:
            return loss, acc
        p, r = extra["subnet_start"], self.subnet_share(extra.get("progress", 1.0))
        sub, _ = self.loss(logits_BLV[:, L + p :], tokens_BL[:, p:], None if w is None else w[p:])
        return (1 - r) * loss + r * sub, acc

    def _scale_input(self, si: int, cond_RD: Tensor, x_BlCv: Tensor | None) -> Tensor:
        """Input embeddings of scale ``si``: class + ``pos_start`` (si = 0) or the tokenizer's input; + level/position."""
        start, end = self.scale_ranges[si]
        if si == 0:
            x = cond_RD.unsqueeze(1).expand(-1, self.first_len, -1) + self.pos_start
        else:
            x = self.word_embed(match_rows(x_BlCv, cond_RD.shape[0]))
        return x + self._lvl_pos(start, end)

    def _prefix_inputs(self, start: int, end: int, cond_RD: Tensor, x_in_BlCv: Tensor) -> Tensor:
        """Input embeddings of the whole scales at positions [start, end), from the inputs the state kept."""
        fl, parts = self.first_len, []
        if start < fl:
            parts.append(cond_RD.unsqueeze(1).expand(-1, fl, -1) + self.pos_start)
        if end > fl:
            parts.append(self.word_embed(match_rows(x_in_BlCv[:, max(start - fl, 0) : end - fl], cond_RD.shape[0])))
        return torch.cat(parts, 1) + self._lvl_pos(start, end)

    def step(self, state: DecodeState, step: Step, cond_RD: Tensor, cache: KVCache | None) -> Tensor:
        """Logits (R, pn^2, V) of scale ``step.group``; every earlier scale is in the cache and fully visible.

        A pass that starts before the scale (``step.start`` < its first position: a CoDe refiner's
        first pass) computes the earlier scales too, teacher-forced from ``x_in``, filling the cache.
        ``step.blocks``: the subnet the pass runs (None = every block)."""
        a, b = self.scale_ranges[step.group]
        x = self._scale_input(step.group, cond_RD, state.extra.get("x_next"))
        mask = None
        if step.start < a:
            x = torch.cat([self._prefix_inputs(step.start, a, cond_RD, state.extra["x_in"]), x], 1)
            mask = self.attn_mask[step.start : b, :b]
        ends = None if step.blocks is None else [b if i in step.blocks else step.start for i in range(len(self.transformer.blocks))]
        h = self.transformer(x, cond_BD=cond_RD, attn_mask=mask, cache=cache, start=step.start, block_ends=ends)
        return self.head(h[:, a - step.start :])
