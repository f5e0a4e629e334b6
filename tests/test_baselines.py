"""Baselines on the harness: bytes vs the paper's Table 3, update rules recomputed by
hand, FedAvg with one worker = local training by hand, each one learns digits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedf_jax import algorithms, cli, config, harness, keys, layout, runlog, simulation, worker
from fedf_jax.algorithms import fedavg, terngrad

local_train = jax.jit(worker.local_train, static_argnums=(0, 1, 2))


def test_terngrad_counted_uploads_are_the_papers_b_v_over_16():
    m, sizes, batch = 9_612, np.array([30, 25, 41]), np.array([10, 10, 10])
    nb = terngrad.batches_per_worker(sizes, batch)
    assert nb.tolist() == [3, 3, 5]
    counted = terngrad.epoch_bytes(m, 0, nb)
    assert counted.up_ternary == terngrad.paper_bytes_per_epoch(4 * m, int(nb.sum()))
    # Down: the summed ternaries, ceil(log2(2a + 1)) bits each for a active workers.
    assert counted.down == 3 * 3 * -(-m * 3 // 8) + 2 * 1 * -(-m * 2 // 8)
    assert counted.total == sum(counted[:5])


def test_terngrad_ternary_is_unbiased_and_clipped():
    g = jnp.asarray(np.random.default_rng(0).normal(size=64), jnp.float32)
    s = jnp.max(jnp.abs(g))
    draws = jax.vmap(lambda k: terngrad.ternarize(k, g, s))(
        jax.random.split(jax.random.key(1), 20_000))
    assert set(np.unique(np.asarray(draws)).tolist()) <= {-1, 0, 1}
    mean = np.asarray(draws, np.float64).mean(0) * float(s)
    np.testing.assert_allclose(mean, np.asarray(g), atol=4 * float(s) / np.sqrt(20_000))
    big = g.at[0].set(100.0)
    assert float(terngrad.clip(big)[0]) == pytest.approx(2.5 * float(jnp.std(big)), rel=1e-6)


def _one_epoch(**kw):
    """(cfg, host, algorithm, state after epoch 1, host outputs of epoch 1)."""
    cfg = config.make(**{"workers": 4, "epochs": 2, "seed": 5, **kw})
    host = harness.load(cfg)
    alg = algorithms.make(cfg, host, layout.HERE)
    state, out = jax.jit(alg.step)(alg.init(), alg.data)
    return cfg, host, alg, state, jax.device_get(out)


def _train_by_hand(host, spec, part, p, opt, t, k):
    """Worker k's Q from P at epoch t, alone (independent of the vmapped path)."""
    x = jnp.asarray(host.dataset.x_train[part], jnp.float32)
    y = jnp.asarray(host.dataset.y_train[part], jnp.int32)
    shapes = worker.group_shapes([spec], [len(part)])
    hp = jax.tree.map(lambda a: jnp.asarray(a[0]), worker.stack_hparams([spec]))
    opt = worker.init_opt_state(spec.optimizer, hp, p) if opt is None else opt
    return local_train(host.model, spec.optimizer, shapes, p, opt, x, y, len(part), hp,
                       keys.worker_key(host.train_key, t, k))


def test_fedavg_round_is_the_example_weighted_mean_of_the_sampled_models():
    cfg, host, alg, state, out = _one_epoch(algorithm="fedavg", fraction=0.5,
                                            partition="dirichlet-sizes")
    sampled = np.asarray(out["sampled"])
    assert sampled.sum() == fedavg.sampled_count(4, 0.5) == 2
    q = np.stack([np.asarray(_train_by_hand(host, cfg.specs[k], part, host.p0, None, 1, k)[0],
                             np.float64) for k, part in enumerate(host.parts)])
    w = np.array([len(p) for p in host.parts]) * sampled
    want = (w[:, None] * q).sum(0) / w.sum()
    np.testing.assert_allclose(np.asarray(alg.params(state)), want, rtol=2e-5, atol=2e-6)
    rec = alg.record(out, 0.1)
    assert rec["bytes_up_model"] == rec["bytes_down"] == 2 * 4 * host.model.num_params
    assert rec["sampled"] == np.flatnonzero(sampled).tolist()
    # Another round draws its own sample, from the run's seed only.
    draws = {tuple(np.asarray(fedavg.sample(jax.random.key(5), t, 10, 3)).tolist())
             for t in range(1, 6)}
    assert len(draws) > 1 and all(sum(d) == 3 for d in draws)


def test_phong_epoch_passes_the_model_through_the_workers_in_turn():
    specs = [{"lr": 0.1}, {"lr": 0.05, "optimizer": "adam"}, {"lr": 0.2},
             {"lr": 0.1, "optimizer": "momentum"}]
    cfg, host, alg, state, out = _one_epoch(algorithm="phong", partition="dirichlet-sizes",
                                            worker_specs=specs)
    p = jnp.asarray(host.p0)
    for k in range(cfg.n_workers):  # worker k trains from worker k-1's output
        p, _ = _train_by_hand(host, cfg.specs[k], host.parts[k], p, None, 1, k)
    np.testing.assert_allclose(np.asarray(alg.params(state)), np.asarray(p), rtol=1e-5,
                               atol=1e-6)
    rec = alg.record(out, 0.25)
    n, m = cfg.n_workers, host.model.num_params
    assert rec["bytes_down"] + rec["bytes_up_model"] == 2 * n * 4 * m
    want = 0.25 + rec["bytes_total"] / cfg.run.bandwidth + 2 * n * cfg.run.latency
    assert rec["modeled_s"] == pytest.approx(want)  # sequential: all the compute counts


@pytest.mark.parametrize("algorithm", ["fedavg", "central"])
def test_one_worker_is_local_training_by_hand_epoch_for_epoch(algorithm):
    # FedAvg with one worker, and centralized training (one worker holding the union of
    # the shares, id 0), are that worker's local training, its optimizer state kept.
    cfg = config.make(workers=1 if algorithm == "fedavg" else 3, epochs=3, seed=5,
                      algorithm=algorithm, optimizer="momentum", lr=0.05)
    host = harness.load(cfg)
    result = simulation.run(cfg, host=host)
    part = host.parts[0] if algorithm == "fedavg" else host.union
    p, opt = jnp.asarray(host.p0), None
    for t in (1, 2, 3):
        p, opt = _train_by_hand(host, cfg.specs[0], part, p, opt, t, 0)
    np.testing.assert_allclose(result["params"], np.asarray(p), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("algorithm", ["fedavg", "phong", "terngrad", "central"])
def test_each_baseline_learns_digits(algorithm, tmp_path):
    # Chance is 0.10; the MLP reaches ~0.95 trained centrally for 6 epochs. 0.85 leaves
    # room for TernGrad's noisier steps while any broken update rule stays far below.
    cfg = config.make(workers=4, epochs=6, algorithm=algorithm, seed=1)
    result = simulation.run(cfg, tmp_path)
    header, epochs = runlog.read(tmp_path / "run.jsonl")
    assert header["config"]["algorithm"] == algorithm == header["algorithm"]
    assert len(epochs) == 6 and result["final_test_accuracy"] >= 0.85
    assert all(e["pilot"] == -1 and e["modeled_s"] > 0 for e in epochs)
    assert header["compile_s"] > 0
    np.testing.assert_array_equal(np.load(tmp_path / "final_model.npy"), result["params"])
    if algorithm == "central":
        assert all(e["bytes_total"] == 0 for e in epochs)


@pytest.mark.parametrize("algorithm", ["fedf", "phong"])
def test_scan_epochs_writes_the_same_run_log_as_the_epoch_loop(algorithm, tmp_path):
    cfg = config.make(workers=3, epochs=5, seed=2, algorithm=algorithm)
    loop = simulation.run(cfg, tmp_path / "loop")
    scan = simulation.run(cfg.replace(scan_epochs=2), tmp_path / "scan")
    np.testing.assert_array_equal(loop["params"], scan["params"])
    for a, b in zip(loop["records"], scan["records"], strict=True):
        assert a.keys() == b.keys()
        for key in a.keys() - {"wall_s", "modeled_s"}:
            if isinstance(a[key], (str, list, int)):
                assert a[key] == b[key], key
            else:
                np.testing.assert_allclose(a[key], b[key], rtol=1e-6, err_msg=key)
    assert len(runlog.read(tmp_path / "scan" / "run.jsonl")[1]) == 5


@pytest.mark.parametrize("argv, needle", [
    (["--fraction", "0.5"], "`fraction` (=0.5) applies to `algorithm='fedavg'`"),
    (["--algorithm", "fedavg", "--fraction", "1.5"],
     "`fraction` (=1.5) must be a number in (0, 1]"),
    (["--algorithm", "sgd"], "invalid choice: 'sgd'"),
    (["--algorithm", "central", "--devices", "2"], "`devices` (=2) needs `backend='sharded'`"),
    (["--algorithm", "terngrad", "--backend", "sharded"], "applies to `algorithm='fedf'`"),
])
def test_algorithm_flag_errors_are_one_line(argv, needle, tmp_path, capsys):
    with pytest.raises(SystemExit) if "invalid" in needle else _nothing():
        code = cli.main(["simulate", "--epochs", "1", "--out", str(tmp_path), *argv])
        assert code == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _script(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "sims" / "paper" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"paper_{name}", path)
    module = importlib.util.module_from_spec(spec)
    import sys

    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def test_paper_table3_script_counts_the_papers_rows():
    text = _script("table3").table()
    resnet = next(line for line in text.splitlines() if line.startswith("| ResNet32 (paper"))
    cells = [c.strip() for c in resnet.split("|")[1:-1]]
    # counted FEDF 2bit, Phong 2NV, TernGrad BV/16 for V = 1.8 MB, as printed in Table 3
    assert (cells[3], cells[5], cells[7]) == ("7.43", "10.80", "11.25")
    unet = next(line for line in text.splitlines() if line.startswith("| U-Net (paper"))
    cells = [c.strip() for c in unet.split("|")[1:-1]]
    assert (cells[3], cells[5], cells[7]) == ("569.66", "828.60", "863.12")


def test_paper_table2_grid_has_every_cell():
    runs = _script("table2").grid("digits", None, "mlp", 3, 2, (3, 4, 5), True)
    names = [n for n, _ in runs]
    assert len(names) == len(set(names)) == 2 * (1 + 3 * (2 + 3))
    cfgs = dict(runs)
    assert cfgs["fedf_d-1/n4/seed1"].master.direction == -1
    assert cfgs["fedf_d-1/n4/seed1"].n_workers == 4
    assert cfgs["central/seed0"].run.algorithm == "central"


def test_fedavg_average_ignores_unusable_models_even_when_they_are_nan():
    p = jnp.zeros(3)
    q = jnp.asarray([[1.0, 2.0, 3.0], [np.nan, np.nan, np.nan], [3.0, 4.0, 5.0]])
    sizes = jnp.asarray([1.0, 5.0, 3.0])
    out = fedavg.average(p, q, sizes, jnp.asarray([True, False, True]))
    np.testing.assert_allclose(out, (1 * np.array([1, 2, 3]) + 3 * np.array([3, 4, 5])) / 4,
                               rtol=1e-6)
    none = fedavg.average(p + 7, q, sizes, jnp.zeros(3, bool))
    np.testing.assert_array_equal(none, np.full(3, 7.0))
