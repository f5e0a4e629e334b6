"""A worker rank's upload and the master's reading of it: codec frames back to back.

Each worker rank sends its workers' frames in one buffer, in worker order: the
pilot's Q_{k*}^t as a ``MODEL_UP`` frame (f32), every other worker's packed ternary
as a ``TERNARY`` frame (``2bit`` or ``base3``), nothing for a worker told
``SEND_NOTHING``. The master checks every frame (kind, epoch, sender, count,
CRC32, codes); a frame that fails is dropped with its reason, and the epoch goes
on without that worker's contribution.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from fedf_jax import codec

log = logging.getLogger(__name__)

SEND_NOTHING = 255  # the command when no worker is usable (every cost non-finite)
_TERNARY_PAYLOAD = {"2bit": codec.Payload.TERN_2BIT, "base3": codec.Payload.TERN_BASE3}


def commands(n_workers: int, pilot: int) -> np.ndarray:
    """u8[N]: SEND_MODEL to the pilot, SEND_TERNARY to the others (Algorithm 1, line 5);
    SEND_NOTHING to all when no worker is usable (``pilot`` -1)."""
    cmds = np.full(n_workers, codec.Command.SEND_TERNARY, np.uint8)
    if pilot >= 0:
        cmds[pilot] = codec.Command.SEND_MODEL
    else:
        cmds[:] = SEND_NOTHING
    return cmds


def encode_frames(epoch: int, ids: Sequence[int], cmds: np.ndarray, packed: np.ndarray,
                  model_of: Callable[[int], Any], n_params: int, scheme: str,
                  alloc: Callable[[int], np.ndarray] | None = None, checksum: bool = True
                  ) -> tuple[np.ndarray, np.ndarray]:
    """A worker rank's upload: its workers' frames back to back, in one buffer.

    Args:
      epoch: t.
      ids: the rank's global worker ids.
      cmds: u8[n] their commands.
      packed: u8[n, packed_size(M)] their packed ternaries (Eq. 4/5).
      model_of: ``i -> f32[M]`` the local model Q of the rank's i-th worker; read only
        for the worker told SEND_MODEL (no other model leaves the rank).
      n_params: M.
      scheme: the ternary packing.
      alloc: ``size -> u8[size]``, the buffer to write into (``Link.upload_buffer``:
        reused across epochs, and where the link seals it from); default a new array.
      checksum: compute each frame's CRC32 (False: the field is 0; ``Link.checksum``: a
        sealed link's tag covers the frames).

    Returns:
      (buf, lengths): u8[sum(lengths)] and i64[n] (0 for a worker that sends nothing).
    """
    parts: list[tuple | None] = []
    for i, (k, c) in enumerate(zip(ids, cmds, strict=True)):
        if c == codec.Command.SEND_MODEL:
            q = np.ascontiguousarray(np.asarray(model_of(i)), np.float32).reshape(-1)
            parts.append((codec.Kind.MODEL_UP, codec.Payload.F32, q))
        elif c == codec.Command.SEND_TERNARY:
            parts.append((codec.Kind.TERNARY, _TERNARY_PAYLOAD[scheme], packed[i]))
        elif c == SEND_NOTHING:
            parts.append(None)
        else:
            raise ValueError(f"worker {k} got an unknown command byte {int(c)} at epoch {epoch}.")
    lengths = np.array([0 if p is None else codec.HEADER_SIZE + p[2].nbytes for p in parts],
                       np.int64)
    buf = (alloc or _new)(int(lengths.sum()))
    off = 0
    for k, p, length in zip(ids, parts, lengths, strict=True):
        if p is None:
            continue
        kind, payload_kind, payload = p
        head = codec.frame_header(kind, epoch, k, payload_kind, n_params, payload,
                                  checksum=checksum)
        buf[off:off + codec.HEADER_SIZE] = np.frombuffer(head, np.uint8)
        buf[off + codec.HEADER_SIZE:off + length] = payload.reshape(-1).view(np.uint8)
        off += int(length)
    return buf, lengths


def _new(size: int) -> np.ndarray:
    return np.empty(size, np.uint8)


class Upload(NamedTuple):
    """The master's reading of one epoch's frames."""

    q_pilot: np.ndarray | None  # f32[M] Q_{k*}^t, None when its frame was dropped
    packed: np.ndarray  # u8[N, packed_size(M)] ternaries; dropped rows are zero
    ok: np.ndarray  # bool[N] the worker's frame passed every check
    dropped: list[dict[str, Any]]  # {"worker": k, "reason": ...} per dropped frame


def decode_frames(buf: np.ndarray, lengths: np.ndarray, pilot: int, epoch: int,
                  n_params: int, scheme: str, packed: np.ndarray,
                  senders: Sequence[int] | None = None,
                  rejected: Mapping[int, str] | None = None, checksum: bool = True) -> Upload:
    """Checks every worker's frame (kind, epoch, sender, count, CRC32, codes).

    Args:
      buf: u8[sum(lengths)] the frames in worker order; lengths: i64[N].
      pilot: k*, -1 when no worker was usable (no frames then).
      epoch: t; n_params: M; scheme: the ternary packing.
      packed: u8[N, packed_size(M)], filled in place (reused across epochs).
      senders: the sender id each frame must carry (default 0..N-1; a group master's
        workers carry their global ids).
      rejected: worker index -> reason, frames dropped before any check (their sealed
        upload was rejected: ``Link.rejected``).
      checksum: check each frame's CRC32 (False: a sealed link's tag covered them).

    Returns:
      An Upload; a frame that fails a check is dropped with its reason (``worker``: the
      sender id expected).
    """
    senders = list(range(len(lengths))) if senders is None else list(senders)
    ends = np.cumsum(lengths)
    ok = np.zeros(len(lengths), bool)
    dropped: list[dict[str, Any]] = []
    q = None
    for k in range(len(lengths) if pilot >= 0 else 0):
        view = buf[int(ends[k] - lengths[k]):int(ends[k])]
        sender = senders[k]
        try:
            if rejected and k in rejected:
                raise codec.FrameError(rejected[k], sender, epoch)
            if k == pilot:
                q = read_frame(view, True, epoch, sender, n_params, scheme, checksum)
            else:
                packed[k] = read_frame(view, False, epoch, sender, n_params, scheme, checksum)
            ok[k] = True
        except codec.FrameError as e:
            packed[k] = 0
            dropped.append({"worker": sender, "reason": e.reason})
            log.warning("epoch %d: dropped the frame of worker %d%s: %s", epoch, sender,
                        " (the pilot; P^t = P^{t-1})" if k == pilot else "", e)
    return Upload(q, packed, ok, dropped)


def read_frame(view: np.ndarray, model: bool, epoch: int, sender: int, n_params: int,
               scheme: str, checksum: bool = True) -> np.ndarray:
    """Checks one frame: the pilot's model (``model``: f32[M], a view into ``view``) or a
    packed ternary (u8[packed_size(M)]), of ``epoch`` from ``sender``.

    Raises:
      codec.FrameError: naming the sender, the epoch and the reason.
    """
    if model:
        q = codec.decode_array(view, expected_kind=codec.Kind.MODEL_UP, expected_epoch=epoch,
                               expected_sender=sender, expected_count=n_params, copy=False,
                               checksum=checksum)
        if q.dtype != np.float32:
            raise codec.FrameError("model payload is not float32", sender, epoch)
        return q
    return codec.decode_packed(view, n_params, scheme, expected_epoch=epoch,
                               expected_sender=sender, checksum=checksum)


def check_lengths(lengths: np.ndarray, starts: np.ndarray, largest: int) -> None:
    """A frame longer than the largest legitimate one (the pilot's model) is not
    received: the announcing rank breaks the protocol, and the job ends.

    Args:
      lengths: i64[N] announced frame lengths; starts: i64[K] each rank's first worker.
    """
    for k in np.flatnonzero((lengths < 0) | (lengths > largest)):
        rank = int(np.searchsorted(starts, k, side="right") - 1)
        raise RuntimeError(f"rank {rank} announced a frame of {int(lengths[k])} bytes for "
                           f"worker {k}; the largest frame is {largest} bytes.")


__all__ = ["SEND_NOTHING", "commands", "encode_frames", "Upload", "decode_frames",
           "read_frame", "check_lengths"]
