"""Recorded protocol rounds: the simulator's epochs, Eq. (1)/(3)/(4)/(5) in numpy, arms."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedf_jax import keys, layout, master
from fedf_jax.algorithms import fedf
from fedf_jax.privacy import views
from fedf_jax.privacy.common import Options

OPTS = Options(workers=3, hidden=8, partition="iid")
SEED = 3
ROUNDS = 3


@pytest.fixture(scope="module")
def fed():
    return views.make_federation(OPTS, SEED, batch_size=16)


@pytest.fixture(scope="module")
def runs(fed):
    return {arm: views.run_arm(fed, arm, ROUNDS, SEED)
            for arm in ("fedf+1", "fedf-1", "fedavg", "signfedavg")}


def _np_ternary(q, p_prev, p_prev2, alpha, beta, t):
    """Eq. (4) at t = 1, Eq. (5) after, written out in numpy."""
    d = q.astype(np.float64) - p_prev
    if t == 1:
        return np.where(d > alpha, 1, np.where(d < -alpha, -1, 0))
    step = p_prev.astype(np.float64) - p_prev2
    return np.where(np.abs(d) < beta * np.abs(step), 0, np.sign(d) * np.sign(step))


def test_fedf_rounds_equal_the_vmap_simulator_epochs(fed, runs):
    x, y = np.concatenate(fed.x_parts), np.concatenate(fed.y_parts)
    b = np.cumsum([0] + [len(p) for p in fed.y_parts])
    cfg = master.MasterConfig(alpha0=fed.alpha0, beta=fed.beta)
    w = layout.build(fed.specs, x, y, [np.arange(b[i], b[i + 1]) for i in range(len(b) - 1)],
                     betas=cfg.betas(3), x_test=fed.x_test, y_test=fed.y_test,
                     train_key=keys.stream(SEED, keys.TRAIN))
    state = fedf.init(w.layout, w.data, jnp.asarray(fed.p0))
    step = jax.jit(functools.partial(fedf.epoch, fed.model, w.layout, cfg, layout.HERE.spread),
                   donate_argnums=0)
    for view in runs["fedf+1"]:
        state, out = step(state, w.data)
        assert int(out["pilot"]) == view.pilot
        np.testing.assert_allclose(np.asarray(out["costs"]), view.costs, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(state.master.p_prev), view.p_new, atol=1e-6)


@pytest.mark.parametrize("arm", ["fedf+1", "fedf-1"])
def test_fedf_rounds_follow_eq1_eq3_eq4_eq5_in_numpy(fed, runs, arm):
    d = 1 if arm == "fedf+1" else -1
    sizes = fed.sizes.astype(np.float64)
    prev_costs = None
    for v in runs[arm]:
        t = v.epoch
        g = sizes / v.costs if t == 1 else sizes * (prev_costs - v.costs)
        assert v.pilot == int(np.argmax(g))
        for k, spec in enumerate(fed.specs):
            np.testing.assert_array_equal(
                v.ternary[k], _np_ternary(v.q_sent[k], v.p_prev, v.p_prev2, spec.lr,
                                          fed.beta, t))
        w = sizes / sizes.sum() * (fed.alpha0 if t == 1 else fed.beta)
        w[v.pilot] = 0.0
        scale = 1.0 if t == 1 else v.p_prev.astype(np.float64) - v.p_prev2
        expect = v.q_sent[v.pilot] + d * (w @ v.ternary) * scale
        np.testing.assert_allclose(v.p_new, expect, atol=1e-6)
        prev_costs = v.costs.astype(np.float64)
    np.testing.assert_array_equal(runs[arm][1].p_prev2, fed.p0)  # P^{t-2} at t = 2 is P^0
    np.testing.assert_array_equal(runs[arm][1].p_prev, runs[arm][0].p_new)
    np.testing.assert_array_equal(runs[arm][2].p_prev2, runs[arm][0].p_new)
    np.testing.assert_array_equal(runs[arm][0].p_prev, fed.p0)


def test_the_two_signs_of_eq3_give_different_models(runs):
    assert not np.allclose(runs["fedf+1"][-1].p_new, runs["fedf-1"][-1].p_new)


def test_fedavg_is_the_size_weighted_mean_of_the_local_models(fed, runs):
    p = fed.sizes / fed.sizes.sum()
    for v in runs["fedavg"]:
        assert v.ternary is None and v.pilot == -1
        np.testing.assert_array_equal(v.q_sent, v.q_true)
        np.testing.assert_allclose(v.p_new, p @ v.q_true.astype(np.float64), atol=1e-6)


def test_signfedavg_steps_by_the_weighted_mean_of_update_signs(fed, runs):
    p = fed.sizes / fed.sizes.sum()
    for v in runs["signfedavg"]:
        s = np.where(v.q_true - v.p_prev >= 0, 1, -1)
        np.testing.assert_array_equal(v.ternary, s)
        np.testing.assert_allclose(v.p_new, v.p_prev + fed.alpha0 * (p @ s), atol=1e-6)


def test_local_training_is_the_same_whatever_the_arm_at_epoch_one(runs):
    q = runs["fedf+1"][0].q_true
    for arm in ("fedavg", "signfedavg", "fedf-1"):
        np.testing.assert_array_equal(runs[arm][0].q_true, q)


@dataclasses.dataclass(frozen=True)
class _Shift:
    """A test defence: a known shift of every model and cost, another of the pilot."""

    name: str = "shift"

    def worker(self, key, q, p_prev, cost):
        del key, p_prev
        return q + 0.5, cost * 2.0

    def pilot(self, key, q_pilot):
        del key
        return q_pilot - 3.0


def test_a_defence_changes_what_is_sent_and_everything_derives_from_it(fed):
    (v,) = views.run_arm(fed, "fedf+1", 1, SEED, defence=_Shift())
    k = v.pilot
    others = [j for j in range(3) if j != k]
    np.testing.assert_allclose(v.q_sent[others], v.q_true[others] + 0.5, atol=1e-6)
    np.testing.assert_allclose(v.q_sent[k], v.q_true[k] + 0.5 - 3.0, atol=1e-6)
    for j in others:  # +0.5 > alpha_k everywhere: every trit is +1
        assert (v.ternary[j] == 1).all()
    (honest,) = views.run_arm(fed, "fedf+1", 1, SEED)
    np.testing.assert_allclose(v.costs, 2.0 * honest.costs, rtol=1e-6)
    w = fed.sizes / fed.sizes.sum() * fed.alpha0
    w[k] = 0.0
    np.testing.assert_allclose(v.p_new, v.q_sent[k] + w @ v.ternary, atol=1e-6)


def test_a_lying_report_steers_the_pilot_and_the_weights(fed):
    def lie(t, p_prev, q, costs, sizes):
        costs[1:] = 1e9  # every other worker claims a useless model: worker 0 is pilot
        sizes[2] = 10 ** 6
        q[1:] = p_prev  # and sends no update (all-zero ternaries)
        return q, costs, sizes

    (v,) = views.run_arm(fed, "fedf+1", 1, SEED, report=lie)
    assert v.pilot == 0 and v.sizes[2] == 10 ** 6
    assert not v.ternary[1:].any()
    np.testing.assert_array_equal(v.p_new, v.q_true[0])  # the paper's N-1 break
    np.testing.assert_array_equal(v.q_sent[1], fed.p0)


def test_split_keeps_auxiliary_data_and_workers_disjoint():
    labels = np.arange(400) % 10
    for kw in ({}, {"victim_size": 4}, {"victim_classes": [1, 7]},
               {"victim_classes": [3], "victim_size": 5}, {"forced_victim": True}):
        aux, parts = views.split_indices(labels, 4, 0, **kw)
        everything = np.concatenate([aux, *parts])
        assert len(np.unique(everything)) == len(everything), kw
        assert len(aux) == 100 and len(parts) == 4
    _, parts = views.split_indices(labels, 4, 0, victim_size=4)
    assert len(parts[0]) == 4
    aux, parts = views.split_indices(labels, 4, 0, victim_classes=[1, 7])
    in_pool = np.isin(labels, [1, 7]).sum() - np.isin(labels[aux], [1, 7]).sum()
    assert set(labels[parts[0]]) == {1, 7} and len(parts[0]) == min(in_pool, 300 // 4)
    _, parts = views.split_indices(labels, 4, 0, victim_classes=[3], victim_size=5)
    assert len(parts[0]) == 5 and set(labels[parts[0]]) == {3}


def test_make_federation_plants_and_forces_the_victims_data(fed):
    assert fed.x_parts[0].shape[1:] == (8, 8, 1) and len(fed.x_aux) == 359
    assert fed.p0.shape == (fed.model.num_params,)
    g = views.make_federation(OPTS, 1, victim_classes=[2, 5], victim_size=12)
    assert len(g.y_parts[0]) == 12 and set(g.y_parts[0]) <= {2, 5}
    x, y = fed.x_test[:3], fed.y_test[:3]
    h = views.make_federation(OPTS, 1, victim_data=(x, y))
    np.testing.assert_array_equal(h.x_parts[0], x)
    np.testing.assert_array_equal(h.y_parts[0], y)


@pytest.mark.parametrize("arm", ["fedf", "fedf+2", "fedavg+dpx", "sign", "fedf+1+noise"])
def test_bad_arm_names_are_rejected_with_the_fix(arm):
    with pytest.raises(ValueError, match="must be one of"):
        views.parse_arm(arm)


def test_arm_parsing_splits_the_defence_suffix():
    assert views.parse_arm("fedf+1+dp8") == ("fedf+1", "+dp8")
    assert views.parse_arm("fedf-1+pilotnoise0.1") == ("fedf-1", "+pilotnoise0.1")
    assert views.parse_arm("signfedavg") == ("signfedavg", "")
    assert views.parse_arm("fedavg+dpinf") == ("fedavg", "+dpinf")


def test_bad_federation_arguments_are_named():
    with pytest.raises(ValueError, match="workers"):
        views.make_federation(dataclasses.replace(OPTS, workers=1), 0)
    with pytest.raises(ValueError, match="victim_classes"):
        views.make_federation(OPTS, 0, victim_classes=[42])
    with pytest.raises(ValueError, match="rounds"):
        views.run_arm(views.make_federation(OPTS, 0), "fedavg", 0, 0)


def test_recipe_cells_sweep_one_knob_at_a_time():
    opts = Options()  # n_k (1, 4, 16, all), E (1, 5), B (1, 8, 32)
    cells = views.recipe_cells(opts, opts.n_local, (1, 16))
    assert cells == [(1, 1, 8), (4, 1, 8), (16, 1, 8), (0, 1, 8),
                     (1, 5, 8),  # n_k = 1: every batch size is one full batch, B not swept
                     (16, 5, 8), (16, 1, 1), (16, 1, 32)]
    quick = dataclasses.replace(opts, local_epochs=(1,), batch_sizes=(8,))
    assert views.recipe_cells(quick, (1, 4), (1, 4)) == [(1, 1, 8), (4, 1, 8)]
    # n_k = 4: B = 8 and B = 32 are both one batch of 4; B = 1 differs; "all" sweeps all
    other = dataclasses.replace(opts, batch_sizes=(32, 1, 8))
    assert views.recipe_cells(other, (4, 0), (4, 0)) == [
        (4, 1, 8), (0, 1, 8), (4, 5, 8), (4, 1, 1), (0, 5, 8), (0, 1, 32), (0, 1, 1)]
    assert views.recipe_label(0, 5, 32) == "n_k=all E=5 B=32"
