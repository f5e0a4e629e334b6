"""Sharing ADMM for the linear SVM, data split by features (Boyd et al. 2011, §7.3,
§8.3): each worker holds a block of columns of every row; the only values that cross
parties are the per-sample partial scores A_j x_j, whose sum is one named reduction."""

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

_f32 = jnp.float32


class SharingData(NamedTuple):
    """Each worker's columns, padded (``admm_data.split_features``): A f32[N, S, B] (the bias
    column in the last block); cols f32[N, B] (1 real, 0 padding); y f32[K, S] targets
    (held by the party of the zbar-update); eigval f32[N, B], eigvec f32[N, B, B] of
    A_j^T A_j (:func:`sharing_factor`, cached)."""

    A: jax.Array
    cols: jax.Array
    y: jax.Array
    eigval: jax.Array
    eigvec: jax.Array


class SharingState(NamedTuple):
    """x f32[N, K, B] the weight blocks x_j; zbar, u, axbar f32[K, S] (axbar: the mean of
    the partial scores A_j x_j); rho f32[K]."""

    x: jax.Array
    zbar: jax.Array
    u: jax.Array
    axbar: jax.Array
    rho: jax.Array


def sharing_factor(A: ArrayLike, cols: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Worker j's ``A_j^T A_j = V diag(lambda) V^T`` (f32[B], f32[B, B]), computed once:
    unlike a Cholesky factor of I + rho A_j^T A_j it serves every rho (residual balancing)."""
    A = jnp.asarray(A, _f32) * jnp.asarray(cols, _f32)
    lam, vec = jnp.linalg.eigh(A.T @ A)
    return jnp.maximum(lam, 0.0), vec


def sharing_init(data: SharingData, rho: float = 0.1) -> SharingState:
    """Zeros everywhere, rho for every class."""
    if not rho > 0:
        raise ValueError(f"`rho` (={rho}) must be > 0.")
    n, _, b = data.A.shape
    k, s = data.y.shape
    zeros = jnp.zeros((k, s), _f32)
    return SharingState(jnp.zeros((n, k, b), _f32), zeros, zeros, zeros,
                        jnp.full((k,), rho, _f32))


def sharing_x_update(A: ArrayLike, cols: ArrayLike, eigval: ArrayLike, eigvec: ArrayLike,
                     x: ArrayLike, c: ArrayLike, rho: ArrayLike) -> jax.Array:
    """Worker j's x-update (§8.3; §7.3), f32[B]: ``argmin 1/2 ||x||^2 + (rho/2) ||A_j x -
    A_j x_j^k - c||^2 = (I + rho A_j^T A_j)^{-1} rho A_j^T (A_j x_j^k + c)``.

    Args: A f32[S, B]; cols, eigval f32[B]; eigvec f32[B, B]; x f32[B] (x_j^k); c f32[S]
    = zbar - axbar - u (from the master).
    """
    A, x, cols = jnp.asarray(A, _f32), jnp.asarray(x, _f32), jnp.asarray(cols, _f32)
    b = rho * (A.T @ (A @ x + c)) * cols
    # The mask again at the end: zero columns span part of the null space, which an
    # eigensolver may mix with the real columns' near-null directions by rounding.
    return (eigvec @ ((eigvec.T @ b) / (1.0 + rho * eigval))) * cols


def partial_scores(A: ArrayLike, x: ArrayLike) -> jax.Array:
    """``A_j x_j`` f32[S]: the only values of worker j that cross parties (summed)."""
    return jnp.asarray(A, _f32) @ jnp.asarray(x, _f32)


def zbar_update(total: ArrayLike, u: ArrayLike, y: ArrayLike, n: ArrayLike, rho: ArrayLike,
                C: ArrayLike) -> jax.Array:
    """The zbar-update (§7.3; §8.3), per sample in closed form, f32[S]:
    ``argmin g(n zbar) + (n rho/2) ||zbar - u - axbar||^2``, g(s) = C sum hinge(y s).

    With t = n zbar, w = n (u + axbar), lam = C n / rho it is the prox of lam hinge at w:
    ``y t = max(m, min(1, m + lam))``, m = y w. total f32[S] = sum of the partial scores.
    """
    y = jnp.asarray(y, _f32)
    w = n * jnp.asarray(u, _f32) + jnp.asarray(total, _f32)
    m = y * w
    return y * jnp.maximum(m, jnp.minimum(1.0, m + C * n / rho)) / n


def sharing_worker_stats(A: ArrayLike, x: ArrayLike, x_prev: ArrayLike, d: ArrayLike,
                         d_prev: ArrayLike, u: ArrayLike) -> jax.Array:
    """Worker j's share of the residuals and objective, summed by ``aggregate``: f32[5]
    ``||A_j x_j||^2, ||z_j||^2, ||A_j^T (z_j - z_j^prev)||^2, ||A_j^T u||^2, ||x_j||^2``,
    with d = zbar - axbar, z_j = A_j x_j + d (§7.3), s_j = rho A_j^T (z_j - z_j^prev)."""
    A = jnp.asarray(A, _f32)
    ax = A @ x
    dz = ax - A @ x_prev + d - d_prev
    aty = A.T @ u
    return jnp.stack([ax @ ax, jnp.sum((ax + d) ** 2), jnp.sum((A.T @ dz) ** 2), aty @ aty,
                      x @ x])


@functools.partial(jax.jit, static_argnames=("aggregate",))
def sharing_step(state: SharingState, data: SharingData, hyper: Hyper, *,
                 aggregate: Aggregate = masked_sum) -> tuple[SharingState, StepInfo]:
    """One sharing iteration, all workers and classes (objective at x^{k+1}). Residuals
    (§7.3, (3.12)): r = sqrt(N) ||axbar - zbar||, s from :func:`sharing_worker_stats`;
    constraint dimension N S, x dimension the real columns."""
    n = data.A.shape[0]
    ones = jnp.ones((n,), _f32)
    c = state.zbar - state.axbar - state.u  # broadcast to every worker
    xu = jax.vmap(sharing_x_update, (None, None, None, None, 0, 0, 0))  # classes
    x = jax.vmap(xu, (0, 0, 0, 0, 0, None, None))(data.A, data.cols, data.eigval,
                                                  data.eigvec, state.x, c, state.rho)
    scores = jax.vmap(jax.vmap(partial_scores, (None, 0)))(data.A, x)  # f32[N, K, S]
    total = aggregate(scores, ones)  # the named reduction: secure aggregation replaces it
    axbar = total / n
    zbar = jax.vmap(zbar_update, (0, 0, 0, None, 0, None))(total, state.u, data.y, n,
                                                           state.rho, hyper.C)
    u = u_update(state.u, axbar, zbar)  # (3.7)
    stats_fn = jax.vmap(sharing_worker_stats, (None, 0, 0, 0, 0, 0))
    stats_fn = jax.vmap(stats_fn, (0, 0, 0, None, None, None))
    stats = aggregate(stats_fn(data.A, x, state.x, zbar - axbar, state.zbar - state.axbar, u),
                      ones)
    eps_pri, eps_dual = tolerances(n * data.y.shape[1], jnp.sum(data.cols),
                                   jnp.sqrt(stats[:, 0]), jnp.sqrt(stats[:, 1]),
                                   state.rho * jnp.sqrt(stats[:, 3]), hyper.eps_abs,
                                   hyper.eps_rel)
    res = Residuals(jnp.sqrt(n) * jnp.linalg.norm(axbar - zbar, axis=-1),
                    state.rho * jnp.sqrt(stats[:, 2]), eps_pri, eps_dual)
    loss = hyper.C * jnp.sum(jnp.maximum(0.0, 1.0 - data.y * total), axis=-1)
    rho, scale = adapt_rho(state.rho, res.r, res.s, hyper)
    info = StepInfo(res, state.rho, 0.5 * stats[:, 4] + loss, converged(res))
    return SharingState(x, zbar, u * scale[:, None], axbar, rho), info


__all__ = ["SharingData", "SharingState", "sharing_factor", "sharing_init", "sharing_x_update",
           "partial_scores", "zbar_update", "sharing_worker_stats", "sharing_step"]
