"""Every shipped generator's tokens for fixed seeds and settings, recorded before the decoding
redesign (issue 12): any change to the decoding layer must reproduce them exactly.

The mnist-scale and mnist-masked cases were re-recorded on 2026-12-01 for their retrained weights,
the mnist-masked ones again, the mnist-markov-scale ones (three times) and the mnist-scale ones again on 2026-12-02 (issue 18; every other case
came out bit-identical in those re-recordings, so they still hold the tokens of before the redesign).

Regenerate (only when a model or a deliberate sampling change makes the old tokens obsolete):
    ARVISION_RECORD_GOLDEN=1 pytest tests/test_regression_tokens.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import arvision

GOLDEN = Path(__file__).parent / "golden" / "shipped_tokens.safetensors"
CLASSES = [0, 3, 7, 9]

# (case name, model, sampling overrides): the defaults plus every setting that changes the loop's path.
# "-default" = the shipped defaults when the tokens were recorded (cfg 2, choice temperature 4.5, temperature 1, 8 masked steps),
# pinned here since the calibrated defaults of 2026-12-01/02 (issue 18): the tokens test decoding, not the defaults.
# Temperature 1 is pinned for every case in sample_case (PINNED) unless a case sets its own.
PINNED = {"temperature": 1.0}
CASES = [
    ("raster-default", "mnist-raster", {"cfg": 2.0}),
    ("raster-topk-interval", "mnist-raster", {"top_k": 20, "cfg_interval": 5, "temperature": 0.9, "cfg": 2.0}),
    ("raster-unguided-topp", "mnist-raster", {"cfg": 1.0, "top_p": 0.8}),
    ("raster-greedy", "mnist-raster", {"top_k": 1, "cfg": 3.0}),
    ("scale-default", "mnist-scale", {"cfg": 2.0}),
    ("scale-topk-topp", "mnist-scale", {"top_k": 30, "top_p": 0.9, "cfg": 1.0}),
    ("scale-unguided", "mnist-scale", {"cfg": 0.0}),
    ("masked-default", "mnist-masked", {"cfg": 2.0, "choice_temperature": 4.5, "num_steps": 8}),
    ("masked-steps", "mnist-masked", {"num_steps": 4, "choice_temperature": 10.0, "cfg": 1.5}),
    ("masked-unguided-topk", "mnist-masked", {"cfg": 1.0, "top_k": 10, "num_steps": 12, "choice_temperature": 4.5}),
    ("neighbor-default", "mnist-neighbor", {"cfg": 2.0}),
    ("neighbor-topk", "mnist-neighbor", {"top_k": 20, "cfg": 1.5}),
    ("markov-default", "mnist-markov-scale", {"cfg": 2.0}),
    ("markov-refine", "mnist-markov-scale", {"num_steps": 3, "top_k": 40, "cfg": 2.0}),
]


def sample_case(model: str, overrides: dict) -> torch.Tensor:
    pipe = arvision.load(model)
    # one torch.Generator for the call: the single stream the tokens were recorded with (per-image
    # streams, the default for an int seed, are tested in test_conformance.py)
    settings = {**PINNED, **overrides}
    return pipe.sample(CLASSES, 2, seed=torch.Generator().manual_seed(1234), batch_size=5, decode=False, **settings).tokens


@pytest.mark.skipif(os.environ.get("ARVISION_RECORD_GOLDEN") != "1", reason="records the golden tokens on request only")
def test_record_golden_tokens() -> None:
    GOLDEN.parent.mkdir(exist_ok=True)
    save_file({name: sample_case(model, o).contiguous() for name, model, o in CASES}, str(GOLDEN))


@pytest.mark.parametrize("name,model,overrides", CASES, ids=[c[0] for c in CASES])
def test_shipped_tokens_equal_the_recorded_ones(name: str, model: str, overrides: dict) -> None:
    golden = load_file(str(GOLDEN))[name]
    assert torch.equal(sample_case(model, overrides), golden), f"{name}: the tokens changed"
