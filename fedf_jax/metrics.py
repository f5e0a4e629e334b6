"""Segmentation metrics for one predicted mask against the true one (jnp, jittable).

``pred`` holds class ids (e.g. the argmax of a model's logits), not scores. The
optional ``valid`` mask drops pixels (padding, unlabelled regions) from every count.
Dice and IoU of a class absent from both masks are 1.0: nothing was missed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def _valid(true: jax.Array, valid: ArrayLike | None) -> jax.Array:
    """bool[H, W] of the pixels that count (all when ``valid`` is None)."""
    return jnp.ones(true.shape, bool) if valid is None else jnp.asarray(valid, bool)


def _overlap(pred: ArrayLike, true: ArrayLike, cls: int,
             valid: ArrayLike | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(|P ∩ T|, |P|, |T|) over valid pixels, with P, T the pixels of class ``cls``."""
    pred, true = jnp.asarray(pred), jnp.asarray(true)
    v = _valid(true, valid)
    p, t = (pred == cls) & v, (true == cls) & v
    count = lambda a: jnp.sum(a, dtype=jnp.float32)
    return count(p & t), count(p), count(t)


def pixel_accuracy(pred: ArrayLike, true: ArrayLike, valid: ArrayLike | None = None) -> jax.Array:
    """The share of valid pixels whose class is right (1.0 when none is valid).

    Args:
      pred: i[H, W] predicted class ids.
      true: i[H, W] true class ids.
      valid: bool[H, W] the pixels that count; all when None.

    Returns:
      f32[] accuracy in [0, 1].
    """
    pred, true = jnp.asarray(pred), jnp.asarray(true)
    v = _valid(true, valid)
    n = jnp.sum(v, dtype=jnp.float32)
    right = jnp.sum((pred == true) & v, dtype=jnp.float32)
    return jnp.where(n > 0, right / jnp.maximum(n, 1), 1.0)


def dice(pred: ArrayLike, true: ArrayLike, cls: int = 1,
         valid: ArrayLike | None = None) -> jax.Array:
    """Dice coefficient 2|P ∩ T| / (|P| + |T|) of class ``cls``.

    Args:
      pred: i[H, W] predicted class ids.
      true: i[H, W] true class ids.
      cls: the class scored.
      valid: bool[H, W] the pixels that count; all when None.

    Returns:
      f32[] in [0, 1]; 1.0 when the class is in neither mask.
    """
    inter, n_pred, n_true = _overlap(pred, true, cls, valid)
    total = n_pred + n_true
    return jnp.where(total > 0, 2 * inter / jnp.maximum(total, 1), 1.0)


def iou(pred: ArrayLike, true: ArrayLike, cls: int = 1,
        valid: ArrayLike | None = None) -> jax.Array:
    """Intersection over union |P ∩ T| / |P ∪ T| (Jaccard index) of class ``cls``.

    Arguments and result as :func:`dice`'s (1.0 when the class is in neither mask).
    """
    inter, n_pred, n_true = _overlap(pred, true, cls, valid)
    union = n_pred + n_true - inter
    return jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0)
