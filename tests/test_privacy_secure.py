"""E10 and E11: the secure-sum master's view is the sum that secure aggregation releases;
what a malicious master and colluders get from it; the hierarchy's recorder is the
simulator's two-level FEDF."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedf_jax import config, keys, layout
from fedf_jax.algorithms import fedf, hierarchy
from fedf_jax.privacy import e10_secure_sum, e11_hierarchy, groups, views
from fedf_jax.privacy.common import Options

OPTS = Options(workers=5, hidden=8, seeds=1, rounds=2, arms=("fedf+1",))


@pytest.fixture(scope="module")
def rounds():
    fed = views.make_federation(OPTS, 4)
    return fed, views.run_arm(fed, "fedf+1", 3, 4)


def test_secure_aggregation_releases_exactly_the_simulated_sum(rounds):
    fed, rv = rounds
    for v in rv[:2]:
        z = e10_secure_sum.secure_sum(v)
        keep = np.arange(5) != v.pilot
        want = (fed.sizes[keep, None] * v.ternary[keep].astype(np.int64)).sum(axis=0)
        np.testing.assert_array_equal(z, want)
        np.testing.assert_array_equal(e10_secure_sum.secagg_sum(v, 4), z)
        assert np.abs(z).max() > 0


def test_a_worker_with_a_non_finite_cost_is_not_in_the_sum(rounds):
    _, rv = rounds
    v = rv[1]
    k = next(k for k in range(5) if k != v.pilot)
    costs = v.costs.copy()
    costs[k] = np.nan
    w = v._replace(costs=costs)
    diff = e10_secure_sum.secure_sum(v) - e10_secure_sum.secure_sum(w)
    np.testing.assert_array_equal(diff, v.sizes[k] * v.ternary[k].astype(np.int64))
    np.testing.assert_array_equal(e10_secure_sum.secagg_sum(w, 1), e10_secure_sum.secure_sum(w))


def test_model_inconsistency_zeroes_every_other_ternary_and_isolates_the_victim(rounds):
    fed, rv = rounds
    v = next(v for v in rv if v.epoch >= 2 and v.pilot != 0)
    bad = e10_secure_sum.inconsistent_ternaries(v, fed, 0)
    assert not np.delete(bad, 0, axis=0).any()
    np.testing.assert_array_equal(bad[0], v.ternary[0])
    z = e10_secure_sum.secure_sum(v, bad)
    np.testing.assert_array_equal(z, v.sizes[0] * v.ternary[0].astype(np.int64))


def test_the_master_and_colluders_decode_two_unequal_honest_workers_exactly():
    tv = np.repeat([-1, 0, 1], 3).astype(np.int8)
    th = np.tile([-1, 0, 1], 3).astype(np.int8)
    z2 = 183 * tv.astype(np.int64) + 117 * th.astype(np.int64)
    np.testing.assert_array_equal(e10_secure_sum.decode_two_known(z2, 183, 117), tv)
    # equal sizes: +-S is ambiguous, the decoder says 0 for the victim there
    got = e10_secure_sum.decode_two_known(150 * (tv.astype(np.int64) + th), 150, 150)
    one_moved = (tv == 0) ^ (th == 0)
    assert not got[one_moved].any()


def test_the_hierarchy_recorder_is_the_simulators_two_level_fedf():
    fed = views.make_federation(dataclasses.replace(OPTS, workers=6,
                                                    partition="label-dirichlet"), 3)
    members = [[0, 1, 2], [3, 4, 5]]
    kappa = 2
    rec = groups.run_groups(fed, members, kappa, 3, 3)
    cfg = config.make(workers=6, groups=2, group_epochs=kappa, worker_specs=fed.specs)
    x, y = np.concatenate(fed.x_parts), np.concatenate(fed.y_parts)
    b = np.cumsum([0] + [len(p) for p in fed.y_parts])
    parts = [np.arange(b[i], b[i + 1]) for i in range(6)]
    g = layout.build_groups(fed.specs, x, y, parts, members,
                            betas=np.full(6, fed.beta, np.float32), x_test=fed.x_test,
                            y_test=fed.y_test, train_key=keys.stream(3, keys.TRAIN))
    level = fedf.level(cfg, fed.model, g.layout, np.full(2, fed.beta, np.float32))
    init = jax.vmap(functools.partial(level.group_init, g.layout),
                    in_axes=(layout.GROUP_AXES, None))
    state = hierarchy.State(init(g.data, jnp.asarray(fed.p0)),
                            level.top_init(jnp.asarray(fed.p0), 2))
    step = jax.jit(functools.partial(hierarchy.outer, level, kappa, False))
    for r in rec:
        state, out = step(state, g.data)
        assert int(out["pilot"]) == r.top.pilot
        assert [int(p) for p in out["group_pilots"]] == [gv[-1].pilot for gv in r.groups]
        np.testing.assert_array_equal(np.asarray(state.top.p_prev), r.top.p_new)
        assert len(r.groups[0]) == kappa and r.top.q_sent.shape[0] == 2
    with pytest.raises(ValueError, match="`members`"):
        groups.run_groups(fed, [[0, 1], [3, 4, 5]], 1, 1, 3)


def test_e11_sees_the_shields_views_and_judges_four_regimes():
    r = e11_hierarchy.run(dataclasses.replace(OPTS, quick=True, seeds=2), seed0=1)
    assert [g.name for g in r.regimes] == ["group master, no shield",
                                           "group master, secure aggregation",
                                           "top master, no shield", "top master, Paillier"]
    by = {(x.arm, x.setting, x.metric): x for x in r.rows}
    for st in ("kappa=1 t=1", "kappa=1 t>=2"):
        exposed = by[("top master", st, "exposed")].mean
        paillier = by[("top master + paillier", st, "f1_excess_pilot_rounds")]
        if exposed == 0:  # the top saw nothing of group 0: no excess at all
            assert paillier.mean == 0.0
