"""Flax NNX models seen as flat parameter vectors.

FEDF moves one vector P of M float32 values (DESIGN §1), so every model is
wrapped in a :class:`Model`: ``init(key) -> f32[M]``, ``apply(p, x) -> logits``
(inference) and ``train_apply(p, x, mask) -> (logits, p')`` (a training forward
pass; ``p'`` carries updated batch-norm statistics). The module is split once
(``nnx.split``); the functions merge the graph definition with the unravelled
vector inside the traced function, so they vmap and jit like any pure function.

Layout of P: the trainable parameters (``nnx.Param``) first, in
``ravel_pytree``'s fixed leaf order, then everything else the module holds
(batch-norm running means and variances, ``nnx.BatchStat``). Batch statistics
are part of P like every other variable: the pilot's Q carries them, the
ternaries vote on them, and the byte counts include them. They receive no
gradient; a training step replaces them with the layer's running averages over
the real (unmasked) rows of the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.flatten_util import ravel_pytree

from fedf_jax.models.cnn import CNN
from fedf_jax.models.mlp import MLP
from fedf_jax.models.resnet import ResNet
from fedf_jax.models.unet import UNet


class Model(NamedTuple):
    """A model as FEDF sees it.

    Attributes:
      name: registry name.
      num_params: M, the length of P (trainable parameters and statistics).
      num_trainable: how many of them are trainable (the first ones).
      init: ``key -> f32[M]`` a fresh P^0.
      apply: ``(p: f32[M], x: f32[B, ...]) -> logits``, inference mode.
      train_apply: ``(p, x, mask: bool[B]) -> (logits, p')``, training mode; ``p'``
        equals ``p`` but for updated batch statistics (computed over masked-in rows).
      has_stats: whether P holds statistics (models with batch norm).
    """

    name: str
    num_params: int
    num_trainable: int
    init: Callable[[jax.Array], jax.Array]
    apply: Callable[[jax.Array, jax.Array], jax.Array]
    train_apply: Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
    has_stats: bool


# name -> (module class, default keyword arguments)
MODELS: dict[str, tuple[type[nnx.Module], dict[str, Any]]] = {
    "mlp": (MLP, {}),
    "cnn": (CNN, {}),
    "resnet32": (ResNet, {"depth": 32}),
    "unet": (UNet, {}),
}


def make_model(name: str, input_shape: tuple[int, ...], num_classes: int, **kwargs) -> Model:
    """Builds a registered model for inputs of ``input_shape`` (no batch axis).

    Args:
      name: one of :data:`MODELS`.
      input_shape: one input's shape, e.g. ``(32, 32, 3)``.
      num_classes: output classes (per pixel for segmentation models).
      **kwargs: module options over the registry's defaults (e.g. ``width=8``).
    """
    if name not in MODELS:
        raise ValueError(f"`model` (={name!r}) must be one of {sorted(MODELS)}.")
    cls, defaults = MODELS[name]
    options = {**defaults, **kwargs}

    def build(key: jax.Array) -> nnx.Module:
        return cls(tuple(input_shape), num_classes, rngs=nnx.Rngs(params=key), **options)

    abstract = nnx.eval_shape(lambda: build(jax.random.key(0)))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)

    def zeros(state):
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), state)

    _, unravel_params = ravel_pytree(zeros(params))
    _, unravel_rest = ravel_pytree(zeros(rest))
    n_train = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    n_all = n_train + sum(int(np.prod(x.shape)) for x in jax.tree.leaves(rest))
    has_stats = n_all > n_train

    def flatten(module: nnx.Module) -> jax.Array:
        _, p, r = nnx.split(module, nnx.Param, ...)
        return jnp.concatenate([ravel_pytree(p)[0], ravel_pytree(r)[0]])

    def merge(p: jax.Array) -> nnx.Module:
        return nnx.merge(graphdef, unravel_params(p[:n_train]), unravel_rest(p[n_train:]))

    def init(key: jax.Array) -> jax.Array:
        return flatten(build(key))

    def apply(p: jax.Array, x: jax.Array) -> jax.Array:
        module = merge(p)
        module.eval()
        return module(x)

    def train_apply(p: jax.Array, x: jax.Array, mask: jax.Array):
        if not has_stats:
            return merge(p)(x), p
        module = merge(p)
        module.train()
        logits = module(x, mask=mask)
        return logits, flatten(module)

    return Model(name, n_all, n_train, init, apply, train_apply, has_stats)


__all__ = ["Model", "MODELS", "make_model", "MLP", "CNN", "ResNet", "UNet"]
