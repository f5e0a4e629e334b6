"""Ternary packing (DESIGN §2): numpy on the host, jnp under jit.

Two packings of a ternary vector T in {-1, 0, +1}^n:

* ``"2bit"`` (the paper's, Section 3.3): 4 values per byte, value ``i`` in bits
  ``2*(i % 4)`` and ``2*(i % 4) + 1`` of byte ``i // 4``, least significant first;
  codes ``0 -> 00``, ``+1 -> 01``, ``-1 -> 11`` (two's complement), ``10`` invalid.
* ``"base3"``: 5 values per byte, ``byte = sum_i (T_i + 1) * 3**i``, first value
  least significant; bytes above 242 are invalid. 1.6 bits per value, 20 % less
  than ``"2bit"``.

The tail of the last byte is padded with the value 0. The numpy functions
(:func:`pack`, :func:`unpack`, :func:`check_packed`) validate and raise
:class:`ValueError`; the jnp functions (:func:`pack_jnp`, :func:`unpack_jnp` and the
lane decoders) are jittable and cannot raise, so frames are validated on the host
(``codec.decode_ternary``, ``codec.decode_packed``) before their payload reaches a
jitted kernel.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

SCHEMES = ("2bit", "base3")
_PER_BYTE = {"2bit": 4, "base3": 5}
_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.int32)


def _check_scheme(scheme: str) -> None:
    if scheme not in _PER_BYTE:
        raise ValueError(f"`scheme` (={scheme!r}) must be one of {SCHEMES}.")


def packed_size(n: int, scheme: str = "2bit") -> int:
    """Bytes needed for ``n`` trits: ``ceil(n / 4)`` (2bit) or ``ceil(n / 5)`` (base3)."""
    _check_scheme(scheme)
    if n < 0:
        raise ValueError(f"`n` (={n}) must be >= 0.")
    return -(-n // _PER_BYTE[scheme])


def bits_per_trit(scheme: str) -> float:
    """Wire cost of one trit: 2 (2bit) or 1.6 (base3); the bound is log2(3)."""
    _check_scheme(scheme)
    return 8 / _PER_BYTE[scheme]


def _byte_view(payload) -> memoryview:
    """A flat, read-only byte view of a payload; no copy for bytes and contiguous arrays."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return memoryview(payload).cast("B")
    arr = np.ascontiguousarray(np.asarray(payload)).reshape(-1)
    return memoryview(arr.view(np.uint8))


# --------------------------------------------------------------------------- numpy


def _is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def pack(t, scheme: str = "2bit"):
    """Packs a ternary vector into bytes (DESIGN §2).

    Args:
      t: i8[n] with values in {-1, 0, +1} (numpy or jax array).
      scheme: ``"2bit"`` or ``"base3"``.

    Returns:
      u8[packed_size(n)]: a numpy array; a jax array when ``t`` is traced (under jit).

    Raises:
      ValueError: on values outside {-1, 0, +1} or an unknown scheme.
    """
    _check_scheme(scheme)
    if _is_traced(t):
        return pack_jnp(t, scheme)
    t = np.asarray(t).reshape(-1)
    if t.size and not np.isin(t, (-1, 0, 1)).all():
        bad = t[~np.isin(t, (-1, 0, 1))][0]
        raise ValueError(f"ternary values must be in {{-1, 0, 1}}, got {bad!r}.")
    per = _PER_BYTE[scheme]
    n = t.size
    padded = np.zeros(packed_size(n, scheme) * per, dtype=np.int32)
    padded[:n] = t
    groups = padded.reshape(-1, per)
    if scheme == "2bit":
        codes = groups & 0b11  # two's complement: -1 -> 11, +1 -> 01, 0 -> 00
        out = (codes << np.array([0, 2, 4, 6], dtype=np.int32)).sum(axis=1)
    else:
        out = ((groups + 1) * _POW3).sum(axis=1)
    return out.astype(np.uint8)


def unpack(buf, n: int, scheme: str = "2bit"):
    """Unpacks bytes into a ternary vector, the inverse of :func:`pack`.

    Args:
      buf: u8[packed_size(n)] (numpy, bytes or jax array).
      n: number of trits.
      scheme: ``"2bit"`` or ``"base3"``.

    Returns:
      i8[n]: a numpy array; a jax array when ``buf`` is traced (no validation then).

    Raises:
      ValueError: on a wrong length, an invalid code (2-bit ``10``, base-3 byte > 242)
        or a tail padding slot that is not the value 0.
    """
    _check_scheme(scheme)
    if _is_traced(buf):
        return unpack_jnp(buf, n, scheme)
    if isinstance(buf, (bytes, bytearray, memoryview)):
        buf = np.frombuffer(buf, dtype=np.uint8)
    buf = np.asarray(buf)
    if buf.dtype != np.uint8:
        raise ValueError(f"packed buffer must be uint8, got dtype {buf.dtype}.")
    buf = buf.reshape(-1)
    expected = packed_size(n, scheme)
    if buf.size != expected:
        raise ValueError(
            f"packed buffer has {buf.size} bytes; {n} trits in {scheme!r} need {expected}."
        )
    b = buf.astype(np.int32)
    if scheme == "2bit":
        codes = (b[:, None] >> np.array([0, 2, 4, 6], dtype=np.int32)) & 0b11
        if (codes == 0b10).any():
            pos = int(np.argmax((codes == 0b10).reshape(-1)))
            raise ValueError(f"invalid 2-bit code 0b10 at trit {pos}.")
        trits = np.where(codes == 0b11, -1, codes).reshape(-1)
    else:
        if (b > 242).any():
            pos = int(np.argmax(b > 242))
            raise ValueError(f"invalid base-3 byte {int(b[pos])} (> 242) at byte {pos}.")
        trits = ((b[:, None] // _POW3) % 3 - 1).reshape(-1)
    if trits[n:].any():
        raise ValueError(f"tail padding after trit {n} must be the value 0.")
    return trits[:n].astype(np.int8)


def check_packed(buf, n: int, scheme: str = "2bit") -> None:
    """Validates packed trits without unpacking them: the checks of :func:`unpack`
    (length, invalid codes, zero tail padding) in a few byte-wide passes.

    Args:
      buf: u8[packed_size(n)].
      n: number of trits.
      scheme: ``"2bit"`` or ``"base3"``.

    Raises:
      ValueError: as :func:`unpack` does.
    """
    _check_scheme(scheme)
    b = np.frombuffer(_byte_view(buf), np.uint8)
    expected = packed_size(n, scheme)
    if b.size != expected:
        raise ValueError(
            f"packed buffer has {b.size} bytes; {n} trits in {scheme!r} need {expected}.")
    if scheme == "2bit":
        bad = (b >> 1) & ~b & 0x55  # the high bit of a code set, its low bit clear: 10
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            slot = next(j for j in range(4) if int(bad[i]) >> (2 * j) & 1)
            raise ValueError(f"invalid 2-bit code 0b10 at trit {4 * i + slot}.")
    elif (b > 242).any():
        pos = int(np.argmax(b > 242))
        raise ValueError(f"invalid base-3 byte {int(b[pos])} (> 242) at byte {pos}.")
    if b.size:  # the tail lives in the last byte
        per = _PER_BYTE[scheme]
        if unpack(b[-1:], per, scheme)[n - (b.size - 1) * per:].any():
            raise ValueError(f"tail padding after trit {n} must be the value 0.")


# --------------------------------------------------------------------------- jnp


def _split_tail(t: jax.Array, per: int):
    """Whole groups of ``per`` values ``[..., n // per, per]`` and the tail, padded to one
    group with the value 0; slicing (not padding) the body keeps it in the producer's
    fusion, so ternarize-and-pack reads Q once."""
    n = t.shape[-1]
    whole = n // per * per
    body = t[..., :whole].reshape(*t.shape[:-1], -1, per)
    tail = t[..., whole:]
    if tail.shape[-1]:
        tail = jnp.pad(tail, [(0, 0)] * (t.ndim - 1) + [(0, per - tail.shape[-1])])
    return body, tail.reshape(*t.shape[:-1], -1, per)


def pack_jnp(t: jax.Array, scheme: str = "2bit") -> jax.Array:
    """Jittable :func:`pack` (``scheme`` static); values outside {-1, 0, 1} are not checked.

    Args:
      t: i8[..., n] (any integer dtype) ternary vectors, packed along the last axis.
      scheme: ``"2bit"`` or ``"base3"``.

    Returns:
      u8[..., packed_size(n)].
    """
    _check_scheme(scheme)
    body, tail = _split_tail(t, _PER_BYTE[scheme])
    if scheme == "2bit":
        # Four int8 trits are one little-endian uint32 whose bytes are 0x00, 0x01 or
        # 0xFF; keep the low two bits of each and slide them together.
        def pack4(g):
            x = jax.lax.bitcast_convert_type(g.astype(jnp.int8), jnp.uint32) & 0x03030303
            return (x & 0x3) | ((x >> 6) & 0xC) | ((x >> 12) & 0x30) | ((x >> 18) & 0xC0)
    else:
        def pack4(g):
            return jnp.sum((g.astype(jnp.int32) + 1) * jnp.asarray(_POW3), axis=-1)
    return jnp.concatenate([pack4(body), pack4(tail)], axis=-1).astype(jnp.uint8)


def unpack_jnp(buf: jax.Array, n: int, scheme: str = "2bit") -> jax.Array:
    """Jittable :func:`unpack` (``n``, ``scheme`` static) over the last axis.

    Cannot raise under jit: the invalid 2-bit code ``10`` decodes as 0 and a base-3
    byte > 242 decodes to arbitrary trits. Validate untrusted bytes with
    :func:`unpack` or ``codec.decode_ternary`` first.

    Args:
      buf: u8[..., packed_size(n)].
      n: number of trits.
      scheme: ``"2bit"`` or ``"base3"``.

    Returns:
      i8[..., n].
    """
    _check_scheme(scheme)
    if scheme == "2bit":
        # Spread the four 2-bit codes of a byte into the four bytes of a uint32, map
        # 01 -> 0x01 and 11 -> 0xFF (the invalid 10 -> 0x00), read them as int8.
        x = buf.astype(jnp.uint32)
        x = (x | (x << 6) | (x << 12) | (x << 18)) & 0x03030303
        x = (x & 0x01010101) * jnp.uint32(0xFF) & ((x & 0x02020202) * jnp.uint32(0x7F)
                                                  | 0x01010101)
        trits = jax.lax.bitcast_convert_type(x, jnp.int8)
    else:
        b = buf.astype(jnp.int32)[..., None]
        trits = ((b // jnp.asarray(_POW3)) % 3 - 1).astype(jnp.int8)
    return trits.reshape(*buf.shape[:-1], -1)[..., :n]


def unpack_lanes_jnp(buf: jax.Array, scheme: str = "2bit") -> tuple[jax.Array, ...]:
    """Packed bytes as float32 trit lanes: lane ``j`` holds the trits ``j, j + per, ...``.

    Trit ``i`` of a vector is ``lanes[i % per][..., i // per]`` (``per`` = 4 for
    ``"2bit"``, 5 for ``"base3"``). Each lane is an elementwise function of the
    bytes with constant shifts or divisors, so XLA fuses it into the consumer's
    loop and vectorizes it; the master's Eq. (3) sums lanes and interleaves once.
    Values equal :func:`unpack_jnp`'s for every byte, invalid ones included.

    Args:
      buf: u8[..., B].

    Returns:
      ``per`` arrays f32[..., B].
    """
    _check_scheme(scheme)
    if scheme == "2bit":
        b = buf.astype(jnp.int32)
        # code 01 -> +1, 11 -> -1, 00 and the invalid 10 -> 0.
        return tuple(((c & 1) * (1 - (c & 2))).astype(jnp.float32)
                     for c in ((b >> s) & 3 for s in (0, 2, 4, 6)))
    # digit_j = floor(b / 3^j) mod 3, in float32: b + 0.5 keeps every quotient at
    # least 0.5 / 81 away from an integer, far above float32 rounding.
    b = buf.astype(jnp.float32) + 0.5
    lanes = []
    for j in range(5):
        q = jnp.floor(b * (1 / 3**j))
        lanes.append(q - 3.0 * jnp.floor((q + 0.5) * (1 / 3)) - 1.0)
    return tuple(lanes)


def interleave_lanes(lanes, n: int) -> jax.Array:
    """The inverse of the lane split: ``per`` arrays f32[..., B] -> f32[..., n].

    The lanes are stacked along a new leading axis (whole contiguous rows) and
    transposed: the consumer reads ``stacked[i % per, ..., i // per]``, a strided
    load. Stacking along the last axis instead puts a ``per``-way select per
    element into the consumer's loop, about 3x slower at M = 1M.
    """
    if len(lanes) == 1:
        return lanes[0][..., :n]
    out = jnp.moveaxis(jnp.stack(lanes, axis=0), 0, -1)
    return out.reshape(*lanes[0].shape[:-1], -1)[..., :n]


def unpack_f32_jnp(buf: jax.Array, n: int, scheme: str = "2bit") -> jax.Array:
    """``unpack_jnp(buf, n, scheme).astype(float32)`` from :func:`unpack_lanes_jnp`.

    Returns:
      f32[..., n].
    """
    return interleave_lanes(unpack_lanes_jnp(buf, scheme), n)


# Non-zero trits in each base-3 byte value (bytes > 242 are invalid: counted as 0).
_BASE3_NONZERO = np.array(
    [sum((b // 3**i) % 3 != 1 for i in range(5)) if b <= 242 else 0 for b in range(256)],
    dtype=np.int32)


def count_nonzero_jnp(buf: jax.Array, scheme: str = "2bit") -> jax.Array:
    """Non-zero trits in packed bytes (padding trits are 0), summed over the last axis.

    For ``"2bit"`` a trit is non-zero exactly when the low bit of its code is set
    (``01`` or ``11``), so this is a popcount of ``byte & 0b01010101``.

    Returns:
      i32[...] (the leading axes of ``buf``).
    """
    _check_scheme(scheme)
    if scheme == "2bit":
        counts = jax.lax.population_count(buf.astype(jnp.uint8) & 0x55).astype(jnp.int32)
    else:
        counts = jnp.asarray(_BASE3_NONZERO)[buf.astype(jnp.int32)]
    return jnp.sum(counts, axis=-1)


__all__ = [
    "SCHEMES", "packed_size", "bits_per_trit", "pack", "unpack", "check_packed", "pack_jnp",
    "unpack_jnp", "unpack_lanes_jnp", "interleave_lanes", "unpack_f32_jnp",
    "count_nonzero_jnp",
]
