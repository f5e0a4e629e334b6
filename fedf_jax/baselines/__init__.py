"""Baselines on FEDF's harness: same data, model, PRNG streams, run log and bytes.

Each baseline module has ``make_runner(cfg, setup) -> Runner``; ``simulation.run``
drives every algorithm through the same loop and writes the same run-log lines
(DESIGN §6), so ``fedf report`` compares them directly.

- ``centralized``: one worker holding the union of the workers' data.
- ``fedavg``: McMahan et al., example-weighted, all workers or a sampled fraction.
- ``phong``: Phong and Phuong (weight transmission): the model visits the
  workers in turn, 2NV bytes per epoch.
- ``terngrad``: Wen et al.: synchronous SGD with stochastic ternary gradients.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from fedf_jax import codec


class Runner(NamedTuple):
    """An algorithm made ready to run epochs.

    Attributes:
      step: ``(state, n) -> (state, outputs)``: runs ``n`` epochs (``n <= chunk``) and
        returns one dict of host values per epoch.
      state: the state before epoch 1.
      devices: the devices it runs on (for the run-log header).
      record: ``(outputs, wall_s) -> dict``: the run-log fields of one epoch.
      params: ``state -> f32[M]`` the global model.
      chunk: the most epochs one ``step`` call runs.
      compile_s: seconds spent compiling (and running each program once, on copies)
        ahead of epoch 1, kept out of ``wall_s`` and ``modeled_s``: a deployed worker
        compiles once, before training.
    """

    step: Callable[[Any, int], tuple[Any, list[dict[str, Any]]]]
    state: Any
    devices: list[str]
    record: Callable[[dict[str, Any], float], dict[str, Any]]
    params: Callable[[Any], jax.Array]
    chunk: int = 1
    compile_s: float = 0.0


class Compiler:
    """Compiles jitted functions ahead of time for given arguments, runs each once on
    copies of them (the first execution of a program allocates and warms up), and adds
    up the seconds, so that no epoch's wall time holds a compile or a first call."""

    def __init__(self):
        self.seconds = 0.0

    def __call__(self, jitted, *args):
        t0 = time.perf_counter()
        compiled = jitted.lower(*args).compile()
        copies = jax.tree.map(lambda a: a.copy() if isinstance(a, jax.Array) else a, args)
        jax.block_until_ready(compiled(*copies))
        self.seconds += time.perf_counter() - t0
        return compiled


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


def host_outputs(out, epoch: int) -> dict[str, Any]:
    """A jitted step's small outputs, on the host, with the epoch number."""
    return {**jax.device_get(dict(out)), "epoch": epoch}
