"""The pilot guard (DESIGN §9): robust bands against a numpy median/MAD, the step check
on hand-made cases, jit and no jit, no false alarm on an honest heterogeneous run, and a
diverging worker kept out."""

import dataclasses
import math

import jax
import numpy as np
import pytest

from fedf_jax import guard, protocol
from fedf_jax.privacy import views
from fedf_jax.privacy.common import Options

CFG = guard.GuardConfig(k_mad=5.0, log_floor=math.log(4.0), rho=10.0)


def _np_band(values, mask, k, floor):
    """median and half-width max(k * 1.4826 * MAD, floor), written out in numpy."""
    v = np.asarray(values, np.float64)[np.asarray(mask, bool) & np.isfinite(values)]
    med = np.median(v)
    mad = np.median(np.abs(v - med))
    return med, max(k * 1.4826 * mad, floor)


def _np_admissible(costs, prev, sizes, epoch, cfg):
    costs, prev, sizes = (np.asarray(a, np.float64) for a in (costs, prev, sizes))
    with np.errstate(divide="ignore", invalid="ignore"):
        lc = np.where(costs > 0, np.log(costs), np.nan)
        lp = np.where(prev > 0, np.log(prev), np.nan)
        ls = np.log(sizes)
    fin = np.isfinite(lc)
    ms, ws = _np_band(ls, np.ones_like(fin), cfg.k_mad, cfg.log_floor)
    mc, wc = _np_band(lc, fin, cfg.k_mad, cfg.log_floor)
    ok = fin & (ls <= ms + ws) & (np.abs(lc - mc) <= wc)
    if epoch > 1:
        pf = np.isfinite(lp)
        mp, wp = _np_band(lp, pf & fin, cfg.k_mad, cfg.log_floor)
        ok &= pf & (np.abs(lp - mp) <= wp)
    return ok


@pytest.mark.parametrize("jit", [False, True])
def test_robust_band_is_the_median_and_mad_of_the_masked_values(jit):
    rng = np.random.default_rng(0)
    values = rng.normal(size=9).astype(np.float32)
    values[3] = np.nan
    mask = np.ones(9, bool)
    mask[5] = False
    fn = jax.jit(guard.robust_band) if jit else guard.robust_band
    med, width = fn(values, mask, 5.0, 0.01)
    want = _np_band(values, mask, 5.0, 0.01)
    np.testing.assert_allclose([float(med), float(width)], want, rtol=1e-5)
    # equal values: MAD 0, the floor keeps the band open
    med, width = fn(np.ones(5, np.float32), np.ones(5, bool), 5.0, 0.7)
    assert (float(med), float(width)) == (1.0, pytest.approx(0.7))


@pytest.mark.parametrize("jit", [False, True])
def test_admissible_matches_numpy_and_flags_the_outliers(jit):
    fn = jax.jit(guard.admissible) if jit else guard.admissible
    costs = np.array([0.62, 0.55, 0.71, 0.60, 3e4], np.float32)  # a diverged cost
    prev = np.array([0.90, 0.80, 1.00, 0.85, 5e5], np.float32)
    sizes = np.array([180, 230, 150, 2_000_000, 210])  # an inflated size
    for epoch in (1, 2):
        got = np.asarray(fn(costs, prev, sizes, epoch, CFG))
        np.testing.assert_array_equal(got, _np_admissible(costs, prev, sizes, epoch, CFG))
        assert got.tolist() == [True, True, True, False, False]
    # a non-finite or non-positive cost is never admissible; t = 1 ignores C^{t-1}
    bad = costs.copy()
    bad[[0, 1]] = [np.nan, 0.0]
    got = np.asarray(fn(bad, np.full(5, np.nan, np.float32), sizes, 1, CFG))
    assert got.tolist() == [False, False, True, False, False]
    # at t >= 2 a missing C^{t-1} is not admissible
    assert not np.asarray(fn(costs, np.full(5, np.nan, np.float32), sizes, 2, CFG)).any()


def test_select_takes_the_best_goodness_among_the_admissible():
    g = np.array([5.0, 9.0, 7.0, 1e9], np.float32)
    assert int(guard.select(g, np.array([True, True, True, False]))) == 1
    assert int(guard.select(g, np.array([True, False, True, False]))) == 2
    assert int(guard.select(g, np.zeros(4, bool))) == -1
    assert int(guard.select(g, np.ones(4, bool))) == int(protocol.select_pilot(g))


def _case(m=37):
    """P^{t-2} = 0, P^{t-1} = s with |s| = 1: a trit is non-zero where |Q - P^{t-1}| >= beta."""
    rng = np.random.default_rng(1)
    p2 = np.zeros(m, np.float32)
    p1 = np.where(rng.random(m) < 0.5, -1.0, 1.0).astype(np.float32)
    t = np.zeros((4, m), np.int8)
    t[1, :10] = 1  # worker 1 moved 10 coordinates by >= beta
    t[2, :10] = -1
    t[3, :20] = 1
    return p1, p2, t


@pytest.mark.parametrize("jit", [False, True])
def test_implied_steps_and_the_step_check_on_hand_made_cases(jit):
    p1, p2, t = _case()
    beta = 0.2
    r = np.asarray(guard.implied_steps(t, p1, p2, beta))
    np.testing.assert_allclose(r, [0.0, beta * math.sqrt(10), beta * math.sqrt(10),
                                   beta * math.sqrt(20)], rtol=1e-6)
    fn = jax.jit(guard.step_ok) if jit else guard.step_ok
    valid = np.ones(4, bool)
    ref = beta * math.sqrt(10)  # the median of workers 1-3 (the pilot, 0, is left out)
    q_ok = p1 + np.r_[np.full(1, 0.99 * CFG.rho * ref), np.zeros(36)].astype(np.float32)
    q_far = p1 + np.r_[np.full(1, 1.01 * CFG.rho * ref), np.zeros(36)].astype(np.float32)
    assert bool(fn(q_ok, p1, p2, t, 0, valid, beta, 2, CFG))
    assert not bool(fn(q_far, p1, p2, t, 0, valid, beta, 2, CFG))
    # t = 1: the ternaries imply no step (Eq. 4's threshold is private): always passes
    assert bool(fn(q_far, p1, p2, t, 0, valid, beta, 1, CFG))
    # no other valid worker: nothing to compare with, passes
    assert bool(fn(q_far, p1, p2, t, 0, np.array([True, False, False, False]), beta, 2, CFG))
    # every other ternary zero: the floor beta ||s|| / sqrt(M) is the reference
    zero = np.zeros_like(t)
    floor = beta * math.sqrt(37) / math.sqrt(37)
    q = p1 + np.r_[np.full(1, 0.9 * CFG.rho * floor), np.zeros(36)].astype(np.float32)
    assert bool(fn(q, p1, p2, zero, 0, valid, beta, 2, CFG))
    # a refused model is replaced by P^{t-1}
    np.testing.assert_array_equal(np.asarray(guard.pilot_model(q_far, p1, False)), p1)
    np.testing.assert_array_equal(np.asarray(guard.pilot_model(q_far, p1, True)), q_far)


def test_the_packed_step_check_equals_the_unpacked_one():
    from fedf_jax import codec

    p1, p2, t = _case()
    packed = np.stack([codec.pack(row, "base3") for row in t])
    q = p1 + 0.5
    for epoch in (1, 2):
        assert bool(guard.step_ok_packed(q, p1, p2, packed, 0, np.ones(4, bool), 0.2, epoch,
                                         CFG, "base3")) == bool(
            guard.step_ok(q, p1, p2, t, 0, np.ones(4, bool), 0.2, epoch, CFG))


def test_bad_knobs_are_named():
    with pytest.raises(ValueError, match="`rho`"):
        guard.check_config(guard.GuardConfig(rho=0.0))
    with pytest.raises(ValueError, match="`k_mad`"):
        guard.check_config(guard.GuardConfig(k_mad=float("nan")))


def test_no_false_alarm_on_an_honest_heterogeneous_run_of_a_few_epochs():
    opts = Options(workers=5, hidden=16, partition="label-dirichlet")
    fed = views.make_federation(opts, 3)
    rng = np.random.default_rng(3)
    specs = tuple(dataclasses.replace(s, lr=float(np.exp(rng.uniform(np.log(0.01), np.log(0.5)))),
                                      batch_size=int(rng.choice([8, 16, 32])),
                                      local_epochs=int(rng.choice([1, 2, 5])))
                  for s in fed.specs)
    fed = fed._replace(specs=specs)
    assert len(set(fed.sizes.tolist())) == 5 and len({s.lr for s in specs}) == 5
    plain = views.run_arm(fed, "fedf+1", 4, 3)
    guarded = views.run_arm(fed, "fedf+1", 4, 3, guard=guard.DEFAULT)
    assert [v.pilot for v in guarded] == [v.pilot for v in plain]
    assert not any(v.pilot_refused for v in guarded)
    for a, b in zip(plain, guarded, strict=True):
        np.testing.assert_array_equal(a.p_new, b.p_new)


def test_a_diverging_worker_never_becomes_the_global_model_under_the_guard():
    fed = views.make_federation(Options(workers=4, hidden=16), 1)
    specs = list(fed.specs)
    specs[3] = dataclasses.replace(specs[3], lr=1e6)
    fed = fed._replace(specs=tuple(specs))
    plain = views.run_arm(fed, "fedf+1", 6, 1)
    assert any(v.pilot == 3 for v in plain)  # the paper's rule lets it in
    guarded = views.run_arm(fed, "fedf+1", 6, 1, guard=guard.DEFAULT)
    assert all(v.pilot != 3 or v.pilot_refused for v in guarded)
    loss_plain = views.evaluate(fed, plain[-1].p_new)[0]
    loss_guard = views.evaluate(fed, guarded[-1].p_new)[0]
    assert loss_guard < 2.5 < loss_plain


def test_e12_scenarios_put_the_bad_workers_where_they_say():
    from fedf_jax.privacy import e12_pilot_guard as e12

    opts = Options(hidden=8)
    fed, hook, bad = e12.scenario(opts, "diverging worker", 0)
    assert len(fed.specs) == 4 and bad == [3] and hook is None
    assert fed.specs[3].lr == e12.DIVERGING_LR and max(s.lr for s in fed.specs[:3]) < 1
    fed, hook, bad = e12.scenario(opts, "one liar", 0)
    _, c, s = hook(2, fed.p0, np.zeros((5, 3)), np.ones(5), fed.sizes.copy())
    assert bad == [4] and c[4] == 0.5 and c[:4].tolist() == [1] * 4
    assert s[4] == fed.sizes[4] * 10_000 and (s[:4] == fed.sizes[:4]).all()
    fed, _, bad = e12.scenario(opts, "honest, heterogeneous", 0)
    assert bad == [] and len({(s.batch_size, s.local_epochs, s.lr) for s in fed.specs}) == 5
    with pytest.raises(ValueError, match="scenario"):
        e12.scenario(opts, "sleepy worker", 0)


@pytest.mark.slow
def test_e12_runs_end_to_end_and_the_guard_stops_the_minority():
    from fedf_jax.privacy import e12_pilot_guard as e12

    r = e12.run(Options(hidden=16, seeds=1, quick=True), seed0=0)
    by = {(x.arm, x.setting, x.metric): x.mean for x in r.rows}
    for name in ("diverging worker", "one liar"):
        assert by[("guard", name, "hijack")] == 0.0 < by[("paper rule", name, "hijack")]
    assert by[("guard", "N-2 colluders", "hijack")] == 1.0  # a majority breaks the medians
    assert {g.name for g in r.regimes} >= {"diverging worker, guard on", "one liar, guard on"}
