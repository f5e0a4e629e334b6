"""Checkpoints of an MPI run and ``--resume``: one file per rank, the run log cut back.

Every ``checkpoint_every`` epochs the master saves its state (P^{t-1}, P^{t-2},
the previous costs, the epoch) and each worker rank its workers' optimizer states
and the last model it received, each into its own ``OUT/checkpoint/rank{R}.epoch{T}.npz``
(``fedf_jax.checkpoint``: atomic, no pickles); the master then waits for every
rank's acknowledgement and moves ``latest.json`` to that epoch. ``--resume`` checks
that the run is the checkpoint's (config and rank count), cuts the run log after
the checkpointed epoch and continues from there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedf_jax import checkpoint, runlog
from fedf_jax.config import RunConfig


class ResumeError(ValueError):
    """``--resume`` cannot continue; raised on every rank alike (a clean exit, code 2)."""


def directory(out: Path) -> Path:
    return out / "checkpoint"


def file(out: Path, rank: int, epoch: int) -> Path:
    return directory(out) / f"rank{rank}.epoch{epoch:06d}.npz"


def prune(out: Path, rank: int, keep: int = 2) -> None:
    """Keeps this rank's ``keep`` newest checkpoint files (the newest may not be the
    one ``latest.json`` names yet)."""
    for old in sorted(directory(out).glob(f"rank{rank}.epoch*.npz"))[:-keep]:
        old.unlink(missing_ok=True)


def _config_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    current = json.loads(json.dumps(runlog.to_json(current)))
    return [f"{k} ({saved.get(k)!r} in the checkpoint, {current.get(k)!r} now)"
            for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]


def resume_point(cfg: RunConfig, out: Path, n_ranks: int) -> int:
    """The last checkpointed epoch, after checking that the run is the checkpoint's."""
    pointer = directory(out) / "latest.json"
    if not pointer.is_file():
        raise ValueError(f"--resume: no checkpoint in {str(directory(out))!r}.")
    epoch = int(json.loads(pointer.read_text())["epoch"])
    _, meta = checkpoint.load(file(out, 0, epoch))
    diff = _config_diff(meta["config"], cfg.to_dict())
    if meta["ranks"] != n_ranks:
        diff.append(f"MPI ranks ({meta['ranks']} in the checkpoint, {n_ranks} now)")
    if diff:
        raise ValueError("--resume: this run differs from the checkpoint's in: "
                         + "; ".join(diff))
    return epoch


def truncate_log(path: Path, epoch: int) -> list[dict[str, Any]]:
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


def save_master(cfg: RunConfig, out: Path, ids: Sequence[Sequence[int]],
                arrays: Mapping[str, Any], epoch: int, ranks: int) -> None:
    """The master's checkpoint of ``epoch``: its state's arrays, the config, the job's
    rank count and the worker ids each rank below it holds (rank 0 holds none)."""
    meta = {"epoch": epoch, "ranks": ranks, "ids": [list(i) for i in ids],
            "config": runlog.to_json(cfg.to_dict())}
    checkpoint.save(file(out, 0, epoch), arrays, meta)


__all__ = ["ResumeError", "directory", "file", "prune", "resume_point", "truncate_log",
           "save_master"]
