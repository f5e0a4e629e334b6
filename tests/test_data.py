"""Data sets and partitions: shapes, fixed splits, disjoint parts, skew, errors."""

import numpy as np
import pytest
import sklearn.datasets

from fedf_jax.data import (
    PARTITIONS,
    Dataset,
    load_dataset,
    partition,
    sample_workers,
    stack_workers,
)
from fedf_jax.data.digits import load_digits


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits()


def _kwargs(scheme: str) -> dict:
    return {"sizes": [100, 250, 7, 600, 30]} if scheme == "sizes" else {}


def _classes_per_worker(labels, parts) -> float:
    return float(np.mean([len(np.unique(labels[p])) for p in parts]))


def test_digits_shapes_dtypes_and_range(digits):
    assert digits.x_train.shape == (1437, 8, 8, 1) and digits.x_test.shape == (360, 8, 8, 1)
    assert digits.y_train.shape == (1437,) and digits.y_test.shape == (360,)
    assert digits.x_train.dtype == np.float32 and digits.y_train.dtype == np.int32
    assert digits.input_shape == (8, 8, 1)
    assert (digits.num_classes, digits.name) == (10, "digits")
    x = np.concatenate([digits.x_train, digits.x_test])
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(digits.y_train)) == set(range(10))


def test_digits_split_is_fixed(digits):
    again = load_digits()
    for a, b in zip(digits[:4], again[:4], strict=True):
        np.testing.assert_array_equal(a, b)
    other = load_digits(split_seed=1)
    assert not np.array_equal(digits.y_test, other.y_test)


def test_digits_train_and_test_split_the_whole_set(digits):
    bunch = sklearn.datasets.load_digits()
    full = np.column_stack([bunch.images.reshape(-1, 64) / 16, bunch.target])
    ours = np.column_stack([
        np.concatenate([digits.x_train, digits.x_test]).reshape(-1, 64),
        np.concatenate([digits.y_train, digits.y_test])])
    np.testing.assert_allclose(full[np.lexsort(full.T)], ours[np.lexsort(ours.T)], rtol=1e-6)


def test_digits_split_is_stratified(digits):
    n_test = np.bincount(digits.y_test, minlength=10)
    n_all = n_test + np.bincount(digits.y_train, minlength=10)
    np.testing.assert_allclose(n_test / n_all, 0.2, atol=0.01)


def test_load_dataset_digits_is_load_digits(digits):
    ds = load_dataset("digits", test_fraction=0.2)
    np.testing.assert_array_equal(ds.x_train, digits.x_train)
    np.testing.assert_array_equal(ds.y_test, digits.y_test)


def test_load_dataset_unknown_name_lists_known():
    with pytest.raises(ValueError, match=r"`name` \(='mnist'\).*'digits'"):
        load_dataset("mnist")


@pytest.mark.parametrize("scheme", PARTITIONS)
def test_partition_is_disjoint_and_covers(digits, scheme):
    y = digits.y_train
    parts = partition(y, 5, scheme, **_kwargs(scheme))
    assert len(parts) == 5 and all(p.dtype == np.int64 for p in parts)
    used = np.concatenate(parts)
    assert len(np.unique(used)) == len(used)
    expected = sum(_kwargs(scheme)["sizes"]) if scheme == "sizes" else len(y)
    assert len(used) == expected and used.min() >= 0 and used.max() < len(y)


@pytest.mark.parametrize("scheme", PARTITIONS)
def test_partition_is_deterministic_per_seed(digits, scheme):
    y = digits.y_train
    a, b, c = (partition(y, 5, scheme, seed=s, **_kwargs(scheme)) for s in (3, 3, 4))
    for pa, pb in zip(a, b, strict=True):
        np.testing.assert_array_equal(pa, pb)
    assert any(not np.array_equal(pa, pc) for pa, pc in zip(a, c, strict=True))


def test_partition_parts_are_shuffled(digits):
    (p,) = partition(digits.y_train, 1)
    assert not np.all(np.diff(p) > 0)


@pytest.mark.parametrize("scheme", ["dirichlet-sizes", "label-dirichlet"])
def test_partition_min_size_is_respected(digits, scheme):
    parts = partition(digits.y_train, 50, scheme, alpha=0.05, min_size=20)
    assert min(len(p) for p in parts) >= 20
    assert sum(len(p) for p in parts) == len(digits.y_train)


def test_iid_sizes_differ_by_at_most_one(digits):
    lens = [len(p) for p in partition(digits.y_train, 7)]
    assert max(lens) - min(lens) <= 1 and sum(lens) == 1437


def test_sizes_are_exact(digits):
    sizes = [100, 250, 7, 600, 30]
    assert [len(p) for p in partition(digits.y_train, 5, "sizes", sizes=sizes)] == sizes


def test_dirichlet_sizes_small_alpha_are_unequal(digits):
    lens = np.array([len(p) for p in partition(digits.y_train, 10, "dirichlet-sizes",
                                               alpha=0.1)])
    assert lens.sum() == 1437 and lens.max() > 3 * lens.min()


def test_label_dirichlet_small_alpha_is_skewed(digits):
    y = digits.y_train
    assert _classes_per_worker(y, partition(y, 10, "iid")) == 10
    skewed = [_classes_per_worker(y, partition(y, 10, "label-dirichlet", alpha=0.1, seed=s))
              for s in range(3)]
    assert max(skewed) < 7


def test_label_dirichlet_huge_alpha_is_near_iid(digits):
    y = digits.y_train
    parts = partition(y, 10, "label-dirichlet", alpha=1000.0)
    counts = np.stack([np.bincount(y[p], minlength=10) for p in parts])
    assert np.abs(counts - np.bincount(y) / 10).max() <= 3


@pytest.mark.parametrize("kwargs, match", [
    ({"n_workers": 0}, r"`n_workers` \(=0\) must be >= 1"),
    ({"n_workers": 100, "min_size": 20}, r"`n_workers` \(=100\) \* `min_size` \(=20\)"),
    ({"scheme": "shards"}, r"`scheme` \(='shards'\).*'label-dirichlet'"),
    ({"scheme": "sizes"}, r"`sizes` \(=None\)"),
    ({"scheme": "sizes", "sizes": [10, 10]}, r"`sizes` \(=\[10, 10\]\).*one size per worker"),
    ({"scheme": "sizes", "sizes": [10, 0, 10]}, r"`sizes` \(=\[10, 0, 10\]\).*>= `min_size`"),
    ({"scheme": "sizes", "sizes": [1000, 1000, 1]}, r"`sizes` sum to 2001"),
    ({"scheme": "label-dirichlet", "alpha": 0.0}, r"`alpha` \(=0.0\) must be finite and > 0"),
    ({"scheme": "dirichlet-sizes", "alpha": -1.0}, r"`alpha` \(=-1.0\)"),
    ({"min_size": 0}, r"`min_size` \(=0\) must be >= 1"),
])
def test_partition_bad_arguments_raise_naming_the_value(digits, kwargs, match):
    kwargs = {"n_workers": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        partition(digits.y_train, **kwargs)


def test_stack_workers_pads_with_zeros(digits):
    x, y = digits.x_train, digits.y_train
    parts = partition(y, 3, "sizes", sizes=[5, 9, 2], seed=1)
    wd = stack_workers(x, y, parts)
    assert wd.x.shape == (3, 9, 8, 8, 1) and wd.y.shape == (3, 9)
    assert wd.x.dtype == np.float32 and wd.y.dtype == np.int32 and wd.sizes.dtype == np.int32
    np.testing.assert_array_equal(wd.sizes, [5, 9, 2])
    for k, p in enumerate(parts):
        np.testing.assert_array_equal(wd.x[k, : len(p)], x[p])
        np.testing.assert_array_equal(wd.y[k, : len(p)], y[p])
        assert not wd.x[k, len(p):].any() and not wd.y[k, len(p):].any()


def test_sample_workers_shapes_and_determinism(digits):
    x, y = digits.x_train, digits.y_train
    wd = sample_workers(x, y, 200, 16, seed=5)
    assert wd.x.shape == (200, 16, 8, 8, 1) and wd.y.shape == (200, 16)
    assert wd.x.dtype == np.float32 and wd.y.dtype == np.int32
    np.testing.assert_array_equal(wd.sizes, np.full(200, 16))
    again = sample_workers(x, y, 200, 16, seed=5)
    np.testing.assert_array_equal(wd.x, again.x)
    np.testing.assert_array_equal(wd.y, again.y)
    assert not np.array_equal(wd.x, sample_workers(x, y, 200, 16, seed=6).x)
    # No sample twice within a worker; workers draw apart from each other.
    ids = sample_workers(np.arange(len(y))[:, None], y, 200, 16, seed=5).x[..., 0]
    assert all(len(np.unique(row)) == 16 for row in ids)
    assert len({tuple(row) for row in ids}) == 200
    # Worker k's draw does not depend on the number of workers.
    np.testing.assert_array_equal(sample_workers(x, y, 3, 16, seed=5).x, wd.x[:3])


def test_sample_workers_bad_size_raises(digits):
    with pytest.raises(ValueError, match=r"`samples_per_worker` \(=2000\)"):
        sample_workers(digits.x_train, digits.y_train, 4, 2000)


def test_synthetic_has_the_digits_shape_and_is_seeded():
    from fedf_jax.data import synthetic

    ds = load_dataset("synthetic", num_samples=3000)
    assert ds.x_train.shape == (3000, 8, 8, 1) and ds.y_train.shape == (3000,)
    assert ds.x_test.shape == (synthetic.default_num_test(3000), 8, 8, 1) == (600, 8, 8, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert (ds.num_classes, ds.name, ds.input_shape) == (10, "synthetic", (8, 8, 1))
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert set(np.unique(ds.y_train)) == set(range(10))
    again = load_dataset("synthetic", num_samples=3000)
    for a, b in zip(ds[:4], again[:4], strict=True):
        np.testing.assert_array_equal(a, b)
    other = synthetic.load_synthetic(3000, seed=1)
    assert not np.array_equal(other.x_train, ds.x_train)
    assert not np.array_equal(ds.x_test[:100], ds.x_train[:100])  # a stream of its own


def test_synthetic_spans_blocks_and_stays_learnable():
    from sklearn.linear_model import LogisticRegression

    from fedf_jax.data import synthetic

    n = synthetic.BLOCK + 1000  # two blocks, each from its own stream
    x, y = synthetic.generate(n, seed=0)
    assert x.shape == (n, 8, 8, 1) and np.isfinite(x).all()
    counts = np.bincount(y, minlength=10)
    assert counts.min() > 0.08 * n and counts.max() < 0.12 * n  # balanced classes
    ds = synthetic.load_synthetic(4000, num_test=1000)
    flat = ds.x_train.reshape(len(ds.x_train), -1)
    acc = LogisticRegression(max_iter=300).fit(flat, ds.y_train).score(
        ds.x_test.reshape(len(ds.x_test), -1), ds.y_test)
    assert 0.5 < acc < 0.97  # well above chance (0.1), not trivially separable


def test_synthetic_sample_count_defaults_from_the_workers_and_needs_synthetic():
    from fedf_jax import config, harness

    assert harness.data_options(config.make(data="synthetic", workers=5)) == {
        "num_samples": 2000}
    assert harness.data_options(config.make(data="synthetic", workers=300)) == {
        "num_samples": 3000}
    assert harness.data_options(config.make(data="synthetic", num_samples=777)) == {
        "num_samples": 777}
    with pytest.raises(ValueError, match=r"`num_samples` \(=500\) applies to "
                                         r"`data='synthetic'` only \(got data 'digits'\)"):
        config.make(data="digits", num_samples=500)
    with pytest.raises(ValueError, match=r"`num_samples` \(=0\)"):
        load_dataset("synthetic", num_samples=0)
