"""The fields of ``config``'s sections: help, flat names, and the checks their metadata
states (a number's range, a choice), so that each section validates itself when built
and the CLI derives its flags from the same metadata."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

COUNT = {"low": 1, "integer": True}  # an integer >= 1
POSITIVE = {"low": 0, "low_open": True}  # a number > 0


def option(default, help: str, flat: str | None = None, **kw):
    """A config field with its help text (and its flat name where it differs)."""
    meta = {"help": help, **({"flat": flat} if flat else {}), **kw}
    return dataclasses.field(default=default, metadata=meta)


def check_number(name: str, value, *, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False, integer: bool = False) -> None:
    """Raises ValueError naming ``name`` unless ``value`` is a finite number in range."""
    ok = not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, float, np.number))
    ok = ok and math.isfinite(value) and (not integer or int(value) == value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        kind = "an integer" if integer else "a number"
        rng = ""
        if low is not None and high is not None:
            rng = f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            rng = f" {'>' if low_open else '>='} {low:g}"
        raise ValueError(f"`{name}` (={value!r}) must be {kind}{rng}.")


def flat_name(f: dataclasses.Field) -> str:
    """A field's flat name (its name unless the metadata gives another)."""
    return f.metadata.get("flat", f.name)


def check_fields(obj) -> None:
    """Checks every field against its metadata: ``choices``, or ``number`` (the range
    keywords of :func:`check_number`, for each element of a tuple); None means unset."""
    for f in dataclasses.fields(obj):
        value, name = getattr(obj, f.name), flat_name(f)
        if isinstance(value, list):
            value = tuple(value)
            object.__setattr__(obj, f.name, value)
        if value is None:
            continue
        if isinstance(value, tuple) and "tuple" not in str(f.type):
            raise ValueError(f"`{name}` (={value!r}) must be one value, not a list.")
        allowed = f.metadata.get("choices", (value,))
        if value not in allowed:
            raise ValueError(f"`{name}` (={value!r}) must be one of {tuple(allowed)}.")
        for v in value if isinstance(value, tuple) else (value,):
            if "number" in f.metadata:
                check_number(name, v, **f.metadata["number"])


__all__ = ["COUNT", "POSITIVE", "option", "check_number", "flat_name", "check_fields"]
