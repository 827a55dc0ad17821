"""Markovian next-scale generation (HMAR, Kumbong et al. 2025, arXiv:2506.04421; MVAR, 2025).

As in VAR, step k predicts all pn_k x pn_k tokens of scale k from the multi-scale tokenizer's
accumulated latent after scales < k, area-downsampled to pn_k. That latent already sums every
earlier scale, so HMAR conditions scale k on it *alone*: attention is block-diagonal (a scale
attends only to itself) instead of VAR's block-causal mask, and sampling keeps no KV cache: each
step is one forward pass over pn_k^2 positions, whatever the number of earlier scales.

Optional masked refinement inside a scale (HMAR's several steps per scale, ``refine=True``): each
position also receives the embedding of its token of this scale, or of ``[MASK]`` (id V) while
it is unknown. Training masks a cosine-scheduled share of every scale (a whole scale in half of
the examples, so one step per scale stays good); sampling with ``num_steps`` R > 1 reveals a scale
in R MaskGIT steps (``samplers.order.reveal_pass``). R = 1 is plain Markovian next-scale.

Legend: B batch, L tokens over all scales, C width, Cv code dimension, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from arvision.generators.masked import cosine_mask_ratio, random_mask
from arvision.generators.next_scale import NextScaleConfig, NextScaleGenerator, NextScaleOrder
from arvision.generators.parts import match_rows
from arvision.modeling import register_model
from arvision.nn.kv_cache import KVCache
from arvision.nn.transformer import group_causal_mask
from arvision.samplers.config import SamplingConfig
from arvision.samplers.order import DecodeState, Sampler, Step, check_num_steps, register_order, reveal_pass


@dataclass(frozen=True, kw_only=True)
class MarkovScaleConfig(NextScaleConfig):
    """Args: refine: learn masked refinement inside a scale (a token embedding with a mask id)."""

    refine: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.subnet_depths:
            raise ValueError("subnet_depths (VARiant subnets) are for the next-scale order; markov-scale does not train them")


def same_group_mask(groups_q: Tensor, groups_k: Tensor) -> Tensor:
    """Boolean (Lq, Lk) block-diagonal mask: i may attend j iff both are in the same group."""
    return group_causal_mask(groups_q, groups_k) & group_causal_mask(groups_k, groups_q).T


@register_order
class MarkovScaleOrder(NextScaleOrder):
    """Next-scale decoding without a cache; with refinement (``num_steps`` R > 1) a scale is
    revealed in min(R, pn^2) MaskGIT passes over its own open tokens (fixed ones never masked)."""

    name = "markov-scale"
    own_settings = ("num_steps", "choice_temperature")

    def plan(self, s: SamplingConfig) -> list[Step]:
        R, out = s.num_steps or 1, []
        if R > 1 and not self.generator.config.refine:
            raise ValueError(f"num_steps={R}: this model was trained without refinement inside a scale (refine=False); use 1")
        check_num_steps(R, max(b - a for a, b in self.generator.scale_ranges), "the largest scale")
        for si, (a, b) in enumerate(self.generator.scale_ranges):
            n = min(R, b - a)
            out += [Step(len(out), si, a, b, sub=t, subs=n) for t in range(n)]
        return out

    def decide(self, state: DecodeState, step: Step, logits_BTV: Tensor, sampler: Sampler) -> None:
        reveal_pass(state, step, logits_BTV, sampler)


@register_model
class MarkovScaleGenerator(NextScaleGenerator):
    """Next-scale generator whose scales depend only on the accumulated latent of the previous one."""

    model_type = "markov_scale_generator"
    config_class = MarkovScaleConfig
    config: MarkovScaleConfig
    order_class = MarkovScaleOrder

    def __init__(self, config: MarkovScaleConfig) -> None:
        super().__init__(config)
        self.attn_mask = same_group_mask(self.lvl_1L[0], self.lvl_1L[0])
        if config.refine:
            self.tok_embeddings = nn.Embedding(config.vocab_size + 1, config.transformer.width)  # + [MASK]
            nn.init.trunc_normal_(self.tok_embeddings.weight, std=(1 / config.transformer.width / 3) ** 0.5)

    @property
    def mask_id(self) -> int:
        return self.config.vocab_size

    def new_cache(self, batch_size: int):
        return None  # every scale sees only itself: nothing to cache

    def _with_tokens(self, x_BTC: Tensor, tokens_BT: Tensor | None) -> Tensor:
        """With ``refine``: add the embeddings of the scale's tokens so far (mask id where open; all masked if None)."""
        if not self.config.refine:
            return x_BTC
        if tokens_BT is None:
            tokens_BT = torch.full(x_BTC.shape[:2], self.mask_id, dtype=torch.long, device=x_BTC.device)
        return x_BTC + self.tok_embeddings(match_rows(tokens_BT, x_BTC.shape[0]))

    def forward(self, labels_B: Tensor, x_BLCv: Tensor, tokens_BL: Tensor | None = None) -> Tensor:
        """Teacher-forced logits (B, L, V); ``tokens_BL``: the partly masked tokens (``refine`` only)."""
        cond = self.class_emb(labels_B)
        x = self._with_tokens(self._teacher_inputs(cond, x_BLCv), tokens_BL)
        return self.head(self.transformer(x, cond_BD=cond, attn_mask=self.attn_mask))

    def training_inputs(self, tokens_BL: Tensor, labels_B: Tensor, tokenizer,
                        generator: torch.Generator | None = None) -> tuple[dict, dict]:  # fmt: skip
        inputs, extra = super().training_inputs(tokens_BL, labels_B, tokenizer, generator)
        if not self.config.refine:
            return inputs, extra
        B, L = tokens_BL.shape
        dev = tokens_BL.device
        masked = torch.zeros(B, L, dtype=torch.bool, device=dev)
        whole = torch.rand(B, 1, generator=generator, device=dev) < 0.5  # whole scale masked: one step per scale
        for start, end in self.scale_ranges:
            n = end - start
            u = torch.rand(B, 1, generator=generator, device=dev)
            n_mask = torch.where(whole, n, (cosine_mask_ratio(u) * n).ceil().clamp(1, n))
            masked[:, start:end] = random_mask(n_mask, B, n, generator, dev)
        inputs["tokens_BL"] = torch.where(masked, self.mask_id, tokens_BL)
        return inputs, {"masked_BL": masked}

    def reference_logits(self, tokens_BL: Tensor, labels_B: Tensor, tokenizer=None) -> Tensor:
        return self(labels_B, tokenizer.teacher_forcing_input(tokens_BL), tokens_BL if self.config.refine else None)

    def training_loss(self, logits_BLV: Tensor, tokens_BL: Tensor, extra: dict) -> tuple[Tensor, Tensor]:
        if "masked_BL" not in extra:
            return super().training_loss(logits_BLV, tokens_BL, extra)
        m = extra["masked_BL"]
        w = self.loss_weights_L.expand_as(m)[m] if self.loss_weights_L is not None else None
        return self.loss(logits_BLV[m].unsqueeze(0), tokens_BL[m].unsqueeze(0), w)

    def step(self, state: DecodeState, step: Step, cond_RD: Tensor, cache: KVCache | None = None) -> Tensor:
        """Logits (R, pn^2, V) of scale ``step.group`` from its input alone (no cache); with
        ``refine``, also this scale's tokens so far (mask id where still open)."""
        x = self._scale_input(step.group, cond_RD, state.extra.get("x_next"))
        x = self._with_tokens(x, state.tokens_BL[:, step.start : step.end])
        return self.head(self.transformer(x, cond_BD=cond_RD))
