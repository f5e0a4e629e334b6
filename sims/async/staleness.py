"""The accuracy cost of staleness: final accuracy against the bound S, one group four
times slower, FedAsync (FedAvg, buffer 1) and asynchronous FEDF (buffer 1).

    python sims/async/staleness.py                   # S = 0, 1, 2, 4, 8, unbounded; 3 seeds
    python sims/async/staleness.py --bounds 0 4 --seeds 1

Under the ``wait`` policy a bound S holds the fast groups back whenever the slow one
would fall more than S updates behind, so S = 0 is the synchronous run and a larger
S lets the fast groups make more updates in the same time. Every run gets the same
virtual time (the clock of synchronous FedAvg after ``sync_epochs`` epochs, per seed);
each is also read after as many updates as its algorithm's S = 0 run makes in that
time (a fixed number of updates).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import budget  # noqa: E402

SETTING = {"data": "digits", "workers": 12, "groups": 3, "speeds": "1,1,4"}
BOUNDS = (0, 1, 2, 4, 8, None)  # None: unbounded
ALGORITHMS = {"FedAsync (FedAvg)": "fedavg", "async FEDF": "fedf"}
SENDERS = 3
SYNC_EPOCHS = 20  # the budget: synchronous FedAvg's clock after this many epochs


def options(algorithm: str, bound: int | None, seed: int) -> dict:
    opts = {**SETTING, "schedule": "async", "algorithm": algorithm, "buffer": 1, "seed": seed,
            "stale_policy": "wait", "staleness_fn": "constant"}
    if bound is not None:
        opts["staleness"] = bound
    return opts


def label(bound: int | None) -> str:
    return "∞" if bound is None else str(bound)


def run(bounds=BOUNDS, seeds: int = 3, sync_epochs: int = SYNC_EPOCHS,
        algorithms: tuple[str, ...] = tuple(ALGORITHMS), log=print) -> list[dict]:
    """One dict per (algorithm, S, seed)."""
    rows = []
    t_all = time.perf_counter()
    bounds = [0, *[b for b in bounds if b != 0]]  # S = 0 first: it sets the budget
    for seed in range(seeds):
        first = budget.run_to(options("fedavg", 0, seed), math.inf, sync_epochs, probe=1.0)
        budget_s = first["records"][-1]["clock_s"]
        for name in algorithms:
            alg = ALGORITHMS[name]
            for bound in bounds:
                o = options(alg, bound, seed)
                if alg == "fedavg" and bound == 0:
                    res = first
                else:
                    res = budget.run_to(o, budget_s, budget.guess_updates(o, sync_epochs),
                                        probe=1.0 if bound == 0 else budget.PROBE)
                rows.append({"algorithm": name, "bound": bound, "seed": seed,
                             "budget_s": budget_s, **res})
                log(f"{name} S={label(bound)} seed {seed}: {len(res['records'])} updates, "
                    f"accuracy {res['records'][-1]['test_accuracy']:.4f} "
                    f"({time.perf_counter() - t_all:.0f} s so far)")
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per (algorithm, S): accuracy at the budget and after the S = 0 run's number of
    updates, mean applied staleness, updates in the budget."""
    out = []
    for name in dict.fromkeys(r["algorithm"] for r in rows):
        mine = [r for r in rows if r["algorithm"] == name]
        zero = {r["seed"]: len(r["records"]) for r in mine if r["bound"] == 0}
        for bound in dict.fromkeys(r["bound"] for r in mine):
            runs = sorted((r for r in mine if r["bound"] == bound), key=lambda r: r["seed"])
            fixed = [r["records"][zero[r["seed"]] - 1]["test_accuracy"]
                     if r["seed"] in zero and len(r["records"]) >= zero[r["seed"]]
                     else math.nan for r in runs]
            ev = [budget.evidence(r["records"], SENDERS) for r in runs]
            final = [budget.at_budget(r["records"], "test_accuracy") for r in runs]
            out.append({
                "algorithm": name, "bound": bound, "seeds": len(runs),
                "final": {"per_seed": final, **budget.summary(final)},
                "fixed_updates": {"per_seed": fixed, **budget.summary(fixed)},
                "fixed_count": sorted(set(zero.values())),
                "updates": budget.summary([e["updates"] for e in ev]),
                "staleness_mean": budget.summary([e["staleness_mean"] for e in ev]),
                "staleness_max": max(e["staleness_max"] for e in ev),
                "slowest_staleness": budget.summary([e["slowest_staleness_mean"] for e in ev]),
                "diverged": sum(r["diverged"] for r in runs),
            })
    return out


def table(summary: list[dict]) -> str:
    head = ["algorithm", "S", "updates in budget", "staleness mean (max)",
            "slow group's mean staleness", "accuracy at budget",
            "accuracy after the S = 0 run's updates", "loss blow-ups"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary:
        lines.append("| " + " | ".join([
            r["algorithm"], label(r["bound"]), budget.fmt(r["updates"], ".0f"),
            f"{budget.fmt(r['staleness_mean'], '.2f')} ({r['staleness_max']})",
            budget.fmt(r["slowest_staleness"], ".1f"), budget.fmt(r["final"]),
            budget.fmt(r["fixed_updates"]) + f" [{','.join(map(str, r['fixed_count']))}]",
            f"{r['diverged']} of {r['seeds']}"]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bounds", type=int, nargs="+", default=[b for b in BOUNDS if b is not None])
    p.add_argument("--unbounded", action="store_true", help="add an unbounded run")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--sync-epochs", type=int, default=SYNC_EPOCHS)
    args = p.parse_args(argv)
    bounds = (*args.bounds, *((None,) if args.unbounded else ()))
    print(table(summarize(run(bounds, args.seeds, args.sync_epochs))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
