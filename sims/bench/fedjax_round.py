"""FedJAX 0.0.17's FedAvg round vs a bare vmap FedAvg round, in one process (optional).

Digits, MLP 64-128-10, 20 samples per client, batch 10, one local epoch, as in
round_time.py. FedJAX is not a dependency and needs an older jax, so this runs in a
separate virtual environment, never the project's:

    python -m venv /tmp/fedjax_venv
    /tmp/fedjax_venv/bin/pip install fedjax==0.0.17 jax==0.4.30 jaxlib==0.4.30 \
        dm-haiku==0.0.12 optax==0.2.2 "numpy<2" scikit-learn
    /tmp/fedjax_venv/bin/python sims/bench/fedjax_round.py 100 5   # clients, rounds

FedJAX/bare here and FEDF/bare from round_time.py are each in-process ratios, but
under different jax versions; compare them through the bare round with that caveat.
"""
import statistics
import sys
import time

import fedjax
import haiku as hk
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

n_clients = int(sys.argv[1])
rounds = int(sys.argv[2])
d = load_digits()
x = (d.images / 16.0).astype(np.float32).reshape(-1, 64)
y = d.target.astype(np.int32)
rng = np.random.default_rng(0)
idx = rng.integers(0, len(y), size=(n_clients, 20))
clients = {f"{k}".encode(): {"x": x[idx[k]], "y": y[idx[k]]} for k in range(n_clients)}
data = fedjax.InMemoryFederatedData(clients)


def forward(batch):
    return hk.nets.MLP([128, 10])(batch["x"])


model = fedjax.create_model_from_haiku(
    transformed_forward_pass=hk.transform(forward), sample_batch={"x": x[:2]},
    train_loss=lambda b, p: fedjax.metrics.unreduced_cross_entropy_loss(b["y"], p))
grad_fn = fedjax.model_grad(model)
algo = fedjax.algorithms.fed_avg.federated_averaging(
    grad_fn, fedjax.optimizers.sgd(0.05), fedjax.optimizers.sgd(1.0),
    fedjax.ShuffleRepeatBatchHParams(batch_size=10, num_epochs=1))
params = model.init(jax.random.PRNGKey(0))
state = algo.init(params)
ids = list(clients)


def fedjax_round(state, r):
    cl = [(cid, data.get_client(cid), jax.random.PRNGKey(r * 100003 + i))
          for i, cid in enumerate(ids)]
    state, _ = algo.apply(state, cl)
    jax.block_until_ready(state.params)
    return state


# bare vmap FedAvg, as in sims/bench/round_time.py, on the same arrays
flat, unravel = jax.flatten_util.ravel_pytree(params)


def apply(p, xb):
    return model.apply_for_eval(unravel(p), {"x": xb})


def client(p, xc, yc, key):
    order = jax.random.permutation(key, xc.shape[0])

    def step(p, s):
        i = jax.lax.dynamic_slice_in_dim(order, s * 10, 10)

        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(apply(p, xc[i]), yc[i]).mean()

        return p - 0.05 * jax.grad(loss)(p), None

    return jax.lax.scan(step, p, jnp.arange(2))[0]


@jax.jit
def bare_round(p, xs, ys, key):
    q = jax.vmap(client, in_axes=(None, 0, 0, 0))(p, xs, ys, jax.random.split(key, xs.shape[0]))
    return q.mean(0)


xs, ys = jnp.asarray(x[idx]), jnp.asarray(y[idx])
state = fedjax_round(state, 0)
p = bare_round(flat, xs, ys, jax.random.PRNGKey(1))
ft, bt = [], []
for r in range(rounds):
    t0 = time.perf_counter()
    state = fedjax_round(state, r + 1)
    ft.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    p = bare_round(p, xs, ys, jax.random.PRNGKey(r + 2))
    jax.block_until_ready(p)
    bt.append(time.perf_counter() - t0)
print(f"clients {n_clients}: fedjax {1e3 * statistics.median(ft):.1f} ms (min "
      f"{1e3 * min(ft):.1f}), bare vmap {1e3 * statistics.median(bt):.2f} ms (min "
      f"{1e3 * min(bt):.2f}), fedjax/bare {statistics.median(ft) / statistics.median(bt):.1f}x "
      f"(jax {jax.__version__}, fedjax 0.0.17)")
