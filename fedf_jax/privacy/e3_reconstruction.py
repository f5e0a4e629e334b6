"""E3: the master reconstructs a worker's input images from its ternary vector.

(a) Level-set inversion. For an MLP the gradient of the first-layer kernel for
one sample is ``x delta^T``: column j of the update of a one-sample worker is
``c_j x`` after any number of SGD steps (every step adds a multiple of the same
x). Eq. (4) keeps ``sign(c_j x_i)`` where ``|c_j x_i| > alpha_k`` (Eq. 5: where it
beats ``beta |P^{t-1} - P^{t-2}|``), so column j is a level set of the image and
the number of columns where pixel i survives grows with ``x_i``. The attack
averages ``|T[i, j] - b_j|`` over informative columns (``b_j``: the column's value
on pixels that are blank in the public data) and rescales to [0, 1]. For FedAvg
the same average over the full update gives ``x / max(x)`` exactly for n_k = 1.

(b) A learned inverter (after Learning To Invert, Wu et al. 2023): shadow workers
train on public auxiliary samples from the same P^{t-1} with guessed private
hyper-parameters; an MLP maps per-pixel summaries of their first-layer messages
to their (mean) image and is applied to the attacked worker's message.

(b) guesses the worker's local epochs and batch size from a stated prior
(``e2_class_leakage.shadow_specs``), never copies them.

Scores (``metrics.scores``) compare each reconstruction with the best-matching
image of the worker: PSNR, SSIM, IIP (nearest same-label neighbour among the
public images is the true one). Two baselines: the mean public image, and the
class prototype: the mean public image of the class the master reads off the same
message with E2's class signature (what it knows without inverting anything).
A reconstruction has to beat the better of the two.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedf_jax.privacy import metrics, views
from fedf_jax.privacy.common import Options, Regime, Result, Test, judge_families, overall, row
from fedf_jax.privacy.e2_class_leakage import (
    SHADOW_GUESS,
    class_scores,
    fed_layout,
    leaf,
    observe,
    observed_update,
    shadow_specs,
    simulate_workers,
)

TITLE = "Data reconstruction from ternary vectors (master)"
CLAIM = ("Theorem 2: an honest-but-curious master has no information on a worker's private "
         "data set unless it solves a non-linear equation; here: its input images, "
         "reconstructed from T_k without solving any equation.")
CRITERION = ("Per regime (the victim's n_k, the others at full shares), the family of FEDF "
             "cells arm x attack (level-set, learned) x recipe (E, B) x t in {1, 2}; per seed, "
             "(a) the reconstruction's PSNR minus the better baseline's (mean public image; "
             "class prototype read via E2), margin 3 dB; (b) its IIP minus the larger of the "
             "better baseline's IIP and the chance level, margin 0.2. Refuted if a cell's "
             "one-sided t-test is rejected after Holm (family-wise 0.05, per statistic) with "
             "a mean at least the margin; supported if every cell's 95 % upper bound is below "
             "its margin; inconclusive otherwise.")

FIRST_KERNEL = "hidden.0.kernel"
BASELINE = "aux-mean"
PROTOTYPE = "class-prototype"
MARGIN_DB = 3.0
MARGIN_IIP = 0.2
SHADOWS = 256  # shadow workers that train the learned inverter
SHADOWS_QUICK = 96
SWEEP_AT = (1, 16)  # n_k where local epochs and batch size are swept (1 leaks most)
BLANK_SHARE = 0.99  # a pixel is "blank" when it is 0 in this share of public images


def blank_pixels(x_aux: np.ndarray) -> np.ndarray:
    """bool[P]: pixels that are 0 in at least ``BLANK_SHARE`` of the public images."""
    flat = x_aux.reshape(len(x_aux), -1)
    return np.mean(flat == 0, axis=0) >= BLANK_SHARE


def first_layer(updates: np.ndarray, layout: dict) -> np.ndarray:
    """f32[..., P, H]: the first-layer kernel block of updates f32[..., M]."""
    if FIRST_KERNEL not in layout:
        raise ValueError("E3 inverts the first dense layer of the MLP; run it on `--data "
                         "digits` (the cifar10 model starts with a convolution).")
    return leaf(updates, layout, FIRST_KERNEL)


def level_set_image(update: np.ndarray, layout: dict, blank: np.ndarray,
                    image_shape: tuple[int, ...]) -> np.ndarray:
    """Level-set inversion of one observed update f32[M] -> image f32[*image_shape]."""
    w = first_layer(update, layout).astype(np.float64)  # [P, H]
    base = np.median(w[blank], axis=0) if blank.any() else np.median(w, axis=0)
    d = np.abs(w - base)
    scale = d.max(axis=0)
    cols = scale > 0
    if not cols.any():  # an all-zero message carries nothing
        return np.zeros(image_shape, np.float32)
    img = (d[:, cols] / scale[cols]).mean(axis=1)
    return (img / img.max()).reshape(image_shape).astype(np.float32)


def _features(updates: np.ndarray, layout: dict) -> np.ndarray:
    """Inverter inputs f32[K, 4 P]: per pixel, over the hidden units of the first layer,
    the mean magnitude and mean value (each column scaled by its largest magnitude) and
    the shares of positive and negative entries. Summaries over the columns keep the
    level-set and sign structure of the message and make the inverter small enough to
    train once per observed round."""
    w = first_layer(updates, layout).astype(np.float32)  # [K, P, H]
    scaled = w / np.maximum(np.abs(w).max(axis=1, keepdims=True), 1e-12)
    return np.concatenate([np.abs(scaled).mean(-1), scaled.mean(-1), (w > 0).mean(-1),
                           (w < 0).mean(-1)], axis=1)


@functools.partial(jax.jit, static_argnames=("hidden", "steps"))
def fit_mlp(key: jax.Array, x: jax.Array, y: jax.Array, hidden: int = 128, steps: int = 300,
            lr: float = 3e-3, l2: float = 1e-4):
    """A one-hidden-layer MLP ``sigmoid(relu(x W1 + b1) W2 + b2)`` fitted to y in [0, 1]
    by full-batch Adam on the squared error (+ L2 on the weights).

    Args:
      x: f32[K, D] inputs; y: f32[K, P] targets.

    Returns:
      The parameters (W1, b1, W2, b2).
    """
    k1, k2 = jax.random.split(key)
    d, p = x.shape[1], y.shape[1]
    mean = jnp.clip(y.mean(0), 1e-3, 1 - 1e-3)
    params = (jax.random.normal(k1, (d, hidden)) / jnp.sqrt(d), jnp.zeros(hidden),
              jax.random.normal(k2, (hidden, p)) / jnp.sqrt(hidden), jnp.log(mean / (1 - mean)))
    tx = optax.adam(lr)

    def loss(params):
        pred = mlp_predict(params, x)
        return jnp.mean((pred - y) ** 2) + l2 * (jnp.sum(params[0] ** 2) +
                                                 jnp.sum(params[2] ** 2))

    def step(carry, _):
        params, state = carry
        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return params


def mlp_predict(params, x: jax.Array) -> jax.Array:
    """f32[K, P] outputs of :func:`fit_mlp`'s network."""
    w1, b1, w2, b2 = params
    return jax.nn.sigmoid(jax.nn.relu(x @ w1 + b1) @ w2 + b2)


def train_inverter(fed: views.Federation, opts: Options, arm: str, view: views.RoundView,
                   n_k: int, seed: int, shadows: int):
    """An MLP from a worker's first-layer message to its mean image, trained on shadow
    workers holding ``n_k`` public samples each, from the view's P^{t-1}."""
    layout = fed_layout(fed, opts)
    rng = np.random.default_rng([seed, n_k, view.epoch, 3])
    size = max(n_k, 1)
    picks = [rng.choice(len(fed.y_aux), min(size, len(fed.y_aux)), replace=False)
             for _ in range(shadows)]
    q, tern = simulate_workers(fed.model, view.p_prev, view.p_prev2, view.epoch,
                               [fed.x_aux[p] for p in picks], [fed.y_aux[p] for p in picks],
                               shadow_specs(fed, shadows, rng), seed, fed.beta)
    feats = _features(observe(arm, q, tern, view.p_prev, view.p_prev2, view.epoch), layout)
    targets = np.stack([fed.x_aux[p].mean(axis=0).ravel() for p in picks])
    return fit_mlp(jax.random.key(seed), jnp.asarray(feats), jnp.asarray(targets, jnp.float32))


def class_prototype(update: np.ndarray, layout: dict, x_aux: np.ndarray,
                    y_aux: np.ndarray) -> np.ndarray:
    """The class-prototype baseline: the mean public image of the class whose output row
    the observed update raises most (E2's ``class_scores``)."""
    c = int(np.argmax(class_scores(update, layout)))
    pool = x_aux[y_aux == c]
    return (pool if len(pool) else x_aux).mean(axis=0).astype(np.float32)


def _score(recon: np.ndarray, fed: views.Federation) -> dict[str, float]:
    """Scores against the worker's best-matching image (public images as distractors)."""
    x, y = fed.x_parts[0], fed.y_parts[0]
    best = int(np.argmin(metrics.mse(np.repeat(recon[None], len(x), 0), x)))
    return metrics.scores(recon[None], x[best:best + 1], y[best:best + 1], fed.x_aux,
                          fed.y_aux)


def run(opts: Options, seed0: int = 0, progress: Callable[[str], None] | None = None
        ) -> Result:
    """E3: level-set and learned inversion, arms x (n_k, local epochs, batch) x t in {1, 2};
    local epochs and batch are swept at the n_k of ``SWEEP_AT``."""
    n_local = (1,) if opts.quick else opts.n_local
    seeds = range(seed0, seed0 + (min(opts.seeds, 2) if opts.quick else opts.seeds))
    shadows = SHADOWS_QUICK if opts.quick else SHADOWS
    if opts.data != "digits":
        raise ValueError(f"E3 inverts the first dense layer of the MLP; `data` "
                         f"(={opts.data!r}) uses the CNN: run it on `--data digits`.")
    cells: dict[tuple[str, str, str], list[float]] = {}

    def add(arm, setting, scores):
        for metric in ("psnr_db", "ssim", "iip", "iip_chance"):
            cells.setdefault((arm, setting, metric), []).append(scores[metric])

    recipes = views.recipe_cells(opts, n_local, () if opts.quick else
                                 [n for n in SWEEP_AT if n in opts.n_local])
    for n_k, epochs, batch in recipes:
        for seed in seeds:
            fed = views.make_federation(opts, seed, victim_size=n_k, local_epochs=epochs,
                                        batch_size=batch)
            layout = fed_layout(fed, opts)
            blank = blank_pixels(fed.x_aux)
            shape = fed.x_aux.shape[1:]
            baseline = _score(fed.x_aux.mean(axis=0), fed)
            for arm in opts.arms:
                for v in views.run_arm(fed, arm, 2, seed):
                    setting = f"{views.recipe_label(n_k, epochs, batch)} t={v.epoch}"
                    u = observed_update(v, 0)
                    add(f"{arm} {PROTOTYPE}", setting,
                        _score(class_prototype(u, layout, fed.x_aux, fed.y_aux), fed))
                    add(f"{arm} level-set", setting, _score(level_set_image(u, layout, blank,
                                                                           shape), fed))
                    net = train_inverter(fed, opts, arm, v, n_k, seed, shadows)
                    recon = np.asarray(mlp_predict(net, jnp.asarray(_features(u[None], layout)))
                                       )[0].reshape(shape)
                    add(f"{arm} learned", setting, _score(recon.astype(np.float32), fed))
                    if arm == opts.arms[0]:
                        add(BASELINE, setting, baseline)
            if progress:
                progress(f"E3 {views.recipe_label(n_k, epochs, batch)} seed={seed} done")

    rows = [row(arm, setting, metric, vals) for (arm, setting, metric), vals in cells.items()]
    regimes, tests = _verdict(cells, opts.arms)
    verdict = overall(regimes)
    notes = ("The master is given the victim's messages (T_k, or its model when it is the "
             "pilot), P^{t-1}, P^{t-2}, public data; the learned inverter's shadow workers "
             f"have their {SHADOW_GUESS}, never the victim's. Baselines are per arm: the "
             "class prototype uses the arm's own message.")
    notes += (" The attacked worker's message is T_k when it is not the pilot and its model "
              "when it is; t = 1 and t = 2 of fedf+1 and fedf-1 differ only at t = 2. "
              "Reconstructions are scored against the worker's best-matching image.")
    return Result("E3", TITLE, CLAIM, CRITERION, rows, verdict, notes,
                  extra={"n_local": list(n_local), "recipes": recipes, "shadows": shadows},
                  regimes=regimes, tests=tests)


def _verdict(cells: dict, arms) -> tuple[list[Regime], list[Test]]:
    """Applies :data:`CRITERION`: one regime per victim n_k."""
    fedf = [a for a in arms if a.startswith("fedf") and "+" not in a[6:]]
    psnr: dict[str, list] = {}
    iip: dict[str, list] = {}
    for (arm_attack, setting, metric), values in cells.items():
        arm, _, attack = arm_attack.partition(" ")
        if arm not in fedf or attack not in ("level-set", "learned") or metric != "psnr_db":
            continue
        base_db = np.maximum(cells[(BASELINE, setting, "psnr_db")],
                             cells[(f"{arm} {PROTOTYPE}", setting, "psnr_db")])
        base_iip = np.maximum.reduce([
            np.asarray(cells[(BASELINE, setting, "iip")]),
            np.asarray(cells[(f"{arm} {PROTOTYPE}", setting, "iip")]),
            np.asarray(cells[(arm_attack, setting, "iip_chance")])])
        n_k = setting.split()[0]
        psnr.setdefault(n_k, []).append(
            (f"{arm_attack} {setting}", list(np.asarray(values) - base_db)))
        iip.setdefault(n_k, []).append(
            (f"{arm_attack} {setting}",
             list(np.asarray(cells[(arm_attack, setting, "iip")]) - base_iip)))
    given = ("the victim's T_k (its model when it is the pilot), P^{t-1}, P^{t-2}, public "
             "data; shadow workers with guessed local epochs, batch size and learning rate")
    regimes, tests = [], []
    for n_k in psnr:
        r, t = judge_families(f"victim {n_k}, others full shares", given, [
            ("PSNR above the better baseline (dB)", psnr[n_k], MARGIN_DB, (-100.0, 100.0)),
            ("IIP above the better baseline and chance", iip[n_k], MARGIN_IIP, (-1.0, 1.0))])
        regimes.append(r)
        tests += t
    return regimes, tests
