"""Flat-feature loaders: LIBSVM files, breast-cancer, digits-oddeven (data/libsvm.py)."""

import numpy as np
import pytest
from sklearn.datasets import dump_svmlight_file

from fedf_jax.data import DATASETS, load_dataset
from fedf_jax.data.libsvm import load_libsvm


def write(folder, x_train, y_train, x_test, y_test):
    dump_svmlight_file(x_train, y_train, str(folder / "train.svm"))
    dump_svmlight_file(x_test, y_test, str(folder / "test.svm"))


def features(rng, rows, cols):
    x = rng.normal(size=(rows, cols)).astype(np.float32)
    x[rng.random((rows, cols)) < 0.4] = 0.0  # sparse entries are left out of the file
    return x


@pytest.mark.parametrize("labels", [(-1, 1), (0, 1)])
def test_round_trip_binary(tmp_path, labels):
    rng = np.random.default_rng(0)
    x, xt = features(rng, 20, 5), features(rng, 7, 5)
    x[:, -1] = 0.0  # the last feature absent from train: test decides the width
    xt[0, -1] = 2.5
    y, yt = rng.choice(labels, 20), rng.choice(labels, 7)
    y[:2], yt[:1] = labels  # both labels present
    write(tmp_path, x, y, xt, yt)
    d = load_libsvm(tmp_path)
    assert d.num_classes == 2 and d.name == "libsvm"
    assert d.x_train.dtype == np.float32 and d.x_train.shape == (20, 5)
    assert d.x_test.shape == (7, 5) and d.y_train.dtype == np.int32
    np.testing.assert_allclose(d.x_train, x, rtol=1e-6)
    np.testing.assert_allclose(d.x_test, xt, rtol=1e-6)
    np.testing.assert_array_equal(d.y_train, (y == 1).astype(np.int32))  # +1 is class 1
    np.testing.assert_array_equal(d.y_test, (yt == 1).astype(np.int32))


def test_multiclass_and_standardize(tmp_path):
    rng = np.random.default_rng(1)
    x, xt = 3.0 + 5.0 * features(rng, 30, 4), features(rng, 9, 4)
    x[:, 0] += 1.0  # no constant column
    y, yt = rng.choice([2, 5, 7], 30), rng.choice([2, 5, 7], 9)
    y[:3] = [2, 5, 7]
    write(tmp_path, x, y, xt, yt)
    d = load_libsvm(tmp_path)
    assert d.num_classes == 3
    np.testing.assert_array_equal(d.y_train, np.searchsorted([2, 5, 7], y))
    np.testing.assert_allclose(d.x_train, x, rtol=1e-6)  # used as given by default
    s = load_dataset("libsvm", str(tmp_path), standardize=True)
    np.testing.assert_allclose(s.x_train.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(s.x_train.std(0), 1.0, rtol=1e-4)
    np.testing.assert_allclose(s.x_test, (xt - x.mean(0)) / x.std(0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("line, reason", [
    ("1 1:0.5 x:2\n", "'x:2' is not index:value"),
    ("abc 1:0.5\n", "label 'abc' is not a number"),
    ("1 1:0.5 3\n", "'3' is not index:value"),
    ("1 3:1 2:1\n", "feature index 2 must be >= 0 and greater than the previous one (3)"),
])
def test_bad_line_names_file_and_line(tmp_path, line, reason):
    rng = np.random.default_rng(2)
    write(tmp_path, features(rng, 6, 3), np.array([0, 1] * 3), features(rng, 3, 3),
          np.array([0, 1, 0]))
    test = tmp_path / "test.svm"
    lines = test.read_text().splitlines(keepends=True)
    lines.insert(2, line)  # becomes line 3
    test.write_text("".join(lines))
    with pytest.raises(ValueError) as err:
        load_libsvm(tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert f"{test}:3: {reason}" in message


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(ValueError, match=r"nowhere is not a folder; expected .*train\.svm"):
        load_libsvm(tmp_path / "nowhere")
    (tmp_path / "train.svm").write_text("1 1:1\n0 2:1\n")
    with pytest.raises(ValueError, match=r"test\.svm is missing; expected train\.svm and "
                                         r"test\.svm"):
        load_libsvm(tmp_path)
    with pytest.raises(ValueError, match=r"`--data-dir` is required for data set 'libsvm'"):
        load_dataset("libsvm")


def test_one_label_is_refused(tmp_path):
    (tmp_path / "train.svm").write_text("1 1:1\n1 2:1\n")
    (tmp_path / "test.svm").write_text("1 1:3\n")
    with pytest.raises(ValueError, match=r"at least two values, got \[1\.0\]"):
        load_libsvm(tmp_path)


def test_breast_cancer_and_digits_oddeven():
    assert {"libsvm", "breast-cancer", "digits-oddeven"} <= set(DATASETS)
    bc = load_dataset("breast-cancer")
    assert bc.x_train.shape == (455, 30) and bc.x_test.shape == (114, 30)
    assert bc.x_train.dtype == np.float32 and bc.num_classes == 2
    assert set(np.unique(bc.y_train)) == {0, 1}
    np.testing.assert_allclose(bc.x_train.mean(0), 0.0, atol=1e-4)  # standardized by default
    raw = load_dataset("breast-cancer", standardize=False)
    assert raw.x_train.max() > 1000  # areas: the span that standardization removes
    np.testing.assert_array_equal(raw.y_test, bc.y_test)
    # Stratified: the class shares of train and test agree to within one sample.
    assert abs(bc.y_test.sum() - 0.2 * (bc.y_train.sum() + bc.y_test.sum())) <= 1
    de = load_dataset("digits-oddeven")
    digits = load_dataset("digits")
    assert de.x_train.shape == (1437, 64) and de.x_test.shape == (360, 64)
    assert de.num_classes == 2 and de.x_train.min() >= 0 and de.x_train.max() <= 1
    np.testing.assert_array_equal(de.y_train, digits.y_train % 2)
    np.testing.assert_array_equal(de.x_test, digits.x_test.reshape(360, 64))
