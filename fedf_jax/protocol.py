"""The FEDF equations (paper Section 3; DESIGN §1 and §4): the one source of truth.

Pure, jitted functions of flat parameter vectors, no I/O. ``epoch`` is 1-based
and traced: the t = 1 rules are chosen with ``jnp.where``, so moving from epoch 1
to epoch 2 does not recompile. At t = 1, ``p_prev`` is P^0 and ``p_prev2`` is
ignored. ``alpha``/``beta`` may be scalars or per-worker arrays of shape [N].

The sign of Eq. (3): the paper prints ``Q - ...`` (``direction=-1``); its own
Appendix A (Fig. A.5) says a parameter that keeps moving the same way pushes the
pilot's model forward, which is ``Q + ...`` (``direction=+1``, the default).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fedf_jax import codec

_f32 = jnp.float32


@jax.jit
def goodness(costs: ArrayLike, prev_costs: ArrayLike, sizes: ArrayLike,
             epoch: ArrayLike) -> jax.Array:
    """Goodness of each worker's local model, Eq. (1).

    ``G_k = S_k / C_k^t`` at t = 1 and ``G_k = S_k (C_k^{t-1} - C_k^t)`` after.
    A non-finite cost (this epoch's, or at t > 1 the previous one) gives a NaN
    goodness, which :func:`select_pilot` never picks; ``S / inf = 0`` would not do.

    Args:
      costs: f32[N] C^t, mean training loss of each Q_k^t.
      prev_costs: f32[N] C^{t-1} (ignored at t = 1).
      sizes: [N] S_k.
      epoch: t, 1-based.

    Returns:
      f32[N].
    """
    costs = jnp.asarray(costs, _f32)
    sizes = jnp.asarray(sizes, _f32)
    first = sizes / costs
    prev_costs = jnp.asarray(prev_costs, _f32)
    later = sizes * (prev_costs - costs)
    ok = jnp.isfinite(costs) & ((epoch == 1) | jnp.isfinite(prev_costs))
    return jnp.where(ok, jnp.where(epoch == 1, first, later), jnp.nan)


@jax.jit
def select_pilot(goodness_values: ArrayLike) -> jax.Array:
    """The pilot k* = argmax_k G_k (Section 3.2).

    Ties go to the lowest index; a non-finite goodness is never chosen.

    Args:
      goodness_values: f32[N].

    Returns:
      i32[] the pilot's index, or -1 when no goodness is finite.
    """
    g = jnp.asarray(goodness_values, _f32)
    finite = jnp.isfinite(g)
    best = jnp.argmax(jnp.where(finite, g, -jnp.inf))  # first maximum on ties
    return jnp.where(finite.any(), best, -1).astype(jnp.int32)


@jax.jit
def ternarize(q: ArrayLike, p_prev: ArrayLike, p_prev2: ArrayLike, alpha: ArrayLike,
              beta: ArrayLike, epoch: ArrayLike) -> jax.Array:
    """Ternary vector T_k of one worker, Eq. (5); Eq. (4) at t = 1.

    t = 1: ``-1`` if ``Q - P^0 < -alpha_k``, ``+1`` if ``Q - P^0 > alpha_k``, else 0.
    t >= 2: 0 if ``|Q - P^{t-1}| < beta_k |P^{t-1} - P^{t-2}|``, else ``sign(f)`` with
    ``f = (Q - P^{t-1}) (P^{t-1} - P^{t-2})``.

    Args:
      q: f32[M] the worker's local model Q_k^t.
      p_prev: f32[M] P^{t-1} (P^0 at t = 1).
      p_prev2: f32[M] P^{t-2} (ignored at t = 1).
      alpha: the worker's learning rate alpha_k (Eq. 4).
      beta: the worker's threshold beta_k (Eq. 5).
      epoch: t, 1-based.

    Returns:
      i8[M] in {-1, 0, +1}.
    """
    delta = jnp.asarray(q, _f32) - jnp.asarray(p_prev, _f32)
    step = jnp.asarray(p_prev, _f32) - jnp.asarray(p_prev2, _f32)
    first = jnp.where(delta > alpha, 1, jnp.where(delta < -alpha, -1, 0))
    # sign(delta * step) computed as sign(delta) * sign(step): the same value, but the
    # product of two tiny float32 steps could underflow to 0.
    later = jnp.where(jnp.abs(delta) < beta * jnp.abs(step), 0,
                      jnp.sign(delta).astype(jnp.int32) * jnp.sign(step).astype(jnp.int32))
    return jnp.where(epoch == 1, first, later).astype(jnp.int8)


def ternary_direction(ternary: ArrayLike, p_prev: ArrayLike, p_prev2: ArrayLike,
                      epoch: ArrayLike) -> jax.Array:
    """The sign of ``Q - P^{t-1}`` that a ternary encodes, where it is non-zero.

    Eq. (4): T itself at t = 1. Eq. (5): ``T = sign(Q - P^{t-1}) sign(P^{t-1} - P^{t-2})``
    at t >= 2, so ``sign(Q - P^{t-1}) = T sign(P^{t-1} - P^{t-2})`` (what a master, which
    knows both global models, reads from T).

    Returns:
      f32[M] in {-1, 0, +1}.
    """
    t = jnp.asarray(ternary, _f32)
    step = jnp.asarray(p_prev, _f32) - jnp.asarray(p_prev2, _f32)
    return jnp.where(epoch == 1, t, t * jnp.sign(step))


def update_weights(sizes: ArrayLike, pilot: ArrayLike, alpha0: ArrayLike, beta: ArrayLike,
                   epoch: ArrayLike, mask: ArrayLike | None = None
                   ) -> tuple[jax.Array, jax.Array]:
    """Eq. (3)'s coefficients as integer weights and one scale: the vote term is
    ``c sum_k w_k T_k``.

    ``w_k = S_k`` at t = 1 and ``S_k beta_k / beta_0`` after (0 for the pilot and for
    workers whose ternary is dropped, ``mask``); ``c = alpha0 / S`` at t = 1 and
    ``beta_0 / S`` after, with ``S`` the sum over all N workers, so that
    ``c w_k = alpha0 p_k`` or ``p_k beta_k``. With one beta for every worker, ``w_k = S_k``:
    the vote sum ``sum_k S_k T_k`` is an integer, exact in float32 up to 2^24 samples, and
    it is exactly the sum a secure aggregation hands the master (``fedf_jax.secure``);
    scaling it once keeps the plain and the secure master bit for bit equal.

    Returns:
      (w f32[N], c f32[]).
    """
    sizes = jnp.asarray(sizes, _f32)
    n = sizes.shape[0]
    beta = jnp.broadcast_to(jnp.asarray(beta, _f32), (n,))
    w = jnp.where(epoch == 1, sizes, sizes * (beta / beta[0]))
    c = jnp.where(epoch == 1, alpha0, beta[0]) / jnp.sum(sizes)
    keep = jnp.arange(n) != pilot
    if mask is not None:
        keep = keep & jnp.asarray(mask, bool)
    return jnp.where(keep, w, 0.0).astype(_f32), c.astype(_f32)


_BLOCK_BYTES = 1 << 20  # decoded float32 rows per step of the master's reduction (in cache)


def _weighted_rows(rows: jax.Array, weights: jax.Array, lanes, n_out: int) -> jax.Array:
    """``sum_k w_k decode(rows_k)`` over the leading axis: :func:`_lane_sums`, interleaved
    into f32[n_out]."""
    return codec.interleave_lanes(_lane_sums(rows, weights, lanes), n_out)


def _lane_sums(rows: jax.Array, weights: jax.Array, lanes) -> tuple[jax.Array, ...]:
    """``sum_k w_k lanes(rows_k)`` over the leading axis, in blocks of rows.

    ``lanes`` maps rows [c, B] to float32 lanes [c, B] (``codec.unpack_lanes_jnp``;
    a single lane for unpacked rows), which :func:`codec.interleave_lanes` turns
    into the decoded f32[n_out]. Each step decodes as many rows as fit in about
    ``_BLOCK_BYTES`` of float32 lanes (so the block stays in cache, never in main
    memory) and adds ``w @ lanes`` to the accumulators: every packed row is read
    once. Decoding lane by lane, with constant shifts, vectorizes; decoding to
    int8 through a bitcast, or one reduction over all N decoded rows, does not and
    is several times slower on CPU. When N is not a multiple of the block, the
    last block overlaps the one before with weight 0 on the overlapping rows
    (adding ``0 * trit`` changes nothing), so the rows are never padded (a copy).
    """
    n, width = rows.shape[0], rows.shape[-1]
    zeros = tuple(jnp.zeros(a.shape, _f32)
                  for a in lanes(jnp.zeros(rows.shape[1:], rows.dtype)))
    if n == 0:
        return zeros
    c = max(1, min(n, _BLOCK_BYTES // (4 * len(zeros) * width)))
    k = -(-n // c)

    def add_block(i, acc):
        start = jnp.minimum(i * c, n - c)
        r = jax.lax.dynamic_slice_in_dim(rows, start, c)
        w = jax.lax.dynamic_slice_in_dim(weights, start, c)
        w = jnp.where(start + jnp.arange(c) >= i * c, w, 0.0)  # rows of an overlap: once
        return tuple(a + w @ lane for a, lane in zip(acc, lanes(r), strict=True))

    return add_block(0, zeros) if k == 1 else jax.lax.fori_loop(0, k, add_block, zeros)


def vote_lanes(packed: ArrayLike, weights: ArrayLike, scheme: str = "2bit"
               ) -> tuple[jax.Array, ...]:
    """Eq. (3)'s vote sum ``sum_k w_k T_k`` over packed ternaries, decoded in cache and
    left in the codec's lanes (``codec.unpack_lanes_jnp``: one f32 per byte and trit
    position; ``codec.interleave_lanes`` makes the f32[M] sum).

    What :func:`unpack_update` adds to the pilot's model before scaling; a master that
    streams its workers (``--worker-chunk``) adds it up chunk by chunk. With one beta
    for every worker the weights ``w_k = S_k`` are integers (:func:`update_weights`)
    and so is every partial sum: chunked and whole sums are equal bit for bit.

    Args:
      packed: u8[N, packed_size(M)]; weights: f32[N] (0 drops a row).

    Returns:
      4 (2bit) or 5 (base3) lanes f32[packed_size(M)].
    """
    return _lane_sums(jnp.asarray(packed), jnp.asarray(weights, _f32),
                      lambda r: codec.unpack_lanes_jnp(r, scheme))


def vote_sum(packed: ArrayLike, weights: ArrayLike, n: int, scheme: str = "2bit"
             ) -> jax.Array:
    """:func:`vote_lanes` interleaved: ``sum_k w_k T_k`` f32[M] (``n`` = M, static)."""
    return codec.interleave_lanes(vote_lanes(packed, weights, scheme), n)


def apply_lanes(q_pilot: ArrayLike, lanes, c: ArrayLike, p_prev: ArrayLike,
                p_prev2: ArrayLike, epoch: ArrayLike, direction: int = 1) -> jax.Array:
    """Eq. (3) from the vote sum in lanes (:func:`vote_lanes`): :func:`apply_votes` of
    their interleave, one loop over the M parameters (the last step of
    :func:`unpack_update`)."""
    return apply_votes(q_pilot, codec.interleave_lanes(lanes, jnp.shape(q_pilot)[-1]), c,
                       p_prev, p_prev2, epoch, direction)


def integer_votes(packed: ArrayLike, n: int, sizes: ArrayLike, pilot: ArrayLike,
                  alpha0: ArrayLike, beta: ArrayLike, epoch: ArrayLike, scheme: str = "2bit",
                  mask: ArrayLike | None = None, frac_bits: int = 0
                  ) -> tuple[jax.Array, jax.Array]:
    """Each worker's share of Eq. (3)'s vote sum as integers: ``round(w_k 2^F) T_k``
    (:func:`update_weights`; zeros for the pilot and dropped workers), what a worker
    submits to a secure sum so that the master learns only their total.

    With one beta (``frac_bits`` 0) the rows are ``S_k T_k`` and their sum is exactly the
    plain master's vote sum; otherwise ``F`` fractional bits bound the sum's error by
    ``N 2^-(F+1)`` of one sample's weight.

    Args:
      packed: u8[N, packed_size(M)] the ternaries; n: M (static).

    Returns:
      (i32[N, M] the rows, f32[] the scale ``c 2^-F`` that turns their sum into votes).
    """
    w, scale = integer_weights(sizes, pilot, alpha0, beta, epoch, mask, frac_bits)
    trits = codec.unpack_jnp(jnp.asarray(packed), n, scheme).astype(jnp.int32)
    return trits * w[:, None], scale


def integer_weights(sizes: ArrayLike, pilot: ArrayLike, alpha0: ArrayLike, beta: ArrayLike,
                    epoch: ArrayLike, mask: ArrayLike | None = None, frac_bits: int = 0
                    ) -> tuple[jax.Array, jax.Array]:
    """The integer weights ``round(w_k 2^F)`` of :func:`integer_votes` (i32[N]) and the
    scale ``c 2^-F`` (f32[]) that turns the sum of the rows into Eq. (3)'s votes; a
    master that receives only that sum needs the scale alone."""
    w, c = update_weights(sizes, pilot, alpha0, beta, epoch, mask)
    return jnp.round(w * 2.0**frac_bits).astype(jnp.int32), c * 2.0**-frac_bits


def apply_votes(q_pilot: ArrayLike, total: ArrayLike, c: ArrayLike, p_prev: ArrayLike,
                p_prev2: ArrayLike, epoch: ArrayLike, direction: int = 1) -> jax.Array:
    """Eq. (3) from the vote sum: ``Q + d c total (1 at t = 1, else P^{t-1} - P^{t-2})``.

    Args:
      q_pilot: f32[M] Q_{k*}; total: f32[M] ``sum_k w_k T_k`` (:func:`update_weights`,
        or the sum a secure aggregation returns); c: its scale.

    Returns:
      f32[M] P^t.
    """
    _check_direction(direction)
    step = jnp.asarray(p_prev, _f32) - jnp.asarray(p_prev2, _f32)
    scale = jnp.where(epoch == 1, jnp.ones_like(step), step)
    votes = jnp.asarray(c, _f32) * jnp.asarray(total, _f32)
    return jnp.asarray(q_pilot, _f32) + direction * votes * scale


@functools.partial(jax.jit, static_argnames=("direction",))
def master_update(q_pilot: ArrayLike, ternaries: ArrayLike, sizes: ArrayLike,
                  pilot: ArrayLike, p_prev: ArrayLike, p_prev2: ArrayLike,
                  alpha0: ArrayLike, beta: ArrayLike, epoch: ArrayLike,
                  direction: int = 1) -> jax.Array:
    """The master's new global model P^t, Eq. (3).

    t = 1: ``P^t = Q_{k*} + d alpha0 sum_{k != k*} p_k T_k``;
    t > 1: ``P^t = Q_{k*} + d sum_{k != k*} p_k beta_k T_k (P^{t-1} - P^{t-2})``.

    Args:
      q_pilot: f32[M] the pilot's model Q_{k*}^t.
      ternaries: i8[N, M]; the pilot's row is ignored.
      sizes: [N] S_k.
      pilot: k*.
      p_prev: f32[M] P^{t-1}.
      p_prev2: f32[M] P^{t-2} (ignored at t = 1).
      alpha0: the master's learning rate.
      beta: scalar or f32[N].
      epoch: t, 1-based.
      direction: d, +1 (default, Appendix A) or -1 (Eq. 3 as printed).

    Returns:
      f32[M].
    """
    _check_direction(direction)
    w, c = update_weights(sizes, pilot, alpha0, beta, epoch)
    t = jnp.asarray(ternaries)
    total = _weighted_rows(t, w, lambda r: (r.astype(_f32),), t.shape[-1])
    return apply_votes(q_pilot, total, c, p_prev, p_prev2, epoch, direction)


@functools.partial(jax.jit, static_argnames=("scheme",))
def ternarize_pack(q: ArrayLike, p_prev: ArrayLike, p_prev2: ArrayLike, alpha: ArrayLike,
                   beta: ArrayLike, epoch: ArrayLike, scheme: str = "2bit") -> jax.Array:
    """Fused worker kernel: ``codec.pack(ternarize(...), scheme)`` in one pass.

    Returns:
      u8[packed_size(M, scheme)].
    """
    return codec.pack_jnp(ternarize(q, p_prev, p_prev2, alpha, beta, epoch), scheme)


@functools.partial(jax.jit, static_argnames=("direction", "scheme"))
def unpack_update(q_pilot: ArrayLike, packed: ArrayLike, sizes: ArrayLike, pilot: ArrayLike,
                  p_prev: ArrayLike, p_prev2: ArrayLike, alpha0: ArrayLike, beta: ArrayLike,
                  epoch: ArrayLike, direction: int = 1, scheme: str = "2bit",
                  mask: ArrayLike | None = None) -> jax.Array:
    """Fused master kernel: unpack every ternary and apply Eq. (3) in one pass.

    Equal to ``master_update(q_pilot, unpack(packed), ...)`` with the rows where
    ``mask`` is False treated as all-zero ternaries (dropped contributions).

    Args:
      q_pilot: f32[M].
      packed: u8[N, packed_size(M, scheme)]; the pilot's row is ignored.
      mask: optional bool[N], False drops a worker's ternary.
      (others as in :func:`master_update`)

    Returns:
      f32[M].
    """
    _check_direction(direction)
    w, c = update_weights(sizes, pilot, alpha0, beta, epoch, mask)
    return apply_lanes(q_pilot, vote_lanes(packed, w, scheme), c, p_prev, p_prev2, epoch,
                       direction)


def _check_direction(direction: int) -> None:
    if direction not in (1, -1):
        raise ValueError(f"`direction` (={direction}) must be +1 or -1.")


# Unfused references of the two kernels above: each stage is its own jitted call and
# its intermediate (i8[M] ternary, i8[N, M] unpacked rows) goes through memory. Tests
# compare the fused kernels with these; sims/bench/kernels.py times both.

_pack = jax.jit(codec.pack_jnp, static_argnames=("scheme",))


@functools.partial(jax.jit, static_argnames=("n", "scheme"))
def _unpack_rows(packed: jax.Array, n: int, scheme: str, mask: jax.Array | None) -> jax.Array:
    t = codec.unpack_jnp(packed, n, scheme)
    return t if mask is None else jnp.where(jnp.asarray(mask, bool)[:, None], t, 0)


def ternarize_then_pack(q: ArrayLike, p_prev: ArrayLike, p_prev2: ArrayLike, alpha: ArrayLike,
                        beta: ArrayLike, epoch: ArrayLike, scheme: str = "2bit") -> jax.Array:
    """Unfused :func:`ternarize_pack`: :func:`ternarize`, then ``codec.pack_jnp``.

    Returns:
      u8[packed_size(M, scheme)].
    """
    return _pack(ternarize(q, p_prev, p_prev2, alpha, beta, epoch), scheme=scheme)


def unpack_then_update(q_pilot: ArrayLike, packed: ArrayLike, sizes: ArrayLike,
                       pilot: ArrayLike, p_prev: ArrayLike, p_prev2: ArrayLike,
                       alpha0: ArrayLike, beta: ArrayLike, epoch: ArrayLike,
                       direction: int = 1, scheme: str = "2bit",
                       mask: ArrayLike | None = None) -> jax.Array:
    """Unfused :func:`unpack_update`: unpack to i8[N, M] (masked rows zeroed), then
    :func:`master_update` (Eq. 3).

    Returns:
      f32[M].
    """
    t = _unpack_rows(jnp.asarray(packed), jnp.shape(q_pilot)[-1], scheme,
                     None if mask is None else jnp.asarray(mask, bool))
    return master_update(q_pilot, t, sizes, pilot, p_prev, p_prev2, alpha0, beta, epoch,
                         direction=direction)
