"""admm.py against independent solutions and against scikit-learn's LinearSVC.

The x-update against a float64 projected-gradient QP written here, the z- and zbar-updates
against least squares and scalar minimization, (3.12)/(3.13) on hand numbers, and whole
runs (samples split N = 1, 3, 5; features split N = 2, 3; two levels G = 2) against
``LinearSVC(C, loss="hinge", fit_intercept=False)`` on x~ = [x, 1].
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from sklearn.datasets import make_classification
from sklearn.svm import LinearSVC

from fedf_jax import admm, admm_data, svm
from fedf_jax.data.partition import apportion, partition

JIT = pytest.mark.parametrize("jit", [False, True])
C = 1.0
S_TRAIN = 150  # samples of the small problem; 50 more for testing


def maybe_jit(fn, jit, static_argnames=()):
    return jax.jit(fn, static_argnames=static_argnames) if jit else fn


# ---------------------------------------------------------------------------------------
# References written here.
# ---------------------------------------------------------------------------------------


def ref_prox_hinge(A, y, upper, v, rho, iters=20000):
    """argmin_x sum_j upper_j hinge(y_j x.a_j) + rho/2 ||x - v||^2 through its dual, by
    float64 projected gradient with step 1/L."""
    ya = (y[:, None] * A).astype(np.float64)
    lip = np.linalg.norm(ya, 2) ** 2 / rho
    a = np.zeros(len(y))
    for _ in range(iters):
        x = v + ya.T @ a / rho
        a = np.clip(a - (ya @ x - 1) / lip, 0, upper)
    return v + ya.T @ a / rho, a


def primal(w, A, y):
    return 0.5 * w @ w + C * np.maximum(0.0, 1.0 - y * (A @ w)).sum()


@functools.cache
def problem(classes=2):
    """A small standardized problem: (x, labels, x_test, labels_test)."""
    x, labels = make_classification(S_TRAIN + 50, n_features=6, n_informative=4,
                                    n_redundant=0, n_classes=classes, flip_y=0.05,
                                    class_sep=0.8, random_state=3)
    x = (x - x[:S_TRAIN].mean(0)) / x[:S_TRAIN].std(0)
    return (x[:S_TRAIN].astype(np.float32), labels[:S_TRAIN], x[S_TRAIN:].astype(np.float32),
            labels[S_TRAIN:])


@functools.cache
def reference(classes=2):
    """LinearSVC per one-vs-rest class on x~: (W f64[K, p], objectives f64[K])."""
    x, labels, _, _ = problem(classes)
    a = admm_data.add_bias(x).astype(np.float64)
    targets = np.asarray(admm.ovr_targets(labels, classes), np.float64)
    ws = [LinearSVC(C=C, loss="hinge", fit_intercept=False, tol=1e-8, max_iter=100000)
          .fit(a, t).coef_.ravel() for t in targets]
    return np.stack(ws), np.array([primal(w, a, t) for w, t in zip(ws, targets, strict=True)])


def check_against_svc(W, classes=2):
    """Objective within 1e-3 relative and test accuracy within 2 samples of LinearSVC."""
    x, labels, xt, lt = problem(classes)
    a = admm_data.add_bias(x)
    W_ref, f_ref = reference(classes)
    targets = np.asarray(admm.ovr_targets(labels, classes))
    for k in range(len(f_ref)):
        gap = (primal(np.asarray(W[k], np.float64), a, targets[k]) - f_ref[k]) / f_ref[k]
        assert abs(gap) <= 1e-3, (k, gap)
    at = admm_data.add_bias(xt)
    hits = int(np.sum(np.asarray(admm.predict(W, at)) == lt))
    hits_ref = int(np.sum(np.asarray(admm.predict(W_ref.astype(np.float32), at)) == lt))
    assert abs(hits - hits_ref) <= 2, (hits, hits_ref)


HYPER = admm.make_hyper(C, eps_abs=1e-4, eps_rel=1e-4)


@jax.jit
def run_consensus(state, data, hyper, max_iter=3000):
    return admm.run(lambda s: admm.consensus_step(s, data, hyper), state, max_iter)


@jax.jit
def run_sharing(state, data, hyper, max_iter=5000):
    return admm.run(lambda s: admm.sharing_step(s, data, hyper), state, max_iter)


NEVER = admm.make_hyper(C, eps_abs=0.0, eps_rel=0.0)  # runs exactly max_iter iterations


def standard(x, labels, classes, parts):
    """Samples split padded to 5 workers of S_TRAIN rows: most tests share one compilation."""
    return admm_data.split_samples(x, labels, classes, parts, rows=S_TRAIN, workers=5)


def unequal_parts(n):
    """n disjoint parts of the training rows, sizes 1 : 2 : ... : n, covering all rows."""
    if n == 1:
        return [np.arange(S_TRAIN)]
    sizes = apportion(S_TRAIN, np.arange(1, n + 1))
    return partition(problem()[1], n, "sizes", sizes=list(sizes), seed=1)


# ---------------------------------------------------------------------------------------
# Single-party equations.
# ---------------------------------------------------------------------------------------


@JIT
def test_x_update_matches_projected_gradient_qp(jit):
    rng = np.random.default_rng(0)
    A = rng.normal(size=(9, 4)).astype(np.float32)
    y = np.where(rng.random(9) < 0.5, -1.0, 1.0).astype(np.float32)
    mask = np.array([1, 1, 1, 1, 1, 1, 1, 0, 0], np.float32)  # two padding rows
    z, u = rng.normal(size=4).astype(np.float32), 0.3 * rng.normal(size=4).astype(np.float32)
    rho = 0.7
    fn = maybe_jit(admm.x_update, jit, static_argnames=("sweeps",))
    x, alpha = fn(A, y, mask, z, u, np.zeros(9, np.float32), rho, C, sweeps=300)
    x_ref, a_ref = ref_prox_hinge(A[:7], y[:7], C, (z - u).astype(np.float64), rho)
    np.testing.assert_allclose(x, x_ref, atol=2e-5)
    np.testing.assert_array_equal(alpha[7:], 0.0)
    assert np.all((np.asarray(alpha) >= 0) & (np.asarray(alpha) <= C))
    # A warm start from the optimum stays there.
    x2, _ = fn(A, y, mask, z, u, alpha, rho, C, sweeps=1)
    np.testing.assert_allclose(x2, x, atol=1e-5)


def test_dcd_padding_rows_are_ignored_even_if_nonzero():
    rng = np.random.default_rng(1)
    ya = rng.normal(size=(5, 3)).astype(np.float32)
    v = rng.normal(size=3).astype(np.float32)
    upper = np.array([1, 1, 1, 0, 0], np.float32)
    x, alpha = svm.dcd_prox_dual(ya, v, np.ones(5, np.float32), 2.0, upper, 50)
    x3, _ = svm.dcd_prox_dual(ya[:3], v, np.zeros(3, np.float32), 2.0, upper[:3], 50)
    np.testing.assert_array_equal(alpha[3:], 0.0)  # the warm start is clipped into the box
    np.testing.assert_allclose(x, x3, atol=1e-6)


@JIT
def test_z_update_is_the_least_squares_minimizer(jit):
    rng = np.random.default_rng(2)
    sent = rng.normal(size=(4, 5))  # x_i + u_i of 4 workers
    center, rho, gamma = rng.normal(size=5), 0.8, 1.7
    # argmin gamma/2 ||z - center||^2 + rho/2 sum_i ||z - sent_i||^2 as stacked least squares
    lhs = np.vstack([np.sqrt(gamma) * np.eye(5)] + [np.sqrt(rho) * np.eye(5)] * 4)
    rhs = np.concatenate([np.sqrt(gamma) * center] + [np.sqrt(rho) * s for s in sent])
    z_ref = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    fn = maybe_jit(admm.z_update, jit)
    np.testing.assert_allclose(fn(sent.sum(0), 4, rho, gamma, center), z_ref, rtol=1e-5)
    # The SVM regularizer: gamma = 1, center = 0.
    np.testing.assert_allclose(fn(sent.sum(0), 4, rho), 4 * rho / (1 + 4 * rho) * sent.mean(0),
                               rtol=1e-5)


@JIT
def test_zbar_update_minimizes_each_sample(jit):
    n, rho = 3, 0.5
    u = np.array([0.1, -0.4, 0.2, 0.0, 0.3, -2.0], np.float32)
    total = np.array([1.5, 0.2, -0.1, 0.33, 9.0, -0.2], np.float32)  # every regime of the prox
    y = np.array([1, -1, 1, -1, 1, 1], np.float32)
    zbar = maybe_jit(admm.zbar_update, jit)(total, u, y, n, rho, C)
    for i in range(6):
        f = lambda t, i=i: (C * max(0.0, 1 - y[i] * n * t)
                            + n * rho / 2 * (t - u[i] - total[i] / n) ** 2)
        best = scipy.optimize.minimize_scalar(f, bounds=(-10, 10), method="bounded",
                                              options={"xatol": 1e-9}).x
        np.testing.assert_allclose(zbar[i], best, atol=1e-5)


@JIT
def test_sharing_x_update_solves_the_ridge_system(jit):
    rng = np.random.default_rng(4)
    A = np.zeros((8, 5), np.float32)
    A[:, :3] = rng.normal(size=(8, 3))  # 3 real columns, 2 padding
    cols = np.array([1, 1, 1, 0, 0], np.float32)
    x_prev, c, rho = rng.normal(size=5).astype(np.float32) * cols, rng.normal(size=8), 0.6
    lam, vec = admm.sharing_factor(A, cols)
    x = maybe_jit(admm.sharing_x_update, jit)(A, cols, lam, vec, x_prev, c, rho)
    a = A[:, :3].astype(np.float64)
    x_ref = np.linalg.solve(np.eye(3) + rho * a.T @ a, rho * a.T @ (a @ x_prev[:3] + c))
    np.testing.assert_allclose(x[:3], x_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(x[3:], 0.0)


def test_stopping_flips_exactly_at_the_tolerances():
    # (3.12) by hand: sqrt(4) * 0.1 + 0.01 * max(3, 5) = 0.25; sqrt(9) * 0.1 + 0.01 * 2 = 0.32.
    eps_pri, eps_dual = admm.tolerances(4, 9, 3.0, 5.0, 2.0, 0.1, 0.01)
    np.testing.assert_allclose([eps_pri, eps_dual], [0.25, 0.32], rtol=1e-6)
    done = lambda r, s: bool(admm.converged(admm.Residuals(jnp.float32(r), jnp.float32(s),
                                                           eps_pri, eps_dual)))
    e_p, e_d = np.float32(eps_pri), np.float32(eps_dual)
    up = lambda v: np.nextafter(v, np.float32(1))
    assert done(e_p, e_d)
    assert done(0.24, 0.31)
    assert not done(up(e_p), e_d)
    assert not done(e_p, up(e_d))
    # The consensus form: 2 workers, p = 2, stats = (sum ||x_i - z||^2, sum ||x_i||^2,
    # sum ||u_i||^2, loss); z moved by (0.3, 0.4).
    hyper = admm.make_hyper(eps_abs=0.1, eps_rel=0.01)
    res = admm.consensus_residuals(jnp.array([0.09, 16.0, 1.0, 0.0]), jnp.array([3.0, 4.0]),
                                   jnp.array([2.7, 3.6]), 2.0, 2, hyper)
    # r = 0.3; s = 2 sqrt(2) 0.5; eps_pri = 2 * 0.1 + 0.01 * max(4, sqrt(2) 5);
    # eps_dual = 0.2 + 0.01 * 2 * 1.
    np.testing.assert_allclose(res, [0.3, np.sqrt(2), 0.2 + 0.05 * np.sqrt(2), 0.22],
                               rtol=1e-6)


def test_residual_balancing_by_hand():
    hyper = admm.make_hyper(mu=10.0, tau=2.0)
    rho, scale = admm.adapt_rho(jnp.array([1.0, 1.0, 1.0, 1.0]), jnp.array([11.0, 10.0, 1.0, 1.0]),
                                jnp.array([1.0, 1.0, 10.0, 11.0]), hyper)
    np.testing.assert_allclose(rho, [2.0, 1.0, 1.0, 0.5])  # > mu s grows; = mu s stays
    np.testing.assert_allclose(scale, [0.5, 1.0, 1.0, 2.0])  # u = y / rho keeps y
    rho, _ = admm.adapt_rho(jnp.ones(1), jnp.array([100.0]), jnp.ones(1),
                            hyper._replace(adapt=jnp.asarray(False)))
    np.testing.assert_allclose(rho, [1.0])


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match=r"`C` \(=0\) must be > 0"):
        admm.make_hyper(0)
    with pytest.raises(ValueError, match=r"`mu` \(=1\.0\) must be > 1"):
        admm.make_hyper(mu=1.0)
    x, labels, _, _ = problem()
    with pytest.raises(ValueError, match="8 workers but only 7 columns"):
        admm_data.split_features(x, labels, 2, [1] * 8)
    with pytest.raises(ValueError, match=r"`blocks` \(=\[3, 3\]\) must .* add up to 7"):
        admm_data.split_features(x, labels, 2, [3, 3])


# ---------------------------------------------------------------------------------------
# Whole runs against LinearSVC.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3, 5])
def test_consensus_reaches_linear_svc(n):
    x, labels, _, _ = problem()
    data = standard(x, labels, 2, unequal_parts(n))  # every n: one compilation
    state, info, iters = run_consensus(admm.consensus_init(data), data, HYPER)
    assert bool(info.converged.all()) and int(iters) < 3000
    check_against_svc(state.z)


@pytest.mark.parametrize("blocks", [[3, 4], [1, 4, 2]])
def test_sharing_reaches_linear_svc(blocks):
    x, labels, _, _ = problem()
    data = admm_data.split_features(x, labels, 2, blocks, width=4)
    state, info, iters = run_sharing(admm.sharing_init(data), data, HYPER)
    assert bool(info.converged.all()) and int(iters) < 5000
    W = admm_data.sharing_weights(state, data)
    assert W.shape == (1, 7)
    check_against_svc(W)


def test_two_levels_reach_the_flat_optimum():
    x, labels, _, _ = problem()
    parts = unequal_parts(5)
    data = admm_data.split_groups(x, labels, 2, parts, [[0, 3, 4], [1, 2]])  # 3 + 2 workers
    step = jax.jit(functools.partial(admm.hier_step, kappa=3))
    state = admm.hier_init(data)
    for _ in range(400):
        state, info = step(state, data, HYPER)
        if bool(info.converged.all()):
            break
    assert bool(info.converged.all())
    check_against_svc(state.z)
    flat = standard(x, labels, 2, parts)
    z_flat = run_consensus(admm.consensus_init(flat), flat, HYPER)[0].z
    np.testing.assert_allclose(state.z, z_flat, atol=0.02 * float(jnp.linalg.norm(z_flat)))


@pytest.mark.parametrize("rho0", [0.01, 100.0])
def test_adaptive_rho_needs_fewer_iterations(rho0):
    x, labels, _, _ = problem()
    data = standard(x, labels, 2, unequal_parts(3))
    counts = []
    for adapt in (False, True):
        hyper = HYPER._replace(adapt=jnp.asarray(adapt))
        state, info, iters = run_consensus(admm.consensus_init(data, rho=rho0), data, hyper,
                                           1500)
        counts.append(int(iters) if bool(info.converged.all()) else np.inf)
    assert counts[1] < counts[0], counts
    check_against_svc(state.z)  # the adaptive run's


def test_padding_rows_workers_and_columns_change_nothing():
    x, labels, _, _ = problem()
    parts = unequal_parts(3)
    tight = admm_data.split_samples(x, labels, 2, parts)
    assert tight.A.shape[:2] == (3, 75)
    padded = standard(x, labels, 2, parts)
    st, it, _ = run_consensus(admm.consensus_init(tight), tight, NEVER, 25)
    sp, ip, _ = run_consensus(admm.consensus_init(padded), padded, NEVER, 25)
    np.testing.assert_allclose(sp.z, st.z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ip.objective, it.objective, rtol=1e-5)
    np.testing.assert_allclose(ip.residuals[:2], it.residuals[:2], rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(sp.u[3:], 0.0)

    tight = admm_data.split_features(x, labels, 2, [3, 4])
    padded = admm_data.split_features(x, labels, 2, [3, 4], width=7)
    st, it, _ = run_sharing(admm.sharing_init(tight), tight, NEVER, 25)
    sp, ip, _ = run_sharing(admm.sharing_init(padded), padded, NEVER, 25)
    np.testing.assert_allclose(admm_data.sharing_weights(sp, padded),
                               admm_data.sharing_weights(st, tight), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ip.objective, it.objective, rtol=1e-5)
    np.testing.assert_allclose(ip.residuals, it.residuals, rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(sp.x)[:, :, 4:], 0.0)


def test_one_vs_rest_vmapped_equals_per_class_runs():
    x, labels, _, _ = problem(3)
    data = standard(x, labels, 3, partition(labels, 3, "iid", seed=2))
    assert data.y.shape[1] == 3
    state, info, _ = run_consensus(admm.consensus_init(data), data, NEVER, 30)
    for k in range(3):
        one = data._replace(y=data.y[:, k:k + 1])
        s1, i1, _ = run_consensus(admm.consensus_init(one), one, NEVER, 30)
        np.testing.assert_allclose(state.z[k], s1.z[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(info.objective[k], i1.objective[0], rtol=1e-5)
    # Run to convergence: each class's objective and the 3-class accuracy match LinearSVC.
    state = run_consensus(admm.consensus_init(data), data, HYPER)[0]
    check_against_svc(state.z, classes=3)


def zero_sum_masks(values, weights):
    """A stand-in for secure aggregation: every real worker adds a large mask, and the
    masks of the real workers cancel in the sum."""
    r = jax.random.normal(jax.random.key(7), values.shape) * 10.0
    w = weights.reshape((-1,) + (1,) * (values.ndim - 1))
    masks = w * (r - jnp.sum(w * r, axis=0) / jnp.sum(weights))
    return admm.masked_sum(values + masks, weights)


def test_sums_go_only_through_aggregate():
    x, labels, _, _ = problem()
    data = standard(x, labels, 2, unequal_parts(3))
    fdata = admm_data.split_features(x, labels, 2, [3, 4])
    s0 = run_consensus(admm.consensus_init(data), data, NEVER, 10)[0]
    f0 = run_sharing(admm.sharing_init(fdata), fdata, NEVER, 10)[0]
    s1, f1 = admm.consensus_init(data), admm.sharing_init(fdata)
    for _ in range(10):
        s1 = admm.consensus_step(s1, data, NEVER, aggregate=zero_sum_masks)[0]
        f1 = admm.sharing_step(f1, fdata, NEVER, aggregate=zero_sum_masks)[0]
    np.testing.assert_allclose(s1.z, s0.z, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(f1.x, f0.x, rtol=1e-3, atol=1e-4)


def test_new_hyper_values_do_not_recompile():
    x, labels, _, _ = problem()
    data = standard(x, labels, 2, unequal_parts(3))
    state = admm.consensus_init(data)
    run_consensus(state, data, HYPER, 2)
    before = run_consensus._cache_size()
    run_consensus(state, data, admm.make_hyper(2.5, eps_rel=1e-2, adapt=False), 3)
    run_consensus(state._replace(rho=state.rho * 3), data, HYPER, 2)
    assert run_consensus._cache_size() == before
