"""FEDF vmap epoch vs a bare vmap FedAvg round, in one process.

Digits, MLP 64-128-10, every worker with the same number of samples, one local
epoch of SGD with batch 10. The FedAvg round below is written here, on purpose
without the library: vmapped local SGD over all clients, then the example-weighted
mean. Both run interleaved on the same data; the figure that matters is the ratio.
Compile time (trace + XLA) is measured apart, and every XLA compilation is counted
(jax.monitoring): the timed epochs must compile nothing. ``--scan`` also times K
epochs in one call of ``harness.scan`` (one ``lax.scan``) against K epoch calls whose
outputs are read back each epoch (as the run log does).

    python sims/bench/round_time.py                    # 100, 1000, 10000 workers
    python sims/bench/round_time.py --workers 100 1000 --rounds 20 --json out.json
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import common
import jax
import jax.numpy as jnp
import optax

from fedf_jax import harness, layout
from fedf_jax.algorithms import fedf
from fedf_jax.config import MasterConfig, WorkerSpec
from fedf_jax.data import load_dataset, sample_workers
from fedf_jax.models import make_model


def bare_fedavg_round(apply, steps: int, batch: int, lr: float):
    """One FedAvg round: every client runs SGD over its shuffled data, then a weighted mean."""

    def client(p, x, y, key):
        order = jax.random.permutation(key, x.shape[0])

        def step(p, s):
            idx = jax.lax.dynamic_slice_in_dim(order, s * batch, batch)

            def loss(p):
                logits = apply(p, x[idx])
                return optax.softmax_cross_entropy_with_integer_labels(logits, y[idx]).mean()

            return p - lr * jax.grad(loss)(p), None

        p, _ = jax.lax.scan(step, p, jnp.arange(steps))
        return p

    def round_(p, x, y, sizes, key):
        keys = jax.random.split(key, x.shape[0])
        q = jax.vmap(client, in_axes=(None, 0, 0, 0))(p, x, y, keys)
        w = sizes / sizes.sum()
        return jnp.tensordot(w, q, axes=1)

    return jax.jit(round_, donate_argnums=0)


timed = common.timed


def setup(n_workers: int, samples: int, batch: int = 10, lr: float = 0.05,
          hidden: int | None = None):
    """Model, layout, master config, data and P^0 of the benchmark's FEDF run
    (``hidden``: the MLP's hidden width, default the model's 128)."""
    ds = load_dataset("digits")
    wd = sample_workers(ds.x_train, ds.y_train, n_workers, samples, seed=0)
    kw = {} if hidden is None else {"hidden": (hidden,)}
    model = make_model("mlp", ds.x_train.shape[1:], ds.num_classes, **kw)
    specs = [WorkerSpec(lr=lr, batch_size=batch, local_epochs=1)] * n_workers
    cfg = MasterConfig()
    lay = layout.make_layout(specs, wd.sizes, len(ds.y_test))
    data = layout.place(lay, wd, specs, cfg.betas(n_workers), ds.x_test, ds.y_test,
                        jax.random.key(1))
    return model, lay, cfg, data, model.init(jax.random.key(0)), wd


def epoch_fn(model, lay: layout.Layout, cfg: MasterConfig,
             placement: layout.Placement = layout.HERE):
    """FEDF's epoch on ``placement``, jitted with the state donated."""
    return jax.jit(functools.partial(fedf.epoch, model, lay, cfg, placement.spread),
                   donate_argnums=0)


def scan_fn(model, lay: layout.Layout, cfg: MasterConfig, k: int):
    """K FEDF epochs in one ``lax.scan`` (one device), jitted with the state donated."""
    step = functools.partial(fedf.epoch, model, lay, cfg, layout.HERE.spread)
    return jax.jit(harness.scan(step, k), donate_argnums=0)


def bench_scan(n_workers: int, samples: int, k: int, repeats: int = 3) -> dict:
    """K epochs in one ``scan_fn`` call vs K ``epoch_fn`` calls, each of whose
    outputs is read back to the host before the next (what a run log does)."""
    model, lay, cfg, data, p0, _ = setup(n_workers, samples)
    step = epoch_fn(model, lay, cfg)
    state = fedf.init(lay, data, p0)
    scan = scan_fn(model, lay, cfg, k)
    common.warm_compiler()
    scan_compile, _ = common.compile_time(scan, state, data)
    (state, _), _ = timed(scan, state, data)
    state, _ = step(state, data)
    loop_t, scan_t = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(k):
            state, out = step(state, data)
            jax.device_get(out)
        loop_t.append((time.perf_counter() - t0) / k)
        t0 = time.perf_counter()
        state, out = scan(state, data)
        jax.device_get(out)
        scan_t.append((time.perf_counter() - t0) / k)
    return {"workers": n_workers, "k": k, "loop_epoch_median_s": statistics.median(loop_t),
            "scan_epoch_median_s": statistics.median(scan_t),
            "scan_over_loop": statistics.median(scan_t) / statistics.median(loop_t),
            "scan_compile_s": scan_compile}


def bench(n_workers: int, samples: int, rounds: int, batch: int = 10, lr: float = 0.05):
    # FEDF: the library's vmap backend.
    model, lay, cfg, data, p0, wd = setup(n_workers, samples, batch, lr)
    state = fedf.init(lay, data, p0)
    fedf_step = epoch_fn(model, lay, cfg)

    # FedAvg: written above, same data on the device.
    fx, fy = jnp.asarray(wd.x), jnp.asarray(wd.y)
    fsizes = jnp.asarray(wd.sizes, jnp.float32)
    fedavg = bare_fedavg_round(model.apply, samples // batch, batch, lr)
    p = jnp.array(p0)

    common.warm_compiler()  # the first XLA compilation in a process pays one-time set-up
    fedf_compile, fedf_compile_cpu = common.compile_time(fedf_step, state, data)
    avg_compile, avg_compile_cpu = common.compile_time(fedavg, p, fx, fy, fsizes,
                                                       jax.random.key(2))
    (state, _), _ = timed(fedf_step, state, data)  # warm-up calls (cached executables)
    p, _ = timed(fedavg, p, fx, fy, fsizes, jax.random.key(2))
    compiles = common.compile_count()
    fedf_t, avg_t = [], []
    for r in range(rounds):  # interleaved, so both see the same machine load
        (state, _), dt = timed(fedf_step, state, data)
        fedf_t.append(dt)
        p, dt = timed(fedavg, p, fx, fy, fsizes, jax.random.key(3 + r))
        avg_t.append(dt)
    return {
        "workers": n_workers, "samples_per_worker": samples, "num_params": model.num_params,
        "fedf_median_s": statistics.median(fedf_t), "fedavg_median_s": statistics.median(avg_t),
        "ratio": statistics.median(fedf_t) / statistics.median(avg_t),
        "ratio_of_mins": min(fedf_t) / min(avg_t),
        "fedf_min_s": min(fedf_t), "fedavg_min_s": min(avg_t),
        "fedf_compile_s": fedf_compile, "fedavg_compile_s": avg_compile,
        "fedf_compile_cpu_s": fedf_compile_cpu, "fedavg_compile_cpu_s": avg_compile_cpu,
        "compiles_after_first_epoch": len(common.compiles_since(compiles)),
    }


def run(workers=(100, 1000, 10000), samples: int = 20, rounds: int = 0, scan_k: int = 10,
        scan_workers=(100, 1000), log=print) -> dict:
    """Every size; ``rounds`` 0 picks 30, 15, 7 by size. Returns the rows and scan rows."""
    log(f"{'workers':>8} {'FedAvg ms':>10} {'FEDF ms':>10} {'ratio':>6} {'min ratio':>9} "
        f"{'FEDF compile s':>14} {'FedAvg compile s':>16} {'recompiles':>10}")
    rows = []
    for n in workers:
        r = bench(n, samples, rounds or (30 if n <= 100 else 15 if n <= 1000 else 7))
        rows.append(r)
        log(f"{n:>8} {1e3 * r['fedavg_median_s']:>10.2f} {1e3 * r['fedf_median_s']:>10.2f} "
            f"{r['ratio']:>6.2f} {r['ratio_of_mins']:>9.2f} {r['fedf_compile_s']:>14.2f} "
            f"{r['fedavg_compile_s']:>16.2f} {r['compiles_after_first_epoch']:>10}", flush=True)
    scans = []
    if scan_k > 1:
        log(f"{'workers':>8} {'K':>4} {'loop ms/epoch':>14} {'scan ms/epoch':>14} {'scan/loop':>9} "
            f"{'scan compile s':>14}")
        for n in scan_workers:
            r = bench_scan(n, samples, scan_k)
            scans.append(r)
            log(f"{n:>8} {scan_k:>4} {1e3 * r['loop_epoch_median_s']:>14.2f} "
                f"{1e3 * r['scan_epoch_median_s']:>14.2f} {r['scan_over_loop']:>9.2f} "
                f"{r['scan_compile_s']:>14.2f}", flush=True)
    return {"rounds": rows, "scan": scans}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--samples", type=int, default=20, help="samples per worker")
    parser.add_argument("--rounds", type=int, default=0,
                        help="timed rounds per size (default: 30, 15, 7 by size)")
    parser.add_argument("--scan", type=int, default=10, metavar="K",
                        help="also time K epochs per scanned call (0: no)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    m = common.machine()
    print(f"machine: {m['cpu']}, {m['cores']} cores, jax {m['jax']}, devices {m['devices']}")
    res = run(args.workers, args.samples, args.rounds, args.scan,
              [n for n in args.workers if n <= 1000])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": m, **res}, f, indent=1)


if __name__ == "__main__":
    main()
