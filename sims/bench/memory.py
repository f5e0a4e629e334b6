"""Memory: resident set of 10,000 digits workers, RSS slope over many epochs, recompiles.

Peak RSS (VmHWM) is a per-process high-water mark, so each measurement runs in a fresh
child process: the FEDF vmap simulator and, as the baseline, the bare vmap FedAvg round of
round_time.py on the same data (digits, MLP 64-128-10, 20 samples per worker). The
slope run trains a small federation for many epochs, reading every epoch's outputs
back to the host as the run log does, samples VmRSS and fits MiB per 1,000 epochs
after a warm-up; it also counts XLA compilations after the first epoch (must be 0).

    python sims/bench/memory.py                  # 10,000 workers; 1,000 epochs at N = 100
    python sims/bench/memory.py --quick          # 1,000 workers; 200 epochs
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def child_peak(kind: str, n_workers: int, epochs: int) -> dict:
    """Runs in a fresh process: build, compile, ``epochs`` epochs; report RSS (MiB)."""
    import common
    import jax
    import jax.numpy as jnp
    import round_time

    from fedf_jax.data import load_dataset, sample_workers
    from fedf_jax.models import make_model

    rss0 = common.rss_mib()
    if kind == "fedf":
        from fedf_jax.algorithms import fedf

        model, lay, cfg, data, p0, _ = round_time.setup(n_workers, 20)
        state = fedf.init(lay, data, p0)
        step = round_time.epoch_fn(model, lay, cfg)
        rss_data = common.rss_mib()
        for _ in range(epochs):
            state, out = step(state, data)
            jax.device_get(out)
    else:  # the same data and model, without the library's layout
        ds = load_dataset("digits")
        wd = sample_workers(ds.x_train, ds.y_train, n_workers, 20, seed=0)
        model = make_model("mlp", ds.x_train.shape[1:], ds.num_classes)
        p0 = model.init(jax.random.key(0))
        x, y = jnp.asarray(wd.x), jnp.asarray(wd.y)
        sizes = jnp.asarray(wd.sizes, jnp.float32)
        step = round_time.bare_fedavg_round(model.apply, 2, 10, 0.05)
        p = jnp.array(p0)
        rss_data = common.rss_mib()
        for e in range(epochs):
            p = step(p, x, y, sizes, jax.random.key(e))
            jax.block_until_ready(p)
    return {"kind": kind, "workers": n_workers, "rss_start_mib": rss0,
            "rss_data_mib": rss_data, "rss_end_mib": common.rss_mib(),
            "peak_rss_mib": common.peak_rss_mib()}


def child_slope(n_workers: int, epochs: int, warmup: int) -> dict:
    """RSS every 10 epochs over ``epochs`` epochs; slope fitted after ``warmup``."""
    import common
    import jax
    import round_time

    from fedf_jax.algorithms import fedf

    model, lay, cfg, data, p0, _ = round_time.setup(n_workers, 20)
    state = fedf.init(lay, data, p0)
    step = round_time.epoch_fn(model, lay, cfg)
    state, out = step(state, data)
    jax.device_get(out)
    start = common.compile_count()
    xs, ys = [], []
    t0 = time.perf_counter()
    for e in range(2, epochs + 1):
        state, out = step(state, data)
        jax.device_get(out)  # the host reads every epoch's outputs, as the run log does
        if e % 10 == 0:
            xs.append(e)
            ys.append(common.rss_mib())
    wall = time.perf_counter() - t0
    keep = np.asarray(xs) >= warmup
    slope = float(np.polyfit(np.asarray(xs)[keep], np.asarray(ys)[keep], 1)[0]) * 1000
    return {"workers": n_workers, "epochs": epochs, "warmup_epochs": warmup,
            "rss_first_mib": ys[0], "rss_last_mib": ys[-1],
            "slope_mib_per_1000_epochs": slope, "wall_s": wall,
            "compiles_after_first_epoch": len(common.compiles_since(start)),
            "samples": list(zip(xs, ys, strict=True))}


def _spawn(*args: str) -> dict:
    import common

    return common.spawn(__file__, *args)


def run(quick: bool = False, log=print) -> dict:
    n_big = 1000 if quick else 10_000
    epochs = 200 if quick else 1000
    peaks = {}
    for kind in ("fedavg", "fedf"):
        peaks[kind] = r = _spawn("peak", kind, str(n_big), "3")
        log(f"  {kind:<6} {n_big} workers: peak RSS {r['peak_rss_mib']:.0f} MiB "
            f"(after data {r['rss_data_mib']:.0f} MiB, at start {r['rss_start_mib']:.0f} MiB)",
            flush=True)
    ratio = peaks["fedf"]["peak_rss_mib"] / peaks["fedavg"]["peak_rss_mib"]
    log(f"  FEDF/FedAvg peak RSS {ratio:.2f}x; target <= 4096 MiB for FEDF", flush=True)
    slope = _spawn("slope", "100", str(epochs), str(min(100, epochs // 4)))
    log(f"  RSS over {epochs} epochs at 100 workers: {slope['rss_first_mib']:.0f} -> "
        f"{slope['rss_last_mib']:.0f} MiB, slope {slope['slope_mib_per_1000_epochs']:+.2f} "
        f"MiB / 1000 epochs; {slope['compiles_after_first_epoch']} compilations after "
        f"epoch 1", flush=True)
    return {"peak": peaks, "peak_ratio": ratio, "slope": slope}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what, *rest = args.child
        if what == "peak":
            res = child_peak(rest[0], int(rest[1]), int(rest[2]))
        else:
            res = child_slope(int(rest[0]), int(rest[1]), int(rest[2]))
        print(json.dumps(res))
        return
    res = run(args.quick)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
