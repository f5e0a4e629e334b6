"""The report's numbers and markdown tables.

* Table 2 analog: final and best test accuracy per group, mean ± sample std over
  seeds, and the gap of the final accuracy to the centralized group in percentage
  points (of several centralized groups, the one whose config is closest:
  :func:`reference`).
* Table 3 analog: bytes exchanged per global epoch (the mean over a run's epochs
  of ``bytes_total``, and its parts), in MB (1 MB = 1e6 B).
* Time to target: the first epoch whose test accuracy reaches the target, and the
  modeled (deployed) and wall seconds summed up to and including it; the speedup
  is the centralized group's mean modeled time to target over the group's (the
  paper's speedup, Sec. 5.1: centralized training time / distributed time). The
  whole-run speedup divides whole runs' modeled times instead (the paper's Fig. 2,
  which compares runs of the same number of epochs).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from analysis.runs import CENTRAL, GroupKey, Run, series

MB = 1e6
BYTE_PARTS = ("down", "up_model", "up_ternary", "other", "header")
CENTRAL_FACTOR = 0.95  # default target: this fraction of the centralized final accuracy
LOWEST_FACTOR = 0.9  # without a centralized group: this fraction of the lowest best accuracy


class Stat(NamedTuple):
    """Mean and sample standard deviation (ddof=1) of the finite values of ``total``."""

    mean: float
    std: float
    n: int
    total: int


def stat(values: Sequence[float]) -> Stat:
    """Stat of ``values``; NaN entries (null in a log) are left out and counted apart."""
    v = np.asarray(values, np.float64).reshape(-1)
    f = v[np.isfinite(v)]
    mean = float(f.mean()) if f.size else math.nan
    std = float(f.std(ddof=1)) if f.size > 1 else math.nan
    return Stat(mean, std, int(f.size), int(v.size))


def first_reaching(accuracy: np.ndarray, target: float) -> int | None:
    """Index of the first epoch with ``accuracy >= target`` (NaN never reaches)."""
    with np.errstate(invalid="ignore"):
        hits = np.flatnonzero(np.nan_to_num(accuracy, nan=-np.inf) >= target)
    return int(hits[0]) if hits.size else None


def run_metrics(run: Run, target: float) -> dict[str, float]:
    """One run's numbers: accuracies, mean bytes per epoch, time to target (NaN: none)."""
    acc = series(run, "test_accuracy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN
        out = {"final_accuracy": float(acc[-1]), "best_accuracy": float(np.nanmax(acc))}
        out["bytes_total"] = float(np.nanmean(series(run, "bytes_total")))
        for part in BYTE_PARTS:
            out[f"bytes_{part}"] = float(np.nanmean(series(run, f"bytes_{part}")))
    out["run_modeled_s"] = float(series(run, "modeled_s").sum())
    i = first_reaching(acc, target)
    if i is None:
        out.update(target_epoch=math.nan, target_modeled_s=math.nan, target_wall_s=math.nan)
    else:
        out.update(target_epoch=float(series(run, "epoch")[i]),
                   target_modeled_s=float(series(run, "modeled_s")[:i + 1].sum()),
                   target_wall_s=float(series(run, "wall_s")[:i + 1].sum()))
    return out


def default_target(groups: Mapping[GroupKey, Sequence[Run]], data: str,
                   model: str) -> tuple[float, str]:
    """The target accuracy of one (data, model) and the rule that gave it."""
    keys = [k for k in groups if (k.data, k.model) == (data, model)]
    central = [k for k in keys if k.label == CENTRAL]
    if central:  # several centralized groups (variants): the first in table order
        final = stat([float(series(r, "test_accuracy")[-1]) for r in groups[central[0]]]).mean
        return (CENTRAL_FACTOR * final,
                f"{CENTRAL_FACTOR:g} × the {central[0].name} mean final accuracy ({final:.4f})")
    best = {k: stat([np.nanmax(np.append(series(r, "test_accuracy"), -np.inf))
                     for r in groups[k]]).mean for k in keys}
    best = {k: v for k, v in best.items() if np.isfinite(v)}
    if not best:
        return math.nan, "no finite test accuracy in any run"
    low = min(best, key=best.get)
    return (LOWEST_FACTOR * best[low],
            f"{LOWEST_FACTOR:g} × the lowest group mean best accuracy ({best[low]:.4f}, "
            f"{low.name}, N={low.workers})")


def summarize(groups: Mapping[GroupKey, Sequence[Run]],
              target: float | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The numbers of every group.

    Args:
      groups: from :func:`analysis.runs.group_runs`.
      target: the accuracy to reach (None: per (data, model), see :func:`default_target`).

    Returns:
      (targets, rows): one dict per (data, model) with its target and rule, and one per
      group with Stat dicts (``mean``, ``std``, ``n``, ``total``) of every number.
    """
    pairs = list(dict.fromkeys((k.data, k.model) for k in groups))
    targets = {}
    for data, model in pairs:
        targets[data, model] = ((target, "given with --target") if target is not None
                                else default_target(groups, data, model))
    rows = []
    for key, runs in groups.items():
        tgt = targets[key.data, key.model][0]
        per_run = [run_metrics(r, tgt) for r in runs]
        col = functools.partial(_column, per_run)
        reached = sum(np.isfinite(m["target_epoch"]) for m in per_run)
        rows.append({
            "data": key.data, "model": key.model, "label": key.label, "name": key.name,
            "variant": dict(key.variant),
            "workers": key.workers if key.workers is not None
            else sorted({r.workers for r in runs}),
            "runs": len(runs), "seeds": [r.seed for r in runs],
            "final_accuracy": col("final_accuracy"), "best_accuracy": col("best_accuracy"),
            "bytes_per_epoch": {"total": col("bytes_total"),
                                **{p: col(f"bytes_{p}") for p in BYTE_PARTS}},
            "target": tgt, "reached": int(reached),
            "target_epoch": col("target_epoch"), "target_modeled_s": col("target_modeled_s"),
            "target_wall_s": col("target_wall_s"), "run_modeled_s": col("run_modeled_s"),
            "epochs": stat([len(r.epochs) for r in runs]),
        })
    keys = list(groups)
    for key, row in zip(keys, rows, strict=True):
        ref_key = reference(key, keys)
        ref = rows[keys.index(ref_key)] if ref_key is not None else None
        row["reference"] = ref["name"] if ref else None
        row["gap_pp"] = (100 * (row["final_accuracy"].mean - ref["final_accuracy"].mean)
                         if ref else None)
        row["speedup"] = (ratio(ref["target_modeled_s"].mean, row["target_modeled_s"].mean)
                          if ref and row["reached"] and ref["reached"] else None)
        row["speedup_run"] = (ratio(ref["run_modeled_s"].mean, row["run_modeled_s"].mean)
                              if ref else None)
    return [{"data": d, "model": m, "target": t, "rule": rule}
            for (d, m), (t, rule) in targets.items()], rows


def reference(key: GroupKey, keys: Sequence[GroupKey]) -> GroupKey | None:
    """The centralized group a group is compared with: of its (data, model), the one
    whose config agrees with the group's on the most fields (ties: the first)."""
    central = [k for k in keys if k.label == CENTRAL and (k.data, k.model) == (key.data,
                                                                                key.model)]
    if not central:
        return None
    if key.label == CENTRAL:
        return key
    mine = dict(key.config)
    return max(central, key=lambda c: sum(mine.get(f) == v for f, v in c.config))


def _column(per_run: Sequence[Mapping[str, float]], name: str) -> Stat:
    return stat([m[name] for m in per_run])


def ratio(num: float, den: float) -> float:
    """num / den; NaN when either is not finite or den is not positive."""
    ok = np.isfinite(num) and np.isfinite(den) and den > 0
    return float(num / den) if ok else math.nan


# --- markdown -----------------------------------------------------------------------------


def fmt(s: Stat, spec: str = ".4f") -> str:
    """``mean ± std (n=k)``; ``(n=k of m)`` when null values were left out."""
    if s.n == 0:
        return "—"
    count = f"n={s.n}" if s.n == s.total else f"n={s.n} of {s.total}"
    if s.n == 1:
        return f"{s.mean:{spec}} ({count})"
    return f"{s.mean:{spec}} ± {s.std:{spec}} ({count})"


def fmt_mb(s: Stat) -> str:
    """Bytes as MB: the mean, and ``± std`` where seeds differ."""
    if s.n == 0:
        return "—"
    mean = f"{s.mean / MB:.4g}"
    return mean if not (s.n > 1 and s.std > 0) else f"{mean} ± {s.std / MB:.2g}"


def workers_text(workers: int | list[int]) -> str:
    return str(workers) if isinstance(workers, int) else ",".join(map(str, workers))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _lead(row: Mapping[str, Any]) -> list[str]:
    return [row["data"], row["model"], row["name"], workers_text(row["workers"])]


def accuracy_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Table 2 analog: final and best test accuracy and the gap to Centralized."""
    out = []
    for r in rows:
        if r["label"] == CENTRAL:
            gap = "reference"
        elif r["gap_pp"] is None or not np.isfinite(r["gap_pp"]):
            gap = "—"
        else:
            gap = f"{r['gap_pp']:+.2f}"
            if r["reference"] != CENTRAL:  # several centralized groups: name the one used
                gap += f" (vs {r['reference']})"
        out.append(_lead(r) + [fmt(r["final_accuracy"]), fmt(r["best_accuracy"]), gap])
    return _table(["data", "model", "method", "N", "final test accuracy",
                   "best test accuracy", "gap to Centralized (pp)"], out)


def bytes_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Table 3 analog: MB exchanged per global epoch, total and by message kind."""
    out = [_lead(r) + [fmt_mb(r["bytes_per_epoch"]["total"])]
           + [fmt_mb(r["bytes_per_epoch"][p]) for p in BYTE_PARTS] for r in rows]
    return _table(["data", "model", "method", "N", "total MB/epoch", "down (models)",
                   "up (models)", "up (ternary)", "other", "frame headers"], out)


def time_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Time to target accuracy and the speedup vs Centralized."""
    out = []
    for r in rows:
        n = r["runs"]
        if r["reached"] == 0:
            cells = [f"not reached (0/{n})", "—", "—"]
        else:
            cells = [fmt(r["target_epoch"], ".1f"),
                     fmt(r["target_modeled_s"], seconds(r["target_modeled_s"])),
                     fmt(r["target_wall_s"], seconds(r["target_wall_s"]))]
        out.append(_lead(r) + [f"{r['target']:.4f}", f"{r['reached']}/{n}", *cells,
                               _times(r["speedup"]),
                               fmt(r["run_modeled_s"], seconds(r["run_modeled_s"])),
                               _times(r["speedup_run"])])
    return _table(["data", "model", "method", "N", "target", "reached", "epoch",
                   "modeled s", "wall s", "speedup vs Centralized", "whole run modeled s",
                   "whole-run speedup"], out)


def seconds(s: Stat) -> str:
    """Format spec of a Stat of seconds: 3 significant digits of the mean (at most 4
    decimals), the std with as many decimals."""
    if s.n == 0 or s.mean == 0:
        return ".3f"
    return f".{min(max(2 - math.floor(math.log10(abs(s.mean))), 0), 4)}f"


def _times(x: float | None) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.2f}×"
