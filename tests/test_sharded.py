"""The sharded backend agrees with the vmap backend; padding workers stay invisible."""

import dataclasses

import jax
import numpy as np
import pytest

from fedf_jax import simulation
from fedf_jax.backends import sharded
from fedf_jax.backends import vmap as vb
from fedf_jax.config import RunConfig
from fedf_jax.worker import WorkerSpec

SPECS = (
    WorkerSpec(lr=0.1, batch_size=10),
    WorkerSpec(lr=0.05, batch_size=16, local_epochs=2),
    WorkerSpec(lr=0.01, batch_size=8, optimizer="adam"),
    WorkerSpec(lr=0.02, batch_size=32, optimizer="momentum"),
    WorkerSpec(lr=0.2, batch_size=5),
    WorkerSpec(lr=0.005, batch_size=12, local_epochs=2, optimizer="adam"),
)
CFG = RunConfig(workers=6, epochs=4, partition="dirichlet-sizes", dirichlet_alpha=1.0,
                worker_specs=SPECS, seed=5)
VOLATILE = ("wall_s", "modeled_s", "costs", "goodness", "test_loss", "test_accuracy")


@pytest.fixture(scope="module")
def vmap_run():
    return simulation.run(CFG)


@pytest.mark.skipif(len(jax.devices()) < 4, reason="needs 4 (forced) CPU devices")
@pytest.mark.parametrize("devices", [1, 2, 4])
def test_sharded_equals_vmap(vmap_run, devices):
    run = simulation.run(dataclasses.replace(CFG, backend="sharded", devices=devices))
    for a, b in zip(vmap_run["records"], run["records"], strict=True):
        assert a["pilot"] == b["pilot"]
        for key in ("bytes_down", "bytes_up_model", "bytes_up_ternary", "bytes_other",
                    "bytes_header", "bytes_total", "dropped"):
            assert a[key] == b[key], key
        np.testing.assert_allclose(a["costs"], b["costs"], rtol=1e-5)
        np.testing.assert_allclose(a["test_accuracy"], b["test_accuracy"], atol=1 / 360 + 1e-9)
    np.testing.assert_allclose(run["params"], vmap_run["params"], rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(len(jax.devices()) < 4, reason="needs 4 (forced) CPU devices")
def test_padding_workers_never_reach_the_master():
    cfg = dataclasses.replace(CFG, backend="sharded", devices=4)
    s = simulation.setup(cfg)
    mesh = sharded.make_mesh(4)
    data = sharded.shard_data(s.plan, s.data, mesh)
    # 6 workers in 3 optimizer groups of 3, 2, 1 -> each padded to 4 rows.
    assert [gd.sizes.shape[0] for gd in data.groups] == [4, 4, 4]
    assert all(int(np.asarray(gd.sizes)[len(g.ids):].sum()) == 0
               for g, gd in zip(s.plan.groups, data.groups, strict=True))
    state = sharded.init_state(s.plan, data, s.p0, mesh)
    step = sharded.make_epoch_fn(s.model, s.plan, cfg.master, mesh)
    for _ in range(3):
        state, out = step(state, data)
        for field in ("costs", "goodness", "valid", "nonzero"):
            assert np.asarray(getattr(out, field)).shape == (6,), field
        assert 0 <= int(out.pilot) < 6
        assert np.isfinite(np.asarray(out.costs)).all()
    # the optimizer states keep their padding rows, sharded over the 4 devices
    assert all(len(leaf.sharding.device_set) == 4 for leaf in jax.tree.leaves(state.opt_states))


def test_make_mesh_rejects_too_many_devices():
    with pytest.raises(ValueError, match="devices"):
        sharded.make_mesh(len(jax.local_devices()) + 1)


def test_devices_needs_the_sharded_backend():
    with pytest.raises(ValueError, match="backend='sharded'"):
        RunConfig(devices=2)


def test_group_padding_keeps_worker_data_on_its_device():
    cfg = dataclasses.replace(CFG, backend="sharded", devices=2)
    s = simulation.setup(cfg)
    mesh = sharded.make_mesh(2)
    data = sharded.shard_data(s.plan, s.data, mesh)
    for gd in data.groups:
        shards = gd.x.addressable_shards
        assert len(shards) == 2 and shards[0].data.shape[0] == gd.x.shape[0] // 2
    assert isinstance(data, vb.SimData)
