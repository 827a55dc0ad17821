"""Sampling loops: the sampler decides, the model only computes logits.

``sample_next_token`` decodes a raster sequence one token per forward pass; ``sample_next_scale``
one scale per forward pass. Both take an explicit ``torch.Generator``, run guidance by doubling
the batch ([conditional; null class]) and return statistics beside the tokens.

Legend: B batch, L tokens, V vocabulary.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from arvision.generators.base import SamplingConfig
from arvision.generators.next_scale import NextScaleGenerator
from arvision.generators.next_token import NextTokenGenerator
from arvision.samplers.logits import apply_guidance, guidance_weight, sample_logits


@dataclass
class SamplingStats:
    """What sampling cost: sequential generator forward passes (per batch, summed over batches),
    tokens produced, images, batches and wall time."""

    forward_passes: int = 0
    tokens: int = 0
    images: int = 0
    batches: int = 0
    seconds: float = 0.0

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


def with_null(model, labels_B: Tensor, guided: bool) -> Tensor:
    return torch.cat([labels_B, torch.full_like(labels_B, model.null_class)]) if guided else labels_B


def doubled(x: Tensor, guided: bool) -> Tensor:
    """The batch twice ([conditional; null class] rows) when guiding, else as is."""
    return torch.cat([x, x]) if guided else x


def guide(logits: Tensor, B: int, s: SamplingConfig, step: int, num_steps: int, use_cfg: bool) -> Tensor:
    if logits.shape[0] == B:
        return logits
    if not use_cfg:
        return logits[:B]
    return apply_guidance(logits[:B], logits[B:], guidance_weight(s.cfg, s.cfg_schedule, step, num_steps), s.cfg_schedule)


@torch.no_grad()
def sample_next_token(model: NextTokenGenerator, labels_B: Tensor, s: SamplingConfig,
                      generator: torch.Generator | None = None) -> tuple[Tensor, SamplingStats]:  # fmt: skip
    """Raster decoding with a KV cache: one prefill (class token) and L-1 single-token steps."""
    t0 = time.perf_counter()
    B, L, guided = labels_B.shape[0], model.num_tokens, s.guided()
    labels_in = with_null(model, labels_B, guided)
    cache = model.new_cache(labels_in.shape[0])
    logits = model.step(labels_in, None, cache)[:, -1]
    out = torch.empty(B, L, dtype=torch.long, device=labels_B.device)
    for i in range(L):
        # LlamaGen's cfg_interval: the prefill always guides; decode step i-1 guides iff i-1 <= interval.
        use_cfg = i == 0 or s.cfg_interval < 0 or i - 1 <= s.cfg_interval
        guided_logits = guide(logits, B, s, i, L, use_cfg)
        tok = sample_logits(guided_logits, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, generator=generator)
        out[:, i] = tok
        if i < L - 1:
            tok_in = doubled(tok, guided)
            logits = model.step(labels_in, tok_in.unsqueeze(1), cache)[:, -1]
    return out, SamplingStats(forward_passes=L, tokens=B * L, images=B, batches=1, seconds=time.perf_counter() - t0)


@torch.no_grad()
def sample_next_scale(model: NextScaleGenerator, tokenizer, labels_B: Tensor, s: SamplingConfig,
                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, SamplingStats]:  # fmt: skip
    """Next-scale decoding: one forward pass per scale; returns (tokens (B, L), final f_hat, stats)."""
    t0 = time.perf_counter()
    B, guided = labels_B.shape[0], s.guided()
    labels_in = with_null(model, labels_B, guided)
    cond = model.class_emb(labels_in)
    cache = model.new_cache(labels_in.shape[0])
    f_hat = tokenizer.empty_fhat(B)
    x_next, pieces = None, []
    S = len(model.config.patch_nums)
    for si in range(S):
        logits = guide(model.step(si, cond, x_next, cache), B, s, si, S, True)
        V = logits.shape[-1]
        idx = sample_logits(logits.reshape(-1, V), temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                            generator=generator).view(B, -1)  # fmt: skip
        pieces.append(idx)
        f_hat, nxt = tokenizer.next_scale_input(si, f_hat, idx)
        if si < S - 1:
            x_next = doubled(nxt, guided)
    tokens = torch.cat(pieces, 1)
    return tokens, f_hat, SamplingStats(forward_passes=S, tokens=tokens.numel(), images=B, batches=1, seconds=time.perf_counter() - t0)
