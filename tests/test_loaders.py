"""CIFAR-10 and segmentation loaders on tiny files in the official formats; augment; metrics."""

import os
import pickle
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from fedf_jax import metrics
from fedf_jax.data import load_dataset
from fedf_jax.data.augment import augment_batch, random_crop_flip
from fedf_jax.data.cifar10 import load_cifar10
from fedf_jax.data.segmentation import load_segmentation_folder, make_synthetic_segmentation

# ---------------------------------------------------------------- CIFAR-10


def _records(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n)


class _Py2Pickler(pickle._Pickler):
    """Writes bytes and str as Python 2 str (BINSTRING), as the official batches do."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = dispatch[str] = _save_py2_str


def _write_cifar(root, fmt: str, batches: dict, py2: bool = False):
    """Writes {stem: (pixels, labels)} as cifar-10-batches-{fmt}/stem[.bin]; returns the folder."""
    d = root / f"cifar-10-batches-{fmt}"
    d.mkdir(parents=True, exist_ok=True)
    for stem, (pixels, labels) in batches.items():
        if fmt == "bin":
            records = np.concatenate([labels.astype(np.uint8)[:, None], pixels], axis=1)
            (d / f"{stem}.bin").write_bytes(records.tobytes())
        else:
            batch = {b"batch_label": f"{stem} of 5".encode(), b"labels": labels.tolist(),
                     b"data": pixels, b"filenames": [b"img%d.png" % i for i in range(len(labels))]}
            with (d / stem).open("wb") as f:
                (_Py2Pickler if py2 else pickle.Pickler)(f, protocol=2).dump(batch)
    return d


def _batches(n_train: int = 2) -> dict:
    out = {f"data_batch_{i + 1}": _records(3 + i, seed=i) for i in range(n_train)}
    return {**out, "test_batch": _records(4, seed=99)}


def _expected(pixels: np.ndarray) -> np.ndarray:
    """The NHWC image of each record, by a plain loop over the R, G, B planes."""
    out = np.zeros((len(pixels), 32, 32, 3), np.float32)
    for s in range(len(pixels)):
        for ch in range(3):
            for r in range(32):
                out[s, r, :, ch] = pixels[s, ch * 1024 + r * 32: ch * 1024 + r * 32 + 32]
    return out / 255


@pytest.mark.parametrize("fmt", ["bin", "py"])
def test_cifar10_pixels_and_labels_are_as_written(tmp_path, fmt):
    batches = _batches()
    _write_cifar(tmp_path, fmt, batches)
    ds = load_cifar10(tmp_path)
    pixels = np.concatenate([batches["data_batch_1"][0], batches["data_batch_2"][0]])
    labels = np.concatenate([batches["data_batch_1"][1], batches["data_batch_2"][1]])
    assert ds.x_train.shape == (7, 32, 32, 3) and ds.x_test.shape == (4, 32, 32, 3)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert (ds.num_classes, ds.name) == (10, "cifar10")
    np.testing.assert_allclose(ds.x_train, _expected(pixels), rtol=1e-6)
    np.testing.assert_array_equal(ds.y_train, labels)
    np.testing.assert_allclose(ds.x_test, _expected(batches["test_batch"][0]), rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, batches["test_batch"][1])


def test_cifar10_red_plane_comes_first(tmp_path):
    pixels = np.zeros((1, 3072), np.uint8)
    pixels[0, :1024], pixels[0, 2048:] = 255, 51  # red 1.0, green 0, blue 0.2
    pixels[0, 1024 + 32 * 5 + 7] = 102  # green at row 5, column 7
    _write_cifar(tmp_path, "bin", {"data_batch_1": (pixels, np.array([3])),
                                   "test_batch": (pixels, np.array([4]))})
    x = load_cifar10(tmp_path).x_train[0]
    np.testing.assert_allclose(x[0, 0], [1.0, 0.0, 0.2], rtol=1e-6)
    np.testing.assert_allclose(x[5, 7], [1.0, 0.4, 0.2], rtol=1e-6)
    assert x[5, 8, 1] == 0 and x[7, 5, 1] == 0


def test_cifar10_both_formats_and_python2_pickles_agree(tmp_path):
    batches = _batches(n_train=3)
    a = load_cifar10(_write_cifar(tmp_path / "a", "bin", batches))  # the batches folder itself
    b = load_cifar10(_write_cifar(tmp_path / "b", "py", batches))
    c = load_cifar10(_write_cifar(tmp_path / "c", "py", batches, py2=True))
    for ds in (b, c):
        for u, v in zip(a[:4], ds[:4], strict=True):
            np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("fmt, ext", [("bin", ".bin"), ("py", "")])
def test_cifar10_missing_batches_raise_naming_them(tmp_path, fmt, ext):
    batches = _batches()
    d = _write_cifar(tmp_path, fmt, {k: v for k, v in batches.items() if k != "test_batch"})
    with pytest.raises(ValueError, match=f"test_batch{ext} is missing"):
        load_cifar10(tmp_path)
    (d / f"data_batch_1{ext}").rename(d / f"test_batch{ext}")
    (d / f"data_batch_2{ext}").unlink()
    with pytest.raises(ValueError, match=f"data_batch_1{ext} is missing"):
        load_cifar10(d)
    with pytest.raises(ValueError, match="holds no CIFAR-10 batches"):
        load_cifar10(tmp_path / "empty")


def test_cifar10_truncated_binary_raises(tmp_path):
    d = _write_cifar(tmp_path, "bin", _batches())
    raw = (d / "data_batch_2.bin").read_bytes()
    (d / "data_batch_2.bin").write_bytes(raw[:-5])
    with pytest.raises(ValueError, match=r"data_batch_2\.bin has 12287 bytes.*3073"):
        load_cifar10(tmp_path)


class _Evil:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


@pytest.mark.parametrize("where", ["top", "inside"])
def test_cifar10_malicious_pickle_is_refused_and_not_run(tmp_path, where):
    d = _write_cifar(tmp_path, "py", _batches(n_train=1))
    sentinel = tmp_path / "pwned"
    evil = _Evil(sentinel)
    payload = evil if where == "top" else {b"data": evil, b"labels": [0]}
    (d / "data_batch_1").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(ValueError, match=r"refusing to unpickle .*data_batch_1 .*system.*"
                                         r"only plain dicts, lists, bytes, numbers"):
        load_cifar10(tmp_path)
    assert not sentinel.exists()


@pytest.mark.parametrize("data", [np.zeros((1, 3072), np.float32),
                                  np.zeros((1, 3072), object), np.zeros((1, 3071), np.uint8)])
def test_cifar10_python_batch_must_hold_uint8_records(tmp_path, data):
    d = _write_cifar(tmp_path, "py", _batches(n_train=1))
    (d / "data_batch_1").write_bytes(pickle.dumps({b"data": data, b"labels": [0]}, protocol=2))
    with pytest.raises(ValueError, match=r"data_batch_1 must be a pickled dict.*uint8"):
        load_cifar10(tmp_path)


def test_data_sets_that_need_a_folder_say_so():
    with pytest.raises(ValueError, match=r"`--data-dir` is required for data set 'cifar10' "
                                         r"\(a folder with cifar-10-batches-bin or "
                                         r"cifar-10-batches-py\)"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="`--data-dir` is required for data set 'segmentation'"):
        load_dataset("segmentation")


# ---------------------------------------------------------------- segmentation


def _write_pairs(root, n=5, shape=(12, 16), mode="L", mask_ext=".png", seed=0):
    """Image i: 200 where its mask is set, else 10 + i; masks alternate 0/255 and 0/1."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        m = rng.random(shape) < 0.4
        img = np.where(m, 200, 10 + i).astype(np.uint8)
        Image.fromarray(img).convert(mode).save(root / "images" / f"im{i}.png")
        Image.fromarray((m * (255 if i % 2 else 1)).astype(np.uint8)).save(
            root / "masks" / f"im{i}{mask_ext}")


def _isbi(root, pages=3, shape=(20, 20)):
    """A train-volume/train-labels stack; labels 255 (cell), 0 (membrane), 100 (-> 0)."""
    rng = np.random.default_rng(1)
    values = rng.choice(np.array([0, 100, 255], np.uint8), (pages, *shape))
    imgs = [Image.fromarray(np.where(v == 255, 220, 30).astype(np.uint8)) for v in values]
    labs = [Image.fromarray(v) for v in values]
    root.mkdir(exist_ok=True)
    imgs[0].save(root / "train-volume.tif", save_all=True, append_images=imgs[1:])
    labs[0].save(root / "train-labels.tif", save_all=True, append_images=labs[1:])
    return values


def _check_pairing(ds):
    """Every sample's mask is 1 exactly where its image is bright."""
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        np.testing.assert_array_equal(y, (x.mean(-1) > 0.5).astype(np.int32))


@pytest.mark.parametrize("mode, channels", [("L", 1), ("RGB", 3)])
def test_png_pairs_load_with_binary_masks(tmp_path, mode, channels):
    _write_pairs(tmp_path, mode=mode, mask_ext=".tif")
    ds = load_segmentation_folder(tmp_path)
    assert ds.x_train.shape == (4, 12, 16, channels) and ds.x_test.shape == (1, 12, 16, channels)
    assert ds.y_train.shape == (4, 12, 16) and ds.y_train.dtype == np.int32
    assert ds.x_train.dtype == np.float32 and 0 <= ds.x_train.min() < ds.x_train.max() <= 1
    assert (ds.num_classes, ds.name) == (2, "segmentation")
    assert set(np.unique(ds.y_train)) == {0, 1}  # 0/1 and 0/255 masks both give {0, 1}
    _check_pairing(ds)
    again = load_dataset("segmentation", str(tmp_path))
    np.testing.assert_array_equal(again.x_test, ds.x_test)
    other = load_segmentation_folder(tmp_path, split_seed=1)
    assert not np.array_equal(other.x_test, ds.x_test)


def test_isbi_tiff_stack_loads_every_page(tmp_path):
    values = _isbi(tmp_path)
    ds = load_segmentation_folder(tmp_path)
    assert ds.x_train.shape == (2, 20, 20, 1) and ds.x_test.shape == (1, 20, 20, 1)
    masks = np.concatenate([ds.y_train, ds.y_test])
    expected = (values > 127).astype(np.int32)  # 100 is membrane, 255 is cell
    assert sorted(m.tobytes() for m in masks) == sorted(m.tobytes() for m in expected)
    _check_pairing(ds)


def test_resize_and_tile(tmp_path):
    _isbi(tmp_path)
    small = load_segmentation_folder(tmp_path, size=(8, 10))
    assert small.x_train.shape == (2, 8, 10, 1) and small.y_train.shape == (2, 8, 10)
    assert set(np.unique(small.y_train)) <= {0, 1} and small.y_train.dtype == np.int32
    full = load_segmentation_folder(tmp_path)
    tiled = load_segmentation_folder(tmp_path, tile=8)  # 20 // 8 = 2: 4 tiles per page
    assert tiled.x_train.shape == (8, 8, 8, 1) and tiled.y_test.shape == (4, 8, 8)
    for t, (r, c) in enumerate([(0, 0), (0, 8), (8, 0), (8, 8)]):
        np.testing.assert_array_equal(tiled.x_train[t], full.x_train[0, r:r + 8, c:c + 8])
        np.testing.assert_array_equal(tiled.y_train[4 + t], full.y_train[1, r:r + 8, c:c + 8])
    both = load_segmentation_folder(tmp_path, size=(16, 16), tile=8)
    assert both.x_train.shape == (8, 8, 8, 1)


def test_segmentation_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        load_segmentation_folder(tmp_path / "nope")
    with pytest.raises(ValueError, match="holds no segmentation data"):
        load_segmentation_folder(tmp_path)
    _write_pairs(tmp_path / "a")
    (tmp_path / "a" / "masks" / "im3.png").unlink()
    with pytest.raises(ValueError, match=r"no mask for image .*im3\.png"):
        load_segmentation_folder(tmp_path / "a")
    Image.fromarray(np.zeros((12, 15), np.uint8)).save(tmp_path / "a" / "masks" / "im3.png")
    with pytest.raises(ValueError, match=r"mask .*im3\.png has shape \(12, 15\): expected "
                                         r"\(12, 16\)"):
        load_segmentation_folder(tmp_path / "a")
    (tmp_path / "b" / "images").mkdir(parents=True)
    (tmp_path / "b" / "masks").mkdir()
    with pytest.raises(ValueError, match=r"images holds no image files"):
        load_segmentation_folder(tmp_path / "b")
    (tmp_path / "c").mkdir()
    _isbi(tmp_path / "c")
    (tmp_path / "c" / "train-labels.tif").unlink()
    with pytest.raises(ValueError, match=r"train-labels\.tif is missing"):
        load_segmentation_folder(tmp_path / "c")


def test_synthetic_segmentation_is_deterministic_with_both_classes():
    ds = make_synthetic_segmentation(n=20, size=16, seed=3)
    assert ds.x_train.shape == (16, 16, 16, 1) and ds.y_test.shape == (4, 16, 16)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert (ds.num_classes, ds.name) == (2, "synthetic-seg")
    assert set(np.unique(ds.y_train)) == {0, 1} and 0 <= ds.x_train.min() <= ds.x_train.max() <= 1
    assert ds.x_train[ds.y_train == 1].mean() > ds.x_train[ds.y_train == 0].mean() + 0.2
    again = load_dataset("synthetic-seg", n=20, size=16, seed=3)
    for a, b in zip(ds[:4], again[:4], strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(ds.y_train, make_synthetic_segmentation(n=20, size=16).y_train)


# ---------------------------------------------------------------- augment


def _img(h=6, w=5, c=2) -> np.ndarray:
    return np.arange(1, h * w * c + 1, dtype=np.float32).reshape(h, w, c)


def _candidates(x, pad):
    """Every crop of the zero-padded image, flipped or not."""
    padded = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    h, w, _ = x.shape
    crops = [padded[dy:dy + h, dx:dx + w] for dy in range(2 * pad + 1)
             for dx in range(2 * pad + 1)]
    return crops + [c[:, ::-1] for c in crops]


@pytest.mark.parametrize("jit", [False, True])
def test_random_crop_flip_is_a_crop_of_the_padded_image(jit):
    x = _img()
    f = jax.jit(random_crop_flip, static_argnames="pad") if jit else random_crop_flip
    outs = [np.asarray(f(jax.random.key(i), x, pad=2)) for i in range(40)]
    cands = _candidates(x, 2)
    assert all(o.shape == x.shape and any(np.array_equal(o, c) for c in cands) for o in outs)
    assert len({o.tobytes() for o in outs}) > 10  # crops vary
    np.testing.assert_array_equal(outs[7], random_crop_flip(jax.random.key(7), x, pad=2))


def test_random_crop_flip_flips_about_half_the_time():
    x = _img()
    outs = [np.asarray(random_crop_flip(jax.random.key(i), x, pad=0)) for i in range(40)]
    flipped = sum(np.array_equal(o, x[:, ::-1]) for o in outs)
    assert flipped + sum(np.array_equal(o, x) for o in outs) == 40
    assert 8 <= flipped <= 32


def test_augment_batch_gives_each_image_its_own_key():
    xb = np.stack([_img()] * 6)
    key = jax.random.key(0)
    out = jax.jit(augment_batch, static_argnames="pad")(key, xb, pad=1)
    assert out.shape == xb.shape
    keys = jax.random.split(key, 6)
    for i in range(6):
        np.testing.assert_array_equal(out[i], random_crop_flip(keys[i], xb[i], pad=1))
    assert len({np.asarray(o).tobytes() for o in out}) > 1
    np.testing.assert_array_equal(out, augment_batch(key, xb, pad=1))


# ---------------------------------------------------------------- metrics

PRED = jnp.array([[1, 1], [0, 0]])
TRUE = jnp.array([[1, 0], [1, 0]])
VALID = jnp.array([[True, True], [False, True]])


@pytest.mark.parametrize("jit", [False, True])
def test_metrics_on_a_2x2_example(jit):
    acc, dice, iou = (jax.jit(f) if jit else f for f in (metrics.pixel_accuracy, metrics.dice,
                                                          metrics.iou))
    np.testing.assert_allclose(acc(PRED, TRUE), 2 / 4)
    np.testing.assert_allclose(dice(PRED, TRUE), 2 * 1 / (2 + 2))  # |P ∩ T| = 1
    np.testing.assert_allclose(iou(PRED, TRUE), 1 / 3)  # |P ∪ T| = 3
    np.testing.assert_allclose(dice(PRED, TRUE, 0), 1 / 2)
    # Without pixel (1, 0): P = {(0, 0), (0, 1)}, T = {(0, 0)}.
    np.testing.assert_allclose(acc(PRED, TRUE, VALID), 2 / 3)
    np.testing.assert_allclose(dice(PRED, TRUE, valid=VALID), 2 * 1 / (2 + 1))
    np.testing.assert_allclose(iou(PRED, TRUE, valid=VALID), 1 / 2)


def test_metrics_empty_against_empty_is_one():
    zeros, ones = jnp.zeros((3, 3), jnp.int32), jnp.ones((3, 3), jnp.int32)
    assert metrics.dice(zeros, zeros) == 1.0 and metrics.iou(zeros, zeros) == 1.0
    assert metrics.dice(zeros, ones) == 0.0 and metrics.iou(ones, zeros) == 0.0
    assert metrics.pixel_accuracy(zeros, ones, jnp.zeros((3, 3), bool)) == 1.0
