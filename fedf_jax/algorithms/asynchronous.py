"""The asynchronous top level (``--schedule async``, DESIGN §8): FEDF and FedAvg whose
senders (flat workers, or group masters with ``--groups``) run at their own speeds.

A wrapper over the synchronous algorithm, not a copy: a sender's job is the
algorithm's own workers' side (flat: every worker trains, costs and packs, Eq. 4/5;
two levels: every group's inner epochs, ``hierarchy.groups_side``) run from the model
the sender was sent, and :mod:`fedf_jax.schedule` decides when the top applies which
arrivals. The top's rule, for the buffer B of an update (version v -> v + 1; member k
trained from P^{s_k}, staleness tau_k = v - s_k, FedAsync's weight s(tau)):

- **FEDF**: the pilot is chosen among B by Eq. (1) on each member's own costs (S_k /
  C_k at its first report, S_k (C_k' - C_k) after, C_k' its previous report). Each
  other member's ternary was taken against the two models it holds, the one it
  started from and the one it was sent before (P^{s_k}, P^{r_k}; as a FEDF worker
  holds P^{t-1} and P^{t-2}; Eq. 4 when s_k = 0, Eq. 5 after), and Eq. (3) adds its
  vote with that step: F = R* + d sum_{k in B, k != k*} p_k beta_k T_k (P^{s_k} -
  P^{r_k}) (alpha0 p_k T_k when s_k = 0), p_k = S_k / sum_B S, and R* the pilot's
  model (P^v + Q* - P^{s*} when it is stale). Then P^{v+1} = (1 - a) P^v + a F with
  a = mixing s(tau*) (a = 1 by default).
- **FedAvg**: with ``--buffer 1`` (FedAsync, Xie et al. 2019) P^{v+1} = (1 - a) P^v +
  a Q_k, a = mixing s(tau_k); with a larger buffer (FedBuff, Nguyen et al. 2022) each
  member brings R_k = P^v + Q_k - P^{s_k} (its change, on the current model) and
  P^{v+1} = (1 - a) P^v + a sum_B w_k R_k, w_k = S_k s(tau_k) / sum_B S_j s(tau_j),
  a = mixing sum_B S_k s(tau_k) / sum_B S_k.

An update whose buffer holds every sender, none stale, with ``mixing`` 1, runs the
synchronous algorithm's own epoch step: ``--staleness 0`` (or ``--buffer`` = every
sender) is the synchronous run, bit for bit. The secure sums compose: FEDF's vote sum
of the members that started from one model goes through the same secure layer.

Each applied update is one run-log line (``epoch`` = the version it makes) with
``clock_s`` (virtual seconds), ``senders``, ``staleness`` and ``stale_dropped``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedf_jax import codec, master, protocol, schedule, timing, worker
from fedf_jax.algorithms import fedavg, fedf, hierarchy
from fedf_jax.algorithms import secure as secure_sums
from fedf_jax.algorithms.async_senders import Parts, Sent, flat_parts, group_parts
from fedf_jax.algorithms.common import (
    clock_fields,
    clock_runner,
    epoch_record,
    keep_versions,
    model_exchange_bytes,
    rows_where,
)
from fedf_jax.config import RunConfig
from fedf_jax.harness import Algorithm, Compiler, Host
from fedf_jax.layout import Placement


def _model(top) -> jax.Array:
    return top.p_prev if isinstance(top, master.MasterState) else top.p


def _at(top, p, p2, epoch):
    """The top state as it was at a version: its model p, the one before p2, the epoch."""
    if isinstance(top, master.MasterState):
        return top._replace(p_prev=p, p_prev2=p2, epoch=jnp.int32(epoch))
    return top._replace(p=p, epoch=jnp.int32(epoch))


# --- The top's rules on a buffer (the general case) -------------------------------------


@jax.jit
def pick(costs, prev, first, sizes, member):
    """Eq. (1) over the buffer: each member's first report S/C, later ones S (C' - C)."""
    g = jnp.where(first, protocol.goodness(costs, prev, sizes, 1),
                  protocol.goodness(costs, prev, sizes, 2))
    g = jnp.where(member, g, jnp.nan)
    return g, protocol.select_pilot(g), member & jnp.isfinite(costs)


@jax.jit
def _rebase(p, q, p_start, fresh):
    """A stale arrival's model on the current one: P^v + Q - P^{s}; Q itself when fresh."""
    return jnp.where(fresh, q, p + (q - p_start))


@jax.jit
def _mix(p, f, a):
    """(1 - a) P + a F; F itself at a = 1."""
    return jnp.where(a == 1, f, (1 - a) * p + a * f)


def fedf_top(cfg: RunConfig, parts: Parts, hist: dict[int, jax.Array], v: int,
             sent: Sent, member: np.ndarray, starts: np.ndarray, prevs: np.ndarray,
             prev: np.ndarray,
             first: np.ndarray) -> tuple[jax.Array, dict]:
    """FEDF's rule on the buffer (module docstring): (P^{v+1}, outputs)."""
    mc = cfg.master
    m = jnp.asarray(member)
    g, pilot, valid = pick(sent.costs, jnp.asarray(prev, jnp.float32), jnp.asarray(first),
                            parts.sizes, m)
    k = int(pilot)
    p = hist[v]
    out = {"goodness": g, "pilot": pilot, "valid": valid}
    if k < 0:
        return p, out
    s_k = int(starts[k])
    total = _rebase(p, sent.q[k], hist[s_k], s_k == v)
    sizes = jnp.where(m, parts.sizes, 0.0)
    zeros = jnp.zeros_like(p)
    rounds = []
    for s, pv in sorted({(int(a), int(b)) for a, b in zip(starts[member], prevs[member],
                                                          strict=True)}):
        alike = member & (starts == s) & (prevs == pv)  # they hold the same two models
        mask = valid & jnp.asarray(alike)
        if parts.secure is None:
            inc = protocol.unpack_update(zeros, sent.packed, sizes, pilot, hist[s], hist[pv],
                                         mc.alpha0, parts.betas, s + 1,
                                         direction=mc.direction, scheme=mc.scheme, mask=mask)
        else:  # their vote sum through the secure layer
            rows, c = protocol.integer_votes(sent.packed, p.shape[-1], sizes, pilot,
                                             mc.alpha0, parts.betas, s + 1, mc.scheme, mask,
                                             parts.secure.frac_bits)
            idx = np.flatnonzero(alike)
            rounds.append(len(idx))
            inc = protocol.apply_votes(zeros, parts.secure.total(rows[idx], jnp.int32(s + 1)),
                                       c, hist[s], hist[pv], s + 1, mc.direction)
        total = total + inc
    a = cfg.run.mixing * float(schedule.staleness_weight(cfg.run.staleness_fn, v - s_k))
    out["secure_rounds"] = rounds
    return _mix(p, total, jnp.float32(a)), out


def fedavg_top(cfg: RunConfig, parts: Parts, hist: dict[int, jax.Array], v: int,
               sent: Sent, member: np.ndarray, starts: np.ndarray) -> tuple[jax.Array, dict]:
    """FedAsync (``--buffer 1``) or FedBuff's rule on the buffer (module docstring)."""
    p = hist[v]
    finite = jnp.all(jnp.isfinite(sent.q), axis=1)
    use = jnp.asarray(member) & finite
    s_tau = jnp.asarray(schedule.staleness_weight(cfg.run.staleness_fn,
                                                  np.maximum(v - starts, 0)), jnp.float32)
    w = jnp.where(use, parts.sizes * s_tau, 0.0)
    q = sent.q
    if cfg.run.buffer > 1:  # FedBuff: each member's change, on the current model
        start_models = jnp.stack([hist[int(s)] for s in np.where(member, starts, v)])
        q = _rebase(p[None], q, start_models, jnp.asarray(starts == v)[:, None])
    avg = fedavg.average(p, q, w, use)
    used = float(jnp.sum(jnp.where(use, parts.sizes, 0.0)))
    a = cfg.run.mixing * (float(jnp.sum(w)) / used if used > 0 else 1.0)
    return _mix(p, avg, jnp.float32(a)), {"finite": finite}


# --- The loop ----------------------------------------------------------------------------


class Loop:
    """The host side of an asynchronous run: the clock, the models senders started from,
    and each update (the synchronous step when it is one, else the rules above)."""

    def __init__(self, cfg: RunConfig, parts: Parts, data, clock: schedule.Clock,
                 p0: jax.Array, model, compiler: Compiler, state):
        self.cfg, self.parts, self.data, self.clock, self.model = cfg, parts, data, clock, model
        self.hist = {0: jnp.array(p0, jnp.float32)}
        self.reported = np.zeros(parts.n, bool)
        self.prev = np.full(parts.n, np.nan, np.float32)
        self.step = jax.jit(parts.step, donate_argnums=0)
        self.send = jax.jit(parts.send)
        run = cfg.run
        if run.buffer == parts.n or (run.staleness == 0 and run.stale_policy == "wait"):
            self.step = compiler(self.step, state, data)  # every update is synchronous
        else:
            self.send = compiler(self.send, state, data, donated=())
        self.keep = jax.jit(parts.keep)
        self.evaluate = jax.jit(functools.partial(worker.evaluate, model),
                                static_argnames=("chunk",))

    def synchronous(self, upd: schedule.Update) -> bool:
        n, v = self.parts.n, upd.version - 1
        return (len(upd.members) == n and all(s == v for s in upd.starts) and not upd.dropped
                and self.cfg.run.mixing == 1.0 and (v == 0 or self.reported.all()))

    def apply(self, state, upd: schedule.Update):
        """One update: (state, host outputs)."""
        v, n = upd.version - 1, self.parts.n
        member = np.zeros(n, bool)
        member[list(upd.members)] = True
        starts, prevs = np.full(n, v, np.int64), np.full(n, v, np.int64)
        starts[list(upd.members)] = upd.starts
        prevs[list(upd.members)] = upd.prevs
        if self.synchronous(upd):
            state, out = self.step(state, self.data)
            out = dict(jax.device_get(out))
            if "goodness" in out:  # a FEDF top: each sender's cost for its next Eq. (1)
                self.prev = np.asarray(jax.device_get(self.parts.top(state).prev_costs))
            p_new = _model(self.parts.top(state))
        else:
            state, p_new, out = self._general(state, upd, member, starts, prevs)
        self.reported |= member
        self.reported[[k for k, _ in upd.dropped]] = True  # their costs came in too
        self.hist[upd.version] = jnp.copy(p_new)  # the next step donates the state
        keep_versions(self.hist, self.clock)
        out.update(update=upd, member=member)
        return state, out

    def _general(self, state, upd: schedule.Update, member, starts, prevs):
        """The jobs of the members (and of the dropped arrivals), oldest start first, then
        the top's rule."""
        v, n, top = upd.version - 1, self.parts.n, self.parts.top(state)
        jobs = list(zip(upd.members, upd.starts, upd.prevs, strict=True))
        jobs += [(k, s, s) for k, s in upd.dropped]  # a dropped job's ternary is not used
        prev, first = self.prev.copy(), ~self.reported.copy()
        at_member_prev, at_member_first = prev.copy(), first.copy()
        merged = None
        for s, pv in sorted({(s, pv) for _, s, pv in jobs}):
            touched = np.zeros(n, bool)
            touched[[k for k, s2, pv2 in jobs if (s2, pv2) == (s, pv)]] = True
            mem_s = member & (starts == s) & touched
            new, sent = self.send(self.parts.with_top(state, _at(
                top, self.hist[s], self.hist[pv], s + 1)), self.data)
            state = self.keep(new, state, jnp.asarray(touched))
            merged = sent if merged is None else rows_where(jnp.asarray(touched), sent, merged)
            costs = np.asarray(sent.costs, np.float32)
            at_member_prev = np.where(mem_s, prev, at_member_prev)
            at_member_first = np.where(mem_s, first, at_member_first)
            prev = np.where(touched, costs, prev)
            first &= ~touched
        cfg = self.cfg
        if cfg.run.algorithm == "fedf":
            p_new, out = fedf_top(cfg, self.parts, self.hist, v, merged, member, starts,
                                  prevs, at_member_prev, at_member_first)
            self.prev = prev
            top = top._replace(p_prev=p_new, p_prev2=self.hist[v],
                               prev_costs=jnp.asarray(prev), epoch=jnp.int32(v + 2))
            out.update(costs=merged.costs, nonzero=merged.nonzero)
        else:
            p_new, out = fedavg_top(cfg, self.parts, self.hist, v, merged, member, starts)
            top = _at(top, p_new, p_new, v + 2)
            out["costs"] = merged.costs
        state = self.parts.with_top(state, top)
        loss, acc = self.evaluate(p_new, self.data.x_test, self.data.y_test,
                                  self.data.y_test.shape[0], chunk=self.parts.test_chunk)
        out = {**jax.device_get(out), **jax.device_get(merged.extra), "epoch": v + 1,
               "test_loss": loss, "test_accuracy": acc}
        return state, p_new, out


def _link_bytes(level_bytes: Callable[[int], codec.EpochBytes]) -> int:
    """One more sender's bytes in an epoch: its share of the top's exchange."""
    return level_bytes(2).total - level_bytes(1).total


def make(cfg: RunConfig, host: Host, placement: Placement) -> Algorithm:
    """``cfg.run.algorithm`` (fedf or fedavg, flat or in groups) with an asynchronous top."""
    run, m = cfg.run, host.model.num_params
    is_fedf = run.algorithm == "fedf"
    local = [s.local_epochs for s in cfg.specs]
    sizes = np.array([len(p) for p in host.parts], np.int64)
    work = timing.work_units(sizes, local, cost_pass=is_fedf)
    rounds = timing.ROUNDS if is_fedf else fedavg.LINK_ROUNDS
    if is_fedf:
        def level_bytes(k, has_pilot=True):
            return codec.epoch_bytes(m, k, cfg.master.scheme, has_pilot=has_pilot)
    else:
        def level_bytes(k, has_pilot=True):
            return model_exchange_bytes(m, k, k)
    link = _link_bytes(level_bytes) / run.bandwidth + rounds * run.latency
    if run.groups > 1:
        st = hierarchy.setup(cfg, host)
        parts, data, state = group_parts(cfg, st), st.groups.data, st.init()
        groups = cfg.group_workers()
        inner = [level_bytes(len(g)) for g in groups]
        work = st.kappa * np.array([work[list(g)].max() for g in groups])
        link = link + st.kappa * (np.array([b.total for b in inner]) / run.group_bandwidth
                                  + rounds * run.group_latency)
        where = st.groups
    else:
        w = host.workers(placement)
        parts, data = flat_parts(cfg, host, w), w.data
        state = (fedf.init(w.layout, w.data, host.p0) if is_fedf
                 else fedavg.init(w.layout, w.data, host.p0))
        inner, where = None, None
    speeds = schedule.parse_speeds(run.speeds, parts.n, run.seed)
    fetch = (level_bytes(1).up_model + codec.HEADER_SIZE) / run.bandwidth + 2 * run.latency
    unit = run.unit_seconds or schedule.unit_seconds(m)
    clock = schedule.Clock(schedule.durations(speeds, work, unit, link),
                           run.buffer, run.staleness, run.stale_policy,
                           fetch if is_fedf else 0.0)
    compiler = Compiler()
    loop = Loop(cfg, parts, data, clock, host.p0, host.model, compiler, state)
    return Algorithm(lambda: state, None, data, make_record(cfg, m, level_bytes, inner, where),
                     lambda s: _model(parts.top(s)), list(placement.devices), m,
                     clock_runner(loop.apply, clock, compiler))


def make_record(cfg: RunConfig, n_params: int, level_bytes: Callable, inner, groups):
    """The run-log line of one update (module docstring), from its host outputs."""
    run = cfg.run
    last = {"clock": 0.0}
    is_fedf = run.algorithm == "fedf"

    def record(out: dict[str, Any], wall_s: float) -> dict[str, Any]:
        upd: schedule.Update = out["update"]
        member = out["member"]
        n_b, drops = len(upd.members), len(upd.dropped)
        pilot = int(out.get("pilot", -1))
        top = level_bytes(n_b, has_pilot=pilot >= 0 or not is_fedf)
        drop = level_bytes(1, has_pilot=False)
        counted = codec.EpochBytes(*(a + drops * b for a, b in zip(top, drop, strict=True)))
        if groups is not None:
            out = hierarchy.in_worker_order(groups, cfg.n_workers, out)
            busy = [*upd.members, *(k for k, _ in upd.dropped)]
            group_bytes = codec.EpochBytes(*(run.group_epochs * sum(v) for v in zip(
                *(inner[k] for k in busy), strict=True)))
            top_total = counted.total
            counted = codec.EpochBytes(*(a + b for a, b in zip(counted, group_bytes,
                                                                strict=True)))
            in_group = np.zeros(cfg.n_workers, bool)  # the members' workers
            where = groups.where[member]
            in_group[where[where >= 0]] = True
        else:
            in_group = member
        costs = np.where(in_group, np.asarray(out["costs"], np.float64), np.nan)
        rec = epoch_record({**out, "costs": costs}, counted, wall_s,
                           upd.time - last["clock"], pilot=pilot,
                           goodness=(np.asarray(out["goodness"], np.float64)
                                     if "goodness" in out else None))
        last["clock"] = upd.time
        if is_fedf:
            valid = np.asarray(out["valid"], bool)
            sent = valid & member & (np.arange(len(member)) != pilot)
            rec["ternary_nonzero_fraction"] = (
                float(np.asarray(out["nonzero"])[sent].sum()) / (sent.sum() * n_params)
                if sent.any() else float("nan"))  # a buffer of the pilot alone: none
            rec["dropped"] = np.flatnonzero(member & ~valid).tolist()
            if cfg.master.secure_sum != "none":
                rounds = out.get("secure_rounds") or [n_b]
                rec = secure_sums.account(rec, [(r, n_params) for r in rounds],
                                          max(n_b - 1, 0) * (pilot >= 0))
        if groups is not None:
            rec.update(bytes_group=int(group_bytes.total), bytes_top=int(top_total))
            if "group_pilots" in out:
                rec["group_pilots"] = [int(p) for p in out["group_pilots"]]
        rec.update(clock_fields(upd))
        return rec

    return record


__all__ = ["Sent", "Parts", "flat_parts", "group_parts", "pick", "fedf_top", "fedavg_top", "Loop",
           "make", "make_record"]

