"""Fig. 4 analog: the accuracy / speedup trade-off of FEDF against training longer.

The paper trains U-Net on HEART-VESSEL with 5 workers for more and more epochs and
plots the accuracy (left axis) and the speedup over centralized training (right
axis): accuracy creeps up while the speedup falls. Here, from the run logs of
``table2.py``: for every epoch count e of the FEDF runs with N workers, the mean
test accuracy after e epochs and the speedup

    speedup(e) = (modeled time of the whole centralized run) / (modeled time of e FEDF epochs)

    python sims/paper/fig4_tradeoff.py runs/paper/digits-mlp --workers 5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from analysis import runs as runs_lib


def tradeoff(run_dirs, workers: int, label: str = "FEDF (d=+1)"):
    """(epochs, accuracy mean, accuracy std, speedup, centralized accuracy) of the runs."""
    runs, _ = runs_lib.load_runs(run_dirs)
    fedf = [r for r in runs if r.label == label and r.workers == workers]
    central = [r for r in runs if r.algorithm == "central"]
    if not fedf or not central:
        raise ValueError(f"need {label} runs with N = {workers} and centralized runs under "
                         f"{[str(d) for d in run_dirs]}; run sims/paper/table2.py first.")
    acc = runs_lib.stack(fedf, "test_accuracy")
    time = np.nanmean(runs_lib.stack(fedf, "modeled_s", cumulative=True), axis=0)
    t_central = float(np.mean([runs_lib.series(r, "modeled_s").sum() for r in central]))
    c_acc = float(np.mean([runs_lib.series(r, "test_accuracy")[-1] for r in central]))
    epochs = np.arange(1, acc.shape[1] + 1)
    return epochs, np.nanmean(acc, 0), np.nanstd(acc, 0, ddof=min(1, len(fedf) - 1)), \
        t_central / time, c_acc


def plot(epochs, acc, std, speedup, c_acc, workers: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=150)
    ax.plot(epochs, acc, color="tab:blue", label=f"FEDF accuracy (N = {workers})")
    ax.fill_between(epochs, acc - std, acc + std, color="tab:blue", alpha=0.2)
    ax.axhline(c_acc, color="black", ls="--", lw=1, label="centralized accuracy")
    ax.set_xlabel("FEDF global epochs")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(epochs, speedup, color="tab:red", label="speedup vs centralized")
    ax2.axhline(1.0, color="tab:red", ls=":", lw=1)
    ax2.set_ylabel("speedup vs centralized (×, modeled time)")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="center right", fontsize=8)
    ax.set_title("Accuracy / speedup trade-off (Fig. 4 analog)")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", help="folders with the table2.py run logs")
    p.add_argument("--workers", type=int, default=5, help="N of the FEDF runs (default 5)")
    p.add_argument("--out", help="PNG path (default: fig4_tradeoff.png beside this script)")
    args = p.parse_args(argv)
    out = Path(args.out or Path(__file__).resolve().parent / "fig4_tradeoff.png")
    try:
        epochs, acc, std, speedup, c_acc = tradeoff(args.run_dirs, args.workers)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    plot(epochs, acc, std, speedup, c_acc, args.workers, out)
    for e in sorted({1, len(epochs) // 4, len(epochs) // 2, len(epochs)} - {0}):
        print(f"{e:>4} epochs: accuracy {acc[e - 1]:.4f} ± {std[e - 1]:.4f}, "
              f"speedup {speedup[e - 1]:.2f}x (centralized {c_acc:.4f})")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
