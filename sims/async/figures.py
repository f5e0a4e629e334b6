"""The plots of sims/async's RESULTS.md, and the seed-mean curves they draw (kept in
results.json so that ``--from-results`` redraws them without the runs).

- ``race.png``: test accuracy against virtual time, per setting and family;
- ``speedup.png``: speed-up to the headline accuracy, with the FedBuff paper's range;
- ``svm.png``: the ADMM SVM's relative objective gap against virtual time;
- ``staleness.png``: accuracy against the staleness bound S.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import race  # noqa: E402
import run_all_cli  # noqa: E402
import staleness  # noqa: E402
import svm_race  # noqa: E402
from verdicts import FEDBUFF_ANCHOR, HEADLINE  # noqa: E402

GRID = 200  # points of the plotted curves (seed means on a grid of virtual time)


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
    run_all_cli.save_figure(fig, path)


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
    run_all_cli.save_figure(fig, path)


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
    run_all_cli.save_figure(fig, path)


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
    run_all_cli.save_figure(fig, path)


def draw(res: dict, p: dict[str, Path]) -> None:
    """Every plot of ``res`` to its path in ``p`` (run_all.paths)."""
    plot_race(res, p["race_png"])
    plot_speedup(res, p["speedup_png"])
    plot_svm(res, p["svm_png"])
    plot_staleness(res, p["staleness_png"])


__all__ = ["GRID", "grid_curve", "grid_times", "curves", "plot_race", "plot_speedup",
           "plot_svm", "plot_staleness", "draw"]
