"""The authenticated wire of an MPI link (``--wire aead``, DESIGN §8).

With ``--wire aead`` every message of an epoch that crosses a link is sealed per link
and per direction (``secure.aead.Channel``, AES-256-GCM): the costs, the commands, the
frame lengths, each worker rank's upload (its frames back to back, sealed once), the
group masters' reports, the ADMM control, z and sums, the checkpoint acknowledgements,
the secure-aggregation round's messages (``ranks.secure``) and the asynchronous top's
messages (``p2p``), each point to point. A sealed message is
an *envelope* (a 36-byte header in the codec frame layout: magic, version, message
kind, payload u8, epoch, the sender's job rank, byte count; its CRC field is 0, the tag
replaces it) then the message's bytes, sealed into ``aead.OVERHEAD`` more bytes (prefix and tag):
``ENVELOPE`` = 72 bytes per message. The frames inside an upload skip their own CRC32
(``Link.checksum``): the tag covers them.

The model down is sealed once, not once per link: P^{t-1} is encrypted straight from
the master's buffer under a fresh random key (AEAD, the envelope header as associated
data) and broadcast (one ``Ibcast``, as on the bare wire); that key, the only secret,
goes to each worker rank sealed for its link (``MODEL_EXTRA`` = 120 bytes per worker
rank: the tag and the sealed key). An outsider on the wire can neither read nor alter
the model, nor replay an old one (each epoch has its own key, delivered under the
link's counters); a worker rank learns the key of a model it receives anyway. What it
gives up against one seal per link: a worker rank that also controlled another rank's
wire could forge the model for it (an active insider, outside DESIGN §7's
honest-but-curious parties); in return the master seals 4M bytes once instead of K - 1
times, and nothing is copied. The start-up JSON objects (after the key agreement) stay
in the clear; an altered one shows as a rejected sealed message later. The run log's
``bytes_aead`` counts what the sealing adds (``mpi_bytes`` includes it).

Keys. At start-up each link agrees a fresh 32-byte key: X25519 (every rank draws a key
pair per link set; the public keys travel in the clear in start-up JSON messages;
``aead.link_key`` on both ends, with the two job ranks and rank 0's random salt as
context), or, with ``--key-file``, HKDF-SHA256 of the shared file key with rank 0's
16-byte salt, drawn anew at every start, as salt and the two job ranks as info.
``aead.Channel`` derives one key per direction from it. Every start (a resumed run
too) thus seals under new keys, and each direction counts its own nonces from 1: no
(key, nonce) pair is ever used twice. The ends then exchange a sealed ``HELLO``; a
link whose keys differ (a wrong key file on one rank) ends the job at start-up with
one line naming the rank.

Rejections. ``open`` raises ``codec.FrameError`` naming the sending rank and the
epoch: a flipped bit (the tag), a replay or reorder (the counter), a misdirected
message (the link and direction), or an envelope of another kind, epoch or length.
The link drops a worker rank's rejected upload (its workers' frames go to
``dropped_frames`` with the reason, and the epoch goes on); any other rejected
message ends the job naming the sender (the epoch cannot go on without it).
"""

from __future__ import annotations

import enum
import os
import secrets
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from mpi4py import MPI

from fedf_jax import codec
from fedf_jax.backends.mpi.abort import SETUP_TIMEOUT, fatal
from fedf_jax.backends.mpi.faults import Fault, strikes
from fedf_jax.secure import aead


class Link(Protocol):
    """What sealing needs of a rank's end of the exchange (``link.Link`` is one)."""

    comm: MPI.Comm
    rank: int
    world: Sequence[int]
    epoch: int

    def wait(self, reqs: list[MPI.Request], peers: Sequence[int | None], stage: str,
             limit: float | None = None) -> None: ...

    def gather_json(self, obj: Any) -> list[Any] | None: ...

    def bcast_json(self, obj: Any) -> Any: ...

WIRES = ("crc", "aead")
_HEADER = struct.Struct("<4sBBBBIIQQI")  # the codec frame header's layout
ENVELOPE = _HEADER.size + aead.OVERHEAD  # bytes a sealed message adds: 72
_PREFIX = aead.OVERHEAD - aead.TAG_SIZE  # the clear prefix (sender, receiver, nonce)
_HELLO = b"fedf-mpi hello"
_TAG_HELLO = 21
_ONCE = bytes(12)  # the nonce of a key that seals one message only
MODEL_EXTRA = aead.TAG_SIZE + 32 + ENVELOPE  # per worker rank: the tag, the sealed model key


class Message(enum.IntEnum):
    """Envelope kinds (the nonce's kind byte); 1-3 are codec's own kinds of these messages."""

    MODEL = 1  # P^{t-1}, master -> worker rank
    COSTS = 2  # a worker rank's C_k^t
    COMMANDS = 3  # a worker rank's commands
    UPLOAD = 16  # a worker rank's codec frames back to back
    LENGTHS = 17  # their byte lengths
    REPORT = 18  # a group master's report
    ACK = 19  # a checkpoint acknowledgement
    SHARE = 20  # an ADMM array down (control, z)
    SUM = 21  # an ADMM sum up
    HELLO = 22  # the key confirmation
    JOB = 23  # an asynchronous group's job control (``p2p``), top -> group master
    SECAGG = 24  # a secure-aggregation message (``ranks.secure``), either way


def u8(arr) -> np.ndarray:
    """A C-contiguous array's bytes, u8[nbytes] (a view)."""
    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8)


class Wire:
    """The sealed ends of one rank's links: an ``aead.Channel`` per peer and direction.

    Args:
      world: the job rank of each rank of the link's communicator.
      rank: this rank in the communicator.
      keys: peer (communicator rank) -> 32-byte link key.
      faults: test faults (``tamper``, ``replay`` of an upload; ``backends.mpi.faults``).
    """

    def __init__(self, world: Sequence[int], rank: int, keys: Mapping[int, bytes], *,
                 cipher: str = "aes-gcm", faults: Sequence[Fault] = ()):
        self.world, self.rank = list(world), rank
        me = self.world[rank]
        self.tx = {p: aead.Channel(k, me, self.world[p], cipher=cipher) for p, k in keys.items()}
        self.cipher = aead.CIPHERS[cipher]
        self.rx = {p: aead.Channel(k, self.world[p], me, cipher=cipher) for p, k in keys.items()}
        self.faults = tuple(faults)
        self._bufs: dict[object, np.ndarray] = {}
        self._last_upload: np.ndarray | None = None

    def buffer(self, name: object, size: int) -> np.ndarray:
        """u8[size], a view of a buffer kept under ``name`` and reused across epochs (a
        fresh 40 MB array a message costs its page faults every epoch)."""
        buf = self._bufs.get(name)
        if buf is None or buf.size < size:
            buf = self._bufs[name] = np.empty(max(size, 64), np.uint8)
        return buf[:size]

    def header(self, kind: Message, epoch: int, n: int, sender: int | None = None) -> bytes:
        """The envelope header of ``n`` bytes (CRC field 0: the tag replaces it)."""
        return _HEADER.pack(codec.MAGIC, codec.VERSION, kind, codec.Payload.U8, 0, epoch,
                            self.world[self.rank] if sender is None else sender, n, n, 0)

    def stage(self, kind: Message, epoch: int, payload=None, size: int | None = None,
              name: object = None) -> np.ndarray:
        """An envelope: header then ``payload`` (or ``size`` bytes left for the caller to
        fill at ``[HEADER_SIZE:]``), in a reused buffer."""
        n = u8(payload).size if payload is not None else int(size)
        env = self.buffer(("env", kind if name is None else name), codec.HEADER_SIZE + n)
        env[:codec.HEADER_SIZE] = np.frombuffer(self.header(kind, epoch, n), np.uint8)
        if payload is not None:
            env[codec.HEADER_SIZE:] = u8(payload)
        return env

    def seal(self, peer: int, envelope: np.ndarray) -> np.ndarray:
        """The staged envelope sealed for ``peer``, u8[len + aead.OVERHEAD] (reused buffer)."""
        out = self.buffer(("sealed", peer, int(envelope[5])), envelope.size + aead.OVERHEAD)
        self.tx[peer].seal(envelope, out=out)
        return out

    def seal_upload(self, envelope: np.ndarray, lengths: np.ndarray,
                    ids: Sequence[int], epoch: int) -> np.ndarray:
        """A worker rank's upload sealed for rank 0, with the test faults ``tamper`` (one
        bit of a worker's sealed frame flipped) and ``replay`` (last epoch's sealed upload
        sent again, cut or padded to this epoch's size)."""
        sealed = self.seal(0, envelope)
        if any(f.action == "replay" for f in self.faults):
            old, self._last_upload = self._last_upload, sealed.copy()
            if old is not None and any(strikes(self.faults, "replay", k, epoch) for k in ids):
                sealed[:] = 0
                sealed[:min(old.size, sealed.size)] = old[:sealed.size]
        ends = np.cumsum(lengths)
        for i, k in enumerate(ids):
            if strikes(self.faults, "tamper", k, epoch) and lengths[i]:
                at = _PREFIX + 2 * codec.HEADER_SIZE + int(ends[i] - lengths[i])
                sealed[at] ^= 1  # the first payload byte of worker k's frame, sealed
        return sealed

    def open(self, peer: int, kind: Message, epoch: int | None, sealed, out=None,
             what: str = "") -> np.ndarray:
        """Checks and opens ``peer``'s sealed message; returns its bytes (a view of ``out``
        or of a reused buffer).

        Args:
          epoch: the epoch the message must carry (None: any, for the ADMM control that
            tells a worker rank its iteration; the counter still orders it).
          out: u8[HEADER_SIZE + n] to open into; reused buffer when None.
          what: the message's name for the error.

        Raises:
          codec.FrameError: naming the sender's job rank, the epoch and the reason.
        """
        sealed = u8(sealed)
        sender = self.world[peer]
        if out is None:
            out = self.buffer(("open", peer), max(sealed.size - aead.TAG_SIZE - _PREFIX, 0))
        try:
            frame = self.rx[peer].open(sealed, out=out)
        except codec.FrameError as e:
            raise codec.FrameError(f"{what or kind.name.lower()}: {e.reason}", sender,
                                   e.epoch if e.epoch is not None else epoch) from None
        magic, version, k, _, _, ep, _, count, length, _ = _HEADER.unpack_from(frame)
        n = len(frame) - codec.HEADER_SIZE
        problem = (f"bad magic {magic!r}" if magic != codec.MAGIC else
                   f"version {version}, expected {codec.VERSION}" if version != codec.VERSION
                   else f"message kind {k}, expected {int(kind)} ({kind.name})" if k != kind
                   else f"epoch {ep}, expected {epoch}" if epoch is not None and ep != epoch
                   else f"{length} bytes announced, {n} sealed" if length != n or count != n
                   else None)
        if problem:
            raise codec.FrameError(f"{what or kind.name.lower()}: {problem}", sender, ep)
        return np.frombuffer(frame, np.uint8)[codec.HEADER_SIZE:]


    # -- a link's sealed messages: the master posts, a worker rank sends or receives

    def send_down(self, link: Link, kind: Message, payloads: Mapping[int, np.ndarray],
                  tag: int, same: bool = False) -> list[MPI.Request]:
        """Posts each worker rank r its sealed ``payloads[r]``, point to point (``same``:
        one payload for all, staged once and sealed per link)."""
        env, reqs = None, []
        for r, data in payloads.items():
            env = env if same and env is not None else self.stage(kind, link.epoch, data)
            reqs.append(link.comm.Isend([self.seal(r, env), MPI.BYTE], dest=r, tag=tag))
        return reqs

    def post_up(self, link: Link, kind: Message, outs: Mapping[int, np.ndarray], tag: int):
        """Posts the receives of each worker rank r's sealed message for ``outs[r]``
        (C-contiguous); returns them and the function that opens them into ``outs`` once
        they completed (raising ``codec.FrameError`` for a rejected one)."""
        bufs = {r: self.buffer(("up", r, kind), o.nbytes + ENVELOPE) for r, o in outs.items()}
        reqs = [link.comm.Irecv([b, MPI.BYTE], source=r, tag=tag) for r, b in bufs.items()]

        def finish(what: str) -> None:
            for r, o in outs.items():
                u8(o)[:] = self.open(r, kind, link.epoch, bufs[r], what=what)
        return reqs, finish

    def send_model(self, link: Link, p: np.ndarray, tag: int) -> list[MPI.Request]:
        """The master's P^{t-1}: sealed once under a fresh key, straight from ``p`` (AEAD
        with the envelope header as associated data), one ``Ibcast``; the key goes to
        each worker rank sealed for its link (``Message.MODEL``)."""
        key, n = secrets.token_bytes(32), p.nbytes
        bulk = self.buffer("model", n + aead.TAG_SIZE)
        self.cipher(key).encrypt_into(_ONCE, u8(p), self.header(Message.MODEL, link.epoch, n),
                                      bulk)
        ranks = range(1, link.comm.Get_size())
        return [link.comm.Ibcast([bulk, MPI.BYTE], root=0), *self.send_down(
            link, Message.MODEL, dict.fromkeys(ranks, np.frombuffer(key, np.uint8)), tag,
            same=True)]

    def recv_model(self, link: Link, out: np.ndarray, tag: int) -> None:
        """A worker rank's P^{t-1} into ``out``: its key from its link, then the broadcast
        opened straight into ``out``."""
        n = out.nbytes
        bulk = self.buffer("model", n + aead.TAG_SIZE)
        sealed = self.buffer(("down", Message.MODEL), 32 + ENVELOPE)
        link.wait([link.comm.Ibcast([bulk, MPI.BYTE], root=0),
                   link.comm.Irecv([sealed, MPI.BYTE], source=0, tag=tag)], [0, 0],
                  "model broadcast")
        key = self.open(0, Message.MODEL, link.epoch, sealed, what="model key").tobytes()
        try:
            self.cipher(key).decrypt_into(_ONCE, bulk, self.header(
                Message.MODEL, link.epoch, n, self.world[0]), u8(out))
        except (InvalidTag, ValueError):
            raise codec.FrameError("model: authentication failed (tag of the broadcast): "
                                   "tampered, or not this epoch's", self.world[0],
                                   link.epoch) from None

    def send_up(self, link: Link, kind: Message, values: np.ndarray, tag: int) -> None:
        """A worker rank's sealed message to rank 0."""
        sealed = self.seal(0, self.stage(kind, link.epoch, values))
        link.comm.Send([sealed, MPI.BYTE], dest=0, tag=tag)

    def recv_down(self, link: Link, kind: Message, out: np.ndarray, tag: int, stage: str,
                  epoch: int | None) -> None:
        """Rank 0's sealed message into ``out``, under the link's deadline."""
        buf = self.buffer(("down", kind), out.nbytes + ENVELOPE)
        link.wait([link.comm.Irecv([buf, MPI.BYTE], source=0, tag=tag)], [0], stage)
        u8(out)[:] = self.open(0, kind, epoch, buf, what=stage)

    def open_uploads(self, link: Link, recv: np.ndarray, displs: Sequence[int],
                     sizes: Sequence[int]) -> np.ndarray:
        """Opens every worker rank's sealed upload from the gathered ``recv`` (rank r's at
        ``displs[r]``, ``sizes[r]`` bytes of frames once opened); returns the frames back
        to back in worker order and fills ``link.rejected`` for a rejected upload."""
        # An upload opens as its envelope header then its frames: opened last rank first,
        # the frames land back to back (a header overwrites the tail of the rank before,
        # opened next).
        head, starts = codec.HEADER_SIZE, np.cumsum([0, *sizes])
        plain = self.buffer("frames", head + int(starts[-1]))
        for r in range(len(sizes) - 1, 0, -1):
            part = recv[displs[r]:displs[r] + sizes[r] + ENVELOPE]
            try:
                self.open(r, Message.UPLOAD, link.epoch, part, what="sealed upload",
                          out=plain[starts[r]:starts[r] + head + sizes[r]])
            except codec.FrameError as e:
                for k in range(int(link.layout.starts[r]),
                               int(link.layout.starts[r] + link.layout.counts[r])):
                    link.rejected[k] = f"{e.reason} (sealed by rank {e.sender} for epoch {e.epoch})"
        return plain[head:head + int(starts[-1])]


# -- start-up: keys and their confirmation


def read_key_file(path: str | os.PathLike) -> tuple[bytes | None, str | None]:
    """(key, None), or (None, what is wrong with the file)."""
    try:
        return aead.load_key(path), None
    except OSError as e:
        return None, (f"{os.fspath(path)!r} cannot be read ({e.strerror}); give a file of "
                      "32 raw bytes or 64 hex digits")
    except ValueError as e:
        return None, str(e).rstrip(".")


def file_link_key(secret: bytes, salt: bytes, a: int, b: int) -> bytes:
    """The link key of job ranks a, b from a shared key file's key and this start's salt."""
    lo, hi = sorted((a, b))
    return HKDF(hashes.SHA256(), 32, salt=salt,
                info=b"fedf-mpi/link" + struct.pack("<II", lo, hi)).derive(secret)


def establish(link: Link, key_file: str | os.PathLike | None = None, *,
              cipher: str = "aes-gcm", faults: Sequence[Fault] = ()) -> Wire:
    """Agrees fresh keys on every link of ``link`` (call on every rank of its
    communicator, before any other message) and confirms them with a sealed HELLO.

    Ends the job with one line (``fatal``, code 2) naming the ranks whose key file cannot
    be read or whose link key does not match rank 0's.
    """

    secret, problem = read_key_file(key_file) if key_file is not None else (None, None)
    mine = X25519PrivateKey.generate()
    pub = aead._pub_bytes(mine.public_key()).hex()
    me, world = link.world[link.rank], link.world
    if link.rank == 0:
        infos = link.gather_json(None)
        bad = [(me, problem)] * bool(problem) + [(i["rank"], i["problem"]) for i in infos
                                                 if i["problem"]]
        if bad:
            fatal(f"fedf: error: --key-file on {_ranks([r for r, _ in bad])}: {bad[0][1]}.", 2)
        salt = secrets.token_bytes(16)
        link.bcast_json({"x25519": pub, "salt": salt.hex()})
        peers = {r: bytes.fromhex(i["x25519"]) for r, i in enumerate(infos, 1)}
    else:
        link.gather_json({"rank": me, "x25519": pub, "problem": problem})
        start = link.bcast_json(None)
        salt, peers = bytes.fromhex(start["salt"]), {0: bytes.fromhex(start["x25519"])}
    keys = {}
    for r, peer_pub in peers.items():
        lo, hi = sorted((me, world[r]))
        keys[r] = (file_link_key(secret, salt, me, world[r]) if secret is not None else
                   aead.link_key(mine, peer_pub, context=struct.pack("<II", lo, hi) + salt))
    wire = Wire(world, link.rank, keys, cipher=cipher, faults=faults)
    _confirm(link, wire, key_file is not None, SETUP_TIMEOUT, fatal)
    return wire


def _ranks(ranks: Sequence[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))


def _confirm(link: Link, wire: Wire, from_file: bool, limit: float, fatal) -> None:
    """Each worker rank seals a HELLO to rank 0, which opens them all, then answers each."""
    size = len(_HELLO) + ENVELOPE
    cause = ("its --key-file holds another key than rank 0's; give every rank the same "
             "file" if from_file else "the start-up public keys were altered on the way")
    if link.rank != 0:
        link.comm.Send([wire.seal(0, wire.stage(Message.HELLO, 0, np.frombuffer(
            _HELLO, np.uint8))), MPI.BYTE], dest=0, tag=_TAG_HELLO)
        back = np.empty(size, np.uint8)
        link.wait([link.comm.Irecv([back, MPI.BYTE], source=0, tag=_TAG_HELLO)], [0],
                  "start-up", limit)
        try:
            wire.open(0, Message.HELLO, 0, back, what="key confirmation")
        except codec.FrameError:
            fatal(f"fedf: error: the link key of rank {link.world[link.rank]} does not "
                  f"match rank {link.world[0]}'s at start-up: {cause}.", 2)
        return
    ranks = list(range(1, link.comm.Get_size()))
    bufs = {r: np.empty(size, np.uint8) for r in ranks}
    link.wait([link.comm.Irecv([bufs[r], MPI.BYTE], source=r, tag=_TAG_HELLO) for r in ranks],
              ranks, "start-up", limit)
    bad = []
    for r in ranks:
        try:
            wire.open(r, Message.HELLO, 0, bufs[r], what="key confirmation")
        except codec.FrameError:
            bad.append(link.world[r])
    if bad:
        verb = "does" if len(bad) == 1 else "do"
        fatal(f"fedf: error: the link key of {_ranks(bad)} {verb} not match rank "
              f"{link.world[0]}'s at start-up: {cause}.", 2)
    hello = wire.stage(Message.HELLO, 0, np.frombuffer(_HELLO, np.uint8))
    for r in ranks:
        link.comm.Send([wire.seal(r, hello), MPI.BYTE], dest=r, tag=_TAG_HELLO)


__all__ = ["WIRES", "ENVELOPE", "Message", "Wire", "establish", "file_link_key",
           "read_key_file", "u8"]
