"""``fedf simulate``'s library side: one run on this machine, every worker simulated.

Loads the run's data and model once (``harness.load``), lets the algorithm lay its
data out on the configured backend's placement once, compiles its epoch ahead of
time and drives it with the harness's one epoch loop, writing the run log and
``final_model.npy``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedf_jax import algorithms, backends, harness, runlog
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
    logfile = runlog.RunLog(Path(out_dir) / "run.jsonl", head) if out_dir else None
    watch = harness.Watch(host.dataset.num_classes)
    t0 = time.perf_counter()
    try:
        state, records = harness.drive(runner, state, alg.record, first=1,
                                       last=cfg.run.epochs, logfile=logfile,
                                       on_epoch=on_epoch, watch=watch)
        return harness.finish(cfg, out_dir, records, np.asarray(alg.params(state)),
                              alg.num_params, time.perf_counter() - t0,
                              runner.compile_s, watch, logfile)
    finally:
        if logfile:
            logfile.close()


__all__ = ["run"]
