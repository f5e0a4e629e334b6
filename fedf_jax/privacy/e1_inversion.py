"""E1: the master inverts the pilot's model update (Theorem 2).

In FEDF the master receives one full local model per epoch, the pilot's Q_{k*}^t,
and it knows P^{t-1}; so it holds the pilot's whole local update Q_{k*} - P^{t-1}
(Eq. 7), and the pilot's reported size S_{k*}. In FedAvg it holds every worker's.
Two attacks on such an update:

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
    simulated local training on them (from P^{t-1}) gives an update with the highest
    cosine similarity to the observed one, plus total variation. The labels come from
    the output bias update (iDLG rule: the classes whose bias rose). The attacker does
    not know the worker's batch size, local epochs or learning rate: it tries every
    (E, B) of a stated prior (E in {1, 5}, B in {1, 8, 32}, B capped at n) with the
    public learning-rate range's geometric mean, and keeps the guess whose final
    objective is best.

Regimes. *Victim n_k* (1, 4, 16): only the victim (worker 0) is cut to n_k samples,
the others keep their shares; the target is the victim, exposed to the FEDF master
only in the epochs it is the pilot. *Full shares* (n_k = all): the target is the
pilot of each epoch (FedAvg: worker 0). *Tiny federation*: every worker cut to one
sample (the set-up of the earlier headline), target: the pilot. Metrics on the
target's update: the share of its samples recovered (PSNR >= 30 dB after a Hungarian
match; 0 in an epoch where the target's model was not received), PSNR (median: the
100 dB cap of an exact image makes means misleading), SSIM, IIP-pixel (candidates:
the auxiliary images and the worker's other images with the same label), label
accuracy; and how often the target's full model reached the master.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np
from flax import nnx

from fedf_jax import keys
from fedf_jax.models import MLP
from fedf_jax.privacy import metrics, views
from fedf_jax.privacy.common import Options, Regime, Result, Test, judge, overall, row
from fedf_jax.privacy.inversion import (
    PRIOR_BATCHES,
    PRIOR_EPOCHS,
    guessed_inversion,
)

TITLE = "The master inverts the pilot's full local update"
CLAIM = ("Theorem 2: with private learning rates and batch sizes, an honest-but-curious master "
         "has no information on a worker's private data unless it solves a non-linear system.")
CRITERION = ("Per regime (victim n_k in {1, 4, 16} with the others at full shares; every "
             "worker at its full share; a tiny federation of 1-sample workers), the family "
             "of FEDF cells arm x recipe (E, B) x {t=1, t>=2} x attack; per seed, (a) the "
             "share of the target's samples the analytic inversion recovers (PSNR >= 30 dB), "
             "averaged over the epochs (0 where its model was not received), margin 0.1; "
             "(b) the optimisation attack's IIP minus its chance level at t = 1 (n_k <= 16), "
             "margin 0.2. Refuted if a cell's one-sided t-test (or exact binomial test, for "
             "values at the ends of their range) is rejected after Holm (family-wise 0.05) "
             "with a mean at least the margin; supported if every cell's 95 % upper bound is "
             "below its margin; inconclusive otherwise. FedAvg is reported alongside, not "
             "judged.")

OPT_MAX_SAMPLES = 16  # the optimisation attack runs for n_k <= 16 only
RECOVERED_DB = 30.0
MARGIN_RECOVERED = 0.1
MARGIN_IIP = 0.2
VICTIM_SIZES = (1, 4, 16)


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


def cut_to(fed: views.Federation, n: int) -> views.Federation:
    """Every worker keeps at most its first ``n`` samples (n = 0: all)."""
    if n <= 0:
        return fed
    return fed._replace(x_parts=[x[:n] for x in fed.x_parts],
                        y_parts=[y[:n] for y in fed.y_parts])


def attack_update(fed: views.Federation, layers, p_prev: np.ndarray, delta: np.ndarray,
                  k: int, iters: int, key: jax.Array, optimise: bool) -> dict[str, float]:
    """Both attacks on worker k's update; the scores against its true data (the attacker
    uses the update, P^{t-1}, the reported size n = S_k and public data only)."""
    x_true, y_true = fed.x_parts[k], fed.y_parts[k]
    n, shape = len(y_true), x_true.shape[1:]
    out: dict[str, float] = {}
    if layers is not None:
        recon = analytic_inversion(delta, layers["first"], n, shape)
        s = metrics.scores(recon, x_true, y_true, fed.x_aux, fed.y_aux)
        out.update({f"analytic_{m}": v for m, v in s.items()})
        out["analytic_recovered"] = recovered_share(recon, x_true)
        out["analytic_psnr_db_median"] = float(np.median(_matched_psnr(recon, x_true)))
        labels = infer_labels(delta, layers["out"], n)
        out["label_acc"] = metrics.label_accuracy(labels, y_true)
    else:
        labels = y_true  # no dense output layer rule here: labels given
    if optimise and n <= OPT_MAX_SAMPLES:
        recon = guessed_inversion(fed.model, p_prev, delta, labels, shape, iters, key)
        s = metrics.scores(recon, x_true, y_true, fed.x_aux, fed.y_aux)
        out.update({f"opt_{m}": v for m, v in s.items()})
        out["opt_psnr_db_median"] = float(np.median(_matched_psnr(recon, x_true)))
    return out


def _matched_psnr(recon: np.ndarray, x_true: np.ndarray) -> np.ndarray:
    """f64[n] PSNR of each true image against its matched reconstruction (0 dB: none)."""
    idx = metrics.match(recon, x_true)
    ok = idx >= 0
    out = np.zeros(len(x_true))
    out[ok] = metrics.psnr(recon[idx[ok]], x_true[ok])
    return out


def recovered_share(recon: np.ndarray, x_true: np.ndarray) -> float:
    """The share of the true images matched (Hungarian, pixel MSE) by a reconstruction at
    PSNR >= ``RECOVERED_DB``."""
    return float(np.mean(_matched_psnr(recon, x_true) >= RECOVERED_DB))


class Setting(NamedTuple):
    """One cell of E1's sweep."""

    regime: str
    n_k: int  # the victim's (or every worker's) local set size; 0: full shares
    local_epochs: int
    batch: int
    every_worker: bool  # cut every worker (tiny federation), not the victim only


def settings(opts: Options) -> list[Setting]:
    """E1's cells: victim n_k (the recipe swept one knob at a time at n_k = 1 and 16),
    full shares (local epochs swept), and the tiny federation (base recipe)."""
    small = [n for n in VICTIM_SIZES if n in opts.n_local] or [1]
    out = []
    for n, e, b in views.recipe_cells(opts, small, () if opts.quick else
                                      [n for n in (1, 16) if n in small]):
        out.append(Setting(f"victim n_k={n}, others full shares", n, e, b, False))
    e0, b0 = opts.local_epochs[0], 8 if 8 in opts.batch_sizes else opts.batch_sizes[0]
    if 0 in opts.n_local and not opts.quick:
        for e in opts.local_epochs:
            out.append(Setting("every worker its full share", 0, e, b0, False))
    out.append(Setting("tiny federation: every worker n_k=1", 1, e0, b0, True))
    return out


def _federation(opts: Options, seed: int, c: Setting) -> views.Federation:
    if c.every_worker:
        return cut_to(views.make_federation(opts, seed, local_epochs=c.local_epochs,
                                            batch_size=c.batch), c.n_k)
    return views.make_federation(opts, seed, victim_size=c.n_k, local_epochs=c.local_epochs,
                                 batch_size=c.batch)


def run(opts: Options, seed0: int = 0, progress: Callable[[str], None] | None = None
        ) -> Result:
    """E1 over the arms that send full models (signfedavg sends none: skipped)."""
    arms = [a for a in opts.arms if not a.startswith("signfedavg")]
    iters = 60 if opts.quick else 250
    rounds = 2 if opts.quick else opts.rounds
    # (arm, setting label, metric) -> seed -> values over the setting's epochs
    per_seed: dict[tuple[str, str, str], dict[int, list[float]]] = {}
    regime_of: dict[str, str] = {}
    cache: dict[tuple, dict[str, float]] = {}

    def put(arm, label, metric, seed, value):
        per_seed.setdefault((arm, label, metric), {}).setdefault(seed, []).append(float(value))

    for c in settings(opts):
        recipe = views.recipe_label(c.n_k, c.local_epochs, c.batch)
        for s in range(opts.seeds):
            seed = seed0 + s
            fed = _federation(opts, seed, c)
            layers = layers_of(fed)
            for arm in arms:
                rv = views.run_arm(fed, arm, rounds, seed, delta=opts.delta)
                fedf = arm.startswith("fedf")
                for v in rv:
                    label = f"{c.regime} | {recipe} {'t=1' if v.epoch == 1 else 't>=2'}"
                    regime_of[label] = c.regime
                    # the target: the victim (victim regimes, and FedAvg), else the pilot
                    target = 0 if (not fedf or not c.every_worker and c.n_k > 0) else v.pilot
                    exposed = (v.pilot == target) if fedf else True
                    put(arm, label, "pilot_exposed", seed, exposed and target >= 0)
                    if not (exposed and target >= 0):
                        put(arm, label, "analytic_recovered", seed, 0.0)
                        if v.epoch == 1 and fed.sizes[0] <= OPT_MAX_SAMPLES:
                            put(arm, label, "opt_iip_excess", seed, 0.0)
                        continue
                    delta = v.q_sent[target].astype(np.float64) - v.p_prev
                    ck = (seed, c, v.epoch, target, delta.tobytes())
                    if ck not in cache:
                        key = keys.stream(seed, keys.ATTACK + v.epoch)
                        cache[ck] = attack_update(fed, layers, v.p_prev, delta, target, iters,
                                                  key, optimise=v.epoch == 1)
                    for metric, value in cache[ck].items():
                        put(arm, label, metric, seed, value)
                    if "opt_iip" in cache[ck]:
                        put(arm, label, "opt_iip_excess", seed,
                            cache[ck]["opt_iip"] - cache[ck]["opt_iip_chance"])
            if progress:
                progress(f"E1 {c.regime} {recipe} seed {seed} done")
    # one value per seed: the mean over the setting's epochs (medians: the median)
    vals = {k: [float(np.median(v) if k[2].endswith("_median") else np.mean(v))
                for v in by.values()] for k, by in per_seed.items()}
    rows = [row(a, st, m, v) for (a, st, m), v in vals.items() if m != "opt_iip_excess"]
    regimes, tests = _verdict(vals, arms, regime_of)
    notes = " ".join([
        "The FEDF master attacks its target only in the epochs it received the target's model "
        "(`pilot_exposed`: the share of epochs it did); FedAvg's master receives worker 0's "
        "model every epoch. Values are per-seed means over the epochs of a setting (t=1; "
        "t>=2), intervals over seeds; `*_psnr_db_median`: the median over the target's images "
        "and epochs per seed, then the median over seeds. Optimisation attack at t = 1 only "
        f"(n_k <= {OPT_MAX_SAMPLES}), {iters} signed-Adam steps per guess, the best of the "
        f"prior's guesses (E in {PRIOR_EPOCHS}, B in {PRIOR_BATCHES} capped at n). IIP "
        "candidates are the public auxiliary images and the worker's other images with the "
        "same label (`*_iip_chance` is the chance level). signfedavg sends no model: not "
        "attacked here (see E3)."])
    return Result("E1", TITLE, CLAIM, CRITERION, rows, overall(regimes), notes,
                  regimes=regimes, tests=tests)


def _verdict(vals, arms, regime_of) -> tuple[list[Regime], list[Test]]:
    """Applies CRITERION to the FEDF arms' cells, per regime."""
    fedf = [a for a in arms if a.startswith("fedf") and "+" not in a[6:]]
    given = ("the target's model when it is the pilot, P^{t-1}, its reported size, the model "
             "and public data; the optimisation attack guesses E, B and the learning rate "
             "from a stated prior")
    regimes, tests = [], []
    for regime in dict.fromkeys(regime_of.values()):
        labels = [lab for lab, r in regime_of.items() if r == regime]
        cells_a = [(f"{a} {lab.split(' | ', 1)[1]} analytic",
                    vals[(a, lab, "analytic_recovered")])
                   for a in fedf for lab in labels if (a, lab, "analytic_recovered") in vals]
        cells_o = [(f"{a} {lab.split(' | ', 1)[1]} optimisation",
                    vals[(a, lab, "opt_iip_excess")])
                   for a in fedf for lab in labels if (a, lab, "opt_iip_excess") in vals]
        ra, ta = judge(regime, given, cells_a, MARGIN_RECOVERED, (0.0, 1.0), "share recovered")
        ro, to = judge(regime, given, cells_o, MARGIN_IIP, (-1.0, 1.0), "IIP above chance")
        tests += ta + to
        pair = [r for r in (ra, ro) if r.reason != "No cell was measured."]
        verdict = overall(pair)
        reason = " ".join(f"({'analytic' if r is ra else 'optimisation'}) {r.reason}"
                          for r in pair) or "No cell was measured."
        regimes.append(Regime(regime, given, verdict, reason))
    return regimes, tests
