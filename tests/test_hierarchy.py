"""Two levels (--groups G --group-epochs K) for FEDF and FedAvg: one group is the flat
run bit for bit; the top sees the groups as workers (Eq. 1 over S_g, C_g); bytes per
level; groups of unlike workers padded alike."""

import jax
import numpy as np
import pytest

from fedf_jax import cli, codec, config, harness, layout, simulation
from fedf_jax.algorithms import fedf, hierarchy
from fedf_jax.config import WorkerSpec
from fedf_jax.models import make_model

HETERO = (WorkerSpec(lr=0.1), WorkerSpec(lr=0.01, optimizer="adam", batch_size=16),
          WorkerSpec(lr=0.05, optimizer="momentum"), WorkerSpec(lr=0.2, batch_size=5))


def _run_wrapper(cfg, epochs):
    """The hierarchy wrapper itself (the CLI takes it only for G > 1 or K > 1)."""
    host = harness.load(cfg)
    alg = hierarchy.make(cfg, host, layout.HERE)
    state, step = alg.init(), jax.jit(alg.step)
    outs = []
    for _ in range(epochs):
        state, out = step(state, alg.data)
        outs.append(alg.record(jax.device_get(out), 0.0))
    return outs, np.asarray(alg.params(state))


@pytest.mark.parametrize("algorithm", ["fedf", "fedavg"])
def test_one_group_is_the_flat_run_bit_for_bit(algorithm):
    cfg = config.make(workers=4, epochs=4, seed=2, algorithm=algorithm, worker_specs=HETERO,
                      partition="dirichlet-sizes")
    flat = simulation.run(cfg)
    recs, params = _run_wrapper(cfg, 4)
    np.testing.assert_array_equal(params, flat["params"])
    if algorithm == "fedf":
        assert [r["group_pilots"][0] for r in recs] == [r["pilot"] for r in flat["records"]]
        assert all(r["pilot"] == 0 for r in recs)  # the only group is the top's pilot
    assert [r["test_accuracy"] for r in recs] == [r["test_accuracy"] for r in flat["records"]]


@pytest.fixture(scope="module")
def three_groups():
    cfg = config.make(workers=12, epochs=10, seed=0, groups=3)
    return cfg, simulation.run(cfg)


def test_hierarchical_fedf_learns_digits_as_well_as_flat(three_groups):
    cfg, grouped = three_groups
    flat = simulation.run(cfg.replace(groups=1))
    assert abs(grouped["final_test_accuracy"] - flat["final_test_accuracy"]) <= 0.03
    assert grouped["final_test_accuracy"] > 0.85  # chance is 0.10


def test_the_top_picks_its_pilot_group_by_eq1_over_the_groups(three_groups):
    cfg, grouped = three_groups
    host = harness.load(cfg)
    sizes = np.array([len(p) for p in host.parts], np.float64)
    members = cfg.group_workers()
    prev = None
    for r in grouped["records"]:
        costs = np.asarray(r["costs"], np.float64)
        s_g = np.array([sizes[list(m)].sum() for m in members])
        c_g = np.array([(sizes[list(m)] * costs[list(m)]).sum() for m in members]) / s_g
        want = s_g / c_g if r["epoch"] == 1 else s_g * (prev - c_g)
        np.testing.assert_allclose(r["goodness"], want, rtol=1e-4)
        assert r["pilot"] == int(np.argmax(want))
        assert all(p in m for p, m in zip(r["group_pilots"], members, strict=True))
        prev = c_g


def test_bytes_per_level_and_the_top_link_depends_on_g_and_m_only():
    runs = {n: simulation.run(config.make(workers=n, epochs=1, groups=3, group_epochs=2))
            for n in (6, 12)}
    m = runs[6]["num_params"]
    for n, run in runs.items():
        r = run["records"][0]
        members = config.make(workers=n, groups=3).group_workers()
        assert r["bytes_top"] == codec.epoch_bytes(m, 3).total
        assert r["bytes_group"] == 2 * sum(codec.epoch_bytes(m, len(g)).total for g in members)
        assert r["bytes_total"] == r["bytes_group"] + r["bytes_top"]
    assert runs[6]["records"][0]["bytes_top"] == runs[12]["records"][0]["bytes_top"]


def test_groups_of_unlike_workers_are_padded_alike():
    specs = HETERO + HETERO[:2]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3, 3, 1)).astype(np.float32)
    y = rng.integers(0, 3, 60).astype(np.int32)
    parts = np.array_split(np.arange(60), 6)
    g = layout.build_groups(specs, x, y, parts, [(0, 1, 2), (3, 4, 5)],
                            betas=np.full(6, 0.2), x_test=x[:5], y_test=y[:5],
                            train_key=jax.random.key(0))
    # kinds sgd (0, 3, 4), adam (1, 5), momentum (2): group 0 has 1/1/1, group 1 has 2/1/0
    assert [c.kind for c in g.layout.cohorts] == ["sgd", "adam", "momentum"]
    assert [c.n_rows for c in g.layout.cohorts] == [2, 1, 1]
    assert g.where.tolist() == [[0, -1, 1, 2], [3, 4, 5, -1]]
    sizes = np.asarray(g.data.sizes)
    np.testing.assert_array_equal(sizes, [[10, 0, 10, 10], [10, 10, 10, 0]])
    for c, cd in zip(g.layout.cohorts, g.data.cohorts, strict=True):
        assert cd.x.shape[:2] == (2, c.n_rows)
    # a padding worker never reports a finite cost
    cfg = config.make(workers=6, worker_specs=specs, groups=2, epochs=1)
    model = make_model("mlp", (3, 3, 1), 3, hidden=(4,))
    level = fedf.level(cfg, model, g.layout, np.full(2, 0.2, np.float32))
    second = layout.one_group(g.data, 1)
    state = level.group_init(g.layout, second, model.init(jax.random.key(1)))
    _, out = jax.jit(level.group_epoch)(state, second)
    costs = np.asarray(out["costs"])
    assert np.isnan(costs[3]) and np.isfinite(costs[:3]).all() and int(out["pilot"]) != 3


def test_the_sharded_backend_refuses_groups(tmp_path, capsys):
    code = cli.main(["simulate", "--groups", "2", "--backend", "sharded", "--epochs", "1",
                     "--out", str(tmp_path)])
    assert code == 2
    assert "runs on the vmap backend" in capsys.readouterr().err
