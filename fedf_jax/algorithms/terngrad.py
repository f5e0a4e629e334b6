"""TernGrad (Wen et al., NeurIPS 2017) on the harness.

Synchronous data-parallel SGD: every worker holds a replica of the one model.
At each step j of an epoch, worker k computes the gradient g_k of its j-th
mini-batch (its own shuffled order, its own batch size), clips it to
``CLIP`` standard deviations (Wen et al. §3.3), and sends the stochastic ternary

    t_k = sign(g_k) * b_k,   b_k ~ Bernoulli(|g_k| / s),   s = max_k max |g_k|,

with the scaler s shared by all workers (scaler sharing: each worker sends its
max |g_k|, the master sends back the largest). The master sums the ternaries
and broadcasts the sum, so every replica applies the same update with the
unbiased gradient estimate s * mean_k t_k (SGD with the first worker's learning
rate: there is one model, so no private learning rates). A worker whose local
set is used up sits the remaining steps of the epoch out. Batch statistics of a
batch-norm model are averaged over the workers as floats.

Bytes per step, per active worker (``step_bytes``): the 2-bit ternary of the M_w
trainable parameters (ceil(M_w / 4) bytes) and its float32 max up; the shared
scaler and the summed ternaries (ceil(M_w * ceil(log2(2a + 1)) / 8) bytes for a
active workers) down; one framed message each. The paper's Table 3 counts the
uploads only, B V / 16 for B mini-batches per epoch (``paper_bytes_per_epoch``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedf_jax import codec, layout, timing, worker
from fedf_jax.algorithms.common import epoch_record
from fedf_jax.config import RunConfig, WorkerSpec
from fedf_jax.harness import Algorithm, Host
from fedf_jax.layout import Placement

CLIP = 2.5  # gradient clipping at CLIP standard deviations (Wen et al. §3.3)
_MSG = codec.HEADER_SIZE


class State(NamedTuple):
    p: jax.Array  # f32[M]
    opt_state: object
    epoch: jax.Array  # i32[]


def paper_bytes_per_epoch(model_bytes: float, n_batches: int) -> float:
    """The paper's TernGrad row of Table 3: B V / 16 (2 bits per 32-bit value, uploads
    of B mini-batches). With V = 1.8 MB and B = 100 (CIFAR-10's 50,000 images in
    batches of 500): 11.25 MB."""
    return n_batches * model_bytes / 16


def batches_per_worker(sizes, batch_sizes) -> np.ndarray:
    """ceil(S_k / b_k): a worker's mini-batches (= its active steps) per epoch."""
    sizes, b = np.asarray(sizes, np.int64), np.asarray(batch_sizes, np.int64)
    return np.where(sizes > 0, -(-sizes // b), 0)


def step_bytes(n_trainable: int, n_stats: int, active: int) -> codec.EpochBytes:
    """Bytes of one synchronous step with ``active`` workers (see the module doc)."""
    if active == 0:
        return codec.EpochBytes(0, 0, 0, 0, 0, 0)
    up = active * codec.packed_size(n_trainable, "2bit")
    sum_bits = math.ceil(math.log2(2 * active + 1))
    down = active * -(-n_trainable * sum_bits // 8)
    stats = 4 * n_stats * active * 2  # batch statistics up and their mean down
    other = active * 4 * 2 + stats  # scaler up, shared scaler down
    header = _MSG * active * 4
    return codec.EpochBytes(down, 0, up, other, header, up + down + other + header)


def epoch_bytes(n_trainable: int, n_stats: int, n_batches: np.ndarray) -> codec.EpochBytes:
    """All the steps of one epoch (a worker is active for its first n_batches_k steps)."""
    total = np.zeros(6, np.int64)
    for j in range(int(n_batches.max(initial=0))):
        total += np.asarray(step_bytes(n_trainable, n_stats, int((n_batches > j).sum())))
    return codec.EpochBytes(*(int(v) for v in total))


def ternarize(key: jax.Array, g: jax.Array, scaler: jax.Array) -> jax.Array:
    """Stochastic ternary of one gradient: sign(g) * Bernoulli(|g| / s), in {-1, 0, 1}."""
    keep = jax.random.uniform(key, g.shape) < jnp.abs(g) / jnp.maximum(scaler, 1e-30)
    return (jnp.sign(g) * keep).astype(jnp.int8)


def clip(g: jax.Array) -> jax.Array:
    """Clips a gradient to CLIP standard deviations of its entries."""
    bound = CLIP * jnp.std(g)
    return jnp.clip(g, -bound, bound)


def epoch(model, tx, steps: int, batch: int, test_chunk: int, state: State,
          data: layout.Data):
    """One TernGrad epoch (``steps`` synchronous steps); pure and jittable."""
    (cd,) = data.cohorts  # every worker in one cohort: one model, one optimizer
    n, capacity = cd.x.shape[:2]
    n_tr = model.num_trainable
    wkeys = layout.cohort_keys(data.train_key, state.epoch, cd)
    perms = jax.vmap(lambda k, s: worker.shuffle(jax.random.fold_in(k, 0), s, capacity))(
        wkeys, cd.sizes)
    b = cd.hp.batch_size
    n_batches = jnp.where(cd.sizes > 0, (cd.sizes + b - 1) // b, 0)
    rows = jnp.arange(batch)

    def loss_fn(p, xb, yb, valid):
        logits, p_stats = model.train_apply(p, xb, valid)
        w = valid / jnp.maximum(valid.sum(), 1)
        return jnp.sum(w * worker.cross_entropy(logits, yb)), p_stats

    def grad_k(p, perm, x, y, size, b, j):
        pos = j * b + rows
        valid = (rows < b) & (pos < size)
        idx = perm[jnp.minimum(pos, capacity - 1)]
        (loss, p_stats), g = jax.value_and_grad(loss_fn, has_aux=True)(p, x[idx], y[idx], valid)
        return g[:n_tr], loss, p_stats

    def step(carry, j):
        p, opt_state, loss_sum = carry
        g, loss, p_stats = jax.vmap(grad_k, in_axes=(None, 0, 0, 0, 0, 0, None))(
            p, perms, cd.x, cd.y, cd.sizes, b, j)
        active = j < n_batches  # bool[N]
        g = jax.vmap(clip)(g)
        scaler = jnp.max(jnp.where(active, jnp.max(jnp.abs(g), axis=1), 0.0))
        tern = jax.vmap(ternarize, in_axes=(0, 0, None))(
            jax.vmap(jax.random.fold_in, in_axes=(0, None))(wkeys, j + 1), g, scaler)
        count = jnp.maximum(active.sum(), 1)
        summed = jnp.sum(jnp.where(active[:, None], tern, 0).astype(jnp.float32), axis=0)
        grad = scaler * summed / count
        full = jnp.concatenate([grad, jnp.zeros((p.shape[0] - n_tr,), p.dtype)])
        updates, new_opt = tx.update(full, opt_state, p)
        new_p = p + updates
        if model.has_stats:  # the workers' batch statistics, averaged
            mean_stats = jnp.sum(jnp.where(active[:, None], p_stats[:, n_tr:], 0), 0) / count
            new_p = jnp.concatenate([new_p[:n_tr], mean_stats])
        go = jnp.any(active)
        p = jnp.where(go, new_p, p)
        opt_state = jax.tree.map(lambda a, b: jnp.where(go, a, b), new_opt, opt_state)
        return (p, opt_state, loss_sum + jnp.where(active, loss, 0.0)), None

    zero = jnp.zeros((n,), jnp.float32)
    (p, opt_state, loss_sum), _ = jax.lax.scan(step, (state.p, state.opt_state, zero),
                                               jnp.arange(steps))
    costs = loss_sum / jnp.maximum(n_batches, 1)  # mean mini-batch loss of the epoch
    loss, acc = worker.evaluate(model, p, data.x_test, data.y_test, data.y_test.shape[0],
                                test_chunk)
    out = {"epoch": state.epoch, "costs": jnp.where(n_batches > 0, costs, jnp.nan),
           "test_loss": loss,
           "test_accuracy": acc, "finite": jnp.all(jnp.isfinite(p))}
    return State(p, opt_state, state.epoch + 1), out


def make(cfg: RunConfig, host: Host, placement: Placement) -> Algorithm:
    """TernGrad over the run's workers, with their partition and batch sizes."""
    del placement  # one replica per worker, vmapped on one device
    spec = cfg.specs[0]
    tx = optimizer(spec)
    # One cohort: the one model has one optimizer; only the batch sizes stay private.
    specs = [dataclasses.replace(s, optimizer=spec.optimizer) for s in cfg.specs]
    w = host.workers(specs=specs)
    batch_sizes = np.array([sp.batch_size for sp in cfg.specs], np.int32)
    n_batches = batches_per_worker(w.sizes, batch_sizes)
    steps, batch = int(n_batches.max()), int(batch_sizes.max())
    model = host.model
    counted = epoch_bytes(model.num_trainable, model.num_params - model.num_trainable,
                          n_batches)
    work = 3.0 * np.asarray(w.sizes, np.float64)

    def init() -> State:
        return State(jnp.copy(host.p0), tx.init(jnp.asarray(host.p0)), jnp.int32(1))

    def record(out, wall_s):
        modeled = timing.modeled_epoch_s(wall_s, work, counted.total, cfg.run.bandwidth,
                                         cfg.run.latency, rounds=4 * steps)
        if not out["finite"]:
            raise ValueError(
                f"TernGrad diverged at epoch {out['epoch']} (non-finite model); lower --lr "
                f"(={spec.lr}).")
        return epoch_record(out, counted, wall_s, modeled)

    step = functools.partial(epoch, model, tx, steps, batch, w.layout.test_chunk)
    return Algorithm(init, step, w.data, record, lambda s: s.p, [str(jax.devices()[0])],
                     model.num_params)


def optimizer(spec: WorkerSpec) -> optax.GradientTransformation:
    """The one model's optimizer: the first worker's kind and learning rate."""
    return worker.make_optimizer(spec.optimizer, worker.HParams(
        np.float32(spec.lr), np.int32(spec.batch_size), np.int32(1), np.float32(spec.momentum)))


__all__ = ["CLIP", "State", "paper_bytes_per_epoch", "batches_per_worker", "step_bytes",
           "epoch_bytes", "ternarize", "clip", "epoch", "make", "optimizer"]
