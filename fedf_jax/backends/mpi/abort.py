"""How an MPI job ends on an error: one line naming the rank(s), then ``MPI_Abort`` for
every process (a rank that merely exits would leave the others waiting), and the
deadlines every wait runs under."""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Sequence

from mpi4py import MPI

DEFAULT_TIMEOUT = 300.0
SETUP_TIMEOUT = 600.0  # start-up (data loading, compiling) waits at least this long
ABORT_GRACE = 0.5  # seconds between the last line written and MPI_Abort


def who(ranks: Sequence[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))


def abort(code: int) -> None:
    """Ends the whole MPI job, after giving mpiexec time to forward what this rank wrote
    (Abort kills every process at once: a line still on its way would be lost)."""
    time.sleep(ABORT_GRACE)
    MPI.COMM_WORLD.Abort(code)


def fatal(message: str, code: int) -> None:
    """Prints one line to stderr and ends the whole MPI job."""
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.stderr.flush()
    abort(code)


def install_excepthook() -> None:
    """Makes an uncaught exception on any rank end the whole job (as ``python -m
    mpi4py`` does): print the rank and the error, then ``Abort(1)``."""
    rank = MPI.COMM_WORLD.Get_rank()

    def hook(kind, value, tb):
        sys.stderr.write(f"fedf: error: rank {rank}: uncaught {kind.__name__}: {value}\n")
        traceback.print_exception(kind, value, tb, file=sys.stderr)
        sys.stderr.flush()
        abort(130 if issubclass(kind, KeyboardInterrupt) else 1)

    sys.excepthook = hook


__all__ = ["DEFAULT_TIMEOUT", "SETUP_TIMEOUT", "ABORT_GRACE", "who", "abort", "fatal",
           "install_excepthook"]
