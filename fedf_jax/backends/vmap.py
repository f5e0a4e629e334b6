"""One host, all workers batched: one jitted, vmapped FEDF epoch.

The epoch is a pure function ``(SimState, SimData) -> (SimState, EpochOutput)``:
every worker trains (vmapped, one group per optimizer kind), reports its cost, the
master picks the pilot, every worker ternarizes and packs (the fused kernel) and
the master unpacks and updates (the fused kernel), then P^t is evaluated on the
test set. No Python loop over workers, no host round trip inside the epoch.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedf_jax import master, worker
from fedf_jax.models import Model


class Group(NamedTuple):
    """Workers that share an optimizer kind and so one compiled training program."""

    kind: str
    ids: tuple[int, ...]  # global worker ids, ascending
    shapes: worker.Shapes


class Plan(NamedTuple):
    """The static layout of a simulation (changes the compiled program)."""

    groups: tuple[Group, ...]
    n_workers: int
    test_chunk: int

    @property
    def order(self) -> np.ndarray:
        """Worker ids in group-major order (the order of the stacked group outputs)."""
        return np.concatenate([np.asarray(g.ids, np.int64) for g in self.groups])


class GroupData(NamedTuple):
    x: jax.Array  # f32[n_g, S_max, ...]
    y: jax.Array  # i32[n_g, S_max]
    sizes: jax.Array  # i32[n_g]
    hp: worker.HParams  # one row per worker
    ids: jax.Array  # i32[n_g]


class SimData(NamedTuple):
    """Everything an epoch reads and never changes."""

    groups: tuple[GroupData, ...]
    sizes: jax.Array  # f32[N] S_k in worker order
    alphas: jax.Array  # f32[N] alpha_k = lr_k (Eq. 4)
    betas: jax.Array  # f32[N]
    x_test: jax.Array
    y_test: jax.Array
    train_key: jax.Array


class SimState(NamedTuple):
    master: master.MasterState
    opt_states: tuple  # one stacked optimizer state per group


class EpochOutput(NamedTuple):
    costs: jax.Array  # f32[N] C^t
    goodness: jax.Array  # f32[N]
    pilot: jax.Array  # i32[]
    valid: jax.Array  # bool[N]
    nonzero: jax.Array  # i32[N] non-zero trits per worker's T_k
    test_loss: jax.Array
    test_accuracy: jax.Array


def make_plan(specs: Sequence[worker.WorkerSpec], sizes: Sequence[int], n_test: int,
              eval_chunk: int = 2048) -> Plan:
    """Groups workers by optimizer kind (in the order kinds first appear)."""
    kinds = list(dict.fromkeys(s.optimizer for s in specs))
    groups = []
    for kind in kinds:
        ids = tuple(i for i, s in enumerate(specs) if s.optimizer == kind)
        shapes = worker.group_shapes([specs[i] for i in ids], [sizes[i] for i in ids],
                                     eval_chunk)
        groups.append(Group(kind, ids, shapes))
    return Plan(tuple(groups), len(specs), min(eval_chunk, max(n_test, 1)))


def make_data(plan: Plan, x: np.ndarray, y: np.ndarray, sizes: np.ndarray,
              specs: Sequence[worker.WorkerSpec], betas, x_test, y_test,
              train_key: jax.Array) -> SimData:
    """Lays the padded worker data out per group, on the device.

    Args:
      x: f32[N, S_max, ...] padded worker data; y: i32[N, S_max]; sizes: [N].
    """
    hp = worker.stack_hparams(specs)
    groups = []
    for g in plan.groups:
        ids = np.asarray(g.ids)
        s_max = int(sizes[ids].max())
        groups.append(GroupData(
            x=jnp.asarray(x[ids, :s_max]), y=jnp.asarray(y[ids, :s_max]),
            sizes=jnp.asarray(sizes[ids], jnp.int32),
            hp=jax.tree.map(lambda a, ids=ids: jnp.asarray(a[ids]), hp),
            ids=jnp.asarray(ids, jnp.int32)))
    return SimData(tuple(groups), jnp.asarray(sizes, jnp.float32), jnp.asarray(hp.lr),
                   jnp.asarray(betas, jnp.float32), jnp.asarray(x_test),
                   jnp.asarray(y_test, jnp.int32), train_key)


def init_state(plan: Plan, data: SimData, p0: jax.Array) -> SimState:
    """P^0 at the master and a fresh optimizer state at every worker."""
    opt_states = tuple(
        jax.vmap(functools.partial(worker.init_opt_state, g.kind), in_axes=(0, None))(gd.hp, p0)
        for g, gd in zip(plan.groups, data.groups, strict=True))
    return SimState(master.init(p0, plan.n_workers), opt_states)


def train_group(model: Model, group: Group, p: jax.Array, opt_state, gd: GroupData,
                train_key: jax.Array, epoch: jax.Array):
    """Trains a group of workers from P^{t-1}; vmapped over the group's workers.

    Returns:
      (q, costs, opt_state): f32[n_g, M], f32[n_g], the group's optimizer states.
    """
    keys = jax.vmap(worker.worker_key, in_axes=(None, None, 0))(train_key, epoch, gd.ids)
    fn = functools.partial(worker.train_and_cost, model, group.kind, group.shapes)
    return jax.vmap(fn, in_axes=(None, 0, 0, 0, 0, 0, 0))(
        p, opt_state, gd.x, gd.y, gd.sizes, gd.hp, keys)


def master_phase(model: Model, plan: Plan, cfg: master.MasterConfig, state: SimState,
                 data: SimData, q: jax.Array, costs: jax.Array, opt_states: tuple):
    """Everything after local training: pilot choice, messages, Eq. (3), test metrics.

    Args:
      q: f32[N, M] local models in worker order; costs: f32[N].
    """
    ms = state.master
    sel = master.select(ms, costs, data.sizes)
    packed, nonzero = jax.vmap(worker.ternary_message, in_axes=(0, None, None, 0, 0, None, None))(
        q, ms.p_prev, ms.p_prev2, data.alphas, data.betas, ms.epoch, cfg.scheme)
    q_pilot = q[jnp.maximum(sel.pilot, 0)]
    new_master = master.update(ms, sel, costs, q_pilot, packed, data.sizes, data.betas, cfg)
    test_loss, test_acc = worker.evaluate(model, new_master.p_prev, data.x_test, data.y_test,
                                          data.y_test.shape[0], plan.test_chunk)
    out = EpochOutput(costs, sel.goodness, sel.pilot, sel.valid, nonzero, test_loss, test_acc)
    return SimState(new_master, opt_states), out


def _to_worker_order(plan: Plan, stacked: jax.Array) -> jax.Array:
    if len(plan.groups) == 1:
        return stacked
    return stacked[np.argsort(plan.order)]


def epoch(model: Model, plan: Plan, cfg: master.MasterConfig, state: SimState,
          data: SimData) -> tuple[SimState, EpochOutput]:
    """One FEDF global epoch for all workers (Algorithms 1 and 2); pure and jittable."""
    p, t = state.master.p_prev, state.master.epoch
    results = [train_group(model, g, p, o, gd, data.train_key, t)
               for g, gd, o in zip(plan.groups, data.groups, state.opt_states, strict=True)]
    q = _to_worker_order(plan, jnp.concatenate([r[0] for r in results]))
    costs = _to_worker_order(plan, jnp.concatenate([r[1] for r in results]))
    return master_phase(model, plan, cfg, state, data, q, costs, tuple(r[2] for r in results))


def make_epoch_fn(model: Model, plan: Plan, cfg: master.MasterConfig):
    """``jit(epoch)`` with the state donated (its buffers are reused in place)."""
    return jax.jit(functools.partial(epoch, model, plan, cfg), donate_argnums=0)
