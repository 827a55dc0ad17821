from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ARVISION_SHARED", REPO.parent / "shared"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never read or fill the user's ~/.cache/arvision (reference features, token caches)."""
    os.environ["ARVISION_CACHE"] = str(tmp_path_factory.mktemp("arvision-cache"))


def shared_path(*parts: str) -> Path:
    """A file under ../shared (fixtures, data); skip the test when it is not checked out beside the repo."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not found (set ARVISION_SHARED to the shared folder)")
    return p


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny next-scale pipeline saved as a model directory (fast to load and sample)."""
    from arvision.pipeline import Pipeline
    from arvision.presets import GENERATOR_PRESETS, TOKENIZER_PRESETS

    gp = GENERATOR_PRESETS["tiny-scale"]
    tp = TOKENIZER_PRESETS[gp.tokenizer]
    tok = tp.model_class(tp.config)
    pipe = Pipeline(tok, gp.model_class(gp.build_config(tok, 10)))
    return pipe.save_pretrained(tmp_path_factory.mktemp("pipe") / "tiny-scale", info={"description": "tiny"})
