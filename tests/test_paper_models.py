"""Paper-scale models inside FEDF: batch statistics travel in P, one epoch per model."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedf_jax import cli, master, runlog, simulation, worker
from fedf_jax.backends import vmap as vb
from fedf_jax.config import RunConfig
from fedf_jax.models import make_model

train_group = jax.jit(vb.train_group, static_argnums=(0, 1))


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
    plan = vb.make_plan(specs, sizes, 4)
    data = vb.make_data(plan, x, y, sizes, specs, cfg.betas(3), x[0, :4], y[0, :4],
                        jax.random.key(0))
    p0 = model.init(jax.random.key(1))
    state = vb.init_state(plan, data, p0)
    state, out = vb.make_epoch_fn(model, plan, cfg)(state, data)
    p1 = np.asarray(state.master.p_prev)
    assert np.isfinite(p1).all() and np.isfinite(np.asarray(out.costs)).all()
    assert 0 <= int(out.pilot) < 3
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
    plan = vb.make_plan(specs, sizes, 1)
    data = vb.make_data(plan, x, y, sizes, specs, np.full(2, 0.2), x[0, :1], y[0, :1], key)
    state = vb.init_state(plan, data, p0)
    (g,), (gd,), (o,) = plan.groups, data.groups, state.opt_states
    q_group, _, _ = train_group(model, g, p0, o, gd, key, 1)

    alone = vb.make_plan(specs[:1], [7], 1)
    (ga,) = alone.groups
    gda = vb.GroupData(jnp.asarray(x[:1, :7]), jnp.asarray(y[:1, :7]), jnp.asarray([7]),
                       jax.tree.map(jnp.asarray, worker.stack_hparams(specs[:1])),
                       jnp.asarray([0.2]), jnp.asarray([0]))
    oa = jax.vmap(functools.partial(worker.init_opt_state, "sgd"), in_axes=(0, None))(gda.hp, p0)
    q_alone, _, _ = train_group(model, ga, p0, oa, gda, key, 1)
    np.testing.assert_allclose(q_group[0], q_alone[0], rtol=2e-4, atol=2e-5)


def test_missing_data_dir_is_one_line_exit_2(tmp_path, capsys):
    code = cli.main(["simulate", "--model", "resnet32", "--data", "cifar10", "--data-dir",
                     str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "nowhere" in err
    code = cli.main(["simulate", "--data", "cifar10", "--out", str(tmp_path / "run")])
    assert code == 2 and "--data-dir" in capsys.readouterr().err


def test_unet_defaults_to_bundled_synthetic_segmentation():
    cfg = RunConfig(model="unet")
    assert cfg.data == "synthetic-seg" and cfg.model_options == {"width": 8}
    assert RunConfig(data="cifar10", data_dir="x").augment is True
    assert RunConfig().augment is False
    with pytest.raises(ValueError, match="width"):
        RunConfig(model="mlp", width=8)


@pytest.mark.slow
def test_fedf_simulate_unet_on_synthetic_segmentation(tmp_path):
    cfg = dataclasses.replace(RunConfig(model="unet", workers=3, epochs=3), width=4)
    simulation.run(cfg, tmp_path)
    _, epochs = runlog.read(tmp_path / "run.jsonl")
    assert epochs[-1]["test_accuracy"] > 0.8  # pixel accuracy; background alone is ~0.7
