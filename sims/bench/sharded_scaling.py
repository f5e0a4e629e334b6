"""Epoch time and per-device memory of the sharded backend vs device count.

Digits, MLP 64-128-10, N workers with the same number of samples, one local
epoch of SGD with batch 10. Each device count runs in the same process, against
the vmap backend on one device as the baseline (ratios printed). Per-device
memory is XLA's own account of the compiled program (arguments + outputs +
temporaries - donated aliases), which works on CPU where devices report no
allocator statistics.

    python sims/bench/sharded_scaling.py                       # 1000 workers, 1/2/4 devices
    python sims/bench/sharded_scaling.py --workers 100 --devices 1 2 4 8

On a CPU host the script forces 8 host devices unless XLA_FLAGS is already set;
forced CPU devices share the machine's cores, so more devices than cores cannot
speed anything up there: the figures show the overhead of sharding, not a gain.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import functools  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402

from fedf_jax import layout  # noqa: E402
from fedf_jax.algorithms import fedf  # noqa: E402
from fedf_jax.backends import sharded  # noqa: E402
from fedf_jax.config import MasterConfig, WorkerSpec  # noqa: E402
from fedf_jax.data import load_dataset, sample_workers  # noqa: E402
from fedf_jax.models import make_model  # noqa: E402


def per_device_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
            - m.alias_size_in_bytes)


def placed(model, wd, specs, cfg: MasterConfig, ds, p0, pl: layout.Placement):
    """(jitted epoch, state, data) of FEDF with the workers placed by ``pl``."""
    lay = layout.make_layout(specs, wd.sizes, len(ds.y_test), multiple=pl.multiple)
    data = layout.place(lay, wd, specs, cfg.betas(len(specs)), ds.x_test, ds.y_test,
                        jax.random.key(1), pl)
    step = jax.jit(functools.partial(fedf.epoch, model, lay, cfg, pl.spread), donate_argnums=0)
    return step, fedf.init(lay, data, p0, pl), data


def time_epochs(step, state, data, rounds):
    state, _ = step(state, data)
    jax.block_until_ready(state)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        state, out = step(state, data)
        jax.block_until_ready((state, out))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=20, help="samples per worker")
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()

    ds = load_dataset("digits")
    wd = sample_workers(ds.x_train, ds.y_train, args.workers, args.samples, seed=0)
    model = make_model("mlp", ds.x_train.shape[1:], ds.num_classes)
    p0 = model.init(jax.random.key(0))
    specs = [WorkerSpec(lr=0.05, batch_size=10)] * args.workers
    cfg = MasterConfig()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
          f"{len(jax.devices())} {jax.devices()[0].platform} devices; {args.workers} workers x "
          f"{args.samples} samples, M = {model.num_params}")

    step, state, data = placed(model, wd, specs, cfg, ds, p0, layout.HERE)
    mem = per_device_bytes(step.lower(state, data).compile())
    base = time_epochs(step, state, data, args.rounds)
    print(f"{'backend':>12} {'devices':>7} {'epoch ms':>9} {'vs vmap':>7} {'MiB/device':>10}")
    print(f"{'vmap':>12} {1:>7} {1e3 * base:>9.1f} {1.0:>7.2f} {mem / 2**20:>10.1f}")
    for k in args.devices:
        sstep, sstate, sdata = placed(model, wd, specs, cfg, ds, p0, sharded.placement(k))
        mem = per_device_bytes(sstep.lower(sstate, sdata).compile())
        t = time_epochs(sstep, sstate, sdata, args.rounds)
        print(f"{'sharded':>12} {k:>7} {1e3 * t:>9.1f} {t / base:>7.2f} {mem / 2**20:>10.1f}",
              flush=True)


if __name__ == "__main__":
    main()
