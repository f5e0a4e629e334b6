"""The asynchronous top level (--schedule async): the clock, the top's rules against plain
numpy, the synchronous special case bit for bit, and runs as a user makes them."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from reference import ref_goodness, ref_pack, ref_select_pilot, ref_ternarize

from fedf_jax import cli, config, schedule, simulation
from fedf_jax.algorithms import asynchronous

# --------------------------------------------------------------------------- the clock


def _updates(clock, count):
    return [clock.next() for _ in range(count)]


@pytest.mark.parametrize("policy", ["wait", "drop"])
def test_staleness_zero_waits_for_everyone(policy):
    clock = schedule.Clock([1.0, 2.0, 7.0], buffer=1, staleness=0, policy="wait")
    for upd in _updates(clock, 4):
        assert sorted(upd.members) == [0, 1, 2] and upd.staleness == (0, 0, 0)
        assert not upd.dropped
    assert upd.time == pytest.approx(28.0)  # four rounds of the slowest
    del policy


def test_a_full_buffer_is_synchronous_too():
    clock = schedule.Clock([3.0, 1.0, 2.0], buffer=3)
    ups = _updates(clock, 3)
    assert [u.members for u in ups] == [(1, 2, 0)] * 3  # order of arrival
    assert [u.time for u in ups] == [3.0, 6.0, 9.0]


def test_fedasync_order_by_hand():
    # Speeds 1, 1, 4: senders 0 and 1 arrive at t = 1 (0 first: lower id), 2 at t = 4.
    clock = schedule.Clock([1.0, 1.0, 4.0], buffer=1, overhead_s=0.5)
    ups = _updates(clock, 6)
    # 0 is applied at 1.5 (+ overhead) and restarts; 1 arrived at 1 but waits for the top;
    # at t = 4, 0 (again) and 2 tie: the lower id first.
    assert [u.members for u in ups] == [(0,), (1,), (0,), (1,), (0,), (2,)]
    assert [u.time for u in ups] == [1.5, 2.0, 3.0, 3.5, 4.5, 5.0]
    assert [u.staleness for u in ups] == [(0,), (1,), (1,), (1,), (1,), (5,)]


def test_wait_policy_bounds_staleness():
    clock = schedule.Clock([1.0, 1.0, 1.0, 5.0], buffer=1, staleness=2)
    ups = _updates(clock, 30)
    assert max(max(u.staleness) for u in ups) <= 2
    assert 3 in {k for u in ups for k in u.members}  # the slow sender still counts


def test_drop_policy_drops_and_names_stale_arrivals():
    clock = schedule.Clock([1.0, 1.0, 5.0], buffer=1, staleness=1, policy="drop")
    ups = _updates(clock, 12)
    assert max(max(u.staleness) for u in ups) <= 1
    dropped = [d for u in ups for d in u.dropped]
    assert dropped and all(k == 2 for k, _ in dropped)
    assert all(u.version - 1 - s > 1 for u in ups for k, s in u.dropped)


@pytest.mark.parametrize("kwargs, needle", [
    ({"durations": [1.0, 0.0]}, "duration"),
    ({"durations": [1.0], "buffer": 2}, "buffer"),
    ({"durations": [1.0], "staleness": -1}, "staleness"),
    ({"durations": [1.0], "policy": "later"}, "stale_policy"),
])
def test_clock_rejects_bad_settings(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        schedule.Clock(**kwargs)


def test_speeds_parse_and_lognormal_is_seeded():
    np.testing.assert_array_equal(schedule.parse_speeds("1,1,4", 3, 0), [1, 1, 4])
    a = schedule.parse_speeds("lognormal:0.5", 5, seed=3)
    np.testing.assert_array_equal(a, schedule.parse_speeds("lognormal:0.5", 5, seed=3))
    assert not np.array_equal(a, schedule.parse_speeds("lognormal:0.5", 5, seed=4))
    assert np.all(a > 0) and len(set(a.tolist())) == 5


def test_fedasync_staleness_functions():
    tau = np.arange(8)
    np.testing.assert_allclose(schedule.staleness_weight("polynomial", tau), (tau + 1.0) ** -0.5)
    hinge = [1.0 if t <= 4 else 1.0 / (10.0 * (t - 4) + 1.0) for t in tau]
    np.testing.assert_allclose(schedule.staleness_weight("hinge", tau), hinge)
    np.testing.assert_array_equal(schedule.staleness_weight("constant", tau), np.ones(8))


# --------------------------------------------------------------------------- the top's rules


def _parts(sizes, betas, secure=None):
    return asynchronous.Parts(len(sizes), jnp.asarray(sizes, jnp.float32),
                              jnp.asarray(betas, jnp.float32), None, None, None, None, None,
                              secure, 1)


def _setting(m=37, seed=0):
    rng = np.random.default_rng(seed)
    hist = {s: rng.normal(size=m).astype(np.float32) for s in range(4)}
    q = rng.normal(size=(4, m)).astype(np.float32) * 0.1 + hist[3]
    return rng, hist, q


@pytest.mark.parametrize("mixing, fn", [(1.0, "constant"), (0.6, "polynomial")])
def test_fedf_top_equals_numpy(mixing, fn):
    rng, hist, q = _setting()
    v = 3
    sizes, betas, alphas = [40, 25, 31, 17], [0.2, 0.3, 0.25, 0.1], [0.05, 0.02, 0.03, 0.04]
    member = np.array([True, False, True, True])
    starts = np.array([2, 3, 0, 1])  # member 0 stale 1, member 2 from P^0 (Eq. 4), 3 stale 2
    prevs = np.array([0, 2, 0, 0])  # the model each was sent before its start
    costs = np.array([0.9, 0.5, 0.7, 0.4], np.float32)
    prev = np.array([3.0, 0.6, np.nan, 0.45], np.float32)
    first = np.array([False, False, True, False])
    tern = [ref_ternarize(q[k], hist[starts[k]], hist[prevs[k]], alphas[k],
                          betas[k], starts[k] + 1) for k in range(4)]
    packed = np.stack([ref_pack(t, "2bit") for t in tern])
    sent = asynchronous.Sent(jnp.asarray(q), jnp.asarray(costs), jnp.asarray(packed),
                             jnp.zeros(4, jnp.int32), {})
    cfg = config.make(workers=4, alpha0=0.01, schedule="async", mixing=mixing, staleness_fn=fn,
                      beta=tuple(betas))
    hist_j = {s: jnp.asarray(p) for s, p in hist.items()}
    p_new, out = asynchronous.fedf_top(cfg, _parts(sizes, betas), hist_j, v, sent, member,
                                       starts, prevs, prev, first)

    g = np.where(first, ref_goodness(costs, prev, sizes, 1), ref_goodness(costs, prev, sizes, 2))
    g = np.where(member, g, np.nan)
    pilot = ref_select_pilot(g)
    assert int(out["pilot"]) == pilot and pilot == 0
    total = sum(sizes[k] for k in range(4) if member[k])
    f = hist[v].astype(np.float64) + q[pilot] - hist[starts[pilot]]  # the stale pilot, rebased
    for k in range(4):
        if not member[k] or k == pilot:
            continue
        s = starts[k]
        if s == 0:
            f += 0.01 * sizes[k] / total * tern[k]
        else:
            f += sizes[k] / total * betas[k] * tern[k] * (hist[s] - hist[prevs[k]])
    a = mixing * float(schedule.staleness_weight(fn, v - starts[pilot]))
    want = (1 - a) * hist[v] + a * f
    np.testing.assert_allclose(np.asarray(p_new), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("buffer", [1, 3])
def test_fedavg_top_is_fedasync_or_fedbuff(buffer):
    rng, hist, q = _setting(seed=1)
    v, sizes = 3, [40, 25, 31, 17]
    member = np.array([True, False, True, True]) if buffer > 1 else np.array([0, 0, 1, 0], bool)
    starts = np.array([3, 3, 1, 2])
    cfg = config.make(workers=4, algorithm="fedavg", schedule="async", buffer=buffer,
                      mixing=0.8, staleness_fn="polynomial")
    sent = asynchronous.Sent(jnp.asarray(q), jnp.full(4, jnp.nan), jnp.zeros((4, 0), jnp.uint8),
                             jnp.zeros(4, jnp.int32), {})
    p_new, _ = asynchronous.fedavg_top(cfg, _parts(sizes, [0.5] * 4),
                                       {s: jnp.asarray(p) for s, p in hist.items()}, v, sent,
                                       member, starts)
    s_tau = (v - starts + 1.0) ** -0.5
    if buffer == 1:  # FedAsync: x <- (1 - a) x + a x_new, a = alpha s(tau)
        a = 0.8 * s_tau[2]
        want = (1 - a) * hist[v] + a * q[2]
    else:  # FedBuff: each member's change on the current model
        w = np.where(member, np.array(sizes) * s_tau, 0.0)
        r = np.stack([hist[v] + q[k] - hist[starts[k]] for k in range(4)])
        a = 0.8 * w.sum() / np.where(member, sizes, 0).sum()
        want = (1 - a) * hist[v] + a * (w @ r) / w.sum()
    np.testing.assert_allclose(np.asarray(p_new), want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- runs


def _run(**kw):
    return simulation.run(config.make(**kw))


def test_staleness_zero_is_the_synchronous_two_level_run():
    base = dict(workers=12, groups=3, epochs=3, seed=1)
    sync, asy = _run(**base), _run(**base, schedule="async", staleness=0)
    assert [r["pilot"] for r in sync["records"]] == [r["pilot"] for r in asy["records"]]
    assert [r["group_pilots"] for r in sync["records"]] == [
        r["group_pilots"] for r in asy["records"]]
    np.testing.assert_array_equal(sync["params"], asy["params"])
    assert all(r["staleness"] == [0, 0, 0] for r in asy["records"])


@pytest.mark.parametrize("algorithm", ["fedf", "fedavg"])
def test_a_buffer_of_every_worker_is_the_synchronous_flat_run(algorithm):
    base = dict(workers=5, epochs=2, algorithm=algorithm)
    sync, asy = _run(**base), _run(**base, schedule="async", buffer=5, speeds="1,2,3,1,1")
    np.testing.assert_array_equal(sync["params"], asy["params"])
    assert [r["pilot"] for r in sync["records"]] == [r["pilot"] for r in asy["records"]]


def test_async_log_says_when_who_and_how_stale(tmp_path):
    res = _run(workers=6, epochs=8, schedule="async", buffer=2, staleness=1,
               stale_policy="drop", speeds="1,1,1,1,1,6")
    recs = res["records"]
    clocks = [r["clock_s"] for r in recs]
    assert clocks == sorted(clocks) and clocks[0] > 0
    assert sum(r["modeled_s"] for r in recs) == pytest.approx(clocks[-1])
    assert all(len(r["senders"]) == 2 and max(r["staleness"]) <= 1 for r in recs)
    assert all(math.isnan(c) for r in recs for k, c in enumerate(r["costs"])
               if k not in r["senders"])
    dropped = [(r["epoch"], d) for r in recs for d in r["stale_dropped"]]
    assert dropped and all(t - 1 - d["start"] > 1 for t, d in dropped)  # each was too stale
    assert all(np.isfinite(r["test_loss"]) for r in recs)


def test_async_secure_aggregation_sums_the_same_votes():
    base = dict(workers=6, epochs=4, schedule="async", buffer=3, speeds="1,1,2,2,3,3")
    plain, secure = _run(**base), _run(**base, secure_sum="secagg")
    np.testing.assert_array_equal(plain["params"], secure["params"])
    assert all(r["bytes_up_ternary"] == 0 and r["bytes_secagg_masked"] > 0
               for r in secure["records"])


def _time_to(records, accuracy):
    return next((r["clock_s"] for r in records if r["test_accuracy"] >= accuracy), math.inf)


def test_async_groups_beat_a_slow_group_to_the_target():
    base = dict(workers=12, groups=3, seed=0, speeds="1,1,4")
    sync = _run(**base, epochs=6, schedule="async", staleness=0)
    asy = _run(**base, epochs=14, schedule="async", buffer=1, staleness=4)
    target = 0.8
    assert _time_to(asy["records"], target) < _time_to(sync["records"], target) < math.inf
    assert max(max(r["staleness"]) for r in asy["records"]) > 0  # why: it did not wait


def test_async_admm_reaches_the_flat_objective():
    base = dict(algorithm="admm-svm", data="breast-cancer", workers=6, tol=1e-6, epochs=2000)
    flat = _run(**base)["records"][-1]["objective"]
    rec = _run(**base, schedule="async", buffer=3, staleness=4,
               speeds="1,1,1,1,1,4")["records"]
    assert abs(rec[-1]["objective"] - flat) <= 1e-3 * flat
    assert max(max(r["staleness"]) for r in rec) > 0


@pytest.mark.parametrize("argv, needle", [
    (["--speeds", "1,0,1,1,1"], "speeds"),
    (["--speeds", "1,1"], "speeds"),
    (["--staleness", "-1"], "staleness"),
    (["--buffer", "6"], "buffer"),
    (["--staleness-fn", "cubic"], "staleness-fn"),
])
def test_bad_async_input_is_one_line_exit_2(argv, needle, tmp_path, capsys):
    try:
        code = cli.main(["simulate", "--schedule", "async", *argv, "--out", str(tmp_path)])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err.replace("_", "-") and len(err.strip().splitlines()) == 1, err
