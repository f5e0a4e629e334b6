"""``--pilot-guard`` in real runs (DESIGN §9): the master's guarded pilot and its step
check, through ``fedf simulate`` and under mpiexec, replayed from the run log.

The guard's functions are checked against numpy in test_guard.py; here the runs must
make the choices those functions give on the values the master received, and keep
the paper's rule when the flag is off.
"""

import numpy as np
import pytest
from mpi_jobs import config_of, needs_mpiexec, ok, train

from fedf_jax import cli, codec, guard, master, protocol, runlog, simulation

DIVERGING = ("--workers", "4", "--epochs", "5", "--seed", "1")


def _diverging_config(tmp_path, *flags):
    """4 workers on digits, worker 3 at learning rate 1e6 (its cost drops by orders of
    magnitude and wins Eq. 1)."""
    path = tmp_path / "diverging.toml"
    path.write_text("[[worker]]\nlr = 0.05\n" * 3 + "[[worker]]\nlr = 1e6\n")
    return config_of(*DIVERGING, "--config", str(path), *flags)


def _replay(header, records):
    """Each epoch's pilot from the logged costs by Eq. (1) and the guard's bands."""
    sizes = np.asarray(header["worker_sizes"], np.float32)
    prev = np.full(len(sizes), np.nan, np.float32)
    for r in records:
        costs = np.asarray(r["costs"], np.float32)
        g = np.asarray(protocol.goodness(costs, prev, sizes, r["epoch"]))
        np.testing.assert_allclose(r["goodness"], g, rtol=1e-6)
        adm = np.asarray(guard.admissible(costs, prev, sizes, r["epoch"]))
        assert r["paper_pilot"] == int(protocol.select_pilot(g)), r["epoch"]
        assert r["pilot"] == int(guard.select(g, adm)), r["epoch"]
        prev = costs


@pytest.fixture(scope="module")
def diverging(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("guard")
    out = tmp / "sim"
    res = simulation.run(_diverging_config(tmp, "--pilot-guard"), out)
    return {"tmp": tmp, "res": res, "log": runlog.read(out / "run.jsonl")}


def test_the_guard_keeps_a_diverging_worker_from_being_the_pilot(diverging):
    header, records = diverging["log"]
    _replay(header, records)
    assert any(r["paper_pilot"] == 3 for r in records)  # Eq. (1) alone would take it
    assert all(r["pilot"] != 3 for r in records)
    summary = diverging["res"]
    assert summary["diverged"] is False and summary["final_test_accuracy"] > 0.8


def test_without_the_flag_the_paper_rule_lets_it_wreck_the_run(tmp_path):
    res = simulation.run(_diverging_config(tmp_path))
    assert 3 in [r["pilot"] for r in res["records"]]
    assert res["diverged"] is True
    assert "paper_pilot" not in res["records"][0]


def test_an_honest_run_is_unchanged_by_the_guard(tmp_path):
    flags = ("--workers", "5", "--epochs", "4", "--partition", "label-dirichlet")
    plain = simulation.run(config_of(*flags))
    guarded = simulation.run(config_of(*flags, "--pilot-guard"))
    assert [r["pilot"] for r in guarded["records"]] == [r["pilot"] for r in plain["records"]]
    assert not any(r["step_refused"] for r in guarded["records"])
    np.testing.assert_array_equal(guarded["params"], plain["params"])


def test_a_refused_step_leaves_the_others_votes_only():
    rng = np.random.default_rng(0)
    n, m, scheme = 4, 41, "2bit"
    cfg = config_of("--workers", str(n), "--pilot-guard").master
    p_prev2 = rng.normal(size=m).astype(np.float32)
    p_prev = p_prev2 + 0.01 * rng.normal(size=m).astype(np.float32)
    state = master.MasterState(p_prev, p_prev2, np.ones(n, np.float32), np.int32(3))
    sizes = np.array([10, 20, 30, 40], np.float32)
    betas = np.full(n, cfg.beta, np.float32)
    packed = np.stack([codec.pack(t, scheme)
                       for t in rng.integers(-1, 2, (n, m)).astype(np.int8)])
    costs = np.full(n, 0.5, np.float32)
    sel = master.select(state, costs, sizes, cfg)
    assert int(sel.pilot) == 3  # equal cost drops: the largest size wins Eq. (1)
    for step, refused in ((1e-3, False), (1e3, True)):
        q = p_prev + step * np.ones(m, np.float32)
        new = master.update(state, sel, costs, q, packed, sizes, betas, cfg)
        used = p_prev if refused else q
        want = protocol.unpack_update(used, packed, sizes, sel.pilot, p_prev, p_prev2,
                                      cfg.alpha0, betas, state.epoch, scheme=scheme)
        np.testing.assert_array_equal(np.asarray(new.p_prev), np.asarray(want))
        assert bool(master.pilot_passes(state, sel, q, packed, betas, cfg)) is not refused


def test_under_a_secure_sum_the_bands_still_apply(diverging):
    res = simulation.run(_diverging_config(diverging["tmp"], "--pilot-guard",
                                           "--secure-sum", "secagg"))
    assert all(r["pilot"] != 3 for r in res["records"])
    assert [r["pilot"] for r in res["records"]] == [r["pilot"] for r in diverging["log"][1]]
    assert "step_refused" not in res["records"][0]  # no single ternary to check against


@needs_mpiexec
def test_mpi_master_guards_as_the_simulator_does(diverging, tmp_path):
    cfg_file = diverging["tmp"] / "diverging.toml"
    ok(train(tmp_path, *DIVERGING, "--config", str(cfg_file), "--pilot-guard"))
    header, records = runlog.read(tmp_path / "run.jsonl")
    _replay(header, records)
    sim = diverging["log"][1]
    for field in ("pilot", "paper_pilot", "step_refused"):
        assert [r[field] for r in records] == [r[field] for r in sim], field


@pytest.mark.parametrize("flags", [("--algorithm", "fedavg"), ("--worker-chunk", "2"),
                                   ("--groups", "2", "--schedule", "async")])
def test_the_guard_with_a_run_it_cannot_guard_exits_2_naming_it(flags, tmp_path, capsys):
    code = cli.main(["simulate", "--pilot-guard", *flags, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "pilot_guard" in err and len(err.strip().splitlines()) == 1, err
