"""Two levels (DESIGN §8): G groups of workers under group masters, under one top master.

A wrapper over any algorithm that gives its :class:`~fedf_jax.algorithms.common.Level`
pieces (FEDF and FedAvg here; the ADMM SVM runs its own two-level equations). One
outer epoch is one jitted step:

1. the top's model goes to every group master (``reset``);
2. each group runs ``--group-epochs`` (kappa) inner epochs of the algorithm over its
   workers: ``vmap`` over the groups of the algorithm's group epoch, whose workers are
   vmapped in turn (groups padded alike, ``layout.build_groups``; no Python loop), or
   streamed ``max(1, K // G)`` at a time in each group with ``--worker-chunk K``;
3. each group master is one worker of the top level (``contribution``: FEDF's S_g,
   C_g, Q_g), and the top runs the same algorithm's rule over the G groups, then the
   test pass.

With G = 1 and kappa = 1 the group step runs unbatched on the flat layout: the flat
run's program, the same pilots and the same final model.

Bytes are counted per level: ``bytes_group`` (kappa inner epochs in every group,
``n_g`` workers each) and ``bytes_top`` (one epoch over G participants: it depends
on G and M only). ``modeled_s`` charges the slowest worker's share of the compute,
kappa times the busiest group's bytes over its local link (``--group-bandwidth``,
``--group-latency``), and the top's bytes over the wide-area link (``--bandwidth``,
``--latency``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from fedf_jax import codec, keys, layout, timing
from fedf_jax.algorithms import fedavg, fedf, secure
from fedf_jax.algorithms.common import Level, epoch_record
from fedf_jax.config import RunConfig
from fedf_jax.harness import Algorithm, Host
from fedf_jax.layout import GROUP_AXES, Placement


class State(NamedTuple):
    groups: Any  # every group's state, stacked along a leading G axis
    top: Any  # the top master's state


def _index(tree, i):
    return jax.tree.map(lambda a: a[i], tree)


def groups_side(level: Level, kappa: int, single: bool, state: State, data: layout.Data):
    """Every group from the top's model: ``reset``, kappa inner epochs, ``contribution``.

    Returns:
      (group states, q f32[G, M], costs f32[G], sizes f32[G], the last inner epoch's
      outputs with a leading G axis).
    """
    groups = jax.vmap(level.reset, in_axes=(0, None))(state.groups, state.top)

    def inner(g, d):
        if kappa == 1:
            return level.group_epoch(g, d)
        g, outs = jax.lax.scan(lambda c, _: level.group_epoch(c, d), g, None, length=kappa)
        return g, _index(outs, -1)  # the last inner epoch's outputs

    if single:  # one group: the flat program, unbatched
        g, out = inner(_index(groups, 0), layout.one_group(data, 0))
        groups, out = jax.tree.map(lambda a: a[None], (g, out))
    else:
        groups, out = jax.vmap(inner, in_axes=(0, GROUP_AXES))(groups, data)
    q, cost, size = jax.vmap(level.contribution, in_axes=(0, GROUP_AXES, 0))(groups, data, out)
    return groups, q, cost, size, out


def group_outputs(out: dict, size) -> dict:
    """The groups' fields of an outer epoch's outputs."""
    group_out = {"group_costs": out["costs"], "group_sizes": size}
    if "pilot" in out:
        group_out["group_pilots"] = out["pilot"]
    return group_out


def outer(level: Level, kappa: int, single: bool, state: State,
          data: layout.Data) -> tuple[State, dict]:
    """One outer epoch of the hierarchy; pure and jittable."""
    groups, q, cost, size, out = groups_side(level, kappa, single, state, data)
    top, top_out = level.top_step(state.top, q, cost, size, data.x_test, data.y_test)
    return State(groups, top), {**top_out, **group_outputs(out, size)}


def _sum(items: list[codec.EpochBytes], times: int = 1) -> codec.EpochBytes:
    return codec.EpochBytes(*(times * sum(v) for v in zip(*items, strict=True)))


def make_record(cfg: RunConfig, sizes: np.ndarray, n_params: int,
                level_bytes: Callable[[int], codec.EpochBytes], rounds: int):
    """The run-log line of one outer epoch (simulated or under MPI) from host outputs:
    ``costs`` f32[N] in worker order (the last inner epoch's), the top's ``pilot``,
    ``goodness``, ``valid``, ``nonzero`` over the G groups (FEDF), ``group_pilots``
    (global worker ids, -1: none), ``group_sizes``, the test metrics.

    Args:
      sizes: i64[N] S_k; level_bytes: one epoch's bytes with n participants.
    """
    groups, kappa = cfg.group_workers(), cfg.run.group_epochs
    inner = [level_bytes(len(m)) for m in groups]
    group_bytes, top_bytes = _sum(inner, kappa), level_bytes(len(groups))
    counted = _sum([group_bytes, top_bytes])
    work = timing.work_units(sizes, [s.local_epochs for s in cfg.specs],
                             cost_pass=cfg.run.algorithm == "fedf")
    links = (kappa * (max(b.total for b in inner) / cfg.run.group_bandwidth
                      + rounds * cfg.run.group_latency)
             + top_bytes.total / cfg.run.bandwidth + rounds * cfg.run.latency)

    def record(out: dict[str, Any], wall_s: float) -> dict[str, Any]:
        costs = np.asarray(out["costs"], np.float64)
        pilot = int(out.get("pilot", -1))
        fedf_out = "goodness" in out
        rec = epoch_record(out, counted, wall_s,
                           wall_s * float(work.max() / work.sum()) + links, pilot=pilot,
                           dropped=np.flatnonzero(~np.isfinite(costs)).tolist()
                           if fedf_out else ())
        if fedf_out:
            rec["goodness"] = np.asarray(out["goodness"], np.float64)  # the G groups'
            sent = np.asarray(out["valid"]) & np.asarray(out.get("frame_ok", True)) & (
                np.arange(len(groups)) != pilot)
            rec["ternary_nonzero_fraction"] = (float(np.asarray(out["nonzero"])[sent].sum())
                                               / max(sent.sum() * n_params, 1))
        if "group_pilots" in out:  # each group's pilot worker in its last inner epoch
            rec["group_pilots"] = [int(p) for p in out["group_pilots"]]
        rec.update(bytes_group=int(group_bytes.total), bytes_top=int(top_bytes.total),
                   group_sizes=np.asarray(out["group_sizes"], np.int64))
        if cfg.master.secure_sum != "none":  # secure sums in place of ternaries
            before = rec["bytes_total"]
            inner = [(len(g), n_params) for g in groups] * kappa
            rec = secure.account(rec, inner, kappa * sum(len(g) - 1 for g in groups))
            rec["bytes_group"] += rec["bytes_total"] - before
            if cfg.master.secure_sum == "paillier":
                before = rec["bytes_total"]
                rec = secure.account(rec, [], len(groups) - 1, secure.paillier_bytes(
                    len(groups), n_params, cfg.master.paillier_bits))
                rec["bytes_top"] += rec["bytes_total"] - before
        return rec

    return record


class Setup(NamedTuple):
    """A two-level run laid out: the algorithm's :class:`Level`, the groups' data, and
    what the top level needs (``betas`` f32[G] and ``top_secure`` of FEDF's top)."""

    level: Level
    groups: layout.Groups
    kappa: int
    rounds: int  # message rounds of one epoch at one level
    betas: np.ndarray | None
    top_secure: secure.SecureSum | None
    init: Callable[[], State]


def group_chunk(cfg: RunConfig) -> int | None:
    """Workers per chunk inside each group with ``--worker-chunk K``: ``max(1, K // G)``,
    so that the G groups, vmapped, train about K workers at a time; None: no streaming."""
    k = cfg.run.worker_chunk
    return None if k is None else max(1, k // cfg.run.groups)


def setup(cfg: RunConfig, host: Host) -> Setup:
    """``cfg.run.algorithm`` (fedf or fedavg) in ``cfg.run.groups`` groups, laid out."""
    ds, groups = host.dataset, cfg.group_workers()
    betas = cfg.master.betas(cfg.n_workers)
    g = layout.build_groups(cfg.specs, ds.x_train, ds.y_train, host.parts, groups,
                            betas=betas, x_test=ds.x_test, y_test=ds.y_test,
                            train_key=host.train_key, augment=cfg.data.augment)
    betas_g = top = None
    if cfg.run.algorithm == "fedf":
        betas_g = np.array([betas[list(m)].mean() for m in groups], np.float32)
        inner = None
        mode = cfg.master.secure_sum
        if mode != "none":  # secure aggregation inside the groups, Paillier at the top
            inner = secure.secagg_votes(cfg.run.seed, secure.frac_bits(g.sizes, betas),
                                        b" group")
        if mode == "paillier":
            top = secure.paillier_votes(cfg.run.seed, secure.frac_bits(g.sizes, betas_g),
                                        cfg.master.paillier_bits)
        level = fedf.level(cfg, host.model, g.layout, betas_g, secure=inner, top_secure=top,
                           chunk=group_chunk(cfg))
        rounds = timing.ROUNDS
    else:
        level = fedavg.level(cfg, host.model, g.layout, keys.stream(cfg.run.seed, keys.SAMPLE),
                             chunk=group_chunk(cfg))
        rounds = fedavg.LINK_ROUNDS

    def init() -> State:
        per = jax.vmap(functools.partial(level.group_init, g.layout), in_axes=(GROUP_AXES, None))
        return State(per(g.data, host.p0), level.top_init(host.p0, len(groups)))

    return Setup(level, g, cfg.run.group_epochs, rounds, betas_g, top, init)


def in_worker_order(g: layout.Groups, n_workers: int, out: dict[str, Any]) -> dict[str, Any]:
    """Host outputs with ``costs`` f32[N] in worker order (from ``group_costs`` at group
    positions) and ``group_pilots`` as global worker ids (-1: none)."""
    real = g.where >= 0
    costs = np.full(n_workers, np.nan)
    costs[g.where[real]] = np.asarray(out["group_costs"])[real]
    out = {**out, "costs": costs}
    if "group_pilots" in out:
        out["group_pilots"] = [int(g.where[i, p]) if p >= 0 else -1
                               for i, p in enumerate(np.asarray(out["group_pilots"]))]
    return out


def make(cfg: RunConfig, host: Host, placement: Placement) -> Algorithm:
    """``cfg.run.algorithm`` (fedf or fedavg) in ``cfg.run.groups`` groups."""
    if placement.name != "vmap":
        raise ValueError(f"`groups` (={cfg.run.groups}) runs on the vmap backend, not "
                         f"{placement.name!r}.")
    st = setup(cfg, host)
    base = make_record(cfg, st.groups.sizes, host.model.num_params, st.level.epoch_bytes,
                       st.rounds)

    def record(out, wall_s):
        return base(in_worker_order(st.groups, cfg.n_workers, out), wall_s)

    step = functools.partial(outer, st.level, st.kappa, cfg.run.groups == 1)
    return Algorithm(st.init, step, st.groups.data, record, lambda s: st.level.params(s.top),
                     list(placement.devices), host.model.num_params)


__all__ = ["State", "group_chunk", "groups_side", "group_outputs", "outer", "make_record",
           "Setup", "setup", "in_worker_order", "make"]
