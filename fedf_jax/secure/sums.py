"""Sums through secure aggregation, as the algorithms need them: integer votes (FEDF's
Eq. 3) and real vectors in fixed point (ADMM), with the bytes each round moves.

Host-side numpy around :func:`secagg.simulate_round` (every client's masking, the
server's unmasking, messages in memory). A seeded simulation draws each round's
secrets from the seed and a per-round context, so that masks never repeat across
rounds. The threshold is a majority, ``n // 2 + 1`` (secagg's rule without its
consistency round).
"""

from __future__ import annotations

import hashlib

import numpy as np

from fedf_jax.secure import secagg

FRAC_BITS = 32  # fixed point of real values: round(v 2^32) in int64, summed modulo 2^64


def _round(inputs: np.ndarray, seed: bytes, context: bytes) -> tuple[np.ndarray, np.ndarray]:
    n = inputs.shape[0]
    total, _, counted = secagg.simulate_round(inputs, threshold=n // 2 + 1, seed=seed,
                                              context=context, return_bytes=True)
    return total, (np.asarray(counted.sent) + np.asarray(counted.received)).sum(axis=0)


def integer_sum(votes: np.ndarray, seed: bytes, context: bytes
                ) -> tuple[np.ndarray, np.ndarray]:
    """The exact sum of integer rows (i32[n, M], each client's row, as u32 modulo 2^32).

    Returns:
      (i32[M] the sum, i64[4] the bytes each step of the round moved, sent and received,
      over all clients: ``secagg.ROUNDS``). The sum must fit int32 (the caller's bound).
    """
    votes = np.ascontiguousarray(votes, np.int32)
    total, moved = _round(votes.view(np.uint32), seed, context)
    return total.view(np.int32), moved


def fixed_sum(values: np.ndarray, weights: np.ndarray, seed: bytes,
              context: bytes = b"") -> np.ndarray:
    """``sum_i weights_i values_i`` over the leading (client) axis, in fixed point: each
    client submits ``round(w_i v_i 2^32)`` modulo 2^64. The error is at most
    ``n 2^-33`` per element (each summand rounded once); values times weights must stay
    below 2^31 in magnitude.

    Args:
      values: f[n, ...] one block per client; weights: f[n] (0: the client sends zeros).
      context: the round's label; the values' digest is mixed in, so that each call
        draws fresh masks.

    Returns:
      f32[...] the sum.
    """
    v = np.asarray(values, np.float64)
    w = np.asarray(weights, np.float64).reshape((-1,) + (1,) * (v.ndim - 1))
    scaled = w * v * 2.0**FRAC_BITS
    if not np.all(np.abs(scaled) < 2.0**63):
        raise ValueError(f"a weighted value (max |w v| = {np.abs(w * v).max():.3g}) does not "
                         f"fit the fixed point of the secure sum (|w v| < 2^31).")
    fixed = np.rint(scaled).astype(np.int64).reshape(v.shape[0], -1)
    digest = hashlib.blake2b(fixed.tobytes(), digest_size=16).digest()
    total, _ = _round(fixed.view(np.uint64), seed, context + digest)
    return (total.view(np.int64).astype(np.float64) / 2.0**FRAC_BITS).astype(
        np.float32).reshape(v.shape[1:])


def round_bytes(n: int, m: int, width: int) -> np.ndarray:
    """i64[4]: the bytes one round of ``n`` clients moves per step (``secagg.ROUNDS``),
    sent and received, when every client stays: keys 68 n + 68 n^2, shares
    2 * 94 n (n - 1), masked vectors n (width m + 4 n), unmasking 37 n^2."""
    return np.array([68 * n + 68 * n * n, 2 * 94 * n * (n - 1), n * (width * m + 4 * n),
                     37 * n * n], np.int64)


__all__ = ["FRAC_BITS", "integer_sum", "fixed_sum", "round_bytes"]
