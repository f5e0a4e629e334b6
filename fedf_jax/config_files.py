"""Config files: JSON or TOML into the flat names of ``config.make``.

A file holds flat names at its top level (``workers = 3``, ``beta = 0.2``), or
sections by name (``[run]``, ``[data]``, ``[model]``, ``[master]``), plus ``worker``
as a list of per-worker specs (``[[worker]]`` tables); a spec that leaves a field
out takes it from ``default_worker``, and a worker field at the top level
(``lr = 0.05``) sets the default spec::

    workers = 3
    epochs = 40
    [[worker]]
    lr = 0.05
    [[worker]]
    lr = 0.001
    optimizer = "adam"
    batch_size = 32
    [[worker]]
    lr = 0.02
    optimizer = "momentum"
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from fedf_jax.config import FLAT, SECTIONS, SPEC_FIELDS, flat_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def load_file(path: str | Path) -> dict[str, Any]:
    """Reads a JSON or TOML config file into flat names for :func:`make`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist.")
    kind = "TOML" if path.suffix == ".toml" else "JSON"
    try:
        text = path.read_text()
        raw = tomllib.loads(text) if kind == "TOML" else json.loads(text)
    except (ValueError, OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"config file {str(path)!r} is not valid {kind}: {e}") from None
    return from_dict(raw, source=str(path))


def from_dict(raw: Any, source: str = "config") -> dict[str, Any]:
    """File contents (flat names and/or sections, ``worker`` specs) -> flat names."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source} must hold a table of options at its top level "
                         f"(got a {type(raw).__name__}).")
    raw = dict(raw)
    out: dict[str, Any] = {}
    for section in SECTIONS:
        table = raw.get(section)
        if isinstance(table, dict):  # a [section] table
            del raw[section]
            names = {f.name: flat_name(f) for f in dataclasses.fields(SECTIONS[section])}
            for key, value in table.items():
                if key not in names:
                    raise ValueError(f"unknown key {key!r} in [{section}] of {source}; known: "
                                     f"{sorted(names)}.")
                out[names[key]] = value
    specs = raw.pop("worker", None)
    if isinstance(raw.get("workers"), list):
        specs = raw.pop("workers")
    if specs is not None:
        if not isinstance(specs, list):
            raise ValueError(f"`worker` in {source} must be a list of worker tables.")
        raw["worker_specs"] = specs
    default = dict(raw.pop("default_worker", None) or {})
    for key in SPEC_FIELDS:  # a worker field at the top level: the default spec's
        if key in raw:
            default[key] = raw.pop(key)
    if default:
        out["default_worker"] = default
    for key, value in raw.items():
        if key not in FLAT:
            raise ValueError(f"unknown key {key!r} in {source}; known keys: "
                             f"{sorted([*FLAT, *SPEC_FIELDS])}.")
        out[key] = tuple(value) if isinstance(value, list) and key != "worker_specs" else value
    return out


__all__ = ["load_file", "from_dict"]
