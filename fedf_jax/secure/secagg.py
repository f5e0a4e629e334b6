"""Secure aggregation of integer vectors, after Bonawitz et al. 2017 (CCS), Fig. 4.

The server learns the sum of the surviving clients' vectors and nothing else about a
single vector. Arithmetic is on unsigned integers modulo 2^32 (u32) or 2^64 (u64).

Rounds (Fig. 4; the names of :data:`ROUNDS`), sets U1 ⊇ U2 ⊇ U3 ⊇ U5:

0. ``advertise_keys``: client u sends two X25519 public keys, c_u^PK (to encrypt shares)
   and s_u^PK (to agree pairwise masks). The server broadcasts the list of U1.
1. ``share_keys``: u draws a self-mask seed b_u, Shamir-shares b_u and s_u^SK t-of-|U1|,
   and sends share (s_{u,v}^SK, b_{u,v}) to each v, sealed with AES-GCM under
   HKDF(X25519(c_u^SK, c_v^PK)). The server routes them (U2 = those who sent).
2. ``masked_input``: u sends y_u = x_u + PRG(b_u) + sum_{v in U2, v != u} ±PRG(s_{u,v}),
   s_{u,v} = HKDF(X25519(s_u^SK, s_v^PK)). The server announces U3 = those who sent.
3. (consistency check) is the active-adversary round with signatures; not implemented, this
   is the honest-but-curious variant. A client answers one survivor list only, though.
4. ``unmasking``: u sends its shares of b_v for v in U3 and of s_v^SK for v in U2 \\ U3.
   With t of them (U5) the server rebuilds the secrets and removes the masks:
   z = sum_{U3} y_u - sum_{U3} PRG(b_u) - sum_{u in U2\\U3, v in U3} ±PRG(s_{u,v}).

With fewer than ``threshold`` clients at any step the round is refused with
:class:`SecAggError`, and no sum is computed.

PRG(seed) is the AES-256-CTR keystream under key ``seed`` (zero IV; every seed keys one
stream), read as u32/u64. Shamir sharing is plain integer arithmetic over the prime field
GF(2^256 + 297) (:data:`PRIME`), not a cipher.

Threshold rule: ``n // 2 < threshold <= n``. Without round 3, a lying server could tell
some clients that u survived and others that u dropped, to collect shares of both b_u and
s_u^SK; as a client answers once, that takes two disjoint sets of t clients, which
t > n/2 rules out. ``allow_weak_threshold=True`` permits ``1 <= threshold <= n``.

Randomness: ``seed=None`` (a deployment) draws every secret from ``secrets`` (os.urandom).
An int/bytes ``seed`` makes a simulation reproducible: client u's secrets come from a
ChaCha20 keystream keyed by HKDF(seed, u, context), known to anyone who knows the seed.
Use a fresh :class:`Client` per round, and with a seed a distinct ``context`` per round
(e.g. the epoch), or masks repeat across rounds.
"""

from __future__ import annotations

import operator
import secrets
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedf_jax.secure.shamir import SHARE_BYTES, shamir_reconstruct, shamir_share

ROUNDS = ("advertise_keys", "share_keys", "masked_input", "unmasking")
DTYPES = (np.dtype(np.uint32), np.dtype(np.uint64))

_KEYS = struct.Struct("<I32s32s")  # client id, c^PK, s^PK: 68 bytes
_PLAIN = struct.Struct("<II33s33s")  # u, v, share of s_u^SK, share of b_u: 74 bytes
_ROUTED = 4 + _PLAIN.size + 16  # addressee (or sender) id + AES-GCM ciphertext and tag: 94
_UNMASK = struct.Struct("<I33s")  # owner id, share: 37 bytes
_IDS = np.dtype("<u4")
# Bytes of one client's record in a message: its key advertisement (round 0), one routed
# share (round 1), one unmasking share (round 4).
ADVERT_SIZE, SHARE_SIZE, UNMASK_SIZE = _KEYS.size, _ROUTED, _UNMASK.size


class SecAggError(ValueError):
    """Too few clients survived a step; the round is refused and no sum is released."""


class RoundBytes(NamedTuple):
    """Bytes each client sent and received in one round, per round step of :data:`ROUNDS`.

    Sent: 68, 94 (|U1| - 1), w M, 37 |U2|; received: 68 |U1|, 94 (|U2| - 1), 4 |U3|, 0
    (w = 4 or 8 bytes per value; the last two only for a survivor that answers).
    """

    sent: np.ndarray  # i64[n, 4]
    received: np.ndarray  # i64[n, 4]
    plain: int  # bytes of one plain input vector, M * itemsize

    def expansion(self) -> np.ndarray:
        """f64[n]: (sent + received) / plain, per client."""
        return (self.sent.sum(1) + self.received.sum(1)) / self.plain


def check_threshold(n: int, threshold: int, allow_weak_threshold: bool = False) -> None:
    """Raises ValueError unless ``n >= 1`` and ``n // 2 < threshold <= n`` (or, with
    ``allow_weak_threshold``, ``1 <= threshold <= n``); see the module docstring."""
    if isinstance(n, bool) or operator.index(n) < 1:
        raise ValueError(f"`n` (={n}) must be a positive number of clients.")
    lo = 1 if allow_weak_threshold else n // 2 + 1
    if isinstance(threshold, bool) or not lo <= operator.index(threshold) <= n:
        why = "" if allow_weak_threshold else (
            " (t > n/2 keeps a lying server from collecting both kinds of shares of one "
            "client; pass allow_weak_threshold=True to allow any t >= 1)")
        raise ValueError(f"`threshold` (={threshold}) must lie in [{lo}, {n}] for n={n}{why}.")


def check_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in DTYPES:
        raise TypeError(f"dtype {dt} is not supported; use uint32 (mod 2**32) or uint64.")
    return dt


def prg(seed: bytes, length: int, dtype=np.uint32) -> np.ndarray:
    """PRG(seed) of Fig. 4, u32[length] or u64[length]: the AES-256-CTR keystream keyed by
    the 32-byte ``seed`` (which keys this one stream only, so the IV is zero)."""
    dt = check_dtype(dtype)
    nbytes = length * dt.itemsize
    buf = np.empty(nbytes + 15, np.uint8)  # update_into wants block_size - 1 spare bytes
    enc = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    enc.update_into(np.zeros(nbytes, np.uint8), buf)
    return buf[:nbytes].view(dt)


def _hkdf(ikm: bytes, info: bytes, salt: bytes | None = None) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=salt, info=info).derive(ikm)


def _agree(sk: X25519PrivateKey, peer_pk: bytes, label: bytes, u: int, v: int,
           context: bytes) -> bytes:
    """KA.agree then HKDF; symmetric in (u, v)."""
    shared = sk.exchange(X25519PublicKey.from_public_bytes(peer_pk))
    pair = struct.pack("<II", min(u, v), max(u, v))
    return _hkdf(shared, b"fedf-secagg/" + label + pair + context)


def _randomness(seed, cid: int, context: bytes) -> Callable[[int], bytes]:
    if seed is None:
        return secrets.token_bytes
    if isinstance(seed, (bytes, bytearray)):
        ikm = bytes(seed)
    elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0:
        seed = int(seed)
        ikm = seed.to_bytes(max(1, (seed.bit_length() + 7) // 8), "little")
    else:
        raise ValueError(f"`seed` (={seed!r}) must be None, a non-negative int or bytes.")
    key = _hkdf(ikm, struct.pack("<I", cid) + context, salt=b"fedf-secagg/simulation")
    enc = Cipher(algorithms.ChaCha20(key, bytes(16)), None).encryptor()
    return lambda k: enc.update(bytes(k))


def _pub(sk: X25519PrivateKey) -> bytes:
    return sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _nonce(sender: int, receiver: int) -> bytes:
    # The share key X25519(c_u, c_v) is fresh per round and seals exactly two messages,
    # u -> v and v -> u, so (sender, receiver) is a unique nonce.
    return struct.pack("<II4x", sender, receiver)


def _refuse(count: int, threshold: int, step: str) -> SecAggError:
    return SecAggError(
        f"only {count} clients survived {step}, fewer than the threshold t={threshold}; "
        "the round is refused and nothing is released.")


class Client:
    """One client of a secure-aggregation round (fresh keys; use once).

    Args:
      cid: this client's id in ``[0, n)``; its Shamir point is ``cid + 1``.
      n, threshold: clients in the round and the Shamir threshold t (see module docstring).
      length: M, the vector length; dtype: uint32 or uint64.
      seed: None (draw from ``secrets``) or an int/bytes for a reproducible simulation.
      context: bytes bound into every derived key, e.g. the round number.
    """

    def __init__(self, cid: int, n: int, threshold: int, length: int, dtype=np.uint32, *,
                 seed=None, context: bytes = b"", allow_weak_threshold: bool = False):
        check_threshold(n, threshold, allow_weak_threshold)
        if not 0 <= cid < n:
            raise ValueError(f"client id `cid` (={cid}) must lie in [0, {n}).")
        self.cid, self.n, self.t, self.length = cid, n, threshold, int(length)
        self.dtype, self.context = check_dtype(dtype), bytes(context)
        self._rand = _randomness(seed, cid, self.context)
        self._c_sk = X25519PrivateKey.from_private_bytes(self._rand(32))
        self._s_sk = X25519PrivateKey.from_private_bytes(self._rand(32))
        self._b = self._rand(32)
        self._keys: dict[int, tuple[bytes, bytes]] = {}
        self._inbox: dict[int, bytes] = {}
        self._own_b_share = 0
        self._u3: list[int] | None = None

    def advertise(self) -> bytes:
        """Round 0: ``id | c^PK | s^PK`` (68 bytes)."""
        return _KEYS.pack(self.cid, _pub(self._c_sk), _pub(self._s_sk))

    def share_keys(self, key_list: bytes) -> bytes:
        """Round 1: reads the server's key list (U1), returns records ``v | e_{u,v}`` (94 bytes
        each) for every other v in U1. Raises SecAggError if |U1| < t."""
        if len(key_list) % _KEYS.size:
            raise ValueError(f"key list of {len(key_list)} bytes is not a whole number of "
                             f"{_KEYS.size}-byte records.")
        for v, c_pk, s_pk in _KEYS.iter_unpack(key_list):
            if not 0 <= v < self.n or v in self._keys:
                raise ValueError(f"key list names client {v} twice or out of [0, {self.n}).")
            self._keys[v] = (c_pk, s_pk)
        if self._keys.get(self.cid) != (_pub(self._c_sk), _pub(self._s_sk)):
            raise ValueError(f"key list does not carry client {self.cid}'s own keys.")
        if len(self._keys) < self.t:
            raise _refuse(len(self._keys), self.t, "key advertisement (U1)")
        if len({pk for pair in self._keys.values() for pk in pair}) != 2 * len(self._keys):
            raise ValueError("key list repeats a public key (Fig. 4 asserts they differ).")
        u1 = sorted(self._keys)
        xs = [v + 1 for v in u1]
        s_int = int.from_bytes(self._s_sk.private_bytes_raw(), "big")
        s_shares = shamir_share(s_int, xs, self.t, self._rand)
        b_shares = shamir_share(int.from_bytes(self._b, "big"), xs, self.t, self._rand)
        out = []
        for v, ss, bs in zip(u1, s_shares, b_shares, strict=True):
            if v == self.cid:
                self._own_b_share = bs
                continue
            key = _agree(self._c_sk, self._keys[v][0], b"share", self.cid, v, self.context)
            plain = _PLAIN.pack(self.cid, v, ss.to_bytes(SHARE_BYTES, "big"),
                                bs.to_bytes(SHARE_BYTES, "big"))
            out.append(struct.pack("<I", v)
                       + AESGCM(key).encrypt(_nonce(self.cid, v), plain, self.context))
        return b"".join(out)

    def masked_input(self, x, routed: bytes) -> np.ndarray:
        """Round 2: stores the shares routed to it (records ``v | e_{v,u}``, giving U2) and
        returns y_u = x_u + PRG(b_u) + sum_v ±PRG(s_{u,v}) mod 2^w, for x_u: u32[M] or u64[M]
        (this client's dtype); y_u has the same dtype and shape."""
        if len(routed) % _ROUTED:
            raise ValueError(f"routed shares of {len(routed)} bytes are not a whole number "
                             f"of {_ROUTED}-byte records.")
        for i in range(0, len(routed), _ROUTED):
            (v,) = struct.unpack_from("<I", routed, i)
            if v not in self._keys or v == self.cid or v in self._inbox:
                raise ValueError(f"routed share from client {v}, which is not another member "
                                 "of U1 or appears twice.")
            self._inbox[v] = routed[i + 4:i + _ROUTED]
        u2 = sorted([*self._inbox, self.cid])
        if len(u2) < self.t:
            raise _refuse(len(u2), self.t, "key sharing (U2)")
        x = np.asarray(x)
        if x.dtype != self.dtype or x.shape != (self.length,):
            raise ValueError(f"input has dtype {x.dtype} and shape {x.shape}; client "
                             f"{self.cid} expects {self.dtype} of shape ({self.length},).")
        y = x + prg(self._b, self.length, self.dtype)
        for v in u2:
            if v == self.cid:
                continue
            mask = prg(_agree(self._s_sk, self._keys[v][1], b"mask", self.cid, v, self.context),
                       self.length, self.dtype)
            # Fig. 4 adds PRG(s_uv) when u > v; we add it when v > u. Only p_uv = -p_vu
            # matters for the sum, and the server's removal below uses the same rule.
            (np.add if v > self.cid else np.subtract)(y, mask, out=y)
        return y

    def unmask_shares(self, survivors: bytes) -> bytes:
        """Round 4: reads U3 (u32 ids) and returns records ``v | share`` (37 bytes each) for
        every v in U2: a share of b_v if v survived, of s_v^SK if it dropped.

        A client answers one survivor list only: a second, different list is refused, so
        the server never gets both kinds of share of one client from it.
        """
        if len(survivors) % 4:
            raise ValueError(f"survivor list of {len(survivors)} bytes is not whole u32 ids.")
        u3 = np.frombuffer(survivors, _IDS).tolist()
        u2 = {*self._inbox, self.cid}
        if self._u3 is not None and self._u3 != u3:
            raise ValueError(f"client {self.cid} already answered survivor list {self._u3}; "
                             f"refusing a second one, {u3}.")
        if len(set(u3)) != len(u3) or not set(u3) <= u2 or self.cid not in u3:
            raise ValueError(f"survivor list {u3} must hold distinct members of U2 "
                             f"{sorted(u2)}, including client {self.cid}.")
        if len(u3) < self.t:
            raise _refuse(len(u3), self.t, "the masked-input round (U3)")
        self._u3 = u3
        alive = set(u3)
        out = [_UNMASK.pack(self.cid, self._own_b_share.to_bytes(SHARE_BYTES, "big"))]
        for v in sorted(self._inbox):
            key = _agree(self._c_sk, self._keys[v][0], b"share", self.cid, v, self.context)
            try:
                plain = AESGCM(key).decrypt(_nonce(v, self.cid), self._inbox[v], self.context)
            except InvalidTag:
                raise ValueError(f"share from client {v} to {self.cid} fails "
                                 "authentication.") from None
            v2, u2_, s_share, b_share = _PLAIN.unpack(plain)
            if (v2, u2_) != (v, self.cid):
                raise ValueError(f"share routed from {v} to {self.cid} is addressed "
                                 f"{v2} -> {u2_}.")
            out.append(_UNMASK.pack(v, b_share if v in alive else s_share))
        return b"".join(out)


class Server:
    """The aggregating server: routes messages, counts bytes, removes masks.

    Arguments as for :class:`Client`. Messages are keyed by the sending client's id, which
    the (authenticated) channel provides.
    """

    def __init__(self, n: int, threshold: int, length: int, dtype=np.uint32, *,
                 context: bytes = b"", allow_weak_threshold: bool = False):
        check_threshold(n, threshold, allow_weak_threshold)
        self.n, self.t, self.length = n, threshold, int(length)
        self.dtype, self.context = check_dtype(dtype), bytes(context)
        self.sent = np.zeros((n, len(ROUNDS)), np.int64)
        self.received = np.zeros((n, len(ROUNDS)), np.int64)
        self.keys: dict[int, tuple[bytes, bytes]] = {}
        self.u2: list[int] = []
        self.masked: dict[int, np.ndarray] = {}

    def collect_keys(self, adverts: Mapping[int, bytes]) -> bytes:
        """Round 0: returns the key list of U1 broadcast to each of its members."""
        for u, msg in sorted(adverts.items()):
            if not 0 <= u < self.n or len(msg) != _KEYS.size or _KEYS.unpack(msg)[0] != u:
                raise ValueError(f"advertisement from client {u} is malformed or names "
                                 f"another client (ids lie in [0, {self.n})).")
            self.sent[u, 0] += len(msg)
            self.keys[u] = _KEYS.unpack(msg)[1:]
        if len(self.keys) < self.t:
            raise _refuse(len(self.keys), self.t, "key advertisement (U1)")
        key_list = b"".join(_KEYS.pack(u, *self.keys[u]) for u in sorted(self.keys))
        self.received[sorted(self.keys), 0] += len(key_list)
        return key_list

    def route_shares(self, outboxes: Mapping[int, bytes]) -> dict[int, bytes]:
        """Round 1: ``{u: records "v | e_{u,v}"}`` in, ``{v: records "u | e_{u,v}"}`` out,
        for v in U2 (the senders)."""
        self.u2 = sorted(u for u in outboxes if u in self.keys)
        if len(self.u2) < self.t:
            raise _refuse(len(self.u2), self.t, "key sharing (U2)")
        routed: dict[int, list[bytes]] = {v: [] for v in self.u2}
        for u in self.u2:
            box = outboxes[u]
            self.sent[u, 1] += len(box)
            if len(box) % _ROUTED:
                raise ValueError(f"shares from client {u} are not whole {_ROUTED}-byte records.")
            for i in range(0, len(box), _ROUTED):
                (v,) = struct.unpack_from("<I", box, i)
                if v in routed and v != u:  # shares for clients outside U2 are dropped
                    routed[v].append(struct.pack("<I", u) + box[i + 4:i + _ROUTED])
        out = {v: b"".join(recs) for v, recs in routed.items()}
        for v, msg in out.items():
            self.received[v, 1] += len(msg)
        return out

    def collect_masked(self, masked: Mapping[int, np.ndarray]) -> bytes:
        """Round 2: stores y_u (u32[M] or u64[M]) of U3 and returns the survivor list (u32 ids).
        Called once: a vector arriving after the list is out is refused."""
        if self.masked:
            raise ValueError(f"the survivor list {sorted(self.masked)} is already announced.")
        for u, y in sorted(masked.items()):
            y = np.asarray(y)
            if u not in self.u2:
                raise ValueError(f"masked input from client {u}, which is not in U2 {self.u2}.")
            if y.dtype != self.dtype or y.shape != (self.length,):
                raise ValueError(f"masked input of client {u} has dtype {y.dtype} and shape "
                                 f"{y.shape}; expected {self.dtype} of shape ({self.length},).")
            self.sent[u, 2] += y.nbytes
        if len(masked) < self.t:
            raise _refuse(len(masked), self.t, "the masked-input round (U3)")
        self.masked = {u: np.asarray(masked[u]) for u in sorted(masked)}
        u3 = sorted(self.masked)
        msg = np.asarray(u3, _IDS).tobytes()
        self.received[u3, 2] += len(msg)
        return msg

    def aggregate(self, responses: Mapping[int, bytes]) -> np.ndarray:
        """Round 4: rebuilds b_u (u in U3) and s_u^SK (u in U2 \\ U3) from t responders
        (U5 ⊆ U3) and returns z = sum_{u in U3} x_u mod 2^w, shape [M]."""
        u3 = sorted(self.masked)
        if len(responses) < self.t:
            raise _refuse(len(responses), self.t, "the unmasking round (U5)")
        shares: dict[int, list[tuple[int, int]]] = {v: [] for v in self.u2}
        for u, msg in sorted(responses.items()):
            if u not in self.masked:
                raise ValueError(f"unmasking shares from client {u}, which is not in U3 {u3}.")
            self.sent[u, 3] += len(msg)
            whole = len(msg) % _UNMASK.size == 0
            owners = [rec[0] for rec in _UNMASK.iter_unpack(msg)] if whole else []
            if sorted(owners) != self.u2:
                raise ValueError(f"client {u} must send one share per member of U2 {self.u2}.")
            for v, share in _UNMASK.iter_unpack(msg):
                shares[v].append((u + 1, int.from_bytes(share, "big")))
        secret = {v: shamir_reconstruct(pts[:self.t]).to_bytes(32, "big")
                  for v, pts in shares.items()}
        total = np.sum(np.stack([self.masked[u] for u in u3]), axis=0, dtype=self.dtype)
        for u in u3:
            total -= prg(secret[u], self.length, self.dtype)
        for d in sorted(set(self.u2) - set(u3)):
            sk = X25519PrivateKey.from_private_bytes(secret[d])
            for v in u3:  # v added PRG(s_vd) if d > v and subtracted it otherwise
                mask = prg(_agree(sk, self.keys[v][1], b"mask", d, v, self.context),
                           self.length, self.dtype)
                (np.subtract if d > v else np.add)(total, mask, out=total)
        return total

    def round_bytes(self) -> RoundBytes:
        """Bytes per client and round step so far."""
        return RoundBytes(self.sent.copy(), self.received.copy(),
                          self.length * self.dtype.itemsize)


def simulate_round(inputs, threshold: int, dropped: Sequence[int] = (), seed=0, *,
                   dropped_after_input: Sequence[int] = (), context: bytes = b"",
                   allow_weak_threshold: bool = False, return_bytes: bool = False):
    """One round of :class:`Client` and :class:`Server` objects, messages passed in memory.

    Args:
      inputs: u32[n, M] (values mod 2^32) or u64[n, M], one row per client.
      threshold: Shamir threshold t.
      dropped: clients that vanish before sending their masked vector (U2 \\ U3).
      seed: None, or an int/bytes for reproducible secrets (see module docstring).
      dropped_after_input: clients that send y_u but no unmasking shares (U3 \\ U5); their
        inputs still count.
      return_bytes: also return the :class:`RoundBytes` of the round.
    Returns:
      total: [M], the sum of the surviving rows mod 2^w; seen: [n - len(dropped), M], the
      masked vectors the server received (ascending client id); and, with
      ``return_bytes``, the byte counts.
    Raises:
      SecAggError: fewer than ``threshold`` clients at some step.
    """
    x = np.asarray(inputs)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"`inputs` must be [n, M] with n, M >= 1; got shape {x.shape}.")
    check_dtype(x.dtype)
    n, m = x.shape
    gone, late = set(dropped), set(dropped_after_input)
    for name, ids in (("dropped", dropped), ("dropped_after_input", dropped_after_input)):
        if len(set(ids)) != len(ids) or not all(0 <= int(k) < n for k in ids) or (
                name != "dropped" and gone & late):
            raise ValueError(f"`{name}` (={tuple(ids)}) must hold distinct ids in [0, {n}), "
                             "none of them in `dropped`.")
    kw = dict(context=context, allow_weak_threshold=allow_weak_threshold)
    clients = [Client(k, n, threshold, m, x.dtype, seed=seed, **kw) for k in range(n)]
    server = Server(n, threshold, m, x.dtype, **kw)
    key_list = server.collect_keys({k: c.advertise() for k, c in enumerate(clients)})
    routed = server.route_shares({k: c.share_keys(key_list) for k, c in enumerate(clients)})
    alive = [k for k in range(n) if k not in gone]
    survivors = server.collect_masked({k: clients[k].masked_input(x[k], routed[k])
                                       for k in alive})
    total = server.aggregate({k: clients[k].unmask_shares(survivors)
                              for k in alive if k not in late})
    seen = np.stack([server.masked[k] for k in alive])
    return (total, seen, server.round_bytes()) if return_bytes else (total, seen)
