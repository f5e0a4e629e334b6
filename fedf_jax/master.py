"""The master side of one global epoch (Algorithm 1): state, pilot choice, update.

Pure functions of a :class:`MasterState` pytree; every backend calls these, so
the vmap, sharded and MPI backends make the same choices from the same inputs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fedf_jax import codec, protocol


@dataclasses.dataclass(frozen=True)
class MasterConfig:
    """The master's public settings.

    Attributes:
      alpha0: the master's learning rate (Eq. 3 at t = 1).
      beta: beta_k in (0, 1), one value for all workers or one per worker (Eq. 3, 5).
      direction: the sign d of Eq. (3): +1 (Appendix A) or -1 (as printed).
      scheme: ternary packing on the wire, ``"2bit"`` or ``"base3"``.
    """

    alpha0: float = 0.01
    beta: float | tuple[float, ...] = 0.2
    direction: int = 1
    scheme: str = "2bit"

    def __post_init__(self):
        if not (math.isfinite(self.alpha0) and self.alpha0 >= 0):
            raise ValueError(f"`alpha0` (={self.alpha0}) must be a finite number >= 0.")
        for b in (self.beta if isinstance(self.beta, tuple) else (self.beta,)):
            if not 0 < b < 1:
                raise ValueError(f"`beta` (={b}) must be in the open interval (0, 1).")
        if self.direction not in (1, -1):
            raise ValueError(f"`direction` (={self.direction}) must be +1 or -1.")
        if self.scheme not in codec.SCHEMES:
            raise ValueError(f"`scheme` (={self.scheme!r}) must be one of {codec.SCHEMES}.")

    def betas(self, n_workers: int) -> jax.Array:
        """beta as f32[N]."""
        if isinstance(self.beta, tuple):
            if len(self.beta) != n_workers:
                raise ValueError(f"`beta` has {len(self.beta)} values for {n_workers} workers.")
            return jnp.asarray(self.beta, jnp.float32)
        return jnp.full((n_workers,), self.beta, jnp.float32)


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


def select(state: MasterState, costs: ArrayLike, sizes: ArrayLike) -> Selection:
    """Goodness (Eq. 1) and pilot choice (Algorithm 1, lines 3-4)."""
    costs = jnp.asarray(costs, jnp.float32)
    g = protocol.goodness(costs, state.prev_costs, sizes, state.epoch)
    return Selection(g, protocol.select_pilot(g), jnp.isfinite(costs))


def update(state: MasterState, sel: Selection, costs: ArrayLike, q_pilot: ArrayLike,
           packed: ArrayLike, sizes: ArrayLike, betas: ArrayLike, cfg: MasterConfig
           ) -> MasterState:
    """Eq. (3) from the pilot's model and the packed ternaries (Algorithm 1, lines 5-8).

    Ternaries of workers with a non-finite cost are dropped. With no usable pilot
    the global model stays P^{t-1} (the epoch still advances).

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
    p_new = protocol.unpack_update(
        q_pilot, packed, sizes, sel.pilot, state.p_prev, state.p_prev2, cfg.alpha0, betas,
        state.epoch, direction=cfg.direction, scheme=cfg.scheme, mask=sel.valid)
    p_new = jnp.where(sel.pilot >= 0, p_new, state.p_prev)
    return MasterState(p_new, state.p_prev, jnp.asarray(costs, jnp.float32), state.epoch + 1)
