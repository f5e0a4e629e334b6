"""Multi-host FEDF under ``mpiexec``: rank 0 is the master, ranks 1..K-1 the workers.

DESIGN §5. ``mpiexec -n K fedf train [flags]`` spreads the N workers over the K - 1
worker ranks in contiguous blocks, as evenly as possible (``split_workers``). Every
rank computes the run's seeded partition and keeps only its own workers' samples; a
worker rank trains its workers with the vmap backend's ``group_step`` (one jitted
step per rank, each worker on its own global PRNG stream), so the MPI and vmap
backends agree. The master holds no training data, only the test set.

One global epoch t moves these messages, all numpy buffers through upper-case
mpi4py methods (nothing is pickled, nothing unchecked is parsed):

1. model down: ``Ibcast`` of P^{t-1} (f32[M]); a worker rank receives it once for all
   of its workers.
2. the worker ranks train (Algorithm 2) and pack their ternaries (the fused kernel).
3. costs up: each worker rank sends its workers' C_k^t (f64) to rank 0, point to
   point, so that the master can name a rank that stays silent.
4. the master computes goodness and the pilot (``master.select``, Eq. 1).
5. commands down: one ``Iscatterv`` of one byte per worker: SEND_MODEL to the pilot,
   SEND_TERNARY to the others (``SEND_NOTHING`` to all when no worker is usable).
   A scatter, not a broadcast of the pilot id: each worker learns its own command
   only, not who the pilot is, as in the paper's Algorithm 2.
6. frame lengths up: each worker rank sends its frames' byte lengths (i64 per
   worker), point to point; the master sizes the gather from them.
7. frames up: ONE ``Igatherv`` of bytes. Each rank sends its workers' frames
   (``codec`` frames: header, CRC32, payload) back to back in worker order: the
   pilot's Q_{k*}^t as a ``MODEL_UP`` frame (f32), every other worker's packed
   ternary as a ``TERNARY`` frame (``2bit`` or ``base3``).
8. the master checks every frame (``codec.decode_array`` / ``codec.decode_packed``).
   A frame that fails is dropped: that worker's ternary is masked out of Eq. (3),
   the reason goes to the epoch's ``dropped_frames``, and the epoch goes on; if
   the pilot's model frame fails, P^t = P^{t-1} (as with no usable pilot). Then the
   same jitted ``master.update`` as the vmap backend (fused unpack + Eq. 3) and the
   test metrics.

Faults. Any exception on any rank prints ``fedf: error: rank R ...`` and calls
``MPI.COMM_WORLD.Abort``, which ends the whole job (no hang). Every wait is a
non-blocking call polled under a deadline (``timeout``, seconds); when it expires
the waiting rank prints ``fedf: error: rank R sent nothing for S s at epoch T
(<stage>); aborting`` and calls ``Abort(2)``. Stages waited on per peer (costs,
frame lengths, setup, checkpoint acks) name the silent rank; the frames
``Igatherv`` names no rank (every rank has just sent its lengths when it starts).

Byte accounting. Each epoch record carries the byte fields of ``fedf simulate``
(``codec.epoch_bytes``: every message a one-worker-per-host deployment sends,
frame headers included), so MPI and vmap logs compare equal, plus ``mpi_bytes``:
the bytes MPI really moved this epoch (``mpi_bytes_detail`` by message). They
differ because a worker rank gets P^{t-1} once for all its workers, and the model
down, costs and commands go as bare MPI buffers (unframed), while the uploads are
framed and preceded by their lengths (8 bytes per worker).

Test hooks (not user-facing): the environment variable ``FEDF_TEST_FAULT`` holds
comma-separated ``raise:RANK:EPOCH`` (the rank raises at that epoch),
``hang:RANK:EPOCH`` (a worker rank stops answering; both strike a worker rank just
after it received P^{t-1}, when the master has finished epoch t - 1) and
``corrupt:WORKER:EPOCH`` (one byte of that worker's frame is flipped after its
CRC was computed).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from mpi4py import MPI

from fedf_jax import checkpoint, codec, master, runlog, simulation, worker
from fedf_jax.backends import sharded
from fedf_jax.backends import vmap as vb
from fedf_jax.config import RunConfig
from fedf_jax.data import load_dataset, stack_workers
from fedf_jax.models import Model, make_model

log = logging.getLogger(__name__)

SEND_NOTHING = 255  # the command when no worker is usable (every cost non-finite)
DEFAULT_TIMEOUT = 300.0
SETUP_TIMEOUT = 600.0  # start-up (data loading, compiling) waits at least this long
FAULT_ENV = "FEDF_TEST_FAULT"
_TAG_COST, _TAG_LENGTHS, _TAG_ACK, _TAG_SETUP = 11, 12, 13, 14
_TERNARY_PAYLOAD = {"2bit": codec.Payload.TERN_2BIT, "base3": codec.Payload.TERN_BASE3}


# --------------------------------------------------------------------------- layout


class Layout(NamedTuple):
    """The global worker ids each rank holds; rank 0 (the master) holds none."""

    ids: tuple[tuple[int, ...], ...]

    @property
    def n_ranks(self) -> int:
        return len(self.ids)

    @property
    def n_workers(self) -> int:
        return sum(len(i) for i in self.ids)

    @property
    def counts(self) -> np.ndarray:
        """i64[K] workers per rank."""
        return np.array([len(i) for i in self.ids], np.int64)

    @property
    def starts(self) -> np.ndarray:
        """i64[K] the first worker of each rank (blocks are contiguous)."""
        return np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)


def split_workers(n_workers: int, n_ranks: int) -> Layout:
    """N workers over ranks 1..K-1 in contiguous blocks, sizes differing by at most 1.

    Raises:
      ValueError: if K < 2 or N < K - 1.
    """
    if n_ranks < 2:
        raise ValueError(f"`fedf train` needs at least 2 MPI ranks (the master and one "
                         f"worker rank), got {n_ranks}; run it as `mpiexec -n K fedf train "
                         "...` with K >= 2.")
    if n_workers < n_ranks - 1:
        raise ValueError(f"`workers` (={n_workers}) must be at least the number of worker "
                         f"ranks (={n_ranks - 1}); every rank but the master holds a worker.")
    blocks = np.array_split(np.arange(n_workers), n_ranks - 1)
    return Layout(((),) + tuple(tuple(int(k) for k in b) for b in blocks))


# --------------------------------------------------------------------------- faults


class Fault(NamedTuple):
    """A test fault: ``action`` (raise, hang, corrupt) of ``target`` at ``epoch``."""

    action: str
    target: int  # a rank (raise, hang) or a global worker id (corrupt)
    epoch: int


def faults_from_env(environ: dict[str, str] | None = None) -> tuple[Fault, ...]:
    """Parses ``FEDF_TEST_FAULT`` (a test hook): ``ACTION:TARGET:EPOCH[,...]``."""
    text = (os.environ if environ is None else environ).get(FAULT_ENV, "").strip()
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        parts = item.split(":")
        if (len(parts) != 3 or parts[0] not in ("raise", "hang", "corrupt")
                or not (parts[1].isdigit() and parts[2].isdigit())):
            raise ValueError(f"{FAULT_ENV} item {item!r} must be raise:RANK:EPOCH, "
                             "hang:RANK:EPOCH or corrupt:WORKER:EPOCH.")
        out.append(Fault(parts[0], int(parts[1]), int(parts[2])))
    return tuple(out)


def _has_fault(faults: Sequence[Fault], action: str, target: int, epoch: int) -> bool:
    return Fault(action, target, epoch) in faults


# --------------------------------------------------------------------------- link


def _who(ranks: Sequence[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))


ABORT_GRACE = 0.5  # seconds between the last line written and MPI_Abort


def _abort(code: int) -> None:
    """Ends the whole MPI job, after giving mpiexec time to forward what this rank wrote
    (Abort kills every process at once: a line still on its way would be lost)."""
    time.sleep(ABORT_GRACE)
    MPI.COMM_WORLD.Abort(code)


def _fatal(message: str, code: int) -> None:
    """Prints one line to stderr and ends the whole MPI job."""
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.stderr.flush()
    _abort(code)


class Link:
    """One rank's end of the exchange: a method per message, every wait under a
    deadline, and the bytes each epoch's messages move (``moved``)."""

    def __init__(self, comm: MPI.Comm, layout: Layout, timeout: float = DEFAULT_TIMEOUT):
        if not timeout > 0:
            raise ValueError(f"`timeout` (={timeout}) must be a positive number of seconds.")
        self.comm, self.layout, self.timeout = comm, layout, float(timeout)
        self.rank = comm.Get_rank()
        self.epoch = 0  # the epoch the messages belong to (0: start-up)
        self.moved: dict[str, int] = {}
        self._recv = np.empty(0, np.uint8)
        n = layout.counts[self.rank]
        self._cmds = np.empty(n, np.uint8)
        self._empty = np.empty(0, np.uint8)

    # -- waiting

    def wait(self, reqs: list[MPI.Request], peers: Sequence[int | None], stage: str,
             timeout: float | None = None) -> None:
        """Polls ``reqs`` until all complete; after ``timeout`` s aborts the job naming
        the ranks (``peers[i]``: the rank request i waits on; None: a collective)
        that sent nothing."""
        limit = self.timeout if timeout is None else timeout
        done = [False] * len(reqs)
        start = time.monotonic()
        while True:
            for i in MPI.Request.Testsome(reqs) or ():
                done[i] = True
            if all(done):
                return
            waited = time.monotonic() - start
            if waited > limit:
                self._silent([p for p, d in zip(peers, done, strict=True) if not d], stage,
                             limit)
            # Yield the core for the first 2 ms (a short exchange completes at once,
            # and an oversubscribed host runs the peer meanwhile), then sleep up to
            # 1 ms between polls (a long wait, e.g. for training, costs no CPU).
            time.sleep(0 if waited < 2e-3 else min(1e-3, waited / 8))

    def _silent(self, pending: Sequence[int | None], stage: str, limit: float) -> None:
        ranks = sorted({p for p in pending if p is not None})
        who = _who(ranks) if ranks else "a worker rank"
        seen = "" if self.rank == 0 else f" (noticed by rank {self.rank})"
        _fatal(f"fedf: error: {who} sent nothing for {limit:g} s at epoch {self.epoch} "
               f"({stage}); aborting{seen}", 2)

    def _rank_slice(self, r: int) -> slice:
        a = int(self.layout.starts[r])
        return slice(a, a + int(self.layout.counts[r]))

    def _workers_ranks(self) -> range:
        return range(1, self.layout.n_ranks)

    # -- the master's side

    def model_down_costs_up(self, p: np.ndarray) -> np.ndarray:
        """Messages 1 and 3 at the master: ``Ibcast`` P^{t-1}, then every worker's
        cost; the deadline covers the workers' local training.

        Args:
          p: f32[M] P^{t-1}, C-contiguous.

        Returns:
          f64[N] C^t in worker order.
        """
        costs = np.empty(self.layout.n_workers, np.float64)
        reqs, peers = [self.comm.Ibcast([p, MPI.FLOAT], root=0)], [None]
        for r in self._workers_ranks():
            reqs.append(self.comm.Irecv([costs[self._rank_slice(r)], MPI.DOUBLE], source=r,
                                        tag=_TAG_COST))
            peers.append(r)
        self.wait(reqs, peers, "training and costs")
        self.moved = {"model_down": (self.layout.n_ranks - 1) * p.nbytes,
                      "costs": costs.nbytes}
        return costs

    def commands_down_lengths_up(self, cmds: np.ndarray) -> np.ndarray:
        """Messages 5 and 6 at the master: one command byte per worker (``Iscatterv``),
        then every worker's frame length.

        Args:
          cmds: u8[N] SEND_MODEL, SEND_TERNARY or SEND_NOTHING per worker.

        Returns:
          i64[N] the byte length of each worker's frame (0: no frame).
        """
        cmds = np.ascontiguousarray(cmds, np.uint8)
        lengths = np.empty(self.layout.n_workers, np.int64)
        counts, starts = self.layout.counts.tolist(), self.layout.starts.tolist()
        reqs = [self.comm.Iscatterv([cmds, counts, starts, MPI.BYTE],
                                    [self._empty, MPI.BYTE], root=0)]
        peers: list[int | None] = [None]
        for r in self._workers_ranks():
            reqs.append(self.comm.Irecv([lengths[self._rank_slice(r)], MPI.INT64_T],
                                        source=r, tag=_TAG_LENGTHS))
            peers.append(r)
        self.wait(reqs, peers, "commands and frame lengths")
        self.moved.update(commands=cmds.nbytes, frame_lengths=lengths.nbytes)
        return lengths

    def frames_up(self, lengths: np.ndarray) -> np.ndarray:
        """Message 7 at the master: the one ``Igatherv`` of every worker's frame.

        Returns:
          u8[sum(lengths)] the frames back to back in worker order (a view of a
          buffer reused next epoch).
        """
        per_rank = [int(lengths[self._rank_slice(r)].sum()) for r in range(self.layout.n_ranks)]
        total = sum(per_rank)
        if self._recv.size < total:
            self._recv = np.empty(total, np.uint8)
        recv = self._recv[:total]
        displs = np.concatenate([[0], np.cumsum(per_rank)[:-1]]).astype(np.int64).tolist()
        req = self.comm.Igatherv([self._empty, MPI.BYTE], [recv, per_rank, displs, MPI.BYTE],
                                 root=0)
        self.wait([req], [None], "frames")
        self.moved["frames"] = total
        return recv

    def checkpoint_acks(self) -> None:
        """Waits for every worker rank to confirm its checkpoint file of this epoch."""
        acks = np.empty(self.layout.n_ranks, np.int64)
        reqs, peers = [], []
        for r in self._workers_ranks():
            reqs.append(self.comm.Irecv([acks[r:r + 1], MPI.INT64_T], source=r, tag=_TAG_ACK))
            peers.append(r)
        self.wait(reqs, peers, "checkpoint")
        bad = [r for r in self._workers_ranks() if acks[r] != self.epoch]
        if bad:
            raise RuntimeError(f"{_who(bad)} acknowledged a checkpoint of another epoch "
                               f"({acks[bad].tolist()}, expected {self.epoch}).")

    # -- a worker rank's side

    def recv_model(self, out: np.ndarray) -> None:
        """Message 1 at a worker rank: P^{t-1} into ``out`` (f32[M])."""
        self.wait([self.comm.Ibcast([out, MPI.FLOAT], root=0)], [0], "model broadcast")

    def send_costs(self, costs: np.ndarray) -> None:
        """Message 3: this rank's workers' costs, f64[n_r]."""
        self.comm.Send([np.ascontiguousarray(costs, np.float64), MPI.DOUBLE], dest=0,
                       tag=_TAG_COST)

    def recv_commands(self) -> np.ndarray:
        """Message 5: this rank's workers' commands, u8[n_r]."""
        req = self.comm.Iscatterv(None, [self._cmds, MPI.BYTE], root=0)
        self.wait([req], [0], "commands")
        return self._cmds.copy()

    def send_frames(self, buf: np.ndarray, lengths: np.ndarray) -> None:
        """Messages 6 and 7: the frames' lengths, then the frames (``Igatherv``)."""
        self.comm.Send([np.ascontiguousarray(lengths, np.int64), MPI.INT64_T], dest=0,
                       tag=_TAG_LENGTHS)
        self.wait([self.comm.Igatherv([buf, MPI.BYTE], None, root=0)], [0], "frames")

    def send_ack(self) -> None:
        """Confirms this rank's checkpoint file of this epoch."""
        self.comm.Send([np.array([self.epoch], np.int64), MPI.INT64_T], dest=0, tag=_TAG_ACK)

    # -- start-up messages (JSON text, never pickles)

    def gather_json(self, obj: Any | None) -> list[Any] | None:
        """Every worker rank's JSON object at the master (None elsewhere)."""
        limit = max(self.timeout, SETUP_TIMEOUT)
        if self.rank != 0:
            data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
            self.comm.Send([np.array([data.size], np.int64), MPI.INT64_T], dest=0,
                           tag=_TAG_SETUP)
            self.comm.Send([data, MPI.BYTE], dest=0, tag=_TAG_SETUP)
            return None
        ranks = list(self._workers_ranks())
        sizes = np.zeros(self.layout.n_ranks, np.int64)
        self.wait([self.comm.Irecv([sizes[r:r + 1], MPI.INT64_T], source=r, tag=_TAG_SETUP)
                   for r in ranks], ranks, "start-up", limit)
        bufs = {r: np.empty(int(sizes[r]), np.uint8) for r in ranks}
        self.wait([self.comm.Irecv([bufs[r], MPI.BYTE], source=r, tag=_TAG_SETUP)
                   for r in ranks], ranks, "start-up", limit)
        return [json.loads(bufs[r].tobytes()) for r in ranks]

    def bcast_json(self, obj: Any | None) -> Any:
        """The master's JSON object at every rank."""
        limit = max(self.timeout, SETUP_TIMEOUT)
        peers = [None if self.rank == 0 else 0]
        data = np.frombuffer(json.dumps(obj).encode(), np.uint8) if self.rank == 0 else None
        size = np.array([0 if data is None else data.size], np.int64)
        self.wait([self.comm.Ibcast([size, MPI.INT64_T], root=0)], peers, "start-up", limit)
        if data is None:
            data = np.empty(int(size[0]), np.uint8)
        self.wait([self.comm.Ibcast([data, MPI.BYTE], root=0)], peers, "start-up", limit)
        return json.loads(data.tobytes())


# --------------------------------------------------------------------------- frames


def encode_frames(epoch: int, ids: Sequence[int], cmds: np.ndarray, packed: np.ndarray,
                  model_of: Callable[[int], Any], n_params: int,
                  scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """A worker rank's upload: its workers' frames back to back, in one buffer.

    Args:
      epoch: t.
      ids: the rank's global worker ids.
      cmds: u8[n] their commands.
      packed: u8[n, packed_size(M)] their packed ternaries (Eq. 4/5).
      model_of: ``i -> f32[M]`` the local model Q of the rank's i-th worker; read only
        for the worker told SEND_MODEL (no other model leaves the rank).
      n_params: M.
      scheme: the ternary packing.

    Returns:
      (buf, lengths): u8[sum(lengths)] and i64[n] (0 for a worker that sends nothing).
    """
    parts: list[tuple | None] = []
    for i, (k, c) in enumerate(zip(ids, cmds, strict=True)):
        if c == codec.Command.SEND_MODEL:
            q = np.ascontiguousarray(np.asarray(model_of(i)), np.float32).reshape(-1)
            parts.append((codec.Kind.MODEL_UP, codec.Payload.F32, q))
        elif c == codec.Command.SEND_TERNARY:
            parts.append((codec.Kind.TERNARY, _TERNARY_PAYLOAD[scheme], packed[i]))
        elif c == SEND_NOTHING:
            parts.append(None)
        else:
            raise ValueError(f"worker {k} got an unknown command byte {int(c)} at epoch {epoch}.")
    lengths = np.array([0 if p is None else codec.HEADER_SIZE + p[2].nbytes for p in parts],
                       np.int64)
    buf = np.empty(int(lengths.sum()), np.uint8)
    off = 0
    for k, p, length in zip(ids, parts, lengths, strict=True):
        if p is None:
            continue
        kind, payload_kind, payload = p
        head = codec.frame_header(kind, epoch, k, payload_kind, n_params, payload)
        buf[off:off + codec.HEADER_SIZE] = np.frombuffer(head, np.uint8)
        buf[off + codec.HEADER_SIZE:off + length] = payload.reshape(-1).view(np.uint8)
        off += int(length)
    return buf, lengths


class Upload(NamedTuple):
    """The master's reading of one epoch's frames."""

    q_pilot: np.ndarray | None  # f32[M] Q_{k*}^t, None when its frame was dropped
    packed: np.ndarray  # u8[N, packed_size(M)] ternaries; dropped rows are zero
    ok: np.ndarray  # bool[N] the worker's frame passed every check
    dropped: list[dict[str, Any]]  # {"worker": k, "reason": ...} per dropped frame


def decode_frames(buf: np.ndarray, lengths: np.ndarray, pilot: int, epoch: int,
                  n_params: int, scheme: str, packed: np.ndarray) -> Upload:
    """Checks every worker's frame (kind, epoch, sender, count, CRC32, codes).

    Args:
      buf: u8[sum(lengths)] the frames in worker order; lengths: i64[N].
      pilot: k*, -1 when no worker was usable (no frames then).
      epoch: t; n_params: M; scheme: the ternary packing.
      packed: u8[N, packed_size(M)], filled in place (reused across epochs).

    Returns:
      An Upload; a frame that fails a check is dropped with its reason.
    """
    ends = np.cumsum(lengths)
    ok = np.zeros(len(lengths), bool)
    dropped: list[dict[str, Any]] = []
    q = None
    for k in range(len(lengths) if pilot >= 0 else 0):
        view = buf[int(ends[k] - lengths[k]):int(ends[k])]
        try:
            if k == pilot:
                q = codec.decode_array(view, expected_kind=codec.Kind.MODEL_UP,
                                       expected_epoch=epoch, expected_sender=k,
                                       expected_count=n_params, copy=False)
                if q.dtype != np.float32:
                    q = None
                    raise codec.FrameError("model payload is not float32", k, epoch)
            else:
                packed[k] = codec.decode_packed(view, n_params, scheme, expected_epoch=epoch,
                                                expected_sender=k)
            ok[k] = True
        except codec.FrameError as e:
            packed[k] = 0
            dropped.append({"worker": k, "reason": e.reason})
            log.warning("epoch %d: dropped the frame of worker %d%s: %s", epoch, k,
                        " (the pilot; P^t = P^{t-1})" if k == pilot else "", e)
    return Upload(q, packed, ok, dropped)


# --------------------------------------------------------------------------- jitted steps


def _worker_step(model: Model, plan: vb.Plan, scheme: str, mesh, p_prev, p_prev2, epoch,
                 opt_states, data: vb.SimData):
    """A worker rank's side of one epoch: every local group's ``vb.group_step``, on one
    device (``mesh`` None, the vmap backend) or spread over the rank's local devices
    (the sharded backend's ``group_steps``).

    Returns:
      (qs, costs, packed, opt_states): the local models per group (they stay on the
      device; only the pilot's row is read), f32[n] and u8[n, packed_size(M)] in the
      rank's worker order, the new optimizer states.
    """
    if mesh is not None:
        outs = sharded.group_steps(model, plan, scheme, mesh, p_prev, p_prev2, epoch,
                                   opt_states, data)
    else:
        outs = [vb.group_step(model, g, scheme, p_prev, p_prev2, epoch, o, gd, data.train_key)
                for g, gd, o in zip(plan.groups, data.groups, opt_states, strict=True)]
    back = np.argsort(plan.order)
    costs = jnp.concatenate([o.costs for o in outs])[back]
    packed = jnp.concatenate([o.packed for o in outs])[back]
    return tuple(o.q for o in outs), costs, packed, tuple(o.opt_state for o in outs)


def _master_finish(model: Model, cfg: master.MasterConfig, test_chunk: int,
                   state: master.MasterState, sel: master.Selection, costs, q_pilot, packed,
                   frame_ok, pilot_ok, sizes, betas, x_test, y_test):
    """The master after the frames: Eq. (3) over the accepted frames, test metrics.

    Dropped ternaries join the non-finite costs in the mask; a dropped pilot model
    counts as no usable pilot (P^t = P^{t-1}), as in ``master.update``.
    """
    sel = sel._replace(valid=sel.valid & frame_ok, pilot=jnp.where(pilot_ok, sel.pilot, -1))
    new = master.update(state, sel, costs, q_pilot, packed, sizes, betas, cfg)
    loss, acc = worker.evaluate(model, new.p_prev, x_test, y_test, y_test.shape[0], test_chunk)
    return new, loss, acc, codec.count_nonzero_jnp(packed, cfg.scheme)


# --------------------------------------------------------------------------- ranks


def _checkpoint_dir(out: Path) -> Path:
    return out / "checkpoint"


def _checkpoint_file(out: Path, rank: int, epoch: int) -> Path:
    return _checkpoint_dir(out) / f"rank{rank}.epoch{epoch:06d}.npz"


def _prune(out: Path, rank: int, keep: int = 2) -> None:
    """Keeps this rank's ``keep`` newest checkpoint files (the newest may not be the
    one ``latest.json`` names yet)."""
    for old in sorted(_checkpoint_dir(out).glob(f"rank{rank}.epoch*.npz"))[:-keep]:
        old.unlink(missing_ok=True)


def _load_data(cfg: RunConfig):
    ds = load_dataset(cfg.data, cfg.data_dir, **cfg.data_options)
    model = make_model(cfg.model, ds.x_train.shape[1:], ds.num_classes, **cfg.model_options)
    return ds, model


def _run_worker(cfg: RunConfig, link: Link, faults: Sequence[Fault],
                checkpoint_every: int | None) -> None:
    rank, layout = link.rank, link.layout
    ids = layout.ids[rank]
    ds, model = _load_data(cfg)
    parts = simulation.partition_workers(cfg, ds)
    wd = stack_workers(ds.x_train, ds.y_train, [parts[k] for k in ids])  # only our workers
    specs = [cfg.specs[k] for k in ids]
    betas = np.asarray(cfg.master.betas(cfg.workers))[list(ids)]
    init_key, train_key = simulation.root_keys(cfg.seed)
    plan = vb.make_plan(specs, wd.sizes, len(ds.y_test), ids=ids, augment=cfg.augment)
    data = vb.make_data(plan, wd.x, wd.y, wd.sizes, specs, betas, ds.x_test[:1],
                        ds.y_test[:1], train_key)
    sizes = [int(v) for v in wd.sizes]
    del ds, parts, wd
    p0 = model.init(init_key)
    mesh = None
    if cfg.backend == "sharded":  # this rank's workers over its local devices
        mesh = sharded.make_mesh(cfg.devices)
        data = sharded.shard_data(plan, data, mesh)
        opt_states = sharded.init_state(plan, data, p0, mesh).opt_states
    else:
        opt_states = vb.init_state(plan, data, p0).opt_states
    step = jax.jit(functools.partial(_worker_step, model, plan, cfg.scheme, mesh),
                   donate_argnums=3).lower(p0, p0, jnp.int32(1), opt_states, data).compile()
    where = {row: (g, j) for g, grp in enumerate(plan.groups) for j, row in enumerate(grp.rows)}
    m = model.num_params

    link.gather_json({"rank": rank, "host": platform.node(), "ids": list(ids),
                      "sizes": sizes, "devices": [str(d) for d in jax.local_devices()]})
    start = link.bcast_json(None)
    if start.get("error"):
        raise ResumeError(start["error"])
    out, first = Path(start["out"]), int(start["first_epoch"])
    p_last = None
    if first > 1:  # resume: this rank's optimizer states and the model it last received
        arrays, meta = checkpoint.load(_checkpoint_file(out, rank, first - 1))
        if meta.get("ids") != list(ids):
            raise ValueError(f"checkpoint of rank {rank} holds workers {meta.get('ids')}, "
                             f"this run gives the rank workers {list(ids)}.")
        opt_states = checkpoint.restore_tree(opt_states, arrays, "opt")
        p_last = jnp.asarray(arrays["p_last"])
    slots = [np.empty(m, np.float32), np.empty(m, np.float32)]  # P^{t-1}, P^{t-2} live
    for t in range(first, cfg.epochs + 1):
        link.epoch = t
        buf = slots[t % 2]
        link.recv_model(buf)
        p = jnp.asarray(buf)
        # Faults strike after P^{t-1} arrived: the master has finished epoch t - 1.
        if _has_fault(faults, "raise", rank, t):
            raise RuntimeError(f"injected fault ({FAULT_ENV}=raise:{rank}:{t})")
        if _has_fault(faults, "hang", rank, t):
            while True:  # a silent rank: the master's deadline must catch it
                time.sleep(3600)
        qs, costs, packed, opt_states = step(p, p if p_last is None else p_last,
                                             np.int32(t), opt_states, data)
        link.send_costs(np.asarray(costs, np.float64))
        cmds = link.recv_commands()
        frames, lengths = encode_frames(
            t, ids, cmds, np.asarray(packed),
            lambda i, qs=qs: qs[where[i][0]][where[i][1]], m, cfg.scheme)
        for i, k in enumerate(ids):
            if _has_fault(faults, "corrupt", k, t) and lengths[i]:
                at = int(lengths[:i].sum()) + codec.HEADER_SIZE  # the first payload byte
                frames[at] ^= 0xFF
        link.send_frames(frames, lengths)
        p_last = p
        if checkpoint_every and t % checkpoint_every == 0:
            checkpoint.save(_checkpoint_file(out, rank, t),
                            {**checkpoint.tree_arrays(opt_states, "opt"),
                             "p_last": np.asarray(p_last)},
                            {"rank": rank, "epoch": t, "ids": list(ids)})
            link.send_ack()
            _prune(out, rank)


def _config_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    current = json.loads(json.dumps(runlog.to_json(current)))
    return [f"{k} ({saved.get(k)!r} in the checkpoint, {current.get(k)!r} now)"
            for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]


class ResumeError(ValueError):
    """``--resume`` cannot continue; raised on every rank alike (a clean exit, code 2)."""


def _resume_point(cfg: RunConfig, out: Path, n_ranks: int) -> int:
    """The last checkpointed epoch, after checking that the run is the checkpoint's."""
    pointer = _checkpoint_dir(out) / "latest.json"
    if not pointer.is_file():
        raise ValueError(f"--resume: no checkpoint in {str(_checkpoint_dir(out))!r}.")
    epoch = int(json.loads(pointer.read_text())["epoch"])
    _, meta = checkpoint.load(_checkpoint_file(out, 0, epoch))
    diff = _config_diff(meta["config"], cfg.to_dict())
    if meta["ranks"] != n_ranks:
        diff.append(f"MPI ranks ({meta['ranks']} in the checkpoint, {n_ranks} now)")
    if diff:
        raise ValueError("--resume: this run differs from the checkpoint's in: "
                         + "; ".join(diff))
    return epoch


def _truncate_log(path: Path, epoch: int) -> list[dict[str, Any]]:
    """Cuts the run log after ``epoch`` (atomically); returns its epoch records."""
    if not path.is_file():
        raise ValueError(f"--resume: the run log {str(path)!r} is missing.")
    kept, records = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        kind = rec.get("type")
        if kind == "header" or (kind in ("epoch", "resume") and rec["epoch"] <= epoch):
            kept.append(line)
            if kind == "epoch":
                records.append(rec)
    if [r["epoch"] for r in records] != list(range(1, epoch + 1)):
        raise ValueError(f"--resume: the run log {str(path)!r} does not hold epochs "
                         f"1..{epoch}.")
    checkpoint.write_text(path, "".join(line + "\n" for line in kept))
    return records


class _AppendLog(runlog.RunLog):
    """A run log continued after a resume (``runlog.RunLog`` starts a new file)."""

    def __init__(self, path: Path):  # no header: the file has one
        self.path = Path(path)
        self._file = self.path.open("a", encoding="utf-8")


def _run_master(cfg: RunConfig, link: Link, faults: Sequence[Fault], out: Path,
                checkpoint_every: int | None, resume: bool,
                on_setup: Callable[[dict[str, Any]], None] | None,
                on_epoch: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    layout, n = link.layout, cfg.workers
    ds, model = _load_data(cfg)
    m, scheme = model.num_params, cfg.scheme
    x_test, y_test = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test, jnp.int32)
    test_chunk = vb.make_plan([], [], len(ds.y_test)).test_chunk  # as the vmap backend's
    init_key, _ = simulation.root_keys(cfg.seed)
    state = master.init(model.init(init_key), n)
    betas = cfg.master.betas(n)
    costs0 = np.zeros(n, np.float32)
    packed = np.zeros((n, codec.packed_size(m, scheme)), np.uint8)
    q_none = np.zeros(m, np.float32)

    infos = link.gather_json(None)
    sizes_np = np.concatenate([np.asarray(i["sizes"], np.int64) for i in infos])
    for r, info in enumerate(infos, 1):
        if info["ids"] != list(layout.ids[r]):
            raise RuntimeError(f"rank {r} holds workers {info['ids']}, expected "
                               f"{list(layout.ids[r])}.")
    sizes = jnp.asarray(sizes_np, jnp.float32)
    select = jax.jit(master.select).lower(state, costs0, sizes).compile()
    sel0 = select(state, costs0, sizes)
    finish = jax.jit(functools.partial(_master_finish, model, cfg.master, test_chunk)).lower(
        state, sel0, costs0, q_none, packed, np.ones(n, bool), np.bool_(True), sizes, betas,
        x_test, y_test).compile()

    first, records = 1, []
    if resume:
        try:
            last = _resume_point(cfg, out, layout.n_ranks)
            records = _truncate_log(out / "run.jsonl", last)
        except (ValueError, OSError, KeyError) as e:
            error = str(e) if str(e).startswith("--resume") else f"--resume: {e}"
            link.bcast_json({"error": error})  # every rank exits with this error
            raise ResumeError(error) from None
        arrays, _ = checkpoint.load(_checkpoint_file(out, 0, last))
        state = master.MasterState(jnp.asarray(arrays["p_prev"]), jnp.asarray(arrays["p_prev2"]),
                                   jnp.asarray(arrays["prev_costs"]),
                                   jnp.asarray(arrays["epoch"], jnp.int32))
        first = last + 1
    link.bcast_json({"out": str(out), "first_epoch": first})

    rank_devices = [{"rank": 0, "host": platform.node(),
                     "devices": [str(d) for d in jax.local_devices()]}] + [
        {"rank": i["rank"], "host": i["host"], "devices": i["devices"]} for i in infos]
    header = runlog.make_header(
        cfg.to_dict(), [f"rank {d['rank']}: {dev}" for d in rank_devices for dev in d["devices"]],
        backend="mpi", ranks=layout.n_ranks, rank_devices=rank_devices,
        worker_ranks=[list(i) for i in layout.ids], num_params=m,
        worker_sizes=sizes_np.tolist(), num_test=int(len(ds.y_test)))
    if on_setup:
        on_setup({**header, "first_epoch": first})
    if resume:
        logfile = _AppendLog(out / "run.jsonl")
        logfile.write({"type": "resume", "epoch": first - 1,
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    else:
        logfile = runlog.RunLog(out / "run.jsonl", header)
    t_start = time.perf_counter()
    with logfile:
        for t in range(first, cfg.epochs + 1):
            link.epoch = t
            if _has_fault(faults, "raise", 0, t):
                raise RuntimeError(f"injected fault ({FAULT_ENV}=raise:0:{t})")
            t0 = time.perf_counter()
            costs = link.model_down_costs_up(np.asarray(state.p_prev)).astype(np.float32)
            sel = select(state, costs, sizes)
            pilot = int(sel.pilot)
            cmds = np.full(n, codec.Command.SEND_TERNARY, np.uint8)
            if pilot >= 0:
                cmds[pilot] = codec.Command.SEND_MODEL
            else:
                cmds[:] = SEND_NOTHING
            lengths = link.commands_down_lengths_up(cmds)
            _check_lengths(lengths, layout, codec.HEADER_SIZE + 4 * m)
            up = decode_frames(link.frames_up(lengths), lengths, pilot, t, m, scheme, packed)
            pilot_ok = pilot >= 0 and up.q_pilot is not None
            state, loss, acc, nonzero = finish(
                state, sel, costs, up.q_pilot if pilot_ok else q_none, up.packed, up.ok,
                np.bool_(pilot_ok), sizes, betas, x_test, y_test)
            outs = jax.device_get({"costs": costs, "goodness": sel.goodness,
                                   "valid": sel.valid, "nonzero": nonzero,
                                   "test_loss": loss, "test_accuracy": acc})
            rec = simulation.epoch_record(cfg, {**outs, "epoch": t, "pilot": pilot}, m,
                                          sizes_np, time.perf_counter() - t0)
            if up.dropped:  # a dropped ternary is no vote: leave it out of the fraction
                senders = outs["valid"] & up.ok & (np.arange(n) != pilot)
                rec["ternary_nonzero_fraction"] = (
                    float(outs["nonzero"][senders].sum()) / max(senders.sum() * m, 1))
            rec["dropped_frames"] = up.dropped
            rec["mpi_bytes"] = int(sum(link.moved.values()))
            rec["mpi_bytes_detail"] = dict(link.moved)
            records.append(rec)
            logfile.write(rec)
            if on_epoch:
                on_epoch(rec)
            if checkpoint_every and t % checkpoint_every == 0:
                _save_master(cfg, out, layout, state, t)
                link.checkpoint_acks()
                checkpoint.write_json(_checkpoint_dir(out) / "latest.json",
                                      {"epoch": t, "ranks": layout.n_ranks})
                _prune(out, 0)
        final = np.asarray(state.p_prev)
        np.save(out / "final_model.npy", final)
        summary = simulation.summarize(cfg, records, m, time.perf_counter() - t_start)
        summary["mpi_bytes_total"] = int(sum(r["mpi_bytes"] for r in records))
        logfile.write({"type": "summary", **summary})
    return {**summary, "records": records, "params": final}


def _check_lengths(lengths: np.ndarray, layout: Layout, largest: int) -> None:
    """A frame longer than the largest legitimate one (the pilot's model) is not
    received: the announcing rank breaks the protocol, and the job ends."""
    for k in np.flatnonzero((lengths < 0) | (lengths > largest)):
        rank = int(np.searchsorted(layout.starts, k, side="right") - 1)
        raise RuntimeError(f"rank {rank} announced a frame of {int(lengths[k])} bytes for "
                           f"worker {k}; the largest frame is {largest} bytes.")


def _save_master(cfg: RunConfig, out: Path, layout: Layout, state: master.MasterState,
                 epoch: int) -> None:
    arrays = {"p_prev": state.p_prev, "p_prev2": state.p_prev2,
              "prev_costs": state.prev_costs, "epoch": state.epoch}
    meta = {"epoch": epoch, "ranks": layout.n_ranks, "ids": [list(i) for i in layout.ids],
            "config": runlog.to_json(cfg.to_dict())}
    checkpoint.save(_checkpoint_file(out, 0, epoch), arrays, meta)


# --------------------------------------------------------------------------- entry


def install_excepthook() -> None:
    """Makes an uncaught exception on any rank end the whole job (as ``python -m
    mpi4py`` does): print the rank and the error, then ``Abort(1)``."""
    rank = MPI.COMM_WORLD.Get_rank()

    def hook(kind, value, tb):
        sys.stderr.write(f"fedf: error: rank {rank}: uncaught {kind.__name__}: {value}\n")
        traceback.print_exception(kind, value, tb, file=sys.stderr)
        sys.stderr.flush()
        _abort(130 if issubclass(kind, KeyboardInterrupt) else 1)

    sys.excepthook = hook


def run(cfg: RunConfig, out: str | Path, *, timeout: float = DEFAULT_TIMEOUT,
        checkpoint_every: int | None = None, resume: bool = False,
        on_setup: Callable[[dict[str, Any]], None] | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        comm: MPI.Comm | None = None) -> dict[str, Any] | None:
    """Runs FEDF over MPI; call it on every rank of the job.

    Any exception on any rank ends the whole job (``Abort``) with a one-line
    message naming the rank; this function returns only when the run completed.

    Raises:
      ResumeError: on every rank alike, when ``resume`` cannot continue (no
        checkpoint, or one of another config).

    Args:
      cfg: the run (the same on every rank).
      out: the run directory: ``run.jsonl`` and ``final_model.npy`` (rank 0), and
        ``checkpoint/`` (every rank, its own files).
      timeout: seconds any rank waits for any message before aborting the job.
      checkpoint_every: write a checkpoint every this many epochs (None: never).
      resume: continue from the latest checkpoint in ``out``.
      on_setup: called on rank 0 with the run-log header, before the first epoch.
      on_epoch: called on rank 0 with each epoch's record.

    Returns:
      On rank 0 the summary (as ``simulation.run``, plus ``mpi_bytes_total``); None
      on the worker ranks.
    """
    comm = MPI.COMM_WORLD if comm is None else comm
    rank = comm.Get_rank()
    link = None
    try:
        faults = faults_from_env()
        layout = split_workers(cfg.workers, comm.Get_size())
        if checkpoint_every is not None and checkpoint_every < 1:
            raise ValueError(f"`checkpoint_every` (={checkpoint_every}) must be >= 1.")
        link = Link(comm, layout, timeout)
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
    _fatal(f"fedf: error: rank {rank} failed{when}: {type(e).__name__}: {e}; aborting the job",
           130 if isinstance(e, KeyboardInterrupt) else 1)


__all__ = ["SEND_NOTHING", "DEFAULT_TIMEOUT", "FAULT_ENV", "ResumeError", "Layout",
           "split_workers",
           "Fault", "faults_from_env", "Link", "encode_frames", "decode_frames", "Upload",
           "install_excepthook", "run"]
