"""Coarse-to-fine labels (CTF; Guo et al. 2025, "Improving Autoregressive Image Generation through
Coarse-to-Fine Token Prediction", arXiv:2503.16194).

The tokenizer's codes are clustered with k-means into K coarse labels (codes with similar vectors
share a label; the map is computed once from the tokenizer's weights, seeded, and stored in the
config, so a model directory is self-contained). Decoding is two stages:

1. **coarse**: raster next-token over the coarse labels, one K-way choice per pass with a KV cache
   (this is :class:`NextTokenGenerator` with a K-entry embedding and head);
2. **fine**: one bidirectional pass of a small extra transformer over the whole coarse sequence
   (+ the class) gives every position's code, restricted to the codes of its coarse label (the
   logits of other clusters are masked).

A grid of L tokens takes L + 1 forward passes. Training teacher-forces both: coarse cross-entropy
on the true labels plus fine cross-entropy given the true coarse sequence.

Legend: B batch, R rows of a pass (2B when guiding), L tokens (grid side n, L = n*n),
C width, K coarse labels, V codebook size, D code dimension.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from arvision.generators.next_token import NextTokenConfig, NextTokenGenerator
from arvision.generators.parts import CategoricalHead, match_rows
from arvision.modeling import register_model
from arvision.nn.kv_cache import KVCache
from arvision.nn.transformer import Transformer
from arvision.samplers.config import SamplingConfig
from arvision.samplers.order import DecodeState, Order, Sampler, Step, register_order

MASKED = -1e4  # logit of a code outside the position's cluster: finite, so guidance never gives inf - inf


@dataclass(frozen=True, kw_only=True)
class CTFConfig(NextTokenConfig):
    """Args (besides :class:`NextTokenConfig`'s):
        num_coarse: K, coarse labels (k-means clusters of the codes), 2 <= K <= V.
        coarse_map: the coarse label of every code (V entries, each label used); derived from the
            tokenizer by :meth:`CTFGenerator.config_for_tokenizer`.
        kmeans_seed: seed of the k-means++ start that made ``coarse_map``.
        fine_depth: blocks of the bidirectional fine-stage transformer (the backbone's width and heads).
        fine_loss_weight: weight of the fine cross-entropy in the training loss (coarse: 1).
    """

    num_coarse: int = 16
    coarse_map: tuple[int, ...] = ()
    kmeans_seed: int = 0
    fine_depth: int = 2
    fine_loss_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_num_coarse(self.num_coarse, self.vocab_size)
        if len(self.coarse_map) != self.vocab_size or set(self.coarse_map) != set(range(self.num_coarse)):
            raise ValueError(f"coarse_map must give each of the {self.vocab_size} codes a label in 0..{self.num_coarse - 1} "
                             "and use every label; build the config with CTFGenerator.config_for_tokenizer(tokenizer, ...)")  # fmt: skip
        if self.fine_depth < 1 or self.fine_loss_weight <= 0:
            raise ValueError(f"fine_depth must be >= 1 and fine_loss_weight > 0, got {self.fine_depth}, {self.fine_loss_weight}")


def check_num_coarse(num_coarse: int, vocab_size: int) -> None:
    if not 2 <= num_coarse <= vocab_size:
        raise ValueError(f"num_coarse={num_coarse}: the coarse labels cluster the tokenizer's {vocab_size} codes and each "
                         f"needs at least one code, so choose 2 <= num_coarse <= {vocab_size}")  # fmt: skip


def coarse_map(codes_VD: Tensor, num_coarse: int, seed: int = 0) -> tuple[int, ...]:
    """The coarse label of every code: k-means (k-means++ start from ``seed``) on the code vectors.
    A label left without codes (duplicate codes) takes the code farthest from its own centre among
    the labels that have several, so every label has at least one code."""
    from arvision.samplers.search import kmeans  # here: samplers.search imports the pipeline layer

    check_num_coarse(num_coarse, codes_VD.shape[0])
    x = codes_VD.detach().double().cpu()
    centres_KD = kmeans(x, num_coarse, torch.Generator().manual_seed(seed), iters=100)
    assign_V = torch.cdist(x, centres_KD).argmin(1)
    for j in range(num_coarse):
        if not (assign_V == j).any():
            counts_K = torch.bincount(assign_V, minlength=num_coarse)
            d_V = (x - centres_KD[assign_V]).norm(dim=1).masked_fill(counts_K[assign_V] < 2, -1.0)
            assign_V[d_V.argmax()] = j
    return tuple(assign_V.tolist())


@register_order
class CoarseToFineOrder(Order):
    """L coarse passes (pass i predicts position i's coarse label, KV cache), then one fine pass that
    predicts every code. Known tokens (editing) keep their code, and their coarse label is teacher-forced."""

    name = "coarse-to-fine"

    def plan(self, s: SamplingConfig) -> list[Step]:
        L = self.generator.num_tokens
        return [Step(i, i, i, i + 1, output="coarse") for i in range(L)] + [Step(L, L, 0, L)]

    def start(self, batch_size: int, prior_BL: Tensor | None, known_BL: Tensor | None, device: torch.device) -> DecodeState:
        state = super().start(batch_size, prior_BL, known_BL, device)
        state.extra["coarse_BL"] = self.generator.coarse_of[state.tokens_BL]  # right where known; open ones get sampled
        return state

    def update(self, state: DecodeState, step: Step, logits_BTV: Tensor, sampler: Sampler) -> None:
        if step.output != "coarse":
            return super().update(state, step, logits_BTV, sampler)  # every code at once (known ones kept)
        i, coarse = step.predicts, state.extra["coarse_BL"]
        coarse[:, i] = torch.where(state.known_BL[:, i], coarse[:, i], sampler.sample(logits_BTV))


@register_model
class CTFGenerator(NextTokenGenerator):
    """Class-conditional coarse-to-fine generator over a VQ token grid: raster next-token over coarse
    labels (the embedding and head of :class:`NextTokenGenerator` are K-way) + a bidirectional fine pass."""

    model_type = "ctf_generator"
    config_class = CTFConfig
    config: CTFConfig
    order_class = CoarseToFineOrder

    def __init__(self, config: CTFConfig) -> None:
        super().__init__(config)
        C = config.transformer.width
        self.register_buffer("coarse_of", torch.tensor(config.coarse_map, dtype=torch.long), persistent=False)  # (V,)
        self.fine_embed = nn.Embedding(config.num_coarse, C)
        self.fine = Transformer(dataclasses.replace(config.transformer, depth=config.fine_depth))
        self.fine_head = CategoricalHead(C, config.vocab_size, bias=config.head_bias)
        self.init_weights()  # again, now that the fine stage exists (same recipe for every part)

    @classmethod
    def config_for_tokenizer(cls, tokenizer, **fields) -> CTFConfig:
        """The config for a VQ grid tokenizer, with the coarse map clustered from its code vectors."""
        cls.layout_fields(tokenizer.layout)  # a clear error first if it is not a grid of ids
        quantize = getattr(tokenizer, "quantize", None)
        if quantize is None or not hasattr(quantize, "codes"):
            raise ValueError(f"coarse-to-fine clusters the tokenizer's code vectors, and {type(tokenizer).__name__} has no codebook")
        K = fields.get("num_coarse", CTFConfig.num_coarse)
        check_num_coarse(K, tokenizer.layout.vocab_size)
        codes = coarse_map(quantize.codes(), K, fields.get("kmeans_seed", CTFConfig.kmeans_seed))
        return cls.config_for(tokenizer.layout, coarse_map=codes, **fields)

    def build_token_embedding(self) -> nn.Module:
        return nn.Embedding(self.config.num_coarse, self.config.transformer.width)  # the causal stage reads coarse labels

    def build_head(self) -> nn.Module:
        return CategoricalHead(self.config.transformer.width, self.config.num_coarse, bias=self.config.head_bias)

    def causal_inputs(self, state: DecodeState) -> Tensor:
        return state.extra["coarse_BL"]

    def fine_logits(self, coarse_BL: Tensor, cond_BC: Tensor) -> Tensor:
        """Logits (B, L, V) of every code given the whole coarse sequence (bidirectional); codes outside
        a position's coarse label get ``MASKED``."""
        x = self.fine_embed(coarse_BL)
        if self.config.positions == "learned":
            x = x + self.pos_embed
        prefix = int(self.config.transformer.conditioning == "prefix")
        if prefix:
            x = torch.cat([cond_BC.unsqueeze(1), x], 1)
        rope = self.rope_table[1 - prefix :] if self.config.positions == "rope2d" else None  # row 0: the class token's
        h = self.fine(x, cond_BD=self._adaln(cond_BC), rope=rope)[:, prefix:]
        outside_BLV = self.coarse_of != coarse_BL.unsqueeze(-1)
        return self.fine_head(h).masked_fill(outside_BLV, MASKED)

    def forward(self, tokens_BL: Tensor, labels_B: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher-forced (coarse logits (B, L, K), fine logits (B, L, V)): position p's coarse label
        from the class and labels < p; every code from the true coarse sequence."""
        coarse_BL = self.coarse_of[tokens_BL]
        return self.head(self.hidden(coarse_BL, labels_B)), self.fine_logits(coarse_BL, self.class_emb(labels_B))

    def reference_logits(self, tokens_BL: Tensor, labels_B: Tensor, tokenizer=None) -> dict[str, Tensor]:
        coarse, fine = self(tokens_BL, labels_B)
        return {"coarse": coarse, "tokens": fine}

    def step(self, state: DecodeState, step: Step, cond_RD: Tensor, cache: KVCache | None) -> Tensor:
        """A coarse pass (K-way logits of ``step.predicts``, KV cache) or the fine pass (V-way, every position)."""
        if step.output == "coarse":
            return super().step(state, step, cond_RD, cache)
        return self.fine_logits(match_rows(state.extra["coarse_BL"], cond_RD.shape[0]), cond_RD)

    def training_loss(self, out: tuple[Tensor, Tensor], tokens_BL: Tensor, extra: dict) -> tuple[Tensor, Tensor]:
        """Coarse + weighted fine cross-entropy; accuracy: both argmaxes right (coarse label and code
        given the true coarse sequence), comparable to a raster model's token accuracy."""
        coarse_BLK, fine_BLV = out
        coarse_BL = self.coarse_of[tokens_BL]
        coarse_loss, _ = self.head.loss(coarse_BLK, coarse_BL)
        fine_loss, _ = self.fine_head.loss(fine_BLV, tokens_BL)
        right = (coarse_BLK.argmax(-1) == coarse_BL) & (fine_BLV.argmax(-1) == tokens_BL)
        return coarse_loss + self.config.fine_loss_weight * fine_loss, right.float().mean()
