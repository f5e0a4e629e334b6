"""The sharded backend agrees with the vmap backend; padding workers stay invisible."""

import functools

import jax
import numpy as np
import pytest

from fedf_jax import config, harness, layout, simulation
from fedf_jax.algorithms import fedf
from fedf_jax.backends import sharded
from fedf_jax.config import WorkerSpec

SPECS = (
    WorkerSpec(lr=0.1, batch_size=10),
    WorkerSpec(lr=0.05, batch_size=16, local_epochs=2),
    WorkerSpec(lr=0.01, batch_size=8, optimizer="adam"),
    WorkerSpec(lr=0.02, batch_size=32, optimizer="momentum"),
    WorkerSpec(lr=0.2, batch_size=5),
    WorkerSpec(lr=0.005, batch_size=12, local_epochs=2, optimizer="adam"),
)
CFG = config.make(workers=6, epochs=4, partition="dirichlet-sizes", dirichlet_alpha=1.0,
                  worker_specs=SPECS, seed=5)
needs4 = pytest.mark.skipif(len(jax.devices()) < 4, reason="needs 4 (forced) CPU devices")


@pytest.fixture(scope="module")
def vmap_run():
    return simulation.run(CFG)


@needs4
@pytest.mark.parametrize("devices", [1, 2, 4])
def test_sharded_equals_vmap(vmap_run, devices):
    run = simulation.run(CFG.replace(backend="sharded", devices=devices))
    for a, b in zip(vmap_run["records"], run["records"], strict=True):
        assert a["pilot"] == b["pilot"]
        for key in ("bytes_down", "bytes_up_model", "bytes_up_ternary", "bytes_other",
                    "bytes_header", "bytes_total", "dropped"):
            assert a[key] == b[key], key
        np.testing.assert_allclose(a["costs"], b["costs"], rtol=1e-6)
        assert a["test_accuracy"] == b["test_accuracy"]
    # The same program per worker on each device: float32-equal models.
    np.testing.assert_allclose(run["params"], vmap_run["params"], rtol=1e-6, atol=1e-7)


def _sharded(devices: int):
    host = harness.load(CFG)
    pl = sharded.placement(devices)
    ds = host.dataset
    w = layout.build(CFG.specs, ds.x_train, ds.y_train, host.parts,
                     betas=CFG.master.betas(6), x_test=ds.x_test, y_test=ds.y_test,
                     train_key=host.train_key, placement=pl)
    return host, pl, w


@needs4
def test_padding_workers_never_reach_the_master():
    host, pl, w = _sharded(4)
    # 6 workers in 3 optimizer cohorts of 3, 2, 1 -> each padded to 4 rows.
    assert [cd.sizes.shape[0] for cd in w.data.cohorts] == [4, 4, 4]
    assert all(int(np.asarray(cd.sizes)[len(c.ids):].sum()) == 0
               for c, cd in zip(w.layout.cohorts, w.data.cohorts, strict=True))
    state = fedf.init(w.layout, w.data, host.p0, pl)
    step = jax.jit(functools.partial(fedf.epoch, host.model, w.layout, CFG.master, pl.spread),
                   donate_argnums=0)
    for _ in range(3):
        state, out = step(state, w.data)
        for field in ("costs", "goodness", "valid", "nonzero"):
            assert np.asarray(out[field]).shape == (6,), field
        assert 0 <= int(out["pilot"]) < 6
        assert np.isfinite(np.asarray(out["costs"])).all()
    # the optimizer states keep their padding rows, sharded over the 4 devices
    assert all(len(leaf.sharding.device_set) == 4 for leaf in jax.tree.leaves(state.opt_states))


@needs4
def test_worker_data_is_placed_sharded_once():
    host, pl, w = _sharded(2)
    # No unsharded copy of the worker data: every live array shaped like a cohort's
    # samples [rows, S_max, ...] is spread over both devices.
    x_shape = host.dataset.x_train.shape[1:]
    stacked = [a for a in jax.live_arrays() if a.ndim == 2 + len(x_shape)
               and tuple(a.shape[2:]) == x_shape]
    assert len(stacked) >= len(w.data.cohorts)
    assert all(len(a.sharding.device_set) == 2 for a in stacked), [a.shape for a in stacked]
    for cd in w.data.cohorts:
        shards = cd.x.addressable_shards
        assert len(shards) == 2 and shards[0].data.shape[0] == cd.x.shape[0] // 2


def test_make_mesh_rejects_too_many_devices():
    with pytest.raises(ValueError, match="devices"):
        sharded.make_mesh(len(jax.local_devices()) + 1)


def test_devices_needs_the_sharded_backend():
    with pytest.raises(ValueError, match="backend='sharded'"):
        config.make(devices=2)
