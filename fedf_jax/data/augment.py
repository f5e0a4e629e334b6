"""Random crop and horizontal flip, the standard CIFAR augmentation, in pure JAX.

Written for one image and vmapped over a batch; jittable with ``pad`` static.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def random_crop_flip(key: jax.Array, x: ArrayLike, pad: int = 4) -> jax.Array:
    """Zero-pads an image by ``pad`` pixels, crops it back at random, flips it with p = 0.5.

    Args:
      key: a PRNG key; the same key gives the same crop and flip.
      x: f32[H, W, C] one image.
      pad: the padding on each side (a Python int), so shifts are in -pad..pad.

    Returns:
      f32[H, W, C] the augmented image.
    """
    x = jnp.asarray(x)
    h, w, _ = x.shape
    k_crop, k_flip = jax.random.split(key)
    dy, dx = jax.random.randint(k_crop, (2,), 0, 2 * pad + 1)
    padded = jnp.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    x = jax.lax.dynamic_slice(padded, (dy, dx, 0), x.shape)
    return jnp.where(jax.random.bernoulli(k_flip), x[:, ::-1], x)


def augment_batch(key: jax.Array, xb: ArrayLike, pad: int = 4) -> jax.Array:
    """:func:`random_crop_flip` on each image, with a key of its own.

    Args:
      key: a PRNG key, split into one key per image.
      xb: f32[B, H, W, C] a batch of images.
      pad: the padding on each side (static under jit).

    Returns:
      f32[B, H, W, C] the augmented batch.
    """
    xb = jnp.asarray(xb)
    keys = jax.random.split(key, xb.shape[0])
    return jax.vmap(functools.partial(random_crop_flip, pad=pad))(keys, xb)
