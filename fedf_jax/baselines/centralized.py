"""Centralized training: the paper's reference line (Table 1, Table 2 first row).

The same model, data and training loop as a FEDF worker, on the union of all the
workers' data: one worker holding everything (global id 0, so its PRNG stream is
worker 0's), trained for the same number of epochs with the first worker's
private spec and one local epoch per epoch. No bytes move; an epoch's modeled
time is its measured compute.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedf_jax import codec, worker
from fedf_jax.backends import vmap as vmap_backend
from fedf_jax.baselines import Compiler, Runner, epoch_record, host_outputs
from fedf_jax.models import Model

NO_BYTES = codec.EpochBytes(0, 0, 0, 0, 0, 0)


def make_step(model: Model, plan: vmap_backend.Plan):
    """One jitted centralized epoch: train, then test metrics of the new model."""
    (group,) = plan.groups

    def step(p, opt_state, gd: vmap_backend.GroupData, x_test, y_test, train_key, t):
        q, costs, opt_state = vmap_backend.train_group(model, group, p, opt_state, gd,
                                                       train_key, t)
        loss, acc = worker.evaluate(model, q[0], x_test, y_test, y_test.shape[0],
                                    plan.test_chunk)
        return q[0], opt_state, costs[0], loss, acc

    return jax.jit(step)


def _prepare(model: Model, spec: worker.WorkerSpec, x, y, x_test, y_test, p0, train_key):
    spec = dataclasses.replace(spec, local_epochs=1)
    plan = vmap_backend.make_plan([spec], [len(y)], len(y_test))
    data = vmap_backend.make_data(plan, np.asarray(x)[None], np.asarray(y)[None],
                                  np.array([len(y)]), [spec], np.array([0.5]), x_test, y_test,
                                  train_key)
    (gd,) = data.groups
    opt_state = jax.vmap(functools.partial(worker.init_opt_state, spec.optimizer),
                         in_axes=(0, None))(gd.hp, p0)
    return make_step(model, plan), gd, data, opt_state


def run(model: Model, spec: worker.WorkerSpec, x: np.ndarray, y: np.ndarray, x_test, y_test,
        p0: jax.Array, train_key: jax.Array, epochs: int) -> list[dict[str, Any]]:
    """Trains centrally from P^0; returns one record per epoch (train cost, test metrics)."""
    step, gd, data, opt_state = _prepare(model, spec, x, y, x_test, y_test, p0, train_key)
    p, records = jnp.asarray(p0), []
    for t in range(1, epochs + 1):
        p, opt_state, cost, loss, acc = step(p, opt_state, gd, data.x_test, data.y_test,
                                             train_key, t)
        records.append({"epoch": t, "train_cost": float(cost), "test_loss": float(loss),
                        "test_accuracy": float(acc)})
    return records


def make_runner(cfg, s) -> Runner:
    """``algorithm='central'``: one worker with the union of the run's worker data."""
    ds = s.dataset
    step, gd, data, opt_state = _prepare(s.model, cfg.specs[0], ds.x_train[s.union],
                                         ds.y_train[s.union], ds.x_test, ds.y_test, s.p0,
                                         s.data.train_key)
    compiler = Compiler()
    step = compiler(step, jnp.asarray(s.p0), opt_state, gd, data.x_test, data.y_test,
                    data.train_key, np.int32(1))

    def run(state, n):
        p, opt_state, t = state
        outs = []
        for _ in range(n):
            p, opt_state, cost, loss, acc = step(p, opt_state, gd, data.x_test, data.y_test,
                                                 data.train_key, np.int32(t))
            outs.append(host_outputs({"costs": cost, "test_loss": loss,
                                      "test_accuracy": acc}, t))
            t += 1
        return (p, opt_state, t), outs

    def record(out, wall_s):
        return epoch_record(out, NO_BYTES, wall_s, wall_s)

    return Runner(run, (jnp.copy(s.p0), opt_state, 1), [str(jax.devices()[0])], record,
                  lambda st: st[0], compile_s=compiler.seconds)

