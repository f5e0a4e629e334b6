"""Centralized training: the paper's reference line (Table 1, Table 2 first row).

The same model, data and training loop as a FEDF worker, on the union of all the
workers' data: one worker holding everything, trained for the same number of
epochs with the same private spec (one local epoch per epoch).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedf_jax import worker
from fedf_jax.backends import vmap as vmap_backend
from fedf_jax.models import Model


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


def run(model: Model, spec: worker.WorkerSpec, x: np.ndarray, y: np.ndarray, x_test, y_test,
        p0: jax.Array, train_key: jax.Array, epochs: int) -> list[dict[str, Any]]:
    """Trains centrally from P^0; returns one record per epoch (train cost, test metrics)."""
    spec = dataclasses.replace(spec, local_epochs=1)
    plan = vmap_backend.make_plan([spec], [len(y)], len(y_test))
    data = vmap_backend.make_data(plan, x[None], y[None], np.array([len(y)]), [spec],
                                  np.array([0.5]), x_test, y_test, train_key)
    (gd,) = data.groups
    opt_state = jax.vmap(functools.partial(worker.init_opt_state, spec.optimizer),
                         in_axes=(0, None))(gd.hp, p0)
    step = make_step(model, plan)
    p, records = jnp.asarray(p0), []
    for t in range(1, epochs + 1):
        p, opt_state, cost, loss, acc = step(p, opt_state, gd, data.x_test, data.y_test,
                                             train_key, t)
        records.append({"epoch": t, "train_cost": float(cost), "test_loss": float(loss),
                        "test_accuracy": float(acc)})
    return records
