"""Flax NNX models seen as flat parameter vectors.

FEDF moves one vector P of M float32 parameters (DESIGN §1), so every model is
wrapped in a :class:`Model`: ``init(key) -> f32[M]`` and ``apply(p, x) -> logits``.
The module is split once (``nnx.split``); ``apply`` merges the graph definition
with the unravelled parameters inside the traced function, so it vmaps and jits
like any pure function. The leaf order is ``ravel_pytree``'s, fixed by the state's
sorted keys, identical on every host.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
from flax import nnx
from jax.flatten_util import ravel_pytree

from fedf_jax.models.cnn import CNN
from fedf_jax.models.mlp import MLP


class Model(NamedTuple):
    """A model as FEDF sees it.

    Attributes:
      name: registry name.
      num_params: M.
      init: ``key -> f32[M]`` a fresh P^0.
      apply: ``(p: f32[M], x: f32[B, *input_shape]) -> f32[B, C]`` logits.
    """

    name: str
    num_params: int
    init: Callable[[jax.Array], jax.Array]
    apply: Callable[[jax.Array, jax.Array], jax.Array]


MODELS: dict[str, type[nnx.Module]] = {"mlp": MLP, "cnn": CNN}


def make_model(name: str, input_shape: tuple[int, ...], num_classes: int, **kwargs) -> Model:
    """Builds a registered model for inputs of ``input_shape`` (no batch axis)."""
    if name not in MODELS:
        raise ValueError(f"`model` (={name!r}) must be one of {sorted(MODELS)}.")
    cls = MODELS[name]

    def build(key: jax.Array) -> nnx.Module:
        return cls(tuple(input_shape), num_classes, rngs=nnx.Rngs(params=key), **kwargs)

    graphdef, state = nnx.split(nnx.eval_shape(lambda: build(jax.random.key(0))))
    _, unravel = ravel_pytree(jax.tree.map(lambda s: jax.numpy.zeros(s.shape, s.dtype), state))
    num_params = sum(int(x.size) for x in jax.tree.leaves(state))

    def init(key: jax.Array) -> jax.Array:
        return ravel_pytree(nnx.state(build(key)))[0]

    def apply(p: jax.Array, x: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, unravel(p))(x)

    return Model(name, num_params, init, apply)


__all__ = ["Model", "MODELS", "make_model", "MLP", "CNN"]
