"""FedAvg (McMahan et al. 2017) on the harness.

Each round the master sends P^{t-1} to a sampled set of m = max(1, round(C N))
workers (C = ``fraction``; all workers when C = 1), each trains locally with its
private spec exactly as a FEDF worker does (same PRNG stream, same optimizer
state kept across rounds), sends its whole model back, and the master averages
the models weighted by example counts:

    P^t = sum_{k in sampled} S_k Q_k / sum_{k in sampled} S_k.

A worker whose model is not finite is dropped from the average (and logged);
with none left P^t = P^{t-1}. There is no cost pass: FedAvg does not need one.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedf_jax import keys, layout, stream, timing, worker
from fedf_jax.algorithms.common import Level, epoch_record, model_exchange_bytes
from fedf_jax.config import RunConfig
from fedf_jax.harness import Algorithm, Host
from fedf_jax.layout import Placement

LINK_ROUNDS = 2  # model down, model up


class State(NamedTuple):
    p: jax.Array  # f32[M] P^{t-1}
    opt_states: tuple  # one stacked optimizer state per cohort
    epoch: jax.Array  # i32[] t


def sampled_count(n_workers: int, fraction: float) -> int:
    """m = max(1, round(C N)) workers per round."""
    return max(1, int(round(fraction * n_workers)))


def sample(key: jax.Array, epoch: jax.Array, n_workers: int, m: int) -> jax.Array:
    """bool[N]: the round's m workers, drawn without replacement from ``fold_in(key, t)``."""
    if m >= n_workers:
        return jnp.ones((n_workers,), bool)
    pick = jax.random.choice(jax.random.fold_in(key, epoch), n_workers, (m,), replace=False)
    return jnp.zeros((n_workers,), bool).at[pick].set(True)


def local_models(model, lay: layout.Layout, spread, p, opt_states, data: layout.Data, epoch):
    """Every worker trains from ``p`` (Algorithm 2's training, no cost pass).

    Returns:
      (q, opt_states): f32[N, M] in worker order, the new optimizer states per cohort.
    """
    outs = [spread(functools.partial(layout.train_cohort, model, c, cost_pass=False), 3)(
                p, data.train_key, epoch, o, cd)
            for c, cd, o in zip(lay.cohorts, data.cohorts, opt_states, strict=True)]
    return layout.to_workers(lay, [q for q, _ in outs]), tuple(o for _, o in outs)


def average(p: jax.Array, q: jax.Array, sizes: jax.Array, use: jax.Array) -> jax.Array:
    """FedAvg's master step: ``sum_{k in use} S_k Q_k / sum_{k in use} S_k``, or ``p``
    when no model is usable. f32[M]."""
    w = jnp.where(use, jnp.asarray(sizes, jnp.float32), 0.0)
    total = w.sum()
    p_new = jnp.einsum("n,nm->m", w / jnp.maximum(total, 1e-30),
                       jnp.where(use[:, None], q, 0.0))
    return jnp.where(total > 0, p_new, p)


class Sum(NamedTuple):
    """FedAvg's running sums over the usable workers so far (``--worker-chunk``)."""

    weighted: jax.Array  # f32[M] sum_k S_k Q_k
    weight: jax.Array  # f32[] sum_k S_k


def fold_chunk(model, cohort: layout.Cohort, p: jax.Array, epoch: jax.Array,
               train_key: jax.Array, sampled: jax.Array, acc: Sum, ch: stream.Chunk):
    """One chunk of workers trained from ``p`` and added to the running weighted sum
    (the sampled ones whose model is finite); a worker that sat the round out keeps its
    optimizer state.

    Returns:
      (sums, (the chunk's optimizer states, its ``finite`` flags)).
    """
    q, opt = layout.train_cohort(model, cohort, p, train_key, epoch, ch.opt_state, ch.cd,
                                 cost_pass=False)
    finite = worker.all_finite(q)
    chosen = stream.take(sampled, ch.worker, False)
    use = ch.new & chosen & finite
    w = jnp.where(use, ch.cd.sizes.astype(jnp.float32), 0.0)
    acc = Sum(acc.weighted + w @ jnp.where(use[:, None], q, 0.0), acc.weight + w.sum())
    opt = jax.tree.map(lambda a, b: jnp.where(chosen.reshape((-1,) + (1,) * (a.ndim - 1)),
                                              a, b), opt, ch.opt_state)
    return acc, (opt, {"finite": finite})


def _streamed(model, lay: layout.Layout, k: int, sampled: jax.Array, state: State,
              data: layout.Data) -> tuple[jax.Array, tuple, jax.Array]:
    """Every worker trained K at a time (``--worker-chunk``): FedAvg's weighted mean
    from running sums, with K local models alive at a time (``stream.scan_cohorts``).
    Equal to :func:`average` over all workers to float32 rounding (another order of
    the sum).

    Returns:
      (P^t, the optimizer states per cohort, finite bool[N]).
    """
    def body(cohort, acc, ch):
        return fold_chunk(model, cohort, state.p, state.epoch, data.train_key, sampled, acc,
                          ch)

    start = Sum(jnp.zeros_like(state.p), jnp.float32(0))
    acc, opt_states, outs = stream.scan_cohorts(body, start, lay, k, data.cohorts,
                                                state.opt_states)
    p_new = jnp.where(acc.weight > 0, acc.weighted / jnp.maximum(acc.weight, 1e-30), state.p)
    return p_new, opt_states, layout.to_workers(lay, [o["finite"] for o in outs])


def round_(model, lay: layout.Layout, spread, m: int, sample_key: jax.Array, state: State,
           data: layout.Data, chunk: int | None = None) -> tuple[State, dict]:
    """One FedAvg round without the test pass (an inner epoch of the hierarchy;
    ``chunk``: the workers streamed that many at a time)."""
    n = lay.n_workers
    sampled = sample(sample_key, state.epoch, n, m)
    if chunk is None:
        q, opt_states = local_models(model, lay, spread, state.p, state.opt_states, data,
                                     state.epoch)
        finite = worker.all_finite(q)
        p_new = average(state.p, q, data.sizes, sampled & finite)
        new_states = layout.keep_rows(lay, sampled, opt_states, state.opt_states)
    else:
        p_new, new_states, finite = _streamed(model, lay, chunk, sampled, state, data)
    out = {"epoch": state.epoch, "costs": jnp.full((n,), jnp.nan), "sampled": sampled,
           "finite": finite}
    return State(p_new, new_states, state.epoch + 1), out


def epoch(model, lay: layout.Layout, spread, m: int, sample_key: jax.Array, state: State,
          data: layout.Data, chunk: int | None = None):
    """One FedAvg round, then the test metrics; pure and jittable."""
    state, out = round_(model, lay, spread, m, sample_key, state, data, chunk)
    loss, acc = worker.evaluate(model, state.p, data.x_test, data.y_test, data.y_test.shape[0],
                                lay.test_chunk)
    return state, {**out, "test_loss": loss, "test_accuracy": acc}


def init(lay: layout.Layout, data: layout.Data, p0: jax.Array) -> State:
    """P^0 and a fresh optimizer state at every worker (fresh buffers)."""
    return State(jnp.copy(p0), layout.init_opt_states(lay, data, p0), jnp.int32(1))


def level(cfg: RunConfig, model, lay: layout.Layout, sample_key: jax.Array,
          chunk: int | None = None) -> Level:
    """FedAvg as one level of the hierarchy: HierFAVG (Liu et al. 2020). Each group
    averages its workers' models (``chunk``: streamed that many at a time); the top
    averages the groups' models weighted by S_g."""
    m = model.num_params

    def top_step(top: State, q, costs, sizes, x_test, y_test):
        finite = worker.all_finite(q)
        p = average(top.p, q, sizes, finite)
        loss, acc = worker.evaluate(model, p, x_test, y_test, y_test.shape[0], lay.test_chunk)
        return State(p, (), top.epoch + 1), {"epoch": top.epoch, "finite": finite,
                                             "test_loss": loss, "test_accuracy": acc}

    return Level(init, functools.partial(round_, model, lay, layout.HERE.spread,
                                         lay.n_workers, sample_key, chunk=chunk),
                 lambda g, top: g._replace(p=top.p),
                 lambda g, data, out: (g.p, jnp.float32(jnp.nan), jnp.sum(data.sizes)),
                 lambda p0, n: State(jnp.copy(p0), (), jnp.int32(1)), top_step,
                 lambda top: top.p, lambda k: model_exchange_bytes(m, k, k))


def make(cfg: RunConfig, host: Host, placement: Placement) -> Algorithm:
    """FedAvg over the run's workers (``cfg.run.fraction`` of them per round)."""
    n = cfg.n_workers
    w = host.workers(placement)
    m = sampled_count(n, cfg.run.fraction)
    sample_key = keys.stream(cfg.run.seed, keys.SAMPLE)
    work = timing.work_units(w.sizes, [sp.local_epochs for sp in cfg.specs], cost_pass=False)

    def record(out, wall_s):
        sampled = np.asarray(out["sampled"])
        counted = model_exchange_bytes(host.model.num_params, int(sampled.sum()),
                                       int(sampled.sum()))
        dropped = np.flatnonzero(sampled & ~np.asarray(out["finite"])).tolist()
        modeled = timing.modeled_epoch_s(wall_s, work, counted.total, cfg.run.bandwidth,
                                         cfg.run.latency, active=sampled, rounds=LINK_ROUNDS)
        rec = epoch_record(out, counted, wall_s, modeled, dropped=dropped)
        rec["sampled"] = np.flatnonzero(sampled).tolist()
        return rec

    step = functools.partial(epoch, host.model, w.layout, placement.spread, m, sample_key,
                             chunk=cfg.run.worker_chunk)
    return Algorithm(functools.partial(init, w.layout, w.data, host.p0), step, w.data, record,
                     lambda s: s.p, list(placement.devices), host.model.num_params)


__all__ = ["State", "Sum", "sampled_count", "sample", "local_models", "average", "fold_chunk",
           "round_", "epoch", "init", "level", "make"]
