"""What every algorithm's record shares: the run-log line of an epoch, and bytes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedf_jax import codec


def epoch_record(out: dict[str, Any], counted: codec.EpochBytes, wall_s: float,
                 modeled_s: float, *, pilot: int = -1, goodness=None,
                 nonzero_fraction: float = math.nan, dropped: Sequence[int] = ()
                 ) -> dict[str, Any]:
    """One epoch's run-log line (DESIGN §6), for any algorithm.

    Args:
      out: host outputs with ``epoch``, ``costs``, ``test_loss``, ``test_accuracy``.
      counted: the epoch's bytes as deployed.
      wall_s: measured seconds; modeled_s: the timing model's seconds.
      pilot, goodness, nonzero_fraction, dropped: FEDF's fields (none for baselines:
        -1, NaN, NaN and empty, written as -1, nulls and []).
    """
    costs = np.atleast_1d(np.asarray(out["costs"], np.float64))
    return {
        "type": "epoch", "epoch": int(out["epoch"]), "pilot": int(pilot),
        "costs": costs,
        "goodness": np.full(costs.shape, np.nan) if goodness is None else goodness,
        "test_loss": float(out["test_loss"]), "test_accuracy": float(out["test_accuracy"]),
        "bytes_down": counted.down, "bytes_up_model": counted.up_model,
        "bytes_up_ternary": counted.up_ternary, "bytes_other": counted.other,
        "bytes_header": counted.header, "bytes_total": counted.total,
        "ternary_nonzero_fraction": float(nonzero_fraction), "dropped": list(dropped),
        "wall_s": wall_s, "modeled_s": modeled_s,
    }


def model_exchange_bytes(n_params: int, downloads: int, uploads: int) -> codec.EpochBytes:
    """Bytes of an epoch that moves whole float32 models: ``downloads`` models from the
    master, ``uploads`` to it, one framed message each."""
    v = codec.payload_size(codec.Payload.F32, n_params)
    down, up = downloads * v, uploads * v
    header = codec.HEADER_SIZE * (downloads + uploads)
    return codec.EpochBytes(down, up, 0, 0, header, down + up + header)


NO_BYTES = codec.EpochBytes(0, 0, 0, 0, 0, 0)

__all__ = ["epoch_record", "model_exchange_bytes", "NO_BYTES"]
