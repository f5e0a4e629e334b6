"""Host-side layout of a training set for ``admm.py``: rows or columns per worker, padded.

Numpy, run once per run. The bias column x~ = [x, 1] is appended here; padding rows,
columns and workers are zeros with a mask of 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
import numpy.typing as npt

from fedf_jax import admm
from fedf_jax.data.partition import stack_workers


def add_bias(x: npt.ArrayLike) -> np.ndarray:
    """``x~ = [x, 1]``: f32[S, F] -> f32[S, F + 1] (the bias column last)."""
    x = np.asarray(x, np.float32)
    if x.ndim != 2:
        raise ValueError(f"`x` must be 2-D (samples, features), got shape {x.shape}.")
    return np.concatenate([x, np.ones((len(x), 1), np.float32)], axis=1)


def _targets(labels: np.ndarray, num_classes: int) -> np.ndarray:
    if num_classes < 2:
        raise ValueError(f"`num_classes` (={num_classes}) must be >= 2.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in 0..{num_classes - 1}, got "
                         f"{labels.min()}..{labels.max()}.")
    return np.asarray(admm.ovr_targets(labels, num_classes))


def split_samples(x: npt.ArrayLike, labels: npt.ArrayLike, num_classes: int,
                  parts: Sequence[npt.ArrayLike], *, rows: int | None = None,
                  workers: int | None = None) -> admm.ConsensusData:
    """Worker i gets the rows ``parts[i]`` (e.g. from ``data.partition``).

    Args:
      x: f[S, F] features (no bias column); labels: i[S] in 0..num_classes-1.
      parts: N index arrays into x.
      rows: pad every worker to this many rows (default: the largest part).
      workers: pad to this many workers, the extra ones empty (default: N).

    Returns:
      :class:`admm.ConsensusData` with A f32[W, R, F + 1], y f32[W, K, R].
    """
    labels = np.asarray(labels, np.int32)
    stacked = stack_workers(add_bias(x), labels, parts)
    n, s_max = stacked.y.shape
    rows = s_max if rows is None else rows
    workers = n if workers is None else workers
    if rows < s_max:
        raise ValueError(f"`rows` (={rows}) must be >= the largest part (={s_max}).")
    if workers < n:
        raise ValueError(f"`workers` (={workers}) must be >= the number of parts (={n}).")
    mask = np.zeros((workers, rows), np.float32)
    mask[:n, :s_max] = np.arange(s_max) < stacked.sizes[:, None]
    A = np.zeros((workers, rows, stacked.x.shape[-1]), np.float32)
    A[:n, :s_max] = stacked.x
    lab = np.zeros((workers, rows), np.int32)
    lab[:n, :s_max] = stacked.y
    y = np.stack([_targets(row, num_classes) for row in lab]) * mask[:, None, :]
    return admm.ConsensusData(A, y.astype(np.float32), mask,
                              (np.arange(workers) < n).astype(np.float32))


def split_groups(x: npt.ArrayLike, labels: npt.ArrayLike, num_classes: int,
                 parts: Sequence[npt.ArrayLike], groups: Sequence[Sequence[int]]
                 ) -> admm.ConsensusData:
    """Workers ``groups[g]`` (indices into ``parts``) form group g; every group is padded
    to the same workers and rows. Returns ConsensusData with a leading axis G."""
    if not groups or any(len(g) == 0 for g in groups):
        raise ValueError(f"`groups` (={groups}) must be non-empty lists of worker indices.")
    flat = sorted(i for g in groups for i in g)
    if flat != list(range(len(parts))):
        raise ValueError(f"`groups` (={groups}) must cover the {len(parts)} workers once each.")
    rows = max(len(p) for p in parts)
    width = max(len(g) for g in groups)
    per = [split_samples(x, labels, num_classes, [parts[i] for i in g], rows=rows,
                         workers=width) for g in groups]
    return admm.ConsensusData(*(np.stack(a) for a in zip(*per, strict=True)))


def split_features(x: npt.ArrayLike, labels: npt.ArrayLike, num_classes: int,
                   blocks: Sequence[int], *, width: int | None = None) -> admm.SharingData:
    """Worker j gets ``blocks[j]`` consecutive columns of x~ (the bias column goes to the
    last block), padded to ``width`` columns (default: the widest block).

    Raises:
      ValueError: the blocks do not add up to F + 1 columns, or a block is empty (e.g.
        more workers than columns).
    """
    a = add_bias(x)
    p = a.shape[1]
    if len(blocks) > p:
        raise ValueError(f"{len(blocks)} workers but only {p} columns (with the bias): "
                         "the features split needs at most one worker per column.")
    if min(blocks) < 1 or sum(blocks) != p:
        raise ValueError(f"`blocks` (={list(blocks)}) must be >= 1 each and add up to "
                         f"{p} (the columns of x with the bias column).")
    width = max(blocks) if width is None else width
    if width < max(blocks):
        raise ValueError(f"`width` (={width}) must be >= the widest block (={max(blocks)}).")
    A = np.zeros((len(blocks), len(a), width), np.float32)
    cols = np.zeros((len(blocks), width), np.float32)
    start = 0
    for j, b in enumerate(blocks):
        A[j, :, :b] = a[:, start:start + b]
        cols[j, :b] = 1
        start += b
    eigval, eigvec = jax.vmap(admm.sharing_factor)(A, cols)
    return admm.SharingData(A, cols, _targets(np.asarray(labels, np.int32), num_classes),
                            np.asarray(eigval), np.asarray(eigvec))


def sharing_weights(state: admm.SharingState, data: admm.SharingData) -> np.ndarray:
    """The model f32[K, F + 1] from the blocks x_j: concatenated, padding columns dropped."""
    x, keep = np.asarray(state.x), np.asarray(data.cols, bool)
    return np.concatenate([x[j][:, keep[j]] for j in range(len(x))], axis=1)


def even_blocks(columns: int, n_workers: int) -> list[int]:
    """Block sizes that differ by at most one (the first blocks the larger)."""
    if not 1 <= n_workers <= columns:
        raise ValueError(f"`n_workers` (={n_workers}) must be in 1..{columns} (the columns).")
    return [columns // n_workers + (j < columns % n_workers) for j in range(n_workers)]
