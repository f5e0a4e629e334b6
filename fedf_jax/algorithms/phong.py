"""Phong and Phuong's weight transmission (IEEE TIFS 2019) on the harness.

The master-worker variant: in each epoch the model visits the workers in turn,
k = 0, ..., N-1. Worker k downloads the current weights, trains on its private
data with its private spec (same PRNG stream and optimizer state as a FEDF
worker) and uploads the weights, which the next worker downloads:

    W <- Q_k(W)   for k = 0, ..., N-1;   P^t = W.

Training is sequential, so an epoch costs the sum of the workers' compute, and
the paper counts 2 N V bytes per epoch (Table 3): each worker downloads and
uploads the whole model once. The epoch is one jitted ``lax.scan`` over the
workers in id order.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedf_jax import keys, layout, timing, worker
from fedf_jax.algorithms.common import epoch_record, model_exchange_bytes
from fedf_jax.config import RunConfig
from fedf_jax.harness import Algorithm, Host
from fedf_jax.layout import Placement


class State(NamedTuple):
    p: jax.Array  # f32[M] the weights being passed on
    opt_states: tuple  # one stacked optimizer state per cohort
    epoch: jax.Array  # i32[]


def _row(tree, i):
    return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), tree)


def visit(model, cohort: layout.Cohort, c: int, p, opt_states: tuple, r, data: layout.Data,
          epoch):
    """Row ``r`` of cohort ``c`` trains from ``p`` (no cost pass).

    A worker that diverges passes the weights on unchanged.

    Returns:
      (q, opt_states, finite).
    """
    cd = data.cohorts[c]
    key = keys.worker_key(data.train_key, epoch, cd.ids[r])
    q, o = worker.local_train(model, cohort.kind, cohort.shapes, p, _row(opt_states[c], r),
                              cd.x[r], cd.y[r], cd.sizes[r], _row(cd.hp, r), key)
    ok = jnp.all(jnp.isfinite(q))
    updated = jax.tree.map(lambda a, b: a.at[r].set(jnp.where(ok, b, a[r])), opt_states[c], o)
    return jnp.where(ok, q, p), opt_states[:c] + (updated,) + opt_states[c + 1:], ok


def epoch(model, lay: layout.Layout, state: State, data: layout.Data):
    """One epoch: the model passes through the workers in id order; pure and jittable."""
    where = np.empty((lay.n_workers, 2), np.int32)  # worker -> (cohort, row)
    for c, cohort in enumerate(lay.cohorts):
        where[list(cohort.rows)] = np.stack([np.full(len(cohort.rows), c),
                                             np.arange(len(cohort.rows))], 1)
    branches = [functools.partial(visit, model, cohort, c) for c, cohort in enumerate(lay.cohorts)]

    def one(carry, cr):
        p, opt_states = carry
        p, opt_states, ok = jax.lax.switch(cr[0], branches, p, opt_states, cr[1], data,
                                           state.epoch)
        return (p, opt_states), ok

    (p, opt_states), finite = jax.lax.scan(one, (state.p, state.opt_states), jnp.asarray(where))
    loss, acc = worker.evaluate(model, p, data.x_test, data.y_test, data.y_test.shape[0],
                                lay.test_chunk)
    out = {"epoch": state.epoch, "costs": jnp.full((lay.n_workers,), jnp.nan),
           "finite": finite, "test_loss": loss, "test_accuracy": acc}
    return State(p, opt_states, state.epoch + 1), out


def make(cfg: RunConfig, host: Host, placement: Placement) -> Algorithm:
    """The model passes through the workers in id order every epoch."""
    n = cfg.n_workers
    w = host.workers(placement)

    def init() -> State:
        return State(jnp.copy(host.p0), layout.init_opt_states(w.layout, w.data, host.p0),
                     jnp.int32(1))

    def record(out, wall_s):
        counted = model_exchange_bytes(host.model.num_params, n, n)
        modeled = timing.sequential_epoch_s(wall_s, counted.total, cfg.run.bandwidth,
                                            cfg.run.latency, rounds=2 * n)
        return epoch_record(out, counted, wall_s, modeled,
                            dropped=np.flatnonzero(~np.asarray(out["finite"])).tolist())

    return Algorithm(init, functools.partial(epoch, host.model, w.layout), w.data, record,
                     lambda s: s.p, list(placement.devices), host.model.num_params)


__all__ = ["State", "visit", "epoch", "make"]
