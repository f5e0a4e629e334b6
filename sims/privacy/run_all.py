"""Runs the privacy experiments E1-E9 and writes RESULTS.md plus one plot per experiment.

    python sims/privacy/run_all.py            # the suite (7-13 min on 2 shared CPU cores)
    python sims/privacy/run_all.py --quick    # a CI-size check (a few minutes)
    python sims/privacy/run_all.py --only E1,E7 --seeds 3

Each experiment's result.json / result.md goes to OUT/results/EN/; OUT/RESULTS.md
holds the verdict per theorem, the accuracy cost of each defence and every
experiment's section; OUT/plots/EN.png its main metrics. OUT defaults to this
folder (``quick/`` under it with --quick, so a check does not overwrite the suite's
results). ``--from-results`` rebuilds RESULTS.md and the plots from the result files;
with ``--only`` the other experiments' saved results stay in the report.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fedf_jax.privacy import experiments  # noqa: E402
from fedf_jax.privacy.common import Result, interval_text  # noqa: E402

HERE = Path(__file__).resolve().parent
MAX_PANELS = 6


def output_dir(quick: bool, out: str | Path | None = None) -> Path:
    """Where RESULTS.md, results/ and plots/ go: ``out``, else this folder, or its
    git-ignored ``quick/`` for a quick run."""
    if out is not None:
        return Path(out)
    return HERE / "quick" if quick else HERE


def get_config(quick: bool = False, seeds: int | None = None):
    """The suite's options (flax-style entry point)."""
    return experiments.make_options(quick=quick, seeds=seeds)


def theorem_table(results: dict[str, Result]) -> list[str]:
    """Markdown: per claim, its experiments' verdicts and the combined verdict."""
    lines = ["| claim | experiments | their verdicts | verdict |", "|---|---|---|---|"]
    evidence = []
    for claim, names in experiments.THEOREMS.items():
        got = [n for n in names if n in results]
        verdicts = [results[n].verdict for n in got]
        missing = [n for n in names if n not in results]
        each = ", ".join(f"{n}: {v}" for n, v in zip(got, verdicts, strict=True))
        if missing:
            each += (", " if each else "") + ", ".join(f"{n}: not run" for n in missing)
        lines.append(f"| {claim} | {', '.join(names)} | {each} | "
                     f"**{experiments.theorem_verdict(verdicts)}** |")
        evidence += [f"- **{n}** ({results[n].verdict}): {_first_sentence(results[n].notes)}"
                     for n in got]
    return lines + ["", "Why, per experiment (the first sentence of its notes):", "",
                    *evidence]


def _first_sentence(text: str, limit: int = 400) -> str:
    head = text.strip().split(". ")[0].strip().rstrip(".")
    return (head[:limit] + " ...") if len(head) > limit else head + "."


def defence_costs(results: dict[str, Result]) -> list[str]:
    """Markdown: test accuracy of each defended arm (E9) and its drop against undefended
    FEDF; the damage of each lie (E8)."""
    lines: list[str] = []
    e9 = results.get("E9")
    if e9 is not None:
        acc = {r.arm: r for r in e9.rows if r.metric == "test_accuracy"}
        eps = {r.arm: r.mean for r in e9.rows if r.metric == "accountant_eps_all_rounds"}
        ref = next((acc[a].mean for a in acc if a.startswith("fedf") and "+" not in a[6:]),
                   np.nan)
        lines += ["| arm (E9) | test accuracy | 95 % interval | cost vs FEDF | cost vs the "
                  "same protocol undefended | epsilon (all rounds, accountant) |",
                  "|---|---:|---|---:|---:|---:|"]
        for arm, r in acc.items():
            e = eps.get(arm)
            base = acc.get(_base_arm(arm))
            own = "" if base is None else f"{base.mean - r.mean:+.3f}"
            lines.append(f"| {arm} | {r.mean:.3f} | {interval_text(r)} | "
                         f"{ref - r.mean:+.3f} | {own} | {'' if e is None else f'{e:.3g}'} |")
    else:
        lines.append("E9 was not run: no accuracy cost of the defences here.")
    e8 = results.get("E8")
    if e8 is not None:
        lines += ["", "| lie (E8) | arm | accuracy drop vs honest | 95 % interval |",
                  "|---|---|---:|---|"]
        for r in e8.rows:
            if r.metric == "accuracy_drop":
                lines.append(f"| {r.setting} | {r.arm} | {r.mean:+.3f} | "
                             f"{interval_text(r)} |")
    return lines


def _base_arm(arm: str) -> str:
    """The arm without its defence suffix: ``fedavg+dp8`` -> ``fedavg``."""
    for suffix in ("+dp", "+pilotnoise"):
        if suffix in arm:
            return arm[:arm.index(suffix)]
    return arm


def plot(result: Result, path: Path) -> None:
    """Bars of the first metrics of an experiment: one panel per metric, settings on the
    x axis, one bar per arm, 95 % intervals as whiskers."""
    metrics = list(dict.fromkeys(r.metric for r in result.rows
                                 if not r.metric.endswith("_chance")))[:MAX_PANELS]
    if not metrics:
        return
    most = max(len({r.setting for r in result.rows if r.metric == m}) for m in metrics)
    # many settings: one panel per row, as wide as its bars need
    cols = min(3, len(metrics)) if most <= 12 else 1
    width_in = 5.2 if most <= 12 else min(2.0 + 0.3 * most, 30.0)
    rows_n = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(width_in * cols, 3.6 * rows_n),
                             squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        cells = [r for r in result.rows if r.metric == metric]
        settings = list(dict.fromkeys(r.setting for r in cells))
        arms = list(dict.fromkeys(r.arm for r in cells))
        width = 0.8 / max(len(arms), 1)
        for i, arm in enumerate(arms):
            by = {r.setting: r for r in cells if r.arm == arm}
            x = np.arange(len(settings)) + (i - (len(arms) - 1) / 2) * width
            m = np.array([by[s].mean if s in by else np.nan for s in settings])
            lo = np.array([by[s].lo if s in by else np.nan for s in settings])
            hi = np.array([by[s].hi if s in by else np.nan for s in settings])
            err = np.nan_to_num(np.stack([m - lo, hi - m]), nan=0.0).clip(min=0)
            ax.bar(x, m, width, yerr=err, capsize=1, error_kw={"elinewidth": 0.6},
                   label=arm)
        ax.set_title(metric, fontsize=9)
        ax.set_xticks(np.arange(len(settings)))
        ax.set_xticklabels(settings, rotation=35, ha="right", fontsize=6)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(f"{result.experiment}: {result.title} ({result.verdict})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: dict[str, Result], out: Path, mode: str, walls: dict[str, float],
                 failed: dict[str, str]) -> Path:
    """OUT/RESULTS.md and OUT/plots/*.png."""
    plots = {}
    for name, r in results.items():
        p = out / "plots" / f"{name}.png"
        plot(r, p)
        if p.exists():
            plots[name] = p.relative_to(out)
    opts = next(iter(results.values())).extra.get("options", {}) if results else {}
    lines = [
        "# Privacy attack experiments: results",
        "",
        f"Mode: **{mode}**. Written {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} "
        f"UTC on {platform.machine()} ({os.cpu_count()} CPUs visible); data "
        f"`{opts.get('data', 'digits')}`, N = {opts.get('workers', '?')} workers, "
        f"{opts.get('seeds', '?')} seeds, delta = {opts.get('delta', '?')}. "
        "Intervals are two-sided 95 % intervals over seeds (or seeds x epochs where a row "
        "pools epochs), kept inside each metric's range: Student-t clipped to the range, "
        "Clopper-Pearson where every value sits at an end of it, none for a single value "
        "(`stats.mean_interval`); with 2-5 values they are wide.",
        "",
        "Reproduce: `python sims/privacy/run_all.py" + (" --quick" if mode == "quick" else "")
        + "`; one experiment: `fedf attack --experiment E7 --out DIR` (or "
        "`python -m fedf_jax.privacy.cli ...`).",
        "",
        "## Sweeps and data sets",
        "",
        "Local set size n_k in {1, 4, 16, all} with 1 local epoch and batch 8 (the base "
        "recipe) in E1-E4 (E5: one n_k, 32; E6: n_k <= 16). Local epochs {1, 5} and batch "
        "sizes {1, 8, 32} are swept one knob at a time around the base recipe (E1, E3, E4: "
        "at n_k = 1, the size that leaks most, and at n_k = 16; E5 at n_k = 32); E2 sweeps "
        "every (E, B) pair at n_k = 16. At n_k = 1 every batch size is one full batch, so B "
        "is not swept there (nor at n_k = 4 for B = 32, which equals B = 8). E6-E9 use the "
        "base recipe. The cell of each row is its `setting` (`n_k=16 E=5 B=8 ...`).",
        "",
        "CIFAR-10 (`--data cifar10 --data-dir DIR`, the official binary or python batches; "
        "model: the CNN): E2, E4 and E9 have been run end to end with `--quick` on a tiny "
        "CIFAR-10 folder in the binary format (`tests/test_privacy_cifar.py` runs E2 in the "
        "default test run); E5 is meant to run too but has not been checked on CIFAR-10, "
        "nor have E7 and E8 (slow with the CNN on 2 CPU cores). E1 runs its optimisation "
        "attack only (the "
        "analytic inversion and label rule need a dense first layer, so labels are given to "
        "the attacker); E3 and E6 invert the MLP's dense first layer and stop with a "
        "one-line error on CIFAR-10. The figures below are on digits only.",
        "",
        "## Verdict per claim",
        "",
        *theorem_table(results),
        "",
        "## Accuracy cost of the defences and of the lies",
        "",
        *defence_costs(results),
        "",
        "## Run time",
        "",
        "| experiment | wall s |", "|---|---:|",
        *[f"| {n} | {w:.0f} |" for n, w in walls.items()],
        f"| total | {sum(walls.values()):.0f} |",
    ]
    if failed:
        lines += ["", "## Not run", ""]
        lines += [f"- {n}: {why}" for n, why in failed.items()]
    lines += ["", "## The experiments", ""]
    for name, r in results.items():
        lines.append(r.to_markdown())
        if name in plots:
            lines += [f"![{name}]({plots[name]})", ""]
    path = out / "RESULTS.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a CI-size check")
    parser.add_argument("--seeds", type=int, help="seeds per experiment (default 5; quick 2)")
    parser.add_argument("--only", help="comma-separated experiments, e.g. E1,E7")
    parser.add_argument("--out", type=Path, help="output folder (default: this folder; "
                        "quick/ under it with --quick)")
    parser.add_argument("--from-results", action="store_true",
                        help="rebuild RESULTS.md and plots from OUT/results/*/result.json")
    args = parser.parse_args(argv)
    out = output_dir(args.quick, args.out)
    mode = "quick" if args.quick else "full"
    try:
        names = ([n.strip().upper() for n in args.only.split(",")] if args.only
                 else list(experiments.MODULES))
        for n in names:
            if n not in experiments.MODULES:
                raise ValueError(f"`--only` names {n!r}; use {', '.join(experiments.MODULES)}.")
        opts = get_config(args.quick, args.seeds)
    except ValueError as e:
        print(f"run_all: error: {e}", file=sys.stderr)
        return 2
    results: dict[str, Result] = {}
    walls: dict[str, float] = {}
    failed: dict[str, str] = {}
    for name in names:
        if args.from_results:
            f = out / "results" / name / "result.json"
            if f.exists():
                results[name] = experiments.read_result(f)
                walls[name] = float(results[name].extra.get("wall_s", np.nan))
            else:
                failed[name] = "no result file"
            continue
        if name not in experiments.EXPERIMENTS:
            failed[name] = f"{experiments.MODULES[name]}.py is not in this installation"
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        results[name] = experiments.run_experiment(
            name, opts, 0, lambda m: print(f"    {m}", file=sys.stderr, flush=True),
            out / "results" / name)
        walls[name] = time.perf_counter() - t0
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {results[name].verdict} "
              f"({walls[name]:.0f} s)", file=sys.stderr, flush=True)
    if args.only and not args.from_results:  # keep the other experiments' saved results
        for name in experiments.MODULES:
            f = out / "results" / name / "result.json"
            if name not in results and f.exists():
                results[name] = experiments.read_result(f)
                walls[name] = float(results[name].extra.get("wall_s", np.nan))
        results = {n: results[n] for n in experiments.MODULES if n in results}
        walls = {n: walls[n] for n in experiments.MODULES if n in walls}
        failed = {n: why for n, why in failed.items() if n not in results}
    path = write_report(results, out, mode, walls, failed)
    print(f"wrote {path}" + (" — a quick run; the committed sims/privacy/RESULTS.md is "
                             "unchanged" if args.quick and out != HERE else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
