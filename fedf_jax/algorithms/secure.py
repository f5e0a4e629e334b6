"""The secure sums of the algorithms (``--secure-sum``, DESIGN §8): a shield for each layer.

A master that needs only a sum gets only the sum:

- ``secagg`` (the lower layer, workers to their master): secure aggregation (Bonawitz
  et al. 2017; ``secure.secagg``). For FEDF every worker submits its integer share of
  Eq. (3)'s vote sum (``protocol.integer_votes``: ``S_k T_k`` with one beta, exact;
  fixed point otherwise), the pilot and dropped workers submit masked zeros, and the
  master applies Eq. (3) to the total (``master.apply_total``): with one beta, the same
  pilots and the same final model as ``none``, bit for bit. For ADMM the sums of x_i + u_i
  (or of the partial scores) and of the statistics go through it in fixed point.
- ``paillier`` (with ``--groups``): secure aggregation inside each group, and the
  groups' shares of the top's vote sum encrypted with packed Paillier (``secure.paillier``)
  under a key held by group master 0: the top multiplies the ciphertexts and has group
  master 0 decrypt only their product, so the top never holds the key (after Phong et
  al. 2018) and learns only the sum.

The sums run on the host inside the jitted epoch (``jax.pure_callback``; under the
groups' vmap, one round per group), every party simulated. The run log counts what the
secure layers send, both ways, in fields of their own (:func:`account`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedf_jax import codec, keys
from fedf_jax.secure import sums

STEPS = ("keys", "shares", "masked", "unmask")  # secagg.ROUNDS, as run-log field names
PAILLIER_SLOT = 32  # bits per packed slot: |S_g T_g| < 2^23, head-room for 256 groups


class SecureSum(NamedTuple):
    """A sum of integer vote rows through a secure layer, inside a jitted epoch:
    ``total(rows i32[n, M], epoch i32[]) -> i32[M]``; ``frac_bits``: the rows' fixed point
    (0: exact integers)."""

    total: Callable[[jax.Array, jax.Array], jax.Array]
    frac_bits: int


def seed_bytes(seed: int) -> bytes:
    """The secure layers' secrets in a simulation: the run's ``keys.SECURE`` stream."""
    return np.asarray(jax.random.key_data(keys.stream(seed, keys.SECURE))).tobytes()


def frac_bits(sizes: np.ndarray, betas: np.ndarray) -> int:
    """0 when the weights are the integers S_k (one beta); else the most fractional bits
    that keep the total, up to S 2^F, inside int32."""
    betas = np.asarray(betas)
    if np.all(betas == betas.flat[0]):
        return 0
    return max(0, 30 - math.ceil(math.log2(float(np.sum(sizes)) + 1)))


def _digest(a: np.ndarray) -> bytes:
    """A short digest of a round's inputs, mixed into its context: fresh masks per round."""
    return hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=8).digest()


def _in_jit(host: Callable[[np.ndarray, int], np.ndarray]):
    def total(rows, epoch):
        out = jax.ShapeDtypeStruct(rows.shape[1:], jnp.int32)
        return jax.pure_callback(lambda v, t: host(np.asarray(v), int(t)), out, rows, epoch,
                                 vmap_method="sequential")
    return total


def secagg_votes(seed: int, bits: int, level: bytes = b"") -> SecureSum:
    """The vote rows through a secagg round (one per call; under vmap, one per group)."""
    secret = seed_bytes(seed)

    def host(rows, epoch):
        context = b"fedf%s epoch %d " % (level, epoch) + _digest(rows)
        return sums.integer_sum(rows, secret, context)[0]

    return SecureSum(_in_jit(host), bits)


def paillier_votes(seed: int, bits: int, key_bits: int = 2048) -> SecureSum:
    """The groups' vote rows encrypted to the top (packed Paillier, ``PAILLIER_SLOT``-bit
    slots): the top multiplies the ciphertexts, group master 0 holds the key and decrypts
    only the product."""
    from fedf_jax.secure import paillier  # gmpy2: the `secure` extra

    pk, sk = paillier.keygen(key_bits, seed=seed_bytes(seed) + b"paillier")

    def host(rows, epoch):
        del epoch
        cts = [paillier.encrypt(pk, row.astype(np.int64), PAILLIER_SLOT) for row in rows]
        product = paillier.sum_ciphertexts(pk, cts)
        return paillier.decrypt(sk, product, rows.shape[1], PAILLIER_SLOT).astype(np.int32)

    return SecureSum(_in_jit(host), bits)


def paillier_bytes(n_groups: int, m: int, key_bits: int) -> int:
    """Bytes of the top's Paillier sum: every group's ciphertext up, their product to the
    key holder, the decrypted sum (4 bytes a value) back to the top."""
    from fedf_jax.secure import paillier

    per = (key_bits - 1) // PAILLIER_SLOT  # values per ciphertext (paillier.slots)
    one = paillier.HEADER_SIZE + -(-m // per) * 2 * key_bits // 8
    return (n_groups + 1) * one + 4 * m


def aggregate(seed: int) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """ADMM's sum over parties through secure aggregation: ``sums.fixed_sum`` on the host
    (fixed point; every client's masking, the server's unmasking); under the groups'
    vmap, each group's sum is its own round."""
    secret = seed_bytes(seed)

    def fn(values, weights):
        out = jax.ShapeDtypeStruct(values.shape[1:], jnp.float32)
        return jax.pure_callback(lambda v, w: sums.fixed_sum(v, w, secret, b"admm"), out,
                                 values, weights, vmap_method="sequential")

    return fn


def account(rec: dict[str, Any], rounds: list[tuple[int, int]], n_ternaries: int,
            paillier: int = 0) -> dict[str, Any]:
    """A FEDF epoch's run-log line with the secure layers' bytes in place of the
    ``n_ternaries`` ternary frames they replaced: ``rounds`` the (clients, length) of each
    secagg round (4-byte values, every client staying: ``sums.round_bytes``), ``paillier``
    the Paillier bytes. Fields ``bytes_secagg_keys``, ``_shares``, ``_masked``,
    ``_unmask`` and ``bytes_paillier``, all in ``bytes_total``."""
    moved = sum((sums.round_bytes(n, m, 4) for n, m in rounds), np.zeros(4, np.int64))
    for step, v in zip(STEPS, moved, strict=True):
        rec[f"bytes_secagg_{step}"] = rec.get(f"bytes_secagg_{step}", 0) + int(v)
    if paillier:
        rec["bytes_paillier"] = rec.get("bytes_paillier", 0) + int(paillier)
    gone = rec["bytes_up_ternary"] + codec.HEADER_SIZE * n_ternaries
    rec["bytes_header"] -= codec.HEADER_SIZE * n_ternaries
    rec["bytes_total"] += int(moved.sum()) + int(paillier) - gone
    rec["bytes_up_ternary"] = 0
    return rec


__all__ = ["STEPS", "PAILLIER_SLOT", "SecureSum", "seed_bytes", "frac_bits", "secagg_votes",
           "paillier_votes", "paillier_bytes", "aggregate", "account"]
