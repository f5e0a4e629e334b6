"""fedf_jax.codec against hand-written byte layouts and plain numpy/struct references
(DESIGN.md §2).

Ternary packing (2bit, base3) in numpy and jnp, frames (header layout, CRC, every rejection
reason), the array/ternary frame helpers and the byte counts of Eq. (8).
"""

import enum
import math
import struct
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import ref_pack, ref_packed_size, ref_unpack

from fedf_jax import codec

SCHEMES = ["2bit", "base3"]
SIZES = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 37, 40, 1001]

def _random_ternary(n, seed):
    return np.random.default_rng(seed).integers(-1, 2, n).astype(np.int8)


# ---------------------------------------------------------------------------------------
# Hand-written byte layouts.
# ---------------------------------------------------------------------------------------

HAND_2BIT = [
    ([1, -1, 0, 1], [0b01_00_11_01]),
    ([1, -1, 0, 1], [0x4D]),
    ([1], [0x01]),
    ([-1], [0x03]),
    ([0], [0x00]),
    ([0, 1], [0x04]),
    ([0, 0, 0, -1], [0xC0]),
    ([-1, -1, -1, -1, 1], [0xFF, 0x01]),
    ([1, 1, 1, 1, 0, 0, 0, 0, 0, 0, -1], [0x55, 0x00, 0x30]),
]

# byte = sum_i (T_i + 1) 3^i, first value least significant; padding digits are 1 (value 0).
HAND_BASE3 = [
    ([1, 0, -1, 0, 0], [113]),  # 2 + 1*3 + 0*9 + 1*27 + 1*81
    ([-1] * 5, [0]),
    ([1] * 5, [242]),  # 2 * (1 + 3 + 9 + 27 + 81)
    ([0] * 5, [121]),  # 1 + 3 + 9 + 27 + 81
    ([1], [122]),  # 2 + 1*3 + 1*9 + 1*27 + 1*81
    ([-1], [120]),  # 0 + 1*3 + 1*9 + 1*27 + 1*81
    ([0, 0, 0, 0, 0, -1], [121, 120]),
    ([-1, -1, -1, -1, 1, 1, 1], [162, 125]),  # 2*81; 2 + 2*3 + 1*9 + 1*27 + 1*81
]


@pytest.mark.parametrize("t,expected", HAND_2BIT)
def test_pack_2bit_hand_layout(t, expected):
    assert ref_pack(t, "2bit").tolist() == expected  # the reference agrees with the hand
    got = codec.pack(np.array(t, np.int8), "2bit")
    assert isinstance(got, np.ndarray)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.array(expected, np.uint8))
    np.testing.assert_array_equal(codec.unpack(np.array(expected, np.uint8), len(t), "2bit"),
                                  np.array(t, np.int8))


@pytest.mark.parametrize("t,expected", HAND_BASE3)
def test_pack_base3_hand_layout(t, expected):
    assert ref_pack(t, "base3").tolist() == expected
    got = codec.pack(np.array(t, np.int8), "base3")
    assert isinstance(got, np.ndarray)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.array(expected, np.uint8))
    np.testing.assert_array_equal(codec.unpack(np.array(expected, np.uint8), len(t), "base3"),
                                  np.array(t, np.int8))


def test_pack_default_scheme_is_2bit():
    t = np.array([1, -1, 0, 1, -1], np.int8)
    np.testing.assert_array_equal(codec.pack(t), [0x4D, 0x03])
    np.testing.assert_array_equal(codec.unpack(np.array([0x4D, 0x03], np.uint8), 5), t)


# ---------------------------------------------------------------------------------------
# Packing against the reference, round trips, sizes.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("n", [0, *SIZES])
def test_packed_size(scheme, n):
    want = math.ceil(n / 4) if scheme == "2bit" else math.ceil(n / 5)
    assert codec.packed_size(n, scheme) == want


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("n", SIZES)
def test_pack_matches_numpy_loop_and_round_trips(scheme, n):
    t = _random_ternary(n, seed=n)
    got = codec.pack(t, scheme)
    assert got.dtype == np.uint8
    assert got.shape == (codec.packed_size(n, scheme),)
    np.testing.assert_array_equal(got, ref_pack(t, scheme))
    back = codec.unpack(got, n, scheme)
    assert isinstance(back, np.ndarray)
    assert back.dtype == np.int8
    assert back.shape == (n,)
    np.testing.assert_array_equal(back, t)
    np.testing.assert_array_equal(ref_unpack(got, n, scheme), t)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_unpack_every_valid_byte_matches_numpy_loop(scheme):
    # 2bit: every byte without a 10 code; base3: every byte 0..242.
    n = 4 if scheme == "2bit" else 5
    for byte in range(256):
        buf = np.array([byte], np.uint8)
        try:
            want = ref_unpack(buf, n, scheme)
        except ValueError:
            with pytest.raises(ValueError):
                codec.unpack(buf, n, scheme)
            continue
        np.testing.assert_array_equal(codec.unpack(buf, n, scheme), want)
        np.testing.assert_array_equal(codec.pack(want, scheme), buf)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_pack_and_unpack_accept_jax_arrays(scheme):
    t = _random_ternary(37, seed=1)
    buf = codec.pack(jnp.asarray(t), scheme)
    assert isinstance(buf, np.ndarray)
    np.testing.assert_array_equal(buf, ref_pack(t, scheme))
    back = codec.unpack(jnp.asarray(buf), 37, scheme)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, t)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_pack_accepts_wider_integer_dtypes(scheme):
    t = _random_ternary(37, seed=2)
    for dtype in (np.int32, np.int64):
        np.testing.assert_array_equal(codec.pack(t.astype(dtype), scheme), ref_pack(t, scheme))


def test_base3_is_20_percent_smaller_than_2bit():
    t = _random_ternary(1000, seed=3)
    assert codec.pack(t, "2bit").size == 250
    assert codec.pack(t, "base3").size == 200


# ---------------------------------------------------------------------------------------
# Invalid input.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bad", [
    np.array([0, 2], np.int8),
    np.array([-2], np.int8),
    np.array([1, 0, -1, 127], np.int8),
    np.array([1, 0, 5], np.int32),
    np.array([0.0, 0.5]),
])
def test_pack_rejects_values_outside_minus_one_zero_one(scheme, bad):
    with pytest.raises(ValueError):
        codec.pack(bad, scheme)


def test_unknown_scheme_raises():
    t = np.zeros(8, np.int8)
    with pytest.raises(ValueError):
        codec.pack(t, "3bit")
    with pytest.raises(ValueError):
        codec.unpack(np.zeros(2, np.uint8), 8, "base4")
    with pytest.raises(ValueError):
        codec.packed_size(8, "trits")


@pytest.mark.parametrize("slot", [0, 1, 2, 3])
@pytest.mark.parametrize("byte_index", [0, 1])
def test_unpack_2bit_rejects_code_10_in_every_slot(slot, byte_index):
    buf = np.zeros(2, np.uint8)
    buf[byte_index] = 0b10 << (2 * slot)
    with pytest.raises(ValueError):
        ref_unpack(buf, 8, "2bit")
    with pytest.raises(ValueError):
        codec.unpack(buf, 8, "2bit")


@pytest.mark.parametrize("n,buf", [
    (5, [0x00, 0b01 << 2]),  # slot 1 of the last byte is padding
    (5, [0x00, 0b11 << 6]),
    (6, [0x00, 0b01 << 4]),
    (7, [0x00, 0b11 << 6]),
    (1, [0b01_00_00_01]),
    (37, [0] * 9 + [0b11 << 2]),
])
def test_unpack_2bit_rejects_non_zero_padding(n, buf):
    buf = np.array(buf, np.uint8)
    with pytest.raises(ValueError):
        ref_unpack(buf, n, "2bit")
    with pytest.raises(ValueError):
        codec.unpack(buf, n, "2bit")


@pytest.mark.parametrize("bad_byte", [243, 244, 250, 255])
@pytest.mark.parametrize("position", [0, 1])
def test_unpack_base3_rejects_bytes_above_242(bad_byte, position):
    buf = np.array([121, 121], np.uint8)
    buf[position] = bad_byte
    with pytest.raises(ValueError):
        codec.unpack(buf, 10, "base3")


@pytest.mark.parametrize("n,buf", [
    (6, [121, 0]),  # value -1, then padding digits 0
    (6, [121, 117]),  # digits 0,0,1,1,1: padding digit 1 is 0
    (6, [121, 123]),  # digits 0,2,1,1,1
    (6, [121, 201]),  # digits 0,1,1,1,2
    (1, [242]),  # digits 2,2,2,2,2
    (4, [39]),  # digits 0,1,1,1,0: the one padding digit is 0
])
def test_unpack_base3_rejects_bad_padding_digit(n, buf):
    buf = np.array(buf, np.uint8)
    with pytest.raises(ValueError):
        ref_unpack(buf, n, "base3")
    with pytest.raises(ValueError):
        codec.unpack(buf, n, "base3")


def test_unpack_base3_accepts_padding_digit_one():
    np.testing.assert_array_equal(codec.unpack(np.array([121, 120], np.uint8), 6, "base3"),
                                  [0, 0, 0, 0, 0, -1])
    np.testing.assert_array_equal(codec.unpack(np.array([120], np.uint8), 4, "base3"),
                                  [-1, 0, 0, 0])


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("delta", [-1, 1, 5])
def test_unpack_rejects_wrong_buffer_length(scheme, delta):
    n = 37
    good = ref_pack(_random_ternary(n, 4), scheme)
    if delta < 0:
        bad = good[:delta]
    else:  # extra bytes that would be valid (all-zero trits) on their own
        bad = np.concatenate([good, np.full(delta, 121 if scheme == "base3" else 0, np.uint8)])
    with pytest.raises(ValueError):
        codec.unpack(bad, n, scheme)


# ---------------------------------------------------------------------------------------
# jnp variants under jit.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("n", [1, 5, 37, 40, 1001])
def test_pack_jnp_and_unpack_jnp_under_jit_match_numpy(scheme, n):
    t = _random_ternary(n, seed=50 + n)
    pack_j = jax.jit(codec.pack_jnp, static_argnames=("scheme",))
    unpack_j = jax.jit(codec.unpack_jnp, static_argnames=("n", "scheme"))
    buf = pack_j(jnp.asarray(t), scheme=scheme)
    assert buf.dtype == jnp.uint8
    assert buf.shape == (codec.packed_size(n, scheme),)
    np.testing.assert_array_equal(np.asarray(buf), ref_pack(t, scheme))
    np.testing.assert_array_equal(np.asarray(buf), codec.pack(t, scheme))
    back = unpack_j(buf, n=n, scheme=scheme)
    assert back.dtype == jnp.int8
    assert back.shape == (n,)
    np.testing.assert_array_equal(np.asarray(back), t)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_pack_jnp_vmaps_over_workers(scheme):
    ts = np.stack([_random_ternary(37, seed=60 + k) for k in range(4)])
    bufs = jax.jit(jax.vmap(lambda t: codec.pack_jnp(t, scheme)))(jnp.asarray(ts))
    for k in range(4):
        np.testing.assert_array_equal(np.asarray(bufs[k]), ref_pack(ts[k], scheme))
    back = jax.jit(jax.vmap(lambda b: codec.unpack_jnp(b, 37, scheme)))(bufs)
    np.testing.assert_array_equal(np.asarray(back), ts)


# ---------------------------------------------------------------------------------------
# Frames.
# ---------------------------------------------------------------------------------------

HEADER_FMT = "<4sBBBBIIQQI"
ELEM = {0: 4, 1: 8, 4: 1}  # F32, F64, U8


def ref_payload_len(scheme, count):
    if scheme in ELEM:
        return ELEM[scheme] * count
    return -(-count // 4) if scheme == 2 else -(-count // 5)


def ref_frame(kind, epoch, sender, scheme, count, payload, *, magic=b"FEDF", version=1,
              reserved=0, payload_len=None, crc=None):
    """A frame built by hand with struct and zlib; every field can be set (with a good CRC)."""
    plen = len(payload) if payload_len is None else payload_len
    head = struct.pack("<4sBBBBIIQQ", magic, version, int(kind), int(scheme), reserved, epoch,
                       sender, count, plen)
    assert len(head) == 32
    c = zlib.crc32(head + payload) if crc is None else crc
    return head + struct.pack("<I", c) + payload


def test_header_constants_and_enums():
    assert codec.HEADER_SIZE == 36 == struct.calcsize(HEADER_FMT)
    assert issubclass(codec.Kind, enum.IntEnum)
    assert issubclass(codec.Payload, enum.IntEnum)
    assert {k.name: int(k) for k in codec.Kind} == {
        "MODEL_DOWN": 1, "COST": 2, "COMMAND": 3, "MODEL_UP": 4, "TERNARY": 5}
    assert {p.name: int(p) for p in codec.Payload} == {
        "F32": 0, "F64": 1, "TERN_2BIT": 2, "TERN_BASE3": 3, "U8": 4}
    assert codec.Frame._fields == ("kind", "epoch", "sender", "scheme", "count", "payload")
    assert issubclass(codec.FrameError, ValueError)


@pytest.mark.parametrize("kind,scheme,count,payload", [
    (codec.Kind.MODEL_DOWN, codec.Payload.F32, 3, np.arange(3, dtype=np.float32).tobytes()),
    (codec.Kind.COST, codec.Payload.F64, 1, struct.pack("<d", 0.125)),
    (codec.Kind.COMMAND, codec.Payload.U8, 1, b"\x02"),
    (codec.Kind.MODEL_UP, codec.Payload.F32, 2, np.float32([1.5, -2.0]).tobytes()),
    (codec.Kind.TERNARY, codec.Payload.TERN_2BIT, 5, bytes([0x4D, 0x03])),
    (codec.Kind.TERNARY, codec.Payload.TERN_BASE3, 6, bytes([113, 120])),
])
def test_encode_frame_header_layout(kind, scheme, count, payload):
    buf = codec.encode_frame(kind, 9137, 4242, scheme, count, payload)
    assert isinstance(buf, bytes)
    assert buf == ref_frame(kind, 9137, 4242, scheme, count, payload)
    magic, version, k, s, reserved, epoch, sender, cnt, plen, crc = struct.unpack(
        HEADER_FMT, buf[:36])
    assert (magic, version, k, s, reserved) == (b"FEDF", 1, int(kind), int(scheme), 0)
    assert (epoch, sender, cnt, plen) == (9137, 4242, count, len(payload))
    assert plen == ref_payload_len(int(scheme), count)
    assert crc == zlib.crc32(buf[:32] + payload)
    assert buf[36:] == payload
    frame = codec.decode_frame(buf)
    assert frame == (kind, 9137, 4242, scheme, count, payload)
    assert isinstance(frame.payload, bytes)


def test_encode_frame_accepts_numpy_payload():
    arr = np.linspace(-1, 1, 7).astype(np.float32)
    buf = codec.encode_frame(codec.Kind.MODEL_UP, 2, 1, codec.Payload.F32, 7, arr)
    assert buf == ref_frame(codec.Kind.MODEL_UP, 2, 1, codec.Payload.F32, 7, arr.tobytes())


def test_frame_header_fields_at_their_limits():
    buf = codec.encode_frame(codec.Kind.COST, 2**32 - 1, 2**32 - 1, codec.Payload.F64, 1,
                             struct.pack("<d", 1.0))
    frame = codec.decode_frame(buf)
    assert frame.epoch == 2**32 - 1
    assert frame.sender == 2**32 - 1


@pytest.mark.parametrize("scheme,count,plen", [
    (codec.Payload.F32, 3, 11),
    (codec.Payload.F32, 3, 13),
    (codec.Payload.F64, 2, 8),
    (codec.Payload.U8, 4, 5),
    (codec.Payload.TERN_2BIT, 5, 1),
    (codec.Payload.TERN_2BIT, 5, 3),
    (codec.Payload.TERN_BASE3, 6, 1),
    (codec.Payload.TERN_BASE3, 5, 2),
])
def test_encode_frame_rejects_payload_inconsistent_with_count(scheme, count, plen):
    with pytest.raises(ValueError):
        codec.encode_frame(codec.Kind.MODEL_UP, 1, 1, scheme, count, bytes(plen))


def _valid_ternary_frame():
    # 7 trits in 2bit -> 2 payload bytes, 38 bytes in all.
    t = np.array([1, -1, 0, 1, -1, -1, 0], np.int8)
    return ref_frame(codec.Kind.TERNARY, 3, 2, codec.Payload.TERN_2BIT, 7, ref_pack(t, "2bit")
                     .tobytes()), t


def test_decode_frame_accepts_valid_reference_frame():
    buf, t = _valid_ternary_frame()
    frame = codec.decode_frame(buf, expected_kind=codec.Kind.TERNARY, expected_epoch=3,
                               expected_sender=2)
    assert frame.kind == codec.Kind.TERNARY
    assert (frame.epoch, frame.sender, frame.count) == (3, 2, 7)
    assert frame.scheme == codec.Payload.TERN_2BIT
    assert frame.payload == ref_pack(t, "2bit").tobytes()


def test_every_single_bit_flip_is_rejected():
    buf, _ = _valid_ternary_frame()
    assert len(buf) == 38
    codec.decode_frame(buf)  # the unflipped frame is fine
    for i in range(len(buf) * 8):
        bad = bytearray(buf)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(codec.FrameError):
            codec.decode_frame(bytes(bad))


def _crc_ok_frames():
    """Frames whose CRC is right but a header field is wrong."""
    pay = np.ones(3, np.float32).tobytes()
    f32 = codec.Payload.F32
    up = codec.Kind.MODEL_UP
    return {
        "wrong magic": ref_frame(up, 5, 1, f32, 3, pay, magic=b"FEDG"),
        "zero magic": ref_frame(up, 5, 1, f32, 3, pay, magic=b"\0\0\0\0"),
        "version 0": ref_frame(up, 5, 1, f32, 3, pay, version=0),
        "version 2": ref_frame(up, 5, 1, f32, 3, pay, version=2),
        "kind 0": ref_frame(0, 5, 1, f32, 3, pay),
        "kind 6": ref_frame(6, 5, 1, f32, 3, pay),
        "kind 255": ref_frame(255, 5, 1, f32, 3, pay),
        "scheme 5": ref_frame(up, 5, 1, 5, 3, pay),
        "scheme 255": ref_frame(up, 5, 1, 255, 3, pay),
        "reserved 1": ref_frame(up, 5, 1, f32, 3, pay, reserved=1),
        "reserved 255": ref_frame(up, 5, 1, f32, 3, pay, reserved=255),
        "count too small": ref_frame(up, 5, 1, f32, 2, pay),
        "count too large": ref_frame(up, 5, 1, f32, 4, pay),
        "f64 count": ref_frame(up, 5, 1, codec.Payload.F64, 3, pay),
        "2bit count": ref_frame(codec.Kind.TERNARY, 5, 1, codec.Payload.TERN_2BIT, 3, b"\0\0"),
        "base3 count": ref_frame(codec.Kind.TERNARY, 5, 1, codec.Payload.TERN_BASE3, 11,
                                 bytes([121, 121])),
        "payload_len too large": ref_frame(up, 5, 1, f32, 3, pay, payload_len=13),
        "payload_len too small": ref_frame(up, 5, 1, f32, 3, pay, payload_len=11),
        "crc": ref_frame(up, 5, 1, f32, 3, pay, crc=zlib.crc32(pay)),
    }


@pytest.mark.parametrize("case", list(_crc_ok_frames()))
def test_decode_frame_rejects_bad_header(case):
    with pytest.raises(codec.FrameError):
        codec.decode_frame(_crc_ok_frames()[case])


@pytest.mark.parametrize("reserved", [1, 0x80, 255])
def test_decode_frame_rejects_non_zero_reserved_byte(reserved):
    # The byte between scheme and epoch; with a good CRC only this check can catch it.
    buf = ref_frame(codec.Kind.TERNARY, 3, 2, codec.Payload.TERN_2BIT, 4, b"\x4d",
                    reserved=reserved)
    codec.decode_frame(ref_frame(codec.Kind.TERNARY, 3, 2, codec.Payload.TERN_2BIT, 4,
                                 b"\x4d"))  # the same frame with the byte 0 is fine
    with pytest.raises(codec.FrameError) as info:
        codec.decode_frame(buf)
    assert (info.value.sender, info.value.epoch) == (2, 3)
    assert "reserved" in info.value.reason
    assert str(reserved) in info.value.reason
    with pytest.raises(codec.FrameError):
        codec.decode_ternary(buf, 4)
    with pytest.raises(codec.FrameError):
        codec.decode_packed(buf, 4)


@pytest.mark.parametrize("cut", [0, 1, 4, 20, 32, 35])
def test_decode_frame_rejects_truncated_header(cut):
    buf, _ = _valid_ternary_frame()
    with pytest.raises(codec.FrameError) as info:
        codec.decode_frame(buf[:cut])
    assert info.value.reason
    assert str(info.value.reason) in str(info.value)


@pytest.mark.parametrize("change", ["drop 1", "drop all", "extra 1", "extra 8"])
def test_decode_frame_rejects_truncated_payload_or_extra_bytes(change):
    buf, _ = _valid_ternary_frame()
    bad = {"drop 1": buf[:-1], "drop all": buf[:36], "extra 1": buf + b"\0",
           "extra 8": buf + bytes(8)}[change]
    with pytest.raises(codec.FrameError):
        codec.decode_frame(bad)


def test_decode_frame_rejects_unexpected_kind_epoch_sender():
    buf, _ = _valid_ternary_frame()  # TERNARY, epoch 3, sender 2
    for kw in ({"expected_kind": codec.Kind.MODEL_UP}, {"expected_epoch": 4},
               {"expected_epoch": 2}, {"expected_sender": 1}, {"expected_sender": 0}):
        with pytest.raises(codec.FrameError):
            codec.decode_frame(buf, **kw)
    # the right expectations pass
    codec.decode_frame(buf, expected_kind=codec.Kind.TERNARY)
    codec.decode_frame(buf, expected_epoch=3)
    codec.decode_frame(buf, expected_sender=2)


def test_frame_error_names_sender_epoch_and_reason():
    buf = ref_frame(codec.Kind.COST, 9137, 4242, codec.Payload.F64, 1, struct.pack("<d", 2.5))
    with pytest.raises(codec.FrameError) as info:
        codec.decode_frame(buf, expected_kind=codec.Kind.TERNARY)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.sender == 4242
    assert err.epoch == 9137
    assert err.reason
    msg = str(err)
    assert "4242" in msg and "9137" in msg
    assert str(err.reason) in msg
    # A corrupt payload (CRC mismatch) still names the header's sender and epoch.
    bad = bytearray(buf)
    bad[-1] ^= 0x10
    with pytest.raises(codec.FrameError) as info:
        codec.decode_frame(bytes(bad))
    assert "4242" in str(info.value) and "9137" in str(info.value)
    assert str(info.value.reason) in str(info.value)


# ---------------------------------------------------------------------------------------
# Ternary and array frame helpers.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme,payload_kind", [("2bit", codec.Payload.TERN_2BIT),
                                                 ("base3", codec.Payload.TERN_BASE3)])
@pytest.mark.parametrize("n", [1, 5, 37, 1001])
def test_encode_ternary_round_trip(scheme, payload_kind, n):
    t = _random_ternary(n, seed=70 + n)
    buf = codec.encode_ternary(t, 6, 3, scheme)
    assert buf == ref_frame(codec.Kind.TERNARY, 6, 3, payload_kind, n,
                            ref_pack(t, scheme).tobytes())
    back = codec.decode_ternary(buf, n, expected_epoch=6, expected_sender=3)
    assert back.dtype == np.int8
    np.testing.assert_array_equal(back, t)


def test_encode_ternary_default_scheme_is_2bit():
    t = _random_ternary(37, seed=80)
    assert codec.decode_frame(codec.encode_ternary(t, 1, 1)).scheme == codec.Payload.TERN_2BIT


def test_decode_ternary_rejects_wrong_epoch_or_sender():
    buf = codec.encode_ternary(_random_ternary(37, 81), 6, 3)
    with pytest.raises(codec.FrameError):
        codec.decode_ternary(buf, 37, expected_epoch=7)
    with pytest.raises(codec.FrameError):
        codec.decode_ternary(buf, 37, expected_sender=2)


@pytest.mark.parametrize("scheme,count,payload", [
    (codec.Payload.TERN_2BIT, 4, bytes([0b10])),  # code 10
    (codec.Payload.TERN_2BIT, 5, bytes([0x00, 0b01 << 2])),  # non-zero padding
    (codec.Payload.TERN_BASE3, 5, bytes([243])),  # byte > 242
    (codec.Payload.TERN_BASE3, 6, bytes([121, 0])),  # padding digit 0
])
def test_decode_ternary_rejects_invalid_codes_as_frame_error(scheme, count, payload):
    buf = ref_frame(codec.Kind.TERNARY, 2, 1, scheme, count, payload)  # good CRC
    with pytest.raises(codec.FrameError):
        codec.decode_ternary(buf, count)


def test_decode_ternary_rejects_other_kinds():
    buf = ref_frame(codec.Kind.MODEL_UP, 2, 1, codec.Payload.U8, 2, b"\0\0")
    with pytest.raises(codec.FrameError):
        codec.decode_ternary(buf, 2)


def test_decode_ternary_rejects_count_other_than_n():
    # Beyond the letter of the spec: decode_ternary returns int8[n], so a frame of another
    # length cannot be a valid answer.
    buf = codec.encode_ternary(_random_ternary(37, 82), 1, 1)
    with pytest.raises(ValueError):
        codec.decode_ternary(buf, 36)
    with pytest.raises(ValueError):
        codec.decode_ternary(buf, 38)


@pytest.mark.parametrize("dtype,payload_kind", [(np.float32, codec.Payload.F32),
                                                (np.float64, codec.Payload.F64),
                                                (np.uint8, codec.Payload.U8)])
def test_encode_array_round_trip_is_exact(dtype, payload_kind):
    rng = np.random.default_rng(90)
    if dtype == np.uint8:
        arr = rng.integers(0, 256, 37).astype(np.uint8)
    else:
        arr = rng.normal(size=37).astype(dtype)
        arr[:4] = [np.inf, -np.inf, -0.0, np.finfo(dtype).tiny / 2]
    buf = codec.encode_array(codec.Kind.MODEL_UP, arr, 4, 2)
    assert buf == ref_frame(codec.Kind.MODEL_UP, 4, 2, payload_kind, 37,
                            arr.astype(arr.dtype.newbyteorder("<")).tobytes())
    back = codec.decode_array(buf, expected_kind=codec.Kind.MODEL_UP, expected_epoch=4,
                              expected_sender=2)
    assert back.dtype == dtype
    assert back.shape == (37,)
    np.testing.assert_array_equal(back.view(np.uint8), arr.view(np.uint8))  # bit-exact


def test_decode_array_rejects_unexpected_kind_and_corruption():
    arr = np.arange(5, dtype=np.float64)
    buf = codec.encode_array(codec.Kind.COST, arr, 1, 3)
    with pytest.raises(codec.FrameError):
        codec.decode_array(buf, expected_kind=codec.Kind.MODEL_UP)
    with pytest.raises(codec.FrameError):
        codec.decode_array(buf[:-1])
    bad = bytearray(buf)
    bad[40] ^= 1
    with pytest.raises(codec.FrameError):
        codec.decode_array(bytes(bad))


# ---------------------------------------------------------------------------------------
# Byte counts: Eq. (8) and per-message counts.
# ---------------------------------------------------------------------------------------


def test_paper_bytes_per_epoch_matches_table_3_fedf_column():
    # Table 3, N = 3: V = 1.8 MB -> 7.43 MB; V = 138.1 MB -> 569.66 MB (2 decimals).
    d1 = codec.paper_bytes_per_epoch(1_800_000, 3) / 1e6
    d2 = codec.paper_bytes_per_epoch(138_100_000, 3) / 1e6
    np.testing.assert_allclose(d1, 7.425, rtol=1e-12)  # 7.2 + 0.225
    np.testing.assert_allclose(d2, 569.6625, rtol=1e-12)  # 552.4 + 17.2625
    assert abs(d1 - 7.43) <= 0.005 + 1e-9
    assert abs(d2 - 569.66) <= 0.005 + 1e-9


@pytest.mark.parametrize("v,n,want", [
    (16.0, 1, 32.0),  # one worker, the pilot: down + up, no ternary
    (4.0, 2, 12.25),  # 4 * 3 + 4 * 1 / 16
    (160.0, 5, 1000.0),  # 160 * 6 + 160 * 4 / 16 = 960 + 40
    (1e9, 100, 107.1875e9),  # 101e9 + 99e9 / 16 = 101e9 + 6.1875e9
])
def test_paper_bytes_per_epoch_hand_values_for_other_n(v, n, want):
    # Table 3 fixes N = 3 only; these pin how D grows with N.
    np.testing.assert_allclose(codec.paper_bytes_per_epoch(v, n), want, rtol=1e-12)


def ref_epoch_bytes(m, n, scheme):
    down = n * 4 * m
    up_model = 4 * m
    up_ternary = (n - 1) * ref_packed_size(m, scheme)
    other = n * 8 + n * 1
    header = 36 * (n + n + n + 1 + (n - 1))
    return down, up_model, up_ternary, other, header, down + up_model + up_ternary + other + header


def test_epoch_bytes_hand_values():
    eb = codec.epoch_bytes(37, 3, "2bit")
    assert codec.EpochBytes._fields == ("down", "up_model", "up_ternary", "other", "header",
                                        "total")
    assert tuple(eb) == (444, 148, 20, 27, 432, 1071)
    eb = codec.epoch_bytes(37, 3, "base3")
    assert tuple(eb) == (444, 148, 16, 27, 432, 1067)
    assert tuple(codec.epoch_bytes(37, 3)) == (444, 148, 20, 27, 432, 1071)  # default 2bit


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("m", [1, 37, 40, 1001])
@pytest.mark.parametrize("n", [2, 3, 5])
def test_epoch_bytes_matches_reference(scheme, m, n):
    eb = codec.epoch_bytes(m, n, scheme)
    assert tuple(eb) == ref_epoch_bytes(m, n, scheme)
    assert eb.total == sum(eb[:5])
    assert eb.header == 4 * n * codec.HEADER_SIZE


@pytest.mark.parametrize("m", [4, 40, 1000, 4096])
@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_epoch_bytes_2bit_payloads_equal_eq_8(m, n):
    eb = codec.epoch_bytes(m, n, "2bit")
    assert eb.down + eb.up_model + eb.up_ternary == codec.paper_bytes_per_epoch(4 * m, n)


@pytest.mark.parametrize("m", [5, 37, 1000, 1001])
def test_epoch_bytes_base3_ternaries_are_smaller(m):
    n = 4
    two, three = codec.epoch_bytes(m, n, "2bit"), codec.epoch_bytes(m, n, "base3")
    assert two.up_ternary == (n - 1) * math.ceil(m / 4)
    assert three.up_ternary == (n - 1) * math.ceil(m / 5)
    if m % 20 == 0:
        assert three.up_ternary * 5 == two.up_ternary * 4  # exactly 20 % smaller
