"""The 8x8 handwritten digits bundled with scikit-learn (no download)."""

from __future__ import annotations

import math

import numpy as np
import sklearn.datasets

from fedf_jax.data import Dataset
from fedf_jax.data.partition import apportion


def stratified_split(labels: np.ndarray, test_fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random train/test split that keeps the class proportions.

    The test set has ``ceil(test_fraction * S)`` samples (as scikit-learn's
    ``train_test_split``), shared over the classes by largest remainder.

    Args:
      labels: i[S] labels.
      test_fraction: in (0, 1).
      seed: seed of ``np.random.default_rng``.

    Returns:
      (train, test) sorted i64 index arrays, disjoint, covering 0..S-1.
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    n_test = apportion(math.ceil(test_fraction * len(labels)), counts)
    test = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:n]
                           for c, n in zip(classes, n_test, strict=True)])
    is_test = np.zeros(len(labels), bool)
    is_test[test] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def load_digits(test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """The digits data set with a fixed stratified split (1437 train / 360 test).

    Args:
      test_fraction: the share of samples held out for testing, in (0, 1).
      split_seed: the split's seed; the same seed gives the same split every call.

    Returns:
      Dataset with x: f32[S, 8, 8, 1] in [0, 1] (pixels / 16), y: i32[S], 10 classes.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"`test_fraction` (={test_fraction}) must be in (0, 1).")
    bunch = sklearn.datasets.load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[..., None]
    y = bunch.target.astype(np.int32)
    train, test = stratified_split(y, test_fraction, split_seed)
    return Dataset(x[train], y[train], x[test], y[test], num_classes=10, name="digits")
