"""Runs the privacy experiments E1-E12 and writes RESULTS.md plus one plot per experiment.

    python sims/privacy/run_all.py            # the suite (about 20-25 min on 2 shared CPU cores)
    python sims/privacy/run_all.py --quick    # a CI-size check (about 3-5 minutes)
    python sims/privacy/run_all.py --only E1,E7 --seeds 3

Each experiment's result.json / result.md goes to OUT/results/EN/; OUT/RESULTS.md
holds the verdict per claim and regime, the accuracy cost of each defence, the DP
audit, the pilot guard and every experiment's section; OUT/plots/EN.png its main
metrics. OUT defaults to this
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
from fedf_jax.privacy.common import Regime, Result, interval_text  # noqa: E402

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
    """Markdown: per claim and experiment, the verdict in each regime (set-up, what the
    attacker is given), then each claim's verdict over its regimes."""
    lines = ["| claim | experiment | regime | attacker given | verdict | why |",
             "|---|---|---|---|---|---|"]
    summary = []
    for claim, names in experiments.THEOREMS.items():
        verdicts, where = [], {"refuted": [], "supported": [], "inconclusive": []}
        for n in names:
            if n not in results:
                lines.append(f"| {claim} | {n} | — | — | not run | |")
                continue
            r = results[n]
            regimes = r.regimes or [Regime("all cells", "see the section", r.verdict,
                                           _first_sentence(r.notes))]
            for g in regimes:
                lines.append(f"| {claim} | {n} | {g.name} | {g.given} | **{g.verdict}** | "
                             f"{_clip(g.reason, 320)} |")
                where[g.verdict].append(f"{n} ({g.name})")
            verdicts.append(r.verdict)
        parts = [f"{v} in {len(w)} regime{'s' if len(w) != 1 else ''}"
                 for v, w in where.items() if w]
        summary.append(f"- **{claim}**: {experiments.theorem_verdict(verdicts)} "
                       f"({'; '.join(parts) or 'no regime run'}); refuted in: "
                       f"{', '.join(where['refuted']) or 'none'}.")
    return summary + ["", *lines]


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def _first_sentence(text: str, limit: int = 400) -> str:
    head = text.strip().split(". ")[0].strip().rstrip(".")
    return (head[:limit] + " ...") if len(head) > limit else head + "."


def audit_table(results: dict[str, Result]) -> list[str]:
    """Markdown: E9's audit rows (accountant epsilon against the audited lower bound)."""
    e9 = results.get("E9")
    rows = e9.extra.get("audit_rows", []) if e9 is not None else []
    if not rows:
        return ["E9 was not run (or wrote no audit rows)."]
    lines = ["| arm | release | adversary | accountant epsilon (one round) | audited lower "
             "bound (95 %) | bound / accountant | runs per world |",
             "|---|---|---|---:|---:|---:|---:|"]
    for a in rows:
        acc, low = a["accountant_epsilon"], a["audited_epsilon_lower"]
        acc_f = float(acc) if not isinstance(acc, str) else float(acc.replace("inf", "inf"))
        ratio = f"{low / acc_f:.2f}" if np.isfinite(acc_f) and acc_f > 0 else ""
        lines.append(f"| {a['arm']} | {a['release']} | {a['adversary']} | {acc_f:.4g} | "
                     f"{low:.3g} | {ratio} | {a.get('trials_per_world')} |")
    return lines


def guard_table(results: dict[str, Result]) -> list[str]:
    """Markdown: E12's hijack shares and accuracies with and without the pilot guard."""
    e12 = results.get("E12")
    if e12 is None:
        return ["E12 was not run."]
    by = {(r.arm, r.setting, r.metric): r for r in e12.rows}
    scenarios = list(dict.fromkeys(r.setting for r in e12.rows))
    lines = ["| scenario | hijack, paper rule | hijack, guard | accuracy, paper rule | "
             "accuracy, guard | guard's accuracy cost | guard overrides the paper's pilot |",
             "|---|---:|---:|---:|---:|---:|---:|"]

    def cell(arm, sc, metric):
        r = by.get((arm, sc, metric))
        return "" if r is None else f"{r.mean:.3f}"

    for sc in scenarios:
        over = cell("guard", sc, "false_alarm") or cell("guard", sc, "overridden")
        lines.append(f"| {sc} | {cell('paper rule', sc, 'hijack')} | {cell('guard', sc, 'hijack')} "
                     f"| {cell('paper rule', sc, 'test_accuracy')} | "
                     f"{cell('guard', sc, 'test_accuracy')} | {cell('guard', sc, 'accuracy_cost')} "
                     f"| {over} |")
    return lines


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
        "Intervals are two-sided 95 % intervals over seeds, kept inside each metric's "
        "range: Student-t clipped to the range, Clopper-Pearson where every value sits at "
        "an end of it, none for a single value, \"all equal\" for identical values "
        "(`stats.mean_interval`); with 2-5 values they are wide.",
        "",
        "Reproduce: `python sims/privacy/run_all.py" + (" --quick" if mode == "quick" else "")
        + "`; one experiment: `fedf attack --experiment E7 --out DIR` (or "
        "`python -m fedf_jax.privacy.cli ...`).",
        "",
        "## Regimes, attackers and statistics",
        "",
        "Every verdict is given per **regime**: the set-up (whose local set is cut to n_k, "
        "the others keeping their shares; the local epochs E and batch B; the epoch t) and "
        "what the attacker is given. Attackers see what their role observes in the "
        "protocol and nothing else: the FEDF master the pilot's model, the ternaries, costs "
        "and sizes; a curious worker P^t; colluders their own messages (E7/E8 verdicts come "
        "from blind colluders, who do not know the honest workers' sizes or which of them "
        "is the victim; informed variants are upper bounds, labelled so). Attackers that "
        "simulate a worker's training (E1's optimisation attack, E3's learned inverter, "
        "E4's LiRA, E5's shadow workers) guess its local epochs and batch size from a "
        "stated prior (E in {1, 5}, B in {1, 8, 32}) and its learning rate from the public "
        "range; they are never given the victim's.",
        "",
        "Statistics: each regime has a family of cells fixed before the runs; each cell "
        "holds one value per seed (epochs are averaged within a seed, never pooled as "
        "independent values) of a leak statistic whose baseline is 0 (an attack's score "
        "minus its chance level or control). A cell refutes when its one-sided test (t-test; "
        "exact binomial bound for values at the ends of their range) is rejected after "
        "Holm's correction over the family (family-wise 0.05) and its mean reaches the "
        "experiment's margin; a regime is supported when every cell's 95 % upper bound is "
        "below the margin, inconclusive otherwise. Identical values give no interval (said "
        "so), and rates that are 0 in every seed keep a distribution-free bound, so a "
        "regime where nothing leaks in 5 seeds reads inconclusive, not supported. Medians "
        "are reported beside means where a cap (PSNR at 100 dB) makes means misleading.",
        "",
        "Sweeps: the victim's n_k in {1, 4, 16, all} (E4: 64 in place of all; E6: also 64, "
        "and every worker cut to "
        "n_k as a separate regime; E1: a tiny federation of 1-sample workers as a separate "
        "regime), local epochs {1, 5} and batch sizes {1, 8, 32} one knob at a time around "
        "the base recipe (E = 1, B = 8) at n_k = 1 and 16 (E2: every (E, B) pair at 16; E5 "
        "at 32). The cell of each row is its `setting`.",
        "",
        "CIFAR-10 (`--data cifar10 --data-dir DIR`, the official binary or python batches; "
        "model: the CNN): E2, E4 and E9 have been run end to end with `--quick` on a tiny "
        "CIFAR-10 folder in the binary format (`tests/test_privacy_cifar.py` runs E2 in the "
        "default test run); the others have not been checked on CIFAR-10. E1 runs its "
        "optimisation attack only there; E3 and E6 invert the MLP's dense first layer and "
        "stop with a one-line error on CIFAR-10. The figures below are on digits only.",
        "",
        "## Verdict per claim",
        "",
        *theorem_table(results),
        "",
        "## Accuracy cost of the defences and of the lies",
        "",
        *defence_costs(results),
        "",
        "## DP audit (E9)",
        "",
        *audit_table(results),
        "",
        "## Pilot guard (E12)",
        "",
        *guard_table(results),
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
