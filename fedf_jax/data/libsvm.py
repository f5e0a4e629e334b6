"""Flat-feature data sets for the linear SVMs (``admm.py``): LIBSVM files, breast cancer,
digits odd/even. Features are f32[S, F]; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import sklearn.datasets

from fedf_jax.data import Dataset
from fedf_jax.data.digits import load_digits, stratified_split

_FILES = ("train.svm", "test.svm")


def _bad_line(path: Path) -> str | None:
    """``"FILE:LINE: reason"`` for the first line that is not LIBSVM/svmlight text, or None.

    A line is ``label [qid:Q] index:value ...`` with an optional ``# comment``; indices are
    non-negative integers, strictly increasing.
    """
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            tokens = raw.split(b"#", 1)[0].split()
            if not tokens:
                continue
            reason = None
            try:
                float(tokens[0])
            except ValueError:
                reason = f"label {tokens[0].decode(errors='replace')!r} is not a number"
            last = -1
            for token in tokens[1:]:
                if reason:
                    break
                key, sep, value = token.partition(b":")
                text = token.decode(errors="replace")
                if not sep:
                    reason = f"{text!r} is not index:value"
                    continue
                if key == b"qid":
                    continue
                try:
                    index, _ = int(key), float(value)
                except ValueError:
                    reason = f"{text!r} is not index:value with an integer index and a number"
                    continue
                if index < 0 or index <= last:
                    reason = (f"feature index {index} must be >= 0 and greater than the "
                              f"previous one ({last})")
                last = index
            if reason:
                return f"{path}:{number}: {reason}"
    return None


def _label_classes(y_train: np.ndarray, y_test: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                       int]:
    """Sorted distinct labels -> 0..C-1: {-1, +1} and {0, 1} both give 0/1, +1 being 1."""
    labels = np.unique(np.concatenate([y_train, y_test]))
    if len(labels) < 2:
        raise ValueError(f"the labels must take at least two values, got {labels.tolist()}.")
    return (np.searchsorted(labels, y_train).astype(np.int32),
            np.searchsorted(labels, y_test).astype(np.int32), len(labels))


def _standardize(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets scaled by the training set's mean and std (a constant column: std 1)."""
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (((x_train - mean) / std).astype(np.float32),
            ((x_test - mean) / std).astype(np.float32))


def load_libsvm(data_dir: str | Path, standardize: bool = False) -> Dataset:
    """``DIR/train.svm`` and ``DIR/test.svm`` in LIBSVM/svmlight text (e.g. written by
    ``sklearn.datasets.dump_svmlight_file``), read together so that both have the same
    features.

    Labels: the distinct values, sorted, become classes 0..C-1; so {-1, +1} and {0, 1}
    both give 0/1 with class 1 the positive class, and more labels give C classes.
    Feature indices are 0-based if either file has an index 0, else 1-based (scikit-learn's
    ``zero_based="auto"``): a 0-based file whose first feature is always 0 reads as 1-based.

    Args:
      data_dir: the folder with the two files.
      standardize: scale both sets by the training set's per-feature mean and std; off by
        default, the features are used as given.

    Returns:
      Dataset with x: f32[S, F] (dense), y: i32[S].

    Raises:
      ValueError: the folder or a file is missing; a line is not LIBSVM text (the message
        names the file and the line); fewer than two distinct labels.
    """
    folder = Path(data_dir)
    if not folder.is_dir():
        raise ValueError(f"libsvm: {folder} is not a folder; expected a folder with "
                         f"{' and '.join(_FILES)} (LIBSVM text).")
    paths = [folder / name for name in _FILES]
    for path in paths:
        if not path.is_file():
            raise ValueError(f"libsvm: {path} is missing; expected {' and '.join(_FILES)} "
                             f"in {folder} (LIBSVM text).")
    try:
        x_train, y_train, x_test, y_test = sklearn.datasets.load_svmlight_files(
            [str(p) for p in paths], dtype=np.float32)
    except (ValueError, UnicodeDecodeError) as err:
        for path in paths:
            where = _bad_line(path)
            if where:
                raise ValueError(f"libsvm: {where}.") from None
        detail = " ".join(str(err).split())
        raise ValueError(f"libsvm: cannot read {paths[0]} and {paths[1]}: {detail}") from None
    x_train = np.asarray(x_train.toarray(), np.float32)
    x_test = np.asarray(x_test.toarray(), np.float32)
    y_train, y_test, num_classes = _label_classes(y_train, y_test)
    if standardize:
        x_train, x_test = _standardize(x_train, x_test)
    return Dataset(x_train, y_train, x_test, y_test, num_classes=num_classes, name="libsvm")


def load_breast_cancer(test_fraction: float = 0.2, split_seed: int = 0,
                       standardize: bool = True) -> Dataset:
    """scikit-learn's bundled breast cancer set (569 x 30), with the stratified split of
    :func:`fedf_jax.data.digits.stratified_split` (455 train / 114 test at 0.2).

    Standardized by default: the raw features span four orders of magnitude (areas in the
    thousands, smoothness near 0.1), which a linear SVM and ADMM both handle badly.

    Returns:
      Dataset with x: f32[S, 30], y: i32[S] (0 malignant, 1 benign), 2 classes.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"`test_fraction` (={test_fraction}) must be in (0, 1).")
    bunch = sklearn.datasets.load_breast_cancer()
    x = bunch.data.astype(np.float32)
    y = bunch.target.astype(np.int32)
    train, test = stratified_split(y, test_fraction, split_seed)
    x_train, x_test = x[train], x[test]
    if standardize:
        x_train, x_test = _standardize(x_train, x_test)
    return Dataset(x_train, y[train], x_test, y[test], num_classes=2, name="breast-cancer")


def load_digits_oddeven(test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """The digits of :func:`fedf_jax.data.digits.load_digits` (same split), flattened, with
    binary labels: 0 for an even digit, 1 for an odd one.

    Returns:
      Dataset with x: f32[S, 64] in [0, 1], y: i32[S], 2 classes.
    """
    d = load_digits(test_fraction, split_seed)
    return Dataset(d.x_train.reshape(len(d.x_train), -1), d.y_train % 2,
                   d.x_test.reshape(len(d.x_test), -1), d.y_test % 2, num_classes=2,
                   name="digits-oddeven")
