"""Next-scale generation (VAR; Tian et al. 2024, arXiv:2404.02905, §3).

Step k predicts all pn_k x pn_k tokens of scale k at once. Its inputs are the multi-scale
tokenizer's *accumulated* latent after scales < k, area-downsampled to pn_k (the tokenizer's
``teacher_forcing_input`` / ``next_scale_input``), embedded by a linear ``word_embed``; the first
scale's input is the class embedding plus ``pos_start``. Attention is block-causal by scale, and
the class conditions every block through AdaLN (or a prefix, if configured so).

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
    scale_loss_weights: optional per-scale loss weights (default: every token weighs the same)."""

    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    code_dim: int = 32
    scale_loss_weights: tuple[float, ...] | None = None
    head_bias: bool = True
    init_std: float = -1.0
    sampling: SamplingConfig = SamplingConfig(cfg=1.5, cfg_schedule="linear")

    def __post_init__(self) -> None:
        super().__post_init__()
        w = self.scale_loss_weights
        if w is not None and (len(w) != len(self.patch_nums) or any(x < 0 for x in w) or sum(w) <= 0):
            raise ValueError(f"scale_loss_weights needs {len(self.patch_nums)} non-negative weights, got {w}")


@register_order
class NextScaleOrder(Order):
    """One scale per pass; the tokenizer adds each finished scale to f_hat and gives the next input.
    Fixed tokens (editing) replace the sampled ones at every scale, as in VAR's zero-shot editing."""

    name = "next-scale"

    def plan(self, s: SamplingConfig) -> list[Step]:
        return [Step(si, si, a, b) for si, (a, b) in enumerate(self.generator.scale_ranges)]

    decide = Order.update  # how a pass fills the scale's tokens (the Markovian order refines instead)

    def update(self, state: DecodeState, step: Step, logits_BTV: Tensor, sampler: Sampler) -> None:
        self.decide(state, step, logits_BTV, sampler)
        if step.sub == step.subs - 1:  # the scale is complete: add it to f_hat (tokenizer work), get the next input
            tokens = state.tokens_BL[:, step.start : step.end]
            f_hat = state.extra["f_hat"] if step.group else self.tokenizer.empty_fhat(tokens.shape[0])
            state.extra["f_hat"], state.extra["x_next"] = self.tokenizer.next_scale_input(step.group, f_hat, tokens)


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

    def forward(self, labels_B: Tensor, x_BLCv: Tensor) -> Tensor:
        """Teacher-forced logits (B, L, V) from the tokenizer's ``teacher_forcing_input`` (B, L - first_len, Cv)."""
        cond = self.class_emb(labels_B)
        return self.head(self.transformer(self._teacher_inputs(cond, x_BLCv), cond_BD=cond, attn_mask=self.attn_mask))

    def training_inputs(self, tokens_BL: Tensor, labels_B: Tensor, tokenizer,
                        generator: torch.Generator | None = None) -> tuple[dict, dict]:  # fmt: skip
        with torch.no_grad():
            x_in = tokenizer.teacher_forcing_input(tokens_BL)
        return {"labels_B": labels_B, "x_BLCv": x_in}, {}

    def reference_logits(self, tokens_BL: Tensor, labels_B: Tensor, tokenizer=None) -> Tensor:
        return self(labels_B, tokenizer.teacher_forcing_input(tokens_BL))

    def training_loss(self, logits_BLV: Tensor, tokens_BL: Tensor, extra: dict) -> tuple[Tensor, Tensor]:
        return self.loss(logits_BLV, tokens_BL, self.loss_weights_L)

    def _scale_input(self, si: int, cond_RD: Tensor, x_BlCv: Tensor | None) -> Tensor:
        """Input embeddings of scale ``si``: class + ``pos_start`` (si = 0) or the tokenizer's input; + level/position."""
        start, end = self.scale_ranges[si]
        if si == 0:
            x = cond_RD.unsqueeze(1).expand(-1, self.first_len, -1) + self.pos_start
        else:
            x = self.word_embed(match_rows(x_BlCv, cond_RD.shape[0]))
        return x + self._lvl_pos(start, end)

    def step(self, state: DecodeState, step: Step, cond_RD: Tensor, cache: KVCache | None) -> Tensor:
        """Logits (R, pn^2, V) of scale ``step.group``; every earlier scale is in the cache and fully visible."""
        x = self._scale_input(step.group, cond_RD, state.extra.get("x_next"))
        return self.head(self.transformer(x, cond_BD=cond_RD, cache=cache, start=step.start))
