"""E1's attack (b): Inverting Gradients (Geiping et al. 2020) against a worker's multi-step
local update, the attacker simulating the local steps on dummy images with signed Adam
and a total-variation prior; without the worker's recipe it tries every guess of a
stated prior and keeps its own best objective."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedf_jax import worker
from fedf_jax.privacy import views

PRIOR_EPOCHS = (1, 5)  # the attacker's prior on the local epochs ...
PRIOR_BATCHES = (1, 8, 32)  # ... and on the batch size (capped at n)


def _total_variation(x: jax.Array) -> jax.Array:
    """Mean absolute difference of neighbouring pixels, x: f32[n, H, W, C]."""
    return (jnp.mean(jnp.abs(x[:, 1:] - x[:, :-1])) + jnp.mean(jnp.abs(x[:, :, 1:]
                                                                       - x[:, :, :-1])))


@functools.partial(jax.jit, static_argnames=("model", "steps", "batch", "iters"))
def _optimise(model, p_start, delta_obs, labels, x0, lr, tv, steps: int, batch: int,
              iters: int):
    """Signed Adam on the dummy images; returns the images and the final objective."""
    n = x0.shape[0]
    rows = jnp.arange(batch)
    n_batches = -(-n // batch)

    def simulate(x):
        def step(p, s):
            pos = (s % n_batches) * batch + rows
            valid = pos < n
            idx = jnp.minimum(pos, n - 1)

            def loss(params):
                ce = worker.cross_entropy(model.apply(params, x[idx]), labels[idx])
                return jnp.sum(ce * valid) / jnp.maximum(valid.sum(), 1)

            return p - lr * jax.grad(loss)(p), None

        p, _ = jax.lax.scan(step, p_start, jnp.arange(steps))
        return p - p_start

    def objective(x):
        d = simulate(x)
        cos = jnp.dot(d, delta_obs) / (jnp.linalg.norm(d) * jnp.linalg.norm(delta_obs) + 1e-20)
        return 1.0 - cos + tv * _total_variation(x)

    sched = optax.piecewise_constant_schedule(
        0.1, {int(iters * f): 0.1 for f in (3 / 8, 5 / 8, 7 / 8)})
    tx = optax.adam(sched)

    def it(carry, _):
        x, state = carry
        value, g = jax.value_and_grad(objective)(x)
        upd, state = tx.update(jnp.sign(g), state)
        return (jnp.clip(x + upd, 0.0, 1.0), state), value

    (x, _), values = jax.lax.scan(it, (x0, tx.init(x0)), None, length=iters)
    return x, values[-1]


def optimisation_inversion(model, p_start: np.ndarray, delta: np.ndarray, labels: np.ndarray,
                           image_shape: tuple[int, ...], spec: worker.WorkerSpec, iters: int,
                           key: jax.Array, tv: float = 1e-2) -> tuple[np.ndarray, float]:
    """(b): Inverting Gradients against a multi-step local update, for one guess of the
    worker's local hyper-parameters.

    Args:
      model: the attacked model.
      p_start: f32[M] P^{t-1}, where the worker's training started.
      delta: f32[M] the observed update Q - P^{t-1}.
      labels: i32[n] the labels to reconstruct (inferred or known).
      image_shape: one image's shape.
      spec: the attacker's guess of the worker's learning rate, batch size, local epochs.
      iters: optimisation steps.
      key: the dummy images' initial draw.
      tv: the weight of total variation.

    Returns:
      (f32[n, *image_shape] in [0, 1], the final objective: 1 - cosine + tv TV).
    """
    n = len(labels)
    batch = min(spec.batch_size, n)
    steps = spec.local_epochs * -(-n // batch)
    x0 = jax.random.uniform(key, (n, *image_shape), jnp.float32)
    x, value = _optimise(model, jnp.asarray(p_start), jnp.asarray(delta),
                         jnp.asarray(labels, jnp.int32), x0, jnp.float32(spec.lr),
                         jnp.float32(tv), steps=steps, batch=batch, iters=iters)
    return np.asarray(x), float(value)


def prior_guesses(n: int) -> list[worker.WorkerSpec]:
    """The attacker's guesses for a worker of n samples: every (E, B) of the prior with B
    capped at n (equal caps are one guess), at the public learning-rate range's
    geometric mean."""
    lr = float(np.sqrt(views.LR_RANGE[0] * views.LR_RANGE[1]))
    cells = dict.fromkeys((e, min(b, n)) for e in PRIOR_EPOCHS for b in PRIOR_BATCHES)
    return [worker.WorkerSpec(lr=lr, batch_size=b, local_epochs=e) for e, b in cells]


def guessed_inversion(model, p_start: np.ndarray, delta: np.ndarray, labels: np.ndarray,
                      image_shape: tuple[int, ...], iters: int, key: jax.Array
                      ) -> np.ndarray:
    """(b) without the worker's hyper-parameters: :func:`optimisation_inversion` for
    every guess of :func:`prior_guesses`, keeping the reconstruction whose final
    objective is lowest (the attacker's own criterion)."""
    best, best_value = None, np.inf
    for i, spec in enumerate(prior_guesses(len(labels))):
        x, value = optimisation_inversion(model, p_start, delta, labels, image_shape, spec,
                                          iters, jax.random.fold_in(key, i))
        if value < best_value:
            best, best_value = x, value
    return best


__all__ = ["PRIOR_EPOCHS", "PRIOR_BATCHES", "optimisation_inversion", "prior_guesses",
           "guessed_inversion"]
