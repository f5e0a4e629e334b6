"""E7: colluding workers recover the victim's messages (Theorem 4), blind.

The attacks live in :mod:`fedf_jax.privacy.collusion`: the colluders pool what they
observe (their own messages and ids, every P^t, the master's public settings, whether
one of them is the pilot) and nothing of the honest workers; N - 1 colluders read the
victim's T_k exactly (honest behaviour) or its model (the paper's attack); N - 2
colluders decode the two honest ternaries blind, then guess which is the victim's.
Worker 0 is the victim; scoring against the truth happens here, outside the attacks.

Scores: ``pair_right`` (the unordered pair: the better of the two labellings),
``victim_right_no_prior``, ``victim_right_class_prior`` (blind), and, as an upper
bound only, ``victim_right_informed`` (the previous attack, given the honest sizes
and which worker is the victim). Baselines: ``constant_guess`` (the victim's most
common trit value: an oracle constant) and ``own_vote_guess`` (the majority of the
colluders' own trits per coordinate: what they would guess without the honest
workers' messages).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedf_jax.privacy import collusion, e1_inversion, metrics, views
from fedf_jax.privacy.common import Options, Result, judge, overall, row
from fedf_jax.privacy.e2_class_leakage import fed_layout

TITLE = "Colluding workers recover the victim's ternary vector or its model (blind)"
CLAIM = ("Theorem 4: FEDF preserves a worker's privacy against up to N-2 colluding workers "
         "(and, as the paper admits, not against N-1).")
CRITERION = ("Per regime (N-2 colluders; the two honest workers with unequal sizes, or "
             "equal sizes), the family of cells arm x {t=1, t>=2}; per seed, the share of "
             "the victim's trits that blind colluders without side knowledge get right "
             "(expected over their guess of which honest worker is the victim) minus the "
             "better of two baselines (the victim's most common trit; the colluders' own "
             "majority vote). Refuted if a cell's one-sided t-test is rejected after Holm "
             "(family-wise 0.05) with a mean excess >= 0.05; supported if every cell's 95 % "
             "upper bound of the excess is below 0.05; inconclusive otherwise. Blind "
             "attackers with a stated prior (the victim's most frequent class) and the "
             "informed attacker (given the honest sizes and the victim's identity) are "
             "reported, not judged. (N-1: exact recovery of T_k and of Q_k is expected, the "
             "paper's own admitted break; it is checked, not a criterion.)")

MARGIN = 0.05
ROUNDS = 6  # epochs per run (more colluder-pilot epochs per seed)


def _t_label(epoch: int) -> str:
    return "t=1" if epoch == 1 else "t>=2"


def _arms(opts: Options) -> list[str]:
    return [a for a in opts.arms if a.startswith("fedf")] or ["fedf+1"]


def run(opts: Options, seed0: int = 0, progress: Callable[[str], None] | None = None
        ) -> Result:
    """E7 on the FEDF arms: N-1 honest-but-pooling, N-1 paper attack, N-2 blind (equal and
    unequal honest sizes), with the informed decode as an upper bound."""
    n = opts.workers
    if n < 4:
        raise ValueError(f"`workers` (={n}) must be >= 4 for E7 (a victim, an honest peer, "
                         f"two colluders).")
    rounds = 3 if opts.quick else max(opts.rounds, ROUNDS)
    # per (arm, setting, metric): per seed, the values of its epochs (averaged per seed)
    per_seed: dict[tuple[str, str, str], dict[int, list[float]]] = {}

    def put(arm, setting, metric, seed, value):
        per_seed.setdefault((arm, setting, metric), {}).setdefault(seed, []).append(float(value))

    for arm in _arms(opts):
        d = -1 if arm.startswith("fedf-1") else 1
        for s in range(opts.seeds):
            seed = seed0 + s
            # N - 1, honest behaviour: a colluder is pilot unless the victim is
            fed = views.make_federation(opts, seed)
            cols = list(range(1, n))
            for v in views.run_arm(fed, arm, rounds, seed):
                if v.pilot in cols:
                    cv = collusion.observe(v, fed, cols, d)
                    t_hat, s_hat = collusion.recover_victim_ternary(cv)
                    st = f"N-1 honest {_t_label(v.epoch)}"
                    put(arm, st, "trits_right", seed, np.mean(t_hat == v.ternary[0]))
                    put(arm, st, "identifiable", seed, collusion.identifiable(v, fed, 0, d).mean())
                    put(arm, st, "size_right", seed, s_hat == v.sizes[0])
            # N - 1, the paper's attack on a 1-sample victim
            fed1 = views.make_federation(opts, seed, victim_size=1)
            layers = e1_inversion.layers_of(fed1)
            for v in views.run_arm(fed1, arm, rounds, seed, report=collusion.paper_attack(cols)):
                st = f"N-1 paper attack {_t_label(v.epoch)}"
                put(arm, st, "victim_pilot", seed, v.pilot == 0)
                if v.pilot == 0:
                    put(arm, st, "q_max_abs_err", seed, np.abs(v.p_new - v.q_sent[0]).max())
                    if layers is not None:
                        rec = e1_inversion.analytic_inversion(
                            v.p_new.astype(np.float64) - v.p_prev, layers["first"], 1,
                            fed1.x_parts[0].shape[1:])
                        put(arm, st, "victim_psnr_db", seed,
                            metrics.psnr(rec, fed1.x_parts[0]).mean())
            # N - 2: honest workers 0 (victim) and 1, colluders 2..N-1, blind
            cols2 = list(range(2, n))
            for name, equal in (("unequal sizes", False), ("equal sizes", True)):
                fed2 = views.make_federation(opts, seed)
                if equal:  # the victim and the honest peer hold as many samples
                    m = min(len(fed2.y_parts[0]), len(fed2.y_parts[1]))
                    fed2 = fed2._replace(x_parts=[fed2.x_parts[0][:m], fed2.x_parts[1][:m],
                                                  *fed2.x_parts[2:]],
                                         y_parts=[fed2.y_parts[0][:m], fed2.y_parts[1][:m],
                                                  *fed2.y_parts[2:]])
                layout = fed_layout(fed2, opts)
                known = int(np.bincount(fed2.y_parts[0]).argmax())  # the stated prior
                rv = [v for v in views.run_arm(fed2, arm, rounds, seed) if v.pilot in cols2]
                cvs = [collusion.observe(v, fed2, cols2, d) for v in rv]
                truth = [(v.ternary[0], v.ternary[1]) for v in rv]
                for metric, pairs in collusion.blind_scores(cvs, truth, layout, known).items():
                    for epoch, value in pairs:
                        st = f"N-2 {name}" if metric == "attribution_right" else \
                            f"N-2 {name} {_t_label(epoch)}"
                        put(arm, st, metric, seed, value)
                for v, cv in zip(rv, cvs, strict=True):
                    st = f"N-2 {name} {_t_label(v.epoch)}"
                    tv = v.ternary[0]
                    t_inf, amb = collusion.decode_two_informed(v, fed2, 0, 1, cols2, d)
                    put(arm, st, "victim_right_informed", seed, np.mean(t_inf == tv))
                    put(arm, st, "ambiguous", seed, amb.mean())
                    _, counts = np.unique(tv, return_counts=True)
                    put(arm, st, "constant_guess", seed, counts.max() / tv.size)
                    put(arm, st, "own_vote_guess", seed, np.mean(collusion.own_vote(cv) == tv))
                    x, y = collusion.search_two_sizes(cv)
                    put(arm, st, "sizes_found", seed,
                        sorted((x, y)) == sorted(v.sizes[:2].tolist()))
            if progress:
                progress(f"E7 {arm} seed {seed} done")
    vals = {k: [float(np.mean(v)) for v in by.values()] for k, by in per_seed.items()}
    rows = [row(a, st, m, v) for (a, st, m), v in sorted(vals.items())]
    regimes, tests = [], []
    given = ("their own messages and ids, P^{t-2}, P^{t-1}, P^t, alpha0, beta, d, whether "
             "a colluder is pilot; no honest size, message or identity")
    for name in ("unequal sizes", "equal sizes"):
        cells = []
        for arm in _arms(opts):
            for t in ("t=1", "t>=2"):
                st = f"N-2 {name} {t}"
                got = per_seed.get((arm, st, "victim_right_no_prior"), {})
                base = {s: max(np.mean(per_seed[(arm, st, "constant_guess")][s]),
                               np.mean(per_seed[(arm, st, "own_vote_guess")][s]))
                        for s in got}
                cells.append((f"{arm} {t}", [float(np.mean(got[s]) - base[s]) for s in got]))
        regime, t_ = judge(f"N-2 colluders, honest workers of {name}", given, cells, MARGIN,
                           (-1.0, 1.0), "excess of trits right")
        regimes.append(regime)
        tests += t_
    verdict = overall(regimes)
    notes = " ".join([
        f"N = {n} workers, victim = worker 0; N-2: honest peer = worker 1, colluders "
        f"2..{n - 1}; {rounds} epochs per run; values are per-seed means over the epochs of "
        "each setting (t=1, t>=2), the interval is over seeds.",
        "N-2 rows exist only for epochs where a colluder was the pilot. Blind scores: "
        "`pair_right` (the two honest ternaries recovered, up to which is which), "
        "`victim_right_no_prior` (the victim's, expected over a fair guess of which honest "
        "worker is the victim: the verdict's statistic), `victim_right_class_prior` (the "
        "guess made by class signature from one stated fact, the victim's most frequent "
        "class; `attribution_right`: whether that guess picked the victim's slot). "
        "`victim_right_informed` is an upper bound only (honest sizes and the victim's "
        "identity given). `sizes_found`: the unordered honest sizes found from the "
        "messages in that epoch. Baselines: `constant_guess` (the victim's most common "
        "trit), `own_vote_guess` (the colluders' majority trit).",
        "N-1 honest: S_victim found by integer search (`size_right`); `identifiable`: the "
        "share of coordinates where float32 rounding left the trit recoverable at all. N-1 "
        "paper attack: colluders report growing costs and send P^{t-1}; `q_max_abs_err` = "
        "max |P^t - Q_victim|, `victim_psnr_db` = the analytic first-layer inversion of "
        "P^t - P^{t-1} for a 1-sample victim."])
    return Result("E7", TITLE, CLAIM, CRITERION, rows, verdict, notes, regimes=regimes,
                  tests=tests)
