"""The worker side of one global epoch (Algorithm 2): local training, cost, message.

Everything here is written for ONE worker and vmapped over workers by the
backends. A worker's private hyper-parameters (:class:`WorkerSpec`) travel as
arrays (:class:`HParams`), so workers with different learning rates, batch sizes,
local epoch counts and data sizes share one compiled program: every worker runs
the same number of scan steps with a batch of the largest size, and a mask makes
the surplus steps no-ops and the surplus batch rows weightless. Only the optimizer
kind changes the program; backends vmap one group per kind.

PRNG: worker ``k`` at global epoch ``t`` uses ``keys.worker_key(train_key, t, k)``
and local epoch ``e`` folds in ``e``; the shuffle draws one number per sample
index, so a worker's order does not depend on how much padding its group has
(this relies on ``jax_threefry_partitionable``, on by default since JAX 0.5).
Same keys under vmap, shard_map and MPI.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from fedf_jax import codec, keys, protocol
from fedf_jax.config import OPTIMIZERS, WorkerSpec
from fedf_jax.data.augment import augment_batch
from fedf_jax.models import Model

UNROLL = 2  # two local steps per loop iteration: less loop overhead on small workers


class HParams(NamedTuple):
    """A worker's spec as arrays (one row per worker once stacked)."""

    lr: jax.Array  # f32[]
    batch_size: jax.Array  # i32[]
    local_epochs: jax.Array  # i32[]
    momentum: jax.Array  # f32[]


def stack_hparams(specs) -> HParams:
    """[WorkerSpec] -> HParams of arrays with a leading worker axis."""
    return HParams(
        lr=np.array([s.lr for s in specs], np.float32),
        batch_size=np.array([s.batch_size for s in specs], np.int32),
        local_epochs=np.array([s.local_epochs for s in specs], np.int32),
        momentum=np.array([s.momentum for s in specs], np.float32),
    )


class Shapes(NamedTuple):
    """The static sizes of a group's compiled program (from the largest worker)."""

    steps: int  # scan length: max_k local_epochs_k * ceil(S_k / b_k)
    batch: int  # max_k b_k
    local_epochs: int  # max_k local_epochs_k
    eval_chunk: int  # rows per chunk of the cost pass
    augment: bool = False  # random crop and flip of each training image


def group_shapes(specs, sizes, eval_chunk: int = 2048, augment: bool = False) -> Shapes:
    """Static scan and batch sizes covering every worker of a group."""
    steps = max(s.local_epochs * -(-int(n) // s.batch_size) for s, n in zip(specs, sizes,
                                                                            strict=True))
    return Shapes(steps=steps, batch=max(s.batch_size for s in specs),
                  local_epochs=max(s.local_epochs for s in specs),
                  eval_chunk=max(1, min(eval_chunk, int(max(sizes)))), augment=augment)


def make_optimizer(kind: str, hp: HParams) -> optax.GradientTransformation:
    """The optax optimizer of a kind, with this worker's (traced) hyper-parameters."""
    if kind == "sgd":
        return optax.sgd(hp.lr)
    if kind == "momentum":
        return optax.sgd(hp.lr, momentum=hp.momentum)
    if kind == "adam":
        return optax.adam(hp.lr)
    raise ValueError(f"`optimizer` (={kind!r}) must be one of {OPTIMIZERS}.")


def init_opt_state(kind: str, hp: HParams, p: jax.Array):
    """The optimizer state of one worker for parameters shaped like ``p``."""
    return make_optimizer(kind, hp).init(p)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy, averaged over pixels for segmentation.

    f32[B, C], i32[B] -> f32[B]; or f32[B, H, W, C], i32[B, H, W] -> f32[B].
    """
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return ce.reshape(ce.shape[0], -1).mean(axis=1)


def hits(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example accuracy (pixel accuracy for segmentation). -> f32[B]."""
    right = jnp.argmax(logits, -1) == labels
    return right.reshape(right.shape[0], -1).mean(axis=1)


def shuffle(key: jax.Array, size: jax.Array, capacity: int) -> jax.Array:
    """A random order of the first ``size`` of ``capacity`` rows, padding rows last.

    With JAX's partitionable threefry (the default), the i-th uniform of a draw
    depends on ``key`` and ``i`` only, so a worker's order is the same whatever
    ``capacity`` its group pads to.
    """
    u = jax.random.uniform(key, (capacity,))
    return jnp.argsort(jnp.where(jnp.arange(capacity) < size, u, 2.0))


def local_train(model: Model, kind: str, shapes: Shapes, p: jax.Array, opt_state,
                x: jax.Array, y: jax.Array, size: jax.Array, hp: HParams,
                key: jax.Array):
    """Trains one worker from P^{t-1} with its private spec (Algorithm 2, line 1).

    Args:
      model: the model.
      kind: optimizer kind (static).
      shapes: static step and batch sizes of the group.
      p: f32[M] the global model P^{t-1}.
      opt_state: the worker's optimizer state (kept across global epochs).
      x: f32[S_max, ...] the worker's padded local set; y: i32[S_max]; size: S_k.
      hp: the worker's hyper-parameters.
      key: the worker's key for this global epoch.

    Returns:
      (q, opt_state): f32[M] the local model Q_k^t and the new optimizer state.
    """
    tx = make_optimizer(kind, hp)
    capacity = x.shape[0]
    perms = jax.vmap(lambda e: shuffle(jax.random.fold_in(key, e), size, capacity))(
        jnp.arange(shapes.local_epochs))
    n_batches = jnp.maximum((size + hp.batch_size - 1) // hp.batch_size, 1)
    total = hp.local_epochs * n_batches * (size > 0)  # an empty (padding) worker: no steps
    rows = jnp.arange(shapes.batch)

    aug_key = jax.random.fold_in(key, keys.AUGMENT)

    def loss_fn(params, xb, yb, valid):
        logits, p_stats = model.train_apply(params, xb, valid)
        weight = valid / jnp.maximum(valid.sum(), 1)  # the mean over the real batch rows
        return jnp.sum(weight * cross_entropy(logits, yb)), p_stats

    def step(carry, s):
        params, state = carry
        e, j = s // n_batches, s % n_batches
        pos = j * hp.batch_size + rows
        valid = (rows < hp.batch_size) & (pos < size)
        idx = perms[jnp.minimum(e, shapes.local_epochs - 1), jnp.minimum(pos, capacity - 1)]
        xb = x[idx]
        if shapes.augment:
            xb = augment_batch(jax.random.fold_in(aug_key, s), xb)
        grads, p_stats = jax.grad(loss_fn, has_aux=True)(params, xb, y[idx], valid)
        updates, new_state = tx.update(grads, state, params)
        new_params = params + updates
        if model.has_stats:  # statistics take no gradient step: the batch's running averages
            new_params = jnp.concatenate([new_params[:model.num_trainable],
                                          p_stats[model.num_trainable:]])
        active = s < total  # surplus steps of a worker with less work are no-ops
        params = jnp.where(active, new_params, params)
        state = jax.tree.map(lambda a, b: jnp.where(active, a, b), new_state, state)
        return (params, state), None

    (q, opt_state), _ = jax.lax.scan(step, (p, opt_state), jnp.arange(shapes.steps),
                                     unroll=UNROLL)
    return q, opt_state


def evaluate(model: Model, p: jax.Array, x: jax.Array, y: jax.Array, size: ArrayLike,
             chunk: int):
    """Mean loss and accuracy (pixel accuracy for masks) of ``p`` over the first
    ``size`` rows, in chunks.

    Args:
      p: f32[M]; x: f32[S, ...]; y: i32[S]; size: rows that count; chunk: rows per
        forward pass (static).

    Returns:
      (loss, accuracy): f32[], f32[].
    """
    n = x.shape[0]
    chunks = -(-n // chunk)
    pad = chunks * chunk - n
    def split(a):
        return jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)).reshape(chunks, chunk,
                                                                        *a.shape[1:])

    xs, ys = split(x), split(y)
    mask = (jnp.arange(chunks * chunk) < size).reshape(chunks, chunk)

    def body(acc, inputs):
        xb, yb, mb = inputs
        logits = model.apply(p, xb)
        loss = jnp.sum(mb * cross_entropy(logits, yb))
        right = jnp.sum(mb * hits(logits, yb))
        return (acc[0] + loss, acc[1] + right), None

    zero = (jnp.float32(0), jnp.float32(0))
    if chunks == 1:  # one forward pass: no loop to compile
        (loss, right), _ = body(zero, (xs[0], ys[0], mask[0]))
    else:
        (loss, right), _ = jax.lax.scan(body, zero, (xs, ys, mask))
    count = jnp.maximum(jnp.asarray(size, jnp.float32), 1.0)
    return loss / count, right / count


def all_finite(v: jax.Array) -> jax.Array:
    """Whether every entry of ``v`` (f32[..., M]) is finite, over its last axis.

    ``v . 0`` is NaN exactly when an entry is not finite (``inf * 0`` and ``NaN * 0``
    are NaN): one vectorized read of ``v`` (a matrix-vector product once vmapped),
    where ``jnp.all(jnp.isfinite(v))`` reduces booleans: 0.08 against 0.35 ms for
    100 workers' models of the digits MLP on CPU (sims/bench/README.md).
    """
    v = jnp.asarray(v)
    return jnp.isfinite(v @ jnp.zeros(v.shape[-1], v.dtype))


def train_and_cost(model: Model, kind: str, shapes: Shapes, p: jax.Array, opt_state,
                   x: jax.Array, y: jax.Array, size: jax.Array, hp: HParams,
                   key: jax.Array):
    """Local training then the cost pass C_k^t (mean training loss of Q_k^t).

    A worker whose model or cost is not finite reports a NaN cost (so it is never
    the pilot and its ternary is dropped) and restarts its optimizer next epoch.

    Returns:
      (q, cost, opt_state): f32[M], f32[], the optimizer state.
    """
    q, new_state = local_train(model, kind, shapes, p, opt_state, x, y, size, hp, key)
    cost, _ = evaluate(model, q, x, y, size, shapes.eval_chunk)
    ok = jnp.isfinite(cost) & all_finite(q)
    cost = jnp.where(ok, cost, jnp.nan)
    fresh = init_opt_state(kind, hp, p)
    new_state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_state, fresh)
    return q, cost, new_state


def ternary_message(q: jax.Array, p_prev: jax.Array, p_prev2: jax.Array, alpha: ArrayLike,
                    beta: ArrayLike, epoch: ArrayLike, scheme: str):
    """The packed ternary T_k (Eq. 4/5) and its count of non-zero trits.

    Returns:
      (packed, nonzero): u8[packed_size(M)], i32[].
    """
    packed = protocol.ternarize_pack(q, p_prev, p_prev2, alpha, beta, epoch, scheme)
    return packed, codec.count_nonzero_jnp(packed, scheme)


__all__ = ["OPTIMIZERS", "WorkerSpec", "HParams", "Shapes", "stack_hparams", "group_shapes",
           "make_optimizer", "init_opt_state", "cross_entropy", "hits", "shuffle",
           "local_train", "evaluate", "all_finite", "train_and_cost", "ternary_message"]
