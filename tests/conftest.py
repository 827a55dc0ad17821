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


def shared_path(*parts: str) -> Path:
    """A file under ../shared (fixtures, data); skip the test when it is not checked out beside the repo."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not found (set ARVISION_SHARED to the shared folder)")
    return p
