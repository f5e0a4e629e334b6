"""The MPI backend's per-epoch exchange against a bare mpi4py exchange of the same bytes.

Three exchanges of one FEDF epoch, run interleaved in the same job, without training:

- ``backend``: the code `fedf train` runs (``fedf_jax.backends.mpi``): ``Ibcast`` of
  P^{t-1}, the costs and frame lengths point to point, the command ``Iscatterv``,
  the one ``Igatherv`` of frames, every wait polled under a deadline; the worker
  ranks frame their uploads (header + CRC32) and the master checks every frame;
- ``bare``: blocking upper-case collectives (``Bcast``, ``Gatherv``, ``Scatterv``,
  ``Gatherv``, ``Gatherv``) moving the same byte sizes, no framing, no checks;
- ``pickle``: the lower-case, pickling ``bcast``/``gather``/``scatter``/``gather``
  of the same arrays, for contrast.

The pilot rotates over the workers; every worker rank holds N / (K - 1) workers.
Times are the master's, from the model broadcast to the last frame decoded; each
repeat starts after a barrier. Run it with 4 ranks (a master and 3 worker ranks):

    mpiexec -n 4 python sims/bench/mpi_exchange.py
    mpiexec -n 4 python sims/bench/mpi_exchange.py --sizes 500000,10000000 --workers 6
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from mpi4py import MPI

from fedf_jax import codec
from fedf_jax.backends import mpi


def backend_epoch(link: mpi.Link, t: int, p: np.ndarray, q: np.ndarray, packed: np.ndarray,
                  costs: np.ndarray, out: np.ndarray, scheme: str) -> None:
    layout, m = link.layout, p.size
    link.epoch = t
    pilot = t % layout.n_workers
    if link.rank == 0:
        link.model_down_costs_up(p)
        cmds = np.full(layout.n_workers, codec.Command.SEND_TERNARY, np.uint8)
        cmds[pilot] = codec.Command.SEND_MODEL
        lengths = link.commands_down_lengths_up(cmds)
        up = mpi.decode_frames(link.frames_up(lengths), lengths, pilot, t, m, scheme, out)
        if up.dropped:
            raise RuntimeError(f"frames dropped: {up.dropped}")
        return
    ids = layout.ids[link.rank]
    link.recv_model(p)
    link.send_costs(costs)
    cmds = link.recv_commands()
    buf, lengths = mpi.encode_frames(t, ids, cmds, packed, lambda i: q[i], m, scheme)
    link.send_frames(buf, lengths)


class Bare:
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


class Exchanges(dict):
    """name -> one epoch's exchange (a function of t); ``moved()``: the backend's bytes."""

    def moved(self) -> int:
        return int(sum(self.link.moved.values()))


def exchanges(comm, layout, p, q, packed, costs, out, scheme: str) -> Exchanges:
    link = mpi.Link(comm, layout, timeout=120)
    bare = Bare(comm, layout, p.size, scheme)
    runs = Exchanges(
        backend=lambda t: backend_epoch(link, t, p, q, packed, costs, out, scheme),
        bare=lambda t: bare.epoch(t, p),
        pickle=lambda t: pickle_epoch(comm, layout, t, p, q, packed, costs))
    runs.link = link
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="500000,10000000", help="model sizes M, comma-separated")
    ap.add_argument("--workers", type=int, help="N in all (default: one per worker rank)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--scheme", default="2bit", choices=codec.SCHEMES)
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    layout = mpi.split_workers(args.workers or size - 1, size)
    n_local = len(layout.ids[rank])
    rng = np.random.default_rng(rank)
    if rank == 0:
        print(f"{size} ranks, {layout.n_workers} workers ({', '.join(map(str, layout.counts[1:]))}"
              f" per worker rank), {args.scheme} ternaries, {args.repeats} repeats; "
              "median ms per epoch (min)")
        print(f"{'M':>10} {'bytes moved':>12} {'backend':>16} {'bare':>16} {'ratio':>6} "
              f"{'pickle':>16} {'ratio':>6}", flush=True)
    for m in (int(v) for v in args.sizes.split(",")):
        p = np.ones(m, np.float32)
        q = rng.normal(size=(max(n_local, 1), m)).astype(np.float32)
        packed = np.stack([codec.pack(rng.integers(-1, 2, m).astype(np.int8), args.scheme)
                           for _ in range(max(n_local, 1))])
        out = np.zeros((layout.n_workers, codec.packed_size(m, args.scheme)), np.uint8)
        costs = np.ones(n_local, np.float64)
        runs = exchanges(comm, layout, p, q, packed, costs, out, args.scheme)
        times: dict[str, list[float]] = {k: [] for k in runs}
        for t in range(1, args.repeats + 3):
            for name, fn in runs.items():
                comm.Barrier()
                t0 = time.perf_counter()
                fn(t)
                if t > 2:  # two warm-up epochs
                    times[name].append(time.perf_counter() - t0)
        if rank == 0:
            med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
            low = {k: 1e3 * min(v) for k, v in times.items()}
            cell = {k: f"{med[k]:.2f} ({low[k]:.2f})" for k in runs}
            print(f"{m:>10,} {runs.moved():>12,} {cell['backend']:>16} "
                  f"{cell['bare']:>16} {med['backend'] / med['bare']:>5.2f}x "
                  f"{cell['pickle']:>16} {med['pickle'] / med['bare']:>5.2f}x", flush=True)


if __name__ == "__main__":
    main()
