"""Data sets and their partitioning over workers (host-side numpy).

``load_dataset(name)`` returns a :class:`Dataset`; ``partition`` and
``stack_workers`` (or ``sample_workers``) turn its training set into padded
per-worker arrays for the backends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from fedf_jax.data.partition import (
    PARTITIONS,
    WorkerData,
    partition,
    sample_workers,
    stack_workers,
)

__all__ = ["DATASETS", "PARTITIONS", "Dataset", "WorkerData", "load_dataset", "partition",
           "sample_workers", "stack_workers"]


class Dataset(NamedTuple):
    """A train/test split (numpy arrays, images NHWC).

    Attributes:
      x_train: f32[S, ...] training samples; y_train: i32[S] their labels.
      x_test: f32[S_test, ...] test samples; y_test: i32[S_test] their labels.
      num_classes: the number of classes.
      name: the data set's registry name.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one sample, e.g. (8, 8, 1)."""
        return self.x_train.shape[1:]


# Loaders import their module when called: a data set's dependencies are needed only
# when it is used, and the modules can import Dataset from here.
def _digits(data_dir: str | None, **kwargs) -> Dataset:
    del data_dir  # bundled with scikit-learn
    from fedf_jax.data.digits import load_digits

    return load_digits(**kwargs)


def _require_dir(name: str, data_dir: str | None, what: str) -> None:
    if data_dir is None:
        raise ValueError(f"`--data-dir` is required for data set {name!r} ({what}).")


def _cifar10(data_dir: str | None, **kwargs) -> Dataset:
    _require_dir("cifar10", data_dir, "a folder with cifar-10-batches-bin or cifar-10-batches-py")
    from fedf_jax.data.cifar10 import load_cifar10

    return load_cifar10(data_dir, **kwargs)


def _segmentation(data_dir: str | None, **kwargs) -> Dataset:
    _require_dir("segmentation", data_dir, "a folder with images/ and masks/, or "
                 "train-volume.tif and train-labels.tif")
    from fedf_jax.data.segmentation import load_segmentation_folder

    return load_segmentation_folder(data_dir, **kwargs)


def _synthetic_seg(data_dir: str | None, **kwargs) -> Dataset:
    del data_dir  # generated
    from fedf_jax.data.segmentation import make_synthetic_segmentation

    return make_synthetic_segmentation(**kwargs)


def _synthetic(data_dir: str | None, **kwargs) -> Dataset:
    del data_dir  # generated
    from fedf_jax.data.synthetic import load_synthetic

    return load_synthetic(**kwargs)


def _libsvm(data_dir: str | None, **kwargs) -> Dataset:
    _require_dir("libsvm", data_dir, "a folder with train.svm and test.svm, LIBSVM text")
    from fedf_jax.data.libsvm import load_libsvm

    return load_libsvm(data_dir, **kwargs)


def _breast_cancer(data_dir: str | None, **kwargs) -> Dataset:
    del data_dir  # bundled with scikit-learn
    from fedf_jax.data.libsvm import load_breast_cancer

    return load_breast_cancer(**kwargs)


def _digits_oddeven(data_dir: str | None, **kwargs) -> Dataset:
    del data_dir  # bundled with scikit-learn
    from fedf_jax.data.libsvm import load_digits_oddeven

    return load_digits_oddeven(**kwargs)


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": _digits, "cifar10": _cifar10, "segmentation": _segmentation,
    "synthetic-seg": _synthetic_seg, "synthetic": _synthetic, "libsvm": _libsvm,
    "breast-cancer": _breast_cancer, "digits-oddeven": _digits_oddeven}
DATASETS = tuple(_LOADERS)


def load_dataset(name: str = "digits", data_dir: str | None = None, **kwargs) -> Dataset:
    """Loads a data set by name.

    Args:
      name: one of :data:`DATASETS`.
      data_dir: the local directory of a data set that is not bundled.
      **kwargs: passed to the data set's loader (e.g. ``test_fraction``).

    Raises:
      ValueError: ``name`` is not a known data set.
    """
    if name not in _LOADERS:
        raise ValueError(f"`name` (={name!r}) must be one of {DATASETS}.")
    return _LOADERS[name](data_dir, **kwargs)
