"""Scaling: epoch time and memory vs the number of workers N and the model size M.

Digits, 20 samples per worker, one local epoch of SGD with batch 10. Sweep N at the
MLP 64-128-10 (M = 9,610), and M (the MLP's hidden width) at N = 100. Each point
times the FEDF vmap epoch and, in turn with it, the bare vmap FedAvg round of
round_time.py (the ratio is the figure); memory is XLA's own account of the
compiled epoch (arguments + outputs + temporaries, ``memory_analysis()``), which
is per program and not disturbed by the other points. The fitted log-log slope
against N*M should be about 1 (linear growth) once fixed costs are amortised.

    python sims/bench/scaling.py                 # writes scaling.png next to this file
    python sims/bench/scaling.py --quick --plot /tmp/scaling.png
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import common
import jax
import jax.numpy as jnp
import numpy as np
import round_time

from fedf_jax.algorithms import fedf

HERE = os.path.dirname(os.path.abspath(__file__))


def point(n_workers: int, hidden: int, reps: int) -> dict:
    """One (N, hidden width) point: FEDF and FedAvg epoch times, compiled memory."""
    model, lay, cfg, data, p0, wd = round_time.setup(n_workers, 20, hidden=hidden)
    state = fedf.init(lay, data, p0)
    fedf_step = round_time.epoch_fn(model, lay, cfg)
    mem = fedf_step.lower(state, data).compile().memory_analysis()
    fedf_bytes = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
    x, y = jnp.asarray(wd.x), jnp.asarray(wd.y)
    sizes = jnp.asarray(wd.sizes, jnp.float32)
    fedavg = round_time.bare_fedavg_round(model.apply, 2, 10, 0.05)
    p = jnp.array(p0)
    (state, _), _ = common.timed(fedf_step, state, data)
    p, _ = common.timed(fedavg, p, x, y, sizes, jax.random.key(0))
    ft, at = [], []
    for r in range(reps):
        (state, _), dt = common.timed(fedf_step, state, data)
        ft.append(dt)
        p, dt = common.timed(fedavg, p, x, y, sizes, jax.random.key(r + 1))
        at.append(dt)
    return {"N": n_workers, "hidden": hidden, "M": model.num_params,
            "NM": n_workers * model.num_params,
            "fedf_median_s": statistics.median(ft), "fedf_min_s": min(ft),
            "fedavg_median_s": statistics.median(at), "fedavg_min_s": min(at),
            "ratio": statistics.median(ft) / statistics.median(at),
            "fedf_compiled_bytes": fedf_bytes, "fedf_temp_bytes": mem.temp_size_in_bytes}


def fitted(rows: list) -> list:
    """The points the growth is fitted on: all but the smallest when there are more
    than three (fixed per-call costs dominate the smallest)."""
    return rows[1:] if len(rows) > 3 else rows


def loglog_slope(x, y) -> float:
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def plot(sweeps: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, rows in sweeps.items():
        nm = np.array([r["NM"] for r in rows], float)
        big = np.isin(nm, [r["NM"] for r in fitted(rows)])
        for ax, key, unit, scale in ((axes[0], "fedf_median_s", "s", 1.0),
                                     (axes[1], "fedf_compiled_bytes", "MiB", 2**-20)):
            v = np.array([r[key] for r in rows], float) * scale
            k = loglog_slope(nm[big], v[big])
            c = np.exp(np.mean(np.log(v[big]) - k * np.log(nm[big])))
            line = ax.loglog(nm, v, "o-", label=f"FEDF, {name} (fit slope {k:.2f})")[0]
            ax.loglog(nm[big], c * nm[big] ** k, ":", color=line.get_color())
            if key == "fedf_median_s":
                ax.loglog(nm, [r["fedavg_median_s"] for r in rows], "x--",
                          color=line.get_color(), alpha=0.6, label=f"FedAvg, {name}")
            ax.set_ylabel(f"epoch time ({unit})" if scale == 1.0 else f"compiled memory ({unit})")
    for ax in axes:
        ax.set_xlabel("N * M (workers x parameters)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_title("epoch time")
    axes[1].set_title("XLA memory: arguments + outputs + temporaries")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(quick: bool = False, plot_path: str | None = None, log=print) -> dict:
    ns = [10, 100, 1000] if quick else [10, 100, 1000, 3000, 10_000]
    widths = [32, 128, 512] if quick else [32, 128, 512, 2048]
    sweeps = {"vs N (M = 9,610)": [], "vs M (N = 100)": []}
    for name, cases in (("vs N (M = 9,610)", [(n, 128) for n in ns]),
                        ("vs M (N = 100)", [(100, h) for h in widths])):
        for n, h in cases:
            r = point(n, h, 3 if n * h >= 1_000_000 else 7)
            sweeps[name].append(r)
            log(f"  N={n:<6} M={r['M']:<8} FEDF {1e3 * r['fedf_median_s']:9.2f} ms "
                f"FedAvg {1e3 * r['fedavg_median_s']:9.2f} ms  ratio {r['ratio']:.2f}  "
                f"compiled {r['fedf_compiled_bytes'] / 2**20:8.1f} MiB", flush=True)
    fits = {}
    for name, rows in sweeps.items():
        big = fitted(rows)
        fits[name] = {
            "time_slope": loglog_slope([r["NM"] for r in big], [r["fedf_median_s"] for r in big]),
            "fedavg_time_slope": loglog_slope([r["NM"] for r in big],
                                              [r["fedavg_median_s"] for r in big]),
            "memory_slope": loglog_slope([r["NM"] for r in big],
                                         [r["fedf_compiled_bytes"] for r in big]),
            "fitted_points": [r["NM"] for r in big]}
        log(f"  {name}: log-log slope vs N*M: time {fits[name]['time_slope']:.2f} "
            f"(FedAvg {fits[name]['fedavg_time_slope']:.2f}), "
            f"memory {fits[name]['memory_slope']:.2f}", flush=True)
    path = plot_path or os.path.join(HERE, "scaling.png")
    plot(sweeps, path)
    log(f"  plot: {path}")
    return {"sweeps": sweeps, "fits": fits, "plot": path}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--plot", help="PNG path (default: scaling.png next to this file)")
    parser.add_argument("--json")
    args = parser.parse_args()
    res = run(args.quick, args.plot)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
