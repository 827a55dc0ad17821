"""The parts a generator plugs into the shared backbone: a condition and a head.

A **condition** turns what the user conditions on into the vector the backbone consumes (a
prefix token or the AdaLN input, (B, D)) and knows its own null for classifier-free guidance.
A **head** turns backbone outputs into a training loss and into samples. Both keep the
parameter names of the anchors (``class_emb.weight``, ``head.weight``), so official checkpoints
load into them unchanged. A new kind (precomputed text embeddings, a diffusion head for
continuous tokens) implements the same methods.

Legend: B batch, T positions, C width, D condition width, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from torch import nn

from arvision.nn.linear import Linear
from arvision.samplers.config import SamplingConfig
from arvision.samplers.logits import apply_guidance, sample_categorical


class ClassCondition(nn.Embedding):
    """Class label -> (B, D) embedding; id ``num_classes`` is the learned null class."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__(num_classes + 1, dim)
        self.num_classes = num_classes

    @property
    def null_id(self) -> int:
        return self.num_classes

    def check(self, labels_B: Tensor) -> None:
        if labels_B.dtype in (torch.bool,) or labels_B.is_floating_point():
            raise TypeError(f"class labels must be integer ids, got dtype {labels_B.dtype}")
        if labels_B.numel() and (labels_B.min() < 0 or labels_B.max() > self.null_id):
            raise ValueError(f"class ids must be in 0..{self.num_classes - 1} (or {self.null_id}, the null class), "
                             f"got [{labels_B.min().item()}, {labels_B.max().item()}]")  # fmt: skip

    def with_null(self, labels_B: Tensor) -> Tensor:
        """[labels; null] (2B,): the rows of a guided batch."""
        return torch.cat([labels_B, torch.full_like(labels_B, self.null_id)])

    def encode(self, labels_B: Tensor, *, with_null: bool = False) -> Tensor:
        """What the backbone consumes, (B, D) or with the null rows appended (2B, D)."""
        self.check(labels_B)
        return self(self.with_null(labels_B) if with_null else labels_B)

    def drop(self, labels_B: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
        """Training-time condition dropout: each label becomes the null class with probability ``p``."""
        if p <= 0:
            return labels_B
        drop = torch.rand(labels_B.shape, generator=generator, device=labels_B.device) < p
        return torch.where(drop, torch.full_like(labels_B, self.null_id), labels_B)


class CategoricalHead(Linear):
    """Backbone output (B, T, C) -> logits (B, T, V) over the codebook; cross-entropy loss;
    guidance and sampling on the logits (the loop calls :meth:`guide` and, through the
    :class:`~arvision.samplers.order.Sampler`, :meth:`sample`)."""

    def guide(self, cond_BTV: Tensor, uncond_BTV: Tensor, weight: float, schedule: str) -> Tensor:
        """Classifier-free guidance of the logits (each anchor's arithmetic, see ``apply_guidance``)."""
        return apply_guidance(cond_BTV, uncond_BTV, weight, schedule)

    def sample(self, logits_BTV: Tensor, s: SamplingConfig, rng: torch.Generator | None) -> Tensor:
        """Token ids (B, T): temperature, top-k, top-p, one multinomial draw per position."""
        return sample_categorical(logits_BTV, s, rng)

    def loss(self, logits_BTV: Tensor, tokens_BT: Tensor, weights_T: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Cross-entropy (per-token, optionally weighted over positions) and token accuracy."""
        ce_BT = F.cross_entropy(logits_BTV.flatten(0, 1).float(), tokens_BT.flatten(), reduction="none").view(tokens_BT.shape)
        if weights_T is None:
            loss = ce_BT.mean()
        else:
            loss = (ce_BT * weights_T).sum(1).mean() / weights_T.sum()
        acc = (logits_BTV.argmax(-1) == tokens_BT).float().mean()
        return loss, acc


def match_rows(x: Tensor, rows: int) -> Tensor:
    """``x`` repeated along the batch to ``rows`` rows (the guided batch runs every input twice)."""
    return x if x.shape[0] == rows else x.repeat(rows // x.shape[0], *([1] * (x.ndim - 1)))
