"""fedf_jax.secure.aead: sealed codec frames open only once, in order, on their own link
and direction, and not after any single flipped bit."""

import os
import struct

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedf_jax import codec
from fedf_jax.secure import aead

KEY = bytes(range(32))
CIPHERS = sorted(aead.CIPHERS)


def _frame(epoch=3, sender=1, kind=codec.Kind.COST, values=(1.5,)):
    v = np.asarray(values, np.float32)
    return codec.encode_frame(kind, epoch, sender, codec.Payload.F32, v.size, v)


@pytest.mark.parametrize("cipher", CIPHERS)
def test_round_trip_and_layout(cipher):
    tx = aead.Channel(KEY, sender=1, receiver=0, cipher=cipher)
    rx = aead.Channel(KEY, sender=1, receiver=0, cipher=cipher)
    for i, (epoch, kind, m) in enumerate([(0, codec.Kind.COST, 1), (0, codec.Kind.TERNARY, 37),
                                          (5, codec.Kind.MODEL_UP, 1000)]):
        frame = _frame(epoch, 1, kind, np.arange(m))
        sealed = tx.seal(frame)
        assert isinstance(sealed, bytes) and len(sealed) == len(frame) + aead.OVERHEAD == len(
            frame) + 36
        sender, receiver, ep, kd = struct.unpack_from("<IIIB", sealed)
        assert (sender, receiver, ep, kd) == (1, 0, epoch, int(kind))
        assert int.from_bytes(sealed[13:20], "little") == i + 1  # the counter
        assert frame not in sealed  # the frame travels encrypted
        assert rx.open(sealed) == frame


@pytest.mark.parametrize(("cipher", "flips"), [("aes-gcm", 10_000), ("chacha20-poly1305", 2_000)])
def test_every_single_bit_flip_is_rejected(cipher, flips):
    tx = aead.Channel(KEY, 1, 0, cipher=cipher)
    rx = aead.Channel(KEY, 1, 0, cipher=cipher)
    done = 0
    while done < flips:
        frame = _frame(epoch=done)
        sealed = tx.seal(frame)
        todo = min(len(sealed) * 8, flips - done)
        for bit in range(todo):
            bad = bytearray(sealed)
            bad[bit // 8] ^= 1 << (bit % 8)
            with pytest.raises(codec.FrameError):
                rx.open(bytes(bad))
        done += todo
        assert rx.open(sealed) == frame  # the rejections left the receiver's state alone


def test_replay_and_reorder_are_rejected():
    tx, rx = aead.Channel(KEY, 1, 0), aead.Channel(KEY, 1, 0)
    a, b, c = (tx.seal(_frame(epoch=e)) for e in range(3))
    assert rx.open(a) == _frame(epoch=0)
    with pytest.raises(codec.FrameError, match="replayed or reordered: counter 1 is not above "
                                               "the last accepted 1"):
        rx.open(a)
    assert rx.open(c) == _frame(epoch=2)
    with pytest.raises(codec.FrameError, match="counter 2 is not above the last accepted 3"):
        rx.open(b)


def test_misdirected_frames_are_rejected():
    sealed = aead.Channel(KEY, 1, 0).seal(_frame(sender=1))
    for sender, receiver in [(2, 0), (1, 3), (0, 1)]:
        with pytest.raises(codec.FrameError, match=rf"misdirected: sealed for link 1->0, "
                                                   rf"this channel receives {sender}->{receiver}"):
            aead.Channel(KEY, sender, receiver).open(sealed)
    # Rewriting the clear prefix does not help: the other direction has another key.
    forged = struct.pack("<II", 0, 1) + sealed[8:]
    with pytest.raises(codec.FrameError, match="authentication failed"):
        aead.Channel(KEY, 0, 1).open(forged)


def test_directions_never_share_a_keystream():
    """Both directions seal with the same nonce (epoch, kind, counter); only distinct
    per-direction keys keep the GCM keystreams apart."""
    up, down = _frame(sender=1), _frame(sender=0)
    s_up = aead.Channel(KEY, 1, 0).seal(up)
    s_down = aead.Channel(KEY, 0, 1).seal(down)
    assert s_up[8:20] == s_down[8:20]  # the same nonce
    pad_up = bytes(a ^ b for a, b in zip(s_up[20:-16], up, strict=True))
    pad_down = bytes(a ^ b for a, b in zip(s_down[20:-16], down, strict=True))
    assert pad_up != pad_down


def test_other_key_or_cipher_fails_authentication():
    sealed = aead.Channel(KEY, 1, 0).seal(_frame())
    for rx in (aead.Channel(os.urandom(32), 1, 0),
               aead.Channel(KEY, 1, 0, cipher="chacha20-poly1305")):
        with pytest.raises(codec.FrameError, match=r"rejected frame from sender 1, epoch 3: "
                                                   r"authentication failed"):
            rx.open(sealed)


def test_seal_and_open_check_their_inputs():
    tx = aead.Channel(KEY, 1, 0)
    with pytest.raises(ValueError, match="names sender 2; this channel seals for sender 1"):
        tx.seal(_frame(sender=2))
    with pytest.raises(ValueError, match="shorter than a codec header"):
        tx.seal(b"FEDF")
    with pytest.raises(codec.FrameError, match="truncated"):
        aead.Channel(KEY, 1, 0).open(tx.seal(_frame())[:50])
    with pytest.raises(ValueError, match="`key` must be 32 bytes"):
        aead.Channel(KEY[:16], 1, 0)
    with pytest.raises(ValueError, match=r"`cipher` \(='des'\)"):
        aead.Channel(KEY, 1, 0, cipher="des")
    with pytest.raises(ValueError, match="a link has two ends"):
        aead.Channel(KEY, 1, 1)


@pytest.mark.parametrize("cipher", CIPHERS)
def test_reused_buffers(cipher):
    tx, rx = aead.Channel(KEY, 1, 0, cipher=cipher), aead.Channel(KEY, 1, 0, cipher=cipher)
    frame = _frame(values=np.arange(100))
    out, back = bytearray(len(frame) + aead.OVERHEAD), bytearray(len(frame))
    for _ in range(3):
        sealed = tx.seal(frame, out)
        assert bytes(rx.open(sealed, back)) == frame


def test_link_key_agrees_at_both_ends_and_opens_frames():
    a, b, c = (X25519PrivateKey.from_private_bytes(bytes([i]) * 32) for i in (1, 2, 3))
    k_ab = aead.link_key(a, b.public_key())
    assert k_ab == aead.link_key(b, a.public_key()) != aead.link_key(a, c.public_key())
    assert aead.link_key(a, b.public_key(), context=b"x") != k_ab
    sealed = aead.Channel(k_ab, 1, 0).seal(_frame())
    assert aead.Channel(aead.link_key(b, a.public_key()), 1, 0).open(sealed) == _frame()


def test_key_files_raw_and_hex(tmp_path):
    (tmp_path / "raw").write_bytes(KEY)
    (tmp_path / "hex").write_text(KEY.hex() + "\n")
    assert aead.load_key(tmp_path / "raw") == aead.load_key(tmp_path / "hex") == KEY
    key = aead.write_key(tmp_path / "new")
    assert aead.load_key(tmp_path / "new") == key and len(key) == 32
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o600
    (tmp_path / "bad").write_text("zz" * 32)
    with pytest.raises(ValueError, match=r"bad' holds 64 bytes; expected 32 raw"):
        aead.load_key(tmp_path / "bad")
