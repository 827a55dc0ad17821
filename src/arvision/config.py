"""Configs are data: frozen keyword-only dataclasses that round-trip through JSON.

``to_dict`` / ``from_dict`` are the only (de)serialisation path, so a config saved next to the
weights rebuilds exactly the same model. Unknown keys are an error (they usually mean the file was
written by a newer arvision), never silently dropped.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

T = TypeVar("T", bound="Config")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Base class of every arvision config."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} key(s) {unknown}; valid keys are {sorted(names)}. "
                "If this config was written by a newer arvision, upgrade arvision."
            )
        hints = typing.get_type_hints(cls)
        for k, v in data.items():
            _check_type(cls, k, v, hints.get(k))
        kwargs = {k: _from_json(v, hints.get(k)) for k, v in data.items()}
        return cls(**kwargs)

    def replace(self: T, **changes: Any) -> T:
        """A copy with some fields changed (validated again by ``__post_init__``)."""
        return dataclasses.replace(self, **changes)


_JSON_TYPES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _check_type(cls: type, name: str, value: Any, hint: Any) -> None:
    """A clear TypeError when a JSON value cannot be the field's plain type (a config edited by
    hand or damaged: ``"depth": "12"``, ``"transformer": []``); unions and other hints pass."""
    if isinstance(hint, type) and issubclass(hint, Config):
        ok, want = isinstance(value, dict), "an object of its fields"
    elif hint in _JSON_TYPES:
        want = _JSON_TYPES[hint]
        if hint is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, hint) and (hint is bool or not isinstance(value, bool))
    elif typing.get_origin(hint) is tuple:
        ok, want = isinstance(value, (list, tuple)), "a list"
    else:
        return
    if not ok:
        raise TypeError(f"{cls.__name__}.{name} must be {want}, got {_json_repr(value)}")


def _json_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _jsonable(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def _from_json(value: Any, hint: Any) -> Any:
    if isinstance(value, dict) and isinstance(hint, type) and issubclass(hint, Config):
        return hint.from_dict(value)  # nested config
    # JSON has no tuples: turn lists back into tuples where the field is a tuple.
    if isinstance(value, list) and hint is not None and "tuple" in str(hint).lower():
        return tuple(_from_json(v, None) for v in value)
    return value
