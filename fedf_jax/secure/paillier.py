"""Packed Paillier encryption on gmpy2 (Paillier 1999; packing after Phong et al. 2018).

Scheme (Paillier 1999, Scheme 1 with g = n + 1): E(m) = (1 + m n) r^n mod n^2, and
E(a) E(b) = E(a + b mod n). Decryption uses the CRT over p^2 and q^2.

Packing: one plaintext m holds L = (bits(n) - 1) // slot_bits slots, m = sum_i v_i 2^(i s)
with s = ``slot_bits``, so one ciphertext carries L values (63 int32-sized slots at
2048 bits) and the product of ciphertexts adds slot by slot. Phong et al. 2018 pack
gradients the same way; the aggregator only multiplies ciphertexts and never holds the
key.

Negative values: the slots are signed digits, v_i in [-2^(s-1), 2^(s-1)); m is taken
mod n. Sums of signed digits are integer sums, so no offset needs to be undone. Decryption
adds B = sum_i 2^(s-1) 2^(i s) and reads base-2^s digits, each minus 2^(s-1). This is exact
while every slot of the sum stays in [-2^(s-1), 2^(s-1)) and 2^(L s) <= n.

Head-room rule: ``encrypt`` accepts |v| < 2^(s - 1 - h), h = ``headroom_bits``; a
ciphertext carries its summand count, and ``add`` refuses a sum of more than 2^h summands.
Then |slot| < 2^h 2^(s-1-h) = 2^(s-1): no slot overflows. Both raise ValueError naming the
bound.

Noise r^n mod n^2 does not depend on the message, so :class:`NoisePool` draws it ahead of
time (before the data exist). Each value is popped and used once: two ciphertexts with the
same r reveal the difference of their plaintexts to anyone. A :class:`PrivateKey` holder
(the participants in Phong et al.) computes the noise by the CRT, a few times faster.

gmpy2 is an optional extra (``pip install "fedf-jax[secure]"``).
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

try:
    import gmpy2
except ImportError as err:
    raise ImportError(
        'fedf_jax.secure.paillier needs gmpy2; install it with: pip install "fedf-jax[secure]"'
    ) from err

_MAGIC, _VERSION = b"FPAI", 1
_HEADER = struct.Struct("<4sBBBxIQII")  # magic, version, slot_bits, headroom, count, size,
HEADER_SIZE = _HEADER.size  # 28             ciphertexts, bytes per ciphertext


class PublicKey(NamedTuple):
    n: gmpy2.mpz
    nsquare: gmpy2.mpz


class PrivateKey(NamedTuple):
    public: PublicKey
    p: gmpy2.mpz
    q: gmpy2.mpz
    psquare: gmpy2.mpz
    qsquare: gmpy2.mpz
    hp: gmpy2.mpz  # L_p(g^(p-1) mod p^2)^-1 mod p
    hq: gmpy2.mpz
    p_inv_q: gmpy2.mpz  # p^-1 mod q
    psq_inv_qsq: gmpy2.mpz  # (p^2)^-1 mod q^2, for CRT noise


class Ciphertext(NamedTuple):
    """Packed ciphertexts of ``size`` values; plain data with a byte form for the wire."""

    values: tuple  # of gmpy2.mpz, each < n^2
    size: int  # M, values packed
    slot_bits: int
    headroom_bits: int
    count: int  # summands added so far
    width: int  # bytes per ciphertext on the wire, bytes(n^2)

    def to_bytes(self) -> bytes:
        head = _HEADER.pack(_MAGIC, _VERSION, self.slot_bits, self.headroom_bits, self.count,
                            self.size, len(self.values), self.width)
        return head + b"".join(int(c).to_bytes(self.width, "big") for c in self.values)

    @classmethod
    def from_bytes(cls, buf, pk: PublicKey | None = None) -> Ciphertext:
        """Parses :meth:`to_bytes`; with ``pk``, also checks each value is below n^2."""
        buf = bytes(buf)
        if len(buf) < HEADER_SIZE:
            raise ValueError(f"ciphertext of {len(buf)} bytes is shorter than its "
                             f"{HEADER_SIZE}-byte header.")
        magic, version, s, h, count, size, k, width = _HEADER.unpack_from(buf)
        if (magic, version) != (_MAGIC, _VERSION):
            raise ValueError(f"not a packed Paillier ciphertext (magic {magic!r}, version "
                             f"{version}; expected {_MAGIC!r}, {_VERSION}).")
        if len(buf) != HEADER_SIZE + k * width:
            raise ValueError(f"ciphertext is {len(buf)} bytes; its header says "
                             f"{HEADER_SIZE} + {k} x {width}.")
        vals = tuple(gmpy2.mpz(int.from_bytes(buf[i:i + width], "big"))
                     for i in range(HEADER_SIZE, len(buf), width))
        if pk is not None and (width != _width(pk) or any(c >= pk.nsquare for c in vals)):
            raise ValueError("ciphertext does not belong to this public key.")
        return cls(vals, size, s, h, count, width)


def _width(pk: PublicKey) -> int:
    return (int(pk.nsquare).bit_length() + 7) // 8


def _random_source(seed) -> Callable[[int], int]:
    """randbits(k): from ``secrets``, or a ChaCha20 keystream keyed by HKDF(seed) (tests)."""
    if seed is None:
        return secrets.randbits
    ikm = seed if isinstance(seed, bytes) else str(int(seed)).encode()
    key = HKDF(hashes.SHA256(), 32, salt=b"fedf-paillier/seed", info=b"").derive(ikm)
    enc = Cipher(algorithms.ChaCha20(key, bytes(16)), None).encryptor()
    return lambda k: int.from_bytes(enc.update(bytes((k + 7) // 8)), "big") >> (-k % 8)


def keygen(bits: int = 2048, seed=None) -> tuple[PublicKey, PrivateKey]:
    """Key pair with an n of exactly ``bits`` bits (two primes of bits/2 bits).

    Args:
      bits: even, >= 256. Below 2048 for tests only.
      seed: None (``secrets``), or an int/bytes for a reproducible test key.
    """
    if isinstance(bits, bool) or int(bits) != bits or bits < 256 or bits % 2:
        raise ValueError(f"`bits` (={bits}) must be an even int >= 256 (2048 for use).")
    half, randbits = bits // 2, _random_source(seed)

    def prime() -> gmpy2.mpz:
        while True:  # top two bits set, so that p q has exactly `bits` bits
            p = gmpy2.next_prime(gmpy2.mpz(randbits(half)) | (3 << (half - 2)))
            if p.bit_length() == half and gmpy2.is_prime(p, 50):
                return p

    p = prime()
    q = prime()
    while q == p:
        q = prime()
    n = p * q
    if gmpy2.gcd(n, (p - 1) * (q - 1)) != 1:  # pragma: no cover - cannot happen for equal sizes
        raise ValueError("gcd(n, phi(n)) != 1; draw another key.")
    pk = PublicKey(n, n * n)
    p2, q2, g = p * p, q * q, n + 1

    def h(x, x2):
        return gmpy2.invert((gmpy2.powmod(g, x - 1, x2) - 1) // x, x)

    return pk, PrivateKey(pk, p, q, p2, q2, h(p, p2), h(q, q2), gmpy2.invert(p, q),
                          gmpy2.invert(p2, q2))


def _public(key: PublicKey | PrivateKey) -> PublicKey:
    return key.public if isinstance(key, PrivateKey) else key


def _unit(mod, factor, randbits) -> gmpy2.mpz:
    """Uniform in [0, mod) (bias < 2^-64), not a multiple of ``factor``."""
    while True:
        r = gmpy2.mpz(randbits(int(mod).bit_length() + 64)) % mod
        if r % factor:
            return r


def _noise(key: PublicKey | PrivateKey, count: int, randbits) -> list:
    """``count`` values r^n mod n^2 for uniform r in Z_n^*.

    With the private key, by the CRT: r^n mod p^2 = (r^q)^p, and r -> r^q permutes the
    units mod p^2 (q divides neither p nor p - 1, as gcd(n, phi(n)) = 1), so r_p^p for a
    uniform unit r_p mod p^2 has the same law; likewise mod q^2. Exponents of bits/2 bits
    modulo p^2, q^2 instead of an n-bit exponent modulo n^2.
    """
    pk = _public(key)
    out = []
    for _ in range(count):
        if isinstance(key, PrivateKey):
            xp = gmpy2.powmod(_unit(key.psquare, key.p, randbits), key.p, key.psquare)
            xq = gmpy2.powmod(_unit(key.qsquare, key.q, randbits), key.q, key.qsquare)
            out.append(xp + key.psquare * ((xq - xp) * key.psq_inv_qsq % key.qsquare))
        else:
            r = _unit(pk.n, pk.n, randbits)
            while gmpy2.gcd(r, pk.n) != 1:  # pragma: no cover - probability about 2^-1023
                r = _unit(pk.n, pk.n, randbits)
            out.append(gmpy2.powmod(r, pk.n, pk.nsquare))
    return out


class NoisePool:
    """``size`` noise values r^n mod n^2, drawn before the data are known; each used once.

    Args:
      key: the public key, or the private key (CRT, faster).
      size: values to draw; one per packed ciphertext.
      seed: None (``secrets``) or an int/bytes for reproducible tests.
    """

    def __init__(self, key: PublicKey | PrivateKey, size: int, seed=None):
        self.n = _public(key).n
        self._values = _noise(key, int(size), _random_source(seed))

    def __len__(self) -> int:
        return len(self._values)

    def take(self, k: int) -> list:
        if k > len(self._values):
            raise ValueError(f"noise pool has {len(self._values)} values left; {k} are needed. "
                             "Draw a larger pool (values are never reused).")
        out, self._values = self._values[:k], self._values[k:]
        return out


def slots(pk: PublicKey | PrivateKey, slot_bits: int = 32) -> int:
    """L, the values per ciphertext: (bits(n) - 1) // slot_bits."""
    return (int(_public(pk).n).bit_length() - 1) // slot_bits


def _bias(slot_bits: int, count: int) -> int:
    """B = sum_{i < count} 2^(s-1) 2^(i s)."""
    digit = (1 << (slot_bits - 1)).to_bytes(slot_bits // 8, "little")
    return int.from_bytes(digit * count, "little")


def _check_layout(pk, slot_bits: int, headroom_bits: int) -> int:
    if slot_bits not in (8, 16, 24, 32, 40, 48, 56, 64):
        raise ValueError(f"`slot_bits` (={slot_bits}) must be a multiple of 8 in [8, 64].")
    if not 0 <= headroom_bits <= slot_bits - 2:
        raise ValueError(f"`headroom_bits` (={headroom_bits}) must lie in [0, {slot_bits - 2}] "
                         f"for slot_bits={slot_bits}.")
    L = slots(pk, slot_bits)
    if L < 1:
        raise ValueError(f"`slot_bits` (={slot_bits}) is wider than the key allows.")
    return L


def encrypt(pk: PublicKey | PrivateKey, values, slot_bits: int = 32, *, headroom_bits: int = 8,
            noise: NoisePool | None = None) -> Ciphertext:
    """Packs and encrypts integers, L per ciphertext.

    Args:
      pk: public key (or private key: the noise then uses the CRT).
      values: int[M] with |v| < 2^(slot_bits - 1 - headroom_bits).
      slot_bits: bits per slot, a multiple of 8 up to 64.
      headroom_bits: log2 of the summands ``add`` accepts.
      noise: a :class:`NoisePool` of this key; fresh noise from ``secrets`` if None.
    Returns:
      ciphertext of ceil(M / L) values with count 1.
    Raises:
      ValueError: a value out of range (the message names it and the bound).
      TypeError: a non-integer dtype (see :func:`to_fixed`).
    """
    public = _public(pk)
    L = _check_layout(public, slot_bits, headroom_bits)
    v = np.asarray(values)
    if v.ndim != 1 or v.dtype.kind not in "iu":
        raise TypeError(f"`values` must be a 1-D integer array; got dtype {v.dtype}, shape "
                        f"{v.shape} (use to_fixed for reals).")
    bound = 1 << (slot_bits - 1 - headroom_bits)
    if v.size:
        lo, hi = int(v.min()), int(v.max())
        if lo <= -bound or hi >= bound:
            i = int(np.argmin(v)) if lo <= -bound else int(np.argmax(v))
            raise ValueError(
                f"value {int(v[i])} at index {i} is outside (-2**{slot_bits - 1 - headroom_bits},"
                f" 2**{slot_bits - 1 - headroom_bits}) = ({-bound}, {bound}), the bound for "
                f"slot_bits={slot_bits}, headroom_bits={headroom_bits}.")
    k = max(1, -(-v.size // L))
    digits = np.zeros(k * L, np.uint64)
    digits[:v.size] = v.astype(np.int64).astype(np.uint64)
    digits += np.uint64(1 << (slot_bits - 1))  # wraps mod 2^64 as intended
    w = slot_bits // 8
    raw = digits.view(np.uint8).reshape(-1, 8)[:, :w].tobytes()  # little-endian words
    B, n, n2 = _bias(slot_bits, L), public.n, public.nsquare
    if noise is not None and noise.n != n:
        raise ValueError("noise pool was drawn for another key.")
    rs = noise.take(k) if noise is not None else _noise(pk, k, secrets.randbits)
    cts = []
    for j in range(k):
        m = (gmpy2.mpz(int.from_bytes(raw[j * L * w:(j + 1) * L * w], "little")) - B) % n
        cts.append((m * n + 1) * rs[j] % n2)
    return Ciphertext(tuple(cts), int(v.size), slot_bits, headroom_bits, 1, _width(public))


def add(pk: PublicKey | PrivateKey, ct1: Ciphertext, ct2: Ciphertext) -> Ciphertext:
    """Homomorphic sum slot by slot: the product of the ciphertexts mod n^2.

    Raises:
      ValueError: different layouts, or count1 + count2 > 2^headroom_bits.
    """
    public = _public(pk)
    meta1, meta2 = ct1[1:], ct2[1:]
    if (ct1.size, ct1.slot_bits, ct1.headroom_bits, ct1.width) != (
            ct2.size, ct2.slot_bits, ct2.headroom_bits, ct2.width) or len(ct1.values) != len(
            ct2.values):
        raise ValueError(f"ciphertext layouts differ (size, slot_bits, headroom_bits, count, "
                         f"width): {meta1} vs {meta2}.")
    if ct1.width != _width(public):
        raise ValueError("ciphertexts do not belong to this public key.")
    count, cap = ct1.count + ct2.count, 1 << ct1.headroom_bits
    if count > cap:
        raise ValueError(
            f"adding {ct1.count} + {ct2.count} summands exceeds the head-room bound of "
            f"2**{ct1.headroom_bits} = {cap} summands (slot_bits={ct1.slot_bits}, "
            f"headroom_bits={ct1.headroom_bits}); the sum could overflow a slot.")
    n2 = public.nsquare
    vals = tuple(a * b % n2 for a, b in zip(ct1.values, ct2.values, strict=True))
    return ct1._replace(values=vals, count=count)


def sum_ciphertexts(pk: PublicKey | PrivateKey, cts: Iterable[Ciphertext]) -> Ciphertext:
    """``add`` folded over a non-empty sequence."""
    it = iter(cts)
    total = next(it)
    for ct in it:
        total = add(pk, total, ct)
    return total


def _crt_decrypt(sk: PrivateKey, c) -> gmpy2.mpz:
    mp = (gmpy2.powmod(c, sk.p - 1, sk.psquare) - 1) // sk.p * sk.hp % sk.p
    mq = (gmpy2.powmod(c, sk.q - 1, sk.qsquare) - 1) // sk.q * sk.hq % sk.q
    return mp + sk.p * ((mq - mp) * sk.p_inv_q % sk.q)


def decrypt(sk: PrivateKey, ct: Ciphertext, n: int, slot_bits: int = 32) -> np.ndarray:
    """Decrypts and unpacks.

    Args:
      sk: private key; ct: ciphertext of ``n`` values packed at ``slot_bits``.
    Returns:
      int64[n], the slot sums.
    """
    if n != ct.size or slot_bits != ct.slot_bits:
        raise ValueError(f"ciphertext holds {ct.size} values at slot_bits={ct.slot_bits}; "
                         f"asked for n={n} at slot_bits={slot_bits}.")
    L = _check_layout(sk.public, slot_bits, ct.headroom_bits)
    w, B, N = slot_bits // 8, _bias(slot_bits, L), sk.public.n
    raw = b"".join(int((_crt_decrypt(sk, c) + B) % N).to_bytes(L * w, "little")
                   for c in ct.values)
    words = np.zeros((len(raw) // w, 8), np.uint8)
    words[:, :w] = np.frombuffer(raw, np.uint8).reshape(-1, w)
    u = words.view("<u8").reshape(-1)[:n]
    return (u - np.uint64(1 << (slot_bits - 1))).view(np.int64)


def nbytes(ct: Ciphertext) -> int:
    """Bytes of ``ct.to_bytes()``: 28 + ceil(M / L) * bytes(n^2)."""
    return HEADER_SIZE + len(ct.values) * ct.width


def to_fixed(x, frac_bits: int) -> np.ndarray:
    """int64[M] = round(x 2^frac_bits), the fixed-point form ``encrypt`` takes."""
    return np.rint(np.asarray(x, np.float64) * 2.0**frac_bits).astype(np.int64)


def from_fixed(v, frac_bits: int) -> np.ndarray:
    """f64[M] = v / 2^frac_bits."""
    return np.asarray(v, np.float64) / 2.0**frac_bits
