"""The timing model of the run log (``modeled_s``, DESIGN §6).

A simulated epoch runs every worker on one machine; a deployed one runs each
worker on its own. The model charges a parallel epoch (FEDF, FedAvg, TernGrad)
with the slowest worker's compute (its share, by work, of the measured compute
time: every worker alone on hardware like the simulator's) plus the master's
link: every byte of the epoch through one link of ``bandwidth`` bytes/s and one
``latency`` per message round. A FEDF epoch has ``ROUNDS`` rounds (model down,
cost up, command down, model/ternary up). A sequential epoch (Phong et al.)
adds the workers' compute up instead: the model visits them in turn.

Defaults (``RunConfig``): 125e6 B/s (1 Gbit/s) and 1 ms per round.
"""

from __future__ import annotations

import numpy as np

ROUNDS = 4


def work_units(sizes, local_epochs, cost_pass: bool = True) -> np.ndarray:
    """Per-worker work in forward-pass units: 3 per trained sample (forward and
    backward), plus 1 per sample of FEDF's cost pass."""
    sizes = np.asarray(sizes, np.float64)
    return 3.0 * np.asarray(local_epochs, np.float64) * sizes + (sizes if cost_pass else 0.0)


def modeled_epoch_s(compute_s: float, work, bytes_total: int, bandwidth: float,
                    latency: float, active=None, rounds: int = ROUNDS) -> float:
    """Seconds one parallel epoch would take deployed: slowest worker + transfers.

    Args:
      compute_s: measured seconds of the epoch with every worker on this machine.
      work: per-worker work units (their shares of ``compute_s``).
      bytes_total: the epoch's bytes through the master's link.
      bandwidth, latency: the link.
      active: bool[N], the workers that take part this epoch (default all; the
        others' work is in ``compute_s`` but does not bound the epoch).
      rounds: message rounds of the epoch.
    """
    work = np.asarray(work, np.float64)
    busy = work if active is None else work[np.asarray(active, bool)]
    slowest = compute_s * float(busy.max() / work.sum()) if busy.size else 0.0
    return slowest + bytes_total / bandwidth + rounds * latency


def sequential_epoch_s(compute_s: float, bytes_total: int, bandwidth: float, latency: float,
                       rounds: int) -> float:
    """Seconds one sequential epoch would take deployed: all the compute, in turn,
    plus every transfer."""
    return compute_s + bytes_total / bandwidth + rounds * latency
