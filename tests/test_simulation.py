"""The vmap simulator end to end: determinism, bytes, non-finite workers, one compile."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedf_jax import codec, config, layout, master, protocol, runlog, simulation, worker
from fedf_jax.algorithms import fedf
from fedf_jax.data import stack_workers

VOLATILE = ("wall_s", "modeled_s")
train_cohort = jax.jit(layout.train_cohort, static_argnums=(0, 1))


def _strip(records):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory):
    cfg = config.make(workers=3, epochs=4, seed=11)
    runs = {}
    for name, c in [("a", cfg), ("b", cfg), ("c", cfg.replace(seed=12))]:
        out = tmp_path_factory.mktemp(name)
        simulation.run(c, out)
        runs[name] = runlog.read(out / "run.jsonl")
    return runs


def test_same_seed_gives_identical_run_logs(small_runs):
    (ha, ea), (hb, eb) = small_runs["a"], small_runs["b"]
    assert ha["config"] == hb["config"]
    assert _strip(ea) == _strip(eb)
    assert len(ea) == 4


def test_different_seeds_give_different_run_logs(small_runs):
    ea, ec = small_runs["a"][1], small_runs["c"][1]
    assert [r["costs"] for r in ea] != [r["costs"] for r in ec]


def test_run_log_has_the_design_fields(small_runs):
    header, epochs = small_runs["a"]
    assert header["type"] == "header" and header["seed"] == 11
    assert header["devices"] and "jax" in header["versions"]
    for r in epochs:
        for field in runlog.EPOCH_FIELDS:
            assert field in r, field
        assert r["bytes_total"] == (r["bytes_down"] + r["bytes_up_model"] + r["bytes_up_ternary"]
                                    + r["bytes_other"] + r["bytes_header"])
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4]


def test_logged_pilot_and_goodness_follow_eq1(small_runs):
    header, epochs = small_runs["a"]
    sizes = np.asarray(header["worker_sizes"], np.float64)
    prev = None
    for r in epochs:
        costs = np.asarray(r["costs"], np.float64)
        want = sizes / costs if r["epoch"] == 1 else sizes * (prev - costs)
        np.testing.assert_allclose(r["goodness"], want, rtol=1e-4)
        assert r["pilot"] == int(np.argmax(want))
        prev = costs


def test_counted_payload_bytes_equal_eq8_for_2bit():
    # M multiple of 4: the 2bit ternary is exactly M/4 bytes, Eq. (8) holds exactly.
    for m, n in [(9612, 3), (9612, 5), (40, 10)]:
        b = codec.epoch_bytes(m, n, "2bit")
        assert b.down + b.up_model + b.up_ternary == codec.paper_bytes_per_epoch(4 * m, n)
        assert b.header == codec.HEADER_SIZE * 4 * n


def test_simulated_bytes_per_epoch_match_the_frames(small_runs):
    header, epochs = small_runs["a"]
    m, n = header["num_params"], header["config"]["workers"]
    frames = [codec.encode_array(codec.Kind.MODEL_DOWN, np.zeros(m, np.float32), 1, 0)] * n
    frames += [codec.encode_array(codec.Kind.COST, np.zeros(1), 1, k) for k in range(n)]
    frames += [codec.encode_array(codec.Kind.COMMAND, np.zeros(1, np.uint8), 1, 0)] * n
    frames += [codec.encode_array(codec.Kind.MODEL_UP, np.zeros(m, np.float32), 1, 1)]
    frames += [codec.encode_ternary(np.zeros(m, np.int8), 1, k) for k in range(n - 1)]
    for r in epochs:
        assert r["bytes_total"] == sum(len(f) for f in frames)


def _tiny_setup(n=4, m_hidden=(6,), lrs=None, seed=0, kinds=None):
    from fedf_jax.models import make_model

    rng = np.random.default_rng(seed)
    model = make_model("mlp", (3, 3, 1), 3, hidden=m_hidden)
    sizes = np.array([7, 9, 5, 8][:n])
    x = rng.normal(size=(n, 9, 3, 3, 1)).astype(np.float32)
    y = rng.integers(0, 3, (n, 9)).astype(np.int32)
    lrs = lrs or [0.1] * n
    kinds = kinds or ["sgd"] * n
    specs = [worker.WorkerSpec(lr=lr, batch_size=3, optimizer=k) for lr, k in zip(lrs, kinds,
                                                                                   strict=True)]
    return model, specs, x, y, sizes


def _tiny_fedf(model, specs, x, y, sizes, cfg):
    """The FEDF epoch, its data and first state for the tiny workers (vmap backend)."""
    wd = stack_workers(x.reshape(-1, *x.shape[2:]), y.reshape(-1),
                              [k * x.shape[1] + np.arange(s) for k, s in enumerate(sizes)])
    lay = layout.make_layout(specs, wd.sizes, 4)
    data = layout.place(lay, wd, specs, cfg.betas(len(specs)), x[0, :4], y[0, :4],
                        jax.random.key(0))
    p0 = model.init(jax.random.key(1))
    step = functools.partial(fedf.epoch, model, lay, cfg, layout.HERE.spread)
    return lay, data, p0, step


@pytest.mark.parametrize("kinds", [None, ["adam", "sgd", "momentum", "sgd"]])
def test_epoch_step_equals_protocol_functions_applied_by_hand(kinds):
    model, specs, x, y, sizes = _tiny_setup(lrs=[0.1, 0.02, 0.05, 0.1], kinds=kinds)
    cfg = master.MasterConfig(alpha0=0.05, beta=0.3, direction=-1)
    lay, data, p0, step = _tiny_fedf(model, specs, x, y, sizes, cfg)
    state = fedf.init(lay, data, p0)
    step = jax.jit(step)
    p_prev, p_prev2, prev_c = np.asarray(p0), np.asarray(p0), None
    for t in (1, 2, 3):
        q, c = np.zeros((4, p0.size), np.float32), np.zeros(4, np.float32)
        for co, cd, o in zip(lay.cohorts, data.cohorts, state.opt_states, strict=True):
            qg, cg, _ = train_cohort(model, co, jnp.asarray(p_prev), data.train_key, t, o, cd)
            q[list(co.rows)], c[list(co.rows)] = qg, cg
        state, out = step(state, data)
        np.testing.assert_allclose(out["costs"], c, rtol=1e-6)
        gvals = protocol.goodness(c, prev_c if prev_c is not None else c, sizes, t)
        pilot = int(protocol.select_pilot(gvals))
        assert pilot == int(out["pilot"])
        tern = np.stack([protocol.ternarize(q[k], p_prev, p_prev2, specs[k].lr, 0.3, t)
                         for k in range(4)])
        want = protocol.master_update(q[pilot], tern, sizes, pilot, p_prev, p_prev2, 0.05, 0.3,
                                      t, direction=-1)
        np.testing.assert_allclose(state.master.p_prev, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(out["nonzero"], (tern != 0).sum(1))
        p_prev, p_prev2, prev_c = np.asarray(state.master.p_prev), p_prev, c


def test_nonfinite_worker_is_never_pilot_and_its_ternary_is_dropped():
    model, specs, x, y, sizes = _tiny_setup()
    x[2] *= 1e30  # worker 2 diverges: NaN cost every epoch
    cfg = master.MasterConfig(alpha0=0.05)
    lay, data, p0, step = _tiny_fedf(model, specs, x, y, sizes, cfg)
    state, step = fedf.init(lay, data, p0), jax.jit(step, donate_argnums=0)
    for _ in range(3):
        state, out = step(state, data)
        assert not bool(out["valid"][2]) and bool(np.asarray(out["valid"])[[0, 1, 3]].all())
        assert int(out["pilot"]) != 2 and int(out["pilot"]) >= 0
        assert np.isfinite(np.asarray(state.master.p_prev)).all()


def test_all_workers_nonfinite_keeps_the_global_model():
    model, specs, x, y, sizes = _tiny_setup()
    x *= 1e30
    cfg = master.MasterConfig()
    lay, data, p0, step = _tiny_fedf(model, specs, x, y, sizes, cfg)
    state, out = jax.jit(step)(fedf.init(lay, data, p0), data)
    assert int(out["pilot"]) == -1
    np.testing.assert_array_equal(state.master.p_prev, p0)
    assert int(state.master.epoch) == 2


def test_epoch_step_compiles_once_across_epochs():
    model, specs, x, y, sizes = _tiny_setup()
    cfg = master.MasterConfig()
    lay, data, p0, step = _tiny_fedf(model, specs, x, y, sizes, cfg)
    state = fedf.init(lay, data, p0)
    traces = []
    fn = jax.jit(lambda s, d: (traces.append(1), step(s, d))[1])
    for _ in range(4):
        state, _ = fn(state, data)
    assert len(traces) == 1


def test_simulate_flag_errors_name_the_value():
    with pytest.raises(ValueError, match="workers"):
        config.make(workers=0)
    with pytest.raises(ValueError, match="beta"):
        config.make(beta=1.5)
    with pytest.raises(ValueError, match="model"):
        config.make(model="transformer")
    with pytest.raises(ValueError, match="2 values for 3 workers"):
        config.make(workers=3, beta=(0.1, 0.2))
