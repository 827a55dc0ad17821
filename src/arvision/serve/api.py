"""What the web API says about a model (``GET /models``) and how it reads a request (``POST /generate``).

A model is described by the settings a person may change on it: the common ones (guidance,
temperature, the categorical filters) and those its order and head read (``Order.own_settings``,
``head.own_settings``). The page builds its form from this description, so a new order with a
new setting shows up without touching the page.

A request is checked completely before it is queued (the library's own checks:
``Pipeline.class_ids``, ``Pipeline.sampling_config``), so a mistake is a 400 with a message
that says what to change, never an error in the middle of a stream.
"""

from __future__ import annotations

import numbers
import secrets
from dataclasses import dataclass, field
from typing import Any

from arvision.pipeline import Pipeline
from arvision.samplers.config import SamplingConfig
from arvision.samplers.order import Order

SEED_LIMIT = 2**63  # torch.Generator.manual_seed takes seeds below this

# name -> (kind, help); kind: float | int | bool | choice | ints (comma-separated integers)
SETTINGS: dict[str, tuple[str, str]] = {
    "cfg": ("float", "guidance strength (classifier-free guidance; the model's schedule decides what 'off' is)"),
    "temperature": ("float", "sampling temperature (> 0)"),
    "top_k": ("int", "keep the k most likely tokens (0 = off, 1 = greedy)"),
    "top_p": ("float", "nucleus filter (0 or 1 = off)"),
    "num_steps": ("int", "decoding steps (masked/MAR: for the whole grid; markov-scale: refinement steps per scale)"),
    "choice_temperature": ("float", "Gumbel noise on the confidences that decide which tokens a masked step keeps"),
    "decoding": ("choice", "plain decoding, or speculative Jacobi decoding (sjd: the model drafts tokens for itself)"),
    "window": ("int", "sjd: draft tokens verified per pass"),
    "jacobi_init": ("choice", "sjd: new draft positions start from random tokens or the token above"),
    "depth_schedule": ("ints", "VARiant: backbone blocks per scale, e.g. 6,6,6,3,3,3 (blank = full depth)"),
    "scales": ("ints", "FlexVAR: side of every step's token map, coarse to fine, e.g. 1,2,4,7 (blank = the model's)"),
    "num_tokens": ("int", "1-D token sequences: generate only the first k tokens and decode that prefix (blank = all)"),
    "diffusion_steps": ("int", "denoising steps per token of the diffusion head (blank = the head's default)"),
    "constrained": ("bool", "grammar-constrained decoding (JPEG bytes): only tokens that keep the stream decodable are drawn"),
}
CHOICES = {"decoding": ("plain", "sjd"), "jacobi_init": ("random", "spatial")}
# what needs a second model (a draft for speculative decoding and LANTERN, a refiner for CoDe), which a request cannot name
NOT_SERVED = {"decoding": ("speculative", "lantern")}
NEEDS_MODEL = ("draft_scales", "lantern_k", "lantern_delta")
# ceilings on settings whose cost grows without bound (the library bounds the others: steps by tokens, sides by the model)
MAX_SETTING = {"diffusion_steps": 1000, "window": 256, "num_steps": 1024}


def model_settings(pipe: Pipeline) -> list[str]:
    """The settings of :data:`SETTINGS` this model reads, in display order."""
    g = pipe.generator
    head_own = getattr(g.head, "own_settings", ("top_k", "top_p"))
    own = set(g.order_class.own_settings) | set(head_own) | {"cfg", "temperature"}
    return [name for name in SETTINGS if name in own]


def has_preview(order: Order) -> bool:
    """Whether the order can show a partial image between steps (it overrides :meth:`Order.preview`)."""
    return type(order).preview is not Order.preview


def describe_model(name: str, pipe: Pipeline) -> dict[str, Any]:
    """``GET /models`` entry of one model: what it is and the form of its settings (with defaults)."""
    g, d = pipe.generator, pipe.defaults
    settings = []
    for s in model_settings(pipe):
        kind, help_ = SETTINGS[s]
        default = getattr(d, s)
        entry = {"name": s, "kind": kind, "default": list(default) if isinstance(default, tuple) else default, "help": help_}
        if kind == "choice":
            entry["choices"] = list(CHOICES[s])
        settings.append(entry)
    tok = pipe.tokenizer.config
    return {
        "name": name,
        "description": pipe.info.get("description", ""),
        "order": g.order,
        "num_classes": pipe.num_classes,
        "image_size": tok.image_size,
        "channels": tok.in_channels,
        "steps": g.num_steps,
        "cfg_schedule": d.cfg_schedule,
        "previews": has_preview(g.order_class(g, pipe.tokenizer)),
        "settings": settings,
    }


@dataclass
class Request:
    """A checked ``POST /generate`` body: per-image labels and seeds, resolved settings."""

    model: str
    classes: list[int]
    n: int
    seed: int
    overrides: dict[str, Any]  # what the request set (passed to Pipeline.sample)
    settings: SamplingConfig  # the model's defaults with the overrides: what batches are merged on
    previews: bool = True
    labels: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.labels = [c for c in self.classes for _ in range(self.n)]  # as Pipeline.sample: all of classes[0] first

    @property
    def num_images(self) -> int:
        return len(self.labels)


class RequestError(ValueError):
    """A request the server refuses: ``status`` is the HTTP status (400 bad input, 404, 413, 429)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise RequestError(f"{what} must be an integer, got {value!r}")
    return int(value)


def _setting(name: str, value: Any) -> Any:
    """A request's value of setting ``name`` in the type SamplingConfig takes (None = the model's default)."""
    kind = SETTINGS[name][0] if name in SETTINGS else None
    if value is None or value == "":
        return None
    if name in NOT_SERVED and value in NOT_SERVED[name]:
        raise RequestError(f"{name}={value!r} needs a second model (a draft), which the web API does not take; "
                           f"use {' or '.join(map(repr, CHOICES[name]))}, or `arvision generate --draft`")  # fmt: skip
    if kind == "float" or (kind is None and isinstance(value, float)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise RequestError(f"{name} must be a number, got {value!r}")
        return float(value)
    if kind == "int":
        value = _int(value, name)
        if value > MAX_SETTING.get(name, value):
            raise RequestError(f"{name}={value} is more than the {MAX_SETTING[name]} this server allows")
        return value
    if kind == "bool":
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise RequestError(f"{name} must be true or false, got {value!r}")
        return value
    if kind == "ints":
        if isinstance(value, str):
            try:
                value = [int(v) for v in value.replace(" ", "").split(",")]
            except ValueError:
                raise RequestError(f"{name} must be comma-separated integers such as 1,2,4,7, got {value!r}") from None
        if not isinstance(value, list):
            raise RequestError(f"{name} must be a list of integers, got {value!r}")
        return tuple(_int(v, name) for v in value)
    if kind == "choice" and value not in CHOICES[name]:
        raise RequestError(f"{name} must be one of {list(CHOICES[name])}, got {value!r}")
    return value


def parse_request(body: Any, pipelines: dict[str, Pipeline], max_images: int) -> Request:
    """Check a decoded JSON body against the served models; a :class:`RequestError` says what is wrong."""
    if not isinstance(body, dict):
        raise RequestError('the body must be a JSON object such as {"model": "mnist-scale", "classes": [3], "n": 4}')
    unknown = set(body) - {"model", "classes", "n", "seed", "settings", "previews"}
    if unknown:
        raise RequestError(f"unknown field(s) {sorted(unknown)}: a request takes model, classes, n, seed, settings, previews")
    name = body.get("model")
    if name not in pipelines:
        raise RequestError(f"unknown model {name!r}: this server serves {', '.join(pipelines)}", status=404)
    pipe = pipelines[name]
    classes = body.get("classes")
    try:
        classes = list(range(pipe.num_classes)) if classes is None else pipe.class_ids(classes)
    except (TypeError, ValueError) as e:
        raise RequestError(str(e)) from None
    n = _int(body.get("n", 1), "n (images per class)")
    if n < 1:
        raise RequestError(f"n (images per class) must be >= 1, got {n}")
    if n * len(classes) > max_images:
        raise RequestError(f"{n * len(classes)} images ({len(classes)} classes x {n}) is more than the {max_images} per request "
                           "this server allows: ask for fewer, or start it with a larger --max-images", status=413)  # fmt: skip
    seed = body.get("seed")
    seed = secrets.randbelow(2**31) if seed is None else _int(seed, "seed")
    if not 0 <= seed < SEED_LIMIT:
        raise RequestError(f"seed must be in [0, 2**63), got {seed}")
    raw = body.get("settings") or {}
    if not isinstance(raw, dict):
        raise RequestError(f"settings must be an object of sampling settings, got {raw!r}")
    known = set(SamplingConfig.__dataclass_fields__)
    for k in raw:
        if k not in known or k in NEEDS_MODEL:
            raise RequestError(f"unknown setting {k!r} for {name}: it takes {', '.join(model_settings(pipe))}")
    overrides = {k: v for k, v in ((k, _setting(k, v)) for k, v in raw.items()) if v is not None}
    try:
        settings = pipe.sampling_config(**overrides)
    except (TypeError, ValueError) as e:
        raise RequestError(str(e)) from None
    previews = body.get("previews", True)
    if not isinstance(previews, bool):
        raise RequestError(f"previews must be true or false, got {previews!r}")
    return Request(model=name, classes=classes, n=n, seed=seed, overrides=overrides, settings=settings, previews=previews)
