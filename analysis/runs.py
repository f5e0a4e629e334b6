"""Finding, loading and grouping run logs.

A run log is ``RUN_DIR/run.jsonl`` (DESIGN §6, :mod:`fedf_jax.runlog`): a header
with the resolved config, one line per global epoch, and a summary line when the
run finished. Runs are grouped by (data, model, label, N) and aggregated over
seeds; centralized runs are grouped by (data, model) alone, since their training
does not depend on N (one worker holds the union of the data).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from fedf_jax import runlog

LOG_NAME = "run.jsonl"
ALGORITHMS = ("fedf", "fedavg", "phong", "terngrad", "central")
CENTRAL = "Centralized"
# Table order: the reference first (as in the paper's Table 2), then FEDF, then baselines.
LABEL_ORDER = (CENTRAL, "FEDF (d=+1)", "FEDF (d=-1)", "FedAvg", "FedAvg (C=", "Phong et al.",
               "TernGrad")
# Config keys that may differ between the runs of one group without a note.
_SEED_KEYS = ("seed",)
# A centralized run's N only names the FEDF run it was made beside.
_CENTRAL_FREE_KEYS = ("seed", "workers", "worker_specs", "sizes", "beta", "direction",
                      "partition", "dirichlet_alpha", "fraction", "devices", "backend")


class Run(NamedTuple):
    """One run log, read and labelled.

    Attributes:
      path: the ``run.jsonl`` file.
      header: its header line.
      epochs: its epoch lines, in order (at least one).
      complete: whether it has a summary line (False: the run died or is running).
      algorithm: ``"fedf"``, ``"fedavg"``, ``"phong"``, ``"terngrad"`` or ``"central"``.
      label: the method's name in tables and legends, e.g. ``"FEDF (d=+1)"``.
      data, model: the data set and model names.
      workers: N of the config.
      seed: the run's root seed.
    """

    path: Path
    header: dict[str, Any]
    epochs: list[dict[str, Any]]
    complete: bool
    algorithm: str
    label: str
    data: str
    model: str
    workers: int
    seed: int | None


class GroupKey(NamedTuple):
    """What runs of one group share; ``workers`` is None for the centralized group."""

    data: str
    model: str
    label: str
    workers: int | None


def find_logs(paths: Iterable[str | Path]) -> list[Path]:
    """Run logs named by ``paths``: a log file itself, or every ``run.jsonl`` below a folder.

    Raises:
      ValueError: a path does not exist, or a folder holds no run log.
    """
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            logs = sorted(p.rglob(LOG_NAME))
            if not logs:
                raise ValueError(f"{p}: no {LOG_NAME} in this folder or below; pass a run "
                                 "folder (`fedf simulate --out DIR`) or a folder of them.")
            found.extend(logs)
        else:
            raise ValueError(f"{p}: no such file or folder; pass a run folder holding "
                             f"{LOG_NAME}.")
    seen, out = set(), []
    for p in found:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            out.append(p)
    return out


def label(config: dict[str, Any], path: str | Path = "config") -> str:
    """The method's name from a run's config (a log without ``algorithm`` is FEDF)."""
    algo = config.get("algorithm") or "fedf"
    if algo not in ALGORITHMS:
        raise ValueError(f"{path}: `algorithm` (={algo!r}) must be one of {ALGORITHMS}.")
    if algo == "fedf":
        d = config.get("direction", 1)
        if d not in (1, -1):
            raise ValueError(f"{path}: `direction` (={d!r}) must be +1 or -1.")
        return f"FEDF (d={d:+d})"
    if algo == "fedavg":
        c = config.get("fraction", 1.0)
        if c is None:
            c = 1.0
        if not isinstance(c, (int, float)) or not 0 < c <= 1:
            raise ValueError(f"{path}: `fraction` (={c!r}) must be a number in (0, 1].")
        return "FedAvg" if c >= 1 else f"FedAvg (C={c:g})"
    return {"phong": "Phong et al.", "terngrad": "TernGrad", "central": CENTRAL}[algo]


def _last_line(path: Path) -> str:
    with path.open("rb") as f:
        f.seek(0, 2)
        f.seek(max(f.tell() - 65536, 0))
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
    return lines[-1].decode("utf-8", "replace") if lines else ""


def load_run(path: str | Path) -> Run | None:
    """Reads one run log; None when it has a header but no epoch yet.

    Raises:
      ValueError: naming the file, when it is not a run log or lacks a needed field.
    """
    path = Path(path)
    try:
        header, epochs = runlog.read(path)
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file; is this a fedf run log?") from None
    except (AttributeError, TypeError):  # a JSON line that is not an object
        raise ValueError(f"{path}: holds JSON lines that are not objects; is this a fedf "
                         "run log?") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e.strerror}).") from None
    config = header.get("config")
    if not isinstance(config, dict):
        raise ValueError(f"{path}: the header has no `config` object; is this a fedf run log?")
    for key in ("data", "model", "workers"):
        if config.get(key) is None:
            raise ValueError(f"{path}: the header's config has no `{key}`.")
    if not isinstance(config["workers"], int) or config["workers"] < 1:
        raise ValueError(f"{path}: `workers` (={config['workers']!r}) must be an integer >= 1.")
    for i, rec in enumerate(epochs, 1):
        for key in ("epoch", "test_accuracy"):
            if key not in rec:
                raise ValueError(f"{path}: epoch line {i} has no `{key}`.")
    if not epochs:
        return None
    try:
        complete = json.loads(_last_line(path)).get("type") == "summary"
    except (ValueError, AttributeError):
        complete = False
    seed = header.get("seed", config.get("seed"))
    return Run(path, header, epochs, complete, config.get("algorithm") or "fedf",
               label(config, path), str(config["data"]), str(config["model"]),
               config["workers"], seed)


def load_runs(paths: Iterable[str | Path]) -> tuple[list[Run], list[Path]]:
    """Every run below ``paths``: (runs with at least one epoch, logs with none yet).

    Raises:
      ValueError: no run has an epoch, or as :func:`find_logs` and :func:`load_run`.
    """
    runs, empty = [], []
    for p in find_logs(paths):
        run = load_run(p)
        (runs.append(run) if run is not None else empty.append(p))
    if not runs:
        raise ValueError(f"{', '.join(map(str, empty))}: no epoch lines yet; nothing to "
                         "report (wait for the first epoch).")
    return runs, empty


def group_key(run: Run) -> GroupKey:
    return GroupKey(run.data, run.model, run.label,
                    None if run.label == CENTRAL else run.workers)


def label_rank(name: str) -> tuple[int, float, str]:
    """Sort key of a label: LABEL_ORDER, then FedAvg fractions large to small, then name."""
    for i, known in enumerate(LABEL_ORDER):
        if name == known or (known.endswith("=") and name.startswith(known)):
            frac = -float(name[len(known):-1]) if known.endswith("=") else 0.0
            return i, frac, name
    return len(LABEL_ORDER), 0.0, name


def group_runs(runs: Sequence[Run]) -> dict[GroupKey, list[Run]]:
    """Runs grouped by (data, model, label, N), groups sorted for tables, runs by seed."""
    groups: dict[GroupKey, list[Run]] = {}
    for run in runs:
        groups.setdefault(group_key(run), []).append(run)
    order = sorted(groups, key=lambda k: (k.data, k.model, label_rank(k.label),
                                          -1 if k.workers is None else k.workers))
    return {k: sorted(groups[k], key=lambda r: (r.seed is None, r.seed or 0, str(r.path)))
            for k in order}


def config_differences(runs: Sequence[Run]) -> dict[str, list[str]]:
    """Config keys whose values differ between the runs of a group (seed aside).

    Returns:
      key -> the distinct values as JSON text, for the report's notes.
    """
    free = _CENTRAL_FREE_KEYS if runs and runs[0].label == CENTRAL else _SEED_KEYS
    keys = sorted({k for r in runs for k in r.header["config"]} - set(free))
    out = {}
    for k in keys:
        values = sorted({json.dumps(r.header["config"].get(k), sort_keys=True) for r in runs})
        if len(values) > 1:
            out[k] = values
    return out


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def series(run: Run, key: str) -> np.ndarray:
    """f64[E]: one epoch field of a run; null, missing or non-numeric values are NaN."""
    return np.array([_number(rec.get(key)) for rec in run.epochs], np.float64)


def stack(runs: Sequence[Run], key: str, cumulative: bool = False) -> np.ndarray:
    """f64[R, E_max]: a field of each run, NaN past a run's last epoch.

    Args:
      runs: R runs (epochs may differ in number).
      key: the epoch field.
      cumulative: cumulative sums along the epochs (e.g. seconds since the start).
    """
    rows = [np.cumsum(series(r, key)) if cumulative else series(r, key) for r in runs]
    out = np.full((len(rows), max(len(r) for r in rows)), np.nan)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out
