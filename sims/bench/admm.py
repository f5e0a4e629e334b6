"""ADMM linear SVM (fedf_jax/admm.py) against scikit-learn's LinearSVC: iterations and time.

On breast-cancer (standardized) and digits-oddeven, C = 1, training sets with the bias
column appended:

1. iterations and wall time until the objective is within 1e-3 (relative) of
   ``LinearSVC(C, loss="hinge", fit_intercept=False, tol=1e-8)`` on x~ = [x, 1]: samples
   split (consensus) with N = 5 workers, features split (sharing) with N = 4, two levels
   (2 groups of 3 + 2 workers, kappa = 1, 2, 5 inner iterations, rho_top adaptive or
   fixed); test accuracy of both;
2. fixed vs adaptive rho (residual balancing, mu = 10, tau = 2) from several rho_0;
3. the x-update's share of one consensus iteration;
4. one consensus iteration vmapped over 100 workers / over 1 worker holding all the rows.

The iteration count comes from a host loop that reads the objective after every step; the
time is then that many steps in one jitted ``lax.fori_loop`` (compiled first, median of
several runs), so it has no host round trips. Figures are printed, nothing is asserted.

    python sims/bench/admm.py
"""

from __future__ import annotations

import functools
import statistics
import time

import common
import jax
import jax.numpy as jnp
import numpy as np
from sklearn.svm import LinearSVC

from fedf_jax import admm, admm_data
from fedf_jax.data import load_dataset, partition

C = 1.0
GAP = 1e-3
MAX_ITER = 3000


def reference(x, labels):
    """LinearSVC on x~: (its objective, its weights f32[1, p])."""
    a = admm_data.add_bias(x).astype(np.float64)
    y = np.where(labels == 1, 1.0, -1.0)
    w = LinearSVC(C=C, loss="hinge", fit_intercept=False, tol=1e-8,
                  max_iter=100000).fit(a, y).coef_.ravel()
    return 0.5 * w @ w + C * np.maximum(0.0, 1.0 - y * (a @ w)).sum(), w[None].astype(np.float32)


def iterations_to_gap(step, state, f_ref):
    """Steps until the objective at the iterate is within GAP of f_ref (MAX_ITER + 1 if
    never), and the state then."""
    for i in range(1, MAX_ITER + 1):
        state, info = step(state)
        if (float(info.objective[0]) - f_ref) / f_ref <= GAP:
            return i, state
    return MAX_ITER + 1, state


def time_steps(step, state, n, reps=5):
    """Median seconds of n steps in one jitted fori_loop (compiled first)."""
    loop = jax.jit(lambda s: jax.lax.fori_loop(0, n, lambda _, t: step(t)[0], s))
    jax.block_until_ready(loop(state))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(loop(state))
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def median_time(fn, *args, reps=20):
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def test_accuracy(W, d):
    return float(admm.accuracy(jnp.asarray(W), admm_data.add_bias(d.x_test), d.y_test))


def report(name, iters, seconds, W, d, acc_ref):
    per = seconds / iters * 1e3 if iters <= MAX_ITER else float("nan")
    shown = str(iters) if iters <= MAX_ITER else f">{MAX_ITER}"
    print(f"  {name:<46} {shown:>6} it  {seconds * 1e3:8.1f} ms  ({per:.3f} ms/it)  "
          f"test acc {test_accuracy(W, d):.4f} (LinearSVC {acc_ref:.4f})")


def main():
    m = common.machine()
    print(f"# {m['cpu']}, {m['cores']} cores, jax {m['jax']}, {m['date']}, "
          f"load {m['load_avg_1m']:.1f}")
    hyper = admm.make_hyper(C)
    fixed = hyper._replace(adapt=jnp.asarray(False))
    for name in ("breast-cancer", "digits-oddeven"):
        d = load_dataset(name)
        x, labels = d.x_train, d.y_train
        f_ref, w_ref = reference(x, labels)
        acc_ref = test_accuracy(w_ref, d)
        print(f"\n## {name}: {x.shape[0]} x {x.shape[1]} (+ bias), LinearSVC objective "
              f"{f_ref:.4f}; iterations and time to a {GAP:g} relative gap")

        parts = partition(labels, 5, "dirichlet-sizes", seed=0, alpha=2.0, min_size=20)
        samples = admm_data.split_samples(x, labels, 2, parts)
        step = jax.jit(lambda s, h=hyper, dd=samples: admm.consensus_step(s, dd, h))
        n, state = iterations_to_gap(step, admm.consensus_init(samples), f_ref)
        sizes = [len(p) for p in parts]
        report(f"samples, N=5 {sizes}", n,
               time_steps(lambda s, h=hyper, dd=samples: admm.consensus_step(s, dd, h),
                          admm.consensus_init(samples), n), state.z, d, acc_ref)

        blocks = admm_data.even_blocks(x.shape[1] + 1, 4)
        feats = admm_data.split_features(x, labels, 2, blocks)
        step = jax.jit(lambda s, h=hyper, dd=feats: admm.sharing_step(s, dd, h))
        n, state = iterations_to_gap(step, admm.sharing_init(feats), f_ref)
        report(f"features, N=4 {blocks}", n,
               time_steps(lambda s, h=hyper, dd=feats: admm.sharing_step(s, dd, h),
                          admm.sharing_init(feats), n),
               admm_data.sharing_weights(state, feats), d, acc_ref)

        groups = admm_data.split_groups(x, labels, 2, parts, [[0, 1, 2], [3, 4]])
        for kappa, top in ((1, hyper), (2, hyper), (5, hyper), (1, fixed), (2, fixed),
                           (5, fixed)):
            hstep = functools.partial(admm.hier_step, data=groups, hyper=hyper, top=top,
                                      kappa=kappa)
            n, state = iterations_to_gap(hstep, admm.hier_init(groups), f_ref)
            rho = "adaptive" if top is hyper else "fixed"
            report(f"two levels, G=2 (3+2), kappa={kappa}, {rho} rho_top", n,
                   time_steps(hstep, admm.hier_init(groups), n), state.z, d, acc_ref)

        print("  fixed vs adaptive rho, iterations to the gap:")
        for label, init, stepf, data, rhos in (
                ("samples N=5", admm.consensus_init, admm.consensus_step, samples,
                 (0.1, 1.0, 3.0, 10.0, 100.0)),
                ("features N=4", admm.sharing_init, admm.sharing_step, feats,
                 (0.01, 0.1, 1.0, 10.0))):
            row = []
            for rho in rhos:
                counts = []
                for h in (fixed, hyper):
                    step = jax.jit(lambda s, h=h, f=stepf, dd=data: f(s, dd, h))
                    counts.append(iterations_to_gap(step, init(data, rho=rho), f_ref)[0])
                shown = [str(c) if c <= MAX_ITER else f">{MAX_ITER}" for c in counts]
                row.append(f"rho0={rho:g}: {shown[0]} / {shown[1]}")
            print(f"    {label:<13} (fixed / adaptive)  " + ";  ".join(row))

        # The x-update's share of one consensus iteration (N = 5): timed alone, and as the
        # step's time with one coordinate-descent sweep minus its time with none.
        dev = jax.device_put(samples)
        state = admm.consensus_init(dev)
        for _ in range(3):  # past the first iterations' all-zero duals
            state, _ = admm.consensus_step(state, dev, hyper)
        xu = jax.vmap(jax.vmap(admm.x_update, (None, 0, None, 0, 0, 0, 0, None)),
                      (0, 0, 0, None, 0, 0, None, None))
        t_x = median_time(jax.jit(xu), dev.A, dev.y, dev.mask, state.z, state.u, state.alpha,
                          state.rho, hyper.C)
        t_step = median_time(admm.consensus_step, state, dev, hyper)
        t_none = median_time(functools.partial(admm.consensus_step, sweeps=0), state, dev,
                             hyper)
        print(f"  x-update in a consensus iteration (N=5): alone {t_x * 1e3:.3f} ms, step "
              f"{t_step * 1e3:.3f} ms, step without the sweep {t_none * 1e3:.3f} ms: "
              f"share {1 - t_none / t_step:.0%}")

    # 100 workers vs 1 worker with every row (digits-oddeven, one iteration each).
    d = load_dataset("digits-oddeven")
    x, labels = d.x_train, d.y_train
    times = {}
    for n_workers in (1, 100):
        parts = partition(labels, n_workers, "iid", seed=0)
        data = jax.device_put(admm_data.split_samples(x, labels, 2, parts))
        state = admm.consensus_init(data)
        for _ in range(3):  # past the first iterations' all-zero duals
            state, _ = admm.consensus_step(state, data, hyper)
        times[n_workers] = median_time(admm.consensus_step, state, data, hyper)
        print(f"\none consensus iteration, digits-oddeven, {n_workers} worker(s) of "
              f"{data.A.shape[1]} rows: {times[n_workers] * 1e3:.3f} ms", end="")
    print(f"\nratio 100 workers / 1 worker: {times[100] / times[1]:.3f}")


if __name__ == "__main__":
    main()
