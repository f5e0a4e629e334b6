"""Paper-scale models inside FEDF: batch statistics travel in P, one epoch per model."""

import functools

import jax
import numpy as np
import pytest

from fedf_jax import cli, config, layout, master, runlog, simulation, worker
from fedf_jax.algorithms import fedf
from fedf_jax.data import WorkerData
from fedf_jax.models import make_model

train_cohort = jax.jit(layout.train_cohort, static_argnums=(0, 1))


def _place(specs, x, y, sizes, betas, key, ids=None):
    lay = layout.make_layout(specs, sizes, 4, ids=ids)
    data = layout.place(lay, WorkerData(x, y, np.asarray(sizes)), specs, betas, x[0, :4],
                        y[0, :4], key)
    return lay, data


def _images(n_workers, size, shape, classes, seed=0, masks=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_workers, size, *shape)).astype(np.float32)
    yshape = (n_workers, size, *shape[:2]) if masks else (n_workers, size)
    return x, rng.integers(0, classes, yshape).astype(np.int32)


@pytest.mark.parametrize("name,shape,classes,kwargs,masks", [
    ("resnet32", (8, 8, 3), 10, {}, False),
    ("unet", (16, 16, 1), 2, {"width": 4}, True),
])
def test_one_fedf_epoch_with_each_paper_model(name, shape, classes, kwargs, masks):
    model = make_model(name, shape, classes, **kwargs)
    assert model.has_stats and model.num_trainable < model.num_params
    x, y = _images(3, 6, shape, classes, masks=masks)
    sizes = np.array([6, 4, 5])
    specs = [worker.WorkerSpec(lr=0.05, batch_size=3)] * 3
    cfg = master.MasterConfig()
    lay, data = _place(specs, x, y, sizes, cfg.betas(3), jax.random.key(0))
    p0 = model.init(jax.random.key(1))
    step = jax.jit(functools.partial(fedf.epoch, model, lay, cfg, layout.HERE.spread))
    state, out = step(fedf.init(lay, data, p0), data)
    p1 = np.asarray(state.master.p_prev)
    assert np.isfinite(p1).all() and np.isfinite(np.asarray(out["costs"])).all()
    assert 0 <= int(out["pilot"]) < 3
    stats0, stats1 = np.asarray(p0)[model.num_trainable:], p1[model.num_trainable:]
    assert not np.allclose(stats0, stats1)  # running statistics moved with the pilot


def test_batch_statistics_ignore_padding_rows():
    # A worker whose batch is padded (batch 3 in a group whose largest batch is 8) must
    # train exactly as alone: the padding rows are masked out of the BN statistics.
    model = make_model("resnet32", (8, 8, 3), 10, depth=8)  # one block per stage: fast
    x, y = _images(2, 9, (8, 8, 3), 10, seed=2)
    specs = [worker.WorkerSpec(lr=0.05, batch_size=3), worker.WorkerSpec(lr=0.05, batch_size=8)]
    sizes = np.array([7, 9])
    p0 = model.init(jax.random.key(3))
    key = jax.random.key(4)
    lay, data = _place(specs, x, y, sizes, np.full(2, 0.2), key)
    (c,), (cd,), (o,) = lay.cohorts, data.cohorts, layout.init_opt_states(lay, data, p0)
    q_group, _, _ = train_cohort(model, c, p0, key, 1, o, cd)

    lay, data = _place(specs[:1], x[:1, :7], y[:1, :7], [7], np.full(1, 0.2), key)
    (c,), (cd,), (o,) = lay.cohorts, data.cohorts, layout.init_opt_states(lay, data, p0)
    q_alone, _, _ = train_cohort(model, c, p0, key, 1, o, cd)
    np.testing.assert_allclose(q_group[0], q_alone[0], rtol=2e-4, atol=2e-5)


def test_missing_data_dir_is_one_line_exit_2(tmp_path, capsys):
    code = cli.main(["simulate", "--model", "resnet32", "--data", "cifar10", "--data-dir",
                     str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "nowhere" in err
    code = cli.main(["simulate", "--data", "cifar10", "--out", str(tmp_path / "run")])
    assert code == 2 and "--data-dir" in capsys.readouterr().err


def test_unet_defaults_to_bundled_synthetic_segmentation():
    cfg = config.make(model="unet")
    assert cfg.data.name == "synthetic-seg" and cfg.model_options() == {"width": 8}
    assert config.make(data="cifar10", data_dir="x").data.augment is True
    assert config.make().data.augment is False
    with pytest.raises(ValueError, match="width"):
        config.make(model="mlp", width=8)


@pytest.mark.slow
def test_fedf_simulate_unet_on_synthetic_segmentation(tmp_path):
    cfg = config.make(model="unet", workers=3, epochs=3, width=4)
    simulation.run(cfg, tmp_path)
    _, epochs = runlog.read(tmp_path / "run.jsonl")
    assert epochs[-1]["test_accuracy"] > 0.8  # pixel accuracy; background alone is ~0.7
