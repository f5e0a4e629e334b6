"""Runs the asynchronous-schedule experiments and writes RESULTS.md, results.json and
four plots.

    python sims/async/run_all.py                 # about 25 min on 2 shared CPU cores
    python sims/async/run_all.py --quick         # a CI-size check (about 1.5 min), into quick/
    python sims/async/run_all.py --from-results  # rebuild the report from results.json

Parts (each script also runs alone; ``budget.py`` holds what they share):

1. ``race.py``: time to a target accuracy on digits (FedAvg, FEDF) of the synchronous
   run against FedAsync, FedBuff and asynchronous FEDF, with one group four times
   slower and with lognormal worker speeds, on one virtual-time budget;
2. ``svm_race.py``: ADMM linear SVM, synchronous against partial-barrier asynchronous
   ADMM with one slow sender: time to the optimal objective within 1e-3;
3. ``staleness.py``: final accuracy against the staleness bound S.

OUT (``--out``) defaults to this folder, or to its git-ignored ``quick/`` with
--quick. Compiled programs are cached in runs/async/xla-cache (git-ignored).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import budget  # noqa: E402
import race  # noqa: E402
import staleness  # noqa: E402
import svm_race  # noqa: E402

CACHE = HERE.parents[1] / "runs" / "async" / "xla-cache"
GRID = 200  # points of the plotted curves (seed means on a grid of virtual time)
FEDBUFF_ANCHOR = (3.3, 3.8)  # Nguyen et al. 2022: FedBuff against synchronous FL
HEADLINE = "0.9"  # the target of the headline speed-ups


def output_dir(quick: bool, out: str | Path | None = None) -> Path:
    """``out``, else this folder, or its git-ignored ``quick/`` for a quick run."""
    if out is not None:
        return Path(out)
    return HERE / "quick" if quick else HERE


def paths(out: Path) -> dict[str, Path]:
    """Every file this script writes, under ``out``."""
    return {"results": out / "results.json", "report": out / "RESULTS.md",
            "race_png": out / "race.png", "speedup_png": out / "speedup.png",
            "svm_png": out / "svm.png", "staleness_png": out / "staleness.png"}


def get_config(quick: bool = False) -> dict:
    """The experiment's options (flax-style entry point)."""
    if quick:
        return {"race": {"settings": ["slow-group", "lognormal"], "seeds": 1, "sync_epochs": 4,
                         "only": {"slow-group": ["FedAsync s=const α=1", "FedBuff K=2 s=poly",
                                                 "sync FEDF", "FEDF B=2 s=poly α=0.5"],
                                  "lognormal": ["FedBuff K=4 s=poly"]}},
                "svm": {"data": ["breast-cancer"], "regimes": ["compute-bound"],
                        "layouts": ["flat"], "seeds": 1, "iterations": {"breast-cancer": 60},
                        "only": ["A=5 τ=1", "A=5 τ=4 prox=0"]},
                "staleness": {"bounds": [0, 2], "seeds": 1, "sync_epochs": 4,
                              "algorithms": ["FedAsync (FedAvg)"]}}
    return {"race": {"settings": list(race.SETTINGS), "seeds": 3, "sync_epochs": 30,
                     "only": None},
            "svm": {"data": list(svm_race.DATA_SETS), "regimes": list(svm_race.REGIMES),
                    "layouts": list(svm_race.LAYOUTS), "seeds": 2,
                    "iterations": dict(svm_race.ITERATIONS), "only": None},
            "staleness": {"bounds": list(staleness.BOUNDS), "seeds": 3, "sync_epochs": 30,
                          "algorithms": list(staleness.ALGORITHMS)}}


def grid_curve(runs: list[list[dict]], key: str, end: float) -> dict:
    """The seed mean of ``key`` on GRID points of [0, end]: at time t each run's value
    is that of its last update at or before t (NaN before its first)."""
    t = np.linspace(0.0, end, GRID)
    vals = []
    for recs in runs:
        clock = np.array([r["clock_s"] for r in recs])
        v = np.array([r[key] for r in recs], np.float64)
        i = np.searchsorted(clock, t, side="right") - 1
        vals.append(np.where(i >= 0, v[np.maximum(i, 0)], np.nan))
    vals = np.array(vals)
    ok = np.isfinite(vals).all(axis=0)  # every seed has a model at t
    mean = np.full(GRID, np.nan)
    mean[ok] = vals[:, ok].mean(axis=0)
    return {"end": float(end),
            "mean": [None if not math.isfinite(x) else round(float(x), 6) for x in mean]}


def grid_times(curve: dict) -> np.ndarray:
    """The times of a :func:`grid_curve`."""
    return np.linspace(0.0, curve["end"], len(curve["mean"]))


def curves(rows: list[dict], keys: tuple[str, ...], key: str) -> dict:
    """Seed-mean curves per cell (``keys`` of a row, joined by ``/``)."""
    cells: dict[str, list[dict]] = {}
    for r in rows:
        cells.setdefault("/".join(str(r[k]) for k in keys), []).append(r)
    return {name: grid_curve([r["records"] for r in rs], key, max(r["budget_s"] for r in rs))
            for name, rs in cells.items()}


def run(opts: dict, log=print) -> dict:
    """Every part; the numbers RESULTS.md is written from."""
    walls, res = {}, {"options": opts}
    t0 = time.perf_counter()
    o = opts["race"]
    log("part 1: time to target accuracy ...")
    rows = race.run(tuple(o["settings"]), o["seeds"], o["sync_epochs"], o["only"], log=log)
    res["race"] = race.summarize(rows)
    res["race_curves"] = curves(rows, ("setting", "method"), "test_accuracy")
    walls["race"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    o = opts["svm"]
    log("part 2: ADMM SVM ...")
    out = svm_race.run(tuple(o["data"]), tuple(o["regimes"]), tuple(o["layouts"]), o["seeds"],
                       o["iterations"], o["only"], log=log)
    res["svm_optima"] = out["optima"]
    res["svm"] = svm_race.summarize(out)
    res["svm_curves"] = curves(out["runs"], ("data", "regime", "layout", "variant"), "gap")
    walls["svm"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    o = opts["staleness"]
    log("part 3: accuracy against the staleness bound ...")
    rows = staleness.run(tuple(o["bounds"]), o["seeds"], o["sync_epochs"],
                         tuple(o["algorithms"]), log=log)
    res["staleness"] = staleness.summarize(rows)
    walls["staleness"] = time.perf_counter() - t0
    res["walls"] = walls
    return res


# ---------------------------------------------------------------- figures


def plot_race(res: dict, path: Path) -> None:
    """Accuracy against virtual time, seed means; a row per setting, FedAvg-based and
    FEDF-based methods apart."""
    settings = list(dict.fromkeys(r["setting"] for r in res["race"]))
    fig, axes = plt.subplots(len(settings), 2, figsize=(12, 4 * len(settings)), squeeze=False)
    for row, setting in zip(axes, settings, strict=True):
        for ax, fam in zip(row, ("sync FedAvg", "sync FEDF"), strict=True):
            mine = [r for r in res["race"] if r["setting"] == setting and r["base"] == fam]
            for r in mine:
                c = res["race_curves"][f"{setting}/{r['method']}"]
                y = np.array([np.nan if v is None else v for v in c["mean"]])
                sync = r["method"] == r["base"]
                ax.plot(1e3 * grid_times(c), y, lw=2.2 if sync else 1.1,
                        color="k" if sync else None, label=r["method"])
            for t in race.TARGETS:
                ax.axhline(t, color="grey", ls=":", lw=0.8)
            ax.set_ylim(0.5, 1.0)
            ax.set_xlabel("virtual time (ms)")
            ax.set_ylabel("test accuracy (seed mean)")
            ax.set_title(f"{setting}: {fam.split()[1]} family", fontsize=9)
            ax.grid(True, lw=0.3)
            if mine:
                ax.legend(fontsize=6.5, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_speedup(res: dict, path: Path) -> None:
    """Speed-up to the headline target against the synchronous base, per-seed range."""
    settings = list(dict.fromkeys(r["setting"] for r in res["race"]))
    fig, axes = plt.subplots(1, len(settings), figsize=(6.5 * len(settings), 5.0),
                             squeeze=False)
    for ax, setting in zip(axes[0], settings, strict=True):
        mine = [r for r in res["race"] if r["setting"] == setting and r["method"] != r["base"]]
        x = np.arange(len(mine))
        ratio = np.array([r["speedup"].get(HEADLINE, {}).get("ratio", np.nan) for r in mine])
        low = np.array([r["speedup"].get(HEADLINE, {}).get("low", np.nan) for r in mine])
        high = np.array([r["speedup"].get(HEADLINE, {}).get("high", np.nan) for r in mine])
        ok = np.isfinite(ratio)
        ax.bar(x[ok], ratio[ok], color=["C0" if r["base"] == "sync FedAvg" else "C1"
                                        for r, k in zip(mine, ok, strict=True) if k])
        err = np.array([ratio - low, high - ratio])[:, ok]
        ax.errorbar(x[ok], ratio[ok], np.nan_to_num(err), fmt="none", color="k", capsize=2)
        top = max([FEDBUFF_ANCHOR[1], *high[np.isfinite(high)]]) * 1.1
        ax.set_ylim(0.0, top)
        for xi in x[~ok]:
            ax.text(xi, 0.05 * top, "not reached", rotation=90, fontsize=7, ha="center")
        ax.axhspan(*FEDBUFF_ANCHOR, color="C2", alpha=0.2, label="FedBuff paper: 3.3–3.8×")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(x, [r["method"] for r in mine], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(f"speed-up to accuracy {HEADLINE}")
        ax.set_title(f"{setting} (blue: against sync FedAvg, orange: against sync FEDF)",
                     fontsize=9)
        ax.grid(True, axis="y", lw=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_svm(res: dict, path: Path) -> None:
    """Relative objective gap against virtual time, a panel per (regime, data, layout)."""
    cells = list(dict.fromkeys((r["regime"], r["data"], r["layout"]) for r in res["svm"]))
    cols = min(4, len(cells))
    nrows = math.ceil(len(cells) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    for ax, (regime, data, layout) in zip(axes.flat, cells, strict=False):
        for r in res["svm"]:
            if (r["regime"], r["data"], r["layout"]) != (regime, data, layout):
                continue
            c = res["svm_curves"][f"{data}/{regime}/{layout}/{r['variant']}"]
            y = np.array([np.nan if v is None else v for v in c["mean"]])
            sync = r["variant"] == "sync"
            ax.plot(grid_times(c), np.clip(y, 1e-7, None), lw=2 if sync else 1,
                    color="k" if sync else None, label=r["variant"])
        ax.axhline(svm_race.GAP, color="grey", ls=":", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("virtual time (s)")
        ax.set_ylabel("relative objective gap")
        ax.set_title(f"{data}, {layout}, {regime}", fontsize=8)
        ax.grid(True, which="both", lw=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(cells):]:
        ax.set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_staleness(res: dict, path: Path) -> None:
    """Accuracy against S: at the budget and after a fixed number of updates."""
    rows = res["staleness"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, title in ((axes[0], "final", "same virtual time"),
                           (axes[1], "fixed_updates", "same number of updates")):
        for j, name in enumerate(dict.fromkeys(r["algorithm"] for r in rows)):
            mine = [r for r in rows if r["algorithm"] == name]
            x = np.arange(len(mine)) + 0.06 * j
            ax.errorbar(x, [r[key]["mean"] for r in mine],
                        [0.0 if not math.isfinite(r[key]["std"]) else r[key]["std"]
                         for r in mine], fmt="o-", ms=4, capsize=2, label=name)
            ax.set_xticks(np.arange(len(mine)), [staleness.label(r["bound"]) for r in mine])
        ax.set_xlabel("staleness bound S (wait policy)")
        ax.set_ylabel("test accuracy (mean ± std)")
        ax.set_title(title, fontsize=9)
        ax.grid(True, lw=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- verdicts


def _range(s: dict) -> str:
    return budget.speed_text(s)


def _ms(s: dict) -> str:
    return budget.fmt(s, ".1f", 1e3)


WORDS = {"faster": "faster than the synchronous run in every seed",
         "slower": "slower than the synchronous run in every seed",
         "mixed": "faster in some seeds and slower in others",
         "same": "as fast as the synchronous run",
         "never": "never reached within the budget"}


def race_verdicts(summary: list[dict], target: str = HEADLINE) -> list[str]:
    """Per setting: who reaches the target first, by how much, and why (clock and
    staleness), from the summary's numbers."""
    out = []
    for setting in dict.fromkeys(r["setting"] for r in summary):
        mine = [r for r in summary if r["setting"] == setting]
        base = {r["method"]: r for r in mine if r["method"] == r["base"]}
        asyn = [r for r in mine if r["method"] != r["base"] and target in r["speedup"]]
        if not asyn or "sync FedAvg" not in base:
            continue
        sync = base["sync FedAvg"]
        seeds = sync["seeds"]
        by = {w: [r for r in asyn if r["verdict"][target] == w] for w in WORDS}
        parts = [f"**{setting}** ({seeds} seed{'s' if seeds > 1 else ''}), accuracy {target}: "
                 f"synchronous FedAvg takes {_ms(sync['time_to'][target])} ms"
                 + (f", synchronous FEDF {_ms(base['sync FEDF']['time_to'][target])} ms"
                    if "sync FEDF" in base else "") + "."]
        for w, rs in by.items():
            if rs:
                parts.append(f"{WORDS[w][0].upper()}{WORDS[w][1:]}: "
                             + ", ".join(_speed_text(r, r["speedup"][target], w)
                                         for r in rs) + ".")
        if all(target in r.get("verdict_stay", {}) for r in asyn):
            stay = {w: [r for r in asyn if r["verdict_stay"][target] == w] for w in WORDS}
            parts.append(f"Counting instead the time from which the accuracy stays ≥ {target} "
                         "to the end of the budget (a later dip counts): " + "; ".join(
                             f"{WORDS[w]}: " + ", ".join(
                                 _speed_text(r, r["speedup_stay"][target], w) for r in rs)
                             for w, rs in stay.items() if rs) + ".")
        reached = [r for r in asyn if math.isfinite(r["speedup"][target]["ratio"])
                   and r["time_to"][target]["n"] == r["seeds"]]
        if reached:
            best = max(reached, key=lambda r: r["speedup"][target]["ratio"])
            parts.append(f"The largest speed-up is {best['method']}'s, "
                         f"{_range(best['speedup'][target])} against {best['base']}.")
        out.append(" ".join(parts))
        # why: the clock and the staleness
        a = [r for r in mine if r["method"] != r["base"] and r["base"] == "sync FedAvg"]
        if a:
            fast = max(a, key=lambda r: r["updates"]["mean"])
            slow_arr = sync["slowest_arrivals"]["mean"]
            out.append(
                f"Why ({setting}): in the same {_ms(sync['budget_s'])} ms the synchronous run "
                f"applies {sync['updates']['mean']:.0f} updates of all "
                f"{sync['arrivals']['mean'] / sync['updates']['mean']:.0f} "
                f"senders ({_ms(sync['seconds_per_update'])} ms each: every update waits for "
                f"the slowest sender), while {fast['method']} applies "
                f"{fast['updates']['mean']:.0f} ({_ms(fast['seconds_per_update'])} ms apart) "
                f"holding {fast['arrivals']['mean']:.0f} arrivals, "
                f"{fast['arrivals']['mean'] / sync['arrivals']['mean']:.2f}× the synchronous "
                f"run's {sync['arrivals']['mean']:.0f}. The slowest sender still arrives "
                f"{fast['slowest_arrivals']['mean']:.0f} times (synchronous: {slow_arr:.0f}), "
                f"each arrival {fast['slowest_staleness']['mean']:.1f} updates stale on "
                f"average (all arrivals {fast['staleness_mean']['mean']:.2f}, at most "
                f"{fast['staleness_max']}).")
        for r in mine:
            if r["method"] == r["base"] or not r["final"]["n"]:
                continue
            b = base.get(r["base"])
            if b is None:
                continue
            d = r["final"]["mean"] - b["final"]["mean"]
            spread = max(_finite(r["final"]["std"]), _finite(b["final"]["std"]))
            if r["diverged"] or (abs(d) > 2 * spread and abs(d) > 0.01):
                out.append(
                    f"{setting}, {r['method']}: final accuracy at the budget "
                    f"{budget.fmt(r['final'])} against {b['method']}'s "
                    f"{budget.fmt(b['final'])} ({100 * d:+.1f} pp)"
                    + (f"; the test loss blew up (harness.Watch's rule) in {r['diverged']} "
                       f"of {r['seeds']} seeds" if r["diverged"] else "") + ".")
    return out


def _speed_text(r: dict, s: dict, word: str) -> str:
    """A method and its speed-up ``s``, or why it has none."""
    if word == "never":
        return r["method"]
    if s["both"] == 0:
        return f"{r['method']} (reached; {r['base']} did not)"
    if s["both"] < r["seeds"]:
        return f"{r['method']} ({_range(s)} on the {s['both']} seeds both reached)"
    return f"{r['method']} ({_range(s)})"


def _finite(x: float) -> float:
    return x if math.isfinite(x) else 0.0


def anchor_verdict(summary: list[dict], target: str = HEADLINE) -> str:
    """FedBuff's speed-ups here against the paper's 3.3-3.8x."""
    fb = [r for r in summary if r["method"].startswith("FedBuff") and target in r["speedup"]]
    if not fb:
        return "No FedBuff run."
    lo, hi = FEDBUFF_ANCHOR
    parts = []
    for r in fb:
        s = r["speedup"][target]["ratio"]
        where = ("no speed-up: not reached by both" if not math.isfinite(s) else
                 "below the range" if s < lo else "within the range" if s <= hi else
                 "above the range")
        parts.append(f"{r['setting']} {r['method']}: {_range(r['speedup'][target])} ({where})")
    return (f"FedBuff against the anchor (Nguyen et al. 2022 report {lo}–{hi}× faster than "
            f"synchronous FL, to a target accuracy): " + "; ".join(parts) + ".")


def staleness_fn_verdicts(summary: list[dict]) -> list[str]:
    """FedAsync's staleness functions, per setting and alpha: final accuracy and time
    to the headline target."""
    out = []
    for setting in dict.fromkeys(r["setting"] for r in summary):
        for alpha in ("1", "0.6"):
            rs = [r for r in summary if r["setting"] == setting
                  and r["method"].startswith("FedAsync") and r["method"].endswith(f"α={alpha}")]
            if len(rs) < 2:
                continue
            best = max(rs, key=lambda r: r["final"]["mean"])
            out.append(f"{setting}, FedAsync α = {alpha}: final accuracy "
                       + ", ".join(f"{r['method'].split()[1]} {budget.fmt(r['final'])}"
                                   for r in rs)
                       + f" (highest: {best['method'].split()[1]}); time to {HEADLINE} "
                       + ", ".join(f"{_ms(r['time_to'][HEADLINE])} ms" for r in rs) + ".")
    return out


def svm_verdicts(summary: list[dict], optima: dict) -> list[str]:
    out = []
    for regime in dict.fromkeys(r["regime"] for r in summary):
        rows = [r for r in summary if r["regime"] == regime]
        asyn = [r for r in rows if r["variant"] != "sync"]
        faster = [r for r in asyn if r["verdict"] == "faster"]
        slower = [r for r in asyn if r["verdict"] in ("slower", "never")]
        reached = [r for r in asyn if r["time_to"]["n"] == r["time_to"]["total"]]
        text = (f"**{regime}**: {len(faster)} of {len(asyn)} asynchronous runs reach the "
                f"{svm_race.GAP:g} gap sooner than the synchronous run in every seed, "
                f"{len(slower)} later or never; {len(reached)} of {len(asyn)} reach it within "
                "the budget in every seed.")
        if faster:
            best = max(faster, key=lambda r: r["speedup"]["ratio"])
            text += (f" The largest speed-up: {best['data']} {best['layout']} "
                     f"{best['variant']}, {_range(best['speedup'])}.")
        sync_spu = [r["seconds_per_update"]["mean"] for r in rows if r["variant"] == "sync"]
        asy_spu = [r["seconds_per_update"]["mean"] for r in asyn]
        if sync_spu and asy_spu:
            text += (f" Virtual seconds per update: synchronous {1e3 * min(sync_spu):.2f}–"
                     f"{1e3 * max(sync_spu):.2f} ms, asynchronous {1e3 * min(asy_spu):.2f}–"
                     f"{1e3 * max(asy_spu):.2f} ms.")
        out.append(text)
        default = [r for r in asyn if r["opts"].get("prox") is None]
        zero = [r for r in asyn if r["opts"].get("prox") == 0.0]
        if default and zero:
            out.append(
                f"{regime}: updates to the {svm_race.GAP:g} gap with the default proximal "
                "weight: " + ", ".join(f"{r['data']} {r['layout']} {r['variant']} "
                                       f"{budget.fmt(r['updates_to_gap'], '.0f')}"
                                       for r in default)
                + "; with prox = 0: " + ", ".join(f"{r['data']} {r['layout']} {r['variant']} "
                                                  f"{budget.fmt(r['updates_to_gap'], '.0f')}"
                                                  for r in zero)
                + "; synchronous: " + ", ".join(
                    f"{r['data']} {r['layout']} {budget.fmt(r['updates_to_gap'], '.0f')}"
                    for r in rows if r["variant"] == "sync") + ".")
    low = min(r["min_gap"] for r in summary)
    out.append(f"The lowest relative gap any run reached is {low:.1e}: "
               + ("no run went below the optimum." if low >= 0 else
                  "below the optimum by that much, so the tol 1e-6 optimum is that close to the "
                  "true one, far inside the 1e-3 target."))
    return out


def staleness_verdicts(summary: list[dict]) -> list[str]:
    out = []
    for name in dict.fromkeys(r["algorithm"] for r in summary):
        rows = [r for r in summary if r["algorithm"] == name]
        zero = next((r for r in rows if r["bound"] == 0), None)
        if zero is None:
            continue
        best = max(rows, key=lambda r: r["final"]["mean"])
        worst = min(rows, key=lambda r: r["final"]["mean"])
        below = [r for r in rows if r["bound"] != 0
                 and r["fixed_updates"]["mean"] < zero["fixed_updates"]["mean"]]
        spread = max(_finite(r["final"]["std"]) for r in rows)
        diff = best["final"]["mean"] - worst["final"]["mean"]
        if zero["seeds"] > 1:
            noise = (("exceeds" if diff > 2 * spread else "is within")
                     + f" twice the largest seed std ({100 * spread:.1f} pp)")
        else:
            noise = "(one seed: no spread to compare with)"
        text = (f"{name}: at the same virtual time the final accuracy is highest at S = "
                f"{staleness.label(best['bound'])} ({budget.fmt(best['final'])}) and lowest at "
                f"S = {staleness.label(worst['bound'])} ({budget.fmt(worst['final'])}); "
                f"S = 0 (synchronous) gives {budget.fmt(zero['final'])}. The largest "
                f"difference, {100 * diff:.1f} pp, {noise}. "
                f"After the same number of updates as S = 0 makes, {len(below)} of "
                f"{len(rows) - 1} bounds S > 0 are below S = 0 "
                f"({budget.fmt(zero['fixed_updates'])}): "
                + ", ".join(f"S = {staleness.label(r['bound'])} "
                            f"{budget.fmt(r['fixed_updates'])}" for r in rows if r is not zero)
                + ". The bound buys updates: "
                + ", ".join(f"S = {staleness.label(r['bound'])} {r['updates']['mean']:.0f}"
                            for r in rows) + " in the budget.")
        blew = [r for r in rows if r["diverged"]]
        if blew:
            text += (" The test loss blew up (harness.Watch's rule) within the budget at "
                     + ", ".join(f"S = {staleness.label(r['bound'])} ({r['diverged']} of "
                                 f"{r['seeds']})" for r in blew) + ".")
        out.append(text)
    return out


# ---------------------------------------------------------------- report


def markdown(res: dict, mode: str, argv: list[str]) -> str:
    when = res.get("date") or datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC")
    walls = res.get("walls", {})
    o = res["options"]
    took = ", ".join(f"{k} {v:.0f} s" for k, v in walls.items())
    cmd = "python sims/async/run_all.py" + ("" if not argv else " " + " ".join(argv))
    svm_regimes = list(dict.fromkeys(r["regime"] for r in res["svm"]))
    lines = [
        "# Asynchronous groups: time to target on a virtual clock", "",
        f"Written by `{cmd}` ({mode}) on {when}, {platform.machine()} "
        f"({os.cpu_count()} CPUs visible, shared), jax {res.get('jax', '?')}. Parts took "
        f"{took}. Scripts: `race.py` (part 1), `svm_race.py` (part 2), `staleness.py` "
        "(part 3), `budget.py` (running to a virtual-time budget; time to target, "
        "speed-ups and verdicts from the run logs); each runs alone. Rebuild this file "
        "from `results.json` with `python sims/async/run_all.py --from-results`.", "",
        "## The clock", "",
        "Every run is `simulation.run` with `schedule=\"async\"`; each run-log line is one "
        "top update with `clock_s`, the virtual seconds when it is applied "
        "(`fedf_jax/schedule.py`). A sender's job takes speed × work units × "
        "`unit_seconds` plus its link time (the timing model's bytes / bandwidth + rounds "
        "× latency); the synchronous baseline is `staleness=0` (wait policy), which is the "
        "synchronous run bit for bit, on the same clock: each of its updates waits for "
        "the slowest sender. FEDF's top also pays one fetch of the pilot's model per "
        "update. Times to target are the `clock_s` of the first update whose test "
        "accuracy (objective gap) reaches the target; \"at budget\" is the model in place "
        "when the budget ends. Speed-ups are seed-paired: mean synchronous time over "
        "mean asynchronous time on the seeds where both reached; the verdict words "
        "(faster/slower in every seed, mixed, never) compare each seed's pair.", "",
        "## 1. Time to a target accuracy (digits, MLP)", "",
        f"12 workers, IID shards of digits, lr 0.2, batch 10, one local epoch; seeds 0.."
        f"{o['race']['seeds'] - 1} (lognormal speeds are drawn per seed, so each seed is "
        f"another draw). Budget: the clock of synchronous FedAvg after "
        f"{o['race']['sync_epochs']} epochs. Settings: `slow-group` = 3 groups of 4 workers, "
        "speeds 1,1,4 (the top's senders are the group masters); `lognormal` = 12 flat "
        "workers, speeds lognormal:0.5. FedAsync: FedAvg with buffer 1, staleness "
        "function s(τ) (const, poly = (τ+1)^-0.5, hinge = 1 up to τ = 4 then "
        "1/(10(τ−4)+1)) and mixing α; FedBuff: buffer K, each member's change rebased on "
        "the current model; async FEDF: buffer B, pilot by Eq. (1) among the buffer. No "
        "staleness bound (S unbounded) in part 1. Speed-ups of FedAvg-based methods are "
        "against synchronous FedAvg, of FEDF-based ones against synchronous FEDF. The "
        f"third target is {race.RELATIVE:g} × the same algorithm's synchronous final "
        "accuracy (per row's base: "
        + ", ".join(sorted({f"{r['setting']} {r['base']} {r['targets']['rel']:.4f}"
                            for r in res["race"] if math.isfinite(r["targets"]["rel"])}))
        + ").", "",
        "What each top rule does with an arrival from sender k, which started from P^s "
        "(`fedf_jax/algorithms/asynchronous.py`); it explains most of what follows. "
        "FedAsync: P^{v+1} = (1 − a) P^v + a Q_k with a = α s(τ). With α = 1 and s "
        "constant (the library's defaults), P^{v+1} = Q_k and k starts again from "
        "P^{v+1}, i.e. from its own model: a sender never builds on another's work and the "
        "global model is the last arrival (hinge gives a = 1 up to τ = 4, so it differs "
        "from constant only on the staler arrivals). FedBuff: the size- and "
        "s(τ)-weighted mean of the K members' changes Q_k − P^{s_k}, added to P^v. Async "
        "FEDF: the pilot's change Q* − P^{s*} added to P^v (plus the other members' "
        "ternary votes), times a = α s(τ*): with B = 1 every arrival's whole change is "
        "added, each computed on a model τ updates old.", "",
    ]
    for setting in dict.fromkeys(r["setting"] for r in res["race"]):
        lines += [f"### {setting}", "", race.table(res["race"], setting), ""]
    lines += ["Verdicts (computed from the tables' numbers):", "",
              *[f"- {v}" for v in race_verdicts(res["race"])],
              f"- {anchor_verdict(res['race'])}",
              *[f"- {v}" for v in staleness_fn_verdicts(res["race"])], "",
              "![accuracy against virtual time](race.png)", "",
              f"![speed-up to accuracy {HEADLINE}](speedup.png)", ""]
    optima = res["svm_optima"]
    lines += [
        "## 2. ADMM linear SVM: partial barrier against the synchronous iteration", "",
        "Consensus ADMM (samples split), C = 1, 6 workers. `flat`: speeds 1,1,1,1,1,4; "
        "`groups`: 3 groups of 2, speeds 1,1,4. The optimum per data set and seed is a "
        f"synchronous flat run with tol {svm_race.OPT_TOL:g} ("
        + "; ".join(f"{k}: {v['objective']:.6f} after {v['iterations']} iterations"
                    for k, v in optima.items())
        + "); gap = (objective − optimum) / optimum. Budget: the synchronous run's clock "
        "after " + ", ".join(f"{k} {v}" for k, v in o["svm"]["iterations"].items())
        + " iterations. Measured runs use tol 1e-7 so none stops before the budget. "
        "Asynchronous: A = `buffer` arrivals per update, τ = `staleness` bound (wait "
        "policy), prox = the master's proximal weight (default ρ n (n/A − 1 + τ)). "
        "Regimes: `link-bound` = the default `unit_seconds` (2M/1e9 s per row, M = 31 or "
        "65 weights), where a job is almost all link time, so a 4× slower CPU barely "
        "delays a sender; `compute-bound` = `unit_seconds` 1e-4 s per row, where the "
        "x-update dominates and the slow sender is a straggler.", ""]
    for regime in svm_regimes:
        lines += [f"### {regime}", "", svm_race.table(res["svm"], regime), ""]
    lines += ["Verdicts:", "", *[f"- {v}" for v in svm_verdicts(res["svm"], optima)], "",
              "![relative objective gap against virtual time](svm.png)", ""]
    st = res["staleness"]
    lines += [
        "## 3. The accuracy cost of staleness", "",
        "`slow-group` (12 workers, 3 groups, speeds 1,1,4), buffer 1, s(τ) constant, α = 1, "
        f"wait policy; seeds 0..{o['staleness']['seeds'] - 1}. Two readings of the same runs: "
        "**fixed virtual time** (the clock of synchronous FedAvg after "
        f"{o['staleness']['sync_epochs']} epochs) and **fixed number of updates** (as many "
        "as the algorithm's S = 0 run makes in that time, in brackets). ∞: no bound.", "",
        staleness.table(st), "",
        "Verdicts:", "", *[f"- {v}" for v in staleness_verdicts(st)], "",
        "![accuracy against the staleness bound](staleness.png)", ""]
    return "\n".join(lines) + "\n"


def write(res: dict, out: Path, mode: str, argv: list[str]) -> dict[str, Path]:
    """results.json, the plots and RESULTS.md."""
    p = paths(out)
    out.mkdir(parents=True, exist_ok=True)
    p["results"].write_text(json.dumps(res, indent=None, allow_nan=True) + "\n",
                            encoding="utf-8")
    plot_race(res, p["race_png"])
    plot_speedup(res, p["speedup_png"])
    plot_svm(res, p["svm_png"])
    plot_staleness(res, p["staleness_png"])
    p["report"].write_text(markdown(res, mode, argv), encoding="utf-8")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a CI-size check into quick/")
    parser.add_argument("--out", type=Path, help="output folder (default: this folder; "
                        "quick/ under it with --quick)")
    parser.add_argument("--from-results", action="store_true",
                        help="rebuild RESULTS.md and the plots from OUT/results.json")
    parser.add_argument("--no-compile-cache", action="store_true",
                        help="compile every run afresh")
    args = parser.parse_args(argv)
    out = output_dir(args.quick, args.out)
    mode = "quick" if args.quick else "full"
    if args.from_results:
        f = paths(out)["results"]
        if not f.is_file():
            print(f"run_all: error: {f} does not exist; run without --from-results first.",
                  file=sys.stderr)
            return 2
        res = json.loads(f.read_text(encoding="utf-8"))
        argv, mode = res.get("argv", []), res.get("mode", mode)
    else:
        import jax

        if not args.no_compile_cache:
            CACHE.mkdir(parents=True, exist_ok=True)
            jax.config.update("jax_compilation_cache_dir", str(CACHE))
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        t0 = time.perf_counter()
        res = run(get_config(args.quick),
                  log=lambda s: print(f"[{time.strftime('%H:%M:%S')}] {s}", flush=True))
        res["walls"]["total"] = time.perf_counter() - t0
        res.update(argv=argv, mode=mode, jax=jax.__version__,
                   date=datetime.datetime.now(datetime.timezone.utc).strftime(
                       "%Y-%m-%d %H:%M UTC"))
    p = write(res, out, mode, argv)
    print(f"wrote {p['report']}" + (" (a quick run; the committed sims/async/RESULTS.md is "
                                     "unchanged)" if args.quick and out != HERE else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
