"""Paper-style figures of grouped runs (PNG, matplotlib's Agg backend).

Every curve is the mean over a group's seeds with a ±1 sample-std band; a method
(with its variant, if any) keeps its colour in every figure; the centralized group
is a dashed line drawn on every panel of its (data, model). Panels: one row per
(data, model), one column per N.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from analysis.runs import CENTRAL, GroupKey, Run, label_rank, stack  # noqa: E402

DPI = 150
PANEL = (5.0, 3.6)  # inches per panel
MIN_WIDTH = 7.0  # inches, so that a one-panel figure has room for its title
KNOWN_COLORS = {CENTRAL: "black", "FEDF (d=+1)": "tab:blue", "FEDF (d=-1)": "tab:purple",
                "FedAvg": "tab:orange", "Phong et al.": "tab:green", "TernGrad": "tab:red"}
SPARE_COLORS = ("tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")

Groups = Mapping[GroupKey, Sequence[Run]]


def colors(names: Sequence[str], labels: Sequence[str] | None = None) -> dict[str, str]:
    """A fixed colour per name (method label, or label with a variant).

    Args:
      names: the names to colour, as in tables and legends.
      labels: each name's method label (default: the names themselves). The first name
        of a label in KNOWN_COLORS takes its colour; the others take spares in sorted
        order.
    """
    labels = list(names) if labels is None else list(labels)
    out: dict[str, str] = {}
    for name, label in sorted(zip(names, labels, strict=True), key=lambda p: p[0]):
        if label in KNOWN_COLORS and KNOWN_COLORS[label] not in out.values():
            out[name] = KNOWN_COLORS[label]
    extra = sorted(set(names) - set(out))
    for i, name in enumerate(extra):
        out[name] = SPARE_COLORS[i % len(SPARE_COLORS)]
    return out


def _style(name: str, label: str, palette: Mapping[str, str]) -> dict[str, Any]:
    return {"color": palette[name], "linestyle": "--" if label == CENTRAL else "-",
            "linewidth": 1.6}


def _rank(row: Mapping[str, Any]) -> tuple:
    """Table order of a row: its method, then its name (variants)."""
    return label_rank(row["label"]), row["name"]


def mean_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and sample std of f64[R, E], NaNs left out (std 0 with one run)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(values, axis=0)
        count = np.sum(np.isfinite(values), axis=0)
        std = np.where(count > 1, np.nanstd(values, axis=0, ddof=1), 0.0)
    return mean, np.nan_to_num(std)


def _panels(groups: Groups) -> list[tuple[str, str, int | None]]:
    """(data, model, N) of each panel; N None where a (data, model) has only centralized."""
    out = []
    for data, model in dict.fromkeys((k.data, k.model) for k in groups):
        ns = sorted({k.workers for k in groups if (k.data, k.model) == (data, model)
                     and k.workers is not None})
        out += [(data, model, n) for n in ns] or [(data, model, None)]
    return out


def _grid(rows: int, cols: int):
    fig, axes = plt.subplots(rows, cols, figsize=(max(PANEL[0] * cols, MIN_WIDTH),
                                                  PANEL[1] * rows), squeeze=False)
    return fig, axes


def _save(fig, path: Path, title: str) -> Path:
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _panel_grid(groups: Groups):
    """Figure with one row per (data, model) and one column per N; (fig, {panel: ax})."""
    panels = _panels(groups)
    pairs = list(dict.fromkeys((d, m) for d, m, _ in panels))
    cols = max(sum((d, m) == p for d, m, _ in panels) for p in pairs)
    fig, axes = _grid(len(pairs), cols)
    where = {}
    for r, pair in enumerate(pairs):
        row = [p for p in panels if p[:2] == pair]
        for c in range(cols):
            if c < len(row):
                where[row[c]] = axes[r, c]
            else:
                axes[r, c].set_axis_off()
    return fig, where


def _curves(groups: Groups, path: Path, key: str, ylabel: str, title: str,
            x_time: bool = False, log_y: bool = False,
            targets: Mapping[tuple[str, str], float] | None = None) -> Path:
    palette = colors([k.name for k in groups], [k.label for k in groups])
    fig, where = _panel_grid(groups)
    for (data, model, n), ax in where.items():
        for k, runs in groups.items():
            if (k.data, k.model) != (data, model) or k.workers not in (n, None):
                continue
            y, y_std = mean_std(stack(runs, key))
            if x_time:
                x, _ = mean_std(stack(runs, "modeled_s", cumulative=True))
            else:
                x, _ = mean_std(stack(runs, "epoch"))
            style = _style(k.name, k.label, palette)
            label = f"{k.name} ({len(runs)} seed{'s' * (len(runs) > 1)})"
            ax.plot(x, y, label=label, **style)
            ax.fill_between(x, y - y_std, y + y_std, color=style["color"], alpha=0.18,
                            linewidth=0)
        target = (targets or {}).get((data, model))
        if target is not None and np.isfinite(target):
            ax.axhline(target, color="gray", linestyle=":", linewidth=1.0,
                       label=f"target {target:.4f}")
        ax.set_title(f"{data} / {model}" + (f", N = {n}" if n is not None else ""))
        ax.set_xlabel("cumulative modeled time (s, log scale)" if x_time else "global epoch")
        if x_time:  # methods differ by orders of magnitude in time per epoch
            ax.set_xscale("log")
        else:
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        if log_y:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path, title)


def accuracy_vs_epoch(groups: Groups, path: Path,
                      targets: Mapping[tuple[str, str], float] | None = None) -> Path:
    """Test accuracy per global epoch, one panel per N, Centralized on each.

    Args:
      groups: from :func:`analysis.runs.group_runs`.
      path: the PNG to write.
      targets: (data, model) -> target accuracy, drawn as a dotted line.
    """
    return _curves(groups, path, "test_accuracy", "test accuracy",
                   "Test accuracy vs global epoch (mean ± std over seeds)", targets=targets)


def accuracy_vs_time(groups: Groups, path: Path,
                     targets: Mapping[tuple[str, str], float] | None = None) -> Path:
    """Test accuracy against the cumulative modeled (deployed) seconds (mean over seeds)."""
    return _curves(groups, path, "test_accuracy", "test accuracy",
                   "Test accuracy vs modeled deployed time (mean ± std over seeds)",
                   x_time=True, targets=targets)


def loss_vs_epoch(groups: Groups, path: Path) -> Path:
    """Test loss per global epoch (log y when it spans more than a decade)."""
    losses = np.concatenate([stack(runs, "test_loss").ravel() for runs in groups.values()])
    losses = losses[np.isfinite(losses)]
    log_y = bool(losses.size and losses.min() > 0 and losses.max() / losses.min() > 10)
    return _curves(groups, path, "test_loss", "test loss", "Test loss vs global epoch "
                   "(mean ± std over seeds)", log_y=log_y)


def bytes_per_epoch(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Grouped bars: mean MB per epoch for each label (bar) and N (group of bars), log y.

    Centralized training exchanges no models and is left out.
    """
    rows = [r for r in rows if r["label"] != CENTRAL
            and np.isfinite(r["bytes_per_epoch"]["total"].mean)
            and r["bytes_per_epoch"]["total"].mean > 0]
    pairs = list(dict.fromkeys((r["data"], r["model"]) for r in rows)) or [("no data", "")]
    palette = colors([r["name"] for r in rows], [r["label"] for r in rows])
    fig, axes = _grid(1, len(pairs))
    for ax, pair in zip(axes[0], pairs, strict=True):
        mine = [r for r in rows if (r["data"], r["model"]) == pair]
        ns = sorted({w for r in mine for w in np.atleast_1d(r["workers"]).tolist()})
        labels = list(dict.fromkeys(r["name"] for r in sorted(mine, key=_rank)))
        width = 0.8 / max(len(labels), 1)
        for j, name in enumerate(labels):
            xs, ys, es = [], [], []
            for r in (r for r in mine if r["name"] == name):
                s = r["bytes_per_epoch"]["total"]
                for w in np.atleast_1d(r["workers"]).tolist():
                    xs.append(ns.index(w) - 0.4 + width * (j + 0.5))
                    ys.append(s.mean / 1e6)
                    es.append(0.0 if s.n < 2 else s.std / 1e6)
            bars = ax.bar(xs, ys, width=width, yerr=es, color=palette[name], label=name,
                          edgecolor="black", linewidth=0.4, capsize=2)
            ax.bar_label(bars, labels=[f"{y:.3g}" for y in ys], fontsize=6, padding=1)
        ax.set_xticks(range(len(ns)), [f"N = {n}" for n in ns])
        ax.set_yscale("log")
        values = [r["bytes_per_epoch"]["total"].mean / 1e6 for r in mine]
        if values:  # whole decades, so that bar heights compare from a common floor
            ax.set_ylim(10 ** np.floor(np.log10(min(values))),
                        10 ** np.ceil(np.log10(max(values) * 2)))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("workers")
        ax.set_ylabel("MB per global epoch")
        ax.set_title(" / ".join(p for p in pair if p))
        ax.grid(True, axis="y", which="both", alpha=0.3)
        if labels:
            ax.legend(fontsize=8)
    return _save(fig, path, "Data exchanged per global epoch (1 MB = 10^6 bytes)")


def speedup(rows: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Speedup to the target accuracy vs N, one line per label; None if none is finite."""
    rows = [r for r in rows if r["label"] != CENTRAL and r["speedup"] is not None
            and np.isfinite(r["speedup"])]
    if not rows:
        return None
    pairs = list(dict.fromkeys((r["data"], r["model"]) for r in rows))
    palette = colors([r["name"] for r in rows], [r["label"] for r in rows])
    fig, axes = _grid(1, len(pairs))
    for ax, pair in zip(axes[0], pairs, strict=True):
        mine = [r for r in rows if (r["data"], r["model"]) == pair]
        for name in dict.fromkeys(r["name"] for r in sorted(mine, key=_rank)):
            group = [r for r in mine if r["name"] == name]
            pts = sorted((r["workers"], r["speedup"]) for r in group)
            ax.plot(*zip(*pts, strict=True), marker="o", label=name,
                    **_style(name, group[0]["label"], palette))
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1.0,
                   label=f"{CENTRAL} (= 1)")
        target = mine[0]["target"]
        ax.set_title(f"{pair[0]} / {pair[1]}, target accuracy {target:.4f}")
        ax.set_xlabel("workers N")
        ax.set_ylabel("speedup vs Centralized (×)")
        ax.set_xticks(sorted({r["workers"] for r in mine}))
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path, "Speedup in modeled time to target accuracy")
