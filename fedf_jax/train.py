"""``fedf train``'s library side: FEDF under ``mpiexec``, one loop per rank.

DESIGN §5. ``mpiexec -n K fedf train [flags]`` spreads the N workers over the
K - 1 worker ranks in contiguous blocks (``backends.mpi.link.split_workers``).
Every rank computes the run's seeded partition and keeps only its own workers'
samples; a worker rank runs FEDF's workers side (``algorithms.fedf.workers_side``)
for its workers on its own devices (vmap, or sharded over its local devices),
each worker on its own global PRNG stream, so MPI and the simulator agree. The
master holds only the test set, and runs FEDF's master side (``master.select``,
then ``algorithms.fedf.conclude`` over the frames it accepted) inside the
harness's one epoch loop (``harness.drive``), which writes the same run log as
``fedf simulate``. The messages of an epoch are the backend's
(``backends.mpi``: link, frames, resume).

Faults. Any exception on any rank prints ``fedf: error: rank R ...`` and calls
``MPI.COMM_WORLD.Abort``, which ends the whole job (no hang); every wait has a
deadline that names a silent rank. A resume that cannot continue raises
:class:`ResumeError` on every rank alike.

Byte accounting. Each epoch record carries the byte fields of ``fedf simulate``
(``codec.epoch_bytes``: every message a one-worker-per-host deployment sends,
frame headers included), so MPI and simulator logs compare equal, plus
``mpi_bytes``: the bytes MPI really moved this epoch (``mpi_bytes_detail`` by
message). They differ because a worker rank gets P^{t-1} once for all its
workers, and the model down, costs and commands go as bare MPI buffers, while the
uploads are framed and preceded by their lengths (8 bytes per worker).
"""

from __future__ import annotations

import functools
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from mpi4py import MPI

from fedf_jax import backends, checkpoint, codec, harness, layout, master, runlog
from fedf_jax.algorithms import fedf
from fedf_jax.backends.mpi import frames, resume
from fedf_jax.backends.mpi.faults import Fault, strikes
from fedf_jax.backends.mpi.link import DEFAULT_TIMEOUT, Link, fatal, split_workers
from fedf_jax.backends.mpi.resume import ResumeError
from fedf_jax.config import RunConfig


def check(cfg: RunConfig, n_ranks: int) -> None:
    """Raises ValueError when ``cfg`` cannot run on ``n_ranks`` MPI ranks."""
    if cfg.run.algorithm != "fedf" or cfg.run.scan_epochs > 1:
        raise ValueError("`fedf train` runs FEDF epoch by epoch; --algorithm and "
                         "--scan-epochs are for `fedf simulate`.")
    split_workers(cfg.n_workers, n_ranks)


# --------------------------------------------------------------------------- worker rank


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


def _run_worker(cfg: RunConfig, link: Link, faults: Sequence[Fault],
                checkpoint_every: int | None) -> None:
    rank, ids = link.rank, link.layout.ids[link.rank]
    host = harness.load(cfg)
    ds = host.dataset
    placement = backends.placement(cfg.run.backend, cfg.run.devices)
    w = layout.build([cfg.specs[k] for k in ids], ds.x_train, ds.y_train,
                     [host.parts[k] for k in ids], betas=cfg.master.betas(cfg.n_workers)[list(ids)],
                     x_test=ds.x_test[:1], y_test=ds.y_test[:1], train_key=host.train_key,
                     ids=ids, augment=cfg.data.augment, placement=placement)
    model, p0 = host.model, host.p0
    del host, ds  # only this rank's workers' samples stay (on the device)
    opt_states = jax.tree.map(placement.put_rows, layout.init_opt_states(w.layout, w.data, p0))
    step = jax.jit(functools.partial(_worker_step, model, w.layout, cfg.master.scheme,
                                     placement.spread), donate_argnums=3).lower(
        p0, p0, jnp.int32(1), opt_states, w.data).compile()
    where = {k: (c, r) for c, co in enumerate(w.layout.cohorts) for r, k in enumerate(co.rows)}
    m = model.num_params

    link.gather_json({"rank": rank, "host": platform.node(), "ids": list(ids),
                      "sizes": w.sizes.tolist(), "devices": list(placement.devices)})
    start = link.bcast_json(None)
    if start.get("error"):
        raise ResumeError(start["error"])
    out, first = Path(start["out"]), int(start["first_epoch"])
    p_last = None
    if first > 1:  # resume: this rank's optimizer states and the model it last received
        arrays, meta = checkpoint.load(resume.file(out, rank, first - 1))
        if meta.get("ids") != list(ids):
            raise ValueError(f"checkpoint of rank {rank} holds workers {meta.get('ids')}, "
                             f"this run gives the rank workers {list(ids)}.")
        opt_states = checkpoint.restore_tree(opt_states, arrays, "opt")
        p_last = jnp.asarray(arrays["p_last"])
    slots = [np.empty(m, np.float32), np.empty(m, np.float32)]  # P^{t-1}, P^{t-2} live
    for t in range(first, cfg.run.epochs + 1):
        link.epoch = t
        buf = slots[t % 2]
        link.recv_model(buf)
        p = jnp.asarray(buf)
        if strikes(faults, "raise", rank, t):
            raise RuntimeError(f"injected fault (raise:{rank}:{t})")
        if strikes(faults, "hang", rank, t):
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
        if checkpoint_every and t % checkpoint_every == 0:
            checkpoint.save(resume.file(out, rank, t),
                            {**checkpoint.tree_arrays(opt_states, "opt"),
                             "p_last": np.asarray(p_last)},
                            {"rank": rank, "epoch": t, "ids": list(ids)})
            link.send_ack()
            resume.prune(out, rank)


# --------------------------------------------------------------------------- master rank


def _finish_fn(model, cfg, test_chunk: int, state, sel, costs, q_pilot, packed, frame_ok,
               pilot_ok, sizes, betas, x_test, y_test):
    """The master after the frames: Eq. (3) over the accepted frames, test metrics.

    Dropped ternaries join the non-finite costs in the mask; a dropped pilot model
    counts as no usable pilot (P^t = P^{t-1}), as in ``master.update``.
    """
    sel = sel._replace(valid=sel.valid & frame_ok, pilot=jnp.where(pilot_ok, sel.pilot, -1))
    new, loss, acc = fedf.conclude(model, test_chunk, cfg, state, sel, costs, q_pilot, packed,
                                   sizes, betas, x_test, y_test)
    return new, loss, acc, codec.count_nonzero_jnp(packed, cfg.scheme)


def _run_master(cfg: RunConfig, link: Link, faults: Sequence[Fault], out: Path,
                checkpoint_every: int | None, resumed: bool,
                on_setup: Callable[[dict[str, Any]], None] | None,
                on_epoch: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    ranks, n, scheme = link.layout, cfg.n_workers, cfg.master.scheme
    host = harness.load(cfg)
    model, m = host.model, host.model.num_params
    x_test, y_test = jnp.asarray(host.dataset.x_test), jnp.asarray(host.dataset.y_test, jnp.int32)
    test_chunk = min(layout.EVAL_CHUNK, max(len(y_test), 1))  # as the simulator's
    state = master.init(host.p0, n)
    betas = jnp.asarray(cfg.master.betas(n))
    packed = np.zeros((n, codec.packed_size(m, scheme)), np.uint8)
    q_none = np.zeros(m, np.float32)

    infos = link.gather_json(None)
    sizes_np = np.concatenate([np.asarray(i["sizes"], np.int64) for i in infos])
    for r, info in enumerate(infos, 1):
        if info["ids"] != list(ranks.ids[r]):
            raise RuntimeError(f"rank {r} holds workers {info['ids']}, expected "
                               f"{list(ranks.ids[r])}.")
    sizes = jnp.asarray(sizes_np, jnp.float32)
    compiler = harness.Compiler()
    select = compiler(jax.jit(master.select), state, np.zeros(n, np.float32), sizes,
                      donated=())
    sel0 = select(state, np.zeros(n, np.float32), sizes)
    finish = compiler(jax.jit(functools.partial(_finish_fn, model, cfg.master, test_chunk)),
                      state, sel0, np.zeros(n, np.float32), q_none, packed, np.ones(n, bool),
                      np.bool_(True), sizes, betas, x_test, y_test, donated=())

    first, records = 1, []
    if resumed:
        try:
            last = resume.resume_point(cfg, out, ranks.n_ranks)
            records = resume.truncate_log(out / "run.jsonl", last)
        except (ValueError, OSError, KeyError) as e:
            error = str(e) if str(e).startswith("--resume") else f"--resume: {e}"
            link.bcast_json({"error": error})  # every rank exits with this error
            raise ResumeError(error) from None
        arrays, _ = checkpoint.load(resume.file(out, 0, last))
        state = master.MasterState(*(jnp.asarray(arrays[k]) for k in master.MasterState._fields))
        first = last + 1
    link.bcast_json({"out": str(out), "first_epoch": first})

    rank_devices = [{"rank": 0, "host": platform.node(),
                     "devices": [str(d) for d in jax.local_devices()]}] + [
        {"rank": i["rank"], "host": i["host"], "devices": i["devices"]} for i in infos]
    head = harness.header(
        cfg, host, m, [f"rank {d['rank']}: {dev}" for d in rank_devices for dev in d["devices"]],
        compiler.seconds, backend="mpi", ranks=ranks.n_ranks, rank_devices=rank_devices,
        worker_ranks=[list(i) for i in ranks.ids])
    if on_setup:
        on_setup({**head, "first_epoch": first})
    record_fedf = fedf.make_record(cfg, sizes_np, m)

    def advance(state, count):
        t = link.epoch = int(state.epoch)
        if strikes(faults, "raise", 0, t):
            raise RuntimeError(f"injected fault (raise:0:{t})")
        costs = link.model_down_costs_up(np.asarray(state.p_prev)).astype(np.float32)
        sel = select(state, costs, sizes)
        pilot = int(sel.pilot)
        lengths = link.commands_down_lengths_up(frames.commands(n, pilot))
        frames.check_lengths(lengths, ranks.starts, codec.HEADER_SIZE + 4 * m)
        up = frames.decode_frames(link.frames_up(lengths), lengths, pilot, t, m, scheme, packed)
        pilot_ok = pilot >= 0 and up.q_pilot is not None
        state, loss, acc, nonzero = finish(
            state, sel, costs, up.q_pilot if pilot_ok else q_none, up.packed, up.ok,
            np.bool_(pilot_ok), sizes, betas, x_test, y_test)
        out = jax.device_get({"costs": costs, "goodness": sel.goodness, "valid": sel.valid,
                              "nonzero": nonzero, "test_loss": loss, "test_accuracy": acc})
        return state, [{**out, "epoch": t, "pilot": pilot, "frame_ok": up.ok,
                        "dropped_frames": up.dropped, "mpi_bytes": int(sum(link.moved.values())),
                        "mpi_bytes_detail": dict(link.moved)}]

    def record(out, wall_s):
        return {**record_fedf(out, wall_s), **{k: out[k] for k in
                                               ("dropped_frames", "mpi_bytes", "mpi_bytes_detail")}}

    def after(state, rec):
        t = rec["epoch"]
        if checkpoint_every and t % checkpoint_every == 0:
            resume.save_master(cfg, out, ranks.ids, state._asdict(), t)
            link.checkpoint_acks()
            checkpoint.write_json(resume.directory(out) / "latest.json",
                                  {"epoch": t, "ranks": ranks.n_ranks})
            resume.prune(out, 0)

    logfile = (runlog.RunLog(out / "run.jsonl", {"type": "resume", "epoch": first - 1,
                                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
                             append=True)
               if resumed else runlog.RunLog(out / "run.jsonl", head))
    watch = harness.Watch(host.dataset.num_classes)
    t0 = time.perf_counter()
    with logfile:
        state, new = harness.drive(harness.Runner(advance, 1, compiler.seconds), state, record,
                                   first=first, last=cfg.run.epochs, logfile=logfile,
                                   on_epoch=on_epoch, after=after, watch=watch)
        records += new
        return harness.finish(cfg, out, records, np.asarray(state.p_prev), m,
                              time.perf_counter() - t0, compiler.seconds, watch, logfile,
                              mpi_bytes_total=int(sum(r.get("mpi_bytes", 0) for r in records)))


# --------------------------------------------------------------------------- entry


def run(cfg: RunConfig, out: str | Path | None, *, timeout: float = DEFAULT_TIMEOUT,
        checkpoint_every: int | None = None, resume: bool = False,
        on_setup: Callable[[dict[str, Any]], None] | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        comm: MPI.Comm | None = None, faults: Sequence[Fault] = ()) -> dict[str, Any] | None:
    """Runs FEDF over MPI; call it on every rank of the job.

    Any exception on any rank ends the whole job (``Abort``) with a one-line
    message naming the rank; this function returns only when the run completed.

    Args:
      cfg: the run (the same on every rank).
      out: the run directory on rank 0 (``run.jsonl``, ``final_model.npy``,
        ``checkpoint/``); the other ranks learn it from rank 0.
      timeout: seconds any rank waits for any message before aborting the job.
      checkpoint_every: write a checkpoint every this many epochs (None: never).
      resume: continue from the latest checkpoint in ``out``.
      on_setup: called on rank 0 with the run-log header, before the first epoch.
      on_epoch: called on rank 0 with each epoch's record.
      comm: the communicator (default ``MPI.COMM_WORLD``).
      faults: faults to inject (tests; ``backends.mpi.faults``).

    Returns:
      On rank 0 the summary (as ``simulation.run``, plus ``mpi_bytes_total``); None
      on the worker ranks.

    Raises:
      ResumeError: on every rank alike, when ``resume`` cannot continue.
    """
    comm = MPI.COMM_WORLD if comm is None else comm
    rank = comm.Get_rank()
    link = None
    try:
        check(cfg, comm.Get_size())
        if checkpoint_every is not None and checkpoint_every < 1:
            raise ValueError(f"`checkpoint_every` (={checkpoint_every}) must be >= 1.")
        link = Link(comm, split_workers(cfg.n_workers, comm.Get_size()), timeout)
        if rank == 0:
            return _run_master(cfg, link, faults, Path(out), checkpoint_every, resume,
                               on_setup, on_epoch)
        _run_worker(cfg, link, faults, checkpoint_every)
        return None
    except (SystemExit, ResumeError):
        raise  # ResumeError: every rank has it (the master broadcast it); exit code 2
    except ValueError as e:  # a known error, on this rank only: end the whole job
        _report(rank, link, e, with_traceback=False)
    except BaseException as e:  # any failure must end the whole job
        _report(rank, link, e, with_traceback=not isinstance(e, KeyboardInterrupt))
    return None


def _report(rank: int, link: Link | None, e: BaseException, with_traceback: bool) -> None:
    when = f" at epoch {link.epoch}" if link is not None and link.epoch else " during start-up"
    if with_traceback:
        traceback.print_exc(file=sys.stderr)
    fatal(f"fedf: error: rank {rank} failed{when}: {type(e).__name__}: {e}; aborting the job",
          130 if isinstance(e, KeyboardInterrupt) else 1)


__all__ = ["DEFAULT_TIMEOUT", "ResumeError", "check", "run"]
