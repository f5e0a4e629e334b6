"""Where the FEDF vmap epoch's time goes, stage by stage, in one process.

Each row is a jitted prefix of the epoch (or one part of it) on the data of
``round_time.py``, called in turn with the others so that all see the same load:
local training alone, + the cost pass (Algorithm 2: the loss of the final Q_k over
the whole local set), + ternarize and pack (the worker's whole side), the master
phase on those outputs (pilot choice, Eq. 3 over the packed ternaries, test pass),
the test pass alone, the whole epoch, and the bare vmap FedAvg round of
``round_time.py``. Differences of the prefixes give each stage's cost.

    python sims/bench/stages.py                  # 100 workers
    python sims/bench/stages.py --workers 1000 --rounds 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import round_time

from fedf_jax import layout, worker
from fedf_jax.algorithms import fedf


def stage_fns(n_workers: int, samples: int):
    """{name: (jitted fn, args)} for every stage; one cohort."""
    model, lay, cfg, data, p0, wd = round_time.setup(n_workers, samples)
    state = fedf.init(lay, data, p0)
    (c,) = lay.cohorts

    def train(state, data):
        ms = state.master
        return layout.train_cohort(model, c, ms.p_prev, data.train_key, ms.epoch,
                                   state.opt_states[0], data.cohorts[0], cost_pass=False)

    def train_cost(state, data):
        ms = state.master
        return layout.train_cohort(model, c, ms.p_prev, data.train_key, ms.epoch,
                                   state.opt_states[0], data.cohorts[0])

    def worker_side(state, data):
        ms = state.master
        return fedf.cohort_side(model, c, cfg.scheme, ms.p_prev, ms.p_prev2, ms.epoch,
                                data.train_key, state.opt_states[0], data.cohorts[0])

    outs = jax.jit(worker_side)(state, data)

    def master_side(state, data, outs):
        return fedf.master_side(model, lay, cfg, state, data, [outs])

    def test_pass(state, data):
        return worker.evaluate(model, state.master.p_prev, data.x_test, data.y_test,
                               data.y_test.shape[0], lay.test_chunk)

    def whole(state, data):
        return fedf.epoch(model, lay, cfg, layout.HERE.spread, state, data)

    fedavg = round_time.bare_fedavg_round(model.apply, samples // 10, 10, 0.05)
    fx, fy = jnp.asarray(wd.x), jnp.asarray(wd.y)
    fsizes = jnp.asarray(wd.sizes, jnp.float32)
    # FedAvg donates its model: a fresh copy per call keeps the input alive.
    avg = jax.jit(lambda p, *a: fedavg(jnp.copy(p), *a))
    return {
        "local training": (jax.jit(train), (state, data)),
        "+ cost pass": (jax.jit(train_cost), (state, data)),
        "+ ternarize and pack": (jax.jit(worker_side), (state, data)),
        "master phase (with test pass)": (jax.jit(master_side), (state, data, outs)),
        "test pass": (jax.jit(test_pass), (state, data)),
        "whole epoch (not donated)": (jax.jit(whole), (state, data)),
        "bare FedAvg round": (avg, (p0, fx, fy, fsizes, jax.random.key(2))),
    }


def run(n_workers: int = 100, samples: int = 20, rounds: int = 40, log=print) -> dict:
    """Median and minimum ms of every stage, timed in turn ``rounds`` times."""
    fns = stage_fns(n_workers, samples)
    for fn, args in fns.values():
        jax.block_until_ready(fn(*args))
    ts = {k: [] for k in fns}
    for _ in range(rounds):
        for k, (fn, args) in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            ts[k].append(time.perf_counter() - t0)
    out = {k: {"median_ms": 1e3 * statistics.median(v), "min_ms": 1e3 * min(v)}
           for k, v in ts.items()}
    log(f"{n_workers} workers, {samples} samples each, {rounds} rounds")
    for k, v in out.items():
        log(f"  {k:<30} median {v['median_ms']:7.3f} ms   min {v['min_ms']:7.3f} ms")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    run(args.workers, args.samples, args.rounds)


if __name__ == "__main__":
    main()
