"""``arvision serve``: a web page and JSON API over generator pipelines (standard library only).

    from arvision.serve import GenerationServer, load_pipelines
    server = GenerationServer(load_pipelines(["mnist-scale"]), port=8000)
    server.serve_forever()          # or server.start() ... server.close()

See docs/serve.md for the API (``GET /models``, ``POST /generate``, ``POST /cancel/ID``).
"""

from __future__ import annotations

import os
from pathlib import Path

from arvision.hub import list_models, load_pipeline, read_model_config, resolve
from arvision.pipeline import Pipeline
from arvision.serve.api import Request, RequestError, describe_model, parse_request
from arvision.serve.http import GenerationServer
from arvision.serve.worker import PER_IMAGE_SEEDS, Job, ModelWorker


def shipped_generators() -> list[str]:
    """Names of the generators shipped with arvision (what ``arvision serve`` serves by default)."""
    return [n for n in list_models() if read_model_config(resolve(n))["model_type"].endswith("_generator")]


def load_pipelines(models: list[str | os.PathLike] | None = None, *, device: str = "cpu") -> dict[str, Pipeline]:
    """Pipelines by the name the API knows them by: a shipped name as is, a directory by its folder name."""
    out: dict[str, Pipeline] = {}
    for m in models or shipped_generators():
        name = str(m) if str(m) in list_models() else Path(m).resolve().name
        if name in out:
            raise ValueError(f"two models would be served as {name!r}: give directories with different folder names")
        out[name] = load_pipeline(m, device=device)
    return out


__all__ = ["GenerationServer", "Job", "ModelWorker", "PER_IMAGE_SEEDS", "Request", "RequestError", "describe_model",
           "load_pipelines", "parse_request", "shipped_generators"]  # fmt: skip
