"""One host, all workers batched: one jitted, vmapped FEDF epoch.

The epoch is a pure function ``(SimState, SimData) -> (SimState, EpochOutput)``:
every worker trains (vmapped, one group per optimizer kind), reports its cost and
ternarizes and packs (the fused kernel); the master picks the pilot, reads its
model, unpacks and updates (the fused kernel), then P^t is evaluated on the test
set. ``group_step`` and ``master_phase`` are shared with the sharded backend.
No Python loop over workers, no host round trip inside the epoch.
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
    rows: tuple[int, ...]  # positions in the plan's worker list, ascending
    ids: tuple[int, ...]  # global worker ids of those rows (their PRNG streams)
    shapes: worker.Shapes


class Plan(NamedTuple):
    """The static layout of a simulation (changes the compiled program)."""

    groups: tuple[Group, ...]
    n_workers: int
    test_chunk: int

    @property
    def order(self) -> np.ndarray:
        """Worker rows in group-major order (the order of the stacked group outputs)."""
        return np.concatenate([np.asarray(g.rows, np.int64) for g in self.groups])


class GroupData(NamedTuple):
    x: jax.Array  # f32[n_g, S_max, ...]
    y: jax.Array  # i32[n_g, S_max]
    sizes: jax.Array  # i32[n_g]
    hp: worker.HParams  # one row per worker; hp.lr is alpha_k of Eq. (4)
    beta: jax.Array  # f32[n_g] beta_k of Eq. (5)
    ids: jax.Array  # i32[n_g]


class SimData(NamedTuple):
    """Everything an epoch reads and never changes."""

    groups: tuple[GroupData, ...]
    sizes: jax.Array  # f32[N] S_k in worker order
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
              eval_chunk: int = 2048, ids: Sequence[int] | None = None,
              augment: bool = False) -> Plan:
    """Groups workers by optimizer kind (in the order kinds first appear).

    Args:
      specs, sizes: one per worker of this plan.
      n_test: test-set size.
      eval_chunk: rows per forward pass of the cost and test passes.
      ids: the workers' global ids (default 0..n-1); a host that runs a subset of
        the workers passes theirs, so each worker keeps its own PRNG stream.
      augment: random crop and flip of training images.
    """
    ids = list(range(len(specs))) if ids is None else [int(i) for i in ids]
    kinds = list(dict.fromkeys(s.optimizer for s in specs))
    groups = []
    for kind in kinds:
        rows = tuple(i for i, s in enumerate(specs) if s.optimizer == kind)
        shapes = worker.group_shapes([specs[i] for i in rows], [sizes[i] for i in rows],
                                     eval_chunk, augment)
        groups.append(Group(kind, rows, tuple(ids[i] for i in rows), shapes))
    return Plan(tuple(groups), len(specs), min(eval_chunk, max(n_test, 1)))


def make_data(plan: Plan, x: np.ndarray, y: np.ndarray, sizes: np.ndarray,
              specs: Sequence[worker.WorkerSpec], betas, x_test, y_test,
              train_key: jax.Array) -> SimData:
    """Lays the padded worker data out per group, on the device.

    Args:
      x: f32[N, S_max, ...] padded worker data; y: i32[N, S_max]; sizes: [N].
    """
    hp = worker.stack_hparams(specs)
    betas = np.asarray(betas, np.float32)
    groups = []
    for g in plan.groups:
        rows = np.asarray(g.rows)
        s_max = int(sizes[rows].max())
        groups.append(GroupData(
            x=jnp.asarray(x[rows, :s_max]), y=jnp.asarray(y[rows, :s_max]),
            sizes=jnp.asarray(sizes[rows], jnp.int32),
            hp=jax.tree.map(lambda a, rows=rows: jnp.asarray(a[rows]), hp),
            beta=jnp.asarray(betas[rows]), ids=jnp.asarray(g.ids, jnp.int32)))
    return SimData(tuple(groups), jnp.asarray(sizes, jnp.float32),
                   jnp.asarray(betas), jnp.asarray(x_test),
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


class GroupOutput(NamedTuple):
    """What a group of workers produces in one epoch (Algorithm 2)."""

    q: jax.Array  # f32[n_g, M] local models (only the pilot's leaves the worker)
    costs: jax.Array  # f32[n_g]
    packed: jax.Array  # u8[n_g, packed_size(M)] ternaries (Eq. 4/5), fused and packed
    nonzero: jax.Array  # i32[n_g]
    opt_state: object


def group_step(model: Model, group: Group, scheme: str, p_prev: jax.Array,
               p_prev2: jax.Array, epoch: jax.Array, opt_state, gd: GroupData,
               train_key: jax.Array) -> GroupOutput:
    """Every worker's side of one epoch for one group: train, cost, packed ternary.

    Each worker packs its ternary before the master's command arrives (it does not
    depend on who the pilot is); the master ignores the pilot's row.
    """
    q, costs, opt_state = train_group(model, group, p_prev, opt_state, gd, train_key, epoch)
    packed, nonzero = jax.vmap(worker.ternary_message, in_axes=(0, None, None, 0, 0, None, None))(
        q, p_prev, p_prev2, gd.hp.lr, gd.beta, epoch, scheme)
    return GroupOutput(q, costs, packed, nonzero, opt_state)


def master_phase(model: Model, plan: Plan, cfg: master.MasterConfig, state: SimState,
                 data: SimData, outs: Sequence[GroupOutput]) -> tuple[SimState, EpochOutput]:
    """The master's side, once per epoch on the gathered group outputs: pilot choice
    (Eq. 1), the pilot's model, Eq. (3) over the packed ternaries, test metrics."""

    def gather(field):
        return _to_worker_order(plan, jnp.concatenate([getattr(o, field) for o in outs]))

    costs, packed, nonzero = gather("costs"), gather("packed"), gather("nonzero")
    ms = state.master
    sel = master.select(ms, costs, data.sizes)
    q_pilot = _pilot_row(plan, outs, jnp.maximum(sel.pilot, 0))
    new_master = master.update(ms, sel, costs, q_pilot, packed, data.sizes, data.betas, cfg)
    test_loss, test_acc = worker.evaluate(model, new_master.p_prev, data.x_test, data.y_test,
                                          data.y_test.shape[0], plan.test_chunk)
    out = EpochOutput(costs, sel.goodness, sel.pilot, sel.valid, nonzero, test_loss, test_acc)
    return SimState(new_master, tuple(o.opt_state for o in outs)), out


def _to_worker_order(plan: Plan, stacked: jax.Array) -> jax.Array:
    if len(plan.groups) == 1:
        return stacked
    return stacked[np.argsort(plan.order)]


def _pilot_row(plan: Plan, outs: Sequence[GroupOutput], pilot: jax.Array) -> jax.Array:
    """Q_{k*}: one row read from the group holding the pilot (no [N, M] copy)."""
    if len(plan.groups) == 1:
        return outs[0].q[pilot]
    group_of = np.concatenate([np.full(len(g.rows), i) for i, g in enumerate(plan.groups)])
    row_of = np.concatenate([np.arange(len(g.rows)) for g in plan.groups])
    order = np.argsort(plan.order)
    g, r = jnp.asarray(group_of[order])[pilot], jnp.asarray(row_of[order])[pilot]
    return jax.lax.switch(g, [lambda r, o=o: o.q[r] for o in outs], r)


def epoch(model: Model, plan: Plan, cfg: master.MasterConfig, state: SimState,
          data: SimData) -> tuple[SimState, EpochOutput]:
    """One FEDF global epoch for all workers (Algorithms 1 and 2); pure and jittable."""
    ms = state.master
    outs = [group_step(model, g, cfg.scheme, ms.p_prev, ms.p_prev2, ms.epoch, o, gd,
                       data.train_key)
            for g, gd, o in zip(plan.groups, data.groups, state.opt_states, strict=True)]
    return master_phase(model, plan, cfg, state, data, outs)


def make_epoch_fn(model: Model, plan: Plan, cfg: master.MasterConfig):
    """``jit(epoch)`` with the state donated (its buffers are reused in place)."""
    return jax.jit(functools.partial(epoch, model, plan, cfg), donate_argnums=0)


def scan_epochs(model: Model, plan: Plan, cfg: master.MasterConfig, n_epochs: int,
                state: SimState, data: SimData) -> tuple[SimState, EpochOutput]:
    """``n_epochs`` calls of :func:`epoch` in one ``lax.scan``; pure and jittable.

    Returns:
      (state, outputs): the state after the last epoch and the per-epoch
      :class:`EpochOutput` stacked along a leading ``[n_epochs]`` axis (what the
      run log is written from, once the call returns).
    """
    return jax.lax.scan(lambda s, _: epoch(model, plan, cfg, s, data), state, None,
                        length=n_epochs)


def make_scan_fn(model: Model, plan: Plan, cfg: master.MasterConfig, n_epochs: int):
    """``jit(scan_epochs)`` with the state donated: many epochs per host call.

    Equal to ``n_epochs`` calls of :func:`make_epoch_fn`'s function (the epoch body
    is the same program; ``epoch`` is traced, so one compile serves every call).
    """
    if isinstance(n_epochs, bool) or not isinstance(n_epochs, int) or n_epochs < 1:
        raise ValueError(f"`n_epochs` (={n_epochs!r}) must be an integer >= 1.")
    return jax.jit(functools.partial(scan_epochs, model, plan, cfg, n_epochs),
                   donate_argnums=0)
