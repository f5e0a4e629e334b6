"""FedAvg (McMahan et al. 2017) on FEDF's harness.

Each round the master sends P^{t-1} to a sampled set of m = max(1, round(C N))
workers (C = ``fraction``; all workers when C = 1), each trains locally with its
private spec exactly as a FEDF worker does (same PRNG stream, same optimizer
state kept across rounds), sends its whole model back, and the master averages
the models weighted by example counts:

    P^t = sum_{k in sampled} S_k Q_k / sum_{k in sampled} S_k.

A worker whose model is not finite is dropped from the average (and logged);
with none left P^t = P^{t-1}. There is no cost pass: FedAvg does not need one.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedf_jax import timing, worker
from fedf_jax.backends import vmap as vmap_backend
from fedf_jax.baselines import Compiler, Runner, epoch_record, host_outputs, model_exchange_bytes

LINK_ROUNDS = 2  # model down, model up


class State(NamedTuple):
    p: jax.Array  # f32[M] P^{t-1}
    opt_states: tuple  # one stacked optimizer state per group
    epoch: jax.Array  # i32[] t


def sampled_count(n_workers: int, fraction: float) -> int:
    """m = max(1, round(C N)) workers per round."""
    return max(1, int(round(fraction * n_workers)))


def sample(key: jax.Array, epoch: jax.Array, n_workers: int, m: int) -> jax.Array:
    """bool[N]: the round's m workers, drawn without replacement from ``fold_in(key, t)``."""
    if m >= n_workers:
        return jnp.ones((n_workers,), bool)
    pick = jax.random.choice(jax.random.fold_in(key, epoch), n_workers, (m,), replace=False)
    return jnp.zeros((n_workers,), bool).at[pick].set(True)


def local_models(model, plan: vmap_backend.Plan, p, opt_states, data: vmap_backend.SimData,
                 epoch):
    """Every worker trains from ``p`` (Algorithm 2's training, no cost pass).

    Returns:
      (q, opt_states): f32[N, M] in worker order, the new optimizer states per group.
    """
    qs, states = [], []
    for g, gd, o in zip(plan.groups, data.groups, opt_states, strict=True):
        keys = jax.vmap(worker.worker_key, in_axes=(None, None, 0))(data.train_key, epoch,
                                                                   gd.ids)
        fn = functools.partial(worker.local_train, model, g.kind, g.shapes)
        q, o = jax.vmap(fn, in_axes=(None, 0, 0, 0, 0, 0, 0))(p, o, gd.x, gd.y, gd.sizes,
                                                              gd.hp, keys)
        qs.append(q)
        states.append(o)
    q = jnp.concatenate(qs)
    if len(plan.groups) > 1:
        q = q[np.argsort(plan.order)]
    return q, tuple(states)


def keep_unsampled(plan: vmap_backend.Plan, sampled: jax.Array, new, old) -> tuple:
    """Optimizer states: a worker that did not train this round keeps its old one."""
    out = []
    for g, n, o in zip(plan.groups, new, old, strict=True):
        rows = sampled[np.asarray(g.rows)]
        out.append(jax.tree.map(
            lambda a, b, rows=rows: jnp.where(rows.reshape((-1,) + (1,) * (a.ndim - 1)), a, b),
            n, o))
    return tuple(out)


def average(p: jax.Array, q: jax.Array, sizes: jax.Array, use: jax.Array) -> jax.Array:
    """FedAvg's master step: ``sum_{k in use} S_k Q_k / sum_{k in use} S_k``, or ``p``
    when no model is usable. f32[M]."""
    w = jnp.where(use, jnp.asarray(sizes, jnp.float32), 0.0)
    total = w.sum()
    p_new = jnp.einsum("n,nm->m", w / jnp.maximum(total, 1e-30),
                       jnp.where(use[:, None], q, 0.0))
    return jnp.where(total > 0, p_new, p)


def epoch(model, plan: vmap_backend.Plan, m: int, sample_key: jax.Array, state: State,
          data: vmap_backend.SimData):
    """One FedAvg round; pure and jittable."""
    n = plan.n_workers
    q, opt_states = local_models(model, plan, state.p, state.opt_states, data, state.epoch)
    sampled = sample(sample_key, state.epoch, n, m)
    finite = jnp.all(jnp.isfinite(q), axis=1)
    p_new = average(state.p, q, data.sizes, sampled & finite)
    loss, acc = worker.evaluate(model, p_new, data.x_test, data.y_test, data.y_test.shape[0],
                                plan.test_chunk)
    out = {"costs": jnp.full((n,), jnp.nan), "sampled": sampled, "finite": finite,
           "test_loss": loss, "test_accuracy": acc}
    new_states = keep_unsampled(plan, sampled, opt_states, state.opt_states)
    return State(p_new, new_states, state.epoch + 1), out


def make_runner(cfg, s) -> Runner:
    """FedAvg over the run's workers (``cfg.fraction`` of them per round)."""
    m = sampled_count(cfg.workers, cfg.fraction)
    sample_key = jax.random.fold_in(jax.random.key(cfg.seed), 2)
    init = vmap_backend.init_state(s.plan, s.data, s.p0)
    state = State(jnp.copy(s.p0), init.opt_states, jnp.int32(1))
    compiler = Compiler()
    step = compiler(jax.jit(functools.partial(epoch, s.model, s.plan, m, sample_key),
                            donate_argnums=0), state, s.data)
    work = timing.work_units(s.sizes, [sp.local_epochs for sp in cfg.specs], cost_pass=False)

    def run(state, n):
        outs = []
        for _ in range(n):
            t = int(state.epoch)
            state, out = step(state, s.data)
            outs.append(host_outputs(out, t))
        return state, outs

    def record(out, wall_s):
        sampled = np.asarray(out["sampled"])
        counted = model_exchange_bytes(s.model.num_params, int(sampled.sum()),
                                       int(sampled.sum()))
        dropped = np.flatnonzero(sampled & ~np.asarray(out["finite"])).tolist()
        modeled = timing.modeled_epoch_s(wall_s, work, counted.total, cfg.bandwidth,
                                         cfg.latency, active=sampled, rounds=LINK_ROUNDS)
        rec = epoch_record(out, counted, wall_s, modeled, dropped=dropped)
        rec["sampled"] = np.flatnonzero(sampled).tolist()
        return rec

    return Runner(run, state, [str(jax.devices()[0])], record, lambda st: st.p,
                  compile_s=compiler.seconds)
