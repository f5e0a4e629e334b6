"""Authenticated encryption of codec frames on one link and direction (DESIGN §8).

Each link direction sender -> receiver has its own key,
HKDF-SHA256(link key, info = cipher | sender | receiver), so a frame sealed for one link or
direction never opens on another. The link key is 32 bytes shared by the two ends: from
:func:`link_key` (X25519) or a key file (:func:`load_key`).

Sealed layout, ``OVERHEAD`` = 36 bytes more than the frame::

    sender u32 | receiver u32 | nonce (12 bytes)   20-byte prefix, sent in the clear and
                                                   authenticated as associated data
    ciphertext of the frame (len(frame) bytes) | tag (16 bytes)

    nonce = epoch u32 | kind u8 | counter u56      (little-endian)

The epoch and kind come from the frame's codec header (bytes 8-11 and 5) and the sender
is bound by the key and the associated data. The counter starts at 1 and grows by one per
sealed frame, so a nonce never repeats under one key. The receiver accepts a counter only
if it is strictly greater than the last one it accepted. It raises ``codec.FrameError``
naming the reason for a misdirected frame, a replay or reorder, a failed tag (any
flipped bit) or a truncated message. With AEAD on, the frame's CRC is redundant.

Ciphers: ``"aes-gcm"`` (AES-256-GCM) or ``"chacha20-poly1305"``, both from
``cryptography``; both ends must use the same one.
"""

from __future__ import annotations

import os
import secrets
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedf_jax import codec

CIPHERS = {"aes-gcm": AESGCM, "chacha20-poly1305": ChaCha20Poly1305}
_PREFIX = struct.Struct("<IIIB7s")  # sender, receiver | epoch, kind, counter (the nonce)
_HEAD = struct.Struct("<4sBBBBII")  # codec header: magic, version, kind, scheme, pad,
TAG_SIZE = 16  #                       epoch, sender
OVERHEAD = _PREFIX.size + TAG_SIZE  # 36
_MAX_COUNTER = 2**56 - 1


def _pub_bytes(key) -> bytes:
    if isinstance(key, (bytes, bytearray)):
        return bytes(key)
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def link_key(my_private: X25519PrivateKey, peer_public: X25519PublicKey | bytes, *,
             context: bytes = b"") -> bytes:
    """The 32-byte link key both ends derive: HKDF(X25519(mine, peer), info = both public
    keys in sorted order | context)."""
    peer = _pub_bytes(peer_public)
    shared = my_private.exchange(X25519PublicKey.from_public_bytes(peer))
    lo, hi = sorted([_pub_bytes(my_private.public_key()), peer])
    return HKDF(hashes.SHA256(), 32, salt=b"fedf-aead/link", info=lo + hi + context).derive(
        shared)


def load_key(path: str | os.PathLike) -> bytes:
    """A link key from a file of 32 raw bytes or 64 hex digits (surrounding space ignored)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) == 32:
        return data
    text = data.strip()
    try:
        if len(text) == 64:
            return bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        pass
    raise ValueError(f"key file {os.fspath(path)!r} holds {len(data)} bytes; expected 32 raw "
                     "bytes or 64 hex digits.")


def write_key(path: str | os.PathLike, key: bytes | None = None) -> bytes:
    """Writes ``key`` (or 32 fresh bytes from ``secrets``) as hex to a new file readable by
    its owner only, and returns the key."""
    key = secrets.token_bytes(32) if key is None else bytes(key)
    if len(key) != 32:
        raise ValueError(f"key has {len(key)} bytes; expected 32.")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    return key


class Channel:
    """One direction of one link: ``seal`` at the sender, ``open`` at the receiver.

    Args:
      key: 32-byte link key shared by both ends.
      sender, receiver: rank ids of the direction, u32.
      cipher: ``"aes-gcm"`` or ``"chacha20-poly1305"``.
    """

    def __init__(self, key: bytes, sender: int, receiver: int, *, cipher: str = "aes-gcm"):
        if not isinstance(key, (bytes, bytearray)) or len(key) != 32:
            raise ValueError(f"`key` must be 32 bytes; got {type(key).__name__} of "
                             f"{len(key) if hasattr(key, '__len__') else '?'} bytes.")
        if cipher not in CIPHERS:
            raise ValueError(f"`cipher` (={cipher!r}) must be one of {sorted(CIPHERS)}.")
        for name, v in (("sender", sender), ("receiver", receiver)):
            if isinstance(v, bool) or int(v) != v or not 0 <= v < 2**32:
                raise ValueError(f"`{name}` (={v!r}) must be an int in [0, 2**32).")
        if sender == receiver:
            raise ValueError(f"`sender` and `receiver` are both {sender}; a link has two ends.")
        self.sender, self.receiver, self.cipher = int(sender), int(receiver), cipher
        info = cipher.encode() + struct.pack("<II", self.sender, self.receiver)
        direction_key = HKDF(hashes.SHA256(), 32, salt=b"fedf-aead/direction",
                             info=info).derive(bytes(key))
        self._aead = CIPHERS[cipher](direction_key)
        self._sent = 0  # last counter sealed
        self._accepted = 0  # last counter opened

    def seal(self, frame, out=None):
        """Seals one codec frame (its header names this channel's sender).

        Args:
          frame: bytes-like, a codec frame.
          out: optional writable buffer of at least ``len(frame) + OVERHEAD`` bytes, reused
            across calls to skip an allocation.
        Returns:
          bytes, or a memoryview of ``out`` when given.
        """
        body = memoryview(frame).cast("B")
        if len(body) < codec.HEADER_SIZE:
            raise ValueError(f"frame of {len(body)} bytes is shorter than a codec header "
                             f"({codec.HEADER_SIZE} bytes).")
        _, _, kind, _, _, epoch, sender = _HEAD.unpack_from(body)
        if sender != self.sender:
            raise ValueError(f"frame's header names sender {sender}; this channel seals for "
                             f"sender {self.sender}.")
        if self._sent >= _MAX_COUNTER:
            raise ValueError("counter exhausted on this channel; derive a new link key.")
        self._sent += 1
        prefix = _PREFIX.pack(self.sender, self.receiver, epoch, kind,
                              self._sent.to_bytes(7, "little"))
        nonce = prefix[8:]
        if out is None:
            return prefix + self._aead.encrypt(nonce, body, prefix)
        dest = memoryview(out).cast("B")
        size = len(body) + OVERHEAD
        if len(dest) < size:
            raise ValueError(f"`out` has {len(dest)} bytes; sealing needs {size}.")
        dest[:_PREFIX.size] = prefix
        if hasattr(self._aead, "encrypt_into"):  # newer cryptography: no extra copy
            self._aead.encrypt_into(nonce, body, prefix, dest[_PREFIX.size:size])
        else:  # pragma: no cover - older cryptography
            dest[_PREFIX.size:size] = self._aead.encrypt(nonce, body, prefix)
        return dest[:size]

    def open(self, sealed, out=None):
        """Checks and opens a sealed frame.

        Args:
          sealed: bytes-like from :meth:`seal` at the other end.
          out: optional writable buffer of at least ``len(sealed) - OVERHEAD`` bytes.
        Returns:
          the frame: bytes, or a memoryview of ``out`` when given.
        Raises:
          codec.FrameError: misdirected, replayed or reordered, tampered, or truncated.
        """
        buf = memoryview(sealed).cast("B")
        if len(buf) < OVERHEAD + codec.HEADER_SIZE:
            raise codec.FrameError(f"sealed frame truncated ({len(buf)} bytes; at least "
                                   f"{OVERHEAD + codec.HEADER_SIZE})")
        sender, receiver, epoch, kind, ctr = _PREFIX.unpack_from(buf)
        counter = int.from_bytes(ctr, "little")
        if (sender, receiver) != (self.sender, self.receiver):
            raise codec.FrameError(
                f"misdirected: sealed for link {sender}->{receiver}, this channel receives "
                f"{self.sender}->{self.receiver}", sender, epoch)
        if counter <= self._accepted:
            raise codec.FrameError(
                f"replayed or reordered: counter {counter} is not above the last accepted "
                f"{self._accepted}", sender, epoch)
        prefix, body = bytes(buf[:_PREFIX.size]), buf[_PREFIX.size:]
        try:
            if out is None:
                frame = self._aead.decrypt(prefix[8:], body, prefix)
            else:
                size = len(body) - TAG_SIZE
                frame = memoryview(out).cast("B")[:size]
                if len(frame) < size:
                    raise ValueError(f"`out` has {len(frame)} bytes; opening needs {size}.")
                if hasattr(self._aead, "decrypt_into"):
                    self._aead.decrypt_into(prefix[8:], body, prefix, frame)
                else:  # pragma: no cover - older cryptography
                    frame[:] = self._aead.decrypt(prefix[8:], body, prefix)
        except InvalidTag:
            raise codec.FrameError(
                f"authentication failed ({self.cipher} tag): tampered, or sealed under "
                "another key or cipher", sender, epoch) from None
        _, _, hkind, _, _, hepoch, hsender = _HEAD.unpack_from(frame)
        if (hkind, hepoch, hsender) != (kind, epoch, sender):
            raise codec.FrameError("frame header disagrees with its seal", sender, epoch)
        self._accepted = counter
        return frame
