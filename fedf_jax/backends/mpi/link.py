"""The MPI link: one rank's end of the exchange, every wait under a deadline.

Rank 0 is the master, ranks 1..K-1 hold the workers in contiguous blocks
(:func:`split_workers`). :class:`Link` has one method per message of an epoch
(DESIGN §5), all numpy buffers through upper-case mpi4py methods (nothing is
pickled): model down (``Ibcast``), costs up (point to point, so a silent rank can
be named), commands down (``Iscatterv``: each worker learns its own command only),
frame lengths up, frames up (one ``Igatherv``), checkpoint acknowledgements, and
JSON start-up messages. Every wait is a non-blocking call polled under a deadline;
when it expires the waiting rank prints ``fedf: error: rank R sent nothing for S s
at epoch T (<stage>); aborting`` and ends the job with ``MPI_Abort``.

With a ``wire`` (``--wire aead``, ``backends.mpi.wire``) every message is sealed for
its link and direction: the model is broadcast sealed once (its key sealed per link),
the other messages down go point to point, the upload stays one ``Igatherv`` of
sealed buffers. A rejected upload is dropped (``rejected``); any other rejected
message ends the job.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from mpi4py import MPI

from fedf_jax import codec
from fedf_jax.backends.mpi.abort import (
    DEFAULT_TIMEOUT,
    SETUP_TIMEOUT,
    fatal,
    install_excepthook,
    who,
)
from fedf_jax.backends.mpi.wire import ENVELOPE, MODEL_EXTRA, Message, Wire

_TAG_COST, _TAG_LENGTHS, _TAG_ACK, _TAG_SETUP, _TAG_REPORT, _TAG_SUM = 11, 12, 13, 14, 15, 16
_TAG_MODEL, _TAG_COMMANDS, _TAG_SHARE = 17, 18, 19  # sealed, point to point (aead)


class RankLayout(NamedTuple):
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


def split_workers(n_workers: int, n_ranks: int) -> RankLayout:
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
    return RankLayout(((),) + tuple(tuple(int(k) for k in b) for b in blocks))


class Link:
    """One rank's end of the exchange: a method per message, every wait under a
    deadline, and the bytes each epoch's messages move (``moved``; ``added``: the part
    the sealing adds, ``bytes_aead``).

    ``wire``: None (bare buffers; frames checked by their CRC32), or the sealed ends of
    this rank's links (``wire.establish``, called on every rank once the link exists).
    """

    def __init__(self, comm: MPI.Comm, layout: RankLayout, timeout: float = DEFAULT_TIMEOUT,
                 wire: Wire | None = None):
        if not timeout > 0:
            raise ValueError(f"`timeout` (={timeout}) must be a positive number of seconds.")
        self.comm, self.layout, self.timeout = comm, layout, float(timeout)
        self.rank = comm.Get_rank()
        # Ranks in messages are the job's (COMM_WORLD's), whatever communicator this is.
        self.world = MPI.Group.Translate_ranks(comm.Get_group(), list(range(comm.Get_size())),
                                               MPI.COMM_WORLD.Get_group())
        self.epoch = 0  # the epoch the messages belong to (0: start-up)
        self.moved: dict[str, int] = {}
        self.added: dict[str, int] = {}
        self.wire = wire
        self.rejected: dict[int, str] = {}  # worker index -> why its sealed upload was dropped
        self._recv = np.empty(0, np.uint8)
        self._up = np.empty(0, np.uint8)
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
                self.silent([p for p, d in zip(peers, done, strict=True) if not d], stage,
                             limit)
            # Yield the core for the first 2 ms (a short exchange completes at once,
            # and an oversubscribed host runs the peer meanwhile), then sleep up to
            # 1 ms between polls (a long wait, e.g. for training, costs no CPU).
            time.sleep(0 if waited < 2e-3 else min(1e-3, waited / 8))

    def silent(self, pending: Sequence[int | None], stage: str, limit: float) -> None:
        ranks = sorted({self.world[p] for p in pending if p is not None})
        names = who(ranks) if ranks else "a worker rank"
        seen = "" if self.world[self.rank] == 0 else f" (noticed by rank {self.world[self.rank]})"
        fatal(f"fedf: error: {names} sent nothing for {limit:g} s at epoch {self.epoch} "
               f"({stage}); aborting{seen}", 2)

    def _rank_slice(self, r: int) -> slice:
        a = int(self.layout.starts[r])
        return slice(a, a + int(self.layout.counts[r]))

    def _workers_ranks(self) -> range:
        return range(1, self.layout.n_ranks)

    def _slices(self, arr: np.ndarray) -> dict[int, np.ndarray]:
        """Each worker rank's rows of a per-worker array."""
        return {r: arr[self._rank_slice(r)] for r in self._workers_ranks()}

    @property
    def checksum(self) -> bool:
        """Whether the frames carry their CRC32: on a bare link; a sealed one's tag covers
        them (DESIGN §8: with AEAD on, the CRC is redundant)."""
        return self.wire is None

    @property
    def bytes_aead(self) -> int:
        """The bytes the sealing added to this epoch's messages (``ENVELOPE`` each)."""
        return int(sum(self.added.values()))

    def count(self, stage: str, nbytes: int, messages: int, each: int = ENVELOPE,
               add: bool = False) -> None:
        """``moved[stage]``: ``nbytes`` of messages, plus ``each`` per message when sealed."""
        extra = each * messages if self.wire is not None else 0
        self.moved[stage] = (self.moved.get(stage, 0) if add else 0) + nbytes + extra
        if extra:
            self.added[stage] = (self.added.get(stage, 0) if add else 0) + extra

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
        ranks = list(self._workers_ranks())
        self.moved, self.added = {}, {}
        if self.wire is not None:
            reqs = self.wire.send_model(self, p, _TAG_MODEL)
            ups, finish = self.wire.post_up(self, Message.COSTS, self._slices(costs), _TAG_COST)
            self.wait(reqs + ups, [None, *ranks, *ranks], "training and costs")
            finish("costs")
        else:
            reqs, peers = [self.comm.Ibcast([p, MPI.FLOAT], root=0)], [None]
            for r in ranks:
                reqs.append(self.comm.Irecv([costs[self._rank_slice(r)], MPI.DOUBLE], source=r,
                                            tag=_TAG_COST))
                peers.append(r)
            self.wait(reqs, peers, "training and costs")
        self.count("model_down", len(ranks) * p.nbytes, len(ranks), MODEL_EXTRA)
        self.count("costs", costs.nbytes, len(ranks))
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
        ranks = list(self._workers_ranks())
        if self.wire is not None:
            reqs = self.wire.send_down(self, Message.COMMANDS, self._slices(cmds), _TAG_COMMANDS)
            ups, finish = self.wire.post_up(self, Message.LENGTHS, self._slices(lengths),
                                            _TAG_LENGTHS)
            self.wait(reqs + ups, ranks + ranks, "commands and frame lengths")
            finish("frame lengths")
        else:
            counts, starts = self.layout.counts.tolist(), self.layout.starts.tolist()
            reqs = [self.comm.Iscatterv([cmds, counts, starts, MPI.BYTE],
                                        [self._empty, MPI.BYTE], root=0)]
            peers: list[int | None] = [None]
            for r in ranks:
                reqs.append(self.comm.Irecv([lengths[self._rank_slice(r)], MPI.INT64_T],
                                            source=r, tag=_TAG_LENGTHS))
                peers.append(r)
            self.wait(reqs, peers, "commands and frame lengths")
        self.count("commands", cmds.nbytes, len(ranks))
        self.count("frame_lengths", lengths.nbytes, len(ranks))
        return lengths

    def frames_up(self, lengths: np.ndarray) -> np.ndarray:
        """Message 7 at the master: the one ``Igatherv`` of every worker's frame.

        Returns:
          u8[sum(lengths)] the frames back to back in worker order (a view of a
          buffer reused next epoch). Sealed: each worker rank's upload opened; a rank's
          rejected upload leaves its workers in ``rejected`` (worker index -> reason).
        """
        sizes = [int(lengths[self._rank_slice(r)].sum()) for r in range(self.layout.n_ranks)]
        extra = [ENVELOPE * (r > 0 and self.wire is not None) for r in range(len(sizes))]
        per_rank = [a + b for a, b in zip(sizes, extra, strict=True)]
        total = sum(per_rank)
        if self._recv.size < total:
            self._recv = np.empty(total, np.uint8)
        recv = self._recv[:total]
        displs = np.concatenate([[0], np.cumsum(per_rank)[:-1]]).astype(np.int64).tolist()
        req = self.comm.Igatherv([self._empty, MPI.BYTE], [recv, per_rank, displs, MPI.BYTE],
                                 root=0)
        self.wait([req], [None], "frames")
        self.count("frames", sum(sizes), self.layout.n_ranks - 1)
        self.rejected = {}
        if self.wire is None:
            return recv
        return self.wire.open_uploads(self, recv, displs, sizes)

    def checkpoint_acks(self) -> None:
        """Waits for every worker rank to confirm its checkpoint file of this epoch."""
        acks = np.empty(self.layout.n_ranks, np.int64)
        peers = list(self._workers_ranks())
        if self.wire is not None:
            reqs, finish = self.wire.post_up(self, Message.ACK,
                                             {r: acks[r:r + 1] for r in peers}, _TAG_ACK)
            self.wait(reqs, peers, "checkpoint")
            finish("checkpoint acknowledgement")
        else:
            self.wait([self.comm.Irecv([acks[r:r + 1], MPI.INT64_T], source=r, tag=_TAG_ACK)
                       for r in peers], peers, "checkpoint")
        bad = [r for r in self._workers_ranks() if acks[r] != self.epoch]
        if bad:
            raise RuntimeError(f"{who([self.world[r] for r in bad])} acknowledged a "
                               f"checkpoint of another epoch ({acks[bad].tolist()}, expected "
                               f"{self.epoch}).")

    def gather_reports(self, width: int) -> np.ndarray:
        """Every worker rank's report of ``width`` float64 values per worker it holds
        (e.g. a group master's summary of its group), point to point.

        Returns:
          f64[N, width] in worker order.
        """
        out = np.empty((self.layout.n_workers, width), np.float64)
        peers = list(self._workers_ranks())
        if self.wire is not None:
            reqs, finish = self.wire.post_up(self, Message.REPORT, self._slices(out),
                                             _TAG_REPORT)
            self.wait(reqs, peers, "reports")
            finish("report")
        else:
            self.wait([self.comm.Irecv([out[self._rank_slice(r)], MPI.DOUBLE], source=r,
                                       tag=_TAG_REPORT) for r in peers], peers, "reports")
        self.count("reports", out.nbytes, len(peers))
        return out

    # -- any array down, sums up (the ADMM rounds)

    def share(self, buf: np.ndarray, stage: str) -> None:
        """The master's array to every rank (``Ibcast``): rank 0 fills ``buf`` (C-contiguous),
        the others receive into it."""
        ranks = list(self._workers_ranks())
        if self.wire is None:
            self.wait([self.comm.Ibcast(buf, root=0)], [None if self.rank == 0 else 0], stage)
        elif self.rank != 0:  # the control message tells the worker rank its iteration
            self.wire.recv_down(self, Message.SHARE, buf, _TAG_SHARE, stage, epoch=None)
        else:
            self.wait(self.wire.send_down(self, Message.SHARE, dict.fromkeys(ranks, buf),
                                          _TAG_SHARE, same=True), ranks, stage)
        if self.rank == 0:
            self.count(stage, len(ranks) * buf.nbytes, len(ranks), add=True)

    def sum_up(self, values: np.ndarray | None, shape: tuple[int, ...], stage: str
               ) -> np.ndarray | None:
        """Every worker rank's float64 values, summed at the master (point to point, in
        rank order, so that a silent rank is named). Returns the sum at rank 0, None
        elsewhere."""
        if self.rank != 0:
            values = np.ascontiguousarray(values, np.float64)
            if self.wire is not None:
                self.wire.send_up(self, Message.SUM, values, _TAG_SUM)
            else:
                self.comm.Send([values, MPI.DOUBLE], dest=0, tag=_TAG_SUM)
            return None
        parts = np.empty((self.layout.n_ranks, *shape), np.float64)
        ranks = list(self._workers_ranks())
        if self.wire is not None:
            reqs, finish = self.wire.post_up(self, Message.SUM, {r: parts[r] for r in ranks},
                                             _TAG_SUM)
            self.wait(reqs, ranks, stage)
            finish(stage)
        else:
            self.wait([self.comm.Irecv([parts[r], MPI.DOUBLE], source=r, tag=_TAG_SUM)
                       for r in ranks], ranks, stage)
        self.count(stage, parts[1:].nbytes, len(ranks), add=True)
        return parts[1:].sum(axis=0)

    # -- a worker rank's side

    def recv_model(self, out: np.ndarray) -> None:
        """Message 1 at a worker rank: P^{t-1} into ``out`` (f32[M])."""
        if self.wire is not None:
            self.wire.recv_model(self, out, _TAG_MODEL)
            return
        self.wait([self.comm.Ibcast([out, MPI.FLOAT], root=0)], [0], "model broadcast")

    def _send(self, kind: Message, values: np.ndarray, mpi_type: MPI.Datatype, tag: int):
        """A worker rank's message to rank 0: sealed, or a bare typed buffer."""
        if self.wire is not None:
            self.wire.send_up(self, kind, values, tag)
        else:
            self.comm.Send([values, mpi_type], dest=0, tag=tag)

    def send_costs(self, costs: np.ndarray) -> None:
        """Message 3: this rank's workers' costs, f64[n_r]."""
        self._send(Message.COSTS, np.ascontiguousarray(costs, np.float64), MPI.DOUBLE,
                   _TAG_COST)

    def recv_commands(self) -> np.ndarray:
        """Message 5: this rank's workers' commands, u8[n_r]."""
        if self.wire is not None:
            self.wire.recv_down(self, Message.COMMANDS, self._cmds, _TAG_COMMANDS, "commands",
                                self.epoch)
        else:
            req = self.comm.Iscatterv(None, [self._cmds, MPI.BYTE], root=0)
            self.wait([req], [0], "commands")
        return self._cmds.copy()

    def upload_buffer(self, size: int) -> np.ndarray:
        """u8[size] to write this epoch's frames into (``frames.encode_frames(alloc=...)``),
        reused across epochs; sealed, it sits where :meth:`send_frames` seals it from."""
        if self.wire is not None:
            return self.wire.stage(Message.UPLOAD, self.epoch, size=size)[codec.HEADER_SIZE:]
        if self._up.size < size:
            self._up = np.empty(size, np.uint8)
        return self._up[:size]

    def send_frames(self, buf: np.ndarray, lengths: np.ndarray) -> None:
        """Messages 6 and 7: the frames' lengths, then the frames (``Igatherv``)."""
        lengths = np.ascontiguousarray(lengths, np.int64)
        self._send(Message.LENGTHS, lengths, MPI.INT64_T, _TAG_LENGTHS)
        if self.wire is not None:
            staged = self.upload_buffer(buf.size).ctypes.data == buf.ctypes.data
            env = self.wire.stage(Message.UPLOAD, self.epoch, None if staged else buf,
                                  size=buf.size)
            buf = self.wire.seal_upload(env, lengths, self.layout.ids[self.rank], self.epoch)
        self.wait([self.comm.Igatherv([buf, MPI.BYTE], None, root=0)], [0], "frames")

    def send_report(self, values: np.ndarray) -> None:
        """This rank's report, f64[n_r, width] (see :meth:`gather_reports`)."""
        self._send(Message.REPORT, np.ascontiguousarray(values, np.float64), MPI.DOUBLE,
                   _TAG_REPORT)

    def send_ack(self) -> None:
        """Confirms this rank's checkpoint file of this epoch."""
        self._send(Message.ACK, np.array([self.epoch], np.int64), MPI.INT64_T, _TAG_ACK)

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


__all__ = ["DEFAULT_TIMEOUT", "SETUP_TIMEOUT", "RankLayout", "split_workers", "Link", "fatal",
           "install_excepthook"]
