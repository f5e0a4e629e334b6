"""Splitting a training set over N workers, and stacking the parts for vmap.

Host-side numpy, run once per run. Every random choice comes from
``np.random.default_rng(seed)``, never the global numpy RNG, so a partition is a
function of its arguments.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

PARTITIONS = ("iid", "sizes", "dirichlet-sizes", "label-dirichlet")


class WorkerData(NamedTuple):
    """Every worker's data, padded to the largest worker (numpy arrays).

    Attributes:
      x: f32[N, S_max, ...] samples; rows past ``sizes[k]`` are zeros.
      y: i32[N, S_max] labels; rows past ``sizes[k]`` are 0.
      sizes: i32[N] S_k, the number of real rows of worker k.
    """

    x: np.ndarray
    y: np.ndarray
    sizes: np.ndarray


def apportion(total: int, weights: npt.ArrayLike) -> np.ndarray:
    """Integer counts proportional to ``weights`` that sum to ``total`` exactly.

    Largest-remainder rounding: floors first, then one more to the largest
    remainders (ties to the lowest index).

    Args:
      total: the sum of the counts, >= 0.
      weights: f[N] non-negative weights, not all zero.

    Returns:
      i64[N] counts.
    """
    w = np.asarray(weights, np.float64)
    quotas = total * w / w.sum()
    counts = np.floor(quotas).astype(np.int64)
    extra = np.argsort(counts - quotas, kind="stable")[: total - counts.sum()]
    counts[extra] += 1
    return counts


def _check(labels: np.ndarray, n_workers: int, scheme: str, sizes, alpha: float,
           min_size: int) -> None:
    """Raises ValueError naming the first bad argument of :func:`partition`."""
    if labels.ndim != 1:
        raise ValueError(f"`labels` must be 1-D, got shape {labels.shape}.")
    if scheme not in PARTITIONS:
        raise ValueError(f"`scheme` (={scheme!r}) must be one of {PARTITIONS}.")
    if n_workers < 1:
        raise ValueError(f"`n_workers` (={n_workers}) must be >= 1.")
    if min_size < 1:
        raise ValueError(f"`min_size` (={min_size}) must be >= 1.")
    if n_workers * min_size > len(labels):
        raise ValueError(f"`n_workers` (={n_workers}) * `min_size` (={min_size}) must be <= "
                         f"the number of samples (={len(labels)}).")
    if scheme == "sizes":
        if sizes is None or len(sizes) != n_workers:
            raise ValueError(f"`sizes` (={sizes}) must give one size per worker "
                             f"(`n_workers`={n_workers}).")
        if min(sizes) < min_size:
            raise ValueError(f"`sizes` (={list(sizes)}) must all be >= `min_size` "
                             f"(={min_size}).")
        if sum(sizes) > len(labels):
            raise ValueError(f"`sizes` sum to {sum(sizes)}, more than the number of samples "
                             f"(={len(labels)}).")
    if scheme in ("dirichlet-sizes", "label-dirichlet") and not (
            math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"`alpha` (={alpha}) must be finite and > 0.")


def _split(perm: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """Consecutive chunks of ``perm`` with the given counts (the tail unused)."""
    return np.split(perm[: counts.sum()], np.cumsum(counts)[:-1])


def _label_dirichlet(labels: np.ndarray, n_workers: int, alpha: float, min_size: int,
                     rng: np.random.Generator) -> list[np.ndarray]:
    """Label skew of Hsu et al. 2019: class c split over workers by p_c ~ Dir(alpha)."""
    chunks: list[list[np.ndarray]] = [[] for _ in range(n_workers)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        p = rng.dirichlet(np.full(n_workers, alpha))
        for k, part in enumerate(_split(idx, apportion(len(idx), p))):
            chunks[k].append(part)
    parts = [np.concatenate(ch) for ch in chunks]
    # Hsu et al. redraw until every worker is big enough, which may never end for a
    # small alpha; instead the largest worker gives up the tail of its last class.
    lens = np.array([len(p) for p in parts])
    moved = 0
    while lens.min() < min_size:
        k, j = int(lens.argmin()), int(lens.argmax())
        n = min(min_size - lens[k], lens[j] - min_size)
        parts[k] = np.concatenate([parts[k], parts[j][-n:]])
        parts[j] = parts[j][:-n]
        lens[k] += n
        lens[j] -= n
        moved += n
    if moved:
        log.debug("label-dirichlet: moved %d samples to reach min_size=%d", moved, min_size)
    return [rng.permutation(p) for p in parts]


def partition(labels: npt.ArrayLike, n_workers: int, scheme: str = "iid", *, seed: int = 0,
              sizes: Sequence[int] | None = None, alpha: float = 0.5,
              min_size: int = 1) -> list[np.ndarray]:
    """Splits a training set over workers: disjoint, shuffled index arrays.

    Schemes (:data:`PARTITIONS`):
      - ``"iid"``: a random equal split; sizes differ by at most 1.
      - ``"sizes"``: IID with the given ``sizes``; samples past their sum are unused.
      - ``"dirichlet-sizes"``: IID with sizes ~ Dirichlet(alpha * 1_N) of the total.
        Each worker first gets ``min_size``; the rest is split by the proportions.
      - ``"label-dirichlet"``: label skew (Hsu et al. 2019): each class is split by
        its own proportions ~ Dirichlet(alpha * 1_N); then workers below ``min_size``
        are filled from the largest worker.

    Args:
      labels: i[S] training labels (only their number matters except for label skew).
      n_workers: N >= 1.
      scheme: one of :data:`PARTITIONS`.
      seed: seed of ``np.random.default_rng``; same seed, same partition.
      sizes: N sizes, each >= ``min_size``, for ``scheme="sizes"``.
      alpha: Dirichlet concentration (> 0); small is skewed, large is near IID.
      min_size: the fewest samples any worker gets.

    Returns:
      N arrays i64[S_k] of indices into ``labels``, disjoint, in random order.

    Raises:
      ValueError: a bad argument, named with its value.
    """
    labels = np.asarray(labels)
    _check(labels, n_workers, scheme, sizes, alpha, min_size)
    rng = np.random.default_rng(seed)
    n = len(labels)
    if scheme == "label-dirichlet":
        parts = _label_dirichlet(labels, n_workers, alpha, min_size, rng)
    else:
        if scheme == "iid":
            counts = apportion(n, np.ones(n_workers))
        elif scheme == "sizes":
            counts = np.asarray(sizes, np.int64)
        else:  # "dirichlet-sizes"
            p = rng.dirichlet(np.full(n_workers, alpha))
            counts = min_size + apportion(n - n_workers * min_size, p)
        parts = _split(rng.permutation(n), counts)
    return [p.astype(np.int64) for p in parts]


def stack_workers(x: npt.ArrayLike, y: npt.ArrayLike,
                  parts: Sequence[npt.ArrayLike]) -> WorkerData:
    """Gathers each worker's samples and pads them to the largest worker.

    Args:
      x: f[S, ...] training samples.
      y: i[S] training labels.
      parts: N index arrays into ``x`` (from :func:`partition`).

    Returns:
      WorkerData with x: f32[N, S_max, ...], y: i32[N, S_max], sizes: i32[N]; the
      padding rows are zeros, to be masked with ``sizes``.
    """
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    if len(x) != len(y):
        raise ValueError(f"`x` has {len(x)} samples but `y` has {len(y)}.")
    if len(parts) < 1:
        raise ValueError("`parts` must hold at least one worker's indices.")
    sizes = np.array([len(p) for p in parts], np.int32)
    mask = np.arange(sizes.max()) < sizes[:, None]
    idx = np.zeros(mask.shape, np.int64)
    idx[mask] = np.concatenate([np.asarray(p, np.int64) for p in parts])
    xs, ys = x[idx], y[idx]
    xs[~mask] = 0
    ys[~mask] = 0
    return WorkerData(xs, ys, sizes)


def sample_workers(x: npt.ArrayLike, y: npt.ArrayLike, n_workers: int,
                   samples_per_worker: int, seed: int = 0) -> WorkerData:
    """Many simulated workers drawn from one small training set.

    Each worker draws ``samples_per_worker`` samples without replacement; workers
    draw independently, so they overlap (e.g. 10 000 workers on 1437 samples).
    Worker k's draw uses ``default_rng([seed, k])``: it does not depend on N.

    Args:
      x: f[S, ...] training samples.
      y: i[S] training labels.
      n_workers: N >= 1.
      samples_per_worker: S_k for every worker, in 1..S.
      seed: the root seed.

    Returns:
      WorkerData with x: f32[N, S_k, ...], y: i32[N, S_k], sizes: i32[N] (no padding).
    """
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    if len(x) != len(y):
        raise ValueError(f"`x` has {len(x)} samples but `y` has {len(y)}.")
    if n_workers < 1:
        raise ValueError(f"`n_workers` (={n_workers}) must be >= 1.")
    if not 1 <= samples_per_worker <= len(x):
        raise ValueError(f"`samples_per_worker` (={samples_per_worker}) must be in "
                         f"1..{len(x)} (the number of samples).")
    idx = np.stack([np.random.default_rng([seed, k]).choice(len(x), samples_per_worker,
                                                            replace=False)
                    for k in range(n_workers)])
    return WorkerData(x[idx], y[idx], np.full(n_workers, samples_per_worker, np.int32))
