"""E5: property inference (Melis et al. 2019) from a worker's messages.

The property is independent of the task's label: a worker's images are *bold*
(each image's ink, its mean pixel value, is above the median of its class) or
*thin* (below). Bold and thin workers hold the same class mix, so what the
classifier learns cannot be the label distribution.

The master, at each round, simulates shadow workers on public data with and
without the property from the same P^{t-1} (guessed private hyper-parameters),
takes their messages as it would see them (T_k, de-rotated; sign vectors;
updates for FedAvg), L2-normalises and standardises them (as Melis et al.'s
``inference_attack.py``), fits a logistic regression, and scores the attacked
worker's message; the scores are averaged over rounds. AUC over attacked
workers with and without the property.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fedf_jax.privacy import stats, views
from fedf_jax.privacy.common import Options, Regime, Result, Test, judge, row
from fedf_jax.privacy.e2_class_leakage import (
    SHADOW_GUESS,
    observe,
    observed_update,
    shadow_specs,
    simulate_workers,
)

TITLE = "Property inference from messages (master)"
CLAIM = ("Theorem 2: an honest-but-curious master has no information on a worker's private "
         "data set; here: a property of it unrelated to the labels (bold vs thin strokes).")
CRITERION = ("One regime (attacked workers of n_k = 32 bold or thin images), the family of "
             "FEDF cells arm x recipe (E, B); per seed, the property AUC minus 0.5. Refuted if "
             "a cell's one-sided t-test is rejected after Holm (family-wise 0.05) with a mean "
             "AUC >= 0.6; supported if every cell's 95 % upper bound of the AUC is below 0.6; "
             "inconclusive otherwise.")
MARGIN = 0.1

N_LOCAL = 32  # samples of an attacked worker
SHADOWS = 128  # shadow workers per round (half with the property)


def bold(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """bool[S]: the image's ink (mean pixel) is above the median ink of its class."""
    ink = x.reshape(len(x), -1).mean(axis=1)
    out = np.zeros(len(y), bool)
    for c in np.unique(y):
        sel = y == c
        out[sel] = ink[sel] > np.median(ink[sel])
    return out


def _normalise(f: np.ndarray) -> np.ndarray:
    return f / np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), 1e-12)


def property_classifier(fed: views.Federation, arm: str, view: views.RoundView, n_k: int,
                        seed: int, shadows: int):
    """A classifier of "bold" from a message, trained on shadow workers at this round."""
    rng = np.random.default_rng([seed, view.epoch, 5])
    is_bold = bold(fed.x_aux, fed.y_aux)
    labels = np.arange(shadows) % 2 == 0
    picks = [rng.choice(np.flatnonzero(is_bold == lab), n_k, replace=False) for lab in labels]
    q, tern = simulate_workers(fed.model, view.p_prev, view.p_prev2, view.epoch,
                               [fed.x_aux[p] for p in picks], [fed.y_aux[p] for p in picks],
                               shadow_specs(fed, shadows, rng), seed, fed.beta)
    seen_as = "fedavg" if view.pilot == 0 else arm
    feats = _normalise(observe(seen_as, q, tern, view.p_prev, view.p_prev2, view.epoch))
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=500))
    return clf.fit(feats, labels)


def run(opts: Options, seed0: int = 0, progress: Callable[[str], None] | None = None
        ) -> Result:
    """E5 over arms x (local epochs, batch) at n_k = ``N_LOCAL`` (the recipe swept one knob
    at a time): attacked workers with and without the property, per seed."""
    seeds = range(seed0, seed0 + (1 if opts.quick else opts.seeds))
    repeats = 2 if opts.quick else 4  # attacked workers per side and seed
    shadows = 48 if opts.quick else SHADOWS
    recipes = views.recipe_cells(opts, (N_LOCAL,), () if opts.quick else (N_LOCAL,))
    per_seed: dict[tuple[str, str, str], list[float]] = {}
    pooled: dict[tuple[str, str], tuple[list, list]] = {}
    for seed in seeds:
        base = views.make_federation(opts, seed)
        test_bold = bold(base.x_test, base.y_test)
        aux_bold = bold(base.x_aux, base.y_aux)
        n_k = min(N_LOCAL, *(int(np.sum(b == has)) for b in (test_bold, aux_bold)
                             for has in (True, False)))
        if n_k < 2:
            raise ValueError(f"E5 needs >= 2 bold and >= 2 thin images in the test and "
                             f"auxiliary data of `{opts.data}`; it has {n_k}: use a larger "
                             "data set.")
        for _, epochs, batch in recipes:
            setting = f"{views.recipe_label(n_k, epochs, batch)} bold-vs-thin"
            scores: dict[str, list[float]] = {}
            labels = []
            for rep in range(repeats):
                for has in (True, False):
                    rng = np.random.default_rng([seed, rep, int(has), 50])
                    pick = rng.choice(np.flatnonzero(test_bold == has), n_k, replace=False)
                    fed = views.make_federation(opts, seed, local_epochs=epochs,
                                                batch_size=batch,
                                                victim_data=(base.x_test[pick],
                                                             base.y_test[pick]))
                    labels.append(has)
                    for arm in opts.arms:
                        p = []
                        for v in views.run_arm(fed, arm, opts.rounds, seed):
                            clf = property_classifier(fed, arm, v, n_k, seed + 1000 * rep,
                                                      shadows)
                            u = _normalise(observed_update(v, 0)[None])
                            p.append(float(clf.predict_proba(u)[0, 1]))
                        scores.setdefault(arm, []).append(float(np.mean(p)))
            lab = np.array(labels)
            for arm, s in scores.items():
                per_seed.setdefault((arm, setting, "auc"), []).append(stats.roc_auc(lab, s))
                pooled.setdefault((arm, setting), ([], []))
                pooled[(arm, setting)][0].append(lab)
                pooled[(arm, setting)][1].append(np.array(s))
            if progress:
                progress(f"E5 {setting} seed={seed} done")
    rows = [row(arm, setting, metric, vals) for (arm, setting, metric), vals in per_seed.items()]
    rows += [row(arm, setting + " pooled", "auc", [stats.roc_auc(np.concatenate(ls),
                                                                 np.concatenate(ss))])
             for (arm, setting), (ls, ss) in pooled.items()]
    regime, tests = _verdict(per_seed, opts.arms, n_k)
    verdict = regime.verdict
    notes = (f"{repeats} attacked workers per side and seed; {shadows} shadow workers per "
             f"round, with their {SHADOW_GUESS}; logistic regression on L2-normalised, "
             "standardised messages.")
    return Result("E5", TITLE, CLAIM, CRITERION, rows, verdict, notes,
                  extra={"repeats": repeats, "shadows": shadows, "n_local": n_k,
                         "recipes": recipes}, regimes=[regime], tests=tests)


def _verdict(per_seed: dict, arms, n_k: int) -> tuple[Regime, list[Test]]:
    """Applies :data:`CRITERION`."""
    fedf = [a for a in arms if a.startswith("fedf") and "+" not in a[6:]]
    cells = [(f"{arm} {setting}", [v - 0.5 for v in values])
             for (arm, setting, metric), values in per_seed.items()
             if arm in fedf and metric == "auc"]
    given = ("the worker's T_k (its model when it is the pilot), P^{t-1}, P^{t-2}, public data "
             "with and without the property, guessed hyper-parameters")
    return judge(f"attacked worker n_k={n_k}, others full shares", given, cells, MARGIN,
                 (-0.5, 0.5), "AUC above 0.5")
