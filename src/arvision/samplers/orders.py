"""One entry point over the orders: pick the decoding loop that matches the generator's order."""

from __future__ import annotations

import torch
from torch import Tensor

from arvision.generators import Generator, SamplingConfig
from arvision.samplers.autoregressive import SamplingStats, sample_next_scale, sample_next_token
from arvision.samplers.masked import markov_steps, masked_steps, sample_markov_scale, sample_masked, sample_neighbor

_GRID_LOOPS = {"next-token": sample_next_token, "masked": sample_masked, "next-neighbor": sample_neighbor}
_SCALE_LOOPS = {"next-scale": sample_next_scale, "markov-scale": sample_markov_scale}
_STEP_CHOICE = {"masked": masked_steps, "markov-scale": markov_steps}


def check_settings(generator: Generator, s: SamplingConfig) -> None:
    """A clear error for settings this generator's order cannot use (before any work is done)."""
    if generator.order in _STEP_CHOICE:
        _STEP_CHOICE[generator.order](generator, s)
    elif s.num_steps is not None:
        raise ValueError(
            f"the {generator.order} order always takes {generator.num_steps} steps; num_steps applies to the "
            f"{' and '.join(_STEP_CHOICE)} orders"
        )


def sample_tokens(generator: Generator, tokenizer, labels_B: Tensor, s: SamplingConfig,
                  rng: torch.Generator | None = None) -> tuple[Tensor, Tensor | None, SamplingStats]:  # fmt: skip
    """(tokens (B, L), the final latent f_hat for the scale orders else None, stats)."""
    check_settings(generator, s)
    order = generator.order
    if order in _SCALE_LOOPS:
        return _SCALE_LOOPS[order](generator, tokenizer, labels_B, s, rng)
    if order in _GRID_LOOPS:
        tokens, stats = _GRID_LOOPS[order](generator, labels_B, s, rng)
        return tokens, None, stats
    raise ValueError(f"no sampler for the generation order {order!r}")
