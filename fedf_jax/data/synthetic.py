"""Synthetic class-conditional images in the digits' shape, as many as a run needs.

``--data synthetic`` gives ``--workers 100000`` something to split: 8x8x1 images in
[0, 1] and 10 classes, like the bundled digits, but any number of them. Each class
has a fixed prototype (a sparse pattern of bright pixels); a sample is its class's
prototype at a random brightness, shifted by at most one pixel, plus Gaussian noise,
clipped to [0, 1]. The classes overlap enough that a model has to learn (a linear
read-out of one pixel does not do), and an MLP gets well above chance in a few
epochs.

Samples are generated in fixed blocks of :data:`BLOCK`, block ``b`` from its own
stream ``default_rng([seed, part, b])``: the data set is a function of
``(num_samples, num_test, seed)`` only, and making 2,000,000 samples holds one
output array (512 MB) plus one block.
"""

from __future__ import annotations

import numpy as np

from fedf_jax.data import Dataset

SHAPE = (8, 8, 1)
CLASSES = 10
BLOCK = 1 << 16  # samples per generated block
NOISE = 0.25  # std of the pixel noise
_TRAIN, _TEST = 0, 1  # the two parts' streams


def default_num_samples(n_workers: int) -> int:
    """Training samples when ``--num-samples`` is not given: 10 per worker, at least 2000."""
    return max(2000, 10 * int(n_workers))


def default_num_test(num_samples: int) -> int:
    """Test samples when not given: a fifth of the training set, from 200 to 10,000."""
    return int(min(10_000, max(200, num_samples // 5)))


def prototypes(seed: int = 0) -> np.ndarray:
    """The classes' prototype images: about a third of the pixels lit, at 0.5-1.

    Returns:
      f32[10, 8, 8].
    """
    rng = np.random.default_rng([seed, 2])
    lit = rng.random((CLASSES, *SHAPE[:2])) < 0.35
    return (lit * rng.uniform(0.5, 1.0, lit.shape)).astype(np.float32)


def _shifted(protos: np.ndarray) -> np.ndarray:
    """Every prototype moved by -1, 0 or +1 pixel down and right (rolled).

    Returns:
      f32[10, 3, 3, 8, 8]: [class, 1 + row shift, 1 + column shift].
    """
    return np.stack([np.stack([np.roll(protos, (dy, dx), axis=(1, 2)) for dx in (-1, 0, 1)],
                              axis=1) for dy in (-1, 0, 1)], axis=1)


def _block(shifted: np.ndarray, rng: np.random.Generator, n: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples: (f32[n, 8, 8], i32[n])."""
    y = rng.integers(0, CLASSES, n).astype(np.int32)
    shift = rng.integers(0, 3, (2, n))  # at most one pixel each way
    gain = rng.uniform(0.6, 1.2, (n, 1, 1)).astype(np.float32)
    x = shifted[y, shift[0], shift[1]] * gain
    x += NOISE * rng.standard_normal(x.shape, dtype=np.float32)
    return np.clip(x, 0.0, 1.0, out=x), y


def generate(n: int, seed: int = 0, part: int = _TRAIN) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples of one part (train or test), block by block.

    Returns:
      (f32[n, 8, 8, 1] in [0, 1], i32[n] labels in 0..9).
    """
    shifted = _shifted(prototypes(seed))
    x = np.empty((n, *SHAPE), np.float32)
    y = np.empty((n,), np.int32)
    for b, start in enumerate(range(0, n, BLOCK)):
        stop = min(n, start + BLOCK)
        xb, yb = _block(shifted, np.random.default_rng([seed, part, b]), stop - start)
        x[start:stop, ..., 0], y[start:stop] = xb, yb
    return x, y


def load_synthetic(num_samples: int = 2000, num_test: int | None = None,
                   seed: int = 0) -> Dataset:
    """The synthetic data set (``--data synthetic --num-samples N``).

    Args:
      num_samples: training samples, >= 1.
      num_test: test samples (default :func:`default_num_test`), >= 1.
      seed: the data set's seed (fixed by default, as the digits' split is: a run's
        ``--seed`` changes the partition and the initial model, not the data).

    Returns:
      Dataset with x: f32[S, 8, 8, 1] in [0, 1], y: i32[S], 10 classes.
    """
    num_test = default_num_test(num_samples) if num_test is None else num_test
    for name, value in (("num_samples", num_samples), ("num_test", num_test)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"`{name}` (={value!r}) must be an integer >= 1.")
    x, y = generate(int(num_samples), seed, _TRAIN)
    x_test, y_test = generate(int(num_test), seed, _TEST)
    return Dataset(x, y, x_test, y_test, num_classes=CLASSES, name="synthetic")


__all__ = ["SHAPE", "CLASSES", "BLOCK", "default_num_samples", "default_num_test",
           "prototypes", "generate", "load_synthetic"]
