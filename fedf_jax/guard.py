"""A guard on the pilot choice (DESIGN §9): robust bounds on the self-reported costs and
sizes, and a check of the pilot's step against the steps the others' ternaries imply.

Eq. (1) takes every worker's cost C_k^t and size S_k at face value, so a worker that
lies (DESIGN §7) or diverges (a huge learning rate: its cost falls from 1e5 to 1e4 and
``S (C^{t-1} - C^t)`` dwarfs every honest goodness) becomes the pilot, and Eq. (3)
makes its model the global one. The paper's rule stays the default; this guard is
the optional ``--pilot-guard``. Its rule, in two parts:

1. **Admissible pilots** (:func:`admissible`). Worker k may be the pilot only if its
   reported values sit inside robust bands around the other workers':

   - ``log S_k <= med(log S) + w(log S)`` (sizes: only an upper bound; a small size
     cannot win Eq. 1);
   - ``|log C_k^t - med(log C^t)| <= w(log C^t)``, and at t >= 2 the same for
     ``C_k^{t-1}`` (a cost must be finite and > 0);

   with the half-width ``w(v) = max(k_mad * 1.4826 * MAD(v), log_floor)``: ``1.4826 MAD``
   estimates a standard deviation robustly (the median and MAD ignore up to half of
   the workers), ``log_floor`` (a factor, ``log 4`` by default) keeps the band open
   when the honest values are nearly equal (MAD near 0). Medians and MADs run over the
   workers with a finite cost (every worker for the sizes). The pilot is then
   ``argmax G_k`` over the admissible workers (:func:`select`), -1 if none is.
   The bands are on the log scale because sizes and costs spread by factors, and a
   lie multiplies them.

2. **The pilot's step** (:func:`step_ok`). At t >= 2 a non-zero trit of worker k means
   ``|Q_k - P^{t-1}| >= beta_k |P^{t-1} - P^{t-2}|`` on that coordinate (Eq. 5), so
   ``r_k = beta_k ||(P^{t-1} - P^{t-2}) * 1[T_k != 0]||_2`` is the least step its
   ternary implies. The pilot's model passes if
   ``||Q_{k*} - P^{t-1}||_2 <= rho * max(med_k r_k, beta-bar ||P^{t-1} - P^{t-2}||_2 / sqrt(M))``
   over the other workers whose ternary counts (the second term only matters when
   every such ternary is zero). At t = 1 the threshold of Eq. (4) is each worker's
   private alpha_k: the ternaries imply no step size and the check passes. A refused
   model is not used: :func:`pilot_model` puts P^{t-1} in its place, so
   ``P^t = P^{t-1} + d sum_{k != k*} w_k T_k s`` (the others' votes only).

Breakdown: the medians ignore fewer than half of the workers, so a colluding
majority that lies alike moves the bands with it (measured in the attack suite, E12).

Every function is pure and jittable (``epoch`` may be traced); ``GuardConfig`` is a
NamedTuple of floats, so it can be traced too.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fedf_jax import codec, protocol

_f32 = jnp.float32
MAD_TO_SD = 1.4826  # 1 / Phi^-1(3/4): MAD * this estimates a normal standard deviation


class GuardConfig(NamedTuple):
    """The guard's knobs.

    Attributes:
      k_mad: half-width of a band in robust standard deviations (1.4826 MAD).
      log_floor: least half-width of a band in log units (``log 4``: a factor of 4).
      rho: how many times the others' implied step the pilot's step may be. The default
        sits between the two populations of calibration runs on digits (honest pilots of
        heterogeneous workers: median ratio about 4, largest about 110; a worker at
        learning rate 1e6: above 1e5): the check is meant for steps off by orders of
        magnitude, the bands for lies.
    """

    k_mad: float = 5.0
    log_floor: float = math.log(4.0)
    rho: float = 1000.0


DEFAULT = GuardConfig()


def check_config(cfg: GuardConfig) -> None:
    """Raises ValueError naming the first bad knob (call at the boundary, not under jit)."""
    for name in ("k_mad", "log_floor", "rho"):
        v = float(getattr(cfg, name))
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"`{name}` (={v}) must be a positive number.")


def robust_band(values: ArrayLike, mask: ArrayLike, k_mad: ArrayLike, floor: ArrayLike
                ) -> tuple[jax.Array, jax.Array]:
    """(median, half-width) of the masked values: ``max(k_mad * 1.4826 * MAD, floor)``.

    Args:
      values: f32[N]; mask: bool[N], the values that count (non-finite ones never do).
      k_mad, floor: see :class:`GuardConfig`.

    Returns:
      (f32[], f32[]); NaN median when no value counts.
    """
    v = jnp.asarray(values, _f32)
    use = jnp.asarray(mask, bool) & jnp.isfinite(v)
    v = jnp.where(use, v, jnp.nan)
    med = jnp.nanmedian(v)
    mad = jnp.nanmedian(jnp.abs(v - med))
    width = jnp.maximum(k_mad * MAD_TO_SD * jnp.nan_to_num(mad), floor)
    return med, width


def _log(x: jax.Array) -> jax.Array:
    """log x for x > 0, NaN otherwise (a cost or size <= 0 is never admissible)."""
    return jnp.where(x > 0, jnp.log(jnp.where(x > 0, x, 1.0)), jnp.nan)


def admissible(costs: ArrayLike, prev_costs: ArrayLike, sizes: ArrayLike, epoch: ArrayLike,
               cfg: GuardConfig = DEFAULT) -> jax.Array:
    """bool[N]: the workers the guard lets be the pilot (rule 1 of the module doc).

    Args:
      costs: f32[N] the reported C^t.
      prev_costs: f32[N] the reported C^{t-1} (ignored at t = 1).
      sizes: [N] the reported S_k.
      epoch: t, 1-based (may be traced).
      cfg: the guard's knobs.

    Returns:
      bool[N]; a worker with a non-finite or non-positive cost is never admissible.
    """
    log_c = _log(jnp.asarray(costs, _f32))
    log_p = _log(jnp.asarray(prev_costs, _f32))
    log_s = _log(jnp.asarray(sizes, _f32))
    finite = jnp.isfinite(log_c)
    med_s, w_s = robust_band(log_s, jnp.ones_like(finite), cfg.k_mad, cfg.log_floor)
    med_c, w_c = robust_band(log_c, finite, cfg.k_mad, cfg.log_floor)
    prev_ok = jnp.isfinite(log_p)
    med_p, w_p = robust_band(log_p, prev_ok & finite, cfg.k_mad, cfg.log_floor)
    ok = finite & (log_s <= med_s + w_s) & (jnp.abs(log_c - med_c) <= w_c)
    later = prev_ok & (jnp.abs(log_p - med_p) <= w_p)
    return ok & jnp.where(epoch == 1, True, later)


def select(goodness: ArrayLike, admissible_mask: ArrayLike) -> jax.Array:
    """The guarded pilot: argmax of Eq. (1)'s goodness over the admissible workers
    (``protocol.select_pilot``: lowest index on ties, -1 when none is admissible).

    Returns:
      i32[].
    """
    g = jnp.asarray(goodness, _f32)
    return protocol.select_pilot(jnp.where(jnp.asarray(admissible_mask, bool), g, jnp.nan))


def implied_steps(ternaries: ArrayLike, p_prev: ArrayLike, p_prev2: ArrayLike,
                  betas: ArrayLike) -> jax.Array:
    """f32[N] the least step each worker's Eq. (5) ternary implies,
    ``beta_k ||(P^{t-1} - P^{t-2}) * 1[T_k != 0]||_2`` (t >= 2).

    Args:
      ternaries: i8[N, M] unpacked T_k.
      p_prev, p_prev2: f32[M] P^{t-1}, P^{t-2}.
      betas: scalar or f32[N].
    """
    t = jnp.asarray(ternaries)
    s = jnp.asarray(p_prev, _f32) - jnp.asarray(p_prev2, _f32)
    moved = (t != 0).astype(_f32)
    norms = jnp.sqrt(moved @ jnp.square(s))
    return jnp.broadcast_to(jnp.asarray(betas, _f32), norms.shape) * norms


def step_ok(q_pilot: ArrayLike, p_prev: ArrayLike, p_prev2: ArrayLike, ternaries: ArrayLike,
            pilot: ArrayLike, valid: ArrayLike, betas: ArrayLike, epoch: ArrayLike,
            cfg: GuardConfig = DEFAULT) -> jax.Array:
    """bool[]: whether the pilot's step passes (rule 2 of the module doc).

    Args:
      q_pilot: f32[M] Q_{k*}^t.
      p_prev, p_prev2: f32[M] P^{t-1}, P^{t-2}.
      ternaries: i8[N, M] unpacked T_k (the pilot's row is ignored).
      pilot: k* (-1: no pilot, passes).
      valid: bool[N] the workers whose ternary counts (finite cost, frame received).
      betas: scalar or f32[N].
      epoch: t, 1-based (may be traced); t = 1 always passes.
      cfg: the guard's knobs.
    """
    t = jnp.asarray(ternaries)
    n, m = t.shape
    others = jnp.asarray(valid, bool) & (jnp.arange(n) != pilot)
    r = jnp.where(others, implied_steps(t, p_prev, p_prev2, betas), jnp.nan)
    s = jnp.asarray(p_prev, _f32) - jnp.asarray(p_prev2, _f32)
    beta_bar = jnp.mean(jnp.broadcast_to(jnp.asarray(betas, _f32), (n,)))
    floor = beta_bar * jnp.sqrt(jnp.sum(jnp.square(s))) / math.sqrt(m)
    ref = jnp.maximum(jnp.nan_to_num(jnp.nanmedian(r)), floor)
    step = jnp.sqrt(jnp.sum(jnp.square(jnp.asarray(q_pilot, _f32) - jnp.asarray(p_prev, _f32))))
    ok = (step <= cfg.rho * ref) | ~others.any()
    return (epoch == 1) | (jnp.asarray(pilot) < 0) | ok


def step_ok_packed(q_pilot: ArrayLike, p_prev: ArrayLike, p_prev2: ArrayLike,
                   packed: ArrayLike, pilot: ArrayLike, valid: ArrayLike, betas: ArrayLike,
                   epoch: ArrayLike, cfg: GuardConfig = DEFAULT,
                   scheme: str = "2bit") -> jax.Array:
    """:func:`step_ok` on the packed ternaries u8[N, packed_size(M, scheme)] the master
    receives (``scheme`` static under jit)."""
    m = jnp.shape(q_pilot)[-1]
    t = codec.unpack_jnp(jnp.asarray(packed), m, scheme)
    return step_ok(q_pilot, p_prev, p_prev2, t, pilot, valid, betas, epoch, cfg)


def pilot_model(q_pilot: ArrayLike, p_prev: ArrayLike, ok: ArrayLike) -> jax.Array:
    """f32[M] the pilot's model Eq. (3) uses: Q_{k*} if its step passed, else P^{t-1}."""
    return jnp.where(ok, jnp.asarray(q_pilot, _f32), jnp.asarray(p_prev, _f32))


__all__ = ["GuardConfig", "DEFAULT", "MAD_TO_SD", "check_config", "robust_band", "admissible",
           "select", "implied_steps", "step_ok", "step_ok_packed", "pilot_model"]
