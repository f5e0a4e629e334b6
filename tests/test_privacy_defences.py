"""Defences, DP accounting, the canary audit and the attack statistics."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sklearn.metrics
from dp_accounting import GaussianDpEvent, SelfComposedDpEvent
from dp_accounting.rdp import RdpAccountant
from scipy import optimize
from scipy import stats as sps

from fedf_jax.privacy import audit, defences, stats

DELTA = 1e-5


def balle_wang_epsilon(sigma: float, delta: float) -> float:
    """Analytic Gaussian mechanism (Balle & Wang 2018, Thm. 8), sensitivity 1: the eps
    solving ``Phi(1/(2s) - eps s) - e^eps Phi(-1/(2s) - eps s) = delta``."""
    def gap(eps):
        return (sps.norm.cdf(0.5 / sigma - eps * sigma)
                - math.exp(eps) * sps.norm.cdf(-0.5 / sigma - eps * sigma) - delta)
    return optimize.brentq(gap, 0.0, 500.0, xtol=1e-12)


@pytest.mark.parametrize("sigma,rounds", [(1.0, 1), (2.0, 10), (5.0, 100), (0.8, 4)])
def test_epsilon_matches_the_analytic_gaussian_mechanism(sigma, rounds):
    # `rounds` Gaussians of multiplier sigma = one Gaussian of multiplier sigma / sqrt(rounds)
    want = balle_wang_epsilon(sigma / math.sqrt(rounds), DELTA)
    assert defences.epsilon(sigma, rounds, DELTA) == pytest.approx(want, rel=1e-3)


@pytest.mark.parametrize("sigma,rounds", [(1.0, 1), (2.0, 10)])
def test_epsilon_is_below_the_rdp_bound(sigma, rounds):
    acc = RdpAccountant()
    acc.compose(SelfComposedDpEvent(GaussianDpEvent(sigma), rounds))
    rdp = acc.get_epsilon(DELTA)
    eps = defences.epsilon(sigma, rounds, DELTA)
    assert eps <= rdp
    assert eps > 0.8 * rdp  # RDP is loose, but not by much for Gaussians


def test_epsilon_falls_with_noise_and_grows_with_rounds():
    by_sigma = [defences.epsilon(s, 5, DELTA) for s in (0.7, 1.0, 2.0)]
    by_rounds = [defences.epsilon(2.0, t, DELTA) for t in (1, 3, 10)]
    assert np.all(np.diff(by_sigma) < 0)
    assert np.all(np.diff(by_rounds) > 0)
    assert defences.epsilon(0.0, 3, DELTA) == math.inf


@pytest.mark.parametrize("eps,rounds", [(1.0, 3), (8.0, 3), (2.5, 20)])
def test_sigma_for_epsilon_round_trip(eps, rounds):
    sigma = defences.sigma_for_epsilon(eps, rounds, DELTA)
    assert defences.epsilon(sigma, rounds, DELTA) == pytest.approx(eps, rel=2e-3)
    assert defences.sigma_for_epsilon(math.inf, rounds, DELTA) == 0.0


def test_worker_dp_spends_its_budget_over_both_channels():
    d = defences.worker_dp(8.0, 3, DELTA, clip=0.5)
    # composing the update (sensitivity 2 clip) and the cost events in dp-accounting ...
    assert d.epsilon(3, DELTA) == pytest.approx(8.0, rel=2e-3)
    # ... equals one Gaussian with the combined multiplier
    assert defences.epsilon(d.noise_multiplier, 3, DELTA) == pytest.approx(8.0, rel=2e-3)
    assert (2 / d.sigma) ** 2 / d.noise_multiplier ** -2 == pytest.approx(
        1 - defences.COST_SHARE)
    assert defences.worker_dp(math.inf, 3, DELTA).epsilon(3, DELTA) == math.inf


def test_clipping_bound_is_exact():
    rng = np.random.default_rng(0)
    p = rng.normal(size=37).astype(np.float32)
    d = defences.WorkerDP("clip", clip=0.5, sigma=0.0, cost_sigma=0.0)
    for scale in (0.01, 10.0):
        q = p + scale * rng.normal(size=37).astype(np.float32)
        sent, _ = jax.jit(d.worker)(jax.random.key(0), q, p, jnp.float32(1.0))
        delta = (q - p).astype(np.float64)
        want = delta * min(1.0, 0.5 / np.linalg.norm(delta))
        np.testing.assert_allclose(np.asarray(sent) - p, want, atol=1e-5)
    assert np.linalg.norm(np.asarray(sent) - p) == pytest.approx(0.5, rel=1e-5)


def test_noise_std_over_many_draws():
    d = defences.WorkerDP("dp", clip=0.3, sigma=2.0, cost_sigma=0.1, cost_clip=4.0)
    p = jnp.zeros(37)
    keys = jax.random.split(jax.random.key(1), 4000)
    sent, cost = jax.vmap(lambda k: d.worker(k, p, p, jnp.float32(9.0)))(keys)
    assert float(jnp.std(sent)) == pytest.approx(2.0 * 0.3, rel=0.02)
    assert float(jnp.mean(sent)) == pytest.approx(0.0, abs=0.01)
    assert float(jnp.std(cost)) == pytest.approx(0.1 * 4.0, rel=0.05)
    assert float(jnp.mean(cost)) == pytest.approx(4.0, abs=0.03)  # 9.0 clipped to 4.0
    pn = defences.PilotNoise("pn", 0.05)
    q = jnp.ones(37)
    assert pn.worker(keys[0], q, p, jnp.float32(1.0))[0] is q
    noisy = jax.vmap(lambda k: pn.pilot(k, q))(keys)
    assert float(jnp.std(noisy)) == pytest.approx(0.05, rel=0.02)


def test_from_arm_builds_the_named_defence():
    assert defences.from_arm("fedf+1", 3, DELTA) is None
    assert defences.from_arm("fedavg", 3, DELTA) is None
    d = defences.from_arm("fedf-1+dp8", 3, DELTA, clip=2.0)
    assert isinstance(d, defences.WorkerDP) and d.clip == 2.0 and d.name == "dp8"
    assert d.epsilon(3, DELTA) == pytest.approx(8.0, rel=2e-3)
    inf = defences.from_arm("fedf+1+dpinf", 3, DELTA)
    assert inf.sigma == 0.0 and inf.cost_sigma == 0.0
    pn = defences.from_arm("fedf+1+pilotnoise0.01", 3, DELTA)
    assert isinstance(pn, defences.PilotNoise) and pn.sigma == 0.01
    for bad in ("fedf+2", "fedf+1+dp", "fedf+1+dp-1", "fedf+1+dp0", "sgd+dp8"):
        with pytest.raises(ValueError, match="arm"):
            defences.from_arm(bad, 3, DELTA)


def test_audit_bounds_a_known_gaussian_mechanism():
    # scores of a Gaussian mechanism of multiplier 1 (sensitivity 1): N(1, 1) vs N(0, 1)
    rng = np.random.default_rng(0)
    true_eps = defences.epsilon(1.0, 1, DELTA)
    got = audit.audited_epsilon(rng.normal(1, 1, 1000), rng.normal(0, 1, 1000), DELTA)
    assert 0.3 < got["eps_lb"] < true_eps
    assert got["auc"] == pytest.approx(sps.norm.cdf(1 / math.sqrt(2)), abs=0.03)
    same = audit.audited_epsilon(rng.normal(0, 1, 1000), rng.normal(0, 1, 1000), DELTA)
    assert same["eps_lb"] < 0.3
    # perfectly separated n vs n runs: bounded by the CP interval, about log(n / 3.7)
    sep = audit.audited_epsilon(np.ones(100), np.zeros(100), DELTA)
    assert sep["eps_lb"] == pytest.approx(math.log(
        (stats.clopper_pearson(100, 100)[0] - DELTA) / stats.clopper_pearson(0, 100)[1]))


def test_roc_auc_and_tpr_at_fpr_match_sklearn():
    rng = np.random.default_rng(3)
    y = rng.random(300) < 0.4
    s = np.round(rng.normal(y * 0.8, 1.0), 1)  # rounded: many ties
    assert stats.roc_auc(y, s) == pytest.approx(sklearn.metrics.roc_auc_score(y, s))
    fpr, tpr, _ = sklearn.metrics.roc_curve(y, s, drop_intermediate=False)
    for target in (0.01, 0.1, 0.5):
        assert stats.tpr_at_fpr(y, s, target) == pytest.approx(tpr[fpr <= target].max())
    assert stats.best_balanced_accuracy(y, s) == pytest.approx(np.max((tpr + 1 - fpr) / 2))
    assert stats.balanced_accuracy(y, s > 0.4) == pytest.approx(
        sklearn.metrics.balanced_accuracy_score(y, s > 0.4))
    assert math.isnan(stats.roc_auc(np.ones(3), [1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="same length"):
        stats.roc_auc([1, 0], [0.5])


def test_set_f1_and_its_chance_level():
    assert stats.set_f1({1, 2}, {2, 3}) == pytest.approx(0.5)
    assert stats.set_f1(set(), set()) == 1.0
    rng = np.random.default_rng(0)
    draws = [stats.set_f1({0, 1, 2}, rng.choice(10, 4, replace=False)) for _ in range(20000)]
    assert np.mean(draws) == pytest.approx(stats.chance_set_f1(10, 3, 4), abs=0.005)


def test_clopper_pearson_matches_scipy():
    for k, n in ((0, 20), (7, 20), (20, 20)):
        ci = sps.binomtest(k, n).proportion_ci(0.95, method="exact")
        np.testing.assert_allclose(stats.clopper_pearson(k, n), (ci.low, ci.high), atol=1e-9)


# ---- intervals over seeds --------------------------------------------------------------

def test_interval_of_a_bounded_mean_stays_in_its_range():
    # two F1 values: the Student-t interval (12.7 x the standard error) is [-5.2, 6.2]
    half = sps.t.ppf(0.975, 1) * np.std([0.05, 0.95], ddof=1) / math.sqrt(2)
    assert 0.5 - half < -5 and 0.5 + half > 6
    iv = stats.mean_interval([0.05, 0.95], stats.metric_range("f1"))
    assert (iv.mean, iv.lo, iv.hi, iv.n, iv.method) == (0.5, 0.0, 1.0, 2, "student-t clipped")
    psnr = stats.mean_interval([3.0, 40.0, 9.0], stats.metric_range("psnr_db"))
    assert psnr.lo == 0.0 and psnr.hi < stats.PSNR_CAP_DB
    # inside the range: the plain Student-t interval (t(2) = 4.3027, sd 0.1, n = 3)
    iv = stats.mean_interval([0.4, 0.5, 0.6], stats.metric_range("auc"))
    np.testing.assert_allclose([iv.lo, iv.hi], [0.5 - 0.248414, 0.5 + 0.248414], atol=1e-6)
    assert iv.method == "student-t"


def test_a_single_value_has_no_interval():
    iv = stats.mean_interval([0.7, float("nan")], stats.metric_range("f1"))
    assert (iv.mean, iv.n, iv.method) == (0.7, 1, "n=1")
    assert math.isnan(iv.lo) and math.isnan(iv.hi)
    none = stats.mean_interval([float("nan")])
    assert none.n == 0 and math.isnan(none.mean) and none.method == "n=0"


def test_rates_get_clopper_pearson_intervals_not_a_zero_width_one():
    # five successes of five: the exact interval is [0.025^(1/5), 1] = [0.478, 1]
    iv = stats.mean_interval([1.0] * 5, stats.metric_range("victim_pilot"))
    assert iv.method == "clopper-pearson" and iv.hi == 1.0
    assert iv.lo == pytest.approx(0.025 ** (1 / 5)) == pytest.approx(0.4782, abs=1e-4)
    ci = sps.binomtest(1, 5).proportion_ci(0.95, method="exact")
    np.testing.assert_allclose(stats.mean_interval([0, 0, 1, 0, 0], (0, 1))[1:3],
                               (ci.low, ci.high), atol=1e-9)
    # a PSNR at its cap in every seed: the same bound, on [0, cap] dB
    cap = stats.mean_interval([stats.PSNR_CAP_DB] * 4, stats.metric_range("psnr_db"))
    assert cap.lo == pytest.approx(stats.PSNR_CAP_DB * 0.025 ** (1 / 4))
    # equal values inside the range have no spread to build an interval from: flagged
    same = stats.mean_interval([0.25] * 4, stats.metric_range("recovered"))
    assert (same.lo, same.hi, same.method) == (0.25, 0.25, "all equal")


def test_interval_rejects_a_value_outside_the_metric_range():
    with pytest.raises(ValueError, match=r"value 1\.5 lies outside the metric's range"):
        stats.mean_interval([0.5, 1.5], stats.metric_range("auc"))
    with pytest.raises(ValueError, match="low < high"):
        stats.mean_interval([0.5], (1.0, 0.0))
    # a metric without a declared range is unbounded: nothing is clipped
    iv = stats.mean_interval([-3.0, 5.0], stats.metric_range("unknown"))
    assert iv.lo < -3 and iv.hi > 5 and iv.method == "student-t"


def test_every_reported_metric_has_a_declared_range():
    import json
    from pathlib import Path

    results = Path(__file__).resolve().parents[1] / "sims" / "privacy" / "results"
    metrics = {r["metric"] for f in results.glob("*/result.json")
               for r in json.loads(f.read_text())["rows"]}
    assert len(metrics) > 30
    assert metrics <= set(stats.METRIC_RANGES), sorted(metrics - set(stats.METRIC_RANGES))


def test_audited_epsilon_at_a_fixed_threshold_is_the_hand_computed_cp_bound():
    # 100 runs each side, perfectly separated at threshold 0.5: TPR_lo = 0.025^(1/100) and
    # FPR_hi = 1 - 0.025^(1/100) (the exact one-sided 97.5 % Clopper-Pearson bounds)
    lo = 0.025 ** (1 / 100)
    want = math.log((lo - DELTA) / (1 - lo))
    assert want == pytest.approx(3.28134, abs=1e-5)
    got = audit.audited_epsilon(np.ones(100), np.zeros(100), DELTA, threshold=0.5)
    assert got["eps_lb"] == pytest.approx(want, rel=1e-9)
    assert (got["tpr"], got["fpr"]) == (1.0, 0.0)
    # 60 of 100 above the threshold with the canary, 20 of 100 without
    a = np.r_[np.ones(60), np.zeros(40)]
    b = np.r_[np.ones(20), np.zeros(80)]
    tpr_lo = sps.beta.ppf(0.025, 60, 41)
    fpr_hi = sps.beta.ppf(0.975, 21, 80)
    got = audit.audited_epsilon(a, b, DELTA, threshold=0.5)
    assert got["eps_lb"] == pytest.approx(math.log((tpr_lo - DELTA) / fpr_hi), rel=1e-9)


def test_audit_split_chooses_the_threshold_on_other_runs():
    rng = np.random.default_rng(9)
    a, b = rng.normal(2.0, 1, 5000), rng.normal(0, 1, 5000)
    got = audit.audit_split(a, b, DELTA)
    assert got["n_fit"] == 1000 and got["n_eval"] == 4000
    held = audit.audited_epsilon(a[1000:], b[1000:], DELTA, threshold=got["threshold"])
    assert got["eps_lb"] == pytest.approx(held["eps_lb"])
    assert got["eps_lb"] <= audit.audited_epsilon(a[1000:], b[1000:], DELTA)["eps_lb"]


# ---- example-level DP-SGD --------------------------------------------------------------

RECIPES = [(117, 8, 1), (183, 8, 1), (312, 8, 1)]


def test_dpsgd_is_calibrated_to_its_epsilon_for_the_worst_worker():
    d = defences.dpsgd(8.0, 5, DELTA, RECIPES)
    assert d.epsilon(5, DELTA, RECIPES) == pytest.approx(8.0, rel=1e-3)
    # the smallest local set samples at the highest rate: it spends the most
    small = d.epsilon(5, DELTA, RECIPES[:1])
    assert small == pytest.approx(d.epsilon(5, DELTA, RECIPES), rel=1e-9)
    assert d.epsilon(5, DELTA, RECIPES[2:]) < small
    assert defences.dpsgd(1.0, 5, DELTA, RECIPES).sigma > d.sigma
    assert defences.dpsgd(math.inf, 5, DELTA, RECIPES).sigma == 0.0
    with pytest.raises(ValueError, match="eps"):
        defences.dpsgd(-1.0, 5, DELTA, RECIPES)


def test_dpsgd_without_noise_and_with_full_batches_is_plain_gradient_descent():
    from fedf_jax import worker
    from fedf_jax.privacy import views
    from fedf_jax.privacy.common import Options

    fed = views.make_federation(Options(workers=3, hidden=8), 0, batch_size=10_000)
    fed = fed._replace(x_parts=[x[:20] for x in fed.x_parts],
                       y_parts=[y[:20] for y in fed.y_parts])
    d = defences.DPSGD("dpsgdinf", math.inf, clip=1e9, sigma=0.0, cost_sigma=0.0)
    q, costs = d.train(fed, 0, 1, fed.p0)

    def loss(p, x, y):
        return worker.cross_entropy(fed.model.apply(p, x), y).mean()

    for k in range(3):  # rate 1: every example every step, one step per local epoch
        x, y = jnp.asarray(fed.x_parts[k]), jnp.asarray(fed.y_parts[k])
        want = fed.p0 - fed.specs[k].lr * np.asarray(jax.grad(loss)(jnp.asarray(fed.p0), x, y))
        np.testing.assert_allclose(q[k], want, atol=1e-6)
        np.testing.assert_allclose(costs[k], float(loss(jnp.asarray(q[k]), x, y)), rtol=1e-5)


def test_from_arm_builds_dpsgd_for_a_federation_and_asks_for_one():
    from fedf_jax.privacy import views
    from fedf_jax.privacy.common import Options

    fed = views.make_federation(Options(workers=3, hidden=8), 0)
    d = defences.from_arm("fedf+1+dpsgd8", 4, DELTA, fed=fed, example_clip=2.0)
    assert isinstance(d, defences.DPSGD) and d.clip == 2.0 and d.sigma > 0
    assert views.parse_arm("fedavg+dpsgd8") == ("fedavg", "+dpsgd8")
    with pytest.raises(ValueError, match="pass `fed`"):
        defences.from_arm("fedf+1+dpsgd8", 4, DELTA)


# ---- tests of a regime's family of cells -----------------------------------------------

def test_p_above_is_the_one_sided_t_test_and_the_binomial_bound_at_the_ends():
    v = [0.12, 0.3, 0.05, 0.22, 0.18]
    got = stats.p_above(v, 0.0, (-1.0, 1.0))
    assert got.method == "student-t"
    assert got.p == pytest.approx(sps.ttest_1samp(v, 0.0, alternative="greater").pvalue)
    # 4 of 5 seeds at the top end of [0, 1]: P(Binom(5, 0.1) >= 4) against mean <= 0.1
    got = stats.p_above([1, 1, 0, 1, 1], 0.1, (0.0, 1.0))
    assert got.method.startswith("binomial")
    assert got.p == pytest.approx(5 * 0.1 ** 4 * 0.9 + 0.1 ** 5)
    assert stats.p_above([0.4, 0.4, 0.4], 0.0, (0.0, 1.0)).method == "no spread"
    assert stats.p_above([0.9], 0.0).p == 1.0


def test_holm_adjusts_step_down_and_keeps_the_order():
    p = [0.01, 0.04, 0.03, 0.20]
    # sorted: 0.01*4, 0.03*3, 0.04*2, 0.20*1, then the running maximum
    np.testing.assert_allclose(stats.holm(p), [0.04, 0.09, 0.09, 0.20])
    np.testing.assert_allclose(stats.holm([0.5]), [0.5])
    assert stats.holm([]).size == 0
    with pytest.raises(ValueError, match="pvalues"):
        stats.holm([0.1, 1.5])


def test_median_interval_uses_order_statistics_with_their_coverage():
    v = np.arange(1.0, 11.0)  # n = 10: [x_(2), x_(9)] covers 1 - 2 P(B(10, .5) <= 1) = 0.979
    iv = stats.median_interval(v)
    assert (iv.mean, iv.lo, iv.hi, iv.method) == (5.5, 2.0, 9.0, "median order statistics")
    assert 1 - 2 * sps.binom.cdf(2, 10, 0.5) < 0.95  # [x_(3), x_(8)] would not
    few = stats.median_interval([3.0, 100.0, 100.0, 7.0, 100.0], (0, 100))
    assert (few.mean, few.lo, few.hi, few.method) == (100.0, 3.0, 100.0, "median range")
    same = stats.median_interval([100.0] * 5, (0, 100))
    assert (same.mean, same.method) == (100.0, "all equal")


def test_judge_refutes_only_past_holm_and_the_margin():
    from fedf_jax.privacy.common import judge

    strong = ("a", [0.50, 0.55, 0.60, 0.52, 0.58])
    weak = ("b", [0.01, 0.03, 0.02, 0.04, 0.02])  # significant, but below the margin
    r, tests = judge("R", "given", [strong, weak], 0.2, (-1.0, 1.0))
    assert r.verdict == "refuted" and [t.refutes for t in tests] == [True, False]
    small, large = sorted(t.p for t in tests)  # Holm with two cells, by hand
    assert sorted(t.p_holm for t in tests) == pytest.approx([2 * small, max(large, 2 * small)])
    r, _ = judge("R", "given", [weak, ("c", [-0.05, 0.02, -0.01, 0.01, 0.0])], 0.2, (-1.0, 1.0))
    assert r.verdict == "supported"
    r, _ = judge("R", "given", [("d", [0.0] * 5)], 0.1, (0.0, 1.0))
    assert r.verdict == "inconclusive" and r.reason.startswith("No ")
    assert "distribution-free" in r.reason and "no spread" not in r.reason
    # identical values off the range's ends have no interval, and the reason says so
    r, _ = judge("R", "given", [("e", [0.0] * 5)], 0.2, (-1.0, 1.0))
    assert r.verdict == "inconclusive" and "no spread" in r.reason
    r, _ = judge("R", "given", [], 0.1, (0.0, 1.0))
    assert r.verdict == "inconclusive"
