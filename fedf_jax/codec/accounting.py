"""Byte accounting (DESIGN §2): the paper's Eq. (8) and the frames of one FEDF epoch.

Bytes are counted for every message in both directions, headers included. Eq. (8),
``D = V (N + 1) + V (N - 1) / 16``, counts P^{t-1} sent to all N workers, one pilot
upload and N - 1 ternaries; :func:`epoch_bytes` gives the same payload bytes for
``"2bit"`` when M is a multiple of 4, plus the costs, commands and headers.
"""

from __future__ import annotations

from typing import NamedTuple

from fedf_jax.codec.frames import HEADER_SIZE, Payload, payload_size
from fedf_jax.codec.packing import packed_size


def paper_bytes_per_epoch(model_bytes: float, n_workers: int) -> float:
    """Eq. (8): ``D = V (N + 1) + V (N - 1) / 16`` bytes per global epoch."""
    v, n = model_bytes, n_workers
    return v * (n + 1) + v * (n - 1) / 16


class EpochBytes(NamedTuple):
    """Bytes of one FEDF epoch by message class; ``header`` covers every frame."""

    down: int  # P^{t-1} to each of the N workers
    up_model: int  # the pilot's Q
    up_ternary: int  # N - 1 packed ternaries
    other: int  # costs (float64) and one-byte commands
    header: int  # HEADER_SIZE per frame, 4N frames
    total: int


def epoch_bytes(n_params: int, n_workers: int, scheme: str = "2bit",
                has_pilot: bool = True) -> EpochBytes:
    """Counts the frames of one FEDF epoch (DESIGN §2).

    Per epoch: P^{t-1} to each of the N workers, N costs (float64), N one-byte
    commands, then the pilot's model and N - 1 packed ternaries. With no usable
    pilot (every cost non-finite) nothing is uploaded.

    Args:
      n_params: M.
      n_workers: N.
      scheme: ternary packing.
      has_pilot: whether a pilot was chosen.

    Returns:
      EpochBytes; ``down + up_model + up_ternary`` equals Eq. (8) for ``"2bit"``
      when M is a multiple of 4 (otherwise each ternary rounds up to whole bytes).
    """
    m, n = n_params, n_workers
    n_models, n_ternaries = (1, n - 1) if has_pilot else (0, 0)
    down = n * payload_size(Payload.F32, m)
    up_model = n_models * payload_size(Payload.F32, m)
    up_ternary = n_ternaries * packed_size(m, scheme)
    other = n * payload_size(Payload.F64, 1) + n * payload_size(Payload.U8, 1)
    header = HEADER_SIZE * (3 * n + n_models + n_ternaries)
    return EpochBytes(down, up_model, up_ternary, other, header,
                      down + up_model + up_ternary + other + header)


__all__ = ["paper_bytes_per_epoch", "EpochBytes", "epoch_bytes"]
