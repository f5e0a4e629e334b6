"""CIFAR-10 from a local copy of its official binary or Python batches (no download).

Both formats hold records of 3072 pixel bytes: the 32x32 red plane, then green,
then blue, each row-major. The binary batches prefix each record with its label
byte; the Python batches are pickled dicts, read here by an unpickler that builds
nothing but plain data and uint8 arrays.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from fedf_jax.data import Dataset

_PIXELS = 3 * 32 * 32
_RECORD = 1 + _PIXELS  # the binary format's label byte, then the pixels
_N_TRAIN_BATCHES = 5
_FOLDERS = {".bin": "cifar-10-batches-bin", "": "cifar-10-batches-py"}


class _Refused(pickle.UnpicklingError):
    """A pickle asked for a global outside :data:`_ALLOWED`."""


def _latin1(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` restricted to latin1: how Python 3 pickles bytes at protocol 2."""
    if encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# The reconstructor of the running numpy, whichever module the pickle names: numpy 1
# wrote numpy.core.multiarray, numpy 2 writes numpy._core.multiarray.
_RECONSTRUCT = np.zeros(0).__reduce__()[0]
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1,
}


class _PlainUnpickler(pickle.Unpickler):
    """Builds dicts, lists, bytes, numbers and plain ndarrays; refuses every other global."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise _Refused(f"global {module}.{name}")


def _read_py(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch: (u8[R, 3072] pixels, i[R] labels)."""
    try:
        with path.open("rb") as f:
            batch = _PlainUnpickler(f, encoding="bytes").load()
    except _Refused as e:
        raise ValueError(f"refusing to unpickle {path} ({e}): only plain dicts, lists, bytes, "
                         "numbers are allowed.") from e
    except Exception as e:  # truncated, not a pickle, or bad arguments to an allowed global
        raise ValueError(f"{path} is not a CIFAR-10 Python batch: {e!r}.") from e
    # Python 2 wrote the keys as str, which encoding="bytes" reads as bytes.
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = np.asarray(batch.get(b"labels", [])) if isinstance(batch, dict) else None
    if not (type(data) is np.ndarray and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == _PIXELS and labels.shape == (len(data),)
            and labels.dtype.kind in "iu"):
        raise ValueError(f"{path} must be a pickled dict with b'data': uint8[R, {_PIXELS}] and "
                         "b'labels': R ints.")
    return data, labels


def _read_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch: (u8[R, 3072] pixels, u8[R] labels)."""
    raw = np.fromfile(path, np.uint8)
    if raw.size == 0 or raw.size % _RECORD:
        raise ValueError(f"{path} has {raw.size} bytes, which is not a positive multiple of "
                         f"the CIFAR-10 record size {_RECORD} (1 label + {_PIXELS} pixels).")
    records = raw.reshape(-1, _RECORD)
    return records[:, 1:], records[:, 0]


def _find(root: Path) -> tuple[Path, str]:
    """The batches folder (``root`` itself or a child) and its file suffix."""
    for ext, folder in _FOLDERS.items():
        for d in (root / folder, root):
            names = [f"data_batch_{i}{ext}" for i in range(1, _N_TRAIN_BATCHES + 1)]
            if any((d / n).is_file() for n in [*names, f"test_batch{ext}"]):
                return d, ext
    raise ValueError(f"`data_dir` (={str(root)!r}) holds no CIFAR-10 batches: expected "
                     "cifar-10-batches-bin/ (data_batch_1.bin ... test_batch.bin) or "
                     "cifar-10-batches-py/ (data_batch_1 ... test_batch), or such a folder.")


def _load(paths: list[Path], read) -> tuple[np.ndarray, np.ndarray]:
    """The batches at ``paths``, joined: (f32[S, 32, 32, 3] in [0, 1], i32[S])."""
    parts = [read(p) for p in paths]
    for p, (_, labels) in zip(paths, parts, strict=True):
        if labels.min() < 0 or labels.max() > 9:
            raise ValueError(f"{p} has labels outside 0..9 (min {labels.min()}, "
                             f"max {labels.max()}).")
    pixels = np.concatenate([d for d, _ in parts])
    x = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # R, G, B planes -> NHWC
    y = np.concatenate([lab for _, lab in parts]).astype(np.int32)
    return (x / np.float32(255)).astype(np.float32), y


def load_cifar10(data_dir: str | Path) -> Dataset:
    """CIFAR-10 with its official train/test split (50 000 / 10 000).

    Args:
      data_dir: ``cifar-10-batches-bin`` or ``cifar-10-batches-py``, or their parent.
        Fewer than five training batches are accepted (at least ``data_batch_1``);
        ``test_batch`` is required.

    Returns:
      Dataset with x: f32[S, 32, 32, 3] in [0, 1] (pixels / 255), y: i32[S], 10 classes.

    Raises:
      ValueError: a batch is missing, malformed, or (Python format) pickles anything
        but plain data.
    """
    d, ext = _find(Path(data_dir))
    read = _read_bin if ext == ".bin" else _read_py
    train = [d / f"data_batch_{i}{ext}" for i in range(1, _N_TRAIN_BATCHES + 1)]
    train = [p for p in train if p.is_file()]
    if not train:
        raise ValueError(f"{d / f'data_batch_1{ext}'} is missing: expected 1 to "
                         f"{_N_TRAIN_BATCHES} training batches data_batch_N{ext} in {d}.")
    test = d / f"test_batch{ext}"
    if not test.is_file():
        raise ValueError(f"{test} is missing: expected the test batch next to {train[0].name}.")
    x_train, y_train = _load(train, read)
    x_test, y_test = _load([test], read)
    return Dataset(x_train, y_train, x_test, y_test, num_classes=10, name="cifar10")
