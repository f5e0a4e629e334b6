"""Checkpoints as plain ``.npz`` files: arrays plus a JSON metadata string, no pickle.

A checkpoint is one file per process (the MPI backend writes one per rank), written
atomically: into a temporary file in the same directory, flushed and fsynced, then
moved over the final name with ``os.replace``, so a reader sees the old file or the
new one, never half of one. Pytrees (optimizer states) are stored leaf by leaf in
``jax.tree.leaves`` order and restored into the structure of a template pytree of
the same run, which checks every leaf's shape and dtype.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

_META = "__meta__"


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(path: str | Path, arrays: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    """Writes ``arrays`` and the JSON-ready ``meta`` dict to ``path`` (.npz), atomically."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    if _META in arrays:
        raise ValueError(f"array name {_META!r} is reserved for the metadata.")
    for k, v in arrays.items():
        if v.dtype == object:
            raise ValueError(f"array {k!r} has dtype object; checkpoints hold no pickles.")
    meta_arr = np.array(json.dumps(meta, sort_keys=True))
    _atomic_write(Path(path), lambda f: np.savez(f, **arrays, **{_META: meta_arr}))


def load(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Reads a checkpoint written by :func:`save`: (arrays, meta). Never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint file {str(path)!r} does not exist.")
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    if _META not in arrays:
        raise ValueError(f"{str(path)!r} is not a fedf checkpoint (no metadata).")
    meta = json.loads(str(arrays.pop(_META)))
    return arrays, meta


def write_text(path: str | Path, text: str) -> None:
    """Writes a text file atomically (UTF-8)."""
    data = text.encode("utf-8")
    _atomic_write(Path(path), lambda f: f.write(data))


def write_json(path: str | Path, obj: Mapping[str, Any]) -> None:
    """Writes a small JSON file atomically (e.g. the pointer to the latest checkpoint)."""
    write_text(path, json.dumps(obj, sort_keys=True))


def tree_arrays(tree, prefix: str) -> dict[str, np.ndarray]:
    """The leaves of a pytree as numbered arrays ``{prefix}{i:04d}``."""
    return {f"{prefix}{i:04d}": np.asarray(leaf)
            for i, leaf in enumerate(jax.tree.leaves(tree))}


def restore_tree(template, arrays: Mapping[str, np.ndarray], prefix: str):
    """The pytree shaped like ``template`` whose leaves are ``arrays[{prefix}{i:04d}]``.

    Raises:
      ValueError: when the number, shapes or dtypes of the leaves do not match.
    """
    leaves, treedef = jax.tree.flatten(template)
    names = sorted(k for k in arrays if k.startswith(prefix))
    if len(names) != len(leaves):
        raise ValueError(f"checkpoint has {len(names)} arrays {prefix}*, the run needs "
                         f"{len(leaves)}.")
    out = []
    for i, leaf in enumerate(leaves):
        a = arrays[f"{prefix}{i:04d}"]
        want = np.asarray(leaf)
        if a.shape != want.shape or a.dtype != want.dtype:
            raise ValueError(f"checkpoint array {prefix}{i:04d} is {a.dtype}{list(a.shape)}, "
                             f"the run needs {want.dtype}{list(want.shape)}.")
        out.append(a)
    return jax.tree.unflatten(treedef, out)


__all__ = ["save", "load", "write_text", "write_json", "tree_arrays", "restore_tree"]
