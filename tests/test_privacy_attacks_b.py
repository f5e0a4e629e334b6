"""Attacks E2-E5 and the E9 audit: each succeeds where it must and is at chance where it
must (random messages)."""

import math

import jax
import numpy as np
import pytest
from scipy import stats as sps

from fedf_jax.privacy import (
    defences,
    e2_class_leakage,
    e3_reconstruction,
    e4_membership,
    e5_property,
    e9_defences,
    metrics,
    stats,
    views,
)
from fedf_jax.privacy.common import Options

OPTS = Options(workers=3, hidden=16, rounds=2)
PLANTED = [1, 4, 7]


@pytest.fixture(scope="module")
def planted():
    fed = views.make_federation(OPTS, 0, victim_classes=PLANTED)
    return fed, e2_class_leakage.fed_layout(fed, OPTS)


def test_modules_follow_the_experiment_contract():
    for mod in (e2_class_leakage, e3_reconstruction, e4_membership, e5_property, e9_defences):
        for name in ("TITLE", "CLAIM", "CRITERION"):
            assert isinstance(getattr(mod, name), str) and len(getattr(mod, name)) > 20
        assert callable(mod.run)


def test_param_layout_matches_the_flat_model(planted):
    fed, layout = planted
    assert layout["hidden.0.kernel"] == (0 + 16, (64, 16))  # bias (16) comes first
    assert layout["out.kernel"][1] == (16, 10)
    off, shape = layout["out.kernel"]
    assert off + math.prod(shape) == fed.model.num_trainable
    # biases start at zero, kernels do not (flax's Linear initialisers)
    assert not e2_class_leakage.leaf(fed.p0, layout, "out.bias").any()
    assert e2_class_leakage.leaf(fed.p0, layout, "out.kernel").std() > 0


def test_e2_recovers_the_planted_classes_from_fedf_messages(planted):
    fed, layout = planted
    held = set(np.unique(fed.y_parts[0]).tolist())
    assert held == set(PLANTED)
    labels = np.isin(np.arange(10), PLANTED)
    for arm in ("fedf+1", "fedf-1"):
        seen = views.run_arm(fed, arm, 3, 0)
        read_ternary = 0
        for prev, v in zip([None] + seen[:-1], seen, strict=True):
            if prev is not None and prev.pilot == 0:
                continue  # right after it was the pilot, the worker's T_k is almost all zero
            read_ternary += v.pilot != 0
            scores = e2_class_leakage.class_scores(e2_class_leakage.observed_update(v, 0), layout)
            assert stats.set_f1(held, e2_class_leakage.recovered_set(scores)) >= 0.85, (arm,
                                                                                       v.epoch)
            assert stats.roc_auc(labels, scores) >= 0.9
        assert read_ternary >= 1  # at least one round scored from T_k itself


def test_e2_random_ternaries_are_at_chance(planted):
    fed, layout = planted
    rng = np.random.default_rng(0)
    labels = np.isin(np.arange(10), PLANTED)
    f1, auc = [], []
    for _ in range(300):
        s = e2_class_leakage.class_scores(rng.integers(-1, 2, fed.p0.size).astype(np.float32),
                                          layout)
        f1.append(stats.set_f1(PLANTED, e2_class_leakage.recovered_set(s)))
        auc.append(stats.roc_auc(labels, s))
    # a random subset of each size: E[F1] = 2 * 3 * m / 10 / (3 + m), m ~ Binomial(10, 1/2)
    m = np.arange(1, 11)
    pm = sps.binom.pmf(m, 10, 0.5) / sps.binom.pmf(m, 10, 0.5).sum()
    chance = float(np.sum(pm * [stats.chance_set_f1(10, 3, int(k)) for k in m]))
    assert np.mean(f1) == pytest.approx(chance, abs=0.04)
    assert np.mean(auc) == pytest.approx(0.5, abs=0.04)


def test_e3_level_set_is_exact_on_a_full_single_sample_update(planted):
    fed, layout = planted
    rng = np.random.default_rng(1)
    x = fed.x_aux[3].ravel()
    c = rng.normal(size=16)
    u = np.zeros(fed.p0.size, np.float32)
    off, shape = layout["hidden.0.kernel"]
    u[off:off + 64 * 16] = np.outer(x, c).ravel()  # one sample's first-layer update
    blank = e3_reconstruction.blank_pixels(fed.x_aux)
    img = e3_reconstruction.level_set_image(u, layout, blank, (8, 8, 1))
    np.testing.assert_allclose(img.ravel(), x / x.max(), atol=1e-6)
    # the ternary of it (Eq. 4 with threshold 0.3) keeps the level sets: monotone in x
    t = np.where(np.abs(u) > 0.3, np.sign(u), 0).astype(np.float32)
    img_t = e3_reconstruction.level_set_image(t, layout, blank, (8, 8, 1))
    assert sps.spearmanr(img_t.ravel(), x).statistic > 0.85
    r = rng.integers(-1, 2, u.size).astype(np.float32)
    img_r = e3_reconstruction.level_set_image(r, layout, blank, (8, 8, 1))
    assert abs(sps.spearmanr(img_r.ravel(), x).statistic) < 0.3


def test_e3_reconstructs_a_single_sample_worker_from_its_t2_ternary():
    fed = views.make_federation(OPTS, 0, victim_size=1)
    layout = e2_class_leakage.fed_layout(fed, OPTS)
    blank = e3_reconstruction.blank_pixels(fed.x_aux)
    v = views.run_arm(fed, "fedf+1", 2, 0)[1]
    assert v.pilot != 0  # the attack reads T_k, not a model
    img = e3_reconstruction.level_set_image(e2_class_leakage.observed_update(v, 0), layout,
                                            blank, (8, 8, 1))
    got = metrics.scores(img[None], fed.x_parts[0], fed.y_parts[0], fed.x_aux, fed.y_aux)
    base = metrics.scores(fed.x_aux.mean(0)[None], fed.x_parts[0], fed.y_parts[0], fed.x_aux,
                          fed.y_aux)
    assert got["psnr_db"] > base["psnr_db"] + 3


def test_e4_agreement_separates_members_and_random_messages_do_not():
    fed0 = views.make_federation(OPTS, 0)
    rng = np.random.default_rng(2)
    labels, scores = [], []
    for rep in range(6):
        pick = rng.choice(len(fed0.y_test), 8, replace=False)
        cx, cy = fed0.x_test[pick], fed0.y_test[pick]
        member = np.arange(8) < 4
        fed = views.make_federation(OPTS, 0, victim_data=(cx[member], cy[member]))
        seen = views.run_arm(fed, "fedf+1", 3, 0)
        s = e4_membership.attack_scores(fed, "fedf+1", seen, cx, cy, 4, rep, 0, lira=False)
        labels.append(member)
        scores.append(s["master-agree"])
    # 24 members, 24 non-members: the AUC's null sd is 0.084, so 0.7 is 2.4 sd above chance
    assert stats.roc_auc(np.concatenate(labels), np.concatenate(scores)) >= 0.7
    # random messages: chance level over many candidates
    d = rng.normal(size=(400, 50))
    u = rng.integers(-1, 2, 50).astype(np.float64)
    s = e4_membership.cosines(u, d)
    assert stats.roc_auc(np.arange(400) < 200, s) == pytest.approx(0.5, abs=0.08)


def test_e5_property_is_class_balanced_and_learnable_from_updates():
    fed = views.make_federation(OPTS, 0)
    b = e5_property.bold(fed.x_aux, fed.y_aux)
    for c in range(10):
        assert abs(b[fed.y_aux == c].mean() - 0.5) < 0.06
    v = views.run_arm(fed, "fedavg", 1, 0)[0]
    clf = e5_property.property_classifier(fed, "fedavg", v, 16, 0, 64)
    # fresh shadow workers of each kind, scored by the classifier
    rng = np.random.default_rng(7)
    labels = np.arange(40) % 2 == 0
    picks = [rng.choice(np.flatnonzero(b == lab), 16, replace=False) for lab in labels]
    q, tern = e2_class_leakage.simulate_workers(
        fed.model, v.p_prev, v.p_prev2, 1, [fed.x_aux[p] for p in picks],
        [fed.y_aux[p] for p in picks], e2_class_leakage.shadow_specs(fed, 40, rng), 9, fed.beta)
    feats = e5_property._normalise(e2_class_leakage.observe("fedavg", q, tern, v.p_prev,
                                                            v.p_prev2, 1))
    p = clf.predict_proba(feats)[:, 1]
    assert stats.roc_auc(labels, p) >= 0.75
    assert stats.roc_auc(rng.permutation(labels), p) == pytest.approx(0.5, abs=0.25)


def test_e9_weak_audit_finds_leakage_without_noise_and_stays_below_the_accountant_with_it():
    fed = views.make_federation(OPTS, 0)
    plain = e9_defences.weak_audit(fed, defences.worker_dp(math.inf, 1, 1e-5), 60, 0, 1e-5)
    assert plain["eps_lb"] > 1.0
    dp = defences.worker_dp(1.0, 1, 1e-5)
    got = e9_defences.weak_audit(fed, dp, 60, 0, 1e-5)
    assert got["eps_lb"] <= dp.epsilon(1, 1e-5)


def test_the_tight_audit_of_a_noiseless_release_is_capped_only_by_its_trials():
    fed = views.make_federation(OPTS, 0)
    n, delta = 1000, 1e-5
    key = jax.random.key(3)
    want = math.log((stats.clopper_pearson(n, n)[0] - delta) / stats.clopper_pearson(0, n)[1])
    for d, release in ((defences.worker_dp(math.inf, 1, delta), "model"),
                       (defences.PilotNoise("pn", 0.02), "model"),
                       (defences.PilotNoise("pn", 0.02), "ternary"), (None, "model")):
        got = e9_defences.tight_audit(d, fed.p0, 1.0, n, key, delta, release=release,
                                      alpha=fed.specs[0].lr)
        assert got["eps_lb"] == pytest.approx(want, rel=1e-9), (d, release)


def test_the_tight_audit_never_exceeds_the_accountant_of_a_noised_release():
    fed = views.make_federation(OPTS, 0)
    for eps in (1.0, 8.0):
        d = defences.worker_dp(eps, 1, 1e-5, clip=0.7)
        got = e9_defences.tight_audit(d, fed.p0, 0.7, 20_000, jax.random.key(int(eps)), 1e-5)
        assert 0 <= got["eps_lb"] < d.epsilon(1, 1e-5)


def test_the_planned_threshold_is_where_the_expected_bound_peaks():
    mu, n, delta = 1.6, 100_000, 1e-5
    tau = e9_defences.planned_threshold(mu, n, delta)

    def expected(t):
        tp, fp = round(n * sps.norm.sf(t - mu / 2)), round(n * sps.norm.sf(t + mu / 2))
        return math.log((sps.beta.ppf(0.025, tp, n - tp + 1) - delta)
                        / sps.beta.ppf(0.975, fp + 1, n - fp))

    assert expected(tau) >= max(expected(t) for t in (tau - 0.5, tau + 0.5, 0.0, 3.0))
    assert e9_defences.planned_threshold(math.inf, n, delta) == 0.0


@pytest.mark.slow
def test_the_tight_audit_reaches_half_the_accountant_at_eps_1_and_8_in_one_round():
    fed = views.make_federation(OPTS, 0)
    for eps in (1.0, 8.0):
        d = defences.worker_dp(eps, 1, 1e-5, clip=1.3)
        got = e9_defences.tight_audit(d, fed.p0, 1.3, e9_defences.AUDIT_TRIALS,
                                      jax.random.key(11), 1e-5)
        assert d.epsilon(1, 1e-5) / 2 <= got["eps_lb"] < d.epsilon(1, 1e-5), (eps, got)


def test_clips_come_from_public_data_at_typical_update_norms():
    fed = views.make_federation(OPTS, 0)
    clip, example_clip = e9_defences.public_clips(fed, 0)
    (v,) = views.run_arm(fed, "fedf+1", 1, 0)
    norms = np.linalg.norm(v.q_true - v.p_prev, axis=1)
    assert norms.min() / 3 < clip < norms.max() * 3  # the order of the workers' own updates
    assert example_clip > 0
    # only public data enters the per-example clip: the workers' shares do not change it
    other = fed._replace(x_parts=[x[:5] for x in fed.x_parts],
                         y_parts=[y[:5] for y in fed.y_parts])
    assert e9_defences.public_clips(other, 0)[1] == example_clip


def test_shadow_workers_guess_the_recipe_from_the_prior_not_from_the_victim():
    fed = views.make_federation(OPTS, 0, batch_size=17, local_epochs=3)
    seen = set()
    for i in range(40):
        specs = e2_class_leakage.shadow_specs(fed, 4, np.random.default_rng(i))
        assert len({(s.batch_size, s.local_epochs) for s in specs}) == 1  # one shape a round
        seen |= {(s.batch_size, s.local_epochs) for s in specs}
    assert seen == {(b, e) for b in e2_class_leakage.PRIOR_BATCHES
                    for e in e2_class_leakage.PRIOR_EPOCHS}


def test_the_class_prototype_baseline_is_the_mean_public_image_of_the_read_class(planted):
    fed, layout = planted
    u = np.zeros(fed.p0.size, np.float32)
    off, shape = layout["out.bias"]
    u[off + 4] = 1.0  # an update that raises class 4's output bias only
    proto = e3_reconstruction.class_prototype(u, layout, fed.x_aux, fed.y_aux)
    np.testing.assert_allclose(proto, fed.x_aux[fed.y_aux == 4].mean(0), rtol=1e-6)
