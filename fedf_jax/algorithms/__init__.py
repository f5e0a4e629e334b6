"""The algorithms, as peers: FEDF and the baselines on the same harness.

Each module has ``make(cfg, host, placement) -> harness.Algorithm``: its ``init``,
``step`` (one epoch, pure and jittable), ``record`` and ``params``, over the data
the module lays out and places once.

- ``fedf``: the paper's protocol (Algorithms 1 and 2; Eq. 1, 3, 4, 5).
- ``fedavg``: McMahan et al., example-weighted, all workers or a sampled fraction.
- ``phong``: Phong and Phuong (weight transmission): the model visits the workers
  in turn, 2NV bytes per epoch.
- ``terngrad``: Wen et al.: synchronous SGD with stochastic ternary gradients.
- ``central``: one worker holding the union of the workers' data.
- ``admm_svm`` (``admm-svm``): a linear SVM by ADMM, data split by samples or features.
- ``hierarchy``: two levels (``--groups``) of fedf or fedavg.
- ``asynchronous``: fedf or fedavg (flat or in groups) with an asynchronous top
  (``--schedule async``).
- ``secure``: the secure sums (``--secure-sum``) the others use.
"""

from __future__ import annotations

import importlib

from fedf_jax.config import ALGORITHMS, RunConfig
from fedf_jax.harness import Algorithm, Host
from fedf_jax.layout import Placement

NAMES = {"fedf": "FEDF", "fedavg": "FedAvg", "phong": "Phong et al.", "terngrad": "TernGrad",
         "central": "Centralized training", "admm-svm": "ADMM linear SVM"}


def make(cfg: RunConfig, host: Host, placement: Placement) -> Algorithm:
    """The algorithm ``cfg.run.algorithm`` over the run's data, placed by the backend."""
    name = cfg.run.algorithm
    if name not in ALGORITHMS:
        raise ValueError(f"`algorithm` (={name!r}) must be one of {ALGORITHMS}.")
    if cfg.run.schedule == "async":  # senders at their own speeds: a wrapper
        name = "async_admm" if name == "admm-svm" else "asynchronous"
    elif name in ("fedf", "fedavg") and (cfg.run.groups > 1 or cfg.run.group_epochs > 1):
        name = "hierarchy"  # two levels: a wrapper over the algorithm
    module = importlib.import_module(f"fedf_jax.algorithms.{name.replace('-', '_')}")
    return module.make(cfg, host, placement)


__all__ = ["NAMES", "make"]
