"""Workers spread over the local devices: ``jit(shard_map(vmap(worker)))``.

The N workers of each optimizer group are laid along a 1-D device mesh (axis
``"workers"``); each device trains its slice of workers with the vmap backend's
``group_step`` (train, cost, fused ternarize-and-pack). A group whose size is
not a multiple of the device count is padded with empty workers (no samples, so
every step of theirs is a masked no-op); their rows are cut off before the master
sees anything, so they never appear in costs, goodness, pilot or bytes. The
master's side (``master_phase``: Eq. 1, the pilot's row, Eq. 3, test metrics)
then runs once on the gathered results, exactly as in the vmap backend.

Memory: worker data, optimizer states and local models stay sharded on their
devices; P^{t-1}, P^{t-2} and the test set are replicated (every worker needs P).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fedf_jax import master
from fedf_jax.backends import vmap as vb
from fedf_jax.models import Model

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


def _pad_rows(a, total: int):
    a = np.asarray(a)
    pad = total - a.shape[0]
    return np.concatenate([a, np.zeros((pad, *a.shape[1:]), a.dtype)]) if pad else a


def shard_data(plan: vb.Plan, data: vb.SimData, mesh: jax.sharding.Mesh) -> vb.SimData:
    """Pads every group to a multiple of the device count and shards it over the mesh.

    Padding workers hold no samples (size 0) and take ids >= N.
    """
    k = mesh.devices.size
    rows, rep = NamedSharding(mesh, P(AXIS)), NamedSharding(mesh, P())
    groups = []
    n = plan.n_workers
    for gd in data.groups:
        n_g = gd.sizes.shape[0]
        total = -(-n_g // k) * k
        pad = functools.partial(_pad_rows, total=total)
        fake_ids = np.arange(n, n + total - n_g, dtype=np.int32)
        padded = vb.GroupData(
            x=pad(gd.x), y=pad(gd.y), sizes=pad(gd.sizes),
            hp=jax.tree.map(lambda a, pad=pad: pad(a), gd.hp),
            beta=np.concatenate([np.asarray(gd.beta), np.full(total - n_g, 0.5, np.float32)]),
            ids=np.concatenate([np.asarray(gd.ids), fake_ids]))
        # Padding workers get valid hyper-parameters: batch 1, one epoch, any lr.
        padded = padded._replace(hp=padded.hp._replace(
            batch_size=np.maximum(padded.hp.batch_size, 1),
            local_epochs=np.maximum(padded.hp.local_epochs, 1)))
        groups.append(jax.device_put(padded, rows))
        n += total - n_g
    rest = jax.device_put((data.sizes, data.betas, data.x_test, data.y_test, data.train_key),
                          rep)
    return vb.SimData(tuple(groups), *rest)


def init_state(plan: vb.Plan, data: vb.SimData, p0: jax.Array,
               mesh: jax.sharding.Mesh) -> vb.SimState:
    """Like the vmap backend's, with each group's optimizer states sharded."""
    state = vb.init_state(plan, data, p0)
    rows, rep = NamedSharding(mesh, P(AXIS)), NamedSharding(mesh, P())
    return vb.SimState(jax.device_put(state.master, rep),
                       jax.device_put(state.opt_states, rows))


def group_steps(model: Model, plan: vb.Plan, scheme: str, mesh: jax.sharding.Mesh,
                p_prev: jax.Array, p_prev2: jax.Array, epoch: jax.Array, opt_states,
                data: vb.SimData) -> list[vb.GroupOutput]:
    """Every group's worker side, each device running its slice of the group's workers.

    The padding workers' rows are cut off the outputs (the master never sees them);
    the returned optimizer states keep them (they stay sharded for the next epoch).
    """
    outs = []
    for g, gd, o in zip(plan.groups, data.groups, opt_states, strict=True):
        step = functools.partial(vb.group_step, model, g, scheme)
        sharded = jax.shard_map(
            lambda p1, p2, t, o, gd, key, step=step: step(p1, p2, t, o, gd, key),
            mesh=mesh, in_specs=(P(), P(), P(), P(AXIS), P(AXIS), P()),
            out_specs=P(AXIS),
            # The workers' state becomes per-device ("varying") inside the local
            # training scan while P^{t-1} enters replicated; the check would reject it.
            check_vma=False)
        out = sharded(p_prev, p_prev2, epoch, o, gd, data.train_key)
        n_g = len(g.rows)  # cut the padding workers off: the master never sees them
        outs.append(vb.GroupOutput(out.q[:n_g], out.costs[:n_g], out.packed[:n_g],
                                   out.nonzero[:n_g], out.opt_state))
    return outs


def epoch(model: Model, plan: vb.Plan, cfg: master.MasterConfig, mesh: jax.sharding.Mesh,
          state: vb.SimState, data: vb.SimData) -> tuple[vb.SimState, vb.EpochOutput]:
    """One FEDF epoch: sharded worker side, then the shared master side."""
    ms = state.master
    outs = group_steps(model, plan, cfg.scheme, mesh, ms.p_prev, ms.p_prev2, ms.epoch,
                       state.opt_states, data)
    return vb.master_phase(model, plan, cfg, state, data, outs)


def make_epoch_fn(model: Model, plan: vb.Plan, cfg: master.MasterConfig,
                  mesh: jax.sharding.Mesh):
    """``jit(epoch)`` with the state donated."""
    return jax.jit(functools.partial(epoch, model, plan, cfg, mesh), donate_argnums=0)


def device_memory(mesh: jax.sharding.Mesh) -> list[dict]:
    """Peak and in-use bytes per device, where the platform reports them."""
    out = []
    for d in mesh.devices.flat:
        stats = d.memory_stats() or {}
        out.append({"device": str(d), "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
                    "bytes_in_use": stats.get("bytes_in_use")})
    return out


__all__ = ["AXIS", "make_mesh", "shard_data", "init_state", "group_steps", "epoch",
           "make_epoch_fn",
           "device_memory"]
