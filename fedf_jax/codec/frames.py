"""Framed messages (DESIGN §2): host only, never under jit.

Every message on a real wire is a frame: a 36-byte little-endian header (magic,
format version, message kind, payload scheme, a reserved byte that must be 0,
epoch, sender, element count, payload length, CRC32) then the payload. The CRC32
covers the first 32 header bytes *and* the payload, so a flipped bit anywhere in
the frame is caught (DESIGN §2 asks for the payload; the header is covered as well
because its fields steer how the payload is read). A frame that fails any check
raises :class:`FrameError` naming the sender, the epoch and the reason; nothing is
unpickled.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

import numpy as np

from fedf_jax.codec.packing import (
    _byte_view,
    _check_scheme,
    check_packed,
    pack,
    packed_size,
    unpack,
)

try:  # the same CRC-32 as zlib's, about 4x faster (ISA-L); optional
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - depends on the environment
    from zlib import crc32 as _crc32

MAGIC = b"FEDF"
VERSION = 1
_HEADER = struct.Struct("<4sBBBBIIQQI")
HEADER_SIZE = _HEADER.size  # 36
_CRC_OFFSET = HEADER_SIZE - 4


class Kind(enum.IntEnum):
    """Message kinds of one global epoch (DESIGN §2)."""

    MODEL_DOWN = 1  # P^{t-1}, master -> worker
    COST = 2  # C_k^t, worker -> master
    COMMAND = 3  # SEND_MODEL / SEND_TERNARY, master -> worker
    MODEL_UP = 4  # Q_{k*}^t, pilot -> master
    TERNARY = 5  # packed T_k, other workers -> master


class Payload(enum.IntEnum):
    """Payload encodings; the element size says how ``count`` maps to bytes."""

    F32 = 0
    F64 = 1
    TERN_2BIT = 2
    TERN_BASE3 = 3
    U8 = 4


class Command(enum.IntEnum):
    """Master's command to a worker after the pilot choice (Algorithm 2)."""

    SEND_TERNARY = 0
    SEND_MODEL = 1


_DTYPES = {Payload.F32: np.float32, Payload.F64: np.float64, Payload.U8: np.uint8}
_TERNARY_PAYLOADS = {"2bit": Payload.TERN_2BIT, "base3": Payload.TERN_BASE3}
_SCHEME_OF = {v: k for k, v in _TERNARY_PAYLOADS.items()}


def payload_size(scheme: Payload | int, count: int) -> int:
    """Payload bytes of ``count`` elements under a payload encoding."""
    scheme = Payload(scheme)
    if scheme in _SCHEME_OF:
        return packed_size(count, _SCHEME_OF[scheme])
    return count * np.dtype(_DTYPES[scheme]).itemsize


class Frame(NamedTuple):
    kind: Kind
    epoch: int
    sender: int
    scheme: Payload
    count: int
    payload: bytes


class FrameError(ValueError):
    """A frame failed a check; names the sender, the epoch and the reason."""

    def __init__(self, reason: str, sender: int | None = None, epoch: int | None = None):
        self.reason, self.sender, self.epoch = reason, sender, epoch
        who = "unknown sender" if sender is None else f"sender {sender}"
        when = "unknown epoch" if epoch is None else f"epoch {epoch}"
        super().__init__(f"rejected frame from {who}, {when}: {reason}")


def _as_bytes(payload) -> bytes:
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    return np.ascontiguousarray(np.asarray(payload)).tobytes()


def frame_header(kind, epoch: int, sender: int, scheme, count: int, payload, *,
                 checksum: bool = True) -> bytes:
    """The 36-byte header of :func:`encode_frame`, computed without copying the payload.

    ``encode_frame(...) == frame_header(...) + bytes(payload)``; a sender that writes
    header and payload into its own send buffer (the MPI backend) uses this. With
    ``checksum=False`` the CRC field is 0 and not computed: for a frame sealed by an
    AEAD, whose tag already covers every byte (DESIGN §8).

    Raises:
      ValueError: if the payload length does not match ``count`` under ``scheme``.
    """
    kind, scheme = Kind(kind), Payload(scheme)
    body = _byte_view(payload)
    if len(body) != payload_size(scheme, count):
        raise ValueError(
            f"payload has {len(body)} bytes; {count} elements of {scheme.name} "
            f"need {payload_size(scheme, count)}."
        )
    head = _HEADER.pack(MAGIC, VERSION, kind, scheme, 0, epoch, sender, count, len(body), 0)
    crc = _crc32(body, _crc32(head[:_CRC_OFFSET])) if checksum else 0
    return head[:_CRC_OFFSET] + struct.pack("<I", crc)


def encode_frame(kind, epoch: int, sender: int, scheme, count: int, payload) -> bytes:
    """Frames a payload: 36-byte header (magic, version, kind, scheme, reserved 0, epoch,
    sender, count, payload length, CRC32) then the payload bytes.

    Raises:
      ValueError: if the payload length does not match ``count`` under ``scheme``.
    """
    return frame_header(kind, epoch, sender, scheme, count, payload) + _as_bytes(payload)


def decode_frame(
    buf, *, expected_kind=None, expected_epoch: int | None = None,
    expected_sender: int | None = None, copy: bool = True, checksum: bool = True,
) -> Frame:
    """Parses and checks a frame; raises :class:`FrameError` naming what is wrong.

    With ``copy=False`` the payload is a memoryview into ``buf`` (no copy), for
    receivers of large frames (the MPI backend). With ``checksum=False`` the CRC is not
    checked: for a frame whose AEAD tag was (``frame_header(checksum=False)``).
    """
    buf = _byte_view(buf)
    if len(buf) < HEADER_SIZE:
        raise FrameError(f"truncated header ({len(buf)} of {HEADER_SIZE} bytes)")
    (magic, version, kind, scheme, reserved, epoch, sender, count, length,
     crc) = _HEADER.unpack_from(buf)
    if magic != MAGIC:
        raise FrameError(f"bad magic {magic!r} (expected {MAGIC!r})")
    if version != VERSION:
        raise FrameError(f"unsupported version {version} (expected {VERSION})", sender, epoch)
    body = buf[HEADER_SIZE:]
    if len(body) != length:
        raise FrameError(
            f"payload is {len(body)} bytes but the header says {length}", sender, epoch
        )
    if checksum and _crc32(body, _crc32(buf[:_CRC_OFFSET])) != crc:
        raise FrameError("CRC32 mismatch (corrupted frame)", sender, epoch)
    # Version 1 gives this byte no meaning; a sender that sets it speaks another format.
    if reserved != 0:
        raise FrameError(f"reserved header byte is {reserved} (must be 0)", sender, epoch)
    if kind not in Kind._value2member_map_:
        raise FrameError(f"unknown message kind {kind}", sender, epoch)
    if scheme not in Payload._value2member_map_:
        raise FrameError(f"unknown payload scheme {scheme}", sender, epoch)
    if payload_size(scheme, count) != length:
        raise FrameError(
            f"{count} elements of {Payload(scheme).name} need {payload_size(scheme, count)} "
            f"bytes, the frame has {length}", sender, epoch,
        )
    for name, want, got in (
        ("kind", expected_kind, kind), ("epoch", expected_epoch, epoch),
        ("sender", expected_sender, sender),
    ):
        if want is not None and int(want) != got:
            raise FrameError(f"{name} is {got}, expected {int(want)}", sender, epoch)
    return Frame(Kind(kind), epoch, sender, Payload(scheme), count,
                 bytes(body) if copy else body)


def encode_ternary(t, epoch: int, sender: int, scheme: str = "2bit") -> bytes:
    """A ``TERNARY`` frame carrying ``pack(t, scheme)``."""
    _check_scheme(scheme)
    t = np.asarray(t)
    return encode_frame(Kind.TERNARY, epoch, sender, _TERNARY_PAYLOADS[scheme], t.size,
                        pack(t, scheme))


def decode_ternary(
    buf, n: int, *, expected_epoch: int | None = None, expected_sender: int | None = None,
) -> np.ndarray:
    """Checks a ``TERNARY`` frame of ``n`` trits and returns them as i8[n]."""
    frame = decode_frame(buf, expected_kind=Kind.TERNARY, expected_epoch=expected_epoch,
                         expected_sender=expected_sender)
    if frame.scheme not in _SCHEME_OF:
        raise FrameError(f"payload scheme {frame.scheme.name} is not a ternary packing",
                         frame.sender, frame.epoch)
    if frame.count != n:
        raise FrameError(f"{frame.count} trits, expected {n}", frame.sender, frame.epoch)
    try:
        return unpack(frame.payload, n, _SCHEME_OF[frame.scheme])
    except ValueError as e:
        raise FrameError(str(e), frame.sender, frame.epoch) from None


def decode_packed(
    buf, n: int, scheme: str = "2bit", *, expected_epoch: int | None = None,
    expected_sender: int | None = None, checksum: bool = True,
) -> np.ndarray:
    """Checks a ``TERNARY`` frame of ``n`` trits packed with ``scheme`` and returns its
    payload still packed, u8[packed_size(n)] (a read-only view into ``buf``), for the
    fused unpack-and-update kernel. The checks are those of :func:`decode_ternary`
    (the CRC only with ``checksum``, see :func:`decode_frame`).
    """
    _check_scheme(scheme)
    frame = decode_frame(buf, expected_kind=Kind.TERNARY, expected_epoch=expected_epoch,
                         expected_sender=expected_sender, copy=False, checksum=checksum)
    if frame.scheme != _TERNARY_PAYLOADS[scheme]:
        raise FrameError(f"payload scheme {frame.scheme.name}, expected "
                         f"{_TERNARY_PAYLOADS[scheme].name}", frame.sender, frame.epoch)
    if frame.count != n:
        raise FrameError(f"{frame.count} trits, expected {n}", frame.sender, frame.epoch)
    packed = np.frombuffer(frame.payload, np.uint8)
    try:
        check_packed(packed, n, scheme)
    except ValueError as e:
        raise FrameError(str(e), frame.sender, frame.epoch) from None
    return packed


def encode_array(kind, arr, epoch: int, sender: int) -> bytes:
    """A frame carrying a float32, float64 or uint8 array."""
    arr = np.asarray(arr)
    for scheme, dtype in _DTYPES.items():
        if arr.dtype == dtype:
            return encode_frame(kind, epoch, sender, scheme, arr.size, arr)
    raise ValueError(f"array dtype {arr.dtype} has no frame encoding (float32, float64, uint8).")


def decode_array(
    buf, *, expected_kind=None, expected_epoch: int | None = None,
    expected_sender: int | None = None, expected_count: int | None = None,
    copy: bool = True, checksum: bool = True,
) -> np.ndarray:
    """Checks a frame made by :func:`encode_array` and returns its 1-D array
    (with ``copy=False``, a read-only view into ``buf``; the CRC only with ``checksum``)."""
    frame = decode_frame(buf, expected_kind=expected_kind, expected_epoch=expected_epoch,
                         expected_sender=expected_sender, copy=copy, checksum=checksum)
    if frame.scheme not in _DTYPES:
        raise FrameError(f"payload scheme {frame.scheme.name} is not a plain array",
                         frame.sender, frame.epoch)
    if expected_count is not None and frame.count != expected_count:
        raise FrameError(f"{frame.count} elements, expected {expected_count}",
                         frame.sender, frame.epoch)
    arr = np.frombuffer(frame.payload, dtype=_DTYPES[frame.scheme])
    return arr.copy() if copy else arr


__all__ = [
    "MAGIC", "VERSION", "HEADER_SIZE", "Kind", "Payload", "Command", "Frame", "FrameError",
    "payload_size", "frame_header", "encode_frame", "decode_frame", "encode_ternary",
    "decode_ternary", "decode_packed", "encode_array", "decode_array",
]
