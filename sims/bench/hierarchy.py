"""Two-level FEDF epoch (``--groups G``) vs the flat epoch at 1,000 workers, in one process.

Digits, MLP 64-128-10, every worker 20 samples drawn as ``data.sample_workers`` draws
them (worker k: ``default_rng([0, k])``, without replacement; workers overlap), one
local epoch of SGD with batch 10. Each G is the library's algorithm
(``algorithms.make``: G = 1 is flat FEDF, G > 1 the hierarchy wrapper), compiled
ahead and warmed up by ``harness.compile_runner``, and stepped as ``fedf simulate``
steps it (one outer epoch per call, outputs read back). The G are timed in turn,
round after round (the starting G rotates), so every one sees the same machine load;
the figure that matters is each one's ratio to the flat epoch. XLA compilations after
the warm-up are counted: there must be none.

    python sims/bench/hierarchy.py                      # 1,000 workers, G = 1, 10, 32, 100
    python sims/bench/hierarchy.py --workers 1000 --groups 1 10 32 100 --rounds 15 --json o.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import common
import numpy as np

from fedf_jax import algorithms, backends, config, harness, keys
from fedf_jax.data import load_dataset
from fedf_jax.models import make_model


def host(n_workers: int, samples: int, seed: int = 0) -> harness.Host:
    """The run's data, shards and model, shared by every G (its ``cfg`` is replaced)."""
    ds = load_dataset("digits")
    parts = [np.random.default_rng([seed, k]).choice(len(ds.y_train), samples, replace=False)
             for k in range(n_workers)]
    model = make_model("mlp", ds.input_shape, ds.num_classes)
    cfg = config.make(workers=n_workers, epochs=1, seed=seed)
    return harness.Host(cfg, ds, parts, model, model.init(keys.stream(seed, keys.INIT)))


def bench(n_workers: int = 1000, groups=(1, 10, 32, 100), samples: int = 20,
          rounds: int = 15, log=print) -> dict:
    """Median and minimum epoch seconds per G and their ratios to G = 1."""
    if groups[0] != 1:
        raise ValueError(f"`groups` (={list(groups)}) must start with 1, the flat baseline.")
    base = host(n_workers, samples)
    place = backends.placement("vmap")
    common.warm_compiler()
    runs = {}
    for g in groups:
        cfg = base.cfg.replace(groups=g)
        alg = algorithms.make(cfg, base._replace(cfg=cfg), place)
        state = alg.init()
        cpu0 = time.process_time()
        runner = harness.compile_runner(alg, state, 1)
        runs[g] = {"alg": alg, "runner": runner, "state": state, "wall": [], "modeled": [],
                   "compile_s": runner.compile_s, "compile_cpu_s": time.process_time() - cpu0}
        log(f"G = {g:>4}: compiled and warmed up in {runner.compile_s:.1f} s", flush=True)
    compiles = common.compile_count()
    for r in range(rounds):
        order = list(groups[r % len(groups):]) + list(groups[:r % len(groups)])
        for g in order:
            run = runs[g]
            t0 = time.perf_counter()
            run["state"], outs = run["runner"].advance(run["state"], 1)
            dt = time.perf_counter() - t0
            rec = run["alg"].record(outs[0], dt)
            run["wall"].append(dt)
            run["modeled"].append(rec["modeled_s"])
            run["bytes_top"] = int(rec.get("bytes_top", rec["bytes_total"]))
            run["bytes_total"] = int(rec["bytes_total"])
    flat = runs[groups[0]]
    rows = []
    for g in groups:
        run = runs[g]
        rows.append({
            "groups": g, "group_size": -(-n_workers // g),
            "median_s": statistics.median(run["wall"]), "min_s": min(run["wall"]),
            "ratio": statistics.median(run["wall"]) / statistics.median(flat["wall"]),
            "ratio_of_mins": min(run["wall"]) / min(flat["wall"]),
            "compile_s": run["compile_s"], "compile_cpu_s": run["compile_cpu_s"],
            "modeled_s_median": statistics.median(run["modeled"]),
            "bytes_top": run["bytes_top"], "bytes_total": run["bytes_total"],
        })
    return {"workers": n_workers, "samples_per_worker": samples, "rounds": rounds,
            "num_params": base.model.num_params, "rows": rows,
            "compiles_after_warmup": len(common.compiles_since(compiles))}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=1000)
    p.add_argument("--groups", type=int, nargs="+", default=[1, 10, 32, 100],
                   help="G values; the first must be 1 (flat, the baseline)")
    p.add_argument("--samples", type=int, default=20, help="samples per worker")
    p.add_argument("--rounds", type=int, default=15, help="timed epochs per G")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    m = common.machine()
    print(f"machine: {m['cpu']}, {m['cores']} cores, jax {m['jax']}, devices {m['devices']}, "
          f"load {m['load_avg_1m']:.1f}")
    t0 = time.perf_counter()
    res = bench(args.workers, tuple(args.groups), args.samples, args.rounds)
    print(f"{args.workers} workers x {args.samples} samples, M = {res['num_params']:,}, "
          f"{args.rounds} interleaved epochs per G")
    print(f"{'G':>5} {'n_g':>5} {'median ms':>10} {'min ms':>8} {'vs flat':>8} "
          f"{'min vs flat':>11} {'compile s':>10} {'modeled ms':>11} {'top bytes':>12}")
    for r in res["rows"]:
        print(f"{r['groups']:>5} {r['group_size']:>5} {1e3 * r['median_s']:>10.2f} "
              f"{1e3 * r['min_s']:>8.2f} {r['ratio']:>8.2f} {r['ratio_of_mins']:>11.2f} "
              f"{r['compile_s']:>10.2f} {1e3 * r['modeled_s_median']:>11.2f} "
              f"{r['bytes_top']:>12,}")
    print(f"XLA compilations after the warm-up: {res['compiles_after_warmup']}; "
          f"{time.perf_counter() - t0:.0f} s in all")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": m, **res}, f, indent=1)


if __name__ == "__main__":
    main()
