"""The run's PRNG streams, named in one place.

Every random choice of a run comes from one root key, ``jax.random.key(seed)``,
through ``fold_in`` with a stream number from this module (STYLE: keys by
``fold_in``, never by call order), so that a worker gets the same key under vmap,
shard_map and MPI, and no two uses share a stream.

Streams of the root key:

- ``INIT``: P^0 (the model's initialisation).
- ``TRAIN``: local training; worker k at global epoch t uses
  ``fold_in(fold_in(train, t), k)`` (:func:`worker_key`), local epoch e folds in e,
  and the augmentation of a step folds ``AUGMENT`` into the worker's key.
- ``DEFENCE``: the noise of privacy defences (worker-level DP, pilot noise).
- ``SHADOW``: the training of an attacker's shadow workers.
- ``SECURE``: secrets of the secure layers in simulation (masks, key pairs).
- ``SAMPLE``: FedAvg's choice of the workers of a round (``fold_in(sample, t)``).
- ``AUDIT``: the trials of a privacy audit.
- ``ATTACK + t``: an attacker's own randomness at epoch t (t >= 1).

Host-side randomness (data partitions, synthetic data) uses
``np.random.default_rng(seed)`` or ``default_rng([seed, k])``, never numpy's
global generator.
"""

from __future__ import annotations

import jax
from jax.typing import ArrayLike

INIT = 0
TRAIN = 1
DEFENCE = 2
SHADOW = 3
SECURE = 4
SAMPLE = 5
AUDIT = 9
ATTACK = 1000
AUGMENT = 2**31 - 1  # folded into a worker's epoch key; never a local-epoch index


def root(seed: int) -> jax.Array:
    """The run's one root key."""
    return jax.random.key(seed)


def stream(seed: int, number: int) -> jax.Array:
    """The key of one named stream of the run (``INIT``, ``TRAIN``, ...)."""
    return jax.random.fold_in(root(seed), number)


def worker_key(train_key: jax.Array, epoch: ArrayLike, worker_id: ArrayLike) -> jax.Array:
    """The key of worker ``worker_id`` at global epoch ``epoch``."""
    return jax.random.fold_in(jax.random.fold_in(train_key, epoch), worker_id)


__all__ = ["INIT", "TRAIN", "DEFENCE", "SHADOW", "SECURE", "SAMPLE", "AUDIT", "ATTACK",
           "AUGMENT", "root", "stream", "worker_key"]
