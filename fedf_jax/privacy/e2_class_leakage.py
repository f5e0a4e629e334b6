"""E2: the master recovers the set of classes a worker holds from its messages.

Under softmax cross-entropy the gradient of the output bias is ``mean(p_c - y_c)``
and that of the output weights ``mean(a_h (p_c - y_c))`` with ReLU activations
``a_h >= 0``: local training moves the output row of every class the worker holds
*up* (its share in the local data exceeds the model's predicted probability) and
the others down. T_k keeps exactly these signs wherever the move is large enough
(Eq. 4: ``|Delta| > alpha_k``; Eq. 5: ``|Delta| >= beta_k |P^{t-1} - P^{t-2}|``, and
the master knows ``sign(P^{t-1} - P^{t-2})``), so the master scores each class by
the signs of its output-layer entries.

Also the helpers the other attack modules share: what the master observes of a
worker's update (:func:`observed_update`), what a curious worker observes
(:func:`global_step`), where each layer sits in P (:func:`param_layout`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fedf_jax import keys, layout, protocol, worker
from fedf_jax.models import MODELS, Model
from fedf_jax.privacy import stats, views
from fedf_jax.privacy.common import Options, Regime, Result, Test, judge_each, overall, row

TITLE = "Class leakage from ternary vectors (master)"
CLAIM = ("Theorem 2: an honest-but-curious master has no information on a worker's private "
         "data set (unless it solves a non-linear equation); here: the set of classes a "
         "non-pilot worker holds, read from its ternary vector T_k.")
CRITERION = ("Per regime (the victim's n_k; it is planted with 3 of the 10 digit classes, the "
             "other workers keep their shares), the family of FEDF cells arm x recipe (E, B) x "
             "{t=1, t>=2}; per seed, the master's class-set F1 from the victim's FEDF messages "
             "(T_k; Q_k when it is the pilot), averaged over the rounds, minus the F1 of a "
             "random-ternary control on the same seed. Refuted if a cell's one-sided t-test is "
             "rejected after Holm (family-wise 0.05) with a mean excess >= 0.2; supported if "
             "every cell's 95 % upper bound of the excess is below 0.2; inconclusive "
             "otherwise.")
MARGIN = 0.2

N_CLASSES_PLANTED = 3
CONTROL = "random-ternary"  # the chance-level control arm
CONTROL_DRAWS = 50
SWEEP_N = 16  # n_k of the local-epoch and batch-size sweep


def param_layout(model: Model, input_shape: tuple[int, ...], num_classes: int,
                 hidden: int) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Offsets and shapes of the trainable leaves in P, e.g. ``"out.kernel"``.

    Rebuilds the module abstractly (no parameters are drawn) and walks its
    ``nnx.Param`` leaves in ``ravel_pytree``'s order, the order of P.

    Returns:
      {dotted path: (offset, shape)}, covering the first ``model.num_trainable`` entries.
    """
    cls, defaults = MODELS[model.name]
    kwargs = dict(defaults)
    if model.name == "mlp":
        kwargs["hidden"] = (hidden,)
    abstract = nnx.eval_shape(lambda: cls(tuple(input_shape), num_classes,
                                          rngs=nnx.Rngs(0), **kwargs))
    _, params, _ = nnx.split(abstract, nnx.Param, ...)
    layout, offset = {}, 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = ".".join(str(p.key) for p in path if isinstance(p, jax.tree_util.DictKey))
        layout[name] = (offset, tuple(leaf.shape))
        offset += int(np.prod(leaf.shape))
    if offset != model.num_trainable:
        raise ValueError(f"the {model.name} layout ({offset} parameters) does not match the "
                         f"model ({model.num_trainable}); check `hidden` (={hidden}).")
    return layout


def fed_layout(fed: views.Federation, opts: Options) -> dict[str, tuple[int, tuple[int, ...]]]:
    """:func:`param_layout` of a federation's model."""
    return _layout_cached(fed.model, tuple(fed.x_test.shape[1:]),
                          int(max(fed.y_test.max(), fed.y_aux.max())) + 1, opts.hidden)


@functools.lru_cache(maxsize=8)
def _layout_cached(model, input_shape, num_classes, hidden):
    return param_layout(model, input_shape, num_classes, hidden)


def leaf(vec: np.ndarray, layout: dict, name: str) -> np.ndarray:
    """The entries of one leaf of P (``vec``: f[..., M]) in the leaf's shape."""
    offset, shape = layout[name]
    size = int(np.prod(shape))
    return vec[..., offset:offset + size].reshape(*vec.shape[:-1], *shape)


def observed_update(view: views.RoundView, k: int) -> np.ndarray:
    """What the master learns of worker k's update ``Delta_k = Q_k - P^{t-1}``: f32[M].

    FedAvg, and the FEDF pilot: the model itself, so ``q_sent - P^{t-1}``.
    signfedavg: ``sign(Delta_k)``. FEDF non-pilot: T_k at t = 1 (Eq. 4, the sign of
    Delta where ``|Delta| > alpha_k``); at t >= 2 Eq. (5) gives
    ``sign(Delta) sign(P^{t-1} - P^{t-2})`` and the master knows the second factor.
    """
    if view.ternary is None or k == view.pilot:
        return (view.q_sent[k] - view.p_prev).astype(np.float32)
    if view.pilot < 0:
        return view.ternary[k].astype(np.float32)
    return np.asarray(protocol.ternary_direction(view.ternary[k], view.p_prev, view.p_prev2,
                                                 view.epoch))


def observe(arm: str, q: np.ndarray, ternary: np.ndarray, p_prev: np.ndarray,
            p_prev2: np.ndarray, epoch: int) -> np.ndarray:
    """:func:`observed_update` of simulated non-pilot workers: f32[K, M].

    Args:
      arm: the protocol arm (a defence suffix is ignored here).
      q: f32[K, M] their local models; ternary: i8[K, M] their T_k (Eq. 4/5).
      p_prev, p_prev2: f32[M] P^{t-1}, P^{t-2}; epoch: t.
    """
    base, _ = views.parse_arm(arm)
    if base == "fedavg":
        return (q - p_prev).astype(np.float32)
    if base == "signfedavg":
        return np.where(q - p_prev >= 0, 1.0, -1.0).astype(np.float32)
    return np.asarray(protocol.ternary_direction(ternary, p_prev, p_prev2, epoch))


_ternarize = jax.jit(jax.vmap(protocol.ternarize, in_axes=(0, None, None, 0, None, None)))


def simulate_workers(model: Model, p_prev: np.ndarray, p_prev2: np.ndarray, epoch: int,
                     parts_x: list[np.ndarray], parts_y: list[np.ndarray],
                     specs: tuple[worker.WorkerSpec, ...], seed: int, beta: float
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Shadow workers: local training from P^{t-1} on the given data (the simulator's
    own vmapped step, fresh optimizer states), then their T_k (Eq. 4/5).

    Args:
      model: the federation's model.
      p_prev, p_prev2: f32[M] P^{t-1}, P^{t-2}; epoch: t.
      parts_x, parts_y: K shadow data sets, f32[S_j, ...] and i32[S_j].
      specs: K worker specs (the adversary's guesses of the private hyper-parameters).
      seed: seed of the shadow workers' training keys.
      beta: beta_k of Eq. (5).

    Returns:
      (q: f32[K, M], ternary: i8[K, M]).
    """
    bounds = np.cumsum([0] + [len(y) for y in parts_y])
    parts = [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    x, y = np.concatenate(parts_x), np.concatenate(parts_y)
    w = layout.build(specs, x, y, parts, betas=np.full(len(specs), beta), x_test=x[:1],
                     y_test=y[:1], train_key=keys.stream(seed, keys.SHADOW))
    opt_states = layout.init_opt_states(w.layout, w.data, jnp.asarray(p_prev))
    q, _, _ = views.train_workers(model, w, opt_states, p_prev, epoch)
    lrs = jnp.asarray([s.lr for s in specs], jnp.float32)
    tern = _ternarize(q, jnp.asarray(p_prev), jnp.asarray(p_prev2), lrs, jnp.float32(beta),
                      jnp.int32(epoch))
    return np.asarray(q), np.asarray(tern)


PRIOR_EPOCHS = (1, 5)  # the adversary's prior on a worker's local epochs ...
PRIOR_BATCHES = (1, 8, 32)  # ... and batch size (uniform), the values the suite sweeps
# how the shadow workers guess, for an experiment's notes
SHADOW_GUESS = (f"local epochs and batch size guessed from the prior E in {PRIOR_EPOCHS}, "
                f"B in {PRIOR_BATCHES} (one draw per round), learning rate from the public "
                "range")


def shadow_specs(fed: views.Federation, count: int, rng: np.random.Generator
                 ) -> tuple[worker.WorkerSpec, ...]:
    """The adversary's guesses of private hyper-parameters, from a stated prior: learning
    rates drawn log-uniformly from the public range ``views.LR_RANGE`` (one per shadow
    worker), and one (local epochs, batch size) drawn uniformly from ``PRIOR_EPOCHS`` x
    ``PRIOR_BATCHES`` for the call (a round's shadows share it, so their training has
    one shape; over rounds and seeds the guesses cover the prior). The attacked worker's
    own recipe is not used."""
    del fed  # the guesses use public knowledge only
    lo, hi = views.LR_RANGE
    lrs = np.exp(rng.uniform(np.log(lo), np.log(hi), count))
    epochs = int(rng.choice(PRIOR_EPOCHS))
    batch = int(rng.choice(PRIOR_BATCHES))
    return tuple(worker.WorkerSpec(lr=float(lr), batch_size=batch, local_epochs=epochs)
                 for lr in lrs)


def global_step(view: views.RoundView) -> np.ndarray:
    """What every worker sees of round t: ``P^t - P^{t-1}``, f32[M]."""
    return (view.p_new - view.p_prev).astype(np.float32)


def class_scores(update: np.ndarray, layout: dict) -> np.ndarray:
    """f32[C] how strongly an update raises each class's output row.

    ``b_c / mean|b| + mean_h W[h, c] / mean|W|`` over the output bias b and kernel
    W of the update (both terms are sign-invariant in scale, so ternaries and
    full updates score alike). Positive: the worker likely holds class c.
    """
    b = leaf(update, layout, "out.bias")
    w = leaf(update, layout, "out.kernel")
    eps = 1e-12
    return b / (np.abs(b).mean() + eps) + w.mean(axis=0) / (np.abs(w).mean() + eps)


def recovered_set(scores: np.ndarray) -> set[int]:
    """Classes with a positive score (the top class when none is)."""
    chosen = set(np.flatnonzero(scores > 0).tolist())
    return chosen or {int(np.argmax(scores))}


def _score_cells(scores: np.ndarray, held: set[int], num_classes: int) -> tuple[float, float]:
    labels = np.isin(np.arange(num_classes), sorted(held))
    return stats.set_f1(held, recovered_set(scores)), stats.roc_auc(labels, scores)


def run(opts: Options, seed0: int = 0, progress: Callable[[str], None] | None = None
        ) -> Result:
    """E2 over arms x (n_k, local epochs, batch) x t in {1, >=2}, plus the random-ternary
    control."""
    rounds = max(opts.rounds, 2)
    n_local = (0,) if opts.quick else opts.n_local
    seeds = range(seed0, seed0 + (min(opts.seeds, 2) if opts.quick else opts.seeds))
    cells: dict[tuple[str, str, str], list[float]] = {}
    pilot_share: dict[str, list[float]] = {}

    def add(arm, setting, metric, value):
        cells.setdefault((arm, setting, metric), []).append(value)

    # n_k sweep with the default recipe (1 local epoch, batch 8), then the local-epoch and
    # batch-size sweep at n_k = SWEEP_N
    settings = [(n_k, 1, 8) for n_k in n_local]
    settings += [(SWEEP_N, e, b) for e in opts.local_epochs for b in opts.batch_sizes
                 if (e, b) != (1, 8)]
    for n_k, epochs, batch in settings:
        for seed in seeds:
            rng = np.random.default_rng([seed, n_k, epochs, batch, 2])
            planted = sorted(rng.choice(10, N_CLASSES_PLANTED, replace=False).tolist())
            fed = views.make_federation(opts, seed, victim_size=n_k, victim_classes=planted,
                                        local_epochs=epochs, batch_size=batch)
            layout = fed_layout(fed, opts)
            held = set(np.unique(fed.y_parts[0]).tolist())
            num_classes = leaf(fed.p0, layout, "out.bias").shape[0]
            setting_n = f"n_k={n_k or 'all'} E={epochs} B={batch}"
            for arm in opts.arms:
                rounds_seen = views.run_arm(fed, arm, rounds, seed)
                per_t: dict[str, list[tuple[float, float]]] = {"t=1": [], "t>=2": []}
                for v in rounds_seen:
                    f1, auc = _score_cells(class_scores(observed_update(v, 0), layout), held,
                                           num_classes)
                    per_t["t=1" if v.epoch == 1 else "t>=2"].append((f1, auc))
                    pilot_share.setdefault(arm, []).append(float(v.pilot == 0))
                for t_name, vals in per_t.items():
                    add(arm, f"{setting_n} {t_name}", "f1", float(np.mean([a for a, _ in vals])))
                    add(arm, f"{setting_n} {t_name}", "auc", float(np.nanmean(
                        [b for _, b in vals])))
            # chance: uniform random ternaries in place of the worker's messages (the mean
            # over CONTROL_DRAWS draws per seed, so the control's interval is narrow)
            for t_name in ("t=1", "t>=2"):
                u = rng.integers(-1, 2, (CONTROL_DRAWS, fed.p0.shape[0])).astype(np.float32)
                vals = [_score_cells(class_scores(ui, layout), held, num_classes) for ui in u]
                add(CONTROL, f"{setting_n} {t_name}", "f1", float(np.mean([a for a, _ in vals])))
                add(CONTROL, f"{setting_n} {t_name}", "auc", float(np.nanmean(
                    [b for _, b in vals])))
            if progress:
                progress(f"E2 {setting_n} seed={seed} done")

    rows = [row(arm, setting, metric, vals) for (arm, setting, metric), vals in cells.items()]
    regimes, tests = _verdict(cells, opts.arms)
    verdict = overall(regimes)
    notes = ("The attacker (the master) is given the victim's messages (T_k, or Q_k in the "
             "epochs it is the pilot), P^{t-1}, P^{t-2} and the public model layout.")
    share = ", ".join(f"{a}: {np.mean(v):.2f}" for a, v in pilot_share.items()
                      if a.startswith("fedf"))
    notes += (" An all-zero T_k (at t = 1 every |Delta| <= alpha_k for small n_k) scores "
              "every class 0 and the attack then guesses class 0 alone.")
    notes += (f" Chance F1 of a random 5-class guess: "
              f"{stats.chance_set_f1(10, N_CLASSES_PLANTED, 5):.3f}. Share of rounds where "
              f"the attacked worker was the pilot (the master then has its full model): "
              f"{share or 'n/a'}.")
    return Result("E2", TITLE, CLAIM, CRITERION, rows, verdict, notes,
                  extra={"rounds": rounds, "settings": settings}, regimes=regimes,
                  tests=tests)


def _verdict(cells: dict, arms) -> tuple[list[Regime], list[Test]]:
    """Applies :data:`CRITERION`: one regime per victim n_k."""
    fedf = [a for a in arms if a.startswith("fedf") and "+" not in a[6:]]
    by_regime: dict[str, list[tuple[str, list[float]]]] = {}
    for (arm, setting, metric), values in cells.items():
        if arm not in fedf or metric != "f1":
            continue
        control = cells[(CONTROL, setting, "f1")]
        n_k = setting.split()[0]
        by_regime.setdefault(n_k, []).append(
            (f"{arm} {setting}", [a - b for a, b in zip(values, control, strict=True)]))
    given = ("the victim's T_k (its model when it is the pilot), P^{t-1}, P^{t-2}, the public "
             "model layout")
    return judge_each(by_regime, given, MARGIN, (-1.0, 1.0), "F1 above the control")
