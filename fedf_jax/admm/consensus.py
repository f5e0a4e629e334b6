"""Consensus ADMM for the linear SVM, data split by samples (Boyd et al. 2011, §7.1.1,
§8.2), in one level or two (groups to z_g, the top over the z_g).

Functions named for one party work on one worker and one class; :func:`worker_x`,
:func:`master_z`, :func:`worker_dual` and :func:`master_close` are the four phases
of an iteration, which :func:`consensus_step` composes for all workers (and an MPI
run composes across ranks).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fedf_jax.admm.core import (
    Aggregate,
    Hyper,
    Residuals,
    StepInfo,
    adapt_rho,
    converged,
    masked_sum,
    tolerances,
    u_update,
)
from fedf_jax.svm import dcd_prox_dual, hinge_loss

_f32 = jnp.float32


class ConsensusData(NamedTuple):
    """Each worker's rows, padded (``admm_data.split_samples``): A f32[N, S, p] (bias column
    included); y f32[N, K, S] one-vs-rest targets; mask f32[N, S], workers f32[N] (1 real,
    0 padding)."""

    A: jax.Array
    y: jax.Array
    mask: jax.Array
    workers: jax.Array


class ConsensusState(NamedTuple):
    """z f32[K, p] the consensus model; u f32[N, K, p] scaled duals; alpha f32[N, K, S] the
    x-updates' QP duals (warm start); rho f32[K]."""

    z: jax.Array
    u: jax.Array
    alpha: jax.Array
    rho: jax.Array


def consensus_init(data: ConsensusData, rho: float = 3.0) -> ConsensusState:
    """Zeros everywhere, rho for every class."""
    if not rho > 0:
        raise ValueError(f"`rho` (={rho}) must be > 0.")
    n, k, s = data.y.shape
    p = data.A.shape[-1]
    return ConsensusState(jnp.zeros((k, p), _f32), jnp.zeros((n, k, p), _f32),
                          jnp.zeros((n, k, s), _f32), jnp.full((k,), rho, _f32))


def x_update(A: ArrayLike, y: ArrayLike, mask: ArrayLike, z: ArrayLike, u: ArrayLike,
             alpha: ArrayLike, rho: ArrayLike, C: ArrayLike, sweeps: int = 1
             ) -> tuple[jax.Array, jax.Array]:
    """Worker i's x-update (3.5), consensus form (§7.1.1, §8.2.3):
    ``x_i = argmin_x C sum_j hinge_j(x) + (rho/2) ||x - z + u_i||^2``, solved in the dual
    (a box QP) by ``sweeps`` passes of dual coordinate descent from ``alpha``
    (``svm.dcd_prox_dual``); padding rows (mask 0) keep alpha_j = 0.

    Args:
      A: f32[S, p]; y: f32[S] in {-1, +1}; mask: f32[S]; z, u: f32[p]; alpha: f32[S].

    Returns:
      (x_i f32[p], alpha f32[S]).
    """
    ya = jnp.asarray(y, _f32)[:, None] * jnp.asarray(A, _f32)
    v = jnp.asarray(z, _f32) - jnp.asarray(u, _f32)
    return dcd_prox_dual(ya, v, alpha, rho, C * jnp.asarray(mask, _f32), sweeps)


def z_update(total: ArrayLike, n: ArrayLike, rho: ArrayLike, gamma: ArrayLike = 1.0,
             center: ArrayLike = 0.0) -> jax.Array:
    """The z-update (3.6) of §7.1.1 from the SUM of what the n workers sent, f32[p]:

    ``argmin (gamma/2) ||z - center||^2 + (n rho/2) ||z - total/n||^2
      = (gamma center + rho total) / (gamma + n rho)``, total f32[p] = sum_i (x_i + u_i).
    The SVM regularizer 1/2 ||z||^2 is gamma = 1, center = 0; a group of the two-level
    scheme has gamma = rho_top, center = z - u_g.
    """
    return (gamma * jnp.asarray(center, _f32) + rho * jnp.asarray(total, _f32)) / (
        gamma + n * rho)


def consensus_worker_stats(A: ArrayLike, y: ArrayLike, mask: ArrayLike, x: ArrayLike,
                           u: ArrayLike, z: ArrayLike, C: ArrayLike) -> jax.Array:
    """Worker i's share of the residuals and objective, summed by ``aggregate``: f32[4]
    ``||x_i - z||^2, ||x_i||^2, ||u_i||^2`` (u after (3.7)), its hinge loss at z."""
    x, u, z = (jnp.asarray(a, _f32) for a in (x, u, z))
    return jnp.stack([jnp.sum((x - z) ** 2), x @ x, u @ u, hinge_loss(z, A, y, mask, C)])


def consensus_residuals(stats: ArrayLike, z: ArrayLike, z_prev: ArrayLike, rho: ArrayLike,
                        n: ArrayLike, hyper: Hyper) -> Residuals:
    """Consensus residuals (§7.1: r = (x_i - z)_i, s = rho sqrt(n) (z - z_prev)) and (3.12)
    with x, constraint and dual all of dimension n p. stats: f32[4] the sum over workers of
    :func:`consensus_worker_stats`; z, z_prev: f32[p]."""
    z, z_prev = jnp.asarray(z, _f32), jnp.asarray(z_prev, _f32)
    dim = n * z.shape[-1]
    eps_pri, eps_dual = tolerances(dim, dim, jnp.sqrt(stats[1]),
                                   jnp.sqrt(n) * jnp.linalg.norm(z),
                                   rho * jnp.sqrt(stats[2]), hyper.eps_abs, hyper.eps_rel)
    return Residuals(jnp.sqrt(stats[0]), rho * jnp.sqrt(n) * jnp.linalg.norm(z - z_prev),
                     eps_pri, eps_dual)


# One iteration in four phases, so that a party can run its own (MPI, secure sums):
# each worker's x-update, then the master's z from the SUM of what the workers sent,
# each worker's dual update and statistics, the master's residuals and rho.


def worker_x(A: ArrayLike, y: ArrayLike, mask: ArrayLike, z: ArrayLike, u: ArrayLike,
             alpha: ArrayLike, rho: ArrayLike, C: ArrayLike, sweeps: int = 1
             ) -> tuple[jax.Array, jax.Array]:
    """Phase 1, worker i, every class: x-update (3.5). A f32[S, p]; y, alpha f32[K, S];
    z, u f32[K, p]; rho f32[K]. Returns (x f32[K, p], alpha); it sends x + u."""
    xu = jax.vmap(functools.partial(x_update, sweeps=sweeps), (None, 0, None, 0, 0, 0, 0, None))
    return xu(A, y, mask, z, u, alpha, rho, C)


def master_z(total: ArrayLike, n: ArrayLike, rho: ArrayLike, gamma: ArrayLike,
             center: ArrayLike) -> jax.Array:
    """Phase 2, master: z f32[K, p] (3.6) from total f32[K, p] = sum_i (x_i + u_i)."""
    return jax.vmap(z_update, (0, None, 0, 0, 0))(total, n, rho, gamma, center)


def worker_dual(A: ArrayLike, y: ArrayLike, mask: ArrayLike, x: ArrayLike, u: ArrayLike,
                z: ArrayLike, C: ArrayLike, real: ArrayLike = 1.0
                ) -> tuple[jax.Array, jax.Array]:
    """Phase 3, worker i: u_i += x_i - z (3.7) and its statistics f32[K, 4]
    (:func:`consensus_worker_stats`). A padding worker (``real`` 0) holds nothing: its x
    is z^k (alpha stays 0), so (3.7) would leave it z^k - z^{k+1}."""
    u = u_update(u, x, z) * real
    return u, _class_stats(A, y, mask, x, u, z, C)


def _class_stats(A, y, mask, x, u, z, C) -> jax.Array:
    """One worker's :func:`consensus_worker_stats` for every class: f32[K, 4]."""
    return jax.vmap(consensus_worker_stats, (None, 0, None, 0, 0, 0, None))(A, y, mask, x, u,
                                                                           z, C)


def prox_z(z_prev: ArrayLike, prox: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """The z-update's (gamma, center) for the SVM regularizer 1/2 ||z||^2 plus a proximal
    term (prox/2) ||z - z_prev||^2 (f32[K], f32[K, p]): gamma = 1 + prox, center =
    prox z_prev / gamma (:func:`z_update`)."""
    prox = jnp.asarray(prox, _f32)
    gamma = 1.0 + prox
    return gamma, (prox / gamma)[..., None] * jnp.asarray(z_prev, _f32)


def consensus_top(state: ConsensusState, x: ArrayLike, member: ArrayLike,
                  data: ConsensusData, hyper: Hyper, prox: ArrayLike = 0.0
                  ) -> tuple[ConsensusState, StepInfo]:
    """The master's side of asynchronous consensus ADMM with a partial barrier (Chang et
    al. 2016): z (3.6) from ``sum_i (x_i + u_i)`` over every worker's latest x_i (f32[N, K,
    p]) with the proximal term (prox/2) ||z - z^k||^2 (prox f32[K]: their gamma, which
    keeps stale x_i from driving it unstable), u_i += x_i - z (3.7) for the workers that
    just arrived (``member`` bool[N]); the residuals and objective as in
    :func:`master_close`, rho unchanged (each worker's x-update used the rho it was sent)."""
    k = state.z.shape[0]
    n = jnp.sum(data.workers)
    gamma, center = prox_z(state.z, jnp.broadcast_to(jnp.asarray(prox, _f32), (k,)))
    z = master_z(masked_sum(x + state.u, data.workers), n, state.rho, gamma, center)
    fresh = jax.vmap(u_update, (0, 0, None))(state.u, x, z) * data.workers[:, None, None]
    u = jnp.where(jnp.asarray(member)[:, None, None], fresh, state.u)
    stats = jax.vmap(_class_stats, (0, 0, 0, 0, 0, None, None))(data.A, data.y, data.mask, x,
                                                                 u, z, hyper.C)
    _, _, info = master_close(masked_sum(stats, data.workers), z, state.z, state.rho, n, hyper)
    return state._replace(z=z, u=u), info


def master_close(stats: ArrayLike, z: ArrayLike, z_prev: ArrayLike, rho: ArrayLike,
                 n: ArrayLike, hyper: Hyper) -> tuple[jax.Array, jax.Array, StepInfo]:
    """Phase 4, master: residuals and (3.12) from the summed statistics f32[K, 4], rho by
    (3.13). Returns (new rho f32[K], the factor of every worker's u f32[K], StepInfo);
    the objective is at z."""
    res = jax.vmap(consensus_residuals, (0, 0, 0, 0, None, None))(stats, z, z_prev, rho, n,
                                                                  hyper)
    new_rho, scale = adapt_rho(rho, res.r, res.s, hyper)
    info = StepInfo(res, rho, 0.5 * jnp.sum(z * z, axis=-1) + stats[:, 3], converged(res))
    return new_rho, scale, info


def each_worker(fn, rows: tuple, chunk: int | None = None):
    """``fn(*row)`` for every worker's row of ``rows`` (arrays with the workers on their
    leading axis): one vmap, or ``chunk`` workers at a time (``--worker-chunk``: a
    ``lax.map`` over batches, so that only ``chunk`` workers' temporaries, such as the
    x-update's K S p rows ``y a``, are alive at once; the same values to float32
    rounding)."""
    if chunk is None:
        return jax.vmap(fn)(*rows)
    return jax.lax.map(lambda r: fn(*r), rows, batch_size=chunk)


@functools.partial(jax.jit, static_argnames=("sweeps", "aggregate", "chunk"))
def consensus_step(state: ConsensusState, data: ConsensusData, hyper: Hyper,
                   gamma: ArrayLike = 1.0, center: ArrayLike = 0.0, *, sweeps: int = 1,
                   aggregate: Aggregate = masked_sum, chunk: int | None = None
                   ) -> tuple[ConsensusState, StepInfo]:
    """One consensus iteration, all workers and classes: the four phases, (3.5)-(3.7),
    (3.12), (3.13).

    Args:
      gamma, center: the z-update's prox (:func:`z_update`): scalar or f32[K]; scalar or
        f32[K, p]. The defaults are the SVM regularizer.
      sweeps: coordinate-descent sweeps per x-update (static).
      aggregate: the sum over workers (static): :func:`masked_sum` or a secure one.
      chunk: the workers' phases ``chunk`` workers at a time (static; :func:`each_worker`).
    """
    k = state.z.shape[0]
    gamma = jnp.broadcast_to(jnp.asarray(gamma, _f32), (k,))
    center = jnp.broadcast_to(jnp.asarray(center, _f32), state.z.shape)
    n = jnp.sum(data.workers)
    x, alpha = each_worker(
        lambda A, y, mask, u, alpha: worker_x(A, y, mask, state.z, u, alpha, state.rho,
                                              hyper.C, sweeps),
        (data.A, data.y, data.mask, state.u, state.alpha), chunk)
    z = master_z(aggregate(x + state.u, data.workers), n, state.rho, gamma, center)
    u, stats = each_worker(
        lambda A, y, mask, x, u, real: worker_dual(A, y, mask, x, u, z, hyper.C, real),
        (data.A, data.y, data.mask, x, state.u, data.workers), chunk)
    rho, scale, info = master_close(aggregate(stats, data.workers), z, state.z, state.rho, n,
                                    hyper)
    return ConsensusState(z, u * scale[:, None], alpha, rho), info


class HierState(NamedTuple):
    """groups: a :class:`ConsensusState` per group (leading axis G; groups.z f32[G, K, p]
    are the z_g); z f32[K, p] the top model; u f32[G, K, p] the u_g; rho f32[K] rho_top."""

    groups: ConsensusState
    z: jax.Array
    u: jax.Array
    rho: jax.Array


def hier_init(data: ConsensusData, rho: float = 3.0, rho_top: float = 10.0) -> HierState:
    """``data``: a :class:`ConsensusData` per group (leading axis G, workers padded). A
    group joins several workers, so rho_top above rho suits it (digits odd/even, 5 workers
    in 3 + 2, kappa = 1: 647 outer iterations at rho_top = 10, 1408 at 3)."""
    if not rho_top > 0:
        raise ValueError(f"`rho_top` (={rho_top}) must be > 0.")
    groups = jax.vmap(functools.partial(consensus_init, rho=rho))(data)
    g, k, p = groups.z.shape
    return HierState(groups, jnp.zeros((k, p), _f32), jnp.zeros((g, k, p), _f32),
                     jnp.full((k,), rho_top, _f32))


def group_inner(groups: ConsensusState, data: ConsensusData, hyper: Hyper, rho_top: ArrayLike,
                center: ArrayLike, *, kappa: int, sweeps: int = 1,
                aggregate: Aggregate = masked_sum, chunk: int | None = None
                ) -> ConsensusState:
    """``kappa`` consensus iterations of ONE group, warm-started, toward
    ``z_g = argmin sum_{i in g} f_i(z_g) + (rho_top/2) ||z_g - center||^2``, the x-update
    (3.5) of the top level's consensus (center = z - u_g). State and data: one group's."""

    def inner(_, s):
        return consensus_step(s, data, hyper, rho_top, center, sweeps=sweeps,
                              aggregate=aggregate, chunk=chunk)[0]

    return jax.lax.fori_loop(0, kappa, inner, groups)


def top_update(state: HierState, groups: ConsensusState, data: ConsensusData, hyper: Hyper,
               aggregate: Aggregate = masked_sum, member: ArrayLike | None = None,
               prox: ArrayLike = 0.0) -> tuple[HierState, StepInfo]:
    """The top level's consensus over the z_g (``groups.z``, after :func:`group_inner`): the
    z-update with the SVM regularizer, u_g += z_g - z, residuals and rho_top as in
    :func:`consensus_step`. StepInfo's objective is at the top z over all the data.

    ``member`` (bool[G]; asynchronous groups, Chang et al. 2016): only the groups that just
    arrived update their u_g, the others' z_g are their latest, rho_top stays, and the
    z-update has the proximal term (prox/2) ||z - z^k||^2 (:func:`consensus_top`)."""
    g, k = groups.z.shape[0], state.z.shape[0]
    ones = jnp.ones((g,), _f32)
    gamma, center = prox_z(state.z, jnp.broadcast_to(jnp.asarray(prox, _f32), (k,)))
    z = jax.vmap(z_update, (0, None, 0, 0, 0))(aggregate(groups.z + state.u, ones), g,
                                               state.rho, gamma, center)
    u = u_update(state.u, groups.z, z[None])
    if member is not None:
        u = jnp.where(jnp.asarray(member)[:, None, None], u, state.u)
    # Each worker's hinge loss at the top z, summed in its group, then over the groups.
    loss = jax.vmap(hinge_loss, (0, None, 0, None, None))  # classes
    loss = jax.vmap(jax.vmap(loss, (None, 0, 0, 0, None)), (None, 0, 0, 0, None))  # G, N
    loss = aggregate(jax.vmap(aggregate)(loss(z, data.A, data.y, data.mask, hyper.C),
                                         data.workers), ones)
    stats = jnp.stack([jnp.sum((groups.z - z[None]) ** 2, axis=(0, 2)),
                       jnp.sum(groups.z ** 2, axis=(0, 2)), jnp.sum(u ** 2, axis=(0, 2)),
                       loss], axis=1)
    res = jax.vmap(consensus_residuals, (0, 0, 0, 0, None, None))(stats, z, state.z,
                                                                  state.rho, g, hyper)
    rho, scale = adapt_rho(state.rho, res.r, res.s, hyper)
    if member is not None:
        rho, scale = state.rho, jnp.ones_like(scale)
    info = StepInfo(res, state.rho, 0.5 * jnp.sum(z * z, axis=-1) + loss, converged(res))
    return HierState(groups, z, u * scale[:, None], rho), info


@functools.partial(jax.jit, static_argnames=("kappa", "sweeps", "aggregate", "chunk"))
def hier_step(state: HierState, data: ConsensusData, hyper: Hyper, top: Hyper | None = None,
              *, kappa: int, sweeps: int = 1, aggregate: Aggregate = masked_sum,
              chunk: int | None = None) -> tuple[HierState, StepInfo]:
    """One outer iteration: :func:`group_inner` vmapped over the groups (each toward the
    centre z - u_g; ``chunk``: each group's workers that many at a time), then
    :func:`top_update` with ``top`` (default: ``hyper``; C is always ``hyper.C``).
    Residual balancing of rho_top can hurt: its x-updates are inexact."""
    inner = functools.partial(group_inner, kappa=kappa, sweeps=sweeps, aggregate=aggregate,
                              chunk=chunk)
    groups = jax.vmap(inner, (0, 0, None, None, 0))(state.groups, data, hyper, state.rho,
                                                    state.z[None] - state.u)
    top = hyper if top is None else top._replace(C=hyper.C)
    return top_update(state, groups, data, top, aggregate)


__all__ = ["ConsensusData", "ConsensusState", "consensus_init", "x_update", "z_update",
           "u_update", "consensus_worker_stats", "consensus_residuals", "worker_x", "master_z",
           "worker_dual", "prox_z", "consensus_top", "master_close", "each_worker",
           "consensus_step", "HierState", "hier_init", "group_inner", "top_update",
           "hier_step"]
