"""ADMM linear SVM (consensus, samples split): synchronous against partial-barrier
asynchronous ADMM (wait for A of the senders, delay at most tau) with one slow sender.

    python sims/async/svm_race.py                  # both data sets, both regimes, 2 seeds
    python sims/async/svm_race.py --data breast-cancer --regime compute-bound --seeds 1

The optimum of a data set and seed is the objective of a synchronous flat run with
``tol`` 1e-6 (it stops on its residuals). The budget of a (data, regime, layout,
seed) is the virtual clock of the synchronous run (``--schedule async --staleness
0``) after ITERATIONS iterations; the asynchronous runs are run until their clock
passes it. Measured runs use ``tol`` 1e-7 so that none stops on its residuals
before the budget.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import budget  # noqa: E402

from fedf_jax import config, simulation  # noqa: E402

DATA_SETS = ("breast-cancer", "digits-oddeven")
ITERATIONS = {"breast-cancer": 400, "digits-oddeven": 600}  # synchronous ones in the budget
LAYOUTS = {
    "flat": {"workers": 6, "speeds": "1,1,1,1,1,4"},
    "groups": {"workers": 6, "groups": 3, "speeds": "1,1,4"},
}
# unit_seconds: None is the library's default (2M/1e9 s per row of work, M = the
# model's size); 1e-4 s per row makes each worker's x-update several times its link time
REGIMES = {"link-bound": None, "compute-bound": 1e-4}
GAP = 1e-3  # the relative objective gap to reach
OPT_TOL, RUN_TOL = 1e-6, 1e-7
OPT_EPOCHS = 5000


def variants(layout: str, regime: str) -> list[dict]:
    """The runs of a layout: the synchronous one first, then (A, tau, prox) ones."""
    full = layout == "flat"
    if full:
        grid = [(5, 1, None), (5, 4, None), (3, 4, None), (5, 4, 0.0), (3, 4, 0.0)]
        if regime == "link-bound":
            grid = [(5, 1, None), (3, 4, None), (5, 4, 0.0)]
    else:
        grid = [(2, 1, None), (2, 4, None), (2, 4, 0.0)]
        if regime == "link-bound":
            grid = [(2, 1, None)]
    out = [{"name": "sync", "opts": {"staleness": 0}}]
    for a, tau, prox in grid:
        name = f"A={a} τ={tau}" + ("" if prox is None else f" prox={prox:g}")
        out.append({"name": name, "opts": {"buffer": a, "staleness": tau, "prox": prox}})
    return out


def optimum(data: str, seed: int) -> dict:
    """The synchronous flat run with tol 1e-6: its last objective and iterations."""
    res = simulation.run(config.make(algorithm="admm-svm", data=data, workers=6,
                                     epochs=OPT_EPOCHS, tol=OPT_TOL, seed=seed), out_dir=None)
    recs = res["records"]
    return {"objective": float(recs[-1]["objective"]), "iterations": len(recs),
            "converged": bool(recs[-1].get("converged", False))}


def options(data: str, layout: str, regime: str, variant: dict, seed: int) -> dict:
    opts = {"algorithm": "admm-svm", "data": data, **LAYOUTS[layout], "schedule": "async",
            "tol": RUN_TOL, "seed": seed, **variant["opts"]}
    if REGIMES[regime] is not None:
        opts["unit_seconds"] = REGIMES[regime]
    return {k: v for k, v in opts.items() if v is not None}


def senders(layout: str) -> int:
    lay = LAYOUTS[layout]
    return lay["groups"] if lay.get("groups", 1) > 1 else lay["workers"]


def run(data_sets=DATA_SETS, regimes=tuple(REGIMES), layouts=tuple(LAYOUTS), seeds: int = 2,
        iterations: dict | None = None, only: tuple[str, ...] | None = None,
        log=print) -> dict:
    """The optima and one dict per run (kept records with ``gap``); ``only``: the
    variants to run besides the synchronous one (None: all)."""
    iterations = iterations or ITERATIONS
    optima, rows = {}, []
    t_all = time.perf_counter()
    for data in data_sets:
        for seed in range(seeds):
            opt = optimum(data, seed)
            optima[f"{data}/{seed}"] = opt
            log(f"{data} seed {seed}: optimum {opt['objective']:.6f} after "
                f"{opt['iterations']} iterations")
            for regime in regimes:
                for layout in layouts:
                    vs = [v for v in variants(layout, regime)
                          if only is None or v["name"] in ("sync", *only)]
                    first = budget.run_to(options(data, layout, regime, vs[0], seed), math.inf,
                                          iterations[data], probe=1.0)
                    budget_s = first["records"][-1]["clock_s"]
                    for v in vs:
                        o = options(data, layout, regime, v, seed)
                        res = first if v is vs[0] else budget.run_to(
                            o, budget_s, budget.guess_updates(o, iterations[data]))
                        res["records"] = budget.relative_gap(res["records"], opt["objective"])
                        rows.append({"data": data, "regime": regime, "layout": layout,
                                     "variant": v["name"], "opts": v["opts"], "seed": seed,
                                     "budget_s": budget_s, "optimum": opt["objective"], **res})
                        last = res["records"][-1]
                        log(f"{data} {regime} {layout} seed {seed} {v['name']}: "
                            f"{len(res['records'])} updates, gap {last['gap']:.2e} at "
                            f"{last['clock_s']:.4f} s ({time.perf_counter() - t_all:.0f} s "
                            "so far)")
    return {"optima": optima, "runs": rows}


def summarize(result: dict) -> list[dict]:
    """Per (data, regime, layout, variant): time to the gap, speed-up against the
    synchronous run (seed-paired), the gap at the budget, the clock evidence."""
    rows = result["runs"]
    out = []
    cells = dict.fromkeys((r["data"], r["regime"], r["layout"]) for r in rows)
    for cell in cells:
        mine = [r for r in rows if (r["data"], r["regime"], r["layout"]) == cell]
        by = {}
        for r in mine:
            by.setdefault(r["variant"], []).append(r)
        sync = sorted(by["sync"], key=lambda r: r["seed"])
        sync_t = [budget.time_to(r["records"], "gap", GAP, below=True) for r in sync]
        sync_stay = [budget.time_to_stay(r["records"], "gap", GAP, below=True) for r in sync]
        for name, runs in by.items():
            runs.sort(key=lambda r: r["seed"])
            t = [budget.time_to(r["records"], "gap", GAP, below=True) for r in runs]
            stay = [budget.time_to_stay(r["records"], "gap", GAP, below=True) for r in runs]
            ev = [budget.evidence(r["records"], senders(cell[2])) for r in runs]
            out.append({
                "data": cell[0], "regime": cell[1], "layout": cell[2], "variant": name,
                "opts": runs[0]["opts"], "seeds": len(runs),
                "budget_s": budget.summary([r["budget_s"] for r in runs]),
                "time_to": {"per_seed": t, **budget.summary(t)},
                "speedup": budget.speedup(sync_t, t), "verdict": budget.verdict(sync_t, t),
                "time_to_stay": {"per_seed": stay, **budget.summary(stay)},
                "speedup_stay": budget.speedup(sync_stay, stay),
                "gap_at_budget": budget.summary([budget.at_budget(r["records"], "gap")
                                                 for r in runs]),
                "min_gap": min(min(x["gap"] for x in r["records"]) for r in runs),
                "updates": budget.summary([e["updates"] for e in ev]),
                "updates_to_gap": budget.summary([
                    next((i + 1 for i, x in enumerate(r["records"]) if x["gap"] <= GAP),
                         math.nan) for r in runs]),
                "staleness_mean": budget.summary([e["staleness_mean"] for e in ev]),
                "staleness_max": max(e["staleness_max"] for e in ev),
                "seconds_per_update": budget.summary([e["seconds_per_update"] for e in ev]),
            })
    return out


def table(summary: list[dict], regime: str) -> str:
    rows = [r for r in summary if r["regime"] == regime]
    head = ["data", "layout", "run", "budget (s)", "updates in budget",
            "s per update (ms)", "staleness mean (max)", f"updates to gap {GAP:g}",
            f"time to gap {GAP:g} (s)", "speed-up", f"stays ≤ {GAP:g} from (s)", "speed-up",
            "gap at budget"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        sync = r["variant"] == "sync"
        lines.append("| " + " | ".join([
            r["data"], r["layout"], r["variant"], budget.fmt(r["budget_s"], ".3f"),
            budget.fmt(r["updates"], ".0f"), budget.fmt(r["seconds_per_update"], ".2f", 1e3),
            f"{budget.fmt(r['staleness_mean'], '.2f')} ({r['staleness_max']})",
            budget.fmt(r["updates_to_gap"], ".0f"), budget.fmt(r["time_to"], ".3f"),
            "1 (base)" if sync else budget.speed_text(r["speedup"]),
            budget.fmt(r["time_to_stay"], ".3f"),
            "1 (base)" if sync else budget.speed_text(r["speedup_stay"]),
            budget.fmt(r["gap_at_budget"], ".1e")]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", default=list(DATA_SETS), choices=list(DATA_SETS))
    p.add_argument("--regime", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    p.add_argument("--seeds", type=int, default=2)
    args = p.parse_args(argv)
    summary = summarize(run(tuple(args.data), tuple(args.regime), seeds=args.seeds))
    for regime in args.regime:
        print(f"\n{regime}\n" + table(summary, regime))
    return 0


if __name__ == "__main__":
    sys.exit(main())
