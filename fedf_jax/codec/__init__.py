"""Wire formats (DESIGN §2): ternary packing, framed messages and byte accounting.

* :mod:`~fedf_jax.codec.packing`: the ``"2bit"`` and ``"base3"`` packings of a ternary
  vector, in numpy (validating, for the host) and in jnp (jittable, for the fused
  kernels of ``protocol.py``).
* :mod:`~fedf_jax.codec.frames`: the 36-byte header with its CRC32, encoding and the
  checked decoding of every message kind (host only).
* :mod:`~fedf_jax.codec.accounting`: Eq. (8) and the bytes of one epoch's frames.

Each module imports only the ones listed above it. Callers use the names re-exported
here: ``from fedf_jax import codec; codec.pack(t, "base3")``.
"""

from fedf_jax.codec.accounting import EpochBytes, epoch_bytes, paper_bytes_per_epoch
from fedf_jax.codec.frames import (
    HEADER_SIZE,
    MAGIC,
    VERSION,
    Command,
    Frame,
    FrameError,
    Kind,
    Payload,
    decode_array,
    decode_frame,
    decode_packed,
    decode_ternary,
    encode_array,
    encode_frame,
    encode_ternary,
    frame_header,
    payload_size,
)
from fedf_jax.codec.packing import _PER_BYTE as _PER_BYTE  # trits per byte, by scheme
from fedf_jax.codec.packing import (
    SCHEMES,
    bits_per_trit,
    check_packed,
    count_nonzero_jnp,
    interleave_lanes,
    pack,
    pack_jnp,
    packed_size,
    unpack,
    unpack_f32_jnp,
    unpack_jnp,
    unpack_lanes_jnp,
)

__all__ = [
    # packing
    "SCHEMES", "packed_size", "bits_per_trit", "pack", "unpack", "check_packed", "pack_jnp",
    "unpack_jnp", "unpack_lanes_jnp", "interleave_lanes", "unpack_f32_jnp",
    "count_nonzero_jnp",
    # frames
    "MAGIC", "VERSION", "HEADER_SIZE", "Kind", "Payload", "Command", "Frame", "FrameError",
    "payload_size", "frame_header", "encode_frame", "decode_frame", "encode_ternary",
    "decode_ternary", "decode_packed", "encode_array", "decode_array",
    # accounting
    "paper_bytes_per_epoch", "EpochBytes", "epoch_bytes",
]
