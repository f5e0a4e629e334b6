"""E8: N - 2 colluders lie about their cost C_k and size S_k (Theorem 4, DESIGN §7), blind.

Both numbers are self-reported and unchecked: the goodness of Eq. (1) and the
weights p_k = S_k / S of Eq. (3) take them at face value. Worker 0 is the victim,
worker 1 the other honest worker, workers 2..N-1 collude. Strategies:

- ``honest``: no lie (the reference for pilot shares and accuracy).
- ``inflate cost``: the paper's attack with N - 2 colluders: ever larger costs (never
  the pilot) and no update (all-zero ternaries). The pilot is the victim or the
  honest peer; when it is the victim, P^t = Q_v + d c_t p_h T_h s.
- ``inflate cost+size``: the same, with reported sizes x10^4: p_h shrinks towards 0,
  so P^t is the pilot's model up to a vanishing residual.
- ``steer to self``: sizes x10^4 and costs 1/t (a steady decrease): a colluder is the
  pilot every epoch; the colluders then decode the two honest ternaries blind (E7).

What the colluders observe (E7's :class:`~fedf_jax.privacy.collusion.ColluderView`):
under the two ``inflate`` lies no colluder is ever the pilot, so they know an honest
worker piloted each epoch, not which one. Their estimate of "the pilot's model" each
epoch is P^t. Blind attribution (:func:`cluster_epochs`): the epochs are split in two
by 2-means on the class signature of P^t - P^{t-1} (E2's ``class_scores``); each
cluster is one honest worker's, as far as the colluders can tell. Which is the victim's?
With no side knowledge, a fair guess (``residual_no_prior``: the mean over both
clusters); with one stated fact, the victim's most frequent class, the cluster whose
signature scores it highest (``residual_class_prior``). The informed residual (the
epochs where the victim truly was the pilot) is an upper bound on the attack, kept
for comparison only.

Metrics: how often the steering works (victim or colluder is the pilot), the relative
residual ||P^t - Q_v|| / ||Q_v - P^{t-1}|| of the update taken as the victim's, over
the epochs attributed to the victim; the share of the victim's trits decoded blind
under ``steer to self``; and the test accuracy of P^T (its drop against the honest run
is the damage).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fedf_jax.privacy import collusion, e7_collusion, views
from fedf_jax.privacy.common import Options, Result, judge, overall, row
from fedf_jax.privacy.e2_class_leakage import class_scores, fed_layout

TITLE = "Lying colluders steer the pilot choice and the weights (blind)"
CLAIM = ("Theorem 4 (with self-reported C_k and S_k): N-2 colluders cannot single out the "
         "victim's data.")
CRITERION = ("Two regimes, each a family of arm x strategy cells judged on per-seed values "
             "of blind colluders without side knowledge, Holm over the family (family-wise "
             "0.05). 'Lies that make an honest worker pilot' (inflate cost, inflate "
             "cost+size): the statistic is 0.2 minus the relative residual of the update the "
             "colluders take as the victim's (expected over their guess of which cluster of "
             "epochs is the victim's); refuted if a cell's one-sided test is rejected with a "
             "mean residual <= 0.1; supported if every cell's 95 % interval of the residual "
             "lies above 0.1. 'Lies that make a colluder pilot' (steer to self): E7's "
             "statistic (trits right minus the better baseline), margin 0.05. Inconclusive "
             "otherwise. Informed variants are reported as upper bounds only.")

SIZE_FACTOR = 10_000
ROUNDS = 10  # epochs per run: the pilot shares are per-seed means over them
STRATEGIES = ("honest", "inflate cost", "inflate cost+size", "steer to self")
PILOTED = ("inflate cost", "inflate cost+size")  # lies that make an honest worker pilot
RESIDUAL_BAR = 0.2  # the statistic of the first regime is RESIDUAL_BAR - residual
RESIDUAL_MARGIN = 0.1  # ... and a refutation needs a residual <= 0.1


def steer_to_self(colluders, size_factor: int = SIZE_FACTOR) -> views.Report:
    """Report hook: inflated sizes and a steadily falling cost 1/t, so a colluder wins
    Eq. (1) at t = 1 (S/C) and after (S (C^{t-1} - C^t)); the models are honest."""
    cols = list(colluders)

    def hook(t, p_prev, q, costs, sizes):
        del p_prev
        costs[cols] = 1.0 / t
        sizes[cols] = sizes[cols] * size_factor
        return q, costs, sizes

    return hook


def hook_for(strategy: str, colluders) -> views.Report | None:
    """The report hook of a strategy (None: honest)."""
    if strategy == "honest":
        return None
    if strategy == "inflate cost":
        return collusion.paper_attack(colluders)
    if strategy == "inflate cost+size":
        return collusion.paper_attack(colluders, size_factor=SIZE_FACTOR)
    if strategy == "steer to self":
        return steer_to_self(colluders)
    raise ValueError(f"`strategy` (={strategy!r}) must be one of {STRATEGIES}.")


def relative_residual(view: views.RoundView, victim: int = 0) -> float:
    """Scoring (uses the truth): ||P^t - Q_v|| / ||Q_v - P^{t-1}||, the error of taking P^t
    as the victim's model."""
    q = view.q_sent[victim].astype(np.float64)
    return float(np.linalg.norm(view.p_new - q) / max(np.linalg.norm(q - view.p_prev), 1e-30))


def cluster_epochs(cvs: Sequence[collusion.ColluderView], layout: dict) -> np.ndarray:
    """Blind: i64[T] a cluster (0 or 1) per epoch, by 2-means on the standardised class
    signatures of the global steps P^t - P^{t-1} (the colluders see every P^t). Seeded
    by the two epochs farthest apart; ties go to cluster 0."""
    sig = np.stack([class_scores((cv.p_new - cv.p_prev).astype(np.float32), layout)
                    for cv in cvs]).astype(np.float64)
    sig = (sig - sig.mean(axis=1, keepdims=True)) / (sig.std(axis=1, keepdims=True) + 1e-12)
    if len(sig) < 2:
        return np.zeros(len(sig), np.int64)
    d = ((sig[:, None, :] - sig[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmax(d)), d.shape)
    centres = sig[[i, j]]
    labels = np.zeros(len(sig), np.int64)
    for _ in range(50):
        new = np.argmin(((sig[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
        if np.array_equal(new, labels) and _ > 0:
            break
        labels = new
        centres = np.stack([sig[labels == c].mean(0) if np.any(labels == c) else centres[c]
                            for c in (0, 1)])
    return labels


def cluster_signatures(cvs: Sequence[collusion.ColluderView], labels: np.ndarray,
                       layout: dict) -> list[np.ndarray]:
    """f[C] summed class signature of each cluster's global steps."""
    sig = [class_scores((cv.p_new - cv.p_prev).astype(np.float32), layout) for cv in cvs]
    return [np.sum([s for s, lab in zip(sig, labels, strict=True) if lab == c] or
                   [np.zeros_like(sig[0])], axis=0) for c in (0, 1)]


def run(opts: Options, seed0: int = 0, progress: Callable[[str], None] | None = None
        ) -> Result:
    """E8 on the FEDF arms."""
    n = opts.workers
    if n < 4:
        raise ValueError(f"`workers` (={n}) must be >= 4 for E8 (victim, honest peer and at "
                         f"least two colluders).")
    cols = list(range(2, n))
    rounds = 3 if opts.quick else max(opts.rounds, ROUNDS)
    arms = [a for a in opts.arms if a.startswith("fedf")] or ["fedf+1"]
    vals: dict[tuple[str, str, str], list[float]] = {}

    def put(arm, setting, metric, value):
        vals.setdefault((arm, setting, metric), []).append(float(value))

    for arm in arms:
        d = -1 if arm.startswith("fedf-1") else 1
        for s in range(opts.seeds):
            seed = seed0 + s
            fed = views.make_federation(opts, seed)
            layout = fed_layout(fed, opts)
            known = int(np.bincount(fed.y_parts[0]).argmax())  # the stated prior
            for strategy in STRATEGIES:
                rv = views.run_arm(fed, arm, rounds, seed, report=hook_for(strategy, cols))
                put(arm, strategy, "victim_pilot", np.mean([v.pilot == 0 for v in rv]))
                put(arm, strategy, "colluder_pilot", np.mean([v.pilot in cols for v in rv]))
                put(arm, strategy, "test_accuracy", views.evaluate(fed, rv[-1].p_new)[1])
                if strategy in PILOTED:
                    cvs = [collusion.observe(v, fed, cols, d) for v in rv]
                    labels = cluster_epochs(cvs, layout)
                    res = np.array([relative_residual(v) for v in rv])
                    per_cluster = [res[labels == c].mean() if np.any(labels == c) else np.nan
                                   for c in (0, 1)]
                    put(arm, strategy, "residual_no_prior", np.nanmean(per_cluster))
                    pick = collusion.attribute(cluster_signatures(cvs, labels, layout),
                                                  known)
                    if np.isfinite(per_cluster[pick]):
                        put(arm, strategy, "residual_class_prior", per_cluster[pick])
                    informed = [r for r, v in zip(res, rv, strict=True) if v.pilot == 0]
                    if informed:
                        put(arm, strategy, "residual_informed", np.mean(informed))
                if strategy == "steer to self":
                    piloted = [v for v in rv if v.pilot in cols]
                    cvs = [collusion.observe(v, fed, cols, d) for v in piloted]
                    truth = [(v.ternary[0], v.ternary[1]) for v in piloted]
                    got = collusion.blind_scores(cvs, truth, layout, known)
                    for metric in ("pair_right", "victim_right_no_prior",
                                   "victim_right_class_prior"):
                        if got.get(metric):
                            put(arm, strategy, metric, np.mean([x for _, x in got[metric]]))
                    if piloted:
                        base = [max(np.max(np.unique(v.ternary[0], return_counts=True)[1])
                                    / v.ternary[0].size,
                                    np.mean(collusion.own_vote(cv) == v.ternary[0]))
                                for v, cv in zip(piloted, cvs, strict=True)]
                        put(arm, strategy, "best_baseline", np.mean(base))
                        inf = [np.mean(collusion.decode_two_informed(v, fed, 0, 1, cols, d)[0]
                                       == v.ternary[0]) for v in piloted]
                        put(arm, strategy, "victim_right_informed", np.mean(inf))
            if progress:
                progress(f"E8 {arm} seed {seed} done")
    for arm in arms:  # the damage: accuracy drop against the honest run, per seed
        base = vals[(arm, "honest", "test_accuracy")]
        for strategy in STRATEGIES[1:]:
            acc = vals[(arm, strategy, "test_accuracy")]
            vals[(arm, strategy, "accuracy_drop")] = [b - a for a, b in zip(acc, base,
                                                                            strict=True)]
    rows = [row(a, st, m, v) for (a, st, m), v in vals.items()]
    given = ("their own messages and ids, every P^t, alpha0, beta, d, whether a colluder is "
             "pilot; no honest size, message or identity")
    cells = [(f"{arm} {st}", [RESIDUAL_BAR - r for r in vals.get((arm, st, "residual_no_prior"),
                                                                 [])])
             for arm in arms for st in PILOTED]
    r1, t1 = judge("lies that make an honest worker pilot (N-2 colluders)", given, cells,
                   RESIDUAL_BAR - RESIDUAL_MARGIN, (-np.inf, RESIDUAL_BAR),
                   f"{RESIDUAL_BAR} - residual")
    cells = [(f"{arm} steer to self",
              [a - b for a, b in zip(vals.get((arm, "steer to self", "victim_right_no_prior"),
                                              []),
                                     vals.get((arm, "steer to self", "best_baseline"), []),
                                     strict=False)])
             for arm in arms]
    r2, t2 = judge("lies that make a colluder pilot (N-2 colluders)", given, cells,
                   e7_collusion.MARGIN, (-1.0, 1.0), "excess of trits right")
    notes = " ".join([
        f"N = {n}, victim = worker 0, honest peer = worker 1, colluders 2..{n - 1};",
        f"{rounds} epochs per run, sizes inflated x{SIZE_FACTOR} where a strategy says so.",
        "`residual_*`: ||P^t - Q_v|| / ||Q_v - P^{t-1}|| over the epochs the colluders take",
        "as the victim's: `no_prior` (the mean over both clusters of epochs: a fair guess,",
        "the verdict's statistic), `class_prior` (the cluster chosen by the victim's most",
        "frequent class), `informed` (the epochs where the victim truly was the pilot: an",
        "upper bound, not an attack). `victim_right_*` under steer to self: E7's blind",
        "decoding (`best_baseline`: the better of the victim's most common trit and the",
        "colluders' majority vote). `accuracy_drop`: honest accuracy minus the accuracy",
        "under the lie, per seed."])
    return Result("E8", TITLE, CLAIM, CRITERION, rows, overall([r1, r2]), notes,
                  regimes=[r1, r2], tests=t1 + t2)
