"""Accuracy of two-level FEDF (and FedAvg) after the same number of outer epochs.

    python sims/hierarchy/accuracy.py                    # N = 12, 48; G = 1, 2, 3, 4, 6
    python sims/hierarchy/accuracy.py --workers 12 --seeds 2 --no-fedavg

Digits, MLP, IID shards, every worker one local epoch of SGD (lr 0.2, batch 10);
G contiguous groups, ``group_epochs`` kappa = 1 (and one kappa = 2 row per N and
algorithm). Real ``simulation.run`` runs; mean ± std over seeds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from fedf_jax import config, simulation

WORKERS = (12, 48)
GROUPS = (1, 2, 3, 4, 6)
KAPPA2_GROUPS = 3  # the kappa = 2 row


def cells(workers=WORKERS, groups=GROUPS, algorithms=("fedf", "fedavg"),
          kappa2_groups: int | None = KAPPA2_GROUPS) -> list[tuple[str, int, int, int]]:
    """(algorithm, N, G, kappa) of every row."""
    out = [(a, n, g, 1) for a in algorithms for n in workers for g in groups]
    if kappa2_groups:
        out += [(a, n, kappa2_groups, 2) for a in algorithms for n in workers]
    return out


def run(epochs: int = 20, seeds: int = 5, log=print, **grid) -> list[dict]:
    """One dict per run: the cell, the seed and what its run log says."""
    rows = []
    todo = [(c, s) for c in cells(**grid) for s in range(seeds)]
    t_all = time.perf_counter()
    for i, ((alg, n, g, kappa), seed) in enumerate(todo, 1):
        cfg = config.make(workers=n, epochs=epochs, groups=g, group_epochs=kappa,
                          algorithm=alg, seed=seed)
        t0 = time.perf_counter()
        res = simulation.run(cfg)
        recs = res["records"]
        rows.append({
            "algorithm": alg, "workers": n, "groups": g, "kappa": kappa, "seed": seed,
            "epochs": epochs, "final_test_accuracy": res["final_test_accuracy"],
            "best_test_accuracy": max(r["test_accuracy"] for r in recs),
            "bytes_top": int(recs[0].get("bytes_top", recs[0]["bytes_total"])),
            "bytes_total": int(recs[0]["bytes_total"]),
            "modeled_s_median": statistics.median(r["modeled_s"] for r in recs),
            "run_s": time.perf_counter() - t0,
        })
        log(f"[{i}/{len(todo)}] {alg} N={n} G={g} kappa={kappa} seed={seed}: final accuracy "
            f"{res['final_test_accuracy']:.4f} ({time.perf_counter() - t_all:.0f} s so far)")
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Rows grouped by (algorithm, N, G, kappa): mean and std (sample, ddof 1) over seeds."""
    keys = list(dict.fromkeys((r["algorithm"], r["workers"], r["groups"], r["kappa"])
                              for r in rows))
    out = []
    for alg, n, g, kappa in keys:
        runs = [r for r in rows if (r["algorithm"], r["workers"], r["groups"], r["kappa"])
                == (alg, n, g, kappa)]
        acc = [r["final_test_accuracy"] for r in runs]
        out.append({"algorithm": alg, "workers": n, "groups": g, "kappa": kappa,
                    "seeds": len(runs), "epochs": runs[0]["epochs"],
                    "mean": statistics.mean(acc),
                    "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                    "bytes_top": runs[0]["bytes_top"], "bytes_total": runs[0]["bytes_total"],
                    "modeled_s": statistics.median(r["modeled_s_median"] for r in runs)})
    return out


def table(summary: list[dict]) -> str:
    """Markdown: one row per cell."""
    lines = ["| algorithm | N | G | kappa | final test accuracy (mean ± std) | seeds | "
             "top-link bytes / outer epoch | all bytes / outer epoch | modeled s / outer epoch |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in summary:
        name = {"fedf": "FEDF", "fedavg": "FedAvg"}[r["algorithm"]]
        lines.append(f"| {name} | {r['workers']} | {r['groups']} | {r['kappa']} | "
                     f"{r['mean']:.4f} ± {r['std']:.4f} | {r['seeds']} | {r['bytes_top']:,} | "
                     f"{r['bytes_total']:,} | {r['modeled_s'] * 1e3:.2f} ms |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, nargs="+", default=list(WORKERS))
    p.add_argument("--groups", type=int, nargs="+", default=list(GROUPS))
    p.add_argument("--epochs", type=int, default=20, help="outer epochs (default 20)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--no-fedavg", action="store_true", help="FEDF only")
    args = p.parse_args(argv)
    rows = run(args.epochs, args.seeds, workers=tuple(args.workers), groups=tuple(args.groups),
               algorithms=("fedf",) if args.no_fedavg else ("fedf", "fedavg"))
    print(table(summarize(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
