"""Point-to-point messages of an asynchronous top (``fedf train --schedule async``,
DESIGN §8): the top master receives from whichever group master is done, and no
message waits for all groups.

Group master g (rank g + 1 of the top's communicator) runs jobs. One job, from the
top's model P^s (its epoch t = s + 1, the update it would make in a synchronous run):

1. job down: a control i64[2] ``(JOB, s)`` then P^s, f32[M]; or ``(STOP, 0)``: the run
   is over;
2. cost up: C_g, f64[1], once its inner epochs are done;
3. command down, u8[1]: ``SEND_MODEL`` (the pilot of an update), ``SEND_TERNARY``
   (another member of the update), ``SEND_NOTHING`` (its arrival was dropped as too
   stale, or no member was usable), or :data:`STOP`;
4. up: its frame's length, i64[1], its frame (a codec frame of epoch t, none when told
   ``SEND_NOTHING``) and its report, f64[width].

The top keeps one posted receive per running group for its cost and polls them
together (:meth:`TopEnd.next_arrival`); each job has its own deadline, the link's
``timeout`` from the moment its model went out, and a group master that misses it is
named in the usual one line (``rank R sent nothing for S s at epoch T``). Every other
wait, at both ends, is the link's polled wait under the same timeout.

With ``--wire aead`` each message is sealed for its link and direction (the envelope
carries the job's epoch t; the control carries none, its counter orders it); the ends
open a direction's messages in the order they were sealed. A rejected frame is
dropped (its reason in ``dropped_frames``), any other rejected message ends the job.
Bytes go to the link's ``moved`` and ``added`` (the sealing) by message, accumulated
until the caller resets them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from mpi4py import MPI

from fedf_jax import codec
from fedf_jax.backends.mpi.link import Link
from fedf_jax.backends.mpi.wire import ENVELOPE, Message, u8

JOB, STOP = 1, 254  # control verbs; STOP is also a command (no frame, no report)
_TAG_JOB, _TAG_MODEL, _TAG_COST, _TAG_COMMAND = 31, 32, 33, 34
_TAG_LENGTH, _TAG_FRAME, _TAG_REPORT = 35, 36, 37


class Upload(NamedTuple):
    """What one group master sent after its command."""

    frame: np.ndarray | None  # u8[length] its codec frame (None: no frame, or rejected)
    rejected: str | None  # why its sealed frame was rejected
    report: np.ndarray  # f64[width]


class _Job(NamedTuple):
    req: MPI.Request
    buf: np.ndarray  # where its cost lands (sealed: the envelope)
    since: float  # when its model went out
    epoch: int  # t = s + 1


class _End:
    """What both ends share: typed or sealed point-to-point sends and receives."""

    def __init__(self, link: Link, n_params: int, width: int):
        self.link, self.m, self.width = link, int(n_params), int(width)
        self.wire = link.wire

    def _isend(self, peer: int, kind: Message, values: np.ndarray, mpi_type: MPI.Datatype,
               tag: int, epoch: int) -> MPI.Request:
        values = np.ascontiguousarray(values)
        if self.wire is None:
            return self.link.comm.Isend([values, mpi_type], dest=peer, tag=tag)
        sealed = self.wire.seal(peer, self.wire.stage(kind, epoch, values))
        return self.link.comm.Isend([sealed, MPI.BYTE], dest=peer, tag=tag)

    def _irecv(self, peer: int, kind: Message, out: np.ndarray, mpi_type: MPI.Datatype,
               tag: int) -> tuple[MPI.Request, np.ndarray]:
        """Posts the receive of ``out`` from ``peer``; returns it and its buffer (``out``
        itself on a bare link; the sealed envelope, to :meth:`_open`, otherwise)."""
        if self.wire is None:
            return self.link.comm.Irecv([out, mpi_type], source=peer, tag=tag), out
        buf = self.wire.buffer(("p2p", peer, kind), out.nbytes + ENVELOPE)
        return self.link.comm.Irecv([buf, MPI.BYTE], source=peer, tag=tag), buf

    def _open(self, peer: int, kind: Message, out: np.ndarray, buf: np.ndarray,
              epoch: int | None, what: str) -> None:
        """A completed receive into ``out`` (opened, when sealed)."""
        if self.wire is not None:
            u8(out)[:] = self.wire.open(peer, kind, epoch, buf, what=what)

    def count(self, stage: str, nbytes: int, messages: int) -> None:
        self.link.count(stage, nbytes, messages, add=True)


class TopEnd(_End):
    """The top master's end: jobs down, the next arrival, commands, uploads.

    Args:
      link: the top's link (rank 0) to the G group masters.
      n_params: M; width: the reports' length (f64 values).
    """

    def __init__(self, link: Link, n_params: int, width: int):
        super().__init__(link, n_params, width)
        self.jobs: dict[int, _Job] = {}  # running group -> its posted cost receive
        self._arrived: list[int] = []  # completed, not yet handed out

    def _peer(self, g: int) -> int:
        return g + 1

    def send_jobs(self, groups: Sequence[int], version: int, p: np.ndarray) -> None:
        """P^version to each group master in ``groups``: their next job, whose cost the
        top then waits for (:meth:`next_arrival`)."""
        p = np.ascontiguousarray(p, np.float32)
        epoch = version + 1
        ctrl = np.array([JOB, version], np.int64)
        reqs, peers = [], []
        for g in groups:
            r = self._peer(g)
            reqs += [self._isend(r, Message.JOB, ctrl, MPI.INT64_T, _TAG_JOB, epoch),
                     self._isend(r, Message.MODEL, p, MPI.FLOAT, _TAG_MODEL, epoch)]
            peers += [r, r]
        self.link.wait(reqs, peers, "model down")
        now = time.monotonic()
        for g in groups:
            cost = np.empty(1, np.float64)
            req, buf = self._irecv(self._peer(g), Message.COSTS, cost, MPI.DOUBLE, _TAG_COST)
            self.jobs[g] = _Job(req, buf if self.wire is not None else cost, now, epoch)
        self.count("control", ctrl.nbytes * len(groups), len(groups))
        self.count("model_down", p.nbytes * len(groups), len(groups))

    def stop(self, groups: Sequence[int]) -> None:
        """The run is over for these (idle) group masters."""
        ctrl = np.array([STOP, 0], np.int64)
        reqs = [self._isend(self._peer(g), Message.JOB, ctrl, MPI.INT64_T, _TAG_JOB, 0)
                for g in groups]
        self.link.wait(reqs, [self._peer(g) for g in groups], "stop")
        self.count("control", ctrl.nbytes * len(groups), len(groups))

    def running(self) -> list[int]:
        """The groups whose cost the top waits for (arrived ones not handed out yet
        included)."""
        return sorted(self.jobs)

    def next_arrival(self) -> tuple[int, float]:
        """The next group master done with its job, and its cost C_g: the lowest group
        among those that arrived together. Polls every running job; one that has run
        longer than the timeout ends the job naming its group master."""
        link, start = self.link, time.monotonic()
        while not self._arrived:
            for g, job in sorted(self.jobs.items()):
                if job.req.Test():
                    self._arrived.append(g)
            if self._arrived:
                break
            now = time.monotonic()
            late = [g for g, job in self.jobs.items() if now - job.since > link.timeout]
            if late:
                g = min(late, key=lambda k: self.jobs[k].since)
                link.silent([self._peer(g)], f"its job from model {self.jobs[g].epoch - 1}: "
                             "training and cost", link.timeout)
            if not self.jobs:
                raise RuntimeError("the top waits for an arrival while no group runs.")
            waited = now - start
            time.sleep(0 if waited < 2e-3 else min(1e-3, waited / 8))
        g = self._arrived.pop(0)
        job = self.jobs.pop(g)
        cost = np.empty(1, np.float64)
        if self.wire is None:
            cost[:] = job.buf
        else:
            self._open(self._peer(g), Message.COSTS, cost, job.buf, job.epoch, "cost")
        self.count("costs", cost.nbytes, 1)
        return g, float(cost[0])

    def command(self, commands: Mapping[int, int], epochs: Mapping[int, int]) -> None:
        """One command byte to each group master (``commands[g]``) of its job
        (``epochs[g]``)."""
        reqs = [self._isend(self._peer(g), Message.COMMANDS, np.array([c], np.uint8),
                            MPI.BYTE, _TAG_COMMAND, epochs[g]) for g, c in commands.items()]
        self.link.wait(reqs, [self._peer(g) for g in commands], "commands")
        self.count("commands", len(commands), len(commands))

    def collect(self, epochs: Mapping[int, int]) -> dict[int, Upload]:
        """Each commanded group master's frame and report (``epochs[g]``: its job's t).

        A frame longer than the pilot's model ends the job naming its rank; a rejected
        sealed frame comes back with its reason and no frame."""
        groups = list(epochs)
        peers = [self._peer(g) for g in groups]
        lengths = np.zeros(len(groups), np.int64)
        reports = np.empty((len(groups), self.width), np.float64)
        posted = [self._irecv(r, Message.LENGTHS, lengths[i:i + 1], MPI.INT64_T, _TAG_LENGTH)
                  for i, r in enumerate(peers)]
        self.link.wait([p[0] for p in posted], peers, "frame lengths")
        for i, (r, g) in enumerate(zip(peers, groups, strict=True)):
            self._open(r, Message.LENGTHS, lengths[i:i + 1], posted[i][1], epochs[g],
                       "frame length")
        largest = codec.HEADER_SIZE + 4 * self.m
        for r, n in zip(peers, lengths, strict=True):
            if not 0 <= n <= largest:
                raise RuntimeError(f"rank {self.link.world[r]} announced a frame of {int(n)} "
                                   f"bytes; the largest frame is {largest} bytes.")
        frames = [np.empty(int(n), np.uint8) for n in lengths]
        reqs, wait_on, bufs = [], [], {}
        for i, r in enumerate(peers):
            if lengths[i]:
                req, bufs[i] = self._irecv(r, Message.UPLOAD, frames[i], MPI.BYTE, _TAG_FRAME)
                reqs.append(req)
                wait_on.append(r)
        rep = [self._irecv(r, Message.REPORT, reports[i], MPI.DOUBLE, _TAG_REPORT)
               for i, r in enumerate(peers)]
        self.link.wait(reqs + [p[0] for p in rep], wait_on + peers, "frames and reports")
        out = {}
        for i, (r, g) in enumerate(zip(peers, groups, strict=True)):
            frame, why = (frames[i] if lengths[i] else None), None
            if lengths[i] and self.wire is not None:
                try:
                    self._open(r, Message.UPLOAD, frames[i], bufs[i], epochs[g], "sealed frame")
                except codec.FrameError as e:
                    frame, why = None, (f"{e.reason} (sealed by rank {e.sender} for epoch "
                                        f"{e.epoch})")
            self._open(r, Message.REPORT, reports[i], rep[i][1], epochs[g], "report")
            out[g] = Upload(frame, why, reports[i].copy())
        self.count("frame_lengths", lengths.nbytes, len(groups))
        self.count("frames", int(lengths.sum()), int(np.count_nonzero(lengths)))
        self.count("reports", reports.nbytes, len(groups))
        return out


class GroupEnd(_End):
    """A group master's end of the top link (:class:`TopEnd` at rank 0)."""

    def recv_job(self, out: np.ndarray) -> int | None:
        """The next job's model P^s into ``out`` (f32[M]); returns s, or None: stop."""
        ctrl = np.empty(2, np.int64)
        req, buf = self._irecv(0, Message.JOB, ctrl, MPI.INT64_T, _TAG_JOB)
        self.link.wait([req], [0], "next job")
        self._open(0, Message.JOB, ctrl, buf, None, "job control")
        if ctrl[0] == STOP:
            return None
        if ctrl[0] != JOB or ctrl[1] < 0:
            raise RuntimeError(f"rank {self.link.world[0]} sent the job control "
                               f"{ctrl.tolist()}; expected [{JOB}, version] or [{STOP}, 0].")
        version = int(ctrl[1])
        req, buf = self._irecv(0, Message.MODEL, out, MPI.FLOAT, _TAG_MODEL)
        self.link.wait([req], [0], "model down")
        self._open(0, Message.MODEL, out, buf, version + 1, "model")
        return version

    def send_cost(self, cost: float, epoch: int) -> None:
        """C_g of the job of ``epoch``."""
        req = self._isend(0, Message.COSTS, np.array([cost], np.float64), MPI.DOUBLE,
                          _TAG_COST, epoch)
        self.link.wait([req], [0], "cost")

    def recv_command(self, epoch: int) -> int:
        """The top's command for the job of ``epoch`` (the deadline covers the top's wait
        for the rest of its buffer)."""
        cmd = np.empty(1, np.uint8)
        req, buf = self._irecv(0, Message.COMMANDS, cmd, MPI.BYTE, _TAG_COMMAND)
        self.link.wait([req], [0], "command")
        self._open(0, Message.COMMANDS, cmd, buf, epoch, "command")
        return int(cmd[0])

    def send_upload(self, frame: np.ndarray, report: np.ndarray, epoch: int) -> None:
        """The frame's length, the frame (when not empty) and the report, f64[width]."""
        frame = np.ascontiguousarray(frame, np.uint8)
        report = np.ascontiguousarray(report, np.float64).reshape(-1)
        if report.size != self.width:
            raise ValueError(f"a report has {self.width} values, got {report.size}.")
        reqs = [self._isend(0, Message.LENGTHS, np.array([frame.size], np.int64), MPI.INT64_T,
                            _TAG_LENGTH, epoch)]
        if frame.size:
            reqs.append(self._isend(0, Message.UPLOAD, frame, MPI.BYTE, _TAG_FRAME, epoch))
        reqs.append(self._isend(0, Message.REPORT, report, MPI.DOUBLE, _TAG_REPORT, epoch))
        self.link.wait(reqs, [0] * len(reqs), "frame and report")


__all__ = ["JOB", "STOP", "Upload", "TopEnd", "GroupEnd"]
