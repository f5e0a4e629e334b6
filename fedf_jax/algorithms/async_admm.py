"""Asynchronous consensus ADMM (``--algorithm admm-svm --schedule async``, DESIGN §8): a
partial barrier and a bounded delay (Zhang and Kwok 2014; Chang et al. 2016).

The senders (flat workers, or group masters with ``--groups``) run at their own
speeds on :mod:`fedf_jax.schedule`'s clock. A flat worker's job is its x-update (3.5)
from the z and u_i it was sent; a group's is its kappa inner consensus iterations
toward z_g from the top's z and its u_g (``admm.group_inner``). The master updates z
once ``--buffer`` (A) arrivals are in and no sender is more than ``--staleness`` (tau)
updates behind (the ``wait`` policy): z (3.6) from every sender's latest x_i + u_i,
u_i += x_i - z (3.7) for the senders that arrived, rho fixed (``admm.consensus_top``,
``admm.top_update`` with ``member``). Every sender is heard at least once every tau
+ 1 updates, so the iteration converges to the synchronous optimum (Chang et al.,
Theorem 1, for rho large enough). An update that holds every sender, none stale, runs
the synchronous iteration itself (with residual balancing): ``--staleness 0`` is the
synchronous run.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedf_jax import admm, codec, schedule
from fedf_jax.algorithms import admm_svm
from fedf_jax.algorithms.common import (
    clock_fields,
    clock_runner,
    keep_versions,
    rows_where,
)
from fedf_jax.config import RunConfig
from fedf_jax.harness import Algorithm, Compiler, Host
from fedf_jax.layout import Placement


def _flat_job(st: admm_svm.Setup, state: admm_svm.State, z):
    """Every worker's x-update (3.5) from ``z`` and its own u_i: (x f32[N, K, p], alpha)."""
    c, t = state.admm, st.train
    return jax.vmap(admm.worker_x, (0, 0, 0, None, 0, 0, None, None))(
        t.A, t.y, t.mask, z, c.u, c.alpha, c.rho, st.hyper.C)


def _group_job(st: admm_svm.Setup, state: admm_svm.State, z):
    """Every group's kappa inner iterations toward z_g from the top's ``z`` and its u_g."""
    h = state.admm
    inner = functools.partial(admm.group_inner, kappa=st.kappa)
    return jax.vmap(inner, (0, 0, None, None, 0))(h.groups, st.train, st.hyper, h.rho,
                                                 z[None] - h.u)


def _prox(gamma: float | None, per_rho: float, rho):
    """The master's proximal weight per class: ``--prox``, or ``per_rho`` times rho."""
    return jnp.full_like(rho, gamma) if gamma is not None else per_rho * rho


def _flat_top(st: admm_svm.Setup, gamma, per_rho, state: admm_svm.State, x, member):
    new, info = admm.consensus_top(state.admm, x, member, st.train, st.hyper,
                                   _prox(gamma, per_rho, state.admm.rho))
    costs = admm_svm.worker_costs(st.train, new.z, st.hyper.C)
    return (admm_svm.State(new, state.epoch + 1),
            admm_svm.outputs(None, st.test, state.epoch, new, info, costs))


def _group_top(st: admm_svm.Setup, gamma, per_rho, state: admm_svm.State, member):
    h = state.admm
    new, info = admm.top_update(h, h.groups, st.train, st.top, member=member,
                                prox=_prox(gamma, per_rho, h.rho))
    costs = admm_svm.worker_costs(st.train, new.z, st.hyper.C).reshape(-1)
    return (admm_svm.State(new, state.epoch + 1),
            admm_svm.outputs(None, st.test, state.epoch, new, info, costs))


class Loop:
    """The host side: the clock's updates, the z each sender started from, each
    worker's latest x_i (flat; a group's latest z_g is in its state)."""

    def __init__(self, cfg: RunConfig, st: admm_svm.Setup, clock: schedule.Clock,
                 compiler: Compiler, state: admm_svm.State):
        self.cfg, self.st, self.clock = cfg, st, clock
        self.grouped = len(st.groups) > 1
        self.n = len(st.groups) if self.grouped else cfg.n_workers
        self.hist = {0: jnp.copy(state.admm.z)}
        step = functools.partial(admm_svm.step, "samples", self.grouped, st.kappa, None,
                                 st.hyper, st.top, admm.masked_sum)
        self.step = jax.jit(step, donate_argnums=0)
        run = cfg.run
        self.always_sync = run.buffer == self.n or (run.staleness == 0
                                                    and run.stale_policy == "wait")
        if self.always_sync:
            self.step = compiler(self.step, state, (st.train, st.test))
        job = _group_job if self.grouped else _flat_job
        self.job = jax.jit(functools.partial(job, st))
        gamma = cfg.master.prox  # else a multiple of rho (the top's rho with groups)
        per_rho = schedule.default_prox(1.0, self.n, run.buffer, run.staleness)
        self.top = jax.jit(functools.partial(_group_top if self.grouped else _flat_top, st,
                                             gamma, per_rho))
        self.x = None if self.grouped else jnp.zeros_like(state.admm.u)  # x_i^0 = 0

    def apply(self, state: admm_svm.State, upd: schedule.Update):
        v, n = upd.version - 1, self.n
        member = np.zeros(n, bool)
        member[list(upd.members)] = True
        if (member.all() and all(s == v for s in upd.starts) and not upd.dropped):
            if not (self.grouped or self.always_sync):  # keep each x_i for later updates
                self.x = self.job(state, state.admm.z)[0]
            state, out = self.step(state, (self.st.train, self.st.test))
        else:
            state, out = self._general(state, upd, member)
        self.hist[upd.version] = jnp.copy(state.admm.z)
        keep_versions(self.hist, self.clock)
        out = dict(jax.device_get(out))
        out.update(update=upd, member=member)
        return state, out

    def _general(self, state: admm_svm.State, upd: schedule.Update, member: np.ndarray):
        jobs = [*zip(upd.members, upd.starts, strict=True), *upd.dropped]
        for s in sorted({s for _, s in jobs}):  # oldest start first
            touched = np.zeros(self.n, bool)
            touched[[k for k, s2 in jobs if s2 == s]] = True
            mask = jnp.asarray(touched)
            if self.grouped:
                groups = self.job(state, self.hist[s])
                h = state.admm
                state = state._replace(admm=h._replace(groups=rows_where(mask, groups,
                                                                          h.groups)))
            else:
                x, alpha = self.job(state, self.hist[s])
                self.x = rows_where(mask, x, self.x)
                c = state.admm
                state = state._replace(admm=c._replace(alpha=rows_where(mask, alpha,
                                                                         c.alpha)))
        if self.grouped:
            return self.top(state, jnp.asarray(member))
        return self.top(state, self.x, jnp.asarray(member))


def make(cfg: RunConfig, host: Host, placement: Placement) -> Algorithm:
    """The ADMM SVM (samples split, flat or in groups) with an asynchronous master."""
    run = cfg.run
    st = admm_svm.setup(cfg, host, placement)
    grouped = len(st.groups) > 1
    k, p = st.k, st.p
    rows = np.array([len(pt) for pt in host.parts], np.float64)
    one = admm_svm.iteration_bytes("samples", 1, k, p)[0]
    link = one.total / run.bandwidth + 2 * run.latency
    if grouped:
        inner = [admm_svm.iteration_bytes("samples", len(g), k, p)[0] for g in st.groups]
        work = st.kappa * np.array([rows[list(g)].max() for g in st.groups])
        link = link + st.kappa * (np.array([b.total for b in inner]) / run.group_bandwidth
                                  + 2 * run.group_latency)
    else:
        inner, work = None, rows
    n = len(st.groups) if grouped else cfg.n_workers
    speeds = schedule.parse_speeds(run.speeds, n, run.seed)
    unit = run.unit_seconds or schedule.unit_seconds(k * p)
    clock = schedule.Clock(schedule.durations(speeds, work, unit, link), run.buffer,
                           run.staleness, run.stale_policy)
    compiler = Compiler()
    state = st.init()
    loop = Loop(cfg, st, clock, compiler, state)
    last = {"clock": 0.0}

    def record(out: dict[str, Any], wall_s: float) -> dict[str, Any]:
        upd: schedule.Update = out["update"]
        busy = [*upd.members, *(i for i, _ in upd.dropped)]
        top = admm_svm.iteration_bytes("samples", len(busy), k, p)[0]
        levels = None
        if grouped:
            group = codec.EpochBytes(*(run.group_epochs * sum(v) for v in zip(
                *(inner[i] for i in busy), strict=True)))
            levels = (group, top)
            top = admm_svm.add_bytes(group, top)
        rec = admm_svm.make_record(cfg, top, 2, rows, st.costs_of, levels)(out, wall_s)
        rec["modeled_s"] = upd.time - last["clock"]
        last["clock"] = upd.time
        return {**rec, **clock_fields(upd)}

    return Algorithm(lambda: state, None, (st.train, st.test), record,
                     lambda s: admm_svm.weights_of(None, s.admm).reshape(-1),
                     list(placement.devices), k * p, clock_runner(loop.apply, clock, compiler))


__all__ = ["Loop", "make"]
