"""Workers spread over the local devices: ``shard_map`` of the per-cohort ``vmap``.

Each cohort's rows are laid along a 1-D device mesh (axis ``"workers"``); each
device trains its slice of the rows with the algorithm's own worker-side function.
A cohort whose size is not a multiple of the device count is padded with empty
workers (``layout``: no samples, so every step of theirs is a masked no-op); their
rows never reach the master. Worker data, optimizer states and local models stay
sharded on their devices; everything else (P^{t-1}, P^{t-2}, the test set) is
replicated. The data are placed sharded from the host once: no unsharded copy of
the worker data ever sits on one device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fedf_jax.layout import Placement

AXIS = "workers"


def make_mesh(devices: int | Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh over the first ``devices`` local devices (all by default)."""
    avail = jax.local_devices()
    if devices is None:
        devs = avail
    elif isinstance(devices, int):
        if not 1 <= devices <= len(avail):
            raise ValueError(f"`devices` (={devices}) must be between 1 and the {len(avail)} "
                             f"local devices ({avail[0].platform}); on a CPU host, set "
                             "XLA_FLAGS=--xla_force_host_platform_device_count=K for K devices.")
        devs = avail[:devices]
    else:
        devs = list(devices)
    return jax.sharding.Mesh(np.asarray(devs), (AXIS,))


def placement(devices: int | Sequence[jax.Device] | None = None) -> Placement:
    """Rows sharded over a mesh of local devices, everything else replicated."""
    mesh = make_mesh(devices)
    rows, rep = NamedSharding(mesh, P(AXIS)), NamedSharding(mesh, P())

    def spread(fn: Callable, n_broadcast: int) -> Callable:
        def run(*args):
            specs = (P(),) * n_broadcast + (P(AXIS),) * (len(args) - n_broadcast)
            # The rows' state becomes per-device ("varying") inside the local training
            # scan while P^{t-1} enters replicated; the check would reject that.
            return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=P(AXIS),
                                 check_vma=False)(*args)
        return run

    return Placement("sharded", mesh.devices.size, lambda a: jax.device_put(a, rows),
                     lambda a: jax.device_put(a, rep), spread,
                     tuple(str(d) for d in mesh.devices.flat))


def device_memory(devices: Sequence[jax.Device] | None = None) -> list[dict]:
    """Peak and in-use bytes per device, where the platform reports them."""
    out = []
    for d in devices or jax.local_devices():
        stats = d.memory_stats() or {}
        out.append({"device": str(d), "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
                    "bytes_in_use": stats.get("bytes_in_use")})
    return out


__all__ = ["AXIS", "make_mesh", "placement", "device_memory"]
