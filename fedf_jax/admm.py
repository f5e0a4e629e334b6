"""ADMM for the linear SVM, data split by samples or by features, one or two levels.

DESIGN §8; the twin of ``protocol.py``: pure, jittable functions, no I/O. Binary labels
y in {-1, +1}, rows a = x~ = [x, 1]: minimize_w 1/2 ||w||^2 + C sum_i max(0, 1 - y_i w^T a_i),
what ``LinearSVC(C=C, loss="hinge", fit_intercept=False)`` fits on x~ (the bias weight is
regularized too). Multi-class: one-vs-rest, K problems (K = 1 for two classes) vmapped over
classes, each with its own rho.

Boyd, Parikh, Chu, Peleato, Eckstein (2011), "Distributed Optimization and Statistical
Learning via the Alternating Direction Method of Multipliers": scaled form §3.1.1
(3.5)-(3.7); stopping §3.3.1 (3.12); residual balancing §3.4.1 (3.13).
- Samples split: consensus with regularization (§7.1.1, §8.2): x_i = prox of worker i's
  hinge loss (a box QP, ``svm.dcd_prox_dual``), z = the regularized mean, u_i += x_i - z.
- Features split: sharing (§7.3, §8.3): a ridge x_j-update per column block, a per-sample
  hinge prox for zbar. Two levels are not provided for this split.
- Two levels (samples split): each group runs kappa warm-started consensus iterations to
  z_g, regularized by (rho_top/2) ||z_g - (z - u_g)||^2; the top runs consensus over the z_g.

Single-party functions (``x_update``, ``zbar_update``...) are for ONE worker and ONE class;
the ``*_step`` functions vmap them. Every sum over parties goes through
``aggregate(values f32[N, ...], weights f32[N])`` (default :func:`masked_sum`), which secure
aggregation can replace: what crosses is x_i + u_i and four scalars per worker (samples),
A_j x_j and five scalars per worker (features). Padding rows, columns and workers are
masked and contribute nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fedf_jax import svm
from fedf_jax.svm import accuracy, hinge_loss, objective, ovr_targets, predict  # noqa: F401

_f32 = jnp.float32


class Hyper(NamedTuple):
    """Traced hyper-parameters (a new value does not recompile), from :func:`make_hyper`:
    C (hinge weight), eps_abs, eps_rel ((3.12)), mu, tau ((3.13)), adapt (bool)."""

    C: jax.Array
    eps_abs: jax.Array
    eps_rel: jax.Array
    mu: jax.Array
    tau: jax.Array
    adapt: jax.Array


def make_hyper(C: float = 1.0, *, eps_abs: float = 1e-4, eps_rel: float = 1e-4,
               mu: float = 10.0, tau: float = 2.0, adapt: bool = True) -> Hyper:
    """Checks and packs the hyper-parameters; mu = 10, tau = 2 as Boyd suggests.

    eps_rel = 1e-4 rather than Boyd's 1e-3: at 1e-3 consensus on breast cancer stopped
    3e-3 above LinearSVC's objective; at 1e-4 every split stopped within 3e-4.
    """
    for name, value, ok, allowed in (("C", C, C > 0, "> 0"), ("eps_abs", eps_abs, eps_abs >= 0,
                                     ">= 0"), ("eps_rel", eps_rel, eps_rel >= 0, ">= 0"),
                                     ("mu", mu, mu > 1, "> 1"), ("tau", tau, tau > 1, "> 1")):
        if not ok:
            raise ValueError(f"`{name}` (={value}) must be {allowed}.")
    return Hyper(*(jnp.asarray(v, _f32) for v in (C, eps_abs, eps_rel, mu, tau)),
                 jnp.asarray(adapt, bool))


class Residuals(NamedTuple):
    """Primal and dual residual norms and their tolerances (3.12), each f32[K]."""

    r: jax.Array
    s: jax.Array
    eps_pri: jax.Array
    eps_dual: jax.Array


class StepInfo(NamedTuple):
    """residuals; the rho the iteration used f32[K]; the SVM objective at the iterate f32[K]
    (over the step's data); converged bool[K] ((3.12) met)."""

    residuals: Residuals
    rho: jax.Array
    objective: jax.Array
    converged: jax.Array


# --- Shared by every level: sums, stopping (3.12), residual balancing (3.13) -----------


def masked_sum(values: ArrayLike, weights: ArrayLike) -> jax.Array:
    """``sum_i weights_i values_i`` over the leading (party) axis: the reduction that
    secure aggregation replaces. values: f32[N, ...], weights: f32[N] (0 for padding)."""
    return jnp.tensordot(jnp.asarray(weights, _f32), jnp.asarray(values, _f32), axes=1)


def tolerances(dim_pri: ArrayLike, dim_dual: ArrayLike, ax_norm: ArrayLike,
               bz_norm: ArrayLike, aty_norm: ArrayLike, eps_abs: ArrayLike,
               eps_rel: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """(3.12): ``eps_pri = sqrt(dim_pri) eps_abs + eps_rel max(||Ax||, ||Bz||)`` (c = 0 in
    every split here) and ``eps_dual = sqrt(dim_dual) eps_abs + eps_rel ||A^T y||``."""
    eps_pri = jnp.sqrt(dim_pri) * eps_abs + eps_rel * jnp.maximum(ax_norm, bz_norm)
    return eps_pri, jnp.sqrt(dim_dual) * eps_abs + eps_rel * aty_norm


def converged(res: Residuals) -> jax.Array:
    """Boyd's stopping rule, §3.3.1: ``r <= eps_pri and s <= eps_dual``."""
    return (res.r <= res.eps_pri) & (res.s <= res.eps_dual)


def adapt_rho(rho: ArrayLike, r: ArrayLike, s: ArrayLike, hyper: Hyper
              ) -> tuple[jax.Array, jax.Array]:
    """Residual balancing (3.13): rho tau if r > mu s, rho / tau if s > mu r. Returns
    (new rho, rho / new rho), the factor for the scaled duals (u = y / rho, y unchanged)."""
    grow = hyper.adapt & (r > hyper.mu * s)
    shrink = hyper.adapt & (s > hyper.mu * r)
    new = jnp.where(grow, rho * hyper.tau, jnp.where(shrink, rho / hyper.tau, rho))
    return new, rho / new


# --- Samples split: consensus (§7.1.1, §8.2) --------------------------------------------


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
    return svm.dcd_prox_dual(ya, v, alpha, rho, C * jnp.asarray(mask, _f32), sweeps)


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


def u_update(u: ArrayLike, x: ArrayLike, z: ArrayLike) -> jax.Array:
    """(3.7): ``u_i + x_i - z`` (any broadcastable shapes)."""
    return jnp.asarray(u, _f32) + jnp.asarray(x, _f32) - jnp.asarray(z, _f32)


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


Aggregate = Callable[[jax.Array, jax.Array], jax.Array]


@functools.partial(jax.jit, static_argnames=("sweeps", "aggregate"))
def consensus_step(state: ConsensusState, data: ConsensusData, hyper: Hyper,
                   gamma: ArrayLike = 1.0, center: ArrayLike = 0.0, *, sweeps: int = 1,
                   aggregate: Aggregate = masked_sum) -> tuple[ConsensusState, StepInfo]:
    """One consensus iteration, all workers and classes: (3.5)-(3.7), (3.12), (3.13).

    Args:
      gamma, center: the z-update's prox (:func:`z_update`): scalar or f32[K]; scalar or
        f32[K, p]. The defaults are the SVM regularizer.
      sweeps: coordinate-descent sweeps per x-update (static).
      aggregate: the sum over workers (static): :func:`masked_sum` or a secure one.
    """
    k = state.z.shape[0]
    gamma = jnp.broadcast_to(jnp.asarray(gamma, _f32), (k,))
    center = jnp.broadcast_to(jnp.asarray(center, _f32), state.z.shape)
    n = jnp.sum(data.workers)
    # Worker side: vmapped over classes (A shared), then over workers (z, rho shared).
    xu = functools.partial(x_update, sweeps=sweeps)
    xu = jax.vmap(xu, (None, 0, None, 0, 0, 0, 0, None))
    x, alpha = jax.vmap(xu, (0, 0, 0, None, 0, 0, None, None))(
        data.A, data.y, data.mask, state.z, state.u, state.alpha, state.rho, hyper.C)
    # Master side: z from the sum of x_i + u_i.
    z = jax.vmap(z_update, (0, None, 0, 0, 0))(aggregate(x + state.u, data.workers), n,
                                                state.rho, gamma, center)
    # A padding worker's x is z^k (alpha stays 0), so (3.7) would leave it z^k - z^{k+1}:
    # zeroed, so that it never holds anything.
    u = u_update(state.u, x, z[None]) * data.workers[:, None, None]
    stats_fn = jax.vmap(consensus_worker_stats, (None, 0, None, 0, 0, 0, None))
    stats_fn = jax.vmap(stats_fn, (0, 0, 0, 0, 0, None, None))
    stats = aggregate(stats_fn(data.A, data.y, data.mask, x, u, z, hyper.C), data.workers)
    res = jax.vmap(consensus_residuals, (0, 0, 0, 0, None, None))(stats, z, state.z,
                                                                  state.rho, n, hyper)
    rho, scale = adapt_rho(state.rho, res.r, res.s, hyper)
    info = StepInfo(res, state.rho, 0.5 * jnp.sum(z * z, axis=-1) + stats[:, 3],
                    converged(res))
    return ConsensusState(z, u * scale[:, None], alpha, rho), info


# --- Two levels: groups run consensus to z_g, the top runs consensus over the z_g ------


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
                aggregate: Aggregate = masked_sum) -> ConsensusState:
    """``kappa`` consensus iterations of ONE group, warm-started, toward
    ``z_g = argmin sum_{i in g} f_i(z_g) + (rho_top/2) ||z_g - center||^2``, the x-update
    (3.5) of the top level's consensus (center = z - u_g). State and data: one group's."""

    def inner(_, s):
        return consensus_step(s, data, hyper, rho_top, center, sweeps=sweeps,
                              aggregate=aggregate)[0]

    return jax.lax.fori_loop(0, kappa, inner, groups)


def top_update(state: HierState, groups: ConsensusState, data: ConsensusData, hyper: Hyper,
               aggregate: Aggregate = masked_sum) -> tuple[HierState, StepInfo]:
    """The top level's consensus over the z_g (``groups.z``, after :func:`group_inner`): the
    z-update with the SVM regularizer, u_g += z_g - z, residuals and rho_top as in
    :func:`consensus_step`. StepInfo's objective is at the top z over all the data."""
    g = groups.z.shape[0]
    ones = jnp.ones((g,), _f32)
    z = jax.vmap(z_update, (0, None, 0))(aggregate(groups.z + state.u, ones), g, state.rho)
    u = u_update(state.u, groups.z, z[None])
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
    info = StepInfo(res, state.rho, 0.5 * jnp.sum(z * z, axis=-1) + loss, converged(res))
    return HierState(groups, z, u * scale[:, None], rho), info


@functools.partial(jax.jit, static_argnames=("kappa", "sweeps", "aggregate"))
def hier_step(state: HierState, data: ConsensusData, hyper: Hyper, top: Hyper | None = None,
              *, kappa: int, sweeps: int = 1, aggregate: Aggregate = masked_sum
              ) -> tuple[HierState, StepInfo]:
    """One outer iteration: :func:`group_inner` vmapped over the groups (each toward the
    centre z - u_g), then :func:`top_update` with ``top`` (default: ``hyper``; C is always
    ``hyper.C``). Residual balancing of rho_top can hurt: its x-updates are inexact."""
    inner = functools.partial(group_inner, kappa=kappa, sweeps=sweeps, aggregate=aggregate)
    groups = jax.vmap(inner, (0, 0, None, None, 0))(state.groups, data, hyper, state.rho,
                                                    state.z[None] - state.u)
    top = hyper if top is None else top._replace(C=hyper.C)
    return top_update(state, groups, data, top, aggregate)


# --- Features split: sharing (§7.3, §8.3) ----------------------------------------------


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


def run(step: Callable, state, max_iter: ArrayLike):
    """``step(state) -> (state, StepInfo)`` until every class meets (3.12) or max_iter (may
    be traced) iterations, in a ``lax.while_loop``: (state, last StepInfo, i32[] count)."""
    state, info = step(state)

    def more(carry):
        _, info, i = carry
        return (i < max_iter) & ~jnp.all(info.converged)

    def once(carry):
        state, _, i = carry
        state, info = step(state)
        return state, info, i + 1

    return jax.lax.while_loop(more, once, (state, info, jnp.asarray(1, jnp.int32)))
