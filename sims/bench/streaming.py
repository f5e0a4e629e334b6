"""Streaming workers (``--worker-chunk K``): epoch time and peak memory vs N.

FEDF as ``fedf simulate`` runs it (MLP 64-128-10, one local epoch of SGD, batch 10)
on ``--data synthetic`` with 20 samples per worker, so the data grows with N. Each
point runs in a fresh child process: ``harness.load`` (data, partition, model),
``algorithms.make`` (layout, data placed), ``harness.compile_runner`` (compile and
one warm-up epoch), then E timed epochs, each read back to the host as the run log
does. Reported: median and minimum epoch seconds; the peak resident set (VmHWM) of
the child; its resident set once the data is placed ("data"), and the peak above
that (what compiling and running the epoch adds: it should not grow with N).

Two levels at scale: 100,000 workers in 100 groups (``--groups 100``), each group
streaming ``K // 100`` workers at a time while the groups are vmapped.

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
    times = []
    for _ in range(epochs):
        state, dt = _epoch(alg, runner, state)
        times.append(dt)
    return {"N": n, "chunk": chunk or None, "groups": groups, "epochs": epochs,
            **common.stats(times),
            "compile_s": runner.compile_s, "rss_start_mib": rss0, "rss_data_mib": rss_data,
            "peak_rss_mib": common.peak_rss_mib(),
            "data_mib": (host.dataset.x_train.nbytes + host.dataset.y_train.nbytes) / 2**20}


def child_pair(n: int, chunk: int, epochs: int) -> dict:
    """Chunked and whole epochs on the same data, timed in turn (one process)."""
    import common

    from fedf_jax import harness

    cfg = _config(n, None, epochs)
    host = harness.load(cfg)
    whole = _built(cfg, host)
    chunked = _built(cfg.replace(worker_chunk=chunk), host)
    states = [whole[1], chunked[1]]
    times = [[], []]
    for _ in range(epochs):
        for i, (alg, _, runner) in enumerate((whole, chunked)):
            states[i], dt = _epoch(alg, runner, states[i])
            times[i].append(dt)
    same = bool(np.array_equal(np.asarray(whole[0].params(states[0])),
                               np.asarray(chunked[0].params(states[1]))))
    w, c = common.stats(times[0]), common.stats(times[1])
    return {"N": n, "chunk": chunk, "whole_median_s": w["median_s"], "whole_min_s": w["min_s"],
            "chunked_median_s": c["median_s"], "chunked_min_s": c["min_s"],
            "ratio": c["median_s"] / w["median_s"], "ratio_of_mins": c["min_s"] / w["min_s"],
            "same_model": same}


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
    grouped = []
    if not quick:  # two levels at scale: 100 groups, each streaming K // 100 at a time
        grouped.append(common.spawn(__file__, "peak", "100000", str(CHUNK), str(epochs),
                                    str(GROUPS)))
        log(_row(grouped[-1]) + f"   ({GROUPS} groups)", flush=True)
    return {"chunk": CHUNK, "samples_per_worker": SAMPLES, "chunked": chunked, "whole": whole,
            "pairs": pairs, "time_slope": s, "grouped": grouped}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 1e3 and 1e4 only")
    parser.add_argument("--million", action="store_true", help="also N = 1e6")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what, *nums = args.child
        fn = child_peak if what == "peak" else child_pair
        print(json.dumps(fn(*(int(a) for a in nums))))
        return
    import common

    common.save_json(run(args.quick, args.million), args.json)


if __name__ == "__main__":
    main()
