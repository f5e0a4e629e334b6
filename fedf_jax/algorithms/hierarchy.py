"""Two levels (DESIGN §8): G groups of workers under group masters, under one top master.

A wrapper over any algorithm that gives its :class:`~fedf_jax.algorithms.common.Level`
pieces (FEDF and FedAvg here; the ADMM SVM runs its own two-level equations). One
outer epoch is one jitted step:

1. the top's model goes to every group master (``reset``);
2. each group runs ``--group-epochs`` (kappa) inner epochs of the algorithm over its
   workers: ``vmap`` over the groups of the algorithm's group epoch, whose workers are
   vmapped in turn (groups padded alike, ``layout.build_groups``; no Python loop);
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
from fedf_jax.algorithms import fedavg, fedf
from fedf_jax.algorithms.common import Level, epoch_record
from fedf_jax.config import RunConfig
from fedf_jax.harness import Algorithm, Host
from fedf_jax.layout import GROUP_AXES, Placement


class State(NamedTuple):
    groups: Any  # every group's state, stacked along a leading G axis
    top: Any  # the top master's state


def _index(tree, i):
    return jax.tree.map(lambda a: a[i], tree)


def outer(level: Level, kappa: int, single: bool, state: State,
          data: layout.Data) -> tuple[State, dict]:
    """One outer epoch of the hierarchy; pure and jittable."""
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
    top, top_out = level.top_step(state.top, q, cost, size, data.x_test, data.y_test)
    group_out = {"group_costs": out["costs"]}
    if "pilot" in out:
        group_out["group_pilots"] = out["pilot"]
    return State(groups, top), {**top_out, **group_out, "group_sizes": size}


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
        return rec

    return record


def make(cfg: RunConfig, host: Host, placement: Placement) -> Algorithm:
    """``cfg.run.algorithm`` (fedf or fedavg) in ``cfg.run.groups`` groups."""
    if placement.name != "vmap":
        raise ValueError(f"`groups` (={cfg.run.groups}) runs on the vmap backend, not "
                         f"{placement.name!r}.")
    ds, groups, kappa = host.dataset, cfg.group_workers(), cfg.run.group_epochs
    g = layout.build_groups(cfg.specs, ds.x_train, ds.y_train, host.parts, groups,
                            betas=cfg.master.betas(cfg.n_workers), x_test=ds.x_test,
                            y_test=ds.y_test, train_key=host.train_key,
                            augment=cfg.data.augment)
    betas = cfg.master.betas(cfg.n_workers)
    if cfg.run.algorithm == "fedf":
        level = fedf.level(cfg, host.model, g.layout,
                           np.array([betas[list(m)].mean() for m in groups], np.float32))
        rounds = timing.ROUNDS
    else:
        level = fedavg.level(cfg, host.model, g.layout, keys.stream(cfg.run.seed, keys.SAMPLE))
        rounds = fedavg.LINK_ROUNDS

    def init() -> State:
        per = jax.vmap(functools.partial(level.group_init, g.layout), in_axes=(GROUP_AXES, None))
        return State(per(g.data, host.p0), level.top_init(host.p0, len(groups)))

    base = make_record(cfg, g.sizes, host.model.num_params, level.epoch_bytes, rounds)
    real = g.where >= 0

    def record(out, wall_s):
        costs = np.full(cfg.n_workers, np.nan)  # group positions -> worker order
        costs[g.where[real]] = np.asarray(out["group_costs"])[real]
        out = {**out, "costs": costs}
        if "group_pilots" in out:
            out["group_pilots"] = [int(g.where[i, p]) if p >= 0 else -1
                                   for i, p in enumerate(np.asarray(out["group_pilots"]))]
        return base(out, wall_s)

    step = functools.partial(outer, level, kappa, len(groups) == 1)
    return Algorithm(init, step, g.data, record, lambda s: level.params(s.top),
                     list(placement.devices), host.model.num_params)


__all__ = ["State", "outer", "make_record", "make"]
