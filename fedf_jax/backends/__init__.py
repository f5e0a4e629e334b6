"""Backends move data; they compute nothing of an algorithm's own.

- ``vmap``: every worker's rows on one device, one vmap per cohort.
- ``sharded``: the rows spread over the local devices with ``jax.shard_map``.
- ``mpi``: ranks over hosts (``mpiexec``): the link, the frames, checkpoints.
"""

from __future__ import annotations

from fedf_jax.layout import Placement


def placement(backend: str = "vmap", devices: int | None = None) -> Placement:
    """The placement of a local backend by name."""
    if backend == "sharded":
        from fedf_jax.backends import sharded

        return sharded.placement(devices)
    if backend != "vmap":
        raise ValueError(f"`backend` (={backend!r}) must be 'vmap' or 'sharded'.")
    from fedf_jax.backends import vmap

    return vmap.placement()


__all__ = ["placement"]
