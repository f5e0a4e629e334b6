"""Finding, loading and grouping run logs.

A run log is ``RUN_DIR/run.jsonl`` (DESIGN §6, :mod:`fedf_jax.runlog`): a header
with the resolved config, one line per global epoch, and a summary line when the
run finished.

Grouping: runs whose header configs agree on every field except ``seed`` form one
group, aggregated over seeds. A field an older log lacks takes the value every run
had before the field existed (:data:`LEGACY_DEFAULTS`); any other missing field
is compared as "absent". Centralized runs also ignore the fields that describe
only the FEDF split they were made beside (:data:`CENTRAL_FREE_KEYS`), since their
training does not depend on them (one worker holds the union of the data, with the
first worker's spec). Groups that share (data, model, method, N) are told apart by
the config fields whose values differ between groups (:func:`variant_fields`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from fedf_jax import runlog

LOG_NAME = "run.jsonl"
ALGORITHMS = ("fedf", "fedavg", "phong", "terngrad", "central", "admm-svm")
CENTRAL = "Centralized"
# Table order: the reference first (as in the paper's Table 2), then FEDF, then baselines.
LABEL_ORDER = (CENTRAL, "FEDF (d=+1)", "FEDF (d=-1)", "FedAvg", "FedAvg (C=", "Phong et al.",
               "TernGrad", "ADMM linear SVM")
# Runs of one group differ in these config fields only: the seed is what is aggregated over.
SEED_KEYS = ("seed",)
# Fields that describe only the FEDF split a centralized run was made beside: centralized
# training uses the union of the workers' data, the first worker's spec, no master, no
# messages (so neither the link model nor the backend enters it).
CENTRAL_FREE_KEYS = ("workers", "worker_specs", "default_worker", "sizes", "partition",
                     "dirichlet_alpha", "alpha0", "beta", "direction", "scheme", "fraction",
                     "backend", "devices", "scan_epochs", "bandwidth", "latency")
# Config fields added after the first run logs, with the value of every run made before
# the field existed. A log without one of these fields compares equal to a newer log that
# has this value. Add a field here when the config gains one.
LEGACY_DEFAULTS: dict[str, Any] = {
    "backend": "vmap", "devices": None,  # 82904db
    "width": None, "augment": False,  # c437635 (no data set was augmented before)
    "image_size": None, "tile": None,  # e1b1d28
    "algorithm": "fedf", "fraction": 1.0, "scan_epochs": 1,  # cd0dba8
    # the two-level hierarchy and the ADMM SVM
    "groups": 1, "group_epochs": 1, "group_workers": None, "split": "samples",
    "standardize": None, "svm_c": 1.0, "rho": None, "tol": 1e-4,
    "group_bandwidth": 1.25e9, "group_latency": 1e-4,
    # the secure layers
    "secure_sum": "none", "paillier_bits": 2048, "wire": "crc", "key_file": None,
    # asynchronous top level, streaming workers, synthetic data
    "schedule": "sync", "speeds": None, "staleness": None, "stale_policy": "wait",
    "staleness_fn": "constant", "buffer": 1, "mixing": 1.0, "unit_seconds": None,
    "worker_chunk": None, "num_samples": None, "prox": None,
}
# Fields shown in the report's own columns (data, model, method, N): never in a variant.
SHOWN_KEYS = ("data", "model", "algorithm", "direction", "fraction", "workers")
ABSENT = "absent"  # how a field missing from a log (and not in LEGACY_DEFAULTS) is shown


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
    """What the runs of one group share.

    Attributes:
      data, model, label: as in :class:`Run`.
      workers: N; None for the centralized group (its training does not depend on N).
      config: the group's config, seed aside: sorted (flat field, canonical JSON) pairs
        (:func:`setting`); two runs are in one group exactly when these are equal.
      variant: (field, value as shown) of the fields that tell this group apart from
        the other groups of its (data, model) (:func:`variant_fields`); empty when the
        columns data, model, method and N suffice.
    """

    data: str
    model: str
    label: str
    workers: int | None
    config: tuple[tuple[str, str], ...] = ()
    variant: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        """The method's name with the variant, e.g. ``"FEDF (d=+1) [epochs=10]"``."""
        if not self.variant:
            return self.label
        return f"{self.label} [{', '.join(f'{k}={v}' for k, v in self.variant)}]"


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
    return {"phong": "Phong et al.", "terngrad": "TernGrad", "central": CENTRAL,
            "admm-svm": "ADMM linear SVM"}[algo]


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


def _canon(value: Any) -> Any:
    """A config value in a form where equal settings compare equal (1 == 1.0)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        return {str(k): _canon(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canon(v) for v in value]
    return str(value)


def show(value: Any) -> str:
    """A config value as the report prints it (``none``, ``0.5``, ``[10, 20]``, ``absent``)."""
    if value is _MISSING:
        return ABSENT
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(", ", ": "), sort_keys=True)


_MISSING = object()  # a field a log lacks that LEGACY_DEFAULTS does not know
_NULL_IS_DEFAULT = ("algorithm", "fraction")  # null means the default, as :func:`label` reads


def config_fields(runs: Iterable[Run]) -> list[str]:
    """Every top-level config field of the runs, seed aside, in first-seen order."""
    return [k for k in dict.fromkeys(k for r in runs for k in r.header["config"])
            if k not in SEED_KEYS]


def setting(config: Mapping[str, Any], fields: Sequence[str],
            central: bool = False) -> dict[str, Any]:
    """The flattened config fields that make a run's group.

    Args:
      config: the run's header config.
      fields: the top-level fields to compare (:func:`config_fields` of all runs); one
        the config lacks takes its :data:`LEGACY_DEFAULTS` value, else shows as absent.
      central: leave out :data:`CENTRAL_FREE_KEYS` (a centralized run), keeping its
        first worker's spec.

    Returns:
      flat field -> value. A worker spec key flattens to ``worker.<key>`` when every
      worker has the same value (a centralized run: its first worker's), else to
      ``worker[i].<key>``; ``default_worker`` is left out where ``worker_specs`` spells
      every worker's spec out; other objects flatten to ``<field>.<key>``.
    """
    out: dict[str, Any] = {}
    specs = config.get("worker_specs")
    if not (isinstance(specs, list) and specs and all(isinstance(s, dict) for s in specs)):
        specs = None
    for key in fields:
        if key in SEED_KEYS:
            continue
        value = config.get(key, _MISSING)
        if value is _MISSING or (value is None and key in _NULL_IS_DEFAULT):
            value = LEGACY_DEFAULTS.get(key, _MISSING)
        if key == "worker_specs" and specs is not None:
            out.update(_spec_fields(specs[:1] if central else specs))
        elif key == "default_worker" and isinstance(value, dict):
            if specs is None:  # every worker (a centralized run's one) runs this spec
                out.update(_spec_fields([value]))
        elif central and key in CENTRAL_FREE_KEYS:
            continue
        elif isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def _spec_fields(specs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``worker.<key>`` for a spec key all workers agree on, else ``worker[i].<key>``."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for spec in specs for k in spec):
        values = [spec.get(key, _MISSING) for spec in specs]
        if len({_canon_text(v) for v in values}) == 1:
            out[f"worker.{key}"] = values[0]
        else:
            out.update({f"worker[{i}].{key}": v for i, v in enumerate(values)})
    return out


def _canon_text(value: Any) -> str:
    return "\0absent" if value is _MISSING else json.dumps(_canon(value), sort_keys=True)


def group_key(run: Run, fields: Sequence[str]) -> GroupKey:
    """The run's group: (data, model, label, N or None for centralized) and its config."""
    central = run.label == CENTRAL
    flat = setting(run.header["config"], fields, central)
    return GroupKey(run.data, run.model, run.label, None if central else run.workers,
                    tuple(sorted((k, _canon_text(v)) for k, v in flat.items())))


def label_rank(name: str) -> tuple[int, float, str]:
    """Sort key of a label: LABEL_ORDER, then FedAvg fractions large to small, then name."""
    for i, known in enumerate(LABEL_ORDER):
        if name == known or (known.endswith("=") and name.startswith(known)):
            frac = -float(name[len(known):-1]) if known.endswith("=") else 0.0
            return i, frac, name
    return len(LABEL_ORDER), 0.0, name


def variant_fields(groups: Mapping[GroupKey, Sequence[Run]]) -> dict[GroupKey, dict[str, str]]:
    """Per group, the fields (and their values as shown) that tell it apart.

    Within one (data, model), a field is shown when two groups that both have it hold
    different values, and it is not already a column (:data:`SHOWN_KEYS`). Groups that
    would still share a name (one has a field the other lacks, e.g. ``worker[1].lr``
    against ``worker.lr``, or a baseline run with another ``direction``) also show the
    other fields that differ between them, each where it has one.
    """
    fields = config_fields(r for runs in groups.values() for r in runs)
    flat = {k: setting(runs[0].header["config"], fields, k.label == CENTRAL)
            for k, runs in groups.items()}
    out: dict[GroupKey, dict[str, str]] = {}
    for pair in dict.fromkeys((k.data, k.model) for k in groups):
        keys = [k for k in groups if (k.data, k.model) == pair]
        names = dict.fromkeys(f for k in keys for f in flat[k] if f not in SHOWN_KEYS)
        differ = [f for f in names
                  if len({_canon_text(flat[k][f]) for k in keys if f in flat[k]}) > 1]
        for k in keys:
            out[k] = {f: show(flat[k][f]) for f in differ if f in flat[k]}
        same: dict[tuple, list[GroupKey]] = {}
        for k in keys:
            same.setdefault((k.label, k.workers, tuple(out[k].items())), []).append(k)
        for clash in (c for c in same.values() if len(c) > 1):
            # here a column field counts too: `direction` is in the name of FEDF only
            every = dict.fromkeys(f for k in clash for f in flat[k]
                                  if f not in ("data", "model", "workers"))
            extra = [f for f in every if f not in differ and len(
                {_canon_text(flat[k].get(f, _MISSING)) for k in clash}) > 1]
            for k in clash:
                out[k].update({f: show(flat[k][f]) for f in extra if f in flat[k]})
    return out


def _order(value: str) -> tuple[int, float, str]:
    try:
        return 0, float(value), value
    except ValueError:
        return 1, 0.0, value


def group_runs(runs: Sequence[Run]) -> dict[GroupKey, list[Run]]:
    """Runs grouped by their config (seed aside), with variants; sorted for tables.

    Groups sort by data, model, method (:func:`label_rank`), N and variant values;
    the runs of a group by seed.
    """
    fields = config_fields(runs)
    raw: dict[GroupKey, list[Run]] = {}
    for run in runs:
        raw.setdefault(group_key(run, fields), []).append(run)
    variants = variant_fields(raw)
    groups = {k._replace(variant=tuple(variants[k].items())): v for k, v in raw.items()}
    order = sorted(groups, key=lambda k: (k.data, k.model, label_rank(k.label),
                                          -1 if k.workers is None else k.workers,
                                          [_order(v) for _, v in k.variant]))
    return {k: sorted(groups[k], key=lambda r: (r.seed is None, r.seed or 0, str(r.path)))
            for k in order}


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
