"""The master side of one global epoch (Algorithm 1): state, pilot choice, update.

Pure functions of a :class:`MasterState` pytree; every backend calls these, so
the vmap, sharded and MPI backends make the same choices from the same inputs.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fedf_jax import guard as pilot_guard
from fedf_jax import protocol
from fedf_jax.config import MasterConfig


class MasterState(NamedTuple):
    p_prev: jax.Array  # f32[M]  P^{t-1}
    p_prev2: jax.Array  # f32[M]  P^{t-2}
    prev_costs: jax.Array  # f32[N]  C^{t-1}
    epoch: jax.Array  # i32[]    t, the epoch about to run (1-based)


def init(p0: ArrayLike, n_workers: int) -> MasterState:
    """The master before epoch 1: P^0 (also standing in for P^{-1}), no costs."""
    # Fresh buffers: the epoch step donates its state, and neither the caller's P^0
    # nor one buffer aliased twice may be donated.
    p0 = jnp.asarray(p0, jnp.float32)
    no_costs = jnp.full((n_workers,), jnp.nan, jnp.float32)
    return MasterState(jnp.copy(p0), jnp.copy(p0), no_costs, jnp.int32(1))


class Selection(NamedTuple):
    goodness: jax.Array  # f32[N]  Eq. (1)
    pilot: jax.Array  # i32[]    k*, -1 when no worker is usable
    valid: jax.Array  # bool[N] finite cost: its message counts


def guard_of(cfg: MasterConfig | None) -> pilot_guard.GuardConfig | None:
    """The pilot guard's knobs when ``cfg.pilot_guard`` is on (DESIGN §9), else None."""
    return pilot_guard.DEFAULT if cfg is not None and cfg.pilot_guard else None


def select(state: MasterState, costs: ArrayLike, sizes: ArrayLike,
           cfg: MasterConfig | None = None) -> Selection:
    """Goodness (Eq. 1) and pilot choice (Algorithm 1, lines 3-4).

    With ``cfg.pilot_guard`` the pilot is the argmax of the same goodness over the
    workers whose reported costs and sizes sit inside the guard's robust bands
    (``guard.admissible``); the goodness itself is Eq. (1)'s either way.
    """
    costs = jnp.asarray(costs, jnp.float32)
    g = protocol.goodness(costs, state.prev_costs, sizes, state.epoch)
    guard = guard_of(cfg)
    if guard is None:
        pilot = protocol.select_pilot(g)
    else:
        pilot = pilot_guard.select(g, pilot_guard.admissible(costs, state.prev_costs, sizes,
                                                             state.epoch, guard))
    return Selection(g, pilot, jnp.isfinite(costs))


def pilot_passes(state: MasterState, sel: Selection, q_pilot: ArrayLike, packed: ArrayLike,
                 betas: ArrayLike, cfg: MasterConfig) -> jax.Array:
    """bool[]: whether the pilot's model passes the guard's step check (DESIGN §9:
    ``guard.step_ok`` against the steps the others' ternaries imply); always True
    without ``cfg.pilot_guard``."""
    guard = guard_of(cfg)
    if guard is None:
        return jnp.bool_(True)
    return pilot_guard.step_ok_packed(q_pilot, state.p_prev, state.p_prev2, packed, sel.pilot,
                                      sel.valid, betas, state.epoch, guard, cfg.scheme)


def update(state: MasterState, sel: Selection, costs: ArrayLike, q_pilot: ArrayLike,
           packed: ArrayLike, sizes: ArrayLike, betas: ArrayLike, cfg: MasterConfig
           ) -> MasterState:
    """Eq. (3) from the pilot's model and the packed ternaries (Algorithm 1, lines 5-8).

    Ternaries of workers with a non-finite cost are dropped. With no usable pilot
    the global model stays P^{t-1} (the epoch still advances). With
    ``cfg.pilot_guard``, a pilot's model that fails :func:`pilot_passes` is replaced
    by P^{t-1}: P^t = P^{t-1} + d s sum_{k != k*} w_k T_k, the others' votes only.

    Args:
      state: the master before epoch t.
      sel: this epoch's selection.
      costs: f32[N] C^t (kept for the next goodness).
      q_pilot: f32[M] Q_{k*}^t.
      packed: u8[N, packed_size(M)] the workers' packed ternaries (pilot row ignored).
      sizes: [N] S_k; betas: f32[N].
      cfg: master settings.

    Returns:
      The master before epoch t + 1.
    """
    if cfg.pilot_guard:
        q_pilot = pilot_guard.pilot_model(
            q_pilot, state.p_prev, pilot_passes(state, sel, q_pilot, packed, betas, cfg))
    p_new = protocol.unpack_update(
        q_pilot, packed, sizes, sel.pilot, state.p_prev, state.p_prev2, cfg.alpha0, betas,
        state.epoch, direction=cfg.direction, scheme=cfg.scheme, mask=sel.valid)
    return _advance(state, sel, costs, p_new)


def _advance(state: MasterState, sel: Selection, costs: ArrayLike, p_new: jax.Array
             ) -> MasterState:
    """The master before epoch t + 1: P^t (P^{t-1} again when no pilot was usable)."""
    p_new = jnp.where(sel.pilot >= 0, p_new, state.p_prev)
    return MasterState(p_new, state.p_prev, jnp.asarray(costs, jnp.float32), state.epoch + 1)


def apply_total(state: MasterState, sel: Selection, costs: ArrayLike, q_pilot: ArrayLike,
                total: ArrayLike, c: ArrayLike, cfg: MasterConfig) -> MasterState:
    """Eq. (3) from the vote sum ``total`` = sum_{k != k*} w_k T_k and its scale ``c``
    (``protocol.update_weights``), e.g. the sum a secure aggregation returns: the master
    never sees a single ternary. As :func:`update` otherwise."""
    p_new = protocol.apply_votes(q_pilot, total, c, state.p_prev, state.p_prev2, state.epoch,
                                 cfg.direction)
    return _advance(state, sel, costs, p_new)


def apply_lanes(state: MasterState, sel: Selection, costs: ArrayLike, q_pilot: ArrayLike,
                lanes: tuple[jax.Array, ...], c: ArrayLike, cfg: MasterConfig) -> MasterState:
    """Eq. (3) from the vote sum sum_{k != k*} w_k T_k in the codec's lanes
    (``protocol.vote_lanes``), e.g. a streamed epoch's running sum (``--worker-chunk``):
    the last loop of :func:`update`'s fused kernel, so the same P^t from the same sum.
    As :func:`update` otherwise."""
    p_new = protocol.apply_lanes(q_pilot, lanes, c, state.p_prev, state.p_prev2, state.epoch,
                                 cfg.direction)
    return _advance(state, sel, costs, p_new)


__all__ = ["MasterConfig", "MasterState", "Selection", "init", "guard_of", "select",
           "pilot_passes", "update", "apply_total", "apply_lanes"]
