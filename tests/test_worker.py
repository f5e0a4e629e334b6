"""Local training: heterogeneous workers under vmap equal each worker trained alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedf_jax import keys, layout, worker
from fedf_jax.data import WorkerData
from fedf_jax.models import make_model

IN_SHAPE = (4, 4, 1)
train_cohort = jax.jit(layout.train_cohort, static_argnums=(0, 1))


def _data(sizes, seed=0):
    rng = np.random.default_rng(seed)
    s_max = max(sizes)
    x = np.zeros((len(sizes), s_max, *IN_SHAPE), np.float32)
    y = np.zeros((len(sizes), s_max), np.int32)
    for k, n in enumerate(sizes):
        x[k, :n] = rng.normal(size=(n, *IN_SHAPE))
        y[k, :n] = rng.integers(0, 3, n)
    return x, y, np.asarray(sizes)


def _train(model, specs, x, y, sizes, p0, key, epoch=1, ids=None):
    lay = layout.make_layout(specs, sizes, 1, ids=ids)
    data = layout.place(lay, WorkerData(x, y, np.asarray(sizes)), specs,
                        np.full(len(specs), 0.2), x[0, :1], y[0, :1], key)
    opt = layout.init_opt_states(lay, data, p0)
    outs = [train_cohort(model, c, p0, key, epoch, o, cd)
            for c, cd, o in zip(lay.cohorts, data.cohorts, opt, strict=True)]
    q = layout.to_workers(lay, [o[0] for o in outs])
    c = layout.to_workers(lay, [o[1] for o in outs])
    return np.asarray(q), np.asarray(c)


SPECS = [
    worker.WorkerSpec(lr=0.1, batch_size=4, local_epochs=1, optimizer="sgd"),
    worker.WorkerSpec(lr=0.05, batch_size=7, local_epochs=3, optimizer="sgd"),
    worker.WorkerSpec(lr=0.01, batch_size=3, local_epochs=2, optimizer="adam"),
    worker.WorkerSpec(lr=0.02, batch_size=16, local_epochs=1, optimizer="momentum",
                      momentum=0.8),
    worker.WorkerSpec(lr=0.2, batch_size=1, local_epochs=2, optimizer="sgd"),
]
SIZES = [9, 23, 5, 12, 6]


def test_heterogeneous_workers_under_vmap_equal_each_worker_alone():
    model = make_model("mlp", IN_SHAPE, 3, hidden=(8,))
    x, y, sizes = _data(SIZES)
    p0 = model.init(jax.random.key(0))
    key = jax.random.key(7)
    q_all, c_all = _train(model, SPECS, x, y, sizes, p0, key)
    for k, spec in enumerate(SPECS):
        n = SIZES[k]
        # Alone: no padding rows, its own batch size; its global id stays k.
        q, c = _train(model, [spec], x[k:k + 1, :n], y[k:k + 1, :n], [n], p0, key, ids=[k])
        np.testing.assert_allclose(q_all[k], q[0], rtol=1e-5, atol=1e-6, err_msg=f"worker {k}")
        np.testing.assert_allclose(c_all[k], c[0], rtol=1e-5)


def _numpy_sgd_mlp(p_flat, model, x, y, n, batch, lr, epochs, key):
    """Plain reference: minibatch SGD on a 1-hidden-layer MLP, written with numpy grads."""
    params = np.asarray(p_flat, np.float64)
    # Recover the layer shapes from the flat layout by probing unravel.
    from flax import nnx
    from jax.flatten_util import ravel_pytree

    probe = nnx.state(model_cls(IN_SHAPE, 3, hidden=(8,), rngs=nnx.Rngs(0)))
    _, unravel = ravel_pytree(probe)
    tree = jax.tree.map(np.asarray, unravel(jnp.asarray(params, jnp.float32)))
    w1, b1 = tree["hidden"][0]["kernel"], tree["hidden"][0]["bias"]
    w2, b2 = tree["out"]["kernel"], tree["out"]["bias"]
    w1, b1, w2, b2 = (a.astype(np.float64) for a in (w1, b1, w2, b2))
    capacity = x.shape[0]
    for e in range(epochs):
        ek = jax.random.fold_in(key, e)
        u = np.asarray(jax.random.uniform(ek, (capacity,)))
        order = np.argsort(np.where(np.arange(capacity) < n, u, 2.0))[:n]
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            xb = x[idx].reshape(len(idx), -1).astype(np.float64)
            yb = y[idx]
            h_pre = xb @ w1 + b1
            h = np.maximum(h_pre, 0)
            logits = h @ w2 + b2
            z = logits - logits.max(1, keepdims=True)
            prob = np.exp(z) / np.exp(z).sum(1, keepdims=True)
            g = prob.copy()
            g[np.arange(len(idx)), yb] -= 1
            g /= len(idx)
            gw2, gb2 = h.T @ g, g.sum(0)
            gh = (g @ w2.T) * (h_pre > 0)
            gw1, gb1 = xb.T @ gh, gh.sum(0)
            w1, b1, w2, b2 = w1 - lr * gw1, b1 - lr * gb1, w2 - lr * gw2, b2 - lr * gb2
    tree["hidden"][0]["kernel"], tree["hidden"][0]["bias"] = w1, b1
    tree["out"]["kernel"], tree["out"]["bias"] = w2, b2
    return np.asarray(ravel_pytree(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32),
                                                tree))[0])


from fedf_jax.models.mlp import MLP as model_cls  # noqa: E402


@pytest.mark.parametrize("batch,epochs", [(4, 1), (5, 2), (32, 1)])
def test_local_sgd_matches_numpy_reference(batch, epochs):
    model = make_model("mlp", IN_SHAPE, 3, hidden=(8,))
    n = 13
    x, y, sizes = _data([n, 20], seed=3)  # worker 0 is padded to 20 rows
    p0 = model.init(jax.random.key(1))
    key = jax.random.key(5)
    specs = [worker.WorkerSpec(lr=0.3, batch_size=batch, local_epochs=epochs)] * 2
    q, _ = _train(model, specs, x, y, sizes, p0, key)
    wkey = keys.worker_key(key, 1, 0)
    ref = _numpy_sgd_mlp(p0, model, x[0], y[0], n, batch, 0.3, epochs, wkey)
    np.testing.assert_allclose(q[0], ref, rtol=2e-4, atol=2e-5)


def test_cost_is_mean_training_loss_of_local_model():
    model = make_model("mlp", IN_SHAPE, 3, hidden=(8,))
    x, y, sizes = _data([11, 6], seed=4)
    p0 = model.init(jax.random.key(2))
    specs = [worker.WorkerSpec(lr=0.1, batch_size=4)] * 2
    q, costs = _train(model, specs, x, y, sizes, p0, jax.random.key(0))
    for k, n in enumerate(sizes):
        logits = np.asarray(model.apply(jnp.asarray(q[k]), jnp.asarray(x[k, :n])), np.float64)
        z = logits - logits.max(1, keepdims=True)
        nll = -(z[np.arange(n), y[k, :n]] - np.log(np.exp(z).sum(1)))
        np.testing.assert_allclose(costs[k], nll.mean(), rtol=1e-5)


def test_diverging_worker_reports_nan_cost():
    model = make_model("mlp", IN_SHAPE, 3, hidden=(8,))
    x, y, sizes = _data([10, 10], seed=5)
    x[1] *= 1e30  # overflows in the forward pass
    p0 = model.init(jax.random.key(3))
    specs = [worker.WorkerSpec(lr=0.1, batch_size=5)] * 2
    _, costs = _train(model, specs, x, y, sizes, p0, jax.random.key(0))
    assert np.isfinite(costs[0]) and np.isnan(costs[1])


def test_worker_spec_rejects_bad_values():
    for kwargs, match in [({"lr": -1.0}, "lr"), ({"batch_size": 0}, "batch_size"),
                          ({"local_epochs": 1.5}, "local_epochs"),
                          ({"optimizer": "rmsprop"}, "optimizer"),
                          ({"momentum": 1.0}, "momentum")]:
        with pytest.raises(ValueError, match=match):
            worker.WorkerSpec(**kwargs)


@pytest.mark.parametrize("jit", [False, True])
def test_all_finite_flags_nan_and_both_infinities(jit):
    v = np.arange(37 * 5, dtype=np.float32).reshape(5, 37) - 90.0
    v[1, 3], v[2, 36], v[4, 0] = np.nan, np.inf, -np.inf
    fn = jax.jit(worker.all_finite) if jit else worker.all_finite
    np.testing.assert_array_equal(fn(v), [True, False, False, True, False])
    np.testing.assert_array_equal(jax.vmap(fn)(v), [True, False, False, True, False])
    assert bool(fn(v[0])) and not bool(fn(v[1]))
    big = np.full(37, np.finfo(np.float32).max, np.float32)  # finite, however large
    assert bool(fn(big))
