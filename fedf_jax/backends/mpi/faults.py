"""Faults to inject into an MPI run, for tests of the failure paths.

Passed to ``fedf_jax.train.run(..., faults=...)`` by the caller (a test's driver
script); production code reads no environment variable for them. A fault is
``(action, target, epoch)``:

- ``raise``: rank ``target`` raises at ``epoch`` (the job must abort, naming it);
- ``hang``: worker rank ``target`` (or, asynchronous, group master) stops answering at
  ``epoch`` (the deadline of the rank waiting on it must name it);
- ``corrupt``: one payload byte of global worker ``target``'s frame is flipped after
  its CRC was computed (the master must drop that frame and go on);
- ``tamper`` (``--wire aead``): one bit of global worker ``target``'s frame is flipped
  after its rank's upload was sealed (the master must reject the upload as not
  authentic, drop its frames and go on);
- ``replay`` (``--wire aead``): the rank of global worker ``target`` sends its sealed
  upload of the epoch before again (the master must reject it as a replay).

``raise`` and ``hang`` strike a worker rank just after it received P^{t-1}, when
the master has finished epoch t - 1. Under ``--schedule async`` they strike a group
master at its ``epoch``-th job (``hang`` too), just after that job's model came, and
``raise:0:T`` the top master before its update T.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

ACTIONS = ("raise", "hang", "corrupt", "tamper", "replay")


class Fault(NamedTuple):
    """``action`` of ``target`` (a rank; a global worker id for ``corrupt``, ``tamper`` and
    ``replay``) at ``epoch``."""

    action: str
    target: int
    epoch: int


def parse(text: str) -> tuple[Fault, ...]:
    """``ACTION:TARGET:EPOCH[,...]``, e.g. ``"raise:1:2,corrupt:3:1"``."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        parts = item.split(":")
        if (len(parts) != 3 or parts[0] not in ACTIONS
                or not (parts[1].isdigit() and parts[2].isdigit())):
            raise ValueError(f"fault {item!r} must be raise:RANK:EPOCH, hang:RANK:EPOCH, "
                             "corrupt:WORKER:EPOCH, tamper:WORKER:EPOCH or "
                             "replay:WORKER:EPOCH.")
        out.append(Fault(parts[0], int(parts[1]), int(parts[2])))
    return tuple(out)


def strikes(faults: Iterable[Fault], action: str, target: int, epoch: int) -> bool:
    """Whether ``faults`` holds this fault."""
    return Fault(action, target, epoch) in tuple(faults)


__all__ = ["ACTIONS", "Fault", "parse", "strikes"]
