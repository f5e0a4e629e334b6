"""FEDF with an asynchronous top under MPI (``fedf train --schedule async --groups G``,
DESIGN §8): the top master applies the groups' contributions as they arrive.

The same run as ``fedf simulate --schedule async --groups G`` with real time in place
of the virtual clock. The top master (rank 0) sends P^0 to every group master, then
takes the group masters' costs as they come (``backends.mpi.p2p``: one posted receive
per running group, polled, each job under the link's deadline). An arrival joins the
buffer, or under ``--stale-policy drop`` is dropped when more than S updates stale
(its sender gets the current model and starts again). Once ``schedule.ready`` (the
rule of the virtual clock: ``--buffer`` arrivals and, under ``wait``, no running group
more than S stale after the update) the top picks the pilot among the buffer by
Eq. (1) on each member's own previous cost, commands SEND_MODEL to it and
SEND_TERNARY to the other members, reads their frames and reports, and makes
P^{v+1} with ``algorithms.asynchronous.fedf_top`` (each member's ternary against
the two models it holds, Eq. 3 per pair, a stale pilot rebased); the members then
start again from P^{v+1}. One run-log line per update, with ``clock_s`` (seconds since
P^0 went out), ``senders``, ``staleness`` and ``stale_dropped``. After ``--epochs``
updates every group master stops (a running one after its cost), and stops its
worker ranks.

A group master loops: a job (P^s, or stop) from the top, ``--group-epochs`` inner
epochs over its worker ranks (each job opened by a control message, as the ADMM
ranks' ``share``; the last one says stop), C_g up, the command, its frame (Q_g, or
its ternary against P^s and the top model it held before, Eq. 4 at s = 0), its report.
``--speeds``: a group master of speed f sleeps (f / f_min - 1) times its measured job
time after each job, so its jobs take f / f_min times as long as they do (f_min the
fastest group's speed; lognormal speeds too, ``schedule.parse_speeds``).

``--staleness 0`` (wait) or ``--buffer G`` holds every group in every update: the
synchronous run's pilots and model (to float32 rounding, as every MPI run).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedf_jax import codec, harness, layout, schedule, worker
from fedf_jax.algorithms import asynchronous
from fedf_jax.backends.mpi import frames, p2p
from fedf_jax.backends.mpi.faults import Fault, strikes
from fedf_jax.backends.mpi.link import Link
from fedf_jax.config import RunConfig
from fedf_jax.ranks.fedf import GroupMaster, WorkerRank, gather_holdings, hang

log = logging.getLogger(__name__)

_GO, _STOP = 1.0, 0.0  # a group's control to its worker ranks


def run_workers(cfg: RunConfig, link: Link, ids: Sequence[int], faults: Sequence[Fault], *,
                world_rank: int) -> None:
    """A worker rank of a group: ``--group-epochs`` epochs per control from its group
    master, until the control says stop."""
    rank = WorkerRank(cfg, link, ids, faults, world_rank=world_rank)
    ctrl, t = np.zeros(1, np.float64), 0
    while True:
        link.share(ctrl, "control")
        if ctrl[0] == _STOP:
            return
        for _ in range(cfg.run.group_epochs):
            t += 1
            rank.epoch(t)


def relative_speeds(cfg: RunConfig) -> np.ndarray:
    """f64[G] each group's job time relative to the fastest group's (>= 1)."""
    speeds = schedule.parse_speeds(cfg.run.speeds, cfg.run.groups, cfg.run.seed)
    return speeds / speeds.min()


def run_group_master(cfg: RunConfig, top: Link, group: Link, members: Sequence[int],
                     index: int, faults: Sequence[Fault], *, world_rank: int) -> None:
    """A group master: one job per model from the top, until the top says stop.

    Faults strike at the group master's j-th job (``raise:R:j``, ``hang:R:j``), just
    after its model came.
    """
    gm = GroupMaster(cfg, top, group, members, index, world_rank=world_rank)
    end = p2p.GroupEnd(top, gm.m, gm.width)
    slow = float(relative_speeds(cfg)[index])
    state, buf, job = gm.state, np.empty(gm.m, np.float32), 0
    while (version := end.recv_job(buf)) is not None:
        t, job = version + 1, job + 1
        top.epoch = t
        p_top = buf.copy()
        if strikes(faults, "raise", world_rank, job):
            raise RuntimeError(f"injected fault (raise:{world_rank}:{job})")
        if strikes(faults, "hang", world_rank, job):
            hang()
        t0 = time.perf_counter()
        group.share(np.array([_GO]), "control")
        state, last = gm.job(state, p_top, group.moved.pop("control", 0),
                             group.added.pop("control", 0))
        q = np.asarray(state.p_prev)
        packed = gm.vote(t, q, p_top)
        if slow > 1:  # a slower site: its job takes `slow` times as long
            time.sleep((slow - 1.0) * (time.perf_counter() - t0))
        end.send_cost(last["cost"], t)
        command = end.recv_command(t)
        if command == p2p.STOP:
            break
        frame, _ = gm.upload(t, command, q, packed, checksum=top.checksum)
        end.send_upload(frame, gm.report(last)[0], t)
        gm.p_top_last = p_top  # the model it held before its next one
    group.share(np.array([_STOP]), "control")


class _Where(NamedTuple):
    """Each group's global worker ids, -1 padded, i64[G, max n_g] (as ``layout.Groups``
    gives them to ``hierarchy.in_worker_order``)."""

    where: np.ndarray


class Top:
    """The top master of an asynchronous run: its buffer, the versions of its model
    that some group still holds, and one update per :meth:`update`.

    Args:
      cfg: the run; link: the top's link to the group masters.
      model, p0, x_test, y_test: the model, P^0 and the test set.
      sizes, betas: f32[G] each group's S_g and beta_g.
      compiler: compiles the test pass ahead of time.
    """

    def __init__(self, cfg: RunConfig, link: Link, model, p0, x_test, y_test, sizes, betas,
                 compiler: harness.Compiler, faults: Sequence[Fault] = ()):
        run = cfg.run
        self.cfg, self.link, self.faults = cfg, link, tuple(faults)
        self.groups = cfg.group_workers()
        g, self.m = len(self.groups), model.num_params
        width = max(len(w) for w in self.groups)
        self.end = p2p.TopEnd(link, self.m, width + 3)
        chunk = min(layout.EVAL_CHUNK, max(len(y_test), 1))
        self.parts = asynchronous.Parts(g, jnp.asarray(sizes, jnp.float32),
                                        jnp.asarray(betas, jnp.float32), None, None, None,
                                        None, None, None, chunk)
        self.test = (jnp.asarray(x_test), jnp.asarray(y_test, jnp.int32),
                     np.int32(len(y_test)))
        self.evaluate = compiler(jax.jit(functools.partial(worker.evaluate, model,
                                                           chunk=chunk)),
                                 jnp.asarray(p0, jnp.float32), *self.test, donated=())
        self.hist = {0: jnp.asarray(p0, jnp.float32)}  # version -> P^version still held
        self.version = 0
        self.start = np.zeros(g, np.int64)  # the version each group trains from
        self.prev = np.zeros(g, np.int64)  # the version it held before that
        self.last_cost = np.full(g, np.nan, np.float32)  # each group's previous report
        self.reported = np.zeros(g, bool)
        self.waiting: list[int] = []  # the buffer, in order of arrival
        self.arrived = np.full(g, np.nan, np.float32)  # the buffer's costs
        self.dropped: list[tuple[int, int]] = []  # (group, start) since the last update
        self.q = np.zeros((g, self.m), np.float32)  # the pilot's row is read
        self.packed = np.zeros((g, codec.packed_size(self.m, cfg.master.scheme)), np.uint8)
        self.group_bytes = np.zeros(2, np.int64)  # the groups' links: moved, sealing
        self.where = np.full((g, width), -1, np.int64)
        for i, w in enumerate(self.groups):
            self.where[i, :len(w)] = w
        self.bound, self.policy, self.buffer = run.staleness, run.stale_policy, run.buffer
        self.t0 = 0.0
        self._warm_up(compiler)

    def _warm_up(self, compiler: harness.Compiler) -> None:
        """The top's rule once on a made-up buffer, so that no update's time holds its
        compilation (its jitted steps trace the versions and the pilot as values)."""
        t0 = time.perf_counter()
        g = len(self.groups)
        every, zero = np.ones(g, bool), np.zeros(g, np.int64)
        packed = jnp.asarray(self.packed)
        sent = asynchronous.Sent(jnp.asarray(self.q), jnp.ones(g, jnp.float32), packed,
                                 codec.count_nonzero_jnp(packed, self.cfg.master.scheme), {})
        p, _ = asynchronous.fedf_top(self.cfg, self.parts, self.hist, 0, sent, every, zero,
                                     zero, self.last_cost, every)
        jax.block_until_ready(p)
        compiler.seconds += time.perf_counter() - t0

    # -- the loop

    def begin(self) -> None:
        """P^0 to every group master; the clock starts."""
        self.t0 = time.monotonic()
        self.end.send_jobs(range(len(self.groups)), 0, np.asarray(self.hist[0]))

    def advance(self, p, count: int):
        """``harness.Runner.advance``: ``count`` updates."""
        del p  # the top's model lives in ``hist``
        outs = [self.update() for _ in range(count)]
        return self.hist[self.version], outs

    def update(self) -> dict[str, Any]:
        """Arrivals until the buffer is ready, then one update: host outputs."""
        v, link = self.version, self.link
        link.epoch = v + 1
        if strikes(self.faults, "raise", 0, v + 1):
            raise RuntimeError(f"injected fault (raise:0:{v + 1})")
        while not schedule.ready(len(self.waiting), self.buffer, v,
                                 self.start[self.end.running()], self.bound, self.policy):
            self._arrive(*self.end.next_arrival())
        members = list(self.waiting)
        member = np.zeros(len(self.groups), bool)
        member[members] = True
        starts = np.where(member, self.start, v)
        prevs = np.where(member, self.prev, v)
        costs = np.where(member, self.arrived, np.nan).astype(np.float32)
        prev_cost, first = self.last_cost.copy(), ~self.reported
        # Eq. (1) over the buffer, as fedf_top will decide it (the same jitted rule).
        _, pilot, _ = asynchronous.pick(jnp.asarray(costs), jnp.asarray(prev_cost),
                                         jnp.asarray(first), self.parts.sizes,
                                         jnp.asarray(member))
        pilot = int(pilot)
        send = {k: (frames.SEND_NOTHING if pilot < 0 else codec.Command.SEND_MODEL
                    if k == pilot else codec.Command.SEND_TERNARY) for k in members}
        epochs = {k: int(starts[k]) + 1 for k in members}
        self.end.command(send, epochs)
        ups = self.end.collect(epochs)
        dropped_frames, pilot_ok = self._read(ups, send, epochs, pilot)
        sent = asynchronous.Sent(jnp.asarray(self.q), jnp.asarray(costs),
                                 jnp.asarray(self.packed),
                                 codec.count_nonzero_jnp(jnp.asarray(self.packed),
                                                         self.cfg.master.scheme), {})
        p_new, top = asynchronous.fedf_top(self.cfg, self.parts, self.hist, v, sent, member,
                                           starts, prevs, prev_cost, first)
        if int(top["pilot"]) != pilot:
            raise RuntimeError(f"update {v + 1}: the pilot is {int(top['pilot'])}, the "
                               f"commands went out for {pilot}.")
        if pilot >= 0 and not pilot_ok:  # the pilot's frame was dropped: P^{v+1} = P^v
            p_new = self.hist[v]
        loss, acc = self.evaluate(p_new, *self.test)
        self.last_cost[members] = costs[members]
        self.reported[members] = True
        self.version = v + 1
        self.hist[self.version] = p_new
        clock = time.monotonic() - self.t0
        upd = schedule.Update(self.version, clock, tuple(members),
                              tuple(int(starts[k]) for k in members), tuple(self.dropped),
                              tuple(int(prevs[k]) for k in members))
        out = {"update": upd, "member": member, "epoch": self.version, "pilot": pilot,
               "goodness": np.asarray(top["goodness"]), "valid": np.asarray(top["valid"]),
               "nonzero": np.asarray(sent.nonzero), "costs": costs,
               "test_loss": float(loss), "test_accuracy": float(acc),
               "dropped_frames": dropped_frames, **self._group_fields(ups), **self._bytes()}
        self.waiting, self.dropped = [], []
        self.arrived[:] = np.nan
        if self.version < self.cfg.run.epochs:
            self._restart(members)
        else:
            self.end.stop(members)
        for old in [k for k in self.hist if k < self.prev.min()]:
            del self.hist[old]  # no group holds it
        return out

    def _arrive(self, g: int, cost: float) -> None:
        """Group g's cost came: into the buffer, or dropped as too stale."""
        s = int(self.start[g])
        if not schedule.too_stale(self.version, s, self.bound, self.policy):
            self.waiting.append(g)
            self.arrived[g] = cost
            return
        self.end.command({g: frames.SEND_NOTHING}, {g: s + 1})
        report = self.end.collect({g: s + 1})[g].report
        self.group_bytes += report[-2:].astype(np.int64)
        self.last_cost[g], self.reported[g] = cost, True  # its next Eq. (1) starts here
        self.dropped.append((g, s))
        log.info("update %d: dropped group %d's arrival, %d updates stale (bound %d)",
                 self.version + 1, g, self.version - s, self.bound)
        self._restart([g])

    def _restart(self, groups: Sequence[int]) -> None:
        """The current model to these groups: their next jobs."""
        for g in groups:
            self.prev[g], self.start[g] = self.start[g], self.version
        self.end.send_jobs(groups, self.version, np.asarray(self.hist[self.version]))

    def _read(self, ups: dict[int, p2p.Upload], send: dict[int, int], epochs: dict[int, int],
              pilot: int) -> tuple[list[dict[str, Any]], bool]:
        """The members' frames into ``q`` (the pilot's) and ``packed`` (the others'); a
        frame that fails a check is dropped with its reason (its ternary counts as zero)."""
        dropped, pilot_ok = [], True
        checksum = self.link.checksum
        for g, up in ups.items():
            self.packed[g] = 0
            if send[g] == frames.SEND_NOTHING:
                continue
            try:
                if up.rejected or up.frame is None:
                    raise codec.FrameError(up.rejected or "no frame sent", g, epochs[g])
                got = frames.read_frame(up.frame, g == pilot, epochs[g], g, self.m,
                                        self.cfg.master.scheme, checksum)
                if g == pilot:
                    self.q[g] = got
                else:
                    self.packed[g] = got
            except codec.FrameError as e:
                pilot_ok &= g != pilot
                dropped.append({"worker": g, "reason": e.reason})
                log.warning("update %d: dropped the frame of group %d%s: %s", self.version + 1,
                            g, " (the pilot; P^{v+1} = P^v)" if g == pilot else "", e)
        return dropped, pilot_ok

    def _group_fields(self, ups: dict[int, p2p.Upload]) -> dict[str, Any]:
        """The members' reports: their workers' last costs and their pilots (positions in
        the group, -1: none), and the bytes of their links."""
        width = self.where.shape[1]
        costs = np.full((len(self.groups), width), np.nan)
        pilots = np.full(len(self.groups), -1, np.int64)
        for g, up in ups.items():
            costs[g] = up.report[:width]
            gid = int(up.report[-3])
            pilots[g] = self.groups[g].index(gid) if gid >= 0 else -1
            self.group_bytes += up.report[-2:].astype(np.int64)
        return {"group_costs": costs, "group_pilots": pilots}

    def _bytes(self) -> dict[str, Any]:
        """The bytes MPI moved for this update (the members' jobs, from their models
        down to their reports, and the stale drops since the last update), the groups'
        links included; the counters start again."""
        link = self.link
        detail = {**link.moved, "groups": int(self.group_bytes[0])}
        out = {"mpi_bytes": int(sum(detail.values())), "mpi_bytes_detail": detail,
               "bytes_aead": link.bytes_aead + int(self.group_bytes[1])}
        link.moved, link.added = {}, {}
        self.group_bytes[:] = 0
        return out

    def close(self) -> None:
        """Stops every group master still at work: a running one once its cost came."""
        for g in self.waiting:  # none after a full run; an update cut short leaves some
            self.end.command({g: p2p.STOP}, {g: int(self.start[g]) + 1})
        while self.end.running():
            g, _ = self.end.next_arrival()
            self.end.command({g: p2p.STOP}, {g: int(self.start[g]) + 1})


def run_top(cfg: RunConfig, link: Link, out: Path, header_extra: Callable[[list], dict],
            on_setup: Callable[[dict[str, Any]], None] | None,
            on_epoch: Callable[[dict[str, Any]], None] | None,
            faults: Sequence[Fault] = ()) -> dict[str, Any]:
    """Rank 0: the asynchronous top over the group masters; the run's summary."""
    host = harness.load(cfg)
    m, groups = host.model.num_params, cfg.group_workers()
    infos, sizes = gather_holdings(link, "groups")
    betas_w = cfg.master.betas(cfg.n_workers)
    betas = np.array([betas_w[list(g)].mean() for g in groups], np.float32)
    compiler = harness.Compiler()
    ds = host.dataset
    top = Top(cfg, link, host.model, host.p0, ds.x_test, ds.y_test, sizes, betas, compiler,
              faults)  # compiled before the start: every rank then waits under --timeout
    link.bcast_json({"out": str(out), "first_epoch": 1})
    extra = header_extra(infos)
    head = harness.header(cfg, host, m, extra.pop("devices"), compiler.seconds, backend="mpi",
                          **extra)
    if on_setup:
        on_setup({**head, "first_epoch": 1})

    def level_bytes(k, has_pilot=True):
        return codec.epoch_bytes(m, k, cfg.master.scheme, has_pilot=has_pilot)

    base = asynchronous.make_record(cfg, m, level_bytes, [level_bytes(len(g)) for g in groups],
                                    _Where(top.where))

    def record(out, wall_s):
        return {**base(out, wall_s), **{k: out[k] for k in (
            "dropped_frames", "mpi_bytes", "mpi_bytes_detail", "bytes_aead")}}

    top.begin()
    summary = harness.execute(
        cfg, harness.Runner(top.advance, 1, compiler.seconds), top.hist[0], record,
        lambda p: p, out_dir=out, head=head, num_params=m, num_classes=ds.num_classes,
        on_epoch=on_epoch,
        extra=lambda recs: {"mpi_bytes_total": int(sum(r["mpi_bytes"] for r in recs))})
    top.close()
    return summary


__all__ = ["run_workers", "relative_speeds", "run_group_master", "Top", "run_top"]
