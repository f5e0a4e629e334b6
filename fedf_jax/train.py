"""``fedf train``'s library side: FEDF under ``mpiexec``, flat or in two levels.

DESIGN §5 and §8. Flat: ``mpiexec -n K fedf train`` spreads the N workers over the
K - 1 worker ranks in contiguous blocks (``split_workers``); rank 0 is the master.
Two levels (``--groups G``): K = 1 + G r, rank 0 is the top master and each group
has r ranks, its group master and r - 1 worker ranks holding the group's workers;
``Comm.Split`` gives one communicator per group and one of the top master with the
group masters, and each level runs the flat protocol (``ranks``). Every rank
computes the run's seeded partition and keeps only its own workers' samples; the
master holds only the test set. The top (or flat) master runs the harness's one
epoch loop (``harness.drive``), which writes the same run log as ``fedf simulate``,
with checkpoints and ``--resume``. ``--schedule async`` (with ``--groups``): the top
master takes the group masters as they finish (``ranks.asynchronous``), one update of
the top per run-log line, without checkpoints. ``--secure-sum secagg`` (flat, synchronous):
the master gets the workers' vote sum through secure aggregation (``ranks.secure``).

Faults. Any exception on any rank prints ``fedf: error: rank R ...`` and calls
``MPI.COMM_WORLD.Abort``, which ends the whole job (no hang); every wait has a
deadline that names a silent rank (by its rank in the job). A resume that cannot
continue raises :class:`ResumeError` on every rank alike.

Byte accounting. Each epoch record carries the byte fields of ``fedf simulate``
(every message of a one-worker-per-host deployment, frame headers included), so
MPI and simulator logs compare equal, plus ``mpi_bytes``: the bytes MPI really
moved this epoch (``mpi_bytes_detail`` by message; with groups, the groups' links
are added in ``groups``).
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from mpi4py import MPI

from fedf_jax import checkpoint, harness, master
from fedf_jax.algorithms import fedf, hierarchy
from fedf_jax.backends.mpi import resume, wire
from fedf_jax.backends.mpi.faults import Fault, strikes
from fedf_jax.backends.mpi.link import (
    DEFAULT_TIMEOUT,
    Link,
    RankLayout,
    fatal,
    split_workers,
)
from fedf_jax.backends.mpi.resume import ResumeError
from fedf_jax.codec import epoch_bytes
from fedf_jax.config import RunConfig
from fedf_jax.ranks import admm as admm_ranks
from fedf_jax.ranks import asynchronous as async_ranks
from fedf_jax.ranks import fedf as ranks
from fedf_jax.ranks import secure as secure_ranks


def check(cfg: RunConfig, n_ranks: int, resumable: bool = False) -> None:
    """Raises ValueError when ``cfg`` cannot run on ``n_ranks`` MPI ranks (``resumable``:
    checkpoints or --resume asked for)."""
    run = cfg.run
    if run.schedule == "async":
        if run.algorithm != "fedf":
            raise ValueError(f"`fedf train --schedule async` runs fedf, not {run.algorithm!r}; "
                             "run an asynchronous admm-svm with `fedf simulate`.")
        if run.groups < 2:
            raise ValueError(f"`fedf train --schedule async` needs `groups` >= 2 (got "
                             f"{run.groups}): its senders are the group masters; run flat "
                             "asynchronous workers with `fedf simulate`.")
        if resumable:
            raise ValueError("`fedf train --schedule async` keeps no checkpoints; drop "
                             "--checkpoint-every and --resume.")
    flat = run.groups == 1 and run.group_epochs == 1
    if cfg.master.secure_sum != "none" and not (
            cfg.master.secure_sum == "secagg" and run.algorithm == "fedf" and flat
            and run.schedule == "sync"):
        raise ValueError(f"`fedf train --secure-sum {cfg.master.secure_sum}` is not run under "
                         "mpiexec for this run: `fedf train` runs secagg for flat, synchronous "
                         f"fedf (got algorithm {run.algorithm!r}, groups {run.groups}, "
                         f"group_epochs {run.group_epochs}, schedule {run.schedule!r}); run "
                         "the others with `fedf simulate`.")
    if run.algorithm not in ("fedf", "admm-svm") or run.scan_epochs > 1:
        raise ValueError("`fedf train` runs fedf or admm-svm epoch by epoch; the baselines "
                         "and --scan-epochs are for `fedf simulate`.")
    if run.algorithm == "admm-svm":
        if cfg.data.split != "samples" or run.groups > 1 or resumable:
            raise ValueError("`fedf train --algorithm admm-svm` runs consensus ADMM (--split "
                             "samples) in one level, without checkpoints; use `fedf "
                             "simulate` for --split features or --groups.")
        split_workers(cfg.n_workers, n_ranks)
        return
    if cfg.run.groups == 1 and cfg.run.group_epochs == 1:
        split_workers(cfg.n_workers, n_ranks)
        return
    g = cfg.run.groups
    if (n_ranks - 1) % g or (n_ranks - 1) // g < 2:
        raise ValueError(f"`groups` (={g}) needs K = 1 + G r MPI ranks with r >= 2 per group "
                         f"(its group master and worker ranks), e.g. {1 + 2 * g}; got "
                         f"K = {n_ranks}.")
    r = (n_ranks - 1) // g
    small = [i for i, m in enumerate(cfg.group_workers()) if len(m) < r - 1]
    if small:
        raise ValueError(f"group {small[0]} has {len(cfg.group_workers()[small[0]])} "
                         f"worker(s) for its {r - 1} worker ranks; use fewer ranks per group "
                         "or more --workers.")


def _group_ranks(members: Sequence[int], r: int) -> RankLayout:
    """A group's ranks: its master (local rank 0) and r - 1 worker ranks holding its
    workers (global ids) in contiguous blocks."""
    blocks = split_workers(len(members), r).ids[1:]
    return RankLayout(((),) + tuple(tuple(members[i] for i in b) for b in blocks))


def _header_extra(cfg: RunConfig, link: Link, infos: list[dict]) -> dict[str, Any]:
    """The MPI fields of the run-log header: ranks, each rank's host and devices, and
    which workers (or groups) each holds."""
    everyone = [{"rank": 0, "host": ranks._host(),
                 "devices": [str(d) for d in jax.local_devices()]}]
    for i in infos:
        everyone.append({"rank": i["rank"], "host": i["host"], "devices": i["devices"]})
        everyone += [{"rank": j["rank"], "host": j["host"], "devices": j["devices"]}
                     for j in i.get("group", ())]
    everyone.sort(key=lambda d: d["rank"])
    extra: dict[str, Any] = {"worker_ranks": [list(i) for i in link.layout.ids]}
    if any("group" in i for i in infos):
        extra = {"group_ranks": [[i["rank"]] + [j["rank"] for j in i["group"]] for i in infos],
                 "group_workers": [list(g) for g in cfg.group_workers()]}
    return {"devices": [f"rank {d['rank']}: {dev}" for d in everyone for dev in d["devices"]],
            "ranks": MPI.COMM_WORLD.Get_size(), "rank_devices": everyone, **extra}


def _top(cfg: RunConfig, link: Link, faults: Sequence[Fault], out: Path,
         checkpoint_every: int | None, resumed: bool,
         on_setup: Callable[[dict[str, Any]], None] | None,
         on_epoch: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    """Rank 0: the flat master, or the top master over the group masters."""
    grouped = not (cfg.run.groups == 1 and cfg.run.group_epochs == 1)
    host = harness.load(cfg)
    m = host.model.num_params
    state = master.init(host.p0, link.layout.n_workers)
    infos, sizes = ranks.gather_holdings(link)
    betas = cfg.master.betas(cfg.n_workers)
    members = cfg.group_workers()
    if grouped:
        betas = np.array([betas[list(g)].mean() for g in members], np.float32)
        worker_sizes = np.array([len(p) for p in host.parts], np.int64)
        record_base = hierarchy.make_record(
            cfg, worker_sizes, m, lambda k: epoch_bytes(m, k, cfg.master.scheme), 4)
        width = max(len(g) for g in members) + 3
    else:
        worker_sizes = sizes.astype(np.int64)
        record_base = fedf.make_record(cfg, worker_sizes, m)
    compiler = harness.Compiler()
    top = ranks.Master(link, cfg.master, m, sizes, betas, state, compiler, host.model,
                       jnp.asarray(host.dataset.x_test),
                       jnp.asarray(host.dataset.y_test, jnp.int32))

    first, records = 1, []
    if resumed:
        try:
            last = resume.resume_point(cfg, out, MPI.COMM_WORLD.Get_size())
            records = resume.truncate_log(out / "run.jsonl", last)
        except (ValueError, OSError, KeyError) as e:
            error = str(e) if str(e).startswith("--resume") else f"--resume: {e}"
            link.bcast_json({"error": error})  # every rank exits with this error
            raise ResumeError(error) from None
        arrays, _ = checkpoint.load(resume.file(out, 0, last))
        state = master.MasterState(*(jnp.asarray(arrays[k]) for k in master.MasterState._fields))
        first = last + 1
    link.bcast_json({"out": str(out), "first_epoch": first})

    extra = _header_extra(cfg, link, infos)
    head = harness.header(cfg, host, m, extra.pop("devices"), compiler.seconds, backend="mpi",
                          **extra)
    if on_setup:
        on_setup({**head, "first_epoch": first})

    def advance(state, count):
        t = link.epoch = int(state.epoch)
        if strikes(faults, "raise", 0, t):
            raise RuntimeError(f"injected fault (raise:0:{t})")
        state, out = top.epoch(state)
        if grouped:  # each group master's report: its workers' costs, its pilot, its bytes
            rep = link.gather_reports(width)
            costs = np.full(cfg.n_workers, np.nan)
            for gi, g in enumerate(members):
                costs[list(g)] = rep[gi, :len(g)]
            out = {**out, "costs": costs, "group_sizes": sizes,
                   "group_pilots": rep[np.arange(len(members)), -3].astype(int).tolist()}
            out["mpi_bytes_detail"]["groups"] = int(rep[:, -2].sum())
            out["mpi_bytes"] = int(sum(out["mpi_bytes_detail"].values()))
            out["bytes_aead"] = link.bytes_aead + int(rep[:, -1].sum())
        return state, [out]

    def record(out, wall_s):
        rec = {**record_base(out, wall_s),
               **{k: out[k] for k in ("dropped_frames", "mpi_bytes", "mpi_bytes_detail",
                                      "bytes_aead")}}
        return secure_ranks.measured(rec, out) if "secagg_bytes" in out else rec

    def after(state, rec):
        t = rec["epoch"]
        if checkpoint_every and t % checkpoint_every == 0:
            resume.save_master(cfg, out, [(), *link.layout.ids[1:]], state._asdict(), t,
                               ranks=MPI.COMM_WORLD.Get_size())
            link.checkpoint_acks()
            checkpoint.write_json(resume.directory(out) / "latest.json",
                                  {"epoch": t, "ranks": MPI.COMM_WORLD.Get_size()})
            resume.prune(out, 0)

    return harness.execute(
        cfg, harness.Runner(advance, 1, compiler.seconds), state, record,
        lambda s: s.p_prev, out_dir=out, head=head, num_params=m,
        num_classes=host.dataset.num_classes, first=first, done=records, resumed=resumed,
        on_epoch=on_epoch, after=after,
        extra=lambda recs: {"mpi_bytes_total": int(sum(r.get("mpi_bytes", 0) for r in recs))})

def run(cfg: RunConfig, out: str | Path | None, *, timeout: float = DEFAULT_TIMEOUT,
        checkpoint_every: int | None = None, resume: bool = False,
        on_setup: Callable[[dict[str, Any]], None] | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        faults: Sequence[Fault] = ()) -> dict[str, Any] | None:
    """Runs FEDF over MPI (``MPI.COMM_WORLD``); call it on every rank of the job.

    Any exception on any rank ends the whole job (``Abort``) with a one-line
    message naming the rank; this function returns only when the run completed.

    Args:
      cfg: the run (the same on every rank).
      out: the run directory on rank 0 (``run.jsonl``, ``final_model.npy``,
        ``checkpoint/``); the other ranks learn it from rank 0.
      timeout: seconds any rank waits for any message before aborting the job (the top
        master's wait for the groups covers their inner epochs).
      checkpoint_every: write a checkpoint every this many (outer) epochs.
      resume: continue from the latest checkpoint in ``out``.
      on_setup: called on rank 0 with the run-log header, before the first epoch.
      on_epoch: called on rank 0 with each epoch's record.
      faults: faults to inject (tests; ``backends.mpi.faults``).

    Returns:
      On rank 0 the summary (as ``simulation.run``, plus ``mpi_bytes_total``); None
      on the other ranks.

    Raises:
      ResumeError: on every rank alike, when ``resume`` cannot continue.
    """
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    link = None
    try:
        check(cfg, size, resumable=bool(checkpoint_every or resume))
        if checkpoint_every is not None and checkpoint_every < 1:
            raise ValueError(f"`checkpoint_every` (={checkpoint_every}) must be >= 1.")
        top_args = (faults, Path(out) if out is not None else None, checkpoint_every, resume,
                    on_setup, on_epoch)
        def new_link(comm: MPI.Comm, layout: RankLayout) -> Link:
            """A link, sealed with keys agreed now (``--wire aead``) or bare."""
            new = Link(comm, layout, timeout)
            if cfg.run.wire == "aead":
                new.wire = wire.establish(new, cfg.run.key_file, faults=faults)
            return new

        if cfg.run.algorithm == "admm-svm":
            link = new_link(comm, split_workers(cfg.n_workers, size))
            if rank == 0:
                return admm_ranks.run_master(cfg, link, Path(out),
                                             lambda infos: _header_extra(cfg, link, infos),
                                             on_setup, on_epoch)
            admm_ranks.run_worker(cfg, link, link.layout.ids[rank], world_rank=rank)
            return None
        if cfg.run.groups == 1 and cfg.run.group_epochs == 1:
            link = new_link(comm, split_workers(cfg.n_workers, size))
            if rank == 0:
                return _top(cfg, link, *top_args)
            ranks.run_workers(cfg, link, link.layout.ids[rank], faults, checkpoint_every,
                              world_rank=rank)
            return None
        g, r = cfg.run.groups, (size - 1) // cfg.run.groups
        group, local = (rank - 1) // r, (rank - 1) % r
        members = cfg.group_workers()
        in_group = comm.Split(group if rank > 0 else MPI.UNDEFINED, rank)
        at_top = comm.Split(0 if rank == 0 or local == 0 else MPI.UNDEFINED, rank)
        tops = RankLayout(((),) + tuple((i,) for i in range(g)))
        is_async = cfg.run.schedule == "async"
        if rank == 0:
            link = new_link(at_top, tops)
            if is_async:
                return async_ranks.run_top(cfg, link, Path(out),
                                           lambda infos: _header_extra(cfg, link, infos),
                                           on_setup, on_epoch, faults)
            return _top(cfg, link, *top_args)
        group_link = new_link(in_group, _group_ranks(members[group], r))
        if local == 0:
            link = new_link(at_top, tops)
            if is_async:
                async_ranks.run_group_master(cfg, link, group_link, members[group], group,
                                             faults, world_rank=rank)
            else:
                ranks.run_group_master(cfg, link, group_link, members[group], group, faults,
                                       checkpoint_every, world_rank=rank)
        else:
            link = group_link
            if is_async:
                async_ranks.run_workers(cfg, group_link, group_link.layout.ids[local], faults,
                                        world_rank=rank)
            else:
                ranks.run_workers(cfg, group_link, group_link.layout.ids[local], faults,
                                  checkpoint_every, world_rank=rank,
                                  period=cfg.run.group_epochs)
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
