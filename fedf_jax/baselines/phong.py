"""Phong and Phuong's weight transmission (IEEE TIFS 2019) on FEDF's harness.

The master-worker variant: in each epoch the model visits the workers in turn,
k = 0, ..., N-1. Worker k downloads the current weights, trains on its private
data with its private spec (same PRNG stream and optimizer state as a FEDF
worker) and uploads the weights, which the next worker downloads:

    W <- Q_k(W)   for k = 0, ..., N-1;   P^t = W.

Training is sequential, so an epoch costs the sum of the workers' compute, and
the paper counts 2 N V bytes per epoch (Table 3): each worker downloads and
uploads the whole model once.
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


class State(NamedTuple):
    p: jax.Array  # f32[M] the weights being passed on
    opt_states: tuple  # one stacked optimizer state per group
    epoch: jax.Array  # i32[]


def _row(tree, i):
    return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), tree)


def train_one(model, group: vmap_backend.Group, p, opt_state, gd: vmap_backend.GroupData,
              i, train_key, epoch):
    """Row ``i`` of a group trains from ``p`` (no cost pass). -> (q, its opt state, finite)."""
    key = worker.worker_key(train_key, epoch, gd.ids[i])
    o = _row(opt_state, i)
    q, o = worker.local_train(model, group.kind, group.shapes, p, o, gd.x[i], gd.y[i],
                              gd.sizes[i], _row(gd.hp, i), key)
    ok = jnp.all(jnp.isfinite(q))
    q = jnp.where(ok, q, p)  # a worker that diverges passes the weights on unchanged
    opt_state = jax.tree.map(lambda a, b: a.at[i].set(jnp.where(ok, b, a[i])), opt_state, o)
    return q, opt_state, ok


def make_runner(cfg, s) -> Runner:
    """The model passes through the workers in id order every epoch."""
    plan, data = s.plan, s.data
    init = vmap_backend.init_state(plan, data, s.p0)
    state = State(jnp.copy(s.p0), init.opt_states, jnp.int32(1))
    compiler = Compiler()
    steps = [compiler(jax.jit(functools.partial(train_one, s.model, g), donate_argnums=(1,)),
                      state.p, o, gd, np.int32(0), data.train_key, np.int32(1))
             for g, gd, o in zip(plan.groups, data.groups, state.opt_states, strict=True)]
    where = {}  # worker id -> (group index, row)
    for gi, g in enumerate(plan.groups):
        for r, k in enumerate(g.rows):
            where[k] = (gi, r)
    evaluate = compiler(jax.jit(lambda p: worker.evaluate(
        s.model, p, data.x_test, data.y_test, data.y_test.shape[0], plan.test_chunk)), state.p)
    n = plan.n_workers

    def run(state, count):
        outs = []
        for _ in range(count):
            p, opt_states, t = state.p, list(state.opt_states), int(state.epoch)
            finite = []
            for k in range(n):
                gi, r = where[k]
                p, opt_states[gi], ok = steps[gi](p, opt_states[gi], data.groups[gi],
                                                  np.int32(r), data.train_key, np.int32(t))
                finite.append(ok)
            loss, acc = evaluate(p)
            state = State(p, tuple(opt_states), jnp.int32(t + 1))
            outs.append(host_outputs({"costs": np.full(n, np.nan), "finite": finite,
                                      "test_loss": loss, "test_accuracy": acc}, t))
        return state, outs

    def record(out, wall_s):
        counted = model_exchange_bytes(s.model.num_params, n, n)
        modeled = timing.sequential_epoch_s(wall_s, counted.total, cfg.bandwidth, cfg.latency,
                                            rounds=2 * n)
        return epoch_record(out, counted, wall_s, modeled,
                            dropped=np.flatnonzero(~np.asarray(out["finite"])).tolist())

    return Runner(run, state, [str(jax.devices()[0])], record, lambda st: st.p,
                  compile_s=compiler.seconds)
