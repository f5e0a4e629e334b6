"""The JSONL run log (DESIGN §6): a header line, then one line per global epoch.

Each line is flushed as it is written, so a run that dies keeps every finished
epoch. Non-finite floats (a NaN cost, an infinite goodness) are written as
``null`` so that every line is strict JSON. Only the master (rank 0) writes.
"""

from __future__ import annotations

import json
import math
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
EPOCH_FIELDS = (
    "epoch", "pilot", "costs", "goodness", "test_loss", "test_accuracy", "bytes_down",
    "bytes_up_model", "bytes_up_ternary", "bytes_other", "bytes_header", "bytes_total",
    "ternary_nonzero_fraction", "wall_s", "modeled_s",
)


def to_json(value: Any) -> Any:
    """numpy / jax values -> plain JSON values; non-finite floats -> None."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if hasattr(value, "__array__") and not isinstance(value, (str, bytes)):
        arr = np.asarray(value)
        return to_json(arr.tolist()) if arr.ndim else to_json(arr.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def versions() -> dict[str, str]:
    """Versions of Python and the packages a run depends on."""
    out = {"python": platform.python_version()}
    for pkg in ("fedf-jax", "jax", "jaxlib", "flax", "optax", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def make_header(config: dict[str, Any], devices: list[str], **extra) -> dict[str, Any]:
    """The first line: resolved config, seed, versions, devices and anything extra."""
    return {"type": "header", "schema": SCHEMA_VERSION, "seed": config.get("seed"),
            "config": config, "versions": versions(), "devices": devices,
            "host": platform.node(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}


class RunLog:
    """Writes JSON lines to ``path``; use as a context manager.

    A new log starts with ``header``; ``append=True`` continues an existing one (a
    resumed run: the file already has its header) and writes ``header``, if given, as
    one more line (e.g. a ``resume`` record).
    """

    def __init__(self, path: str | Path, header: dict[str, Any] | None, *,
                 append: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if append and not self.path.is_file():
            raise ValueError(f"cannot append to the run log {str(self.path)!r}: it does not "
                             "exist.")
        self._file = self.path.open("a" if append else "w", encoding="utf-8")
        if header is not None:
            self.write(header)

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(to_json(record), allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Reads a run log: (header, epoch records, in order); other line types skipped."""
    header, epochs = None, []
    with Path(path).open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON line ({e}).") from None
            if rec.get("type") == "header":
                header = rec
            elif rec.get("type") == "epoch":
                epochs.append(rec)
    if header is None:
        raise ValueError(f"{path}: no header line; is this a fedf run log?")
    return header, epochs
