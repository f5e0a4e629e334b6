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
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedf_jax import layout, worker
from fedf_jax.algorithms.common import NO_BYTES, epoch_record
from fedf_jax.config import RunConfig
from fedf_jax.harness import Algorithm, Host
from fedf_jax.layout import Placement


class State(NamedTuple):
    p: jax.Array  # f32[M]
    opt_state: object  # the one worker's optimizer state (a stack of one)
    epoch: jax.Array  # i32[]


def epoch(model, lay: layout.Layout, state: State, data: layout.Data):
    """One epoch over all the data, then the test metrics of the new model."""
    (cohort,), (cd,) = lay.cohorts, data.cohorts
    q, costs, opt_state = layout.train_cohort(model, cohort, state.p, data.train_key,
                                              state.epoch, state.opt_state, cd)
    loss, acc = worker.evaluate(model, q[0], data.x_test, data.y_test, data.y_test.shape[0],
                                lay.test_chunk)
    out = {"epoch": state.epoch, "costs": costs, "test_loss": loss, "test_accuracy": acc}
    return State(q[0], opt_state, state.epoch + 1), out


def make(cfg: RunConfig, host: Host, placement: Placement) -> Algorithm:
    """One worker with the union of the run's worker data."""
    del placement  # one worker: one device
    ds = host.dataset
    spec = dataclasses.replace(cfg.specs[0], local_epochs=1)
    w = layout.build([spec], ds.x_train, ds.y_train, [host.union], betas=np.array([0.5]),
                     x_test=ds.x_test, y_test=ds.y_test, train_key=host.train_key,
                     augment=cfg.data.augment)

    def init() -> State:
        (opt,) = layout.init_opt_states(w.layout, w.data, host.p0)
        return State(jnp.copy(host.p0), opt, jnp.int32(1))

    def record(out, wall_s):
        return epoch_record(out, NO_BYTES, wall_s, wall_s)

    return Algorithm(init, functools.partial(epoch, host.model, w.layout), w.data, record,
                     lambda s: s.p, [str(jax.devices()[0])], host.model.num_params)


__all__ = ["State", "epoch", "make"]
