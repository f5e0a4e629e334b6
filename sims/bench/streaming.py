"""Streaming workers (``--worker-chunk K``): epoch time and peak memory vs N.

FEDF as ``fedf simulate`` runs it (MLP 64-128-10, one local epoch of SGD, batch 10)
on ``--data synthetic`` with 20 samples per worker, so the data grows with N. Each
point runs in a fresh child process: ``harness.load`` (data, partition, model),
``algorithms.make`` (layout, data placed), ``harness.compile_runner`` (compile), one
warm-up epoch, then E timed epochs, each read back to the host as the run log
does. Reported: median and minimum epoch seconds; the peak resident set (VmHWM) of
the child; its resident set once the data is placed ("data"), and the peak above
that (what compiling and running the epoch adds: it should not grow with N).

Two levels at scale: 100,000 workers in 100 groups (``--groups 100``), each group
streaming ``K // 100`` workers at a time while the groups are vmapped.

The issue's done-when check: 100,000 workers' epoch against 4x the 25,000 workers'
(goal <= 1.15), both programs built in one child and their epochs timed in turn.

Baseline, where it fits (N <= 10^4): the same run without chunks. Memory: its own
child. Time: one more child that builds both programs on the same data and times
their epochs in turn (the chunked / whole ratio in one process). The log-log slope
of the chunked epoch time against N (over N >= 10^4) says how time scales (goal
<= 1.05: linear).

    python sims/bench/streaming.py                  # N = 1e3, 1e4, 1e5
    python sims/bench/streaming.py --quick          # N = 1e3, 1e4
    python sims/bench/streaming.py --million        # also N = 1e6 (about 20 GB, slow)
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

CHUNK = 8192  # the --worker-chunk of the 100,000-worker run
SAMPLES = 20  # per worker
WHOLE_UP_TO = 10_000  # the largest N also run without chunks
GROUPS = 100  # the two-level point: 100,000 workers in 100 groups


def _config(n: int, chunk: int | None, epochs: int, groups: int = 1):
    from fedf_jax import config

    return config.make(data="synthetic", num_samples=SAMPLES * n, workers=n,
                       worker_chunk=chunk, epochs=epochs, seed=0, groups=groups)


def _built(cfg, host):
    from fedf_jax import algorithms, harness, layout

    alg = algorithms.make(cfg, host, layout.HERE)
    state = alg.init()
    return alg, state, harness.compile_runner(alg, state, cfg.run.epochs)


def _epoch(alg, runner, state) -> tuple[object, float]:
    t0 = time.perf_counter()
    state, outs = runner.advance(state, 1)
    alg.record(outs[0], 0.0)  # the host side of the epoch, as the run log does
    return state, time.perf_counter() - t0


def child_peak(n: int, chunk: int, epochs: int, groups: int = 1) -> dict:
    """One run (``chunk`` 0: unchunked; ``groups`` > 1: two levels, streaming inside the
    groups) in this fresh process: times and memory (MiB)."""
    import common

    from fedf_jax import algorithms, harness, layout

    cfg = _config(n, chunk or None, epochs, groups)
    rss0 = common.rss_mib()
    host = harness.load(cfg)
    alg = algorithms.make(cfg, host, layout.HERE)
    rss_data = common.rss_mib()
    state = alg.init()
    runner = harness.compile_runner(alg, state, epochs)
    state, _ = _epoch(alg, runner, state)  # warm-up: first-run allocations
    times = []
    for _ in range(epochs):
        state, dt = _epoch(alg, runner, state)
        times.append(dt)
    return {"N": n, "chunk": chunk or None, "groups": groups, "epochs": epochs,
            **common.stats(times),
            "compile_s": runner.compile_s, "rss_start_mib": rss0, "rss_data_mib": rss_data,
            "peak_rss_mib": common.peak_rss_mib(),
            "data_mib": (host.dataset.x_train.nbytes + host.dataset.y_train.nbytes) / 2**20}


def _in_turn(built: list, epochs: int) -> tuple[list, list[list[float]]]:
    """A warm-up epoch of each built run, then ``epochs`` rounds in which each runs one
    epoch in turn. Returns (final states, epoch seconds per run)."""
    states = [b[1] for b in built]
    times = [[] for _ in built]
    for rep in range(epochs + 1):
        for i, (alg, _, runner) in enumerate(built):
            states[i], dt = _epoch(alg, runner, states[i])
            if rep:  # the first round warms up
                times[i].append(dt)
    return states, times


def _versus(times: list[list[float]], scale: float = 1.0) -> dict:
    """The second run's epoch against ``scale`` times the first's: medians, minimums,
    their ratios and the ratio round by round."""
    import common

    a, b = common.stats(times[0]), common.stats(times[1])
    return {"a_median_s": a["median_s"], "a_min_s": a["min_s"], "b_median_s": b["median_s"],
            "b_min_s": b["min_s"], "ratio": b["median_s"] / (scale * a["median_s"]),
            "ratio_of_mins": b["min_s"] / (scale * a["min_s"]),
            "per_round": [tb / (scale * ta) for ta, tb in zip(*times, strict=True)]}


def child_pair(n: int, chunk: int, epochs: int, groups: int = 1) -> dict:
    """On the same data, timed in turn in this process: whole and chunked epochs (``groups``
    1), or the flat chunked epoch and the two-level one streaming inside the groups."""
    from fedf_jax import harness

    cfg = _config(n, None if groups == 1 else chunk, epochs)
    host = harness.load(cfg)
    first = _built(cfg, host)
    second = _built(cfg.replace(worker_chunk=chunk, groups=groups), host)
    states, times = _in_turn([first, second], epochs)
    same = bool(np.array_equal(np.asarray(first[0].params(states[0])),
                               np.asarray(second[0].params(states[1]))))
    v = _versus(times)
    if groups > 1:
        return {"N": n, "chunk": chunk, "groups": groups, "flat_median_s": v["a_median_s"],
                "flat_min_s": v["a_min_s"], "grouped_median_s": v["b_median_s"],
                "grouped_min_s": v["b_min_s"], "ratio": v["ratio"],
                "ratio_of_mins": v["ratio_of_mins"]}
    return {"N": n, "chunk": chunk, "whole_median_s": v["a_median_s"],
            "whole_min_s": v["a_min_s"], "chunked_median_s": v["b_median_s"],
            "chunked_min_s": v["b_min_s"], "ratio": v["ratio"],
            "ratio_of_mins": v["ratio_of_mins"], "same_model": same}


def child_scale(small: int, big: int, chunk: int, epochs: int) -> dict:
    """The done-when check of the issue: the epoch at ``big`` workers against
    ``big / small`` times the epoch at ``small`` workers (both chunked, the same samples
    per worker), both programs in this process, timed in turn."""
    from fedf_jax import harness

    built = []
    for n in (small, big):
        cfg = _config(n, chunk, epochs)
        built.append(_built(cfg, harness.load(cfg)))
    v = _versus(_in_turn(built, epochs)[1], big / small)
    return {"small": small, "big": big, "chunk": chunk, "small_median_s": v["a_median_s"],
            "small_min_s": v["a_min_s"], "big_median_s": v["b_median_s"],
            "big_min_s": v["b_min_s"], "ratio": v["ratio"],
            "ratio_of_mins": v["ratio_of_mins"], "per_round": v["per_round"]}


def slope(rows: list[dict], low: int = 10_000) -> float:
    """Log-log slope of the chunked epoch time (minimum) against N over N >= ``low``."""
    pts = [(r["N"], r["min_s"]) for r in rows if r["N"] >= low]
    if len(pts) < 2:
        return float("nan")
    n, t = np.log(np.array(pts, np.float64)).T
    return float(np.polyfit(n, t, 1)[0])


def _row(r: dict) -> str:
    return (f"{r['N']:>9,} {r['chunk'] or '-':>6} {r['median_s']:>8.2f} {r['min_s']:>8.2f} "
            f"{r['rss_data_mib']:>9.0f} {r['peak_rss_mib']:>9.0f} "
            f"{r['peak_rss_mib'] - r['rss_data_mib']:>9.0f} {r['compile_s']:>9.1f}")


def run(quick: bool = False, million: bool = False, log=print) -> dict:
    import common

    sizes = [1000, 10_000] if quick else [1000, 10_000, 100_000]
    if million:
        sizes.append(1_000_000)
    epochs = 2 if quick else 3
    log(f"{'N':>9} {'K':>6} {'epoch s':>8} {'min s':>8} {'data MiB':>9} {'peak MiB':>9} "
        f"{'peak-data':>9} {'compile s':>9}")
    chunked, whole, pairs = [], [], []
    for n in sizes:
        for k, rows in ((CHUNK, chunked), (0, whole)):
            if k == 0 and n > WHOLE_UP_TO:
                continue
            r = common.spawn(__file__, "peak", str(n), str(k), str(epochs if n < 10**6 else 1))
            rows.append(r)
            log(_row(r), flush=True)
        if n <= WHOLE_UP_TO:
            p = common.spawn(__file__, "pair", str(n), str(CHUNK), str(epochs + 2))
            pairs.append(p)
            log(f"{n:>9,}   in one process: chunked / whole epoch {p['ratio']:.2f} (of "
                f"minimums {p['ratio_of_mins']:.2f}); same final model: {p['same_model']}",
                flush=True)
    s = slope(chunked)
    log(f"log-log slope of the chunked epoch time vs N (N >= 10^4): {s:.2f} (goal <= 1.05)")
    grouped, scale = [], None
    if not quick:  # two levels at scale: 100 groups, each streaming K // 100 at a time
        grouped.append(common.spawn(__file__, "peak", "100000", str(CHUNK), str(epochs),
                                    str(GROUPS)))
        log(_row(grouped[-1]) + f"   ({GROUPS} groups)", flush=True)
        gp = common.spawn(__file__, "pair", "100000", str(CHUNK), str(epochs), str(GROUPS))
        grouped[-1]["versus_flat"] = gp
        log(f"  in one process: {GROUPS} groups / flat, both chunked: {gp['ratio']:.2f} (of "
            f"minimums {gp['ratio_of_mins']:.2f})", flush=True)
        scale = common.spawn(__file__, "scale", "25000", "100000", str(CHUNK), "4")
        log(f"100,000 / (4 x 25,000) workers' epoch in one process: {scale['ratio']:.2f} "
            f"(of minimums {scale['ratio_of_mins']:.2f}; goal <= 1.15)", flush=True)
    return {"chunk": CHUNK, "samples_per_worker": SAMPLES, "chunked": chunked, "whole": whole,
            "pairs": pairs, "time_slope": s, "grouped": grouped, "scale": scale}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 1e3 and 1e4 only")
    parser.add_argument("--million", action="store_true", help="also N = 1e6")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what, *nums = args.child
        fn = {"peak": child_peak, "pair": child_pair, "scale": child_scale}[what]
        print(json.dumps(fn(*(int(a) for a in nums))))
        return
    import common

    common.save_json(run(args.quick, args.million), args.json)


if __name__ == "__main__":
    main()
