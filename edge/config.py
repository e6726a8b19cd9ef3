"""The one check behind every configuration dataclass (PreprocessConfig, TrainConfig, ...).

``check_types`` refuses a value whose type is not the field's declared one
(a bool is not an int, an int is accepted for a float, NaN and inf are not
numbers), and ``from_dict`` builds a dataclass from a mapping read from JSON or a
checkpoint, refusing unknown keys. Written once so that every config is checked
with the same rigour.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, TypeVar

from medge.edge.errors import ConfigError

T = TypeVar("T")
_SCALARS = {"int": int, "float": float, "bool": bool, "str": str}
_WORDS = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}


def check_types(obj: Any) -> None:
    """Raise ConfigError naming every field of dataclass ``obj`` whose value has the wrong type."""
    name = type(obj).__name__
    bad = []
    for f in dataclasses.fields(obj):
        want = _SCALARS.get(f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""))
        if want is None:
            continue  # tuples and nested configs are checked by their owner
        v = getattr(obj, f.name)
        if want is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        elif want is int:
            ok = isinstance(v, int) and not isinstance(v, bool)
        else:
            ok = isinstance(v, want)
        if not ok:
            bad.append(f"{f.name} must be {_WORDS[want]}, got {v!r}")
    if bad:
        raise ConfigError(f"{name}: " + "; ".join(bad))


def check_ranges(name: str, checks: list[tuple[bool, str]]) -> None:
    """Raise one ConfigError listing every failed (condition, message) pair."""
    bad = [msg for ok, msg in checks if not ok]
    if bad:
        raise ConfigError(f"{name}: " + "; ".join(bad))


def from_dict(cls: type[T], d: Any) -> T:
    """Build dataclass ``cls`` from a mapping; a non-mapping or unknown keys raise ConfigError."""
    if not isinstance(d, dict):
        raise ConfigError(f"{cls.__name__}: expected a mapping, got {type(d).__name__}")
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
    return cls(**d)
