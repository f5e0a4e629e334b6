"""FEDF's vote sum through secure aggregation under MPI (``fedf train --secure-sum secagg``).

The same round as ``fedf simulate --secure-sum secagg`` (``algorithms.secure``), with its
parties apart: every worker is a ``secagg.Client`` on its worker rank (client id: its
worker index, Shamir threshold ``N // 2 + 1``, fresh secrets from the operating system
every epoch: a simulation's seeded secrets follow from the run's seed, which the master
knows), rank 0 runs the ``secagg.Server`` and relays the clients' messages. The sum is
exact, so the run is reproducible all the same: ``fedf simulate``'s sum, and with one
beta the plain run's P^t bit for bit. The master learns ``sum_{k != k*} w_k T_k``
(``protocol.integer_votes``: ``S_k T_k`` with one beta) and applies Eq. (3) to it
(``master.apply_total``); no ternary leaves a worker rank in the clear. An epoch, after
DESIGN §5's messages 1-6 (model down, costs up, commands down, frame lengths up):

- frames up: the pilot's model frame only. A worker told ``SEND_TERNARY`` sends no frame
  (its length is 0; any other frame ends the job) and votes through the round instead.
- round 0 (``secagg_keys``): each rank's clients' advertisements up (68 bytes each), the
  key list down to every rank (68 N bytes).
- round 1 (``secagg_shares``): the encrypted shares up (94 (N - 1) bytes per client),
  the shares routed to each rank's clients down.
- round 2 (``secagg_masked``): the masked vectors up (u32[M] per client: its row of
  ``integer_votes`` plus masks, modulo 2^32; the pilot and a worker with a non-finite
  cost submit masked zeros), the survivor list down (4 N bytes).
- round 4 (``secagg_unmask``): the unmasking shares up (37 N bytes per client); the
  server rebuilds the masks' seeds and removes them.

Every message is a numpy byte buffer, point to point under the link's deadline (a silent
rank is named), sealed with ``--wire aead`` (``Message.SECAGG``). The run log's
``bytes_secagg_*`` fields are the server's count of the round's messages (sent and
received, per client; ``secagg.Server.round_bytes``), ``mpi_bytes_detail`` what MPI moved
under the stage names above (a key list or survivor list goes once to each rank). The
master learns no per-worker count of non-zero trits either, so the run log's
``ternary_nonzero_fraction`` is null under MPI secagg.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from mpi4py import MPI

from fedf_jax import codec, harness, layout, master, protocol, worker
from fedf_jax.algorithms.secure import STEPS, frac_bits
from fedf_jax.backends.mpi import frames
from fedf_jax.backends.mpi.link import Link
from fedf_jax.backends.mpi.wire import Message
from fedf_jax.config import MasterConfig, RunConfig
from fedf_jax.secure import secagg

_TAG_ADVERT, _TAG_KEYS, _TAG_SHARES, _TAG_ROUTED = 42, 43, 44, 45
_TAG_MASKED, _TAG_SURVIVORS, _TAG_UNMASK = 46, 47, 48


def threshold(n: int) -> int:
    """The Shamir threshold of a round of ``n`` clients: a majority (``sums``' rule)."""
    return n // 2 + 1


def context(epoch: int) -> bytes:
    """The round's context, bound into every key it derives: one round per epoch."""
    return b"fedf train epoch %d" % epoch


# -- the messages (rank 0 posts and relays; a worker rank sends and receives)


def _gather(link: Link, each: int, tag: int, stage: str) -> dict[int, np.ndarray]:
    """Rank 0: every worker rank's message of ``each`` bytes per worker it holds."""
    ranks = list(range(1, link.layout.n_ranks))
    outs = {r: np.empty(int(link.layout.counts[r]) * each, np.uint8) for r in ranks}
    if link.wire is None:
        link.wait([link.comm.Irecv([outs[r], MPI.BYTE], source=r, tag=tag) for r in ranks],
                  ranks, stage)
    else:
        reqs, finish = link.wire.post_up(link, Message.SECAGG, outs, tag)
        link.wait(reqs, ranks, stage)
        finish(stage)
    link.count(stage, sum(o.nbytes for o in outs.values()), len(ranks), add=True)
    return outs


def _scatter(link: Link, payloads: Mapping[int, np.ndarray], tag: int, stage: str,
             same: bool = False) -> None:
    """Rank 0: ``payloads[r]`` (u8) to each worker rank r (``same``: one for all)."""
    ranks = list(payloads)
    if link.wire is None:
        reqs = [link.comm.Isend([payloads[r], MPI.BYTE], dest=r, tag=tag) for r in ranks]
    else:
        reqs = link.wire.send_down(link, Message.SECAGG, payloads, tag, same=same)
    link.wait(reqs, ranks, stage)
    link.count(stage, sum(p.nbytes for p in payloads.values()), len(ranks), add=True)


def _send(link: Link, data: bytes | np.ndarray, tag: int, stage: str) -> None:
    """A worker rank's message to rank 0."""
    buf = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else data
    if link.wire is not None:
        buf = link.wire.seal(0, link.wire.stage(Message.SECAGG, link.epoch, buf))
    link.wait([link.comm.Isend([buf, MPI.BYTE], dest=0, tag=tag)], [0], stage)


def _receive(link: Link, size: int, tag: int, stage: str) -> bytes:
    """Rank 0's message of ``size`` bytes at a worker rank."""
    out = np.empty(size, np.uint8)
    if link.wire is not None:
        link.wire.recv_down(link, Message.SECAGG, out, tag, stage, link.epoch)
    else:
        link.wait([link.comm.Irecv([out, MPI.BYTE], source=0, tag=tag)], [0], stage)
    return out.tobytes()


def _per_client(link: Link, parts: Mapping[int, np.ndarray], each: int) -> dict[int, bytes]:
    """Each worker rank's message cut into its clients' records: client id -> bytes."""
    out = {}
    for r, buf in parts.items():
        first = int(link.layout.starts[r])
        for i in range(int(link.layout.counts[r])):
            out[first + i] = buf[i * each:(i + 1) * each].tobytes()
    return out


# -- rank 0: the server


def _finish_fn(model, cfg: MasterConfig, test_chunk: int, bits: int, state, sel, costs,
               q_pilot, total, pilot_ok, sizes, betas, x_test, y_test):
    """Eq. (3) from the secure sum (as ``fedf.combine``'s secure branch), then the test
    metrics; a dropped pilot model counts as no usable pilot (P^t = P^{t-1})."""
    sel = sel._replace(pilot=jnp.where(pilot_ok, sel.pilot, -1))
    _, scale = protocol.integer_weights(sizes, sel.pilot, cfg.alpha0, betas, state.epoch,
                                        frac_bits=bits)
    new = master.apply_total(state, sel, costs, q_pilot, total, scale, cfg)
    # the master sees no single ternary: the pilot guard's bands only
    guarded = {"paper_pilot": protocol.select_pilot(sel.goodness)} if cfg.pilot_guard else {}
    if x_test is None:
        return new, (), guarded
    loss, acc = worker.evaluate(model, new.p_prev, x_test, y_test, y_test.shape[0], test_chunk)
    return new, (loss, acc), guarded


class Server:
    """Rank 0's side of the secure sum: the pilot's frame, one secagg round per epoch as
    its server, and Eq. (3) from the sum.

    Arguments as for ``ranks.fedf.Master`` (``state``, ``sel``: examples to compile with).
    """

    def __init__(self, link: Link, cfg: MasterConfig, n_params: int, sizes, betas, state,
                 sel, compiler: harness.Compiler, model=None, x_test=None, y_test=None):
        self.link, self.cfg, self.m, self.n = link, cfg, n_params, link.layout.n_workers
        self.senders = [k for ids in link.layout.ids for k in ids]
        self.sizes, self.betas, self.test = sizes, betas, (x_test, y_test)
        self.bits = frac_bits(np.asarray(sizes), np.asarray(betas))
        self.q_none = np.zeros(n_params, np.float32)
        self.moved = np.zeros(len(STEPS), np.int64)
        test_chunk = min(layout.EVAL_CHUNK, max(len(y_test), 1)) if y_test is not None else 1
        self.finish = compiler(
            jax.jit(functools.partial(_finish_fn, model, cfg, test_chunk, self.bits)), state,
            sel, np.zeros(self.n, np.float32), self.q_none, np.zeros(n_params, np.int32),
            np.bool_(True), sizes, betas, x_test, y_test, donated=())

    def epoch(self, state, sel, costs, buf: np.ndarray, lengths: np.ndarray, pilot: int
              ) -> tuple[frames.Upload, tuple]:
        """The pilot's frame from the gathered upload, the round, and Eq. (3). Returns the
        upload's reading and ``(state, metrics, nonzero, extra)`` (``nonzero``: NaN, the
        master sees no single ternary; ``extra``: host outputs for the run log,
        ``secagg_bytes`` among them)."""
        t = self.link.epoch
        up = self.pilot_frame(buf, lengths, pilot, t)
        nonzero = np.full(self.n, np.nan)
        total, self.moved = self.round(t)
        pilot_ok = pilot >= 0 and up.q_pilot is not None
        state, metrics, guarded = self.finish(
            state, sel, costs, up.q_pilot if pilot_ok else self.q_none, total,
            np.bool_(pilot_ok), self.sizes, self.betas, *self.test)
        return up, (state, metrics, nonzero, {**guarded, "secagg_bytes": self.moved})

    def pilot_frame(self, buf: np.ndarray, lengths: np.ndarray, pilot: int,
                    epoch: int) -> frames.Upload:
        """The pilot's model frame, checked as ``frames.decode_frames`` checks it; any
        other worker's frame (a ternary in the clear) breaks the protocol: the job ends."""
        other = [k for k in np.flatnonzero(lengths).tolist() if k != pilot]
        if other:
            k = other[0]
            raise RuntimeError(f"worker {self.senders[k]} sent a frame of {int(lengths[k])} "
                               "bytes under --secure-sum secagg, where only the pilot's "
                               "model goes in the clear.")
        ok = np.ones(self.n, bool)
        if pilot < 0:
            return frames.Upload(None, None, ok, [])
        rejected = {0: self.link.rejected[pilot]} if pilot in self.link.rejected else None
        one = frames.decode_frames(buf, lengths[pilot:pilot + 1], 0, epoch, self.m,
                                   self.cfg.scheme, np.zeros((1, 0), np.uint8),
                                   [self.senders[pilot]], rejected, self.link.checksum)
        ok[pilot] = one.ok[0]
        return one._replace(packed=None, ok=ok)

    def round(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """One secagg round as its server, relaying the clients' messages.

        Returns:
          (i32[M] the sum of the workers' vote rows, i64[4] the bytes of each step,
          sent and received, over all clients: ``secagg.Server.round_bytes``).
        """
        link, n, m = self.link, self.n, self.m
        everyone = range(1, link.layout.n_ranks)
        server = secagg.Server(n, threshold(n), m, np.uint32, context=context(epoch))

        keys = _gather(link, secagg.ADVERT_SIZE, _TAG_ADVERT, "secagg_keys")
        key_list = server.collect_keys(_per_client(link, keys, secagg.ADVERT_SIZE))
        _scatter(link, dict.fromkeys(everyone, np.frombuffer(key_list, np.uint8)), _TAG_KEYS,
                 "secagg_keys", same=True)

        each = secagg.SHARE_SIZE * (n - 1)
        shares = _gather(link, each, _TAG_SHARES, "secagg_shares")
        routed = server.route_shares(_per_client(link, shares, each))
        _scatter(link, {r: np.frombuffer(b"".join(routed[k] for k in link.layout.ids[r]),
                                         np.uint8) for r in everyone},
                 _TAG_ROUTED, "secagg_shares")

        masked = _gather(link, 4 * m, _TAG_MASKED, "secagg_masked")
        survivors = server.collect_masked({k: np.frombuffer(y, np.uint32) for k, y in
                                           _per_client(link, masked, 4 * m).items()})
        _scatter(link, dict.fromkeys(everyone, np.frombuffer(survivors, np.uint8)),
                 _TAG_SURVIVORS, "secagg_masked", same=True)

        each = secagg.UNMASK_SIZE * n
        total = server.aggregate(_per_client(link, _gather(link, each, _TAG_UNMASK,
                                                            "secagg_unmask"), each))
        counted = server.round_bytes()
        return total.view(np.int32), (counted.sent + counted.received).sum(axis=0)


def measured(rec: dict[str, Any], out: Mapping[str, Any]) -> dict[str, Any]:
    """An epoch's run-log line with the round's measured bytes (``out["secagg_bytes"]``)
    in the ``bytes_secagg_*`` fields, in place of ``algorithms.secure.account``'s formula
    (the same numbers while every client stays), ``bytes_total`` adjusted."""
    for step, v in zip(STEPS, np.asarray(out["secagg_bytes"]).tolist(), strict=True):
        field = f"bytes_secagg_{step}"
        rec["bytes_total"] += int(v) - rec[field]
        rec[field] = int(v)
    return rec


# -- a worker rank: its workers' clients


def _votes_fn(m: int, scheme: str, bits: int, alpha0: float, sizes, betas, packed, keep,
              epoch):
    """This rank's rows of ``protocol.integer_votes`` and their non-zero counts. Row 0 of
    ``sizes``, ``betas`` is worker 0's (the reference beta of Eq. 3's weights), a row of
    zeros that submits nothing; ``keep``: which of the rank's workers vote."""
    packed = jnp.concatenate([jnp.zeros((1, packed.shape[1]), packed.dtype), packed])
    keep = jnp.concatenate([jnp.zeros(1, bool), keep])
    rows, _ = protocol.integer_votes(packed, m, sizes, -1, alpha0, betas, epoch, scheme,
                                     keep, bits)
    return rows[1:], codec.count_nonzero_jnp(packed[1:], scheme)


class Clients:
    """A worker rank's side of the secure sum: one ``secagg.Client`` per worker per epoch.

    Args:
      link: the rank's end; cfg: the run; ids: the rank's workers (global ids, which are
        their client ids); all_sizes: S_k of all N workers (the run's seeded partition,
        for the fixed point of per-worker betas, ``algorithms.secure.frac_bits``).
    """

    def __init__(self, link: Link, cfg: RunConfig, ids: Sequence[int], all_sizes,
                 n_params: int):
        n, m_cfg = cfg.n_workers, cfg.master
        betas = m_cfg.betas(n)
        self.link, self.ids, self.n, self.m = link, list(ids), n, n_params
        bits = frac_bits(np.asarray(all_sizes), betas)
        rows = [0, *self.ids]
        self.sizes = np.asarray(all_sizes, np.float32)[rows]
        self.betas = betas[rows]
        size = codec.packed_size(n_params, m_cfg.scheme)
        self.votes = jax.jit(functools.partial(
            _votes_fn, n_params, m_cfg.scheme, bits, m_cfg.alpha0)).lower(
            self.sizes, self.betas, np.zeros((len(ids), size), np.uint8),
            np.zeros(len(ids), bool), np.int32(1)).compile()

    @staticmethod
    def frame_commands(cmds: np.ndarray) -> np.ndarray:
        """The commands the rank's upload follows: a worker told ``SEND_TERNARY`` sends no
        frame (it votes through the round)."""
        return np.where(cmds == codec.Command.SEND_TERNARY, frames.SEND_NOTHING,
                        cmds).astype(np.uint8)

    def vote(self, epoch: int, cmds: np.ndarray, packed: np.ndarray, costs: np.ndarray
             ) -> None:
        """The rank's workers' side of the epoch's round: a worker told ``SEND_TERNARY``
        whose cost is finite submits its row of ``integer_votes``, the others (the pilot
        among them) zeros."""
        link, n, m = self.link, self.n, self.m
        keep = (cmds == codec.Command.SEND_TERNARY) & np.isfinite(costs)
        rows, _ = self.votes(self.sizes, self.betas, packed, keep, np.int32(epoch))
        rows = np.asarray(rows).view(np.uint32)
        clients = [secagg.Client(k, n, threshold(n), m, np.uint32, context=context(epoch))
                   for k in self.ids]
        _send(link, b"".join(c.advertise() for c in clients), _TAG_ADVERT,
              "secure aggregation: keys")
        key_list = _receive(link, secagg.ADVERT_SIZE * n, _TAG_KEYS, "secure aggregation: keys")
        _send(link, b"".join(c.share_keys(key_list) for c in clients), _TAG_SHARES,
              "secure aggregation: shares")
        each = secagg.SHARE_SIZE * (n - 1)
        routed = _receive(link, each * len(clients), _TAG_ROUTED, "secure aggregation: shares")
        masked = np.stack([c.masked_input(rows[i], routed[i * each:(i + 1) * each])
                           for i, c in enumerate(clients)])
        _send(link, masked.view(np.uint8).reshape(-1), _TAG_MASKED,
              "secure aggregation: masked input")
        survivors = _receive(link, 4 * n, _TAG_SURVIVORS, "secure aggregation: survivors")
        _send(link, b"".join(c.unmask_shares(survivors) for c in clients), _TAG_UNMASK,
              "secure aggregation: unmasking")


__all__ = ["threshold", "context", "Server", "measured", "Clients"]
