"""protocol.py against plain numpy loops written from the spec (DESIGN.md §1, §4).

Eq. (1) goodness, pilot selection, Eq. (4)/(5) ternaries, Eq. (3) master update, and the
fused ternarize-and-pack / unpack-and-update kernels. Every function runs with and without
`jax.jit`; `epoch` is traced and must not cause a retrace between epochs 1 and 2.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import (
    ref_goodness,
    ref_master_update,
    ref_pack,
    ref_select_pilot,
    ref_ternarize,
)

from fedf_jax import codec, protocol

JIT = pytest.mark.parametrize("jit", [False, True])
SCHEMES = ["2bit", "base3"]


def maybe_jit(fn, jit, static_argnames=()):
    """``fn`` under ``jax.jit``, or ``fn`` run op by op under ``jax.disable_jit()``.

    The protocol functions are jitted themselves, so calling one plain would run its
    compiled program again; disabling jit runs the Python body on concrete arrays.
    """
    if jit:
        return jax.jit(fn, static_argnames=static_argnames)

    def eager(*args, **kwargs):
        with jax.disable_jit():
            return fn(*args, **kwargs)

    return eager


def test_maybe_jit_false_runs_the_python_body_of_a_jitted_function():
    traces = []

    @jax.jit
    def f(x):
        traces.append(isinstance(x, jax.core.Tracer))
        return x + 1

    for _ in range(2):
        assert float(maybe_jit(f, False)(1.0)) == 2.0
    assert traces == [False, False]  # run twice, on concrete values
    traces.clear()
    for _ in range(2):
        assert float(maybe_jit(f, True)(1.0)) == 2.0
    assert traces == [True]  # traced once, then the compiled program



# ---------------------------------------------------------------------------------------
# Data helpers.
# ---------------------------------------------------------------------------------------


def _vectors(m, seed, scale=1.0):
    """q, p_prev, p_prev2 in float32 with steps and moves of the same order."""
    rng = np.random.default_rng(seed)
    p_prev2 = rng.normal(size=m).astype(np.float32)
    p_prev = (p_prev2 + scale * rng.normal(size=m)).astype(np.float32)
    q = (p_prev + scale * rng.normal(size=m)).astype(np.float32)
    return q, p_prev, p_prev2


def _ternaries(n, m, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(-1, 2, size=(n, m)).astype(np.int8)


SIZES5 = np.array([30, 17, 51, 8, 22], np.int32)


# ---------------------------------------------------------------------------------------
# goodness, Eq. (1)
# ---------------------------------------------------------------------------------------


@JIT
@pytest.mark.parametrize("n", [3, 4, 5])
@pytest.mark.parametrize("epoch", [1, 2, 7])
def test_goodness_matches_numpy_loop(jit, n, epoch):
    rng = np.random.default_rng(10 + n)
    costs = rng.uniform(0.1, 3.0, n).astype(np.float32)
    prev = rng.uniform(0.1, 3.0, n).astype(np.float32)
    sizes = SIZES5[:n]
    g = maybe_jit(protocol.goodness, jit)(costs, prev, sizes, epoch)
    assert g.shape == (n,)
    assert g.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(g), ref_goodness(costs, prev, sizes, epoch),
                               rtol=1e-6, atol=0)


def test_goodness_hand_values():
    costs = np.array([2.0, 0.5, 4.0], np.float32)
    prev = np.array([3.0, 0.25, 4.0], np.float32)
    sizes = np.array([10, 3, 8], np.int32)
    np.testing.assert_allclose(np.asarray(protocol.goodness(costs, prev, sizes, 1)),
                               [5.0, 6.0, 2.0])
    # t > 1: S_k (C^{t-1} - C^t): a worker whose cost rose has negative goodness.
    np.testing.assert_allclose(np.asarray(protocol.goodness(costs, prev, sizes, 2)),
                               [10.0, -0.75, 0.0])


@JIT
def test_goodness_ignores_prev_costs_at_epoch_1(jit):
    costs = np.array([1.0, 2.0, 4.0, 0.5], np.float32)
    sizes = SIZES5[:4]
    fn = maybe_jit(protocol.goodness, jit)
    a = fn(costs, np.full(4, np.nan, np.float32), sizes, 1)
    b = fn(costs, np.array([9.0, -3.0, np.inf, 0.0], np.float32), sizes, 1)
    np.testing.assert_array_equal(np.asarray(a), sizes / costs.astype(np.float64))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@JIT
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("which,epoch", [("cost", 1), ("cost", 2), ("prev_cost", 2)])
def test_goodness_of_non_finite_cost_is_non_finite(jit, bad, epoch, which):
    costs = np.array([1.0, 2.0, 0.5, 1.5], np.float32)
    prev = np.array([1.5, 2.5, 1.0, 2.0], np.float32)
    (costs if which == "cost" else prev)[2] = bad
    g = np.asarray(maybe_jit(protocol.goodness, jit)(costs, prev, SIZES5[:4], epoch))
    assert not np.isfinite(g[2]), g
    assert np.all(np.isfinite(np.delete(g, 2)))


# ---------------------------------------------------------------------------------------
# select_pilot
# ---------------------------------------------------------------------------------------

PILOT_CASES = [
    ([1.0, 3.0, 2.0], 1),
    ([1.0, 3.0, 3.0, 2.0], 1),
    ([5.0, 5.0, 5.0], 0),
    ([-5.0, -3.0, -3.0], 1),
    ([0.0, -0.0], 0),
    ([-0.0, 0.0], 0),
    ([np.nan, 1.0, 1.0], 1),
    ([1.0, np.nan, 2.0], 2),
    ([np.inf, 1.0, 2.0], 2),
    ([2.0, np.inf, 1.0, 2.0], 0),
    ([-np.inf, -1e30, np.nan], 1),
    ([np.nan, np.nan, np.nan], -1),
    ([np.inf, -np.inf, np.nan, np.inf], -1),
    ([-np.inf, -np.inf, -np.inf], -1),
    ([7.0], 0),
]


@JIT
@pytest.mark.parametrize("values,expected", PILOT_CASES)
def test_select_pilot_hand_cases(jit, values, expected):
    values = np.array(values, np.float32)
    assert ref_select_pilot(values) == expected  # the reference agrees with the hand value
    got = maybe_jit(protocol.select_pilot, jit)(values)
    assert int(got) == expected


@JIT
def test_pilot_ties_go_to_lowest_index(jit):
    fn = maybe_jit(protocol.select_pilot, jit)
    for k in range(5):
        g = np.zeros(5, np.float32)
        g[k:] = 4.0  # workers k..4 tie at the maximum
        assert int(fn(g)) == k


@JIT
def test_select_pilot_returns_int32_scalar(jit):
    got = maybe_jit(protocol.select_pilot, jit)(np.array([1.0, 2.0, 0.5], np.float32))
    got = jnp.asarray(got)
    assert got.shape == ()
    assert got.dtype == jnp.int32


@JIT
def test_select_pilot_matches_numpy_loop_with_ties_and_non_finite(jit):
    rng = np.random.default_rng(3)
    fn = maybe_jit(protocol.select_pilot, jit)
    specials = np.array([np.nan, np.inf, -np.inf], np.float32)
    for _ in range(200):
        g = rng.integers(-3, 4, size=5).astype(np.float32)  # small integers: many ties
        bad = rng.random(5) < 0.3
        g[bad] = rng.choice(specials, size=int(bad.sum()))
        assert int(fn(g)) == ref_select_pilot(g), g


@JIT
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("epoch", [1, 2])
def test_non_finite_cost_is_never_pilot(jit, bad, epoch):
    # Worker 0 has by far the best finite goodness, worker 1's cost is not finite.
    sizes = np.array([1000, 1000, 10, 10], np.int32)
    costs = np.array([0.5, bad, 1.0, 1.0], np.float32)
    prev = np.array([5.0, 5.0, 1.5, 1.5], np.float32)

    def pick(c, pc, s, e):
        return protocol.select_pilot(protocol.goodness(c, pc, s, e))

    assert int(maybe_jit(pick, jit)(costs, prev, sizes, epoch)) == 0
    costs[0] = bad  # now 0 and 1 are both out; 2 and 3 tie
    assert int(maybe_jit(pick, jit)(costs, prev, sizes, epoch)) == 2
    costs[:] = bad
    assert int(maybe_jit(pick, jit)(costs, prev, sizes, epoch)) == -1


# ---------------------------------------------------------------------------------------
# ternarize, Eq. (4) and (5)
# ---------------------------------------------------------------------------------------


@JIT
@pytest.mark.parametrize("m", [1, 4, 5, 37, 40, 1001])
@pytest.mark.parametrize("epoch", [1, 2, 5])
def test_ternarize_matches_numpy_loop(jit, m, epoch):
    q, p_prev, p_prev2 = _vectors(m, seed=m + 100 * epoch)
    alpha, beta = 0.7, 0.6
    got = maybe_jit(protocol.ternarize, jit)(q, p_prev, p_prev2, alpha, beta, epoch)
    assert got.shape == (m,)
    assert got.dtype == jnp.int8
    want = ref_ternarize(q, p_prev, p_prev2, alpha, beta, epoch)
    np.testing.assert_array_equal(np.asarray(got), want)
    if m >= 37:  # the data exercise all three values
        assert set(np.unique(want)) == {-1, 0, 1}


def test_ternarize_hand_values_epoch_1():
    p0 = np.zeros(6, np.float32)
    q = np.array([0.3, -0.3, 0.1, -0.1, 0.0, 2.0], np.float32)
    got = protocol.ternarize(q, p0, p0, 0.2, 0.5, 1)
    np.testing.assert_array_equal(np.asarray(got), [1, -1, 0, 0, 0, 1])


def test_ternarize_hand_values_epoch_2():
    p_prev2 = np.array([0.0, 0.0, 2.0, 2.0, 0.0, 0.0], np.float32)
    p_prev = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0], np.float32)  # steps +1 +1 -1 -1 +1 +1
    q = np.array([2.0, 0.0, 2.0, 0.0, 1.1, 0.9], np.float32)  # moves +1 -1 +1 -1 +.1 -.1
    got = protocol.ternarize(q, p_prev, p_prev2, 0.0, 0.5, 2)
    # sign(move * step) where |move| >= 0.5 |step|, else 0.
    np.testing.assert_array_equal(np.asarray(got), [1, -1, -1, 1, 0, 0])


@JIT
def test_ternarize_at_alpha_is_zero_at_epoch_1(jit):
    # |q - p_prev| == alpha exactly (all values exact in float32): strict inequality gives 0.
    p_prev = np.array([1.0, 1.0, -2.0, -2.0, 0.0, 0.0], np.float32)
    q = np.array([1.5, 0.5, -1.5, -2.5, 0.5, -0.5], np.float32)
    fn = maybe_jit(protocol.ternarize, jit)
    got = fn(q, p_prev, np.zeros(6, np.float32), 0.5, 0.25, 1)
    np.testing.assert_array_equal(np.asarray(got), np.zeros(6, np.int8))
    # Just past the threshold: +-1.
    q2 = np.array([1.5625, 0.4375, -1.4375, -2.5625, 0.5625, -0.5625], np.float32)
    got = fn(q2, p_prev, np.zeros(6, np.float32), 0.5, 0.25, 1)
    np.testing.assert_array_equal(np.asarray(got), [1, -1, 1, -1, 1, -1])
    np.testing.assert_array_equal(ref_ternarize(q2, p_prev, p_prev, 0.5, 0.25, 1),
                                  [1, -1, 1, -1, 1, -1])


@JIT
def test_ternarize_at_beta_threshold_is_not_zero_at_epoch_2(jit):
    # |q - p_prev| == beta * |p_prev - p_prev2| exactly: "< beta |step|" is false -> sign(f).
    p_prev2 = np.array([0.0, 0.0, 2.0, 2.0], np.float32)
    p_prev = np.ones(4, np.float32)  # steps +1, +1, -1, -1
    q = np.array([1.25, 0.75, 1.25, 0.75], np.float32)  # moves +-0.25 == 0.25 * 1
    got = maybe_jit(protocol.ternarize, jit)(q, p_prev, p_prev2, 0.1, 0.25, 2)
    want = np.array([1, -1, -1, 1], np.int8)
    np.testing.assert_array_equal(ref_ternarize(q, p_prev, p_prev2, 0.1, 0.25, 2), want)
    np.testing.assert_array_equal(np.asarray(got), want)
    # Just below the threshold: 0.
    q = np.array([1.1875, 0.8125, 1.1875, 0.8125], np.float32)
    got = maybe_jit(protocol.ternarize, jit)(q, p_prev, p_prev2, 0.1, 0.25, 2)
    np.testing.assert_array_equal(np.asarray(got), np.zeros(4, np.int8))


@JIT
@pytest.mark.parametrize("epoch", [2, 3])
def test_ternarize_zero_previous_step_gives_zero(jit, epoch):
    rng = np.random.default_rng(5)
    p = rng.normal(size=37).astype(np.float32)
    q = (p + rng.normal(size=37)).astype(np.float32)
    q[:3] = p[:3]  # no move either
    got = maybe_jit(protocol.ternarize, jit)(q, p, p.copy(), 0.3, 0.2, epoch)
    np.testing.assert_array_equal(np.asarray(got), np.zeros(37, np.int8))


@JIT
def test_ternarize_ignores_p_prev2_at_epoch_1(jit):
    q, p_prev, _ = _vectors(37, seed=8)
    fn = maybe_jit(protocol.ternarize, jit)
    want = ref_ternarize(q, p_prev, p_prev, 0.5, 0.2, 1)
    for p_prev2 in (np.full(37, np.nan, np.float32), np.full(37, 1e30, np.float32), p_prev):
        np.testing.assert_array_equal(np.asarray(fn(q, p_prev, p_prev2, 0.5, 0.2, 1)), want)


@JIT
@pytest.mark.parametrize("epoch", [1, 2])
def test_ternarize_vmapped_over_workers_with_private_alpha_beta(jit, epoch):
    n, m = 4, 37
    rng = np.random.default_rng(21)
    _, p_prev, p_prev2 = _vectors(m, seed=22)
    qs = (p_prev + rng.normal(size=(n, m))).astype(np.float32)
    alphas = np.array([0.1, 0.5, 1.0, 2.0], np.float32)
    betas = np.array([0.1, 0.3, 0.7, 0.95], np.float32)
    fn = jax.vmap(protocol.ternarize, in_axes=(0, None, None, 0, 0, None))
    got = np.asarray(maybe_jit(fn, jit)(qs, p_prev, p_prev2, alphas, betas, epoch))
    for k in range(n):
        np.testing.assert_array_equal(
            got[k], ref_ternarize(qs[k], p_prev, p_prev2, alphas[k], betas[k], epoch))


# ---------------------------------------------------------------------------------------
# master_update, Eq. (3)
# ---------------------------------------------------------------------------------------

MU_STATIC = ("direction",)


def _mu_case(n, m, seed, per_worker_beta):
    q, p_prev, p_prev2 = _vectors(m, seed=seed, scale=0.3)
    tern = _ternaries(n, m, seed + 1)
    sizes = SIZES5[:n]
    beta = np.array([0.2, 0.5, 0.9, 0.1, 0.35], np.float32)[:n] if per_worker_beta else 0.2
    return q, tern, sizes, p_prev, p_prev2, beta


@JIT
@pytest.mark.parametrize("n,m", [(3, 37), (4, 1), (5, 40), (3, 1001)])
@pytest.mark.parametrize("epoch", [1, 3])
@pytest.mark.parametrize("direction", [1, -1])
@pytest.mark.parametrize("per_worker_beta", [False, True])
def test_master_update_matches_numpy_loop(jit, n, m, epoch, direction, per_worker_beta):
    q, tern, sizes, p_prev, p_prev2, beta = _mu_case(n, m, 40 + n + m, per_worker_beta)
    alpha0 = 0.05
    pilot = (n + m) % n
    fn = maybe_jit(protocol.master_update, jit, MU_STATIC)
    got = fn(q, tern, sizes, pilot, p_prev, p_prev2, alpha0, beta, epoch, direction=direction)
    assert got.shape == (m,)
    assert got.dtype == jnp.float32
    want = ref_master_update(q, tern, sizes, pilot, p_prev, p_prev2, alpha0, beta, epoch,
                             direction)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)
    if m > 1:  # the update really moved the pilot's model
        assert np.max(np.abs(want - q)) > 1e-3


def test_master_update_default_direction_is_plus_one():
    q, tern, sizes, p_prev, p_prev2, beta = _mu_case(3, 37, 7, True)
    for epoch in (1, 2):
        got = protocol.master_update(q, tern, sizes, 1, p_prev, p_prev2, 0.1, beta, epoch)
        want = ref_master_update(q, tern, sizes, 1, p_prev, p_prev2, 0.1, beta, epoch, 1)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)


def test_master_update_hand_values_epoch_1():
    # sizes 1, 1, 2 -> p = .25, .25, .5; pilot 2; alpha0 = 0.5.
    q = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    tern = np.array([[1, 1, -1, 0], [1, -1, -1, 0], [1, 1, 1, 1]], np.int8)
    sizes = np.array([1, 1, 2], np.int32)
    got = protocol.master_update(q, tern, sizes, 2, q, q, 0.5, 0.2, 1, direction=1)
    np.testing.assert_allclose(np.asarray(got), [1.25, 2.0, 2.75, 4.0], rtol=1e-7)
    got = protocol.master_update(q, tern, sizes, 2, q, q, 0.5, 0.2, 1, direction=-1)
    np.testing.assert_allclose(np.asarray(got), [0.75, 2.0, 3.25, 4.0], rtol=1e-7)


def test_master_update_hand_values_epoch_2():
    q = np.ones(3, np.float32)
    p_prev = np.full(3, 0.5, np.float32)
    p_prev2 = np.array([0.0, 1.0, 0.5], np.float32)  # step +.5, -.5, 0
    tern = np.array([[-1, -1, -1], [1, 1, 1], [-1, 1, 0]], np.int8)
    sizes = np.array([2, 1, 1], np.int32)  # p = .5, .25, .25; pilot 0
    beta = np.array([0.9, 0.2, 0.4], np.float32)
    got = protocol.master_update(q, tern, sizes, 0, p_prev, p_prev2, 7.0, beta, 2)
    want = np.array([0.975, 0.925, 1.0])
    np.testing.assert_allclose(ref_master_update(q, tern, sizes, 0, p_prev, p_prev2, 7.0,
                                                 beta, 2), want, rtol=1e-7)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)


@JIT
@pytest.mark.parametrize("epoch", [1, 3])
@pytest.mark.parametrize("pilot", [0, 2, 4])
def test_master_update_ignores_pilot_row(jit, epoch, pilot):
    n, m = 5, 37
    q, tern, sizes, p_prev, p_prev2, beta = _mu_case(n, m, 60, True)
    fn = maybe_jit(protocol.master_update, jit, MU_STATIC)
    want = ref_master_update(q, tern, sizes, pilot, p_prev, p_prev2, 0.1, beta, epoch)
    rng = np.random.default_rng(61)
    results = []
    for fill in ("zeros", "plus", "minus", "garbage"):
        t = tern.copy()
        t[pilot] = {"zeros": 0, "plus": 1, "minus": -1,
                    "garbage": rng.integers(-128, 128, m)}[fill]
        got = np.asarray(fn(q, t, sizes, pilot, p_prev, p_prev2, 0.1, beta, epoch,
                            direction=1))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        results.append(got)
    for got in results[1:]:
        np.testing.assert_array_equal(got, results[0])


@JIT
def test_master_update_ignores_p_prev2_at_epoch_1(jit):
    q, tern, sizes, p_prev, _, beta = _mu_case(4, 37, 70, True)
    fn = maybe_jit(protocol.master_update, jit, MU_STATIC)
    want = ref_master_update(q, tern, sizes, 1, p_prev, p_prev, 0.1, beta, 1)
    got = fn(q, tern, sizes, 1, p_prev, np.full(37, np.nan, np.float32), 0.1, beta, 1,
             direction=1)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)


@JIT
def test_master_update_scalar_beta_equals_broadcast_beta(jit):
    q, tern, sizes, p_prev, p_prev2, _ = _mu_case(4, 37, 80, False)
    fn = maybe_jit(protocol.master_update, jit, MU_STATIC)
    a = fn(q, tern, sizes, 3, p_prev, p_prev2, 0.1, 0.3, 2, direction=-1)
    b = fn(q, tern, sizes, 3, p_prev, p_prev2, 0.1, np.full(4, 0.3, np.float32), 2,
           direction=-1)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-7, atol=0)


@JIT
def test_master_update_with_one_worker_is_the_pilot_model(jit):
    q, p_prev, p_prev2 = _vectors(37, 90)
    tern = np.ones((1, 37), np.int8)
    fn = maybe_jit(protocol.master_update, jit, MU_STATIC)
    for epoch in (1, 2):
        got = fn(q, tern, np.array([5], np.int32), 0, p_prev, p_prev2, 0.1, 0.2, epoch,
                 direction=1)
        np.testing.assert_array_equal(np.asarray(got), q)


# ---------------------------------------------------------------------------------------
# Traced epoch: epochs 1 and 2 share one compiled program.
# ---------------------------------------------------------------------------------------


def _traced_epoch_cases():
    n, m = 4, 37
    q, tern, sizes, p_prev, p_prev2, beta = _mu_case(n, m, 100, True)
    costs = np.array([1.0, 0.5, 2.0, 1.5], np.float32)
    prev = np.array([1.5, 0.7, 1.0, 3.0], np.float32)
    packed = np.stack([ref_pack(r, "2bit") for r in tern])
    return {
        "goodness": (
            lambda e: protocol.goodness(costs, prev, sizes, e),
            lambda e: ref_goodness(costs, prev, sizes, e)),
        "ternarize": (
            lambda e: protocol.ternarize(q, p_prev, p_prev2, 0.3, 0.2, e),
            lambda e: ref_ternarize(q, p_prev, p_prev2, 0.3, 0.2, e)),
        "master_update": (
            lambda e: protocol.master_update(q, tern, sizes, 2, p_prev, p_prev2, 0.1, beta, e),
            lambda e: ref_master_update(q, tern, sizes, 2, p_prev, p_prev2, 0.1, beta, e)),
        "ternarize_pack": (
            lambda e: protocol.ternarize_pack(q, p_prev, p_prev2, 0.3, 0.2, e),
            lambda e: ref_pack(ref_ternarize(q, p_prev, p_prev2, 0.3, 0.2, e), "2bit")),
        "unpack_update": (
            lambda e: protocol.unpack_update(q, packed, sizes, 2, p_prev, p_prev2, 0.1, beta,
                                             e),
            lambda e: ref_master_update(q, tern, sizes, 2, p_prev, p_prev2, 0.1, beta, e)),
    }


@pytest.mark.parametrize("name", ["goodness", "ternarize", "master_update", "ternarize_pack",
                                  "unpack_update"])
def test_traced_epoch_does_not_retrace_between_epochs(name):
    fn, ref = _traced_epoch_cases()[name]
    traces = []

    def counted(epoch):
        traces.append(1)
        return fn(epoch)

    jitted = jax.jit(counted)
    outs = {}
    for e in (1, 2, 3, 1):
        outs[e] = np.asarray(jitted(jnp.asarray(e, jnp.int32)))
    assert len(traces) == 1, f"{name} retraced for a new epoch value"
    for e in (1, 2, 3):
        want = ref(e)
        if want.dtype.kind == "f":
            np.testing.assert_allclose(outs[e], want, rtol=1e-6, atol=1e-6)
        else:
            np.testing.assert_array_equal(outs[e], want)
    # epoch 1 and 2 really take different branches
    assert not np.array_equal(outs[1], outs[2])


@pytest.mark.parametrize("name", ["goodness", "ternarize", "master_update"])
def test_epoch_as_python_int_equals_traced_epoch(name):
    fn, _ = _traced_epoch_cases()[name]
    for e in (1, 2):
        np.testing.assert_array_equal(np.asarray(fn(e)), np.asarray(fn(jnp.asarray(e))))


# ---------------------------------------------------------------------------------------
# Fused kernels: ternarize_pack, unpack_update.
# ---------------------------------------------------------------------------------------


@JIT
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("m", [1, 5, 37, 40, 1001])
@pytest.mark.parametrize("epoch", [1, 2])
def test_ternarize_pack_equals_pack_of_ternarize(jit, scheme, m, epoch):
    q, p_prev, p_prev2 = _vectors(m, seed=200 + m + epoch)
    fn = maybe_jit(protocol.ternarize_pack, jit, ("scheme",))
    got = np.asarray(fn(q, p_prev, p_prev2, 0.6, 0.5, epoch, scheme=scheme))
    assert got.dtype == np.uint8
    assert got.shape == (codec.packed_size(m, scheme),)
    t = protocol.ternarize(q, p_prev, p_prev2, 0.6, 0.5, epoch)
    np.testing.assert_array_equal(got, codec.pack(t, scheme))
    np.testing.assert_array_equal(got, ref_pack(ref_ternarize(q, p_prev, p_prev2, 0.6, 0.5,
                                                              epoch), scheme))


def test_ternarize_pack_default_scheme_is_2bit():
    q, p_prev, p_prev2 = _vectors(37, seed=210)
    got = protocol.ternarize_pack(q, p_prev, p_prev2, 0.6, 0.5, 2)
    want = ref_pack(ref_ternarize(q, p_prev, p_prev2, 0.6, 0.5, 2), "2bit")
    np.testing.assert_array_equal(np.asarray(got), want)


UU_STATIC = ("direction", "scheme")


def _packed_rows(tern, scheme):
    return np.stack([ref_pack(row, scheme) for row in tern])


@JIT
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("n,m", [(3, 37), (5, 1), (4, 1001)])
@pytest.mark.parametrize("epoch", [1, 2])
@pytest.mark.parametrize("direction", [1, -1])
def test_unpack_update_equals_master_update(jit, scheme, n, m, epoch, direction):
    q, tern, sizes, p_prev, p_prev2, beta = _mu_case(n, m, 300 + n + m, per_worker_beta=True)
    pilot = 1
    packed = _packed_rows(tern, scheme)
    fn = maybe_jit(protocol.unpack_update, jit, UU_STATIC)
    got = fn(q, packed, sizes, pilot, p_prev, p_prev2, 0.05, beta, epoch,
             direction=direction, scheme=scheme)
    assert got.shape == (m,)
    assert got.dtype == jnp.float32
    mu = protocol.master_update(q, tern, sizes, pilot, p_prev, p_prev2, 0.05, beta, epoch,
                                direction=direction)
    np.testing.assert_allclose(np.asarray(got), np.asarray(mu), rtol=1e-6, atol=1e-6)
    want = ref_master_update(q, tern, sizes, pilot, p_prev, p_prev2, 0.05, beta, epoch,
                             direction)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)


@JIT
@pytest.mark.parametrize("scheme", SCHEMES)
def test_unpack_update_scalar_beta_and_default_direction(jit, scheme):
    q, tern, sizes, p_prev, p_prev2, beta = _mu_case(3, 37, 310, per_worker_beta=False)
    fn = maybe_jit(protocol.unpack_update, jit, ("scheme",))
    got = fn(q, _packed_rows(tern, scheme), sizes, 0, p_prev, p_prev2, 0.05, beta, 2,
             scheme=scheme)
    want = ref_master_update(q, tern, sizes, 0, p_prev, p_prev2, 0.05, beta, 2, 1)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)


def test_unpack_update_default_scheme_is_2bit():
    q, tern, sizes, p_prev, p_prev2, beta = _mu_case(4, 37, 315, per_worker_beta=True)
    got = protocol.unpack_update(q, _packed_rows(tern, "2bit"), sizes, 3, p_prev, p_prev2,
                                 0.05, beta, 1)
    want = ref_master_update(q, tern, sizes, 3, p_prev, p_prev2, 0.05, beta, 1, 1)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)


@JIT
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("epoch", [1, 2])
def test_unpack_update_ignores_pilot_row(jit, scheme, epoch):
    n, m, pilot = 4, 37, 2
    q, tern, sizes, p_prev, p_prev2, beta = _mu_case(n, m, 320, per_worker_beta=True)
    packed = _packed_rows(tern, scheme)
    fn = maybe_jit(protocol.unpack_update, jit, UU_STATIC)
    want = ref_master_update(q, tern, sizes, pilot, p_prev, p_prev2, 0.05, beta, epoch)
    rng = np.random.default_rng(321)
    results = []
    fills = [ref_pack(np.ones(m, np.int8), scheme), ref_pack(-np.ones(m, np.int8), scheme),
             np.full(packed.shape[1], 0xFF, np.uint8),  # invalid in base3, all -1 in 2bit
             rng.integers(0, 256, packed.shape[1]).astype(np.uint8)]
    for fill in fills:
        p = packed.copy()
        p[pilot] = fill
        got = np.asarray(fn(q, p, sizes, pilot, p_prev, p_prev2, 0.05, beta, epoch,
                            direction=1, scheme=scheme))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        results.append(got)
    for got in results[1:]:
        np.testing.assert_array_equal(got, results[0])


@JIT
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("epoch", [1, 2])
@pytest.mark.parametrize("direction", [1, -1])
def test_unpack_update_mask_drops_rows_but_keeps_total_size(jit, scheme, epoch, direction):
    n, m, pilot = 5, 37, 0
    q, tern, sizes, p_prev, p_prev2, beta = _mu_case(n, m, 330, per_worker_beta=True)
    mask = np.array([True, True, False, True, False])
    packed = _packed_rows(tern, scheme)
    packed[2] = 0xFF  # a dropped row's content does not matter either
    packed[4] = ref_pack(np.ones(m, np.int8), scheme)
    fn = maybe_jit(protocol.unpack_update, jit, UU_STATIC)
    got = fn(q, packed, sizes, pilot, p_prev, p_prev2, 0.05, beta, epoch,
             direction=direction, scheme=scheme, mask=mask)
    want = ref_master_update(q, tern, sizes, pilot, p_prev, p_prev2, 0.05, beta, epoch,
                             direction, mask=mask)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)
    # Same as master_update with the dropped rows zeroed (p_k still over all sizes).
    zeroed = tern.copy()
    zeroed[~mask] = 0
    mu = protocol.master_update(q, zeroed, sizes, pilot, p_prev, p_prev2, 0.05, beta, epoch,
                                direction=direction)
    np.testing.assert_allclose(np.asarray(got), np.asarray(mu), rtol=1e-6, atol=1e-6)
    # ... and not the same as renormalising p_k over the kept workers.
    renorm = ref_master_update(q, tern[mask], sizes[mask], pilot, p_prev, p_prev2, 0.05,
                               beta[mask], epoch, direction)
    assert not np.allclose(np.asarray(got), renorm, rtol=1e-4, atol=1e-5)


@JIT
@pytest.mark.parametrize("scheme", SCHEMES)
def test_unpack_update_all_true_mask_equals_no_mask(jit, scheme):
    q, tern, sizes, p_prev, p_prev2, beta = _mu_case(4, 37, 340, per_worker_beta=True)
    packed = _packed_rows(tern, scheme)
    fn = maybe_jit(protocol.unpack_update, jit, UU_STATIC)
    a = fn(q, packed, sizes, 1, p_prev, p_prev2, 0.05, beta, 2, direction=1, scheme=scheme)
    b = fn(q, packed, sizes, 1, p_prev, p_prev2, 0.05, beta, 2, direction=1, scheme=scheme,
           mask=np.ones(4, bool))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-7, atol=0)


def test_worker_to_master_round_trip_through_fused_kernels():
    """Workers ternarize-and-pack, the master unpacks-and-updates: equals the reference."""
    n, m, scheme = 4, 37, "base3"
    rng = np.random.default_rng(400)
    _, p_prev, p_prev2 = _vectors(m, seed=401)
    qs = (p_prev + 0.5 * rng.normal(size=(n, m))).astype(np.float32)
    alphas = [0.2, 0.3, 0.4, 0.5]
    betas = np.array([0.2, 0.2, 0.3, 0.4], np.float32)
    sizes = SIZES5[:n]
    pilot = 2
    for epoch in (1, 2):
        packed = np.stack([np.asarray(protocol.ternarize_pack(
            qs[k], p_prev, p_prev2, alphas[k], betas[k], epoch, scheme=scheme))
            for k in range(n)])
        got = protocol.unpack_update(qs[pilot], packed, sizes, pilot, p_prev, p_prev2, 0.1,
                                     betas, epoch, direction=1, scheme=scheme)
        tern = np.stack([ref_ternarize(qs[k], p_prev, p_prev2, alphas[k], betas[k], epoch)
                         for k in range(n)])
        want = ref_master_update(qs[pilot], tern, sizes, pilot, p_prev, p_prev2, 0.1, betas,
                                 epoch)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)


def test_ternary_direction_reads_back_the_sign_of_the_local_step():
    rng = np.random.default_rng(4)
    p2, p1 = rng.normal(size=50).astype(np.float32), rng.normal(size=50).astype(np.float32)
    q = p1 + rng.normal(size=50).astype(np.float32)
    for t in (1, 2):
        tern = protocol.ternarize(q, p1, p2, 0.1, 0.2, t)
        got = np.asarray(protocol.ternary_direction(tern, p1, p2, t))
        nz = np.asarray(tern) != 0
        assert nz.any()
        np.testing.assert_array_equal(got[nz], np.sign(q - p1)[nz])
        assert not got[~nz].any()
