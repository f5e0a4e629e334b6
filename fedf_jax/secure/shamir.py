"""Shamir t-of-n secret sharing over the prime field GF(2^256 + 297): plain integer
arithmetic (Horner evaluation, Lagrange interpolation at 0), not a cipher. Secure
aggregation (:mod:`fedf_jax.secure.secagg`) shares its 32-byte mask seeds with it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

PRIME = 2**256 + 297  # every 32-byte secret is an element
SHARE_BYTES = 33


def shamir_share(secret: int, xs: Sequence[int], threshold: int,
                 rand: Callable[[int], bytes]) -> list[int]:
    """Shares of ``secret`` at points ``xs`` (non-zero), any ``threshold`` of which rebuild it."""
    # 48 random bytes mod PRIME: bias below 2^-128
    coeffs = [secret] + [int.from_bytes(rand(48), "big") % PRIME for _ in range(threshold - 1)]
    out = []
    for x in xs:
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        out.append(y)
    return out


def shamir_reconstruct(points: Sequence[tuple[int, int]]) -> int:
    """Lagrange interpolation at 0 of (x, share) points with distinct non-zero x."""
    total = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if j != i:
                num, den = num * xj % PRIME, den * (xj - xi) % PRIME
        total = (total + yi * num * pow(den, -1, PRIME)) % PRIME
    return total


__all__ = ["PRIME", "SHARE_BYTES", "shamir_share", "shamir_reconstruct"]
