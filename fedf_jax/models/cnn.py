"""A small convolutional network for small images (digits 8x8, 28x28, 32x32)."""

from __future__ import annotations

import jax
from flax import nnx


class CNN(nnx.Module):
    """Conv(16) -> ReLU -> Conv(32) -> ReLU -> AvgPool(2) -> Dense(64) -> ReLU -> Dense(C).

    Args:
      input_shape: ``(H, W, channels)``.
      num_classes: C.
      features: channels of the two 3x3 convolutions.
      hidden: width of the dense layer.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, *,
                 features: tuple[int, int] = (16, 32), hidden: int = 64, rngs: nnx.Rngs):
        if len(input_shape) != 3:
            raise ValueError(f"`input_shape` (={input_shape}) must be (H, W, channels).")
        h, w, c = input_shape
        self.conv1 = nnx.Conv(c, features[0], (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(features[0], features[1], (3, 3), rngs=rngs)
        flat = (h // 2) * (w // 2) * features[1]
        self.dense = nnx.Linear(flat, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.conv1(x))
        x = jax.nn.relu(self.conv2(x))
        x = nnx.avg_pool(x, (2, 2), strides=(2, 2))
        x = jax.nn.relu(self.dense(x.reshape(x.shape[0], -1)))
        return self.out(x)
