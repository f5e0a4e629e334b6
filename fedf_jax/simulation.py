"""``fedf simulate``'s library side: one run on this machine, every worker simulated.

Loads the run's data and model once (``harness.load``), lets the algorithm lay its
data out on the configured backend's placement once, compiles its epoch ahead of
time and drives it with the harness's one epoch loop, writing the run log and
``final_model.npy``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedf_jax import algorithms, backends, harness
from fedf_jax.config import RunConfig


def run(cfg: RunConfig, out_dir: str | Path | None = None, *,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        on_start: Callable[[dict[str, Any]], None] | None = None,
        host: harness.Host | None = None) -> dict[str, Any]:
    """Runs ``cfg.run.algorithm`` with every worker on this machine.

    Args:
      cfg: the run.
      out_dir: where ``run.jsonl`` and ``final_model.npy`` go (None: nowhere).
      on_epoch: called with each epoch's record (the CLI prints from it).
      on_start: called with the run-log header once the run is compiled.
      host: the run's data and model, when the caller has loaded them already.

    Returns:
      The summary (final accuracy, bytes, Eq. 8 check, times, ``diverged``), the
      records and the final global model (``params``, f32[M]).
    """
    host = host or harness.load(cfg)
    alg = algorithms.make(cfg, host, backends.placement(cfg.run.backend, cfg.run.devices))
    state = alg.init()
    runner = harness.compile_runner(alg, state, cfg.run.epochs, cfg.run.scan_epochs)
    head = harness.header(cfg, host, alg.num_params, alg.devices, runner.compile_s)
    if on_start:
        on_start(head)
    return harness.execute(cfg, runner, state, alg.record, alg.params, out_dir=out_dir,
                           head=head, num_params=alg.num_params,
                           num_classes=host.dataset.num_classes, on_epoch=on_epoch)


__all__ = ["run"]
