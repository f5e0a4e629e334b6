"""A multi-layer perceptron (the default model: 64-128-10 on digits)."""

from __future__ import annotations

import math

import jax
from flax import nnx


class MLP(nnx.Module):
    """Flatten -> [Dense(h) -> ReLU]* -> Dense(num_classes).

    Args:
      input_shape: shape of one input, e.g. ``(8, 8, 1)``.
      num_classes: C.
      hidden: widths of the hidden layers.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, *,
                 hidden: tuple[int, ...] = (128,), rngs: nnx.Rngs):
        widths = (math.prod(input_shape), *hidden)
        self.hidden = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:], strict=True)]
        )
        self.out = nnx.Linear(widths[-1], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for layer in self.hidden:
            x = jax.nn.relu(layer(x))
        return self.out(x)
