"""FEDF (Algorithms 1 and 2 of the paper) as an algorithm of the harness.

One epoch is a pure function ``(State, layout.Data) -> (State, outputs)``: every
worker trains (one vmap per cohort, spread where its rows live), reports its cost
and packs its ternary (the fused kernel, Eq. 4/5); the master picks the pilot
(Eq. 1), reads its model, unpacks and updates (the fused kernel, Eq. 3), then P^t
is evaluated on the test set. :func:`workers_side` and :func:`master_side` are the
two halves that the MPI ranks run apart, with frames in between; every equation
is ``protocol``'s, reached through ``worker`` and ``master``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedf_jax import codec, layout, master, timing, worker
from fedf_jax.algorithms.common import Level, epoch_record
from fedf_jax.config import MasterConfig, RunConfig
from fedf_jax.harness import Algorithm, Host
from fedf_jax.layout import Placement
from fedf_jax.models import Model

log = logging.getLogger(__name__)


class State(NamedTuple):
    master: master.MasterState
    opt_states: tuple  # one stacked optimizer state per cohort


class CohortOut(NamedTuple):
    """What a cohort's workers produce in one epoch (Algorithm 2), one row each."""

    q: jax.Array  # f32[R, M] local models (only the pilot's leaves its worker)
    costs: jax.Array  # f32[R] C_k^t
    packed: jax.Array  # u8[R, packed_size(M)] ternaries (Eq. 4/5), fused and packed
    nonzero: jax.Array  # i32[R] non-zero trits of each T_k
    opt_state: Any


def cohort_side(model: Model, cohort: layout.Cohort, scheme: str, p_prev: jax.Array,
                p_prev2: jax.Array, epoch: jax.Array, train_key: jax.Array, opt_state,
                cd: layout.CohortData) -> CohortOut:
    """Every row of one cohort: train, cost, packed ternary.

    Each worker packs its ternary before the master's command arrives (it does not
    depend on who the pilot is); the master ignores the pilot's row.
    """
    q, costs, opt_state = layout.train_cohort(model, cohort, p_prev, train_key, epoch,
                                              opt_state, cd)
    packed, nonzero = jax.vmap(worker.ternary_message, in_axes=(0, None, None, 0, 0, None, None))(
        q, p_prev, p_prev2, cd.alpha, cd.beta, epoch, scheme)
    return CohortOut(q, costs, packed, nonzero, opt_state)


def workers_side(model: Model, lay: layout.Layout, scheme: str, spread: Callable,
                 p_prev: jax.Array, p_prev2: jax.Array, epoch: jax.Array, opt_states,
                 data: layout.Data) -> list[CohortOut]:
    """Every worker's side of one epoch, cohort by cohort, where the rows live."""
    return [spread(functools.partial(cohort_side, model, c, scheme), 4)(
                p_prev, p_prev2, epoch, data.train_key, o, cd)
            for c, cd, o in zip(lay.cohorts, data.cohorts, opt_states, strict=True)]


def conclude(model: Model, test_chunk: int, cfg: MasterConfig, ms: master.MasterState,
             sel: master.Selection, costs, q_pilot, packed, sizes, betas, x_test, y_test):
    """The master once the pilot's model and the ternaries are in: Eq. (3) (the fused
    unpack-and-update kernel) and the test metrics of P^t.

    Returns:
      (master state before epoch t + 1, test loss, test accuracy).
    """
    new = master.update(ms, sel, costs, q_pilot, packed, sizes, betas, cfg)
    loss, acc = worker.evaluate(model, new.p_prev, x_test, y_test, y_test.shape[0], test_chunk)
    return new, loss, acc


def combine(lay: layout.Layout, cfg: MasterConfig, state: State, data: layout.Data,
            outs: Sequence[CohortOut]) -> tuple[State, dict]:
    """The master's side on the gathered cohort outputs, without the test pass: pilot
    choice (Eq. 1), the pilot's model, Eq. (3) over the packed ternaries."""
    def gather(field):
        return layout.to_workers(lay, [getattr(o, field) for o in outs])

    costs, packed, nonzero = gather("costs"), gather("packed"), gather("nonzero")
    ms = state.master
    sel = master.select(ms, costs, data.sizes)
    q_pilot = layout.row_of(lay, [o.q for o in outs], jnp.maximum(sel.pilot, 0))
    new_master = master.update(ms, sel, costs, q_pilot, packed, data.sizes, data.betas, cfg)
    out = {"epoch": ms.epoch, "costs": costs, "goodness": sel.goodness, "pilot": sel.pilot,
           "valid": sel.valid, "nonzero": nonzero}
    return State(new_master, tuple(o.opt_state for o in outs)), out


def master_side(model: Model, lay: layout.Layout, cfg: MasterConfig, state: State,
                data: layout.Data, outs: Sequence[CohortOut]) -> tuple[State, dict]:
    """The master's side (:func:`combine`), then the test metrics of P^t."""
    new, out = combine(lay, cfg, state, data, outs)
    loss, acc = worker.evaluate(model, new.master.p_prev, data.x_test, data.y_test,
                                data.y_test.shape[0], lay.test_chunk)
    return new, {**out, "test_loss": loss, "test_accuracy": acc}


def epoch(model: Model, lay: layout.Layout, cfg: MasterConfig, spread: Callable,
          state: State, data: layout.Data) -> tuple[State, dict]:
    """One FEDF global epoch for all workers (Algorithms 1 and 2); pure and jittable."""
    ms = state.master
    outs = workers_side(model, lay, cfg.scheme, spread, ms.p_prev, ms.p_prev2, ms.epoch,
                        state.opt_states, data)
    return master_side(model, lay, cfg, state, data, outs)


def group_epoch(model: Model, lay: layout.Layout, cfg: MasterConfig, spread: Callable,
                state: State, data: layout.Data) -> tuple[State, dict]:
    """One FEDF epoch of a group's workers under its group master, without a test pass
    (an inner epoch of the hierarchy)."""
    ms = state.master
    outs = workers_side(model, lay, cfg.scheme, spread, ms.p_prev, ms.p_prev2, ms.epoch,
                        state.opt_states, data)
    return combine(lay, cfg, state, data, outs)


def level(cfg: RunConfig, model: Model, lay: layout.Layout, betas_g: np.ndarray,
          placement: Placement = layout.HERE) -> Level:
    """FEDF as one level of the hierarchy (DESIGN §8).

    Each outer epoch the group's P^{t-1} becomes the top's model and its P^{t-2} stays
    the model its workers last trained from (with one group and one inner epoch: the
    flat run's). A group master is one worker of the top level: S_g the sum of its
    workers' S_k, C_g the S_k-weighted mean of their last costs (finite ones; NaN if
    none), Q_g the group's model after its inner epochs. The top runs Eq. (1), (3),
    (4)/(5) over the G groups. The threshold of Eq. (4) for a group is the master's
    public alpha0 (its workers' learning rates are private), beta_g the mean of its
    workers' beta_k.

    Args:
      betas_g: f32[G] each group's beta.
    """
    scheme, m = cfg.master.scheme, model.num_params

    def reset(g: State, top: master.MasterState) -> State:
        # P^{t-1} becomes the top's; P^{t-2} stays the model the group's workers last
        # trained from (what each of them holds: no second model goes down).
        return g._replace(master=g.master._replace(p_prev=top.p_prev))

    def contribution(g: State, data: layout.Data, out: dict):
        ok = jnp.isfinite(out["costs"]) & (data.sizes > 0)
        w = jnp.where(ok, data.sizes, 0.0)
        cost = jnp.where(w.sum() > 0, jnp.sum(w * jnp.where(ok, out["costs"], 0.0))
                         / jnp.maximum(w.sum(), 1.0), jnp.nan)
        return g.master.p_prev, cost, jnp.sum(data.sizes)

    def top_step(top: master.MasterState, q, costs, sizes, x_test, y_test):
        betas = jnp.asarray(betas_g, jnp.float32)
        packed, nonzero = jax.vmap(worker.ternary_message,
                                   in_axes=(0, None, None, None, 0, None, None))(
            q, top.p_prev, top.p_prev2, cfg.master.alpha0, betas, top.epoch, scheme)
        sel = master.select(top, costs, sizes)
        new, loss, acc = conclude(model, lay.test_chunk, cfg.master, top, sel, costs,
                                  q[jnp.maximum(sel.pilot, 0)], packed, sizes, betas, x_test,
                                  y_test)
        return new, {"epoch": top.epoch, "goodness": sel.goodness, "pilot": sel.pilot,
                     "valid": sel.valid, "nonzero": nonzero, "test_loss": loss,
                     "test_accuracy": acc}

    return Level(functools.partial(init, placement=placement),
                 functools.partial(group_epoch, model, lay, cfg.master, placement.spread),
                 reset, contribution, lambda p0, g: master.init(p0, g), top_step,
                 lambda top: top.p_prev, lambda k: codec.epoch_bytes(m, k, scheme))


def make_record(cfg: RunConfig, sizes, n_params: int) -> Callable[[dict, float], dict]:
    """The run-log line of one FEDF epoch from its host outputs.

    ``frame_ok`` (bool[N], MPI) marks the workers whose frame passed every check; a
    ternary that did not arrive is no vote and stays out of the non-zero fraction.
    """
    n, scheme = cfg.n_workers, cfg.master.scheme
    work = timing.work_units(sizes, [s.local_epochs for s in cfg.specs])

    def record(out: dict[str, Any], wall_s: float) -> dict[str, Any]:
        pilot = int(out["pilot"])
        counted = codec.epoch_bytes(n_params, n, scheme, has_pilot=pilot >= 0)
        valid = np.asarray(out["valid"], bool)
        senders = valid & np.asarray(out.get("frame_ok", True)) & (np.arange(n) != pilot)
        nz = float(np.asarray(out["nonzero"])[senders].sum()) / max(senders.sum() * n_params, 1)
        dropped = np.flatnonzero(~valid).tolist()
        modeled = timing.modeled_epoch_s(wall_s, work, counted.total, cfg.run.bandwidth,
                                         cfg.run.latency)
        rec = epoch_record(out, counted, wall_s, modeled, pilot=pilot,
                           goodness=out["goodness"], nonzero_fraction=nz, dropped=dropped)
        if dropped:
            log.warning("epoch %d: workers %s reported a non-finite cost; their ternaries "
                        "were dropped%s", rec["epoch"], dropped,
                        "" if pilot >= 0 else " and no pilot was usable (P^t = P^{t-1})")
        return rec

    return record


def init(lay: layout.Layout, data: layout.Data, p0: jax.Array,
         placement: Placement = layout.HERE) -> State:
    """P^0 at the master and a fresh optimizer state at every worker (fresh buffers)."""
    opt = layout.init_opt_states(lay, data, p0)
    return State(jax.tree.map(placement.put, master.init(p0, lay.n_workers)),
                 jax.tree.map(placement.put_rows, opt))


def make(cfg: RunConfig, host: Host, placement: Placement) -> Algorithm:
    """FEDF over the run's workers, placed by the backend."""
    w = host.workers(placement)
    step = functools.partial(epoch, host.model, w.layout, cfg.master, placement.spread)
    return Algorithm(functools.partial(init, w.layout, w.data, host.p0, placement), step,
                     w.data, make_record(cfg, w.sizes, host.model.num_params),
                     lambda s: s.master.p_prev, list(placement.devices), host.model.num_params)


__all__ = ["State", "CohortOut", "cohort_side", "workers_side", "conclude", "master_side",
           "epoch", "group_epoch", "level", "make_record", "init", "make"]
