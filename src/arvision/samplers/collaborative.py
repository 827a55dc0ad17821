"""Collaborative decoding (CoDe, Chen et al. 2024, arXiv:2411.17787): a large drafter decodes the
first K decoding steps, a small refiner the rest.

In next-scale generation the first scales hold few tokens but decide the content, and the later
ones hold most tokens but only add detail, so a small model can take over once the drafter has
laid the image out. ``draft_scales`` = K says where it does.

The loop (:func:`arvision.samplers.loop.decode`) calls :func:`collaborate` when it is given a
refiner or ``draft_scales``. It gets back

* the plan, in which the refiner's first pass starts at sequence position 0: it also computes the
  drafted positions, teacher-forced from the decoded state, so that the refiner's own KV cache
  holds them. One pass, so the number of sequential passes does not grow;
* a step function with the generator's ``step`` signature that runs each pass on its model, with
  that model's condition rows (each has its own class embedding and null class) and KV cache.

Guidance and sampling stay the drafter's head's (they have no parameters). Both models decode the
same order into the same token layout with the same classes; :meth:`Pipeline.sample
<arvision.pipeline.Pipeline.sample>` also checks that the refiner was trained with the same
tokenizer weights.

Legend: B batch, R rows of a forward pass (2B when guiding), D condition width.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import Tensor

from arvision.samplers.config import SamplingConfig
from arvision.samplers.order import Decoder, DecodeState, Step

StepFn = Callable[[DecodeState, Step, Tensor, object], Tensor]


def check_refiner(drafter: Decoder, refiner: Decoder, tokenizer) -> None:
    """A clear error when ``refiner`` cannot take over decoding from ``drafter`` into ``tokenizer``'s layout."""
    if not isinstance(refiner, torch.nn.Module) or not hasattr(refiner, "step"):
        raise TypeError(f"refiner must be a generator (or a pipeline / shipped name, in Pipeline.sample), got {type(refiner).__name__}")
    if refiner.order_class is not drafter.order_class:
        raise ValueError(f"the refiner decodes in the {refiner.order} order and the drafter in the {drafter.order} order: "
                         "CoDe needs a refiner of the drafter's order")  # fmt: skip
    try:
        refiner.check_layout(tokenizer.layout)
    except ValueError as e:
        raise ValueError(f"the refiner does not fit this tokenizer: {e}") from None
    if refiner.config.num_classes != drafter.config.num_classes:
        raise ValueError(f"the refiner knows {refiner.config.num_classes} classes and the drafter {drafter.config.num_classes}: "
                         "they must be trained on the same classes")  # fmt: skip


def check_pairing(has_refiner: bool, s: SamplingConfig) -> None:
    """A refiner and ``draft_scales`` come together (checked before long runs start)."""
    if s.draft_scales is not None and not has_refiner:
        raise ValueError(f"draft_scales={s.draft_scales} needs a refiner: pass refiner=... (a small model of the same order, "
                         "trained with the same tokenizer, e.g. mnist-scale-refiner)")  # fmt: skip
    if has_refiner and s.draft_scales is None:
        raise ValueError("a refiner needs draft_scales=K: the drafter decodes the first K scales, the refiner the rest")


def collaborate(drafter: Decoder, refiner: Decoder | None, tokenizer, plan: list[Step], labels_B: Tensor,
                s: SamplingConfig) -> tuple[list[Step], StepFn]:  # fmt: skip
    """(plan, step function) that decode steps < ``s.draft_scales`` on ``drafter`` and the rest on
    ``refiner`` (see the module docstring)."""
    K = s.draft_scales
    check_pairing(refiner is not None, s)
    check_refiner(drafter, refiner, tokenizer)
    cond_RD = refiner.class_emb.encode(labels_B, with_null=s.guided())
    cache = refiner.new_cache(cond_RD.shape[0])
    first = next((st.index for st in plan if st.group >= K), None)  # the refiner's first pass also fills its cache

    def moved(st: Step) -> Step:
        targets = torch.arange(st.start, st.end, device=labels_B.device) if st.targets is None else st.targets
        return dataclasses.replace(st, start=0, targets=targets)

    plan = [moved(st) if st.index == first else st for st in plan]

    def step(state: DecodeState, st: Step, drafter_cond_RD: Tensor, drafter_cache) -> Tensor:
        if st.group < K:
            return drafter.step(state, st, drafter_cond_RD, drafter_cache)
        return refiner.step(state, st, cond_RD, cache)

    return plan, step
