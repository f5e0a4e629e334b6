"""Where the hierarchy pays: modeled epoch time and top-link bytes against G, per N.

    python sims/hierarchy/sweep.py                       # N = 64 ... 10,000; prints tables
    python sims/hierarchy/sweep.py --workers 1000 4000 --check-epochs 0

Three parts, each a function that ``run_all.py`` calls:

- :func:`measure_compute`: the per-worker compute c of the timing model, measured once:
  a flat FEDF run of 12 digits workers (about 120 samples each, one local epoch plus
  the cost pass); c is the run log's ``modeled_s`` minus its link terms (that is,
  ``wall_s`` times the slowest worker's share of the work), the median over epochs.
- :func:`sweep`: for each N and each G of ``analytic.grid(N)``, T(G) and the top
  link's bytes from the closed forms of ``analytic.py`` (every worker holding such a
  shard), with the relaxed optimum G* and the exact integer optimum beside the
  grid's best.
- :func:`check_run_logs`: real ``simulation.run`` runs at small N (digits split N
  ways) whose run logs must give the same top-link bytes and link seconds as the
  closed forms, and whose own ``modeled_s`` picks its best G.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import analytic  # noqa: E402

from fedf_jax import config, harness, simulation, timing  # noqa: E402

WORKERS = (64, 256, 1000, 4000, 10_000)
CHECK_WORKERS = (64, 256)


def links_s(rec: dict, cfg) -> float:
    """The link part of a flat record's ``modeled_s``: its bytes over the master's link
    and the rounds' latency."""
    return rec["bytes_total"] / cfg.run.bandwidth + timing.ROUNDS * cfg.run.latency


def measure_compute(workers: int = 12, epochs: int = 10, seed: int = 0) -> dict:
    """c: the slowest worker's compute in a flat digits run, from its run log."""
    cfg = config.make(workers=workers, epochs=epochs, seed=seed)
    res = simulation.run(cfg)
    recs = res["records"]
    per = [r["modeled_s"] - links_s(r, cfg) for r in recs]
    sizes = [len(p) for p in harness.load(cfg).parts]
    return {"compute_s": statistics.median(per), "workers": workers, "epochs": epochs,
            "shard_sizes": [min(sizes), max(sizes)], "num_params": res["num_params"],
            "epoch_wall_median_s": statistics.median(r["wall_s"] for r in recs)}


def sweep(m: int, compute_s: float, workers=WORKERS, links: analytic.Links = analytic.DEFAULT,
          kappa: int = 1) -> list[dict]:
    """One row per N: the grid's T(G) and top bytes, G*, the integer optimum, gains."""
    rows = []
    for n in workers:
        gs = analytic.grid(n)
        t = [analytic.epoch_s(n, g, m, compute_s, links, kappa) for g in gs]
        top = [analytic.top_bytes(m, n, g) for g in gs]
        flat = analytic.epoch_s(n, 1, m, compute_s, links)
        best_grid = gs[t.index(min(t))]
        star = analytic.g_star(n, links, kappa)
        best = analytic.best_g(n, m, compute_s, links, kappa)
        below = max(g for g in gs if g <= star)
        above = min(g for g in gs if g >= star)
        rows.append({
            "workers": n, "kappa": kappa, "g": gs, "epoch_s": t, "top_bytes": top,
            "group_size": [analytic.group_size(n, g) for g in gs],
            "flat_epoch_s": flat, "flat_top_bytes": analytic.top_bytes(m, n, 1),
            "g_star": star,
            "g_star_epoch_s": analytic.relaxed_epoch_s(n, star, m, compute_s, links, kappa),
            "g_best": best, "g_best_epoch_s": analytic.epoch_s(n, best, m, compute_s, links,
                                                               kappa),
            "g_best_top_bytes": analytic.top_bytes(m, n, best),
            "g_best_grid": best_grid, "g_best_grid_epoch_s": min(t),
            "grid_brackets_g_star": [below, above],
            "grid_best_brackets_g_star": best_grid in (below, above),
            "gain": flat / analytic.epoch_s(n, best, m, compute_s, links, kappa),
            "top_bytes_cut": analytic.top_bytes(m, n, 1) / analytic.top_bytes(m, n, best),
        })
    return rows


def check_run_logs(workers=CHECK_WORKERS, epochs: int = 3, seed: int = 0,
                   groups: dict[int, list[int]] | None = None, log=print) -> list[dict]:
    """Runs digits with N workers in each G of the grid (or ``groups[N]``) and compares
    the run log with the closed forms: the top link's bytes exactly, and the link
    seconds (``modeled_s`` minus the compute share) to float rounding."""
    rows = []
    for n in workers:
        for g in (groups or {}).get(n, analytic.grid(n)):
            cfg = config.make(workers=n, epochs=epochs, groups=g, seed=seed)
            t0 = time.perf_counter()
            res = simulation.run(cfg)
            recs = res["records"]
            sizes = [len(p) for p in harness.load(cfg).parts]
            work = timing.work_units(sizes, [s.local_epochs for s in cfg.specs])
            share = float(work.max() / work.sum())
            m = res["num_params"]
            link = [r["modeled_s"] - r["wall_s"] * share for r in recs]
            want = analytic.epoch_s(n, g, m, 0.0, analytic.Links.of(cfg))
            top = recs[0]["bytes_top"] if g > 1 else recs[0]["bytes_total"]
            rows.append({
                "workers": n, "g": g, "epochs": epochs, "top_bytes_run_log": int(top),
                "top_bytes_closed_form": analytic.top_bytes(m, n, g),
                "link_s_run_log": statistics.median(link), "link_s_closed_form": want,
                "link_s_max_abs_diff": max(abs(v - want) for v in link),
                "modeled_s_median": statistics.median(r["modeled_s"] for r in recs),
                "wall_s_median": statistics.median(r["wall_s"] for r in recs),
                "compute_share_s_median": statistics.median(r["wall_s"] * share for r in recs),
                "final_test_accuracy": res["final_test_accuracy"],
                "run_s": time.perf_counter() - t0,
            })
            log(f"  run log N={n:>5} G={g:>4}: top bytes {int(top):>11,} "
                f"(closed form {analytic.top_bytes(m, n, g):,}), link s "
                f"{statistics.median(link):.6f} (closed form {want:.6f}), "
                f"{rows[-1]['run_s']:.1f} s")
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: per N, flat vs the best G, G*, the grid's best and the gains."""
    lines = ["| N | G* = sqrt(κNB/B_g) | best integer G | grid's best G | T flat (ms) | "
             "T at best G (ms) | gain | top bytes flat | top bytes at best G | cut |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['workers']:,} | {r['g_star']:.2f} | {r['g_best']} | {r['g_best_grid']} | "
            f"{1e3 * r['flat_epoch_s']:.2f} | {1e3 * r['g_best_epoch_s']:.2f} | "
            f"{r['gain']:.1f}× | {r['flat_top_bytes']:,} | {r['g_best_top_bytes']:,} | "
            f"{r['top_bytes_cut']:.0f}× |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, nargs="+", default=list(WORKERS))
    p.add_argument("--kappa", type=int, default=1, help="inner epochs per outer epoch")
    p.add_argument("--check-epochs", type=int, default=3,
                   help="epochs of each run-log check at N = 64, 256 (0: none)")
    args = p.parse_args(argv)
    c = measure_compute()
    print(f"c = {1e3 * c['compute_s']:.3f} ms per worker (flat run of {c['workers']} digits "
          f"workers, shards of {c['shard_sizes']} samples), M = {c['num_params']:,}")
    print(table(sweep(c["num_params"], c["compute_s"], args.workers, kappa=args.kappa)))
    if args.check_epochs:
        check_run_logs(epochs=args.check_epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
