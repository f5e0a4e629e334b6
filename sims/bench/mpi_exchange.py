"""The MPI backend's per-epoch exchange against a raw mpi4py exchange of the same bytes.

The exchanges of one FEDF epoch, run interleaved in the same job, without training:

- ``raw``: blocking upper-case collectives (``Bcast``, ``Gatherv``, ``Scatterv``,
  ``Gatherv``, ``Gatherv``) moving the same byte sizes, no framing, no checks;
- ``crc``: the code `fedf train` runs (``fedf_jax.backends.mpi``, ``--wire crc``):
  ``Ibcast`` of P^{t-1}, costs and frame lengths point to point, the command
  ``Iscatterv``, one ``Igatherv`` of frames, every wait polled under a deadline; the
  worker ranks frame their uploads (header + CRC32, ISA-L) into the link's reused
  buffer and the master checks every frame;
- ``crc-overlap`` (a): as ``crc``, but the frames go up point to point in chunks of
  ``--chunk`` bytes: the sender checksums chunk i+1 while chunk i is in flight (the
  header, with the CRC, goes last), the master checksums the chunks as they arrive;
- ``crc32c`` (b): as ``crc`` with the frame checksum computed by a hardware CRC32C
  (the ``crc32c`` or ``google-crc32c`` package; skipped when neither is installed);
- ``no-checksum``: as ``crc`` with the checksum replaced by a constant: what any
  checksum can cost at most;
- ``aead`` (c): the code `fedf train --wire aead` runs: every message sealed per link
  and direction with AES-256-GCM (keys agreed by X25519); P^{t-1} sealed once under a
  fresh key and broadcast (``Ibcast``), that key sealed per link; each rank's upload
  sealed once; the frames' CRC32 neither computed nor checked (the tag covers them);
- ``aead+crc``: as ``aead`` with the frames' CRC32 computed and checked as well;
- ``pickle`` (with ``--pickle``): lower-case, pickling ``bcast``/``gather``/``scatter``/
  ``gather`` of the same arrays, for contrast.

The pilot rotates over the workers; every worker rank holds N / (K - 1) workers.
Times are the master's, from the model broadcast to the last frame checked; each
repeat starts after a barrier, and the variants take turns within each repeat. The
table gives median (min) ms per epoch and the ratio of medians against ``raw``; the
last line gives that ratio at M = 10 M for the configuration `fedf train` uses by
default (``crc``). Run it with 4 ranks (a master and 3 worker ranks):

    mpiexec -n 4 python sims/bench/mpi_exchange.py
    mpiexec -n 4 python sims/bench/mpi_exchange.py --sizes 500000,10000000 --workers 6
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np
from mpi4py import MPI

from fedf_jax import codec
from fedf_jax.backends import mpi
from fedf_jax.backends.mpi import wire
from fedf_jax.codec import frames as codec_frames

_TAG_CHUNK, _TAG_HEAD = 31, 32
DEFAULT = "crc"  # what `fedf train` runs without --wire


def _crc32c():
    """A hardware CRC32C with zlib's ``crc32(data, value)`` signature, or None."""
    with contextlib.suppress(ImportError):
        import crc32c

        return lambda data, value=0: crc32c.crc32c(data, value)
    with contextlib.suppress(ImportError):
        import google_crc32c

        return lambda data, value=0: google_crc32c.extend(value, bytes(data))
    return None


@contextlib.contextmanager
def checksum(fn):
    """The frames' checksum replaced by ``fn`` (None: left alone) on this rank."""
    saved = codec_frames._crc32
    codec_frames._crc32 = fn or saved
    try:
        yield
    finally:
        codec_frames._crc32 = saved


def _constant(data, value=0):
    return 0


def backend_epoch(link: mpi.Link, t: int, p: np.ndarray, q: np.ndarray, packed: np.ndarray,
                  costs: np.ndarray, out: np.ndarray, scheme: str, chunk: int = 0,
                  crc: bool | None = None) -> None:
    """One epoch's exchange as `fedf train` moves it (``chunk``: the frames up in
    checksummed chunks instead of the ``Igatherv``; ``crc``: the frames' CRC32 on or
    off, default the link's choice)."""
    layout, m = link.layout, p.size
    crc = link.checksum if crc is None else crc
    link.epoch = t
    pilot = t % layout.n_workers
    if link.rank == 0:
        link.model_down_costs_up(p)
        cmds = np.full(layout.n_workers, codec.Command.SEND_TERNARY, np.uint8)
        cmds[pilot] = codec.Command.SEND_MODEL
        lengths = link.commands_down_lengths_up(cmds)
        buf = chunked_recv(link, lengths, chunk) if chunk else link.frames_up(lengths)
        with checksum(_constant if chunk else None):
            up = mpi.decode_frames(buf, lengths, pilot, t, m, scheme, out,
                                   rejected=link.rejected, checksum=crc)
        if up.dropped:
            raise RuntimeError(f"frames dropped: {up.dropped}")
        return
    ids = layout.ids[link.rank]
    link.recv_model(p)
    link.send_costs(costs)
    cmds = link.recv_commands()
    with checksum(_constant if chunk else None):  # the chunks carry the CRC
        buf, lengths = mpi.encode_frames(t, ids, cmds, packed, lambda i: q[i], m, scheme,
                                         alloc=link.upload_buffer, checksum=crc)
    if not chunk:
        link.send_frames(buf, lengths)
        return
    link.comm.Send([lengths, MPI.INT64_T], dest=0, tag=12)  # the link's lengths tag
    chunked_send(link.comm, buf, lengths, chunk)


def chunked_send(comm: MPI.Comm, buf: np.ndarray, lengths: np.ndarray, chunk: int) -> None:
    """(a) Each frame as its header (CRC field 0), its payload in chunks and its CRC: the
    CRC of chunk i+1 is computed while chunk i is in flight."""
    crc32, reqs, off, crcs = codec_frames._crc32, [], 0, []
    for n in lengths.tolist():
        if not n:
            continue
        head, pos, end = buf[off:off + codec.HEADER_SIZE], off + codec.HEADER_SIZE, off + n
        reqs.append(comm.Isend([head, MPI.BYTE], dest=0, tag=_TAG_HEAD))
        crc = crc32(head[:-4])
        while pos < end:
            stop = min(pos + chunk, end)
            crc = crc32(buf[pos:stop], crc)
            reqs.append(comm.Isend([buf[pos:stop], MPI.BYTE], dest=0, tag=_TAG_CHUNK))
            pos = stop
        crcs.append(np.array([crc], np.uint32))
        reqs.append(comm.Isend([crcs[-1], MPI.UINT32_T], dest=0, tag=_TAG_HEAD))
        off = end
    MPI.Request.Waitall(reqs)


def chunked_recv(link: mpi.Link, lengths: np.ndarray, chunk: int) -> np.ndarray:
    """(a) The master's side: every receive posted at once, each chunk checksummed as it
    arrives (in order within a frame), the CRC compared when it comes last."""
    crc32, layout = codec_frames._crc32, link.layout
    total = int(lengths.sum())
    if link._recv.size < total:
        link._recv = np.empty(total, np.uint8)
    recv, off, plan = link._recv[:total], 0, []
    for r in range(1, layout.n_ranks):
        a = int(layout.starts[r])
        for n in lengths[a:a + int(layout.counts[r])].tolist():
            if not n:
                continue
            head, pos, end = recv[off:off + codec.HEADER_SIZE], off + codec.HEADER_SIZE, off + n
            views = [(head, link.comm.Irecv([head, MPI.BYTE], source=r, tag=_TAG_HEAD))]
            while pos < end:
                stop = min(pos + chunk, end)
                views.append((recv[pos:stop], link.comm.Irecv([recv[pos:stop], MPI.BYTE],
                                                               source=r, tag=_TAG_CHUNK)))
                pos = stop
            sent = np.empty(1, np.uint32)
            plan.append((r, views, sent, link.comm.Irecv([sent, MPI.UINT32_T], source=r,
                                                         tag=_TAG_HEAD)))
            off = end
    link.moved["frames"] = total
    for r, views, sent, last in plan:
        crc = None
        for view, req in views:
            req.Wait()
            crc = crc32(view[:-4]) if crc is None else crc32(view, crc)
        last.Wait()
        if crc != int(sent[0]):
            raise RuntimeError(f"CRC mismatch in a chunked frame from rank {r}")
    return recv


class Raw:
    """The same messages as the backend's, as blocking buffer collectives of raw bytes."""

    def __init__(self, comm: MPI.Comm, layout: mpi.RankLayout, m: int, scheme: str):
        self.comm, self.layout, self.m = comm, layout, m
        self.rank = comm.Get_rank()
        self.counts, self.starts = layout.counts.tolist(), layout.starts.tolist()
        tern, model = codec.HEADER_SIZE + codec.packed_size(m, scheme), codec.HEADER_SIZE + 4 * m
        self.sizes = {(r, pilot): sum(model if k == pilot else tern for k in layout.ids[r])
                      for r in range(layout.n_ranks) for pilot in range(layout.n_workers)}
        self.send = {pilot: np.ones(self.sizes[self.rank, pilot], np.uint8)
                     for pilot in range(layout.n_workers)}
        self.recv = np.empty(max(sum(self.sizes[r, p] for r in range(layout.n_ranks))
                                 for p in range(layout.n_workers)), np.uint8)
        n = layout.counts[self.rank]
        self.costs, self.cmds = np.ones(n, np.float64), np.empty(n, np.uint8)
        self.lengths = np.ones(n, np.int64)

    def epoch(self, t: int, p: np.ndarray) -> None:
        comm, n = self.comm, self.layout.n_workers
        pilot = t % n
        root = self.rank == 0
        comm.Bcast([p, MPI.FLOAT], root=0)
        costs = np.empty(n, np.float64) if root else None
        comm.Gatherv([self.costs, MPI.DOUBLE],
                     [costs, self.counts, self.starts, MPI.DOUBLE] if root else None, root=0)
        cmds = np.zeros(n, np.uint8) if root else None
        comm.Scatterv([cmds, self.counts, self.starts, MPI.BYTE] if root else None,
                      [self.cmds, MPI.BYTE], root=0)
        lengths = np.empty(n, np.int64) if root else None
        comm.Gatherv([self.lengths, MPI.INT64_T],
                     [lengths, self.counts, self.starts, MPI.INT64_T] if root else None, root=0)
        per_rank = [self.sizes[r, pilot] for r in range(self.layout.n_ranks)]
        displs = np.concatenate([[0], np.cumsum(per_rank)[:-1]]).tolist()
        comm.Gatherv([self.send[pilot], MPI.BYTE],
                     [self.recv, per_rank, displs, MPI.BYTE] if root else None, root=0)


def pickle_epoch(comm: MPI.Comm, layout: mpi.RankLayout, t: int, p: np.ndarray, q: np.ndarray,
                 packed: np.ndarray, costs: np.ndarray) -> None:
    n, rank = layout.n_workers, comm.Get_rank()
    pilot = t % n
    comm.bcast(p if rank == 0 else None, root=0)
    comm.gather(None if rank == 0 else costs, root=0)
    cmds = None
    if rank == 0:
        flat = [0] * n
        flat[pilot] = 1
        cmds = [[flat[k] for k in ids] for ids in layout.ids]
    mine = comm.scatter(cmds, root=0)
    ups = None
    if rank:
        ups = [q[i] if c else packed[i] for i, c in enumerate(mine)]
    comm.gather(ups, root=0)


def exchanges(comm, layout, p, q, packed, costs, out, scheme: str, chunk: int,
              with_pickle: bool) -> dict:
    """name -> one epoch's exchange (a function of t); the links under ``"links"``."""
    crc = mpi.Link(comm, layout, timeout=120)
    sealed = mpi.Link(comm, layout, timeout=120)
    sealed.wire = wire.establish(sealed)
    raw = Raw(comm, layout, p.size, scheme)
    crc32c = _crc32c()

    def run(link, fn=None, chunked=0, frames_crc=None):
        def epoch(t):
            with checksum(fn):
                backend_epoch(link, t, p, q, packed, costs, out, scheme, chunked, frames_crc)
        return epoch

    runs = {"raw": lambda t: raw.epoch(t, p), "crc": run(crc),
            "crc-overlap": run(crc, chunked=chunk)}
    if crc32c is not None:
        runs["crc32c"] = run(crc, crc32c)
    runs.update({"no-checksum": run(crc, _constant), "aead": run(sealed),
                 "aead+crc": run(sealed, frames_crc=True)})
    if with_pickle:
        runs["pickle"] = lambda t: pickle_epoch(comm, layout, t, p, q, packed, costs)
    return {"runs": runs, "links": {"crc": crc, "aead": sealed}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="500000,10000000", help="model sizes M, comma-separated")
    ap.add_argument("--workers", type=int, help="N in all (default: one per worker rank)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--scheme", default="2bit", choices=codec.SCHEMES)
    ap.add_argument("--chunk", type=int, default=1 << 21, help="bytes per chunk (crc-overlap)")
    ap.add_argument("--pickle", action="store_true", help="time the pickling exchange too")
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    layout = mpi.split_workers(args.workers or size - 1, size)
    n_local = len(layout.ids[rank])
    rng = np.random.default_rng(rank)
    say = print if rank == 0 else (lambda *a, **k: None)
    say(f"{size} ranks, {layout.n_workers} workers ({', '.join(map(str, layout.counts[1:]))} "
        f"per worker rank), {args.scheme} ternaries, {args.repeats} repeats, chunks of "
        f"{args.chunk:,} bytes; median (min) ms per epoch, ratio of medians to raw")
    say(f"{'M':>10} {'variant':>12} {'bytes moved':>12} {'ms':>16} {'ratio':>6}", flush=True)
    ratios = {}
    for m in (int(v) for v in args.sizes.split(",")):
        p = np.ones(m, np.float32)
        q = rng.normal(size=(max(n_local, 1), m)).astype(np.float32)
        packed = np.stack([codec.pack(rng.integers(-1, 2, m).astype(np.int8), args.scheme)
                           for _ in range(max(n_local, 1))])
        out = np.zeros((layout.n_workers, codec.packed_size(m, args.scheme)), np.uint8)
        costs = np.ones(n_local, np.float64)
        made = exchanges(comm, layout, p, q, packed, costs, out, args.scheme, args.chunk,
                         args.pickle)
        runs = made["runs"]
        times: dict[str, list[float]] = {k: [] for k in runs}
        moved = {}
        for t in range(1, args.repeats + 3):
            for name, fn in runs.items():
                comm.Barrier()
                t0 = time.perf_counter()
                fn(t)
                if t > 2:  # two warm-up epochs
                    times[name].append(time.perf_counter() - t0)
                link = made["links"]["aead" if name.startswith("aead") else "crc"]
                moved[name] = int(sum(link.moved.values())) if name not in ("raw",
                                                                            "pickle") else None
        med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        for name in runs:
            ratio = med[name] / med["raw"]
            ratios[m, name] = ratio
            cell = f"{med[name]:.2f} ({1e3 * min(times[name]):.2f})"
            say(f"{m:>10,} {name:>12} {moved[name] or '':>12,} {cell:>16} {ratio:>5.2f}x"
                if moved[name] else f"{m:>10,} {name:>12} {'':>12} {cell:>16} {ratio:>5.2f}x",
                flush=True)
    if (10_000_000, DEFAULT) in ratios:
        say(f"aead/raw ratio at M=10M: {ratios[10_000_000, 'aead']:.2f}")
        say(f"exchange/raw ratio at M=10M: {ratios[10_000_000, DEFAULT]:.2f}")


if __name__ == "__main__":
    main()
