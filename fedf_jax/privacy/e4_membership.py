"""E4: membership inference by the master (from T_k) and by a curious worker (from P^t).

Training on a sample (x, y) moves the parameters along ``d_x = -grad L(P^{t-1}; x, y)``,
so a member's gradient direction agrees with the worker's update. Scores per
candidate, averaged over the observed rounds:

- ``master-agree``: cosine of the master's view of the worker's update
  (:func:`e2_class_leakage.observed_update`: T_k, de-rotated at t >= 2, or the model
  when it is the pilot) with ``d_x``.
- ``master-lira``: LiRA-style (Carlini et al. 2022): shadow workers on public data
  with and without the candidate train from the same P^{t-1} with guessed private
  hyper-parameters; Gaussians fitted to their agreement scores give a per-candidate
  log-likelihood ratio for the observed score, summed over rounds.
- ``worker-agree``: cosine of the global step ``P^t - P^{t-1}`` (all a curious worker
  sees; Theorem 3) with ``d_x``.

Members are the attacked worker's whole local set (n_k samples of the held-out
test split); non-members are as many other held-out samples. AUC and TPR at
1 % FPR pool the candidates of each seed (intervals over seeds) and of all seeds.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import numpy as np

from fedf_jax import worker
from fedf_jax.models import Model
from fedf_jax.privacy import stats, views
from fedf_jax.privacy.common import (
    Options,
    Regime,
    Result,
    Row,
    Test,
    judge_each,
    overall,
    row,
)
from fedf_jax.privacy.e2_class_leakage import (
    SHADOW_GUESS,
    global_step,
    observe,
    observed_update,
    shadow_specs,
    simulate_workers,
)

TITLE = "Membership inference (master and curious worker)"
CLAIM = ("Theorems 2 and 3: neither the honest-but-curious master (which sees T_k, and one "
         "model per round) nor an honest-but-curious worker (which sees P^t) has information "
         "on a worker's private data set; here: whether a given sample is in it.")
CRITERION = ("Per regime (the victim's n_k; every candidate member is in its local set, the "
             "other workers keep their shares), the family of FEDF cells arm x recipe (E, B) x "
             "score (master-agree, master-lira, worker-agree); per seed, the membership AUC "
             "minus 0.5. Refuted if a cell's one-sided t-test is rejected after Holm "
             "(family-wise 0.05) with a mean AUC >= 0.6; supported if every cell's 95 % upper "
             "bound of the AUC is below 0.6; inconclusive otherwise.")
MARGIN = 0.1  # AUC above 0.5

SCORES = ("master-agree", "master-lira", "worker-agree")
ALL_SIZE = 64  # n_k used for "all" (0): a victim holding this many candidates
SHADOWS_PER_SIDE = 8  # LiRA shadow workers with / without each candidate per round ...
SWEEP_AT = (1, 16)  # n_k where local epochs and batch size are swept (1 leaks most)
SHADOW_BUDGET = 512  # ... at most this many shadow workers per round (fewer per side for
# large n_k, at least 2)


@functools.partial(jax.jit, static_argnums=0)
def sample_directions(model: Model, p: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    """f32[K, M] ``-grad L(p; x_i, y_i)`` per candidate: where training on it moves P."""
    def loss(p, xi, yi):
        return worker.cross_entropy(model.apply(p, xi[None]), yi[None])[0]
    return -jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(p, x, y)


def cosines(u: np.ndarray, d: np.ndarray) -> np.ndarray:
    """f64[..., K]: cosine of each row of ``u`` (f[..., M] or f[M]) with each row of d
    (f[K, M]); 0 for a zero vector."""
    u = np.asarray(u, np.float64)
    d = np.asarray(d, np.float64)
    num = u @ d.T
    den = np.linalg.norm(u, axis=-1, keepdims=True) * np.linalg.norm(d, axis=-1)
    return np.where(den > 0, num / np.maximum(den, 1e-300), 0.0)


def _gauss_logpdf(s, mu, sd):
    return -0.5 * ((s - mu) / sd) ** 2 - np.log(sd)


def lira_scores(fed: views.Federation, arm: str, view: views.RoundView, cand_x: np.ndarray,
                cand_y: np.ndarray, directions: np.ndarray, n_k: int, seed: int,
                per_side: int) -> np.ndarray:
    """f64[K] LiRA log-likelihood ratios of each candidate at one round.

    Shadow worker "in" for candidate i holds candidate i and ``n_k - 1`` public samples;
    "out" holds ``n_k`` public samples. Their messages (as the master would see them)
    are scored like the attacked worker's, per-candidate Gaussians are fitted to the
    in and out scores, and the observed score is compared under both.
    """
    rng = np.random.default_rng([seed, view.epoch, 4, n_k])
    k = len(cand_y)
    parts_x, parts_y = [], []
    for i in range(k):
        for side in (1, 0):
            for _ in range(per_side):
                pick = rng.choice(len(fed.y_aux), n_k - side, replace=False)
                parts_x.append(np.concatenate([cand_x[i:i + 1]] * side + [fed.x_aux[pick]]))
                parts_y.append(np.concatenate([cand_y[i:i + 1]] * side + [fed.y_aux[pick]]))
    q, tern = simulate_workers(fed.model, view.p_prev, view.p_prev2, view.epoch, parts_x,
                               parts_y, shadow_specs(fed, len(parts_y), rng), seed, fed.beta)
    # the master sees the worker's full model when it is the pilot
    seen_as = "fedavg" if view.pilot == 0 else arm
    shadow = observe(seen_as, q, tern, view.p_prev, view.p_prev2, view.epoch)
    shadow = shadow.reshape(k, 2, per_side, -1).astype(np.float64)
    directions = directions.astype(np.float64)
    s = np.einsum("kspm,km->ksp", shadow, directions) / np.maximum(
        np.linalg.norm(shadow, axis=-1) * np.linalg.norm(directions, axis=-1)[:, None, None],
        1e-300)
    mu_in, mu_out = s[:, 0].mean(-1), s[:, 1].mean(-1)
    sd = np.maximum(np.sqrt(0.5 * (s[:, 0].var(-1) + s[:, 1].var(-1))), 1e-6)  # fixed variance
    observed = cosines(observed_update(view, 0), directions)
    return _gauss_logpdf(observed, mu_in, sd) - _gauss_logpdf(observed, mu_out, sd)


def attack_scores(fed: views.Federation, arm: str, rounds_seen: list[views.RoundView],
                  cand_x: np.ndarray, cand_y: np.ndarray, n_k: int, seed: int,
                  per_side: int, lira: bool = True) -> dict[str, np.ndarray]:
    """{score name: f64[K]} for the candidates, from one run's rounds."""
    out = {name: np.zeros(len(cand_y)) for name in SCORES}
    for v in rounds_seen:
        d = np.asarray(sample_directions(fed.model, v.p_prev, cand_x, cand_y))
        out["master-agree"] += cosines(observed_update(v, 0), d) / len(rounds_seen)
        out["worker-agree"] += cosines(global_step(v), d) / len(rounds_seen)
        if lira:
            out["master-lira"] += lira_scores(fed, arm, v, cand_x, cand_y, d, n_k, seed,
                                              per_side)
    if not lira:
        del out["master-lira"]
    return out


def run(opts: Options, seed0: int = 0, progress: Callable[[str], None] | None = None
        ) -> Result:
    """E4 over arms x (n_k, local epochs, batch); members and non-members pooled per seed.
    Local epochs and batch are swept at the n_k of ``SWEEP_AT``."""
    sizes = tuple(ALL_SIZE if n == 0 else n for n in ((4,) if opts.quick else opts.n_local))
    seeds = range(seed0, seed0 + (min(opts.seeds, 2) if opts.quick else opts.seeds))
    repeats = 2 if opts.quick else 4  # attacked worker data sets per seed
    per_side = 4 if opts.quick else SHADOWS_PER_SIDE
    rows: list[Row] = []
    pooled: dict = {}
    per_seed_all: dict[tuple[str, str, str], list[float]] = {}
    recipes = views.recipe_cells(opts, sizes, () if opts.quick else
                                 [n for n in SWEEP_AT if n in sizes])
    for n_k, epochs, batch in recipes:
        label = views.recipe_label(n_k, epochs, batch)
        per_seed: dict[tuple[str, str, str], list[float]] = {}
        for seed in seeds:
            scored: dict[tuple[str, str], list[np.ndarray]] = {}
            labels_all: list[np.ndarray] = []
            for rep in range(repeats):
                fed = views.make_federation(opts, seed)  # the held-out pool and P^0
                rng = np.random.default_rng([seed, rep, n_k, 40])
                pick = rng.choice(len(fed.y_test), 2 * n_k, replace=False)
                cand_x, cand_y = fed.x_test[pick], fed.y_test[pick]
                member = np.arange(2 * n_k) < n_k
                fed = views.make_federation(opts, seed, local_epochs=epochs, batch_size=batch,
                                            victim_data=(cand_x[member], cand_y[member]))
                labels_all.append(member)
                for arm in opts.arms:
                    seen = views.run_arm(fed, arm, opts.rounds, seed)
                    side = int(np.clip(SHADOW_BUDGET // (4 * n_k), 2, per_side))
                    for name, s in attack_scores(fed, arm, seen, cand_x, cand_y, n_k,
                                                 seed + 1000 * rep, side).items():
                        scored.setdefault((arm, name), []).append(s)
            labels = np.concatenate(labels_all)
            for (arm, name), parts in scored.items():
                s = np.concatenate(parts)
                pooled.setdefault((arm, label, name), ([], []))
                pooled[(arm, label, name)][0].append(labels)
                pooled[(arm, label, name)][1].append(s)
                per_seed.setdefault((arm, name, "auc"), []).append(stats.roc_auc(labels, s))
                per_seed.setdefault((arm, name, "tpr@1%fpr"), []).append(
                    stats.tpr_at_fpr(labels, s, 0.01))
            if progress:
                progress(f"E4 {label} seed={seed} done")
        rows += [row(arm, f"{label} {name}", metric, vals)
                 for (arm, name, metric), vals in per_seed.items()]
        per_seed_all.update({(arm, f"{label} {name}", metric): vals
                             for (arm, name, metric), vals in per_seed.items()})
    pooled_rows = []
    for (arm, label, name), (ls, ss) in pooled.items():
        lab, sc = np.concatenate(ls), np.concatenate(ss)
        pooled_rows.append(row(arm, f"{label} {name} pooled", "auc",
                               [stats.roc_auc(lab, sc)]))
        pooled_rows.append(row(arm, f"{label} {name} pooled", "tpr@1%fpr",
                               [stats.tpr_at_fpr(lab, sc, 0.01)]))
    regimes, tests = _verdict(per_seed_all, opts.arms)
    verdict = overall(regimes)
    notes = ("The master sees the victim's T_k (its model when it is the pilot), the curious "
             "worker P^t; both know P^{t-1} and the candidates. LiRA's shadow workers have "
             f"their {SHADOW_GUESS}, never the victim's.")
    notes += (f" Per seed: {repeats} attacked data sets x 2 n_k candidates; pooled rows join "
              f"all seeds ({len(seeds) * repeats * 2} x n_k candidates). TPR at 1 % FPR "
              "needs >= 100 non-members to resolve; per-seed values are coarse. LiRA uses "
              f"min({per_side}, {SHADOW_BUDGET} / (4 n_k)) (at least 2) shadow workers per side, "
              "candidate and round. An AUC clearly below 0.5 is a leak with the opposite "
              "sign (an adversary calibrating on shadow runs gets 1 - AUC); the criterion, "
              "fixed beforehand, counts only AUC above 0.5.")
    return Result("E4", TITLE, CLAIM, CRITERION, rows + pooled_rows, verdict, notes,
                  extra={"sizes": list(sizes), "recipes": recipes, "repeats": repeats,
                         "shadows_per_side_max": per_side, "shadow_budget": SHADOW_BUDGET},
                  regimes=regimes, tests=tests)


def _verdict(per_seed: dict, arms) -> tuple[list[Regime], list[Test]]:
    """Applies :data:`CRITERION`: one regime per victim n_k."""
    fedf = [a for a in arms if a.startswith("fedf") and "+" not in a[6:]]
    by: dict[str, list[tuple[str, list[float]]]] = {}
    for (arm, setting, metric), values in per_seed.items():
        if arm in fedf and metric == "auc":
            by.setdefault(setting.split()[0], []).append(
                (f"{arm} {setting}", [v - 0.5 for v in values]))
    given = ("master: the victim's T_k (its model when it is the pilot); curious worker: P^t; "
             "both: P^{t-1}, the candidates, public data, guessed hyper-parameters")
    return judge_each(by, given, MARGIN, (-0.5, 0.5), "AUC above 0.5")
