"""FEDF's roles under MPI: the master over any link, a worker rank, a group master."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedf_jax import backends, checkpoint, codec, harness, layout, master, worker
from fedf_jax.algorithms import fedf
from fedf_jax.backends.mpi import frames, resume
from fedf_jax.backends.mpi.faults import Fault, strikes
from fedf_jax.backends.mpi.link import Link
from fedf_jax.config import MasterConfig, RunConfig
from fedf_jax.ranks import secure


def _finish_fn(model, cfg: MasterConfig, test_chunk: int, state, sel, costs, q_pilot,
               packed, frame_ok, pilot_ok, sizes, betas, x_test, y_test):
    """The master after the frames: Eq. (3) over the accepted frames (and the test
    metrics when there is a test set).

    Dropped ternaries join the non-finite costs in the mask; a dropped pilot model
    counts as no usable pilot (P^t = P^{t-1}), as in ``master.update``.
    """
    sel = sel._replace(valid=sel.valid & frame_ok, pilot=jnp.where(pilot_ok, sel.pilot, -1))
    nonzero = codec.count_nonzero_jnp(packed, cfg.scheme)
    guarded = (fedf.guard_outputs(state, sel, q_pilot, packed, betas, cfg) if cfg.pilot_guard
               else {})
    if x_test is None:
        new, metrics = master.update(state, sel, costs, q_pilot, packed, sizes, betas, cfg), ()
    else:
        new, *metrics = fedf.conclude(model, test_chunk, cfg, state, sel, costs, q_pilot,
                                      packed, sizes, betas, x_test, y_test)
    return new, tuple(metrics), nonzero, guarded


class Master:
    """FEDF's master over a link: one epoch of messages and Eq. (1), (3) per call.

    Args:
      link: the master's end (rank 0 of its communicator).
      cfg: the master's settings; n_params: M.
      sizes, betas: f32[N] of the link's workers (for the top: the groups').
      model, x_test, y_test: for the test metrics of P^t (None: no test pass).
      compiler: compiles the two jitted steps ahead of time.
    """

    def __init__(self, link: Link, cfg: MasterConfig, n_params: int, sizes, betas, state,
                 compiler: harness.Compiler, model=None, x_test=None, y_test=None):
        n, self.m = link.layout.n_workers, n_params
        self.link, self.cfg, self.n = link, cfg, n
        self.senders = [k for ids in link.layout.ids for k in ids]  # the frames' sender ids
        self.sizes = jnp.asarray(sizes, jnp.float32)
        self.betas = jnp.asarray(betas, jnp.float32)
        self.test = (x_test, y_test)
        self.packed = np.zeros((n, codec.packed_size(n_params, cfg.scheme)), np.uint8)
        self.q_none = np.zeros(n_params, np.float32)
        costs0 = np.zeros(n, np.float32)
        self.select = compiler(jax.jit(functools.partial(master.select, cfg=cfg)), state,
                               costs0, self.sizes, donated=())
        sel0 = self.select(state, costs0, self.sizes)
        # --secure-sum secagg: the others' votes summed by ``secure``, Eq. (3) there
        self.secure = (secure.Server(link, cfg, n_params, self.sizes, self.betas, state, sel0,
                                     compiler, model, x_test, y_test)
                       if cfg.secure_sum == "secagg" else None)
        if self.secure is None:
            test_chunk = (min(layout.EVAL_CHUNK, max(len(y_test), 1)) if y_test is not None
                          else 1)
            self.finish = compiler(
                jax.jit(functools.partial(_finish_fn, model, cfg, test_chunk)), state, sel0,
                costs0, self.q_none, self.packed, np.ones(n, bool), np.bool_(True), self.sizes,
                self.betas, x_test, y_test, donated=())

    def epoch(self, state: master.MasterState) -> tuple[master.MasterState, dict[str, Any]]:
        """Model down, costs up, pilot, commands, frames, Eq. (3); host outputs."""
        link, m, t = self.link, self.m, int(state.epoch)
        costs = link.model_down_costs_up(np.asarray(state.p_prev)).astype(np.float32)
        sel = self.select(state, costs, self.sizes)
        pilot = int(sel.pilot)
        lengths = link.commands_down_lengths_up(frames.commands(self.n, pilot))
        frames.check_lengths(lengths, link.layout.starts, codec.HEADER_SIZE + 4 * m)
        if self.secure is not None:  # the pilot's frame; the others vote through secagg
            up, done = self.secure.epoch(state, sel, costs, link.frames_up(lengths), lengths,
                                         pilot)
        else:
            up = frames.decode_frames(link.frames_up(lengths), lengths, pilot, t, m,
                                      self.cfg.scheme, self.packed, self.senders,
                                      link.rejected, link.checksum)
            pilot_ok = pilot >= 0 and up.q_pilot is not None
            done = self.finish(state, sel, costs, up.q_pilot if pilot_ok else self.q_none,
                               up.packed, up.ok, np.bool_(pilot_ok), self.sizes, self.betas,
                               *self.test)
        state, metrics, nonzero, extra = done
        out = jax.device_get({"costs": costs, "goodness": sel.goodness, "valid": sel.valid,
                              "nonzero": nonzero, **extra})
        if metrics:
            out.update(test_loss=float(metrics[0]), test_accuracy=float(metrics[1]))
        return state, {**out, "epoch": t, "pilot": pilot, "frame_ok": up.ok,
                       "dropped_frames": up.dropped, "mpi_bytes": int(sum(link.moved.values())),
                       "mpi_bytes_detail": dict(link.moved), "bytes_aead": link.bytes_aead}


def _worker_step(model, lay: layout.Layout, scheme: str, spread, p_prev, p_prev2, epoch,
                 opt_states, data: layout.Data):
    """A worker rank's side of one epoch: FEDF's workers side for the rank's workers.

    Returns:
      (qs, costs, packed, opt_states): the local models per cohort (they stay on the
      device; only the pilot's row is read), f32[n] and u8[n, packed_size(M)] in the
      rank's worker order, the new optimizer states.
    """
    outs = fedf.workers_side(model, lay, scheme, spread, p_prev, p_prev2, epoch, opt_states,
                             data)
    return (tuple(o.q for o in outs), layout.to_workers(lay, [o.costs for o in outs]),
            layout.to_workers(lay, [o.packed for o in outs]), tuple(o.opt_state for o in outs))


class WorkerRank:
    """A worker rank: its workers' data placed once (only their samples stay), its jitted
    step, and FEDF's workers side of one epoch per :meth:`epoch`.

    Construction runs the start-up exchange (the rank's description up, the run's start
    down) and, on a resume, restores the rank's optimizer states and last model.
    """

    def __init__(self, cfg: RunConfig, link: Link, ids: Sequence[int],
                 faults: Sequence[Fault], *, world_rank: int, period: int = 1):
        host = harness.load(cfg)
        ds = host.dataset
        placement = backends.placement(cfg.run.backend, cfg.run.devices)
        w = layout.build([cfg.specs[k] for k in ids], ds.x_train, ds.y_train,
                         [host.parts[k] for k in ids],
                         betas=cfg.master.betas(cfg.n_workers)[list(ids)],
                         x_test=ds.x_test[:1], y_test=ds.y_test[:1], train_key=host.train_key,
                         ids=ids, augment=cfg.data.augment, placement=placement)
        model, p0 = host.model, host.p0
        all_sizes = [len(p) for p in host.parts]
        del host, ds  # only this rank's workers' samples stay (on the device)
        self.cfg, self.link, self.ids, self.faults = cfg, link, list(ids), tuple(faults)
        self.world_rank, self.data, self.m = world_rank, w.data, model.num_params
        self.opt_states = jax.tree.map(placement.put_rows,
                                       layout.init_opt_states(w.layout, w.data, p0))
        self.step = jax.jit(functools.partial(_worker_step, model, w.layout, cfg.master.scheme,
                                              placement.spread), donate_argnums=3).lower(
            p0, p0, jnp.int32(1), self.opt_states, w.data).compile()
        # Run once on copies, and read a row of each cohort's models as the pilot's is
        # read (an index op, compiled on first use), so that no epoch's time holds either.
        qs = self.step(p0, p0, jnp.int32(1), jax.tree.map(lambda a: a.copy(), self.opt_states),
                       w.data)[0]
        for q in qs:
            np.asarray(q[0])
        self.where = {k: (c, r) for c, co in enumerate(w.layout.cohorts)
                      for r, k in enumerate(co.rows)}
        self.secure = (secure.Clients(link, cfg, ids, all_sizes, self.m)
                       if cfg.master.secure_sum == "secagg" else None)

        link.gather_json({"rank": world_rank, "host": _host(), "ids": list(ids),
                          "sizes": w.sizes.tolist(), "devices": list(placement.devices)})
        start = link.bcast_json(None)
        if start.get("error"):
            raise resume.ResumeError(start["error"])
        self.out, self.first = Path(start["out"]), int(start["first_epoch"])
        self.p_last = None
        if self.first > 1:  # resume: this rank's optimizer states and the model it last got
            arrays, meta = checkpoint.load(resume.file(self.out, world_rank,
                                                       (self.first - 1) // period))
            if meta.get("ids") != list(ids):
                raise ValueError(f"checkpoint of rank {world_rank} holds workers "
                                 f"{meta.get('ids')}, this run gives the rank workers "
                                 f"{list(ids)}.")
            self.opt_states = checkpoint.restore_tree(self.opt_states, arrays, "opt")
            self.p_last = jnp.asarray(arrays["p_last"])
        # P^{t-1} and P^{t-2} live in two buffers (a jax array of one may share its memory)
        self.slots = [np.empty(self.m, np.float32), np.empty(self.m, np.float32)]

    def epoch(self, t: int) -> None:
        """Epoch t: P^{t-1} in, the workers' training, costs up, frames up by command."""
        link, faults, ids, m = self.link, self.faults, self.ids, self.m
        link.epoch = t
        buf = self.slots[t % 2]
        link.recv_model(buf)
        p = jnp.asarray(buf)
        if strikes(faults, "raise", self.world_rank, t):
            raise RuntimeError(f"injected fault (raise:{self.world_rank}:{t})")
        if strikes(faults, "hang", self.world_rank, t):
            hang()
        qs, costs, packed, self.opt_states = self.step(
            p, p if self.p_last is None else self.p_last, np.int32(t), self.opt_states,
            self.data)
        link.send_costs(np.asarray(costs, np.float64))
        where, cmds = self.where, link.recv_commands()
        buf, lengths = frames.encode_frames(
            t, ids, cmds if self.secure is None else self.secure.frame_commands(cmds),
            np.asarray(packed),
            lambda i, qs=qs: qs[where[i][0]][where[i][1]], m, self.cfg.master.scheme,
            alloc=link.upload_buffer, checksum=link.checksum)
        for i, k in enumerate(ids):
            if strikes(faults, "corrupt", k, t) and lengths[i]:
                buf[int(lengths[:i].sum()) + codec.HEADER_SIZE] ^= 0xFF  # first payload byte
        link.send_frames(buf, lengths)
        if self.secure is not None:  # the others' votes through secure aggregation
            self.secure.vote(t, cmds, np.asarray(packed), np.asarray(costs))
        self.p_last = p

    def save(self, unit: int) -> None:
        """This rank's checkpoint of ``unit`` (an epoch, or an outer epoch), acknowledged."""
        checkpoint.save(resume.file(self.out, self.world_rank, unit),
                        {**checkpoint.tree_arrays(self.opt_states, "opt"),
                         "p_last": np.asarray(self.p_last)},
                        {"rank": self.world_rank, "epoch": unit, "ids": self.ids})
        self.link.epoch = unit
        self.link.send_ack()
        resume.prune(self.out, self.world_rank)


def gather_holdings(link: Link, noun: str = "workers") -> tuple[list[dict], np.ndarray]:
    """Rank 0: every rank's start-up description, checked against the layout (each rank
    holds the ``noun`` it should), and f64[N] the sizes of all it holds, in order."""
    infos = link.gather_json(None)
    for r, info in enumerate(infos, 1):
        if info["ids"] != list(link.layout.ids[r]):
            raise RuntimeError(f"rank {r} holds {noun} {info['ids']}, expected "
                               f"{list(link.layout.ids[r])}.")
    return infos, np.concatenate([np.asarray(i["sizes"], np.float64) for i in infos])


def hang() -> None:
    """A silent rank (test fault): the waiting side's deadline must catch it."""
    while True:
        time.sleep(3600)


def run_workers(cfg: RunConfig, link: Link, ids: Sequence[int], faults: Sequence[Fault],
                checkpoint_every: int | None, *, world_rank: int, period: int = 1) -> None:
    """A worker rank: its workers' data placed once, then one epoch per model received.

    ``period``: epochs per checkpoint unit (a group's inner epochs per outer epoch);
    a checkpoint is written after every ``checkpoint_every`` units.
    """
    rank = WorkerRank(cfg, link, ids, faults, world_rank=world_rank, period=period)
    for t in range(rank.first, cfg.run.epochs * period + 1):
        rank.epoch(t)
        unit, rest = divmod(t, period)
        if checkpoint_every and not rest and unit % checkpoint_every == 0:
            rank.save(unit)


class GroupMaster:
    """A group master: the master of its group's worker ranks, one worker of the top.

    Construction runs the start-up exchange with both links (the group's description
    up to the top, the run's start down to the group) and, on a resume, restores the
    group master's state. :meth:`job` runs the group's inner epochs from a top model;
    :meth:`upload` and :meth:`report` make what it sends the top after a command.

    Args:
      top, group: its links to the top (a worker end) and to its worker ranks (the master
        end); members: the group's global worker ids; index: the group's.
    """

    def __init__(self, cfg: RunConfig, top: Link, group: Link, members: Sequence[int],
                 index: int, *, world_rank: int):
        m_cfg = cfg.master
        host = harness.load(cfg)
        self.m, self.p0 = host.model.num_params, host.p0
        del host
        self.cfg, self.top, self.group = cfg, top, group
        self.members, self.index, self.world_rank = list(members), index, world_rank
        infos = group.gather_json(None)
        self.sizes = np.concatenate([np.asarray(i["sizes"], np.float64) for i in infos])
        betas = m_cfg.betas(cfg.n_workers)[list(members)]
        self.state = master.init(self.p0, len(members))
        self.inner = Master(group, m_cfg, self.m, self.sizes, betas, self.state,
                            harness.Compiler())
        self._ternary = jax.jit(worker.ternary_message, static_argnums=6)
        self.beta_g = np.float32(betas.mean())
        p0 = np.asarray(self.p0, np.float32)  # compiled before the start, not in a job
        jax.block_until_ready(self._ternary(p0, p0, p0, m_cfg.alpha0, self.beta_g,
                                            np.int32(1), m_cfg.scheme))
        top.gather_json({"rank": world_rank, "host": _host(), "ids": [index],
                         "sizes": [float(self.sizes.sum())],
                         "devices": [str(d) for d in jax.devices()], "group": infos})
        start = top.bcast_json(None)
        if start.get("error"):
            group.bcast_json(start)
            raise resume.ResumeError(start["error"])
        self.out, self.first = Path(start["out"]), int(start["first_epoch"])
        kappa = cfg.run.group_epochs
        group.bcast_json({"out": str(self.out), "first_epoch": (self.first - 1) * kappa + 1})
        self.p_top_last = np.asarray(self.p0, np.float32)
        if self.first > 1:
            arrays, _ = checkpoint.load(resume.file(self.out, world_rank, self.first - 1))
            self.state = master.MasterState(*(jnp.asarray(arrays[k])
                                              for k in master.MasterState._fields))
            self.p_top_last = arrays["p_top_last"]
        # one row per group of the top's reports: costs (NaN-padded), pilot, bytes, sealing
        self.width = max(len(g) for g in cfg.group_workers()) + 3

    def job(self, state: master.MasterState, p_top: np.ndarray, moved: int = 0,
            sealing: int = 0) -> tuple[master.MasterState, dict[str, Any]]:
        """``--group-epochs`` inner epochs from the top's model (the group's P^{t-1}; its
        P^{t-2} stays the model its workers last trained from); the last inner epoch's
        outputs with ``cost`` C_g (the S_k-weighted mean of the finite last costs),
        ``moved`` and ``sealing`` (bytes on the group's link, added to those given)."""
        state = state._replace(p_prev=jnp.asarray(p_top))
        for _ in range(self.cfg.run.group_epochs):
            self.group.epoch = int(state.epoch)
            state, last = self.inner.epoch(state)
            moved, sealing = moved + last["mpi_bytes"], sealing + last["bytes_aead"]
        sizes = self.sizes
        ok = np.isfinite(last["costs"]) & (sizes > 0)
        cost = ((sizes[ok] * last["costs"][ok]).sum() / sizes[ok].sum()) if ok.any() else np.nan
        return state, {**last, "cost": cost, "moved": moved, "sealing": sealing}

    def vote(self, t: int, q: np.ndarray, p_top: np.ndarray) -> jax.Array:
        """u8[packed_size(M)]: the ternary of Q_g against the top's model it trained from
        and the one before (epoch t; threshold alpha0, Eq. 4/5)."""
        m_cfg = self.cfg.master
        packed, _ = self._ternary(q, p_top, self.p_top_last, m_cfg.alpha0, self.beta_g,
                                  np.int32(t), m_cfg.scheme)
        return packed

    def upload(self, t: int, command: int, q: np.ndarray, packed, alloc=None,
               checksum: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The group's frame of epoch t by the top's command: Q_g, or its ternary
        (:meth:`vote`), or none (``SEND_NOTHING``)."""
        return frames.encode_frames(t, [self.index], np.array([command], np.uint8),
                                    np.asarray(packed)[None], lambda i, q=q: q, self.m,
                                    self.cfg.master.scheme, alloc=alloc, checksum=checksum)

    def report(self, last: dict[str, Any]) -> np.ndarray:
        """f64[1, width]: the group's last costs (NaN-padded), its pilot (a global worker
        id, -1: none), the bytes its link moved and the part the sealing added."""
        row = np.full(self.width, np.nan)
        row[:len(self.members)] = np.asarray(last["costs"], np.float64)
        pilot = int(last["pilot"])
        row[-3:] = [self.members[pilot] if pilot >= 0 else -1, last["moved"], last["sealing"]]
        return row[None]


def run_group_master(cfg: RunConfig, top: Link, group: Link, members: Sequence[int],
                     index: int, faults: Sequence[Fault], checkpoint_every: int | None, *,
                     world_rank: int) -> None:
    """A group master of a synchronous run (:class:`GroupMaster`).

    Per outer epoch t: P^{t-1} from the top becomes the group's, ``--group-epochs``
    epochs over the group, then C_g up, and by the top's command the group's model Q_g
    or its ternary against the top's P^{t-1}, P^{t-2}, then its report.
    """
    gm = GroupMaster(cfg, top, group, members, index, world_rank=world_rank)
    state, buf = gm.state, np.empty(gm.m, np.float32)
    for t in range(gm.first, cfg.run.epochs + 1):
        top.epoch = t
        top.recv_model(buf)
        p_top = buf.copy()
        if strikes(faults, "raise", world_rank, t):
            raise RuntimeError(f"injected fault (raise:{world_rank}:{t})")
        state, last = gm.job(state, p_top)
        top.send_costs(np.array([last["cost"]], np.float64))
        q = np.asarray(state.p_prev)
        packed = gm.vote(t, q, p_top)
        buf_up, lengths = gm.upload(t, top.recv_commands()[0], q, packed,
                                    alloc=top.upload_buffer, checksum=top.checksum)
        top.send_frames(buf_up, lengths)
        top.send_report(gm.report(last))
        gm.p_top_last = p_top
        if checkpoint_every and t % checkpoint_every == 0:
            checkpoint.save(resume.file(gm.out, world_rank, t),
                            {**state._asdict(), "p_top_last": gm.p_top_last},
                            {"rank": world_rank, "epoch": t, "ids": list(members)})
            group.epoch = t
            group.checkpoint_acks()
            top.send_ack()
            resume.prune(gm.out, world_rank)


def _host() -> str:
    import platform

    return platform.node()


__all__ = ["Master", "WorkerRank", "run_workers", "GroupMaster", "run_group_master",
           "gather_holdings", "hang"]
