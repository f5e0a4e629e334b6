"""Runs the hierarchy experiments and writes RESULTS.md, results.json and two plots.

    python sims/hierarchy/run_all.py                 # about 3 min on 2 shared CPU cores
    python sims/hierarchy/run_all.py --quick         # a CI-size check, into quick/
    python sims/hierarchy/run_all.py --from-results  # rebuild the report from results.json

Parts (``sweep.py``, ``accuracy.py``; ``analytic.py`` holds the closed forms):

1. c, the timing model's per-worker compute, measured once on digits;
2. the sweep over G for N = 64 ... 10,000 under the timing model, with the analytic
   optimum G* beside the sweep's best;
3. run logs of real runs at N = 64 and 256 checked against the closed forms;
4. accuracy after the same number of outer epochs, N = 12 and 48 in 1-6 groups.

OUT (``--out``) defaults to this folder, or to its git-ignored ``quick/`` with
--quick, so that a check does not overwrite the committed results. Compiled
programs are cached in runs/hierarchy/xla-cache (git-ignored): runs that differ in
the seed only compile once (``--no-compile-cache`` turns it off and takes several
times longer).
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import accuracy  # noqa: E402
import analytic  # noqa: E402
import run_all_cli  # noqa: E402
import sweep  # noqa: E402

NAMES = {"fedf": "FEDF", "fedavg": "FedAvg"}
CACHE = HERE.parents[1] / "runs" / "hierarchy" / "xla-cache"


def output_dir(quick: bool, out: str | Path | None = None) -> Path:
    """Where RESULTS.md, results.json and the plots go: ``out``, else this folder, or
    its git-ignored ``quick/`` for a quick run."""
    return run_all_cli.output_dir(HERE, quick, out)


def paths(out: Path) -> dict[str, Path]:
    """Every file this script writes, under ``out``."""
    return {"results": out / "results.json", "report": out / "RESULTS.md",
            "sweep_png": out / "sweep.png", "accuracy_png": out / "accuracy.png"}


def get_config(quick: bool = False) -> dict:
    """The experiment's options (flax-style entry point)."""
    if quick:
        return {"sweep_workers": list(sweep.WORKERS), "compute_epochs": 3,
                "check_groups": {64: [1, 4]}, "check_epochs": 2,
                "accuracy": {"epochs": 3, "seeds": 1, "workers": [12], "groups": [1, 3],
                             "algorithms": ["fedf"], "kappa2_groups": 3}}
    return {"sweep_workers": list(sweep.WORKERS), "compute_epochs": 10,
            "check_groups": {64: [1, 2, 4, 8, 32], 256: [1, 4, 5, 16, 64]}, "check_epochs": 3,
            "accuracy": {"epochs": 20, "seeds": 5, "workers": list(accuracy.WORKERS),
                         "groups": list(accuracy.GROUPS), "algorithms": ["fedf", "fedavg"],
                         "kappa2_groups": accuracy.KAPPA2_GROUPS}}


def run(opts: dict, log=print) -> dict:
    """Every part; the numbers RESULTS.md is written from."""
    walls, t0 = {}, time.perf_counter()
    log("measuring the per-worker compute c ...")
    compute = sweep.measure_compute(epochs=opts["compute_epochs"])
    walls["compute"] = time.perf_counter() - t0
    m, c = compute["num_params"], compute["compute_s"]
    links = analytic.Links()
    alpha, beta = analytic.affine_bytes(m)
    same = analytic.Links(links.bandwidth, links.latency, links.bandwidth, links.latency)
    res = {
        "options": opts, "compute": compute, "links": links._asdict(),
        "alpha": alpha, "beta": beta, "num_params": m,
        "break_even_n": analytic.break_even_n(m, links),
        "break_even_n_integer": analytic.break_even_n_integer(m, c, links),
        "sweep": sweep.sweep(m, c, opts["sweep_workers"], links),
        "sweep_same_links": sweep.sweep(m, c, opts["sweep_workers"], same),
        "sweep_kappa2": sweep.sweep(m, c, opts["sweep_workers"], links, kappa=2),
    }
    log("checking run logs against the closed forms ...")
    t0 = time.perf_counter()
    groups = {int(k): v for k, v in opts["check_groups"].items()}
    res["check"] = sweep.check_run_logs(list(groups), opts["check_epochs"], groups=groups,
                                        log=log)
    walls["check"] = time.perf_counter() - t0
    log("accuracy runs ...")
    t0 = time.perf_counter()
    a = opts["accuracy"]
    res["accuracy_runs"] = accuracy.run(
        a["epochs"], a["seeds"], log=log, workers=a["workers"], groups=a["groups"],
        algorithms=a["algorithms"], kappa2_groups=a["kappa2_groups"])
    walls["accuracy"] = time.perf_counter() - t0
    res["walls"] = walls
    return res


# ---------------------------------------------------------------- figures


def plot_sweep(res: dict, path: Path) -> None:
    """Modeled epoch time and top-link bytes vs G, one line per N; G* marked."""
    fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(res["sweep"]):
        col = colors[i % len(colors)]
        g = r["g"]
        ax_t.plot(g, [1e3 * t for t in r["epoch_s"]], "o-", ms=3, color=col,
                  label=f"N = {r['workers']:,}")
        ax_t.plot([r["g_star"]], [1e3 * r["g_star_epoch_s"]], "*", ms=13, color=col,
                  markeredgecolor="k", markeredgewidth=0.6)
        ax_b.plot(g, r["top_bytes"], "o-", ms=3, color=col, label=f"N = {r['workers']:,}")
        ax_b.axvline(r["g_star"], color=col, ls=":", lw=1)
    ax_t.plot([], [], "*", ms=11, color="w", markeredgecolor="k", label="G* (relaxed)")
    for ax in (ax_t, ax_b):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("groups G (G = 1: flat FEDF)")
        ax.grid(True, which="both", lw=0.3)
    ax_t.set_ylabel("modeled outer-epoch time (ms)")
    ax_b.set_ylabel("bytes on the top link per outer epoch")
    ax_b.set_title("top link: b(G), or b(N) when flat; dotted: G*", fontsize=9)
    links = res["links"]
    ax_t.set_title(f"top link {links['bandwidth'] / 1e6:g} MB/s, groups "
                   f"{links['group_bandwidth'] / 1e6:g} MB/s; "
                   f"c = {1e3 * res['compute']['compute_s']:.2f} ms", fontsize=9)
    ax_t.legend(fontsize=7)
    run_all_cli.save_figure(fig, path)


def plot_accuracy(summary: list[dict], path: Path) -> None:
    """Final test accuracy (mean ± std over seeds) vs G, one panel per N."""
    workers = sorted({r["workers"] for r in summary})
    fig, axes = plt.subplots(1, len(workers), figsize=(5 * len(workers), 3.6), squeeze=False)
    for ax, n in zip(axes[0], workers, strict=True):
        for j, alg in enumerate(dict.fromkeys(r["algorithm"] for r in summary)):
            for kappa, marker in ((1, "o-"), (2, "s")):
                rows = [r for r in summary if (r["workers"], r["algorithm"], r["kappa"])
                        == (n, alg, kappa)]
                if not rows:
                    continue
                x = [r["groups"] + 0.08 * (j + 2 * (kappa - 1)) for r in rows]
                ax.errorbar(x, [r["mean"] for r in rows], [r["std"] for r in rows],
                            fmt=marker, ms=4, capsize=2,
                            label=f"{NAMES[alg]}, κ = {kappa}")
        ax.set_title(f"N = {n}, {summary[0]['epochs']} outer epochs", fontsize=9)
        ax.set_xlabel("groups G")
        ax.set_ylabel("final test accuracy")
        ax.grid(True, lw=0.3)
        ax.legend(fontsize=7)
    run_all_cli.save_figure(fig, path)


# ---------------------------------------------------------------- report


def _ms(s: float) -> str:
    return f"{1e3 * s:.2f}"


def _n(v: int) -> str:
    return f"{v:,}"


def sweep_verdicts(res: dict) -> list[str]:
    """Verdicts on the sweep, computed from its rows."""
    rows = res["sweep"]
    big = rows[-1]
    out = [
        f"The hierarchy cuts the modeled epoch time by {big['gain']:.1f}× at N = "
        f"{_n(big['workers'])} (flat {_ms(big['flat_epoch_s'])} ms, {big['g_best']} groups "
        f"{_ms(big['g_best_epoch_s'])} ms; G* = {big['g_star']:.2f}) and the top link's bytes "
        f"by {big['top_bytes_cut']:.0f}× ({_n(big['flat_top_bytes'])} to "
        f"{_n(big['g_best_top_bytes'])} B). Gains at N = "
        + ", ".join(_n(r["workers"]) for r in rows) + ": "
        + ", ".join(f"{r['gain']:.1f}×" for r in rows) + "."]
    agree = [r for r in rows if r["grid_best_brackets_g_star"]]
    miss = [r for r in rows if not r["grid_best_brackets_g_star"]]
    out.append(
        ("The sweep's best grid point is one of the two grid points around G* at every N"
         if not miss else
         f"The sweep's best grid point is next to G* at N = "
         f"{', '.join(_n(r['workers']) for r in agree) or 'none'} but not at N = "
         f"{', '.join(_n(r['workers']) for r in miss)}")
        + " (" + "; ".join(f"N = {_n(r['workers'])}: G* = {r['g_star']:.2f}, grid "
                           f"{r['grid_brackets_g_star'][0]}/{r['grid_brackets_g_star'][1]}, "
                           f"best {r['g_best_grid']}" for r in rows) + ").")
    exact = [r for r in rows if r["g_best"] in (math.floor(r["g_star"]), math.ceil(r["g_star"]))]
    worst = max(r["g_best_grid_epoch_s"] / r["g_best_epoch_s"] - 1 for r in rows)
    out.append(
        f"The exact integer optimum is floor or ceil of G* at {len(exact)} of {len(rows)} N "
        f"(the step n_g = ceil(N/G) can move it further); the grid's best is at most "
        f"{100 * worst:.2f} % slower than it, and the relaxed T(G*) is a lower bound "
        f"within {100 * max(r['g_best_epoch_s'] / r['g_star_epoch_s'] - 1 for r in rows):.2f}"
        " % of the integer optimum's time.")
    same = res["sweep_same_links"]
    share = [math.log(s["gain"]) / math.log(r["gain"]) if r["gain"] > 1 else math.nan
             for s, r in zip(same, rows, strict=True)]
    most = [r["workers"] for r, f in zip(rows, share, strict=True) if f > 0.5]
    out.append(
        "Where the gain comes from: with group links as slow as the top link (B_g = B, "
        "L_g = L) G* = sqrt(κN) and the gain at N = "
        + ", ".join(f"{_n(r['workers'])} is {r['gain']:.1f}× (G = {r['g_best']})" for r in same)
        + ". Splitting one link into parallel ones is thus "
        + ", ".join(f"{100 * f:.0f} %" for f in share)
        + " of the gain (in log terms, ln(gain with B_g = B) / ln(gain)), the faster local "
        "links the rest: "
        + ("the larger part at every N" if len(most) == len(rows) else
           "the larger part at N = " + ", ".join(_n(n) for n in most) if most else
           "the smaller part at every N") + ".")
    k2 = res["sweep_kappa2"]
    out.append(
        "With κ = 2 inner epochs per outer epoch, G* = sqrt(2N B/B_g) grows by √2: "
        + ", ".join(f"{r['g_star']:.1f} (integer {r['g_best']})" for r in k2)
        + " for the same N (its outer epoch holds two inner epochs, so its times are not "
        "compared with a flat epoch here).")
    out.append(
        f"The hierarchy pays for N above {res['break_even_n']:.2f} in the relaxed model "
        f"(closed form below); with integer groups, the smallest N at which some G ≥ 2 beats "
        f"flat is {res['break_even_n_integer']}.")
    return out


def check_table(rows: list[dict]) -> list[str]:
    lines = ["| N | G | top bytes (run log) | closed form | link s (run log, median) | "
             "closed form | max abs diff | compute share (ms) | modeled_s (ms) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['workers']} | {r['g']} | {_n(r['top_bytes_run_log'])} | "
                     f"{_n(r['top_bytes_closed_form'])} | {r['link_s_run_log']:.6f} | "
                     f"{r['link_s_closed_form']:.6f} | {r['link_s_max_abs_diff']:.1e} | "
                     f"{_ms(r['compute_share_s_median'])} | {_ms(r['modeled_s_median'])} |")
    return lines


def check_verdicts(res: dict) -> list[str]:
    rows = res["check"]
    if not rows:
        return ["No run-log check was run."]
    equal = all(r["top_bytes_run_log"] == r["top_bytes_closed_form"] for r in rows)
    diff = max(r["link_s_max_abs_diff"] for r in rows)
    out = [("Every" if equal else "Not every") + f" run log's top-link bytes equal the closed "
           f"form ({len(rows)} runs), and the link seconds of `modeled_s` agree with it to "
           f"{diff:.1e} s."]
    for n in dict.fromkeys(r["workers"] for r in rows):
        mine = [r for r in rows if r["workers"] == n]
        by_log = min(mine, key=lambda r: r["modeled_s_median"])["g"]
        by_form = min(mine, key=lambda r: r["link_s_closed_form"])["g"]
        flat = next((r for r in mine if r["g"] == 1), None)
        best = min(mine, key=lambda r: r["modeled_s_median"])
        ratio = ""
        if flat and best["g"] != 1:
            ratio = (f"; flat's median modeled_s is "
                     f"{flat['modeled_s_median'] / best['modeled_s_median']:.1f}× that of "
                     f"G = {best['g']}")
        same = ("the same" if by_log == by_form else
                "they differ: the measured compute share varies from run to run")
        out.append(f"N = {n}: among the G values run, the run logs' median `modeled_s` is "
                   f"lowest at G = {by_log} and the closed form's link time at G = {by_form} "
                   f"({same}){ratio}.")
    return out


def accuracy_verdicts(summary: list[dict]) -> list[str]:
    """Grouped vs flat and kappa = 2 vs 1, with the seed spread as the yardstick."""
    out = []

    def se(a, b):
        return math.sqrt(a["std"] ** 2 / a["seeds"] + b["std"] ** 2 / b["seeds"])

    for alg in dict.fromkeys(r["algorithm"] for r in summary):
        for n in dict.fromkeys(r["workers"] for r in summary):
            mine = [r for r in summary if (r["algorithm"], r["workers"]) == (alg, n)]
            flat = next((r for r in mine if r["groups"] == 1 and r["kappa"] == 1), None)
            grouped = [r for r in mine if r["groups"] > 1 and r["kappa"] == 1]
            if flat is None or not grouped:
                continue
            worst = min(grouped, key=lambda r: r["mean"])
            d = [r["mean"] - flat["mean"] for r in grouped]
            beyond = [r for r in grouped
                      if abs(r["mean"] - flat["mean"]) > 2 * se(r, flat) and se(r, flat) > 0]
            text = f"{NAMES[alg]}, N = {n}: flat {flat['mean']:.4f}; "
            largest = max(abs(x) for x in d)
            if largest <= 1e-6:
                text += ("every G gives the flat run's final accuracy (largest difference "
                         f"{largest:.1e}): with κ = 1 the S_g-weighted mean of the groups' "
                         "S_k-weighted means is the flat S_k-weighted mean.")
            else:
                text += (f"grouped minus flat {min(d):+.4f} to {max(d):+.4f} (lowest at "
                         f"G = {worst['groups']}); ")
                if flat["seeds"] < 2:
                    text += "one seed: no spread to compare with."
                elif beyond:
                    text += ("beyond two standard errors of the difference at G = "
                             + ", ".join(str(r["groups"]) for r in beyond) + ".")
                else:
                    text += "every difference is within two standard errors (seed spread)."
            for r in (r for r in mine if r["kappa"] == 2):
                k1 = next((x for x in mine if x["groups"] == r["groups"] and x["kappa"] == 1),
                          None)
                if k1:
                    diff, two_se = r["mean"] - k1["mean"], 2 * se(r, k1)
                    text += (f" κ = 2 at G = {r['groups']}: {r['mean']:.4f} vs κ = 1 "
                             f"{k1['mean']:.4f} ({diff:+.4f}; two standard errors "
                             f"{two_se:.4f}, so "
                             + ("beyond" if two_se and abs(diff) > two_se else "within")
                             + " the seed spread).")
            out.append(text)
    return out


def markdown(res: dict, mode: str, argv: list[str]) -> str:
    c = res["compute"]
    links = analytic.Links(**res["links"])
    summary = accuracy.summarize(res["accuracy_runs"])
    a = res["options"]["accuracy"]
    rows = res["sweep"]
    ns = [r["workers"] for r in rows]
    all_g = sorted({g for r in rows for g in r["g"]})
    t_lines = ["| G | " + " | ".join(f"N = {_n(n)}" for n in ns) + " |",
               "|---:|" + "---:|" * len(ns)]
    b_lines = list(t_lines)
    for g in all_g:
        t_cells, b_cells = [], []
        for r in rows:
            if g in r["g"]:
                i = r["g"].index(g)
                mark = "**" if g == r["g_best_grid"] else ""
                t_cells.append(f"{mark}{_ms(r['epoch_s'][i])}{mark}")
                b_cells.append(_n(r["top_bytes"][i]))
            else:
                t_cells.append("")
                b_cells.append("")
        t_lines.append(f"| {g} | " + " | ".join(t_cells) + " |")
        b_lines.append(f"| {g} | " + " | ".join(b_cells) + " |")
    cmd = "python sims/hierarchy/run_all.py" + (" " + " ".join(argv) if argv else "")
    lines = [
        "# Where the hierarchy pays: two-level FEDF under the timing model", "",
        f"Written by `{cmd}` ({mode}) on "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()} "
        f"({os.cpu_count()} CPUs visible, shared), jax {res.get('jax', '?')}. Parts took "
        + ", ".join(f"{k} {v:.0f} s" for k, v in res["walls"].items())
        + ". Scripts: `sweep.py` (the sweep and the run-log check), `accuracy.py` (the "
        "accuracy runs), `analytic.py` (the closed forms); each runs alone.", "",
        "## The model", "",
        "One outer epoch of N workers in G groups with κ inner epochs is charged (the run "
        "log's `modeled_s`, `fedf_jax/algorithms/hierarchy.py`)", "",
        "    T(G) = κ (c + b(n_g)/B_g + R L_g) + b(G)/B + R L,    n_g = ceil(N/G)", "",
        "and flat FEDF (G = 1) `T(1) = c + b(N)/B + R L`. b(n) is `codec.epoch_bytes(M, n)` "
        f"(frames included), exactly affine here: b(n) = α n + β with α = {_n(res['alpha'])} B "
        f"and β = {_n(res['beta'])} B for the digits MLP (M = {_n(res['num_params'])}; Eq. 8 "
        "is V(n+1) + V(n−1)/16, V = 4M). Links: top B = "
        f"{links.bandwidth:g} B/s, L = {links.latency:g} s; groups B_g = "
        f"{links.group_bandwidth:g} B/s, L_g = {links.group_latency:g} s; R = {links.rounds} "
        "message rounds. Groups run in parallel, so the busiest group (ceil(N/G) workers) "
        "bounds the group level.", "",
        f"c = {_ms(c['compute_s'])} ms is measured: a flat FEDF run of {c['workers']} digits "
        f"workers ({c['shard_sizes'][0]}-{c['shard_sizes'][1]} samples each, one local epoch "
        f"of SGD plus the cost pass, {c['epochs']} epochs); c is the median over epochs of "
        "the run log's `modeled_s` minus its link terms, i.e. `wall_s` (median "
        f"{_ms(c['epoch_wall_median_s'])} ms for all {c['workers']} workers vmapped on this "
        "box) times the slowest worker's share of the work. In the sweep every worker holds "
        "such a shard at every N; c does not move with G, so it changes the gains, not the "
        "optimum.", "",
        "## The analytic optimum", "",
        "With n_g = N/G relaxed to a real number, T(G) = const + α G/B + κ α N/(G B_g), so", "",
        "    dT/dG = α/B − κ α N/(B_g G²) = 0   ⇒   G* = sqrt(κ N B / B_g)", "",
        f"a minimum (d²T/dG² = 2κ α N/(B_g G³) > 0). α cancels: G* depends on neither M, c, "
        f"the latencies nor β. With the default links (B/B_g = "
        f"{links.bandwidth / links.group_bandwidth:g}), G* = sqrt(κN/"
        f"{links.group_bandwidth / links.bandwidth:g}). At G*, each level's α-term is the "
        "same, sqrt(κ α² N/(B B_g)): the top link and the busiest group take equally long. "
        "The integer optimum needs a short numeric search because ceil(N/G) is a step "
        "function: `analytic.best_g` searches only the G whose relaxed time is below the "
        "best neighbour of G* (a quadratic inequality in G bounds that window); "
        "`tests/test_hierarchy_sims.py` checks it against a brute-force argmin over all G.", "",
        "The hierarchy beats flat FEDF (κ = 1) when T(1) − T(G*) = α N/B − 2α sqrt(N/(B B_g)) "
        "− (β/B_g + R L_g) > 0: a quadratic in sqrt(N), whose root gives N > "
        f"{res['break_even_n']:.2f}; with integer G ≥ 2 the smallest such N is "
        f"{res['break_even_n_integer']}.", "",
        "## Sweep", "",
        sweep.table(rows), "",
        *[f"- {v}" for v in sweep_verdicts(res)], "",
        "![modeled epoch time and top-link bytes vs G](sweep.png)", "",
        "Modeled outer-epoch time (ms) per G (bold: the grid's best):", "",
        *t_lines, "",
        "Bytes on the top link per outer epoch (b(G); G = 1: b(N), flat):", "",
        *b_lines, "",
        "## The run logs agree with the closed forms", "",
        f"Real `simulation.run` runs on digits (N workers share its 1,437 training images), "
        f"{res['options']['check_epochs']} outer epochs each, seed 0. Link seconds = "
        "`modeled_s` − `wall_s` × the slowest worker's share of the work.", "",
        *check_table(res["check"]), "",
        *[f"- {v}" for v in check_verdicts(res)], "",
        "## Accuracy after the same number of outer epochs", "",
        f"Digits, MLP, IID shards, {a['epochs']} outer epochs, seeds 0..{a['seeds'] - 1}, "
        "lr 0.2, batch 10, one local epoch; G contiguous groups of the N workers. Mean ± std "
        "(sample std over seeds). With κ = 2 each group runs two inner epochs per outer "
        "epoch (twice the worker compute). Top-link and total bytes are per outer epoch; "
        "modeled s is the run logs' median.", "",
        accuracy.table(summary), "",
        *[f"- {v}" for v in accuracy_verdicts(summary)], "",
        "![final accuracy vs G](accuracy.png)", "",
    ]
    return "\n".join(lines) + "\n"


def draw(res: dict, p: dict[str, Path]) -> None:
    """The sweep and accuracy plots of ``res`` to their paths in ``p``."""
    plot_sweep(res, p["sweep_png"])
    plot_accuracy(accuracy.summarize(res["accuracy_runs"]), p["accuracy_png"])


def main(argv: list[str] | None = None) -> int:
    return run_all_cli.main(argv, doc=__doc__, here=HERE, cache=CACHE, paths=paths,
                            get_config=get_config, run=run, draw=draw, markdown=markdown,
                            indent=1)


if __name__ == "__main__":
    sys.exit(main())
