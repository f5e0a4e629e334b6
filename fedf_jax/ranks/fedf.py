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


def _finish_fn(model, cfg: MasterConfig, test_chunk: int, state, sel, costs, q_pilot,
               packed, frame_ok, pilot_ok, sizes, betas, x_test, y_test):
    """The master after the frames: Eq. (3) over the accepted frames (and the test
    metrics when there is a test set).

    Dropped ternaries join the non-finite costs in the mask; a dropped pilot model
    counts as no usable pilot (P^t = P^{t-1}), as in ``master.update``.
    """
    sel = sel._replace(valid=sel.valid & frame_ok, pilot=jnp.where(pilot_ok, sel.pilot, -1))
    nonzero = codec.count_nonzero_jnp(packed, cfg.scheme)
    if x_test is None:
        return master.update(state, sel, costs, q_pilot, packed, sizes, betas, cfg), nonzero
    new, loss, acc = fedf.conclude(model, test_chunk, cfg, state, sel, costs, q_pilot, packed,
                                   sizes, betas, x_test, y_test)
    return new, loss, acc, nonzero


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
        self.select = compiler(jax.jit(master.select), state, costs0, self.sizes, donated=())
        sel0 = self.select(state, costs0, self.sizes)
        test_chunk = min(layout.EVAL_CHUNK, max(len(y_test), 1)) if y_test is not None else 1
        self.finish = compiler(
            jax.jit(functools.partial(_finish_fn, model, cfg, test_chunk)), state, sel0, costs0,
            self.q_none, self.packed, np.ones(n, bool), np.bool_(True), self.sizes, self.betas,
            x_test, y_test, donated=())

    def epoch(self, state: master.MasterState) -> tuple[master.MasterState, dict[str, Any]]:
        """Model down, costs up, pilot, commands, frames, Eq. (3); host outputs."""
        link, m, t = self.link, self.m, int(state.epoch)
        costs = link.model_down_costs_up(np.asarray(state.p_prev)).astype(np.float32)
        sel = self.select(state, costs, self.sizes)
        pilot = int(sel.pilot)
        lengths = link.commands_down_lengths_up(frames.commands(self.n, pilot))
        frames.check_lengths(lengths, link.layout.starts, codec.HEADER_SIZE + 4 * m)
        up = frames.decode_frames(link.frames_up(lengths), lengths, pilot, t, m, self.cfg.scheme,
                                  self.packed, self.senders)
        pilot_ok = pilot >= 0 and up.q_pilot is not None
        done = self.finish(state, sel, costs, up.q_pilot if pilot_ok else self.q_none,
                           up.packed, up.ok, np.bool_(pilot_ok), self.sizes, self.betas,
                           *self.test)
        state, metrics = done[0], done[1:-1]
        out = jax.device_get({"costs": costs, "goodness": sel.goodness, "valid": sel.valid,
                              "nonzero": done[-1]})
        if metrics:
            out.update(test_loss=float(metrics[0]), test_accuracy=float(metrics[1]))
        return state, {**out, "epoch": t, "pilot": pilot, "frame_ok": up.ok,
                       "dropped_frames": up.dropped, "mpi_bytes": int(sum(link.moved.values())),
                       "mpi_bytes_detail": dict(link.moved)}


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


def run_workers(cfg: RunConfig, link: Link, ids: Sequence[int], faults: Sequence[Fault],
                checkpoint_every: int | None, *, world_rank: int, period: int = 1) -> None:
    """A worker rank: its workers' data placed once, then one epoch per model received.

    ``period``: epochs per checkpoint unit (a group's inner epochs per outer epoch);
    a checkpoint is written after every ``checkpoint_every`` units.
    """
    host = harness.load(cfg)
    ds = host.dataset
    placement = backends.placement(cfg.run.backend, cfg.run.devices)
    w = layout.build([cfg.specs[k] for k in ids], ds.x_train, ds.y_train,
                     [host.parts[k] for k in ids],
                     betas=cfg.master.betas(cfg.n_workers)[list(ids)], x_test=ds.x_test[:1],
                     y_test=ds.y_test[:1], train_key=host.train_key, ids=ids,
                     augment=cfg.data.augment, placement=placement)
    model, p0 = host.model, host.p0
    del host, ds  # only this rank's workers' samples stay (on the device)
    opt_states = jax.tree.map(placement.put_rows, layout.init_opt_states(w.layout, w.data, p0))
    step = jax.jit(functools.partial(_worker_step, model, w.layout, cfg.master.scheme,
                                     placement.spread), donate_argnums=3).lower(
        p0, p0, jnp.int32(1), opt_states, w.data).compile()
    where = {k: (c, r) for c, co in enumerate(w.layout.cohorts) for r, k in enumerate(co.rows)}
    m = model.num_params

    link.gather_json({"rank": world_rank, "host": _host(), "ids": list(ids),
                      "sizes": w.sizes.tolist(), "devices": list(placement.devices)})
    start = link.bcast_json(None)
    if start.get("error"):
        raise resume.ResumeError(start["error"])
    out, first = Path(start["out"]), int(start["first_epoch"])
    p_last = None
    if first > 1:  # resume: this rank's optimizer states and the model it last received
        arrays, meta = checkpoint.load(resume.file(out, world_rank, (first - 1) // period))
        if meta.get("ids") != list(ids):
            raise ValueError(f"checkpoint of rank {world_rank} holds workers "
                             f"{meta.get('ids')}, this run gives the rank workers {list(ids)}.")
        opt_states = checkpoint.restore_tree(opt_states, arrays, "opt")
        p_last = jnp.asarray(arrays["p_last"])
    slots = [np.empty(m, np.float32), np.empty(m, np.float32)]  # P^{t-1}, P^{t-2} live
    for t in range(first, cfg.run.epochs * period + 1):
        link.epoch = t
        buf = slots[t % 2]
        link.recv_model(buf)
        p = jnp.asarray(buf)
        if strikes(faults, "raise", world_rank, t):
            raise RuntimeError(f"injected fault (raise:{world_rank}:{t})")
        if strikes(faults, "hang", world_rank, t):
            while True:  # a silent rank: the master's deadline must catch it
                time.sleep(3600)
        qs, costs, packed, opt_states = step(p, p if p_last is None else p_last,
                                             np.int32(t), opt_states, w.data)
        link.send_costs(np.asarray(costs, np.float64))
        buf, lengths = frames.encode_frames(
            t, ids, link.recv_commands(), np.asarray(packed),
            lambda i, qs=qs: qs[where[i][0]][where[i][1]], m, cfg.master.scheme)
        for i, k in enumerate(ids):
            if strikes(faults, "corrupt", k, t) and lengths[i]:
                buf[int(lengths[:i].sum()) + codec.HEADER_SIZE] ^= 0xFF  # first payload byte
        link.send_frames(buf, lengths)
        p_last = p
        unit, rest = divmod(t, period)
        if checkpoint_every and not rest and unit % checkpoint_every == 0:
            checkpoint.save(resume.file(out, world_rank, unit),
                            {**checkpoint.tree_arrays(opt_states, "opt"),
                             "p_last": np.asarray(p_last)},
                            {"rank": world_rank, "epoch": unit, "ids": list(ids)})
            link.epoch = unit
            link.send_ack()
            resume.prune(out, world_rank)


def run_group_master(cfg: RunConfig, top: Link, group: Link, members: Sequence[int],
                     index: int, faults: Sequence[Fault], checkpoint_every: int | None, *,
                     world_rank: int) -> None:
    """A group master: the master of its group's worker ranks, one worker of the top.

    Per outer epoch t: P^{t-1} from the top becomes the group's (its P^{t-2} stays the
    model its workers last trained from), ``--group-epochs`` epochs over the group,
    then C_g (the S_k-weighted mean of the last costs) up, and by the top's command the
    group's model Q_g or its ternary against the top's P^{t-1}, P^{t-2} (threshold
    alpha0, Eq. 4/5), then a report: the group's last costs, its pilot and the bytes
    its link moved.
    """
    kappa, m_cfg = cfg.run.group_epochs, cfg.master
    host = harness.load(cfg)
    m, p0 = host.model.num_params, host.p0
    del host
    infos = group.gather_json(None)
    sizes = np.concatenate([np.asarray(i["sizes"], np.float64) for i in infos])
    betas = m_cfg.betas(cfg.n_workers)[list(members)]
    state = master.init(p0, len(members))
    inner = Master(group, m_cfg, m, sizes, betas, state, harness.Compiler())
    top.gather_json({"rank": world_rank, "host": _host(), "ids": [index],
                     "sizes": [float(sizes.sum())], "devices": [str(d) for d in jax.devices()],
                     "group": infos})
    start = top.bcast_json(None)
    if start.get("error"):
        group.bcast_json(start)
        raise resume.ResumeError(start["error"])
    out, first = Path(start["out"]), int(start["first_epoch"])
    group.bcast_json({"out": str(out), "first_epoch": (first - 1) * kappa + 1})
    p_top_last = np.asarray(p0, np.float32)
    if first > 1:
        arrays, _ = checkpoint.load(resume.file(out, world_rank, first - 1))
        state = master.MasterState(*(jnp.asarray(arrays[k]) for k in master.MasterState._fields))
        p_top_last = arrays["p_top_last"]
    ternary = jax.jit(worker.ternary_message, static_argnums=6)
    beta_g = np.float32(betas.mean())
    buf = np.empty(m, np.float32)
    for t in range(first, cfg.run.epochs + 1):
        top.epoch = t
        top.recv_model(buf)
        p_top = buf.copy()
        if strikes(faults, "raise", world_rank, t):
            raise RuntimeError(f"injected fault (raise:{world_rank}:{t})")
        state = state._replace(p_prev=jnp.asarray(p_top))
        moved = 0
        for _ in range(kappa):
            group.epoch = int(state.epoch)
            state, last = inner.epoch(state)
            moved += last["mpi_bytes"]
        q = np.asarray(state.p_prev)
        ok = np.isfinite(last["costs"]) & (sizes > 0)
        cost = ((sizes[ok] * last["costs"][ok]).sum() / sizes[ok].sum()) if ok.any() else np.nan
        top.send_costs(np.array([cost], np.float64))
        packed, _ = ternary(q, p_top, p_top_last, m_cfg.alpha0, beta_g, np.int32(t),
                            m_cfg.scheme)
        buf_up, lengths = frames.encode_frames(t, [index], top.recv_commands(),
                                               np.asarray(packed)[None], lambda i, q=q: q, m,
                                               m_cfg.scheme)
        top.send_frames(buf_up, lengths)
        pilot = int(last["pilot"])
        top.send_report(np.concatenate([np.asarray(last["costs"], np.float64),
                                        [members[pilot] if pilot >= 0 else -1, moved]])[None])
        p_top_last = p_top
        if checkpoint_every and t % checkpoint_every == 0:
            checkpoint.save(resume.file(out, world_rank, t),
                            {**state._asdict(), "p_top_last": p_top_last},
                            {"rank": world_rank, "epoch": t, "ids": list(members)})
            group.epoch = t
            group.checkpoint_acks()
            top.send_ack()
            resume.prune(out, world_rank)


def _host() -> str:
    import platform

    return platform.node()


__all__ = ["Master", "run_workers", "run_group_master"]
