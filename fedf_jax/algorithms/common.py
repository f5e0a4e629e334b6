"""What the algorithms share: the run-log line of an epoch, bytes, and the pieces an
algorithm gives the two-level hierarchy (:class:`Level`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedf_jax import codec, schedule
from fedf_jax.harness import Compiler, Runner


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


class Level(NamedTuple):
    """An algorithm as one level of the hierarchy (DESIGN §8): the same rule runs inside
    each group over its workers and at the top over the groups.

    Attributes:
      group_init: ``(layout, data, p0) -> group state`` (one group's, unbatched).
      group_epoch: ``(group state, data) -> (group state, outputs)``: one inner epoch over
        a group's workers, without a test pass; outputs hold ``costs`` (per position).
      reset: ``(group state, top state) -> group state``: the top's model becomes the
        group's at the start of an outer epoch.
      contribution: ``(group state, data, outputs) -> (q f32[M], cost f32[], size f32[])``:
        what the group master sends up as one worker of the top level.
      top_init: ``(p0, G) -> top state``.
      top_step: ``(top state, q f32[G, M], costs f32[G], sizes f32[G], x_test, y_test) ->
        (top state, outputs)``: the algorithm's master rule over the G groups, then the
        test metrics.
      params: ``top state -> f32[M]``, the global model.
      epoch_bytes: ``(n participants) -> codec.EpochBytes`` of one epoch at one level.
      vote: FEDF: ``(top state, q f32[G, M]) -> (packed u8[G, B], nonzero i32[G])``, each
        group master's ternary against the top's last two models (Eq. 4/5); None else.
    """

    group_init: Callable
    group_epoch: Callable
    reset: Callable
    contribution: Callable
    top_init: Callable
    top_step: Callable
    params: Callable
    epoch_bytes: Callable[[int], codec.EpochBytes]
    vote: Callable | None = None


# --- shared by the asynchronous top levels (``asynchronous``, ``async_admm``) -------------


def rows_where(mask, new, old):
    """Rows (leading axis) of ``new`` where ``mask``, else ``old``, for every leaf."""
    return jax.tree.map(lambda a, b: jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b),
                        new, old)


def clock_runner(apply: Callable, clock: schedule.Clock, compiler: Compiler) -> Callable:
    """``harness.Algorithm.runner`` of an asynchronous loop: each epoch is the clock's next
    update, applied by ``apply(state, update) -> (state, host outputs)``."""
    def runner(state0, epochs: int) -> Runner:
        del state0, epochs

        def advance(state, count):
            outs = []
            for _ in range(count):
                state, out = apply(state, clock.next())
                outs.append(out)
            return state, outs

        return Runner(advance, 1, compiler.seconds)

    return runner


def keep_versions(hist: dict[int, Any], clock: schedule.Clock) -> None:
    """Forgets the models no sender holds."""
    for old in [k for k in hist if k < clock.oldest()]:
        del hist[old]


def clock_fields(upd: schedule.Update) -> dict[str, Any]:
    """An update's asynchronous run-log fields."""
    return {"clock_s": float(upd.time), "senders": list(upd.members),
            "staleness": list(upd.staleness),
            "stale_dropped": [{"sender": k, "start": s} for k, s in upd.dropped]}


__all__ = ["epoch_record", "model_exchange_bytes", "NO_BYTES", "Level", "rows_where",
           "clock_runner", "keep_versions", "clock_fields"]
