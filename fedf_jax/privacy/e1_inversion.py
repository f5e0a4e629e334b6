"""E1: the master inverts the pilot's model update (Theorem 2).

In FEDF the master receives one full local model per epoch, the pilot's Q_{k*}^t,
and it knows P^{t-1}; so it holds the pilot's whole local update Q_{k*} - P^{t-1}
(Eq. 7). In FedAvg it holds every worker's. Two attacks on such an update:

(a) **Analytic first-layer inversion.** For a dense first layer z = W^T x + b, the
    gradient of the loss on one sample is dL/dW[:, j] = x dL/db_j, so for any unit j
    with dL/db_j != 0, x = dL/dW[:, j] / dL/db_j. An SGD (or momentum) update is a
    linear combination of gradients, so for a worker holding ONE sample the update
    obeys dW[:, j] = x db_j after any number of local steps with any learning rate
    and batch size: the ratio is the input, exactly (up to float32 rounding of
    Q - P). This is a division, not the non-linear system Theorem 2's proof relies
    on, and the private alpha_k and batch size cancel out. With several samples a
    unit's ratio is a mix of the samples that activate it (exact again for a ReLU
    unit that only one sample activates, in one step); with Adam it is approximate.
(b) **Optimisation-based inversion** (Inverting Gradients, Geiping et al. 2020, with
    its FedAvg variant): dummy images in [0, 1] are trained by signed Adam so that the
    simulated local training on them (the worker's steps, from P^{t-1}) gives an
    update with the highest cosine similarity to the observed one, plus total
    variation. The labels come from the output bias update (iDLG rule: the classes
    whose bias rose). The attacker is given the worker's local hyper-parameters
    (learning rate, batch size, local epochs): the worst case for privacy.

Every worker holds n_k samples (its share cut to n_k; "all" keeps the partition),
so the pilot, the one worker whose update the FEDF master sees, has n_k samples.
Metrics on the attacked update: PSNR, SSIM, IIP-pixel (candidates: the auxiliary
images and the worker's other images with the same label), label accuracy; and how
often the victim (worker 0) is the pilot.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from fedf_jax import keys, worker
from fedf_jax.models import MLP
from fedf_jax.privacy import metrics, views
from fedf_jax.privacy.common import Options, Result, conclude, mean_ci95, row

TITLE = "The master inverts the pilot's full local update"
CLAIM = ("Theorem 2: with private learning rates and batch sizes, an honest-but-curious master "
         "has no information on a worker's private data unless it solves a non-linear system.")
CRITERION = ("Refuted if, on FEDF's pilot update, the analytic first-layer inversion recovers a "
             "1-sample pilot's input at mean PSNR > 40 dB with the 95 % interval above 30 dB, "
             "or the optimisation attack reaches an IIP whose 95 % interval lies above 5x its "
             "chance level for n_k in {1, 4}. Supported if every FEDF reconstruction stays "
             "within the 95 % interval of chance (IIP) and below 15 dB. Inconclusive otherwise.")

OPT_MAX_SAMPLES = 16  # the optimisation attack runs for n_k <= 16 only


class Layer(NamedTuple):
    """Where a dense layer lives in the flat parameter vector P."""

    kernel: slice  # f32[in * out], row-major (in, out)
    bias: slice  # f32[out]
    shape: tuple[int, int]  # (in, out)


def mlp_layers(input_shape: tuple[int, ...], num_classes: int, hidden: int
               ) -> dict[str, Layer]:
    """The first dense layer (``"first"``) and the output layer (``"out"``) of the MLP
    ``make_model("mlp", ..., hidden=(hidden,))`` inside P (ravel_pytree's leaf order)."""
    abstract = nnx.eval_shape(lambda: MLP(tuple(input_shape), num_classes, hidden=(hidden,),
                                          rngs=nnx.Rngs(0)))
    _, params, _ = nnx.split(abstract, nnx.Param, ...)
    offsets, at = {}, 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        size = int(np.prod(leaf.shape))
        offsets[jax.tree_util.keystr(path)] = (slice(at, at + size), tuple(leaf.shape))
        at += size

    def layer(prefix: str) -> Layer:
        k, shape = offsets[f"{prefix}['kernel'].value"]
        b, _ = offsets[f"{prefix}['bias'].value"]
        return Layer(k, b, shape)

    return {"first": layer("['hidden'][0]"), "out": layer("['out']")}


def layers_of(fed: views.Federation) -> dict[str, Layer] | None:
    """The MLP layers of a federation's model, None for a model without a dense first
    layer (the CNN)."""
    if fed.model.name != "mlp":
        return None
    shape = fed.x_test.shape[1:]
    n_in = int(np.prod(shape))
    # M = (n_in + 1) h + (h + 1) C  ->  h = (M - C) / (n_in + 1 + C)
    c = int(fed.y_test.max()) + 1
    h = (fed.model.num_trainable - c) // (n_in + 1 + c)
    return mlp_layers(shape, c, h)


def row_ratios(delta: np.ndarray, first: Layer) -> tuple[np.ndarray, np.ndarray]:
    """(ratios f64[h, in], |db| f64[h]): dW[:, j] / db_j for every unit j of the first layer.

    Args:
      delta: f[M] an update Q - P (or any sum of such updates).
      first: the first layer's place in P.
    """
    d = np.asarray(delta, np.float64)
    dw = d[first.kernel].reshape(first.shape)  # (in, h)
    db = d[first.bias]
    safe = np.where(db == 0, 1.0, db)
    return (dw / safe).T, np.abs(db)


def analytic_inversion(delta: np.ndarray, first: Layer, n: int, image_shape: tuple[int, ...],
                       margin: float = 0.02) -> np.ndarray:
    """(a): up to ``n`` images read off the first-layer update, by unit ratios.

    Units are taken by decreasing |db_j| (the best conditioned first); a ratio is kept if
    it is a valid image (every pixel in [-margin, 1 + margin], as a single sample's
    ratio is) and differs from those kept (MSE > 1e-4). With no valid ratio, the
    best-conditioned one is returned.

    Returns:
      f32[R, *image_shape] clipped to [0, 1], 1 <= R <= n.
    """
    ratios, mag = row_ratios(delta, first)
    order = np.argsort(-mag)
    order = order[mag[order] > 1e-12 * max(mag.max(), 1e-30)]
    kept: list[np.ndarray] = []
    for j in order:
        r = ratios[j]
        if r.min() < -margin or r.max() > 1 + margin:
            continue
        if all(np.mean((r - k) ** 2) > 1e-4 for k in kept):
            kept.append(r)
        if len(kept) == n:
            break
    if not kept:
        kept = [ratios[order[0]] if len(order) else np.zeros(ratios.shape[1])]
    return np.clip(np.stack(kept), 0, 1).reshape(-1, *image_shape).astype(np.float32)


def infer_labels(delta: np.ndarray, out: Layer, n: int) -> np.ndarray:
    """Labels of the worker's ``n`` samples from its output-bias update (iDLG rule).

    Under cross-entropy, -dL/db_c = 1[y = c] - softmax_c, so the bias of a class rose
    only if the worker holds it. n = 1: the class whose bias rose most. n > 1: the
    classes whose bias rose, each at least once, the rest shared in proportion to
    the rise (largest remainder).

    Returns:
      i32[n].
    """
    db = np.asarray(delta, np.float64)[out.bias]
    up = np.flatnonzero(db > 0)
    if n == 1 or up.size == 0:
        return np.full(n, int(np.argmax(db)), np.int32)
    up = up[np.argsort(-db[up])][:n]
    counts = np.ones(len(up), np.int64)
    rest = n - len(up)
    if rest:
        quota = rest * db[up] / db[up].sum()
        counts += np.floor(quota).astype(np.int64)
        left = n - counts.sum()
        counts[np.argsort(-(quota - np.floor(quota)))[:left]] += 1
    return np.repeat(up, counts).astype(np.int32)


def _total_variation(x: jax.Array) -> jax.Array:
    """Mean absolute difference of neighbouring pixels, x: f32[n, H, W, C]."""
    return (jnp.mean(jnp.abs(x[:, 1:] - x[:, :-1])) + jnp.mean(jnp.abs(x[:, :, 1:]
                                                                       - x[:, :, :-1])))


@functools.partial(jax.jit, static_argnames=("model", "steps", "batch", "iters"))
def _optimise(model, p_start, delta_obs, labels, x0, lr, tv, steps: int, batch: int,
              iters: int):
    """Signed Adam on the dummy images; returns the images and the final objective."""
    n = x0.shape[0]
    rows = jnp.arange(batch)
    n_batches = -(-n // batch)

    def simulate(x):
        def step(p, s):
            pos = (s % n_batches) * batch + rows
            valid = pos < n
            idx = jnp.minimum(pos, n - 1)

            def loss(params):
                ce = worker.cross_entropy(model.apply(params, x[idx]), labels[idx])
                return jnp.sum(ce * valid) / jnp.maximum(valid.sum(), 1)

            return p - lr * jax.grad(loss)(p), None

        p, _ = jax.lax.scan(step, p_start, jnp.arange(steps))
        return p - p_start

    def objective(x):
        d = simulate(x)
        cos = jnp.dot(d, delta_obs) / (jnp.linalg.norm(d) * jnp.linalg.norm(delta_obs) + 1e-20)
        return 1.0 - cos + tv * _total_variation(x)

    sched = optax.piecewise_constant_schedule(
        0.1, {int(iters * f): 0.1 for f in (3 / 8, 5 / 8, 7 / 8)})
    tx = optax.adam(sched)

    def it(carry, _):
        x, state = carry
        value, g = jax.value_and_grad(objective)(x)
        upd, state = tx.update(jnp.sign(g), state)
        return (jnp.clip(x + upd, 0.0, 1.0), state), value

    (x, _), values = jax.lax.scan(it, (x0, tx.init(x0)), None, length=iters)
    return x, values[-1]


def optimisation_inversion(model, p_start: np.ndarray, delta: np.ndarray, labels: np.ndarray,
                           image_shape: tuple[int, ...], spec: worker.WorkerSpec, iters: int,
                           key: jax.Array, tv: float = 1e-2) -> np.ndarray:
    """(b): Inverting Gradients against a multi-step local update.

    Args:
      model: the attacked model.
      p_start: f32[M] P^{t-1}, where the worker's training started.
      delta: f32[M] the observed update Q - P^{t-1}.
      labels: i32[n] the labels to reconstruct (inferred or known).
      image_shape: one image's shape.
      spec: the worker's local hyper-parameters (given to the attacker).
      iters: optimisation steps.
      key: the dummy images' initial draw.
      tv: the weight of total variation.

    Returns:
      f32[n, *image_shape] in [0, 1].
    """
    n = len(labels)
    batch = min(spec.batch_size, n)
    steps = spec.local_epochs * -(-n // batch)
    x0 = jax.random.uniform(key, (n, *image_shape), jnp.float32)
    x, _ = _optimise(model, jnp.asarray(p_start), jnp.asarray(delta),
                     jnp.asarray(labels, jnp.int32), x0, jnp.float32(spec.lr), jnp.float32(tv),
                     steps=steps, batch=batch, iters=iters)
    return np.asarray(x)


def cut_to(fed: views.Federation, n: int) -> views.Federation:
    """Every worker keeps at most its first ``n`` samples (n = 0: all)."""
    if n <= 0:
        return fed
    return fed._replace(x_parts=[x[:n] for x in fed.x_parts],
                        y_parts=[y[:n] for y in fed.y_parts])


def settings(opts: Options) -> list[tuple[int, int, int]]:
    """(n_k, local epochs, batch) cells: n_k x E at the middle batch size, and the batch
    sweep at one n_k with one local epoch."""
    b0 = 8 if 8 in opts.batch_sizes else opts.batch_sizes[0]
    cells = [(n, e, b0) for n in opts.n_local for e in opts.local_epochs]
    n_b = 16 if 16 in opts.n_local else opts.n_local[0]
    cells += [(n_b, opts.local_epochs[0], b) for b in opts.batch_sizes if b != b0]
    return list(dict.fromkeys(cells))


def _label(n: int, e: int, b: int, t: int | None = None) -> str:
    s = f"n_k={n or 'all'} E={e} B={b}"
    return s if t is None else f"{s} {'t=1' if t == 1 else 't>=2'}"


def attack_update(fed: views.Federation, layers, p_prev: np.ndarray, delta: np.ndarray,
                  k: int, iters: int, key: jax.Array, optimise: bool) -> dict[str, float]:
    """Both attacks on worker k's update; the scores against its true data."""
    x_true, y_true = fed.x_parts[k], fed.y_parts[k]
    n, shape = len(y_true), x_true.shape[1:]
    out: dict[str, float] = {}
    if layers is not None:
        recon = analytic_inversion(delta, layers["first"], n, shape)
        s = metrics.scores(recon, x_true, y_true, fed.x_aux, fed.y_aux)
        out.update({f"analytic_{m}": v for m, v in s.items()})
        labels = infer_labels(delta, layers["out"], n)
        out["label_acc"] = metrics.label_accuracy(labels, y_true)
    else:
        labels = y_true  # no dense output layer rule here: labels given
    if optimise and n <= OPT_MAX_SAMPLES:
        recon = optimisation_inversion(fed.model, p_prev, delta, labels, shape, fed.specs[k],
                                       iters, key)
        s = metrics.scores(recon, x_true, y_true, fed.x_aux, fed.y_aux)
        out.update({f"opt_{m}": v for m, v in s.items()})
    return out


def run(opts: Options, seed0: int = 0, progress: Callable[[str], None] | None = None
        ) -> Result:
    """E1 over the arms that send full models (signfedavg sends none: skipped)."""
    arms = [a for a in opts.arms if not a.startswith("signfedavg")]
    iters = 60 if opts.quick else 250
    rounds = 1 if opts.quick else opts.rounds
    cells: dict[tuple[str, str, str], list[float]] = {}
    exposed: dict[tuple[str, str], list[float]] = {}
    cache: dict[tuple, dict[str, float]] = {}

    def put(arm, setting, metric, value):
        cells.setdefault((arm, setting, metric), []).append(value)

    for n, e, b in settings(opts):
        for s in range(opts.seeds):
            seed = seed0 + s
            fed = cut_to(views.make_federation(opts, seed, local_epochs=e, batch_size=b), n)
            layers = layers_of(fed)
            for arm in arms:
                rv = views.run_arm(fed, arm, rounds, seed, delta=opts.delta)
                fedf = arm.startswith("fedf")
                exposed.setdefault((arm, _label(n, e, b)), []).append(
                    float(np.mean([v.pilot == 0 if fedf else 1.0 for v in rv])))
                for v in rv:
                    k = v.pilot if fedf else 0
                    if k < 0:
                        continue
                    delta = v.q_sent[k].astype(np.float64) - v.p_prev
                    ck = (seed, n, e, b, v.epoch, k, delta.tobytes())
                    if ck not in cache:
                        key = keys.stream(seed, keys.ATTACK + v.epoch)
                        cache[ck] = attack_update(fed, layers, v.p_prev, delta, k, iters, key,
                                                  optimise=v.epoch == 1)
                    for metric, value in cache[ck].items():
                        put(arm, _label(n, e, b, v.epoch), metric, value)
            if progress:
                progress(f"E1 {_label(n, e, b)} seed {seed} done")
    rows = [row(a, st, m, v) for (a, st, m), v in cells.items()]
    rows += [row(a, st, "victim_exposed", v) for (a, st), v in exposed.items()]
    verdict, why = _verdict(cells, arms)
    notes = " ".join([
        f"{why} The FEDF master attacks the pilot of each epoch (every worker holds n_k",
        "samples, so the pilot does too); the FedAvg master attacks worker 0, whose model it",
        "receives every epoch. `victim_exposed`: the share of epochs in which the master",
        "received worker 0's full model. Optimisation attack at t = 1 only,",
        f"{iters} signed-Adam steps, the worker's hyper-parameters given to the attacker;",
        "IIP candidates are the public auxiliary images and the worker's other images with",
        "the same label (`*_iip_chance` is the chance level). signfedavg sends no model:",
        "not attacked here (see E3)."])
    return Result("E1", TITLE, CLAIM, CRITERION, rows, verdict, notes)


def _verdict(cells, arms) -> tuple[str, str]:
    """Applies CRITERION to the FEDF arms' cells."""
    fedf = [a for a in arms if a.startswith("fedf") and "+" not in a[6:]]
    refute, support = [], True
    for (arm, setting, metric), values in cells.items():
        if arm not in fedf:
            continue
        m, lo, _ = mean_ci95(values, metric)
        if metric == "analytic_psnr_db" and setting.startswith("n_k=1 ") and m > 40 and lo > 30:
            refute.append(f"{arm} {setting}: analytic PSNR {m:.1f} dB")
        if metric in ("analytic_psnr_db", "opt_psnr_db") and m >= 15:
            support = False
        if metric in ("analytic_iip", "opt_iip"):
            chance = np.mean(cells.get((arm, setting, metric + "_chance"), [np.nan]))
            if (metric == "opt_iip" and setting.startswith(("n_k=1 ", "n_k=4 "))
                    and lo > 5 * chance):
                refute.append(f"{arm} {setting}: {metric} {m:.2f} (chance {chance:.3f})")
            if lo > chance:
                support = False
    return conclude(refute, support,
                    "Supported: no FEDF reconstruction beat chance.",
                    "Inconclusive: some leakage above chance, below the refutation bar.", most=4)
