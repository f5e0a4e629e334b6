"""The timing model of the run log (``modeled_s``, DESIGN §6).

A simulated epoch runs every worker on one machine; a deployed one runs each
worker on its own. The model charges an epoch with the slowest worker's compute
(its share, by work, of the measured compute time: every worker alone on
hardware like the simulator's) plus the master's link: every byte of the epoch
through one link of ``bandwidth`` bytes/s and ``ROUNDS`` message rounds of
``latency`` seconds (model down, cost up, command down, model/ternary up).
"""

from __future__ import annotations

import numpy as np

ROUNDS = 4


def work_units(sizes, local_epochs) -> np.ndarray:
    """Per-worker work in forward-pass units: 3 per trained sample (forward and
    backward), 1 per sample of the cost pass."""
    sizes = np.asarray(sizes, np.float64)
    return 3.0 * np.asarray(local_epochs, np.float64) * sizes + sizes


def modeled_epoch_s(compute_s: float, work, bytes_total: int, bandwidth: float,
                    latency: float) -> float:
    """Seconds one epoch would take deployed: slowest worker + transfers."""
    work = np.asarray(work, np.float64)
    slowest = compute_s * float(work.max() / work.sum())
    return slowest + bytes_total / bandwidth + ROUNDS * latency
