"""Runs on a common virtual-time budget, and the numbers read off their run logs.

Every ``--schedule async`` run-log line is one top update with ``clock_s``, the
virtual seconds at which it is applied. :func:`run_to` runs a config until its
clock passes a budget (a short probe first, then enough updates, extrapolated from
the probe's clock) and keeps the updates applied within the budget. The rest are
pure functions of such kept records, which is what the tests check on synthetic
records: time to a target (:func:`time_to`), the time from which it stays there
(:func:`time_to_stay`), the value at the budget (:func:`at_budget`), the clock and
staleness evidence (:func:`evidence`), the seed-paired comparison with the
synchronous run (:func:`speedup`, :func:`verdict`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from analysis.tables import first_reaching, stat
from fedf_jax import config, harness, schedule, simulation

KEEP = ("epoch", "clock_s", "test_accuracy", "test_loss", "objective", "senders",
        "staleness")
PROBE = 0.4  # the first try runs this fraction of the guessed updates
MARGIN = 1.05  # a second try runs this much more than the probe's clock says it needs
TRIES = 4


def trim(rec: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a run-log line these sims use (plus the count of dropped arrivals)."""
    out = {k: _plain(rec[k]) for k in KEEP if k in rec}
    out["dropped"] = len(rec.get("stale_dropped", []))
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_plain(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    return v


def guess_updates(opts: Mapping[str, Any], sync_epochs: int) -> int:
    """Updates an asynchronous run makes in ``sync_epochs`` synchronous epochs, if every
    sender's job took its speed's share of the slowest one's (link terms and waits make
    the real number smaller): sync_epochs * sum_k (max speed / speed_k) / buffer."""
    n = opts["groups"] if opts.get("groups", 1) > 1 else opts["workers"]
    speeds = schedule.parse_speeds(opts.get("speeds"), n, opts.get("seed", 0))
    if opts.get("staleness") == 0 and opts.get("stale_policy", "wait") == "wait":
        return sync_epochs
    per = float(np.sum(speeds.max() / speeds)) / opts.get("buffer", 1)
    return max(math.ceil(sync_epochs * per), 1)


def run_to(opts: Mapping[str, Any], budget_s: float, guess: int, *,
           probe: float = PROBE, runner: Callable | None = None) -> dict[str, Any]:
    """Runs ``config.make(**opts)`` until its virtual clock reaches ``budget_s``.

    Args:
      opts: flat config options, without ``epochs``; ``schedule`` must be ``async``.
      budget_s: the virtual-time budget.
      guess: about how many updates that takes (:func:`guess_updates`).
      probe: the first try runs ``ceil(probe * guess)`` updates; if its clock stops
        short of the budget, the next runs MARGIN times what its clock rate needs.
      runner: ``cfg -> simulation.run's result`` (tests pass a fake).

    Returns:
      ``records`` (trimmed, ``clock_s`` <= budget), ``updates_run`` (updates of the
      last try), ``tries``, ``converged`` (the run stopped on its own tolerance before
      the budget), ``diverged`` (``harness.Watch`` replayed on the kept records) and
      ``wall_s`` (all tries).
    """
    runner = runner or (lambda cfg: simulation.run(cfg, out_dir=None))
    epochs = max(math.ceil(probe * guess), 2)
    t0 = time.perf_counter()
    for tries in range(1, TRIES + 1):
        res = runner(config.make(**opts, epochs=epochs))
        recs = res["records"]
        end = float(recs[-1]["clock_s"])
        stopped = len(recs) < epochs  # stopped on its tolerance (admm-svm)
        if end >= budget_s or stopped or tries == TRIES or not math.isfinite(budget_s):
            break
        epochs = math.ceil(len(recs) * MARGIN * budget_s / end) + 1
    kept = [trim(r) for r in recs if r["clock_s"] <= budget_s * (1 + 1e-9)]
    return {"records": kept, "updates_run": len(recs), "tries": tries,
            "converged": bool(stopped), "reached_budget": bool(end >= budget_s or stopped),
            "diverged": diverged(kept), "wall_s": time.perf_counter() - t0}


def diverged(records: Sequence[Mapping[str, Any]], num_classes: int = 10) -> bool:
    """``harness.Watch``'s rule (non-finite, exploding or chance-level test loss) on the
    kept records, its warning silenced."""
    watch = harness.Watch(num_classes)
    logger = logging.getLogger(harness.__name__)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        for r in records:
            watch(r)
    finally:
        logger.setLevel(level)
    return watch.diverged


def _values(records: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else r[key] for r in records], np.float64)


def time_to(records: Sequence[Mapping[str, Any]], key: str, target: float,
            below: bool = False) -> float:
    """``clock_s`` of the first update whose ``key`` reaches ``target`` (at least it, or
    at most it with ``below``); NaN when none does within the records."""
    v = _values(records, key)
    i = first_reaching(-v if below else v, -target if below else target)
    return math.nan if i is None else float(records[i]["clock_s"])


def time_to_stay(records: Sequence[Mapping[str, Any]], key: str, target: float,
                 below: bool = False) -> float:
    """``clock_s`` of the first update from which ``key`` stays at the target (at least
    it, or at most it with ``below``) through the last record; NaN when the last one
    misses it. Unlike :func:`time_to`, a later dip below the target counts."""
    v = _values(records, key)
    with np.errstate(invalid="ignore"):
        ok = (v <= target) if below else (v >= target)  # NaN never does
    if not ok.size or not ok[-1]:
        return math.nan
    bad = np.flatnonzero(~ok)
    return float(records[int(bad[-1]) + 1 if bad.size else 0]["clock_s"])


def at_budget(records: Sequence[Mapping[str, Any]], key: str) -> float:
    """``key`` of the last update within the budget (the model in place at the budget)."""
    return float(records[-1][key]) if records else math.nan


def relative_gap(records: Sequence[Mapping[str, Any]], optimum: float) -> list[dict]:
    """The records with ``gap`` = (objective - optimum) / |optimum| added."""
    return [{**r, "gap": (r["objective"] - optimum) / abs(optimum)} for r in records]


def evidence(records: Sequence[Mapping[str, Any]], senders: int) -> dict[str, Any]:
    """What the clock did: updates, arrivals, staleness (of every applied arrival, and of
    the sender heard least often), arrivals per sender, dropped arrivals, the mean
    virtual seconds between updates."""
    arrivals = np.zeros(senders, np.int64)
    stale: list[list[int]] = [[] for _ in range(senders)]
    for r in records:
        for k, s in zip(r["senders"], r["staleness"], strict=True):
            arrivals[k] += 1
            stale[k].append(s)
    every = [s for per in stale for s in per]
    slow = int(np.argmin(arrivals))
    clock = _values(records, "clock_s")
    return {
        "updates": len(records), "arrivals": int(arrivals.sum()),
        "dropped": int(sum(r.get("dropped", 0) for r in records)),
        "arrivals_per_sender": arrivals.tolist(),
        "staleness_mean": float(np.mean(every)) if every else math.nan,
        "staleness_max": int(max(every)) if every else 0,
        "slowest": slow, "slowest_arrivals": int(arrivals[slow]),
        "slowest_staleness_mean": float(np.mean(stale[slow])) if stale[slow] else math.nan,
        "seconds_per_update": float(np.mean(np.diff(clock, prepend=0.0))) if len(clock)
        else math.nan,
    }


def speedup(sync_times: Sequence[float], async_times: Sequence[float]) -> dict[str, Any]:
    """Seed-paired speed-up of an asynchronous method over the synchronous run.

    Returns:
      ``ratio`` = mean sync time / mean async time over the seeds both reached (NaN if
      none), ``per_seed`` ratios (NaN where either did not reach), ``low``/``high`` their
      finite range, and ``both`` (seeds where both reached).
    """
    s, a = np.asarray(sync_times, np.float64), np.asarray(async_times, np.float64)
    if s.shape != a.shape:
        raise ValueError(f"sync ({s.size}) and async ({a.size}) times must pair up by seed.")
    both = np.isfinite(s) & np.isfinite(a) & (a > 0)
    per = np.where(both, s / np.where(both, a, 1.0), np.nan)
    ratio = float(s[both].mean() / a[both].mean()) if both.any() else math.nan
    finite = per[np.isfinite(per)]
    return {"ratio": ratio, "per_seed": per.tolist(), "both": int(both.sum()),
            "low": float(finite.min()) if finite.size else math.nan,
            "high": float(finite.max()) if finite.size else math.nan}


def verdict(sync_times: Sequence[float], async_times: Sequence[float]) -> str:
    """``faster`` / ``slower`` when the asynchronous method's time to target is below /
    above the synchronous run's in every seed (a seed where only one of them reached
    counts for that one), ``same`` when equal in every seed, ``never`` when the
    asynchronous method reached in no seed, else ``mixed``."""
    s, a = np.asarray(sync_times, np.float64), np.asarray(async_times, np.float64)
    if s.shape != a.shape or not s.size:
        raise ValueError("sync and async times must pair up by seed, one at least.")
    if not np.isfinite(a).any():
        return "never"
    inf = np.inf
    s, a = np.where(np.isfinite(s), s, inf), np.where(np.isfinite(a), a, inf)
    if np.all(a < s):
        return "faster"
    if np.all(a > s):
        return "slower"
    if np.all(a == s):
        return "same"
    return "mixed"


def speed_text(s: Mapping[str, Any] | None) -> str:
    """A :func:`speedup` as ``2.00× (1.80–2.20)`` (the per-seed range when it has one)."""
    if not s or not math.isfinite(s["ratio"]):
        return "—"
    if s["both"] > 1 and s["low"] != s["high"]:
        return f"{s['ratio']:.2f}× ({s['low']:.2f}–{s['high']:.2f})"
    return f"{s['ratio']:.2f}×"


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample std and count of the finite values (``analysis.tables.stat``)."""
    st = stat(values)
    return {"mean": st.mean, "std": st.std, "n": st.n, "total": st.total}


def fmt(s: Mapping[str, Any], spec: str = ".4f", scale: float = 1.0) -> str:
    """``mean ± std``; ``(k of n)`` when some seeds have no value; ``—`` for none."""
    if not s["n"]:
        return "—"
    text = f"{s['mean'] * scale:{spec}}"
    if s["n"] > 1:
        text += f" ± {s['std'] * scale:{spec}}"
    if s["n"] < s["total"]:
        text += f" ({s['n']} of {s['total']})"
    return text


__all__ = ["trim", "guess_updates", "run_to", "diverged", "time_to", "time_to_stay", "at_budget",
           "relative_gap", "evidence", "speedup", "verdict", "speed_text", "summary", "fmt"]
