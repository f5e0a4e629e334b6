"""Faults to inject into an MPI run, for tests of the failure paths.

Passed to ``fedf_jax.train.run(..., faults=...)`` by the caller (a test's driver
script); production code reads no environment variable for them. A fault is
``(action, target, epoch)``:

- ``raise``: rank ``target`` raises at ``epoch`` (the job must abort, naming it);
- ``hang``: worker rank ``target`` stops answering at ``epoch`` (the master's
  deadline must name it);
- ``corrupt``: one payload byte of global worker ``target``'s frame is flipped after
  its CRC was computed (the master must drop that frame and go on).

``raise`` and ``hang`` strike a worker rank just after it received P^{t-1}, when
the master has finished epoch t - 1.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

ACTIONS = ("raise", "hang", "corrupt")


class Fault(NamedTuple):
    """``action`` of ``target`` (a rank, or a global worker id for ``corrupt``) at ``epoch``."""

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
            raise ValueError(f"fault {item!r} must be raise:RANK:EPOCH, hang:RANK:EPOCH or "
                             "corrupt:WORKER:EPOCH.")
        out.append(Fault(parts[0], int(parts[1]), int(parts[2])))
    return tuple(out)


def strikes(faults: Iterable[Fault], action: str, target: int, epoch: int) -> bool:
    """Whether ``faults`` holds this fault."""
    return Fault(action, target, epoch) in tuple(faults)


__all__ = ["ACTIONS", "Fault", "parse", "strikes"]
