"""E10: the secure-sum master (DESIGN §8, "a shield for each layer").

With secure aggregation (Bonawitz et al. 2017; ``fedf_jax.secure.secagg``) the master
learns only the sum of Eq. (3): the integer ``z = sum_{k != k*} S_k T_k`` when beta is
shared (the pilot submits masked zeros; a worker with a non-finite cost submits
nothing), plus what lies outside the sum: the pilot's model in the clear, every
reported cost and size. This experiment simulates that view from the recorded rounds
(:func:`secure_sum`) without running the cryptography in every round; once per seed
it runs one real round of ``secagg.simulate_round`` on the same rows and checks that
the sum it releases is this one, exactly (``extra["secagg_checked"]``).

Attacks on worker 0 (the victim):

- **class set** (E2's class signature) read off the direction of the sum,
  ``z sign(P^{t-1} - P^{t-2})`` (z at t = 1), against a random-ternary control;
- **membership** (E4's agreement score) of the victim's candidate samples with that
  direction (AUC over its members and as many non-members);
- **the pilot rounds alone**: when the victim is the pilot its model is in the clear;
  the class set read off it (exposure-weighted: 0 in the other rounds);
- **the master and N - 2 colluding workers**: the colluders hand over their T_c, the
  master knows every size and identity, so ``z - sum_c S_c T_c = S_v T_v + S_h T_h``
  (integers) and the victim's trits follow exactly where the nine (T_v, T_h) pairs give
  distinct sums (unequal sizes); where the honest peer is the pilot, ``z - sum_c S_c T_c
  = S_v T_v`` outright;
- **a malicious master** (model inconsistency, after Pasquini et al. 2022): at t >= 2 it
  sends every worker but the victim the model it sent last round, so their step
  ``P^{t-1} - P^{t-2}`` is zero and Eq. (5) gives them T = 0 (computed here with
  ``protocol.ternarize``); the sum is ``S_v T_v`` and the victim's trits are read off.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedf_jax import protocol
from fedf_jax.privacy import stats, views
from fedf_jax.privacy.common import Options, Result, judge, judge_families, overall, row
from fedf_jax.privacy.e2_class_leakage import (
    CONTROL_DRAWS,
    class_scores,
    fed_layout,
    observed_update,
    recovered_set,
)
from fedf_jax.privacy.e4_membership import cosines, sample_directions

TITLE = "The secure-sum master: what the sum and the pilot's model still leak"
CLAIM = ("DESIGN §8: with secure aggregation of the ternaries, the master learns only "
         "sum_{k != k*} S_k T_k and the pilot's model, so nothing about a single non-pilot "
         "worker (Theorem 2 with the shield); with N-2 colluding workers too (Theorem 4).")
CRITERION = ("Three regimes, each a family of FEDF cells arm x {t=1, t>=2}, judged on per-seed "
             "values with Holm (family-wise 0.05 per statistic), refuted if a cell's "
             "one-sided test is rejected with a mean at least the margin, supported if every "
             "cell's 95 % upper bound is below it, inconclusive otherwise. (1) The "
             "honest-but-curious secure-sum master: the victim's class-set F1 from the sum "
             "minus a random-ternary control (margin 0.2); the membership AUC from the sum "
             "minus 0.5 (margin 0.1); the class-set F1 from the victim's model in the rounds "
             "it is the pilot, exposure-weighted, minus the control (margin 0.2). (2) The "
             "master with N-2 colluding workers: the victim's trits right minus the better "
             "of its most common trit and the colluders' majority vote (margin 0.05). (3) A "
             "malicious master (model inconsistency), t >= 2: the same statistic as (2) "
             "(margin 0.05).")

N_PLANTED = 3
MEMBERS = 16  # the membership victim's samples (as many non-members)
REPEATS = 2  # membership victims per seed


def secure_sum(view: views.RoundView, ternary: np.ndarray | None = None) -> np.ndarray:
    """i64[M] what the secure-sum master learns of the ternaries: ``sum S_k T_k`` over the
    workers that are not the pilot and reported a finite cost (Eq. 3's sum, in the
    integers when beta is shared).

    Args:
      view: a recorded FEDF round.
      ternary: i8[N, M] to use instead of the round's (e.g. under model inconsistency).
    """
    t = view.ternary if ternary is None else ternary
    keep = np.isfinite(view.costs) & (np.arange(len(view.sizes)) != view.pilot)
    return (np.asarray(view.sizes, np.int64)[keep, None] * t[keep].astype(np.int64)).sum(axis=0)


def secagg_sum(view: views.RoundView, seed: int) -> np.ndarray:
    """i64[M] the same sum through one real secure-aggregation round
    (``secagg.simulate_round``, u32 arithmetic, threshold N // 2 + 1): every worker
    submits ``S_k T_k`` (the pilot and a worker with a non-finite cost: zeros)."""
    from fedf_jax.secure import secagg  # noqa: PLC0415 (the cryptography, only here)

    n = len(view.sizes)
    keep = np.isfinite(view.costs) & (np.arange(n) != view.pilot)
    rows = np.where(keep[:, None], np.asarray(view.sizes, np.int64)[:, None]
                    * view.ternary.astype(np.int64), 0)
    total, _ = secagg.simulate_round((rows % 2**32).astype(np.uint32), n // 2 + 1, seed=seed,
                                     context=f"epoch {view.epoch}".encode())
    total = total.astype(np.int64)
    return np.where(total >= 2**31, total - 2**32, total)


def sum_direction(z: np.ndarray, view: views.RoundView) -> np.ndarray:
    """f32[M] the weighted sign of Q - P^{t-1} the sum encodes (``protocol.ternary_direction``
    applied to the integer sum)."""
    return np.asarray(protocol.ternary_direction(z.astype(np.float32), view.p_prev,
                                                 view.p_prev2, view.epoch))


def decode_two_known(z2: np.ndarray, s_v: int, s_h: int) -> np.ndarray:
    """i8[M] the victim's trits from ``z2 = S_v T_v + S_h T_h`` (integers, both sizes known):
    the pair that gives z2 (the one with T_v = 0 first when several do; the nearest sum
    when none does)."""
    pairs = [(a, b) for a in (0, -1, 1) for b in (-1, 0, 1)]
    sums = np.array([a * s_v + b * s_h for a, b in pairs], np.int64)
    hit = z2[:, None] == sums[None, :]
    pick = np.where(hit.any(axis=1), np.argmax(hit, axis=1),
                    np.argmin(np.abs(z2[:, None] - sums[None, :]), axis=1))
    return np.array([a for a, _ in pairs], np.int8)[pick]


def inconsistent_ternaries(view: views.RoundView, fed: views.Federation, victim: int
                           ) -> np.ndarray:
    """i8[N, M] every worker's T_k (Eq. 5) when the master sends all but the victim the
    model it sent last round: their P^{t-1} equals their P^{t-2}, so ``protocol.ternarize``
    gives them all-zero ternaries."""
    out = view.ternary.copy()
    for k in range(len(view.sizes)):
        if k != victim:
            out[k] = np.asarray(protocol.ternarize(view.q_sent[k], view.p_prev, view.p_prev,
                                                   fed.specs[k].lr, fed.beta, view.epoch))
    return out


def _best_baseline(tv: np.ndarray, others: np.ndarray) -> float:
    """The better of the victim's most common trit and the others' majority vote."""
    _, counts = np.unique(tv, return_counts=True)
    vote = np.sign(others.astype(np.int64).sum(axis=0))
    return max(counts.max() / tv.size, float(np.mean(vote == tv)))


def _t(epoch: int) -> str:
    return "t=1" if epoch == 1 else "t>=2"


def run(opts: Options, seed0: int = 0, progress: Callable[[str], None] | None = None
        ) -> Result:
    """E10 on the FEDF arms."""
    n = opts.workers
    if n < 4:
        raise ValueError(f"`workers` (={n}) must be >= 4 for E10 (victim, honest peer, two "
                         "colluders).")
    arms = [a for a in opts.arms if a.startswith("fedf") and "+" not in a[6:]] or ["fedf+1"]
    rounds = max(opts.rounds, 2)
    cols = list(range(2, n))
    per_seed: dict[tuple[str, str, str], dict[int, list[float]]] = {}
    checked = []

    def put(arm, setting, metric, seed, value):
        per_seed.setdefault((arm, setting, metric), {}).setdefault(seed, []).append(float(value))

    for s in range(opts.seeds):
        seed = seed0 + s
        rng = np.random.default_rng([seed, 100])
        planted = sorted(rng.choice(10, N_PLANTED, replace=False).tolist())
        fed = views.make_federation(opts, seed, victim_classes=planted)
        layout = fed_layout(fed, opts)
        held = set(np.unique(fed.y_parts[0]).tolist())
        m = fed.p0.shape[0]
        for arm in arms:
            rv = views.run_arm(fed, arm, rounds, seed)
            if arm == arms[0]:
                checked.append(bool(np.array_equal(secagg_sum(rv[-1], seed),
                                                   secure_sum(rv[-1]))))
            for v in rv:
                st = _t(v.epoch)
                ctrl = np.mean([stats.set_f1(held, recovered_set(class_scores(
                    rng.integers(-1, 2, m).astype(np.float32), layout)))
                    for _ in range(CONTROL_DRAWS)])
                put(arm, st, "f1_control", seed, ctrl)
                z = secure_sum(v)
                f1_sum = stats.set_f1(held, recovered_set(class_scores(sum_direction(z, v),
                                                                       layout)))
                put(arm, st, "f1_sum", seed, f1_sum)
                f1_own = stats.set_f1(held, recovered_set(class_scores(observed_update(v, 0),
                                                                       layout)))
                put(arm, st, "class_f1_message", seed, f1_own)  # without the shield (E2)
                exposed = v.pilot == 0
                put(arm, st, "pilot_exposed", seed, exposed)
                put(arm, st, "pilot_f1_excess", seed, (f1_own - ctrl) if exposed else 0.0)
                # the master and N - 2 colluders: honest are the victim (0) and worker 1
                tv = v.ternary[0]
                if v.pilot != 0:
                    z2 = z - secure_sum(v, _only(v.ternary, cols))
                    t_hat = (decode_two_known(z2, int(v.sizes[0]), int(v.sizes[1]))
                             if v.pilot != 1 else
                             np.clip(np.round(z2 / v.sizes[0]), -1, 1).astype(np.int8))
                    put(arm, st, "trits_right", seed, np.mean(t_hat == tv))
                    put(arm, st, "best_baseline", seed, _best_baseline(tv, v.ternary[cols]))
                # a malicious master, t >= 2: model inconsistency
                if v.epoch >= 2 and v.pilot != 0:
                    bad = inconsistent_ternaries(v, fed, 0)
                    z_bad = secure_sum(v, bad)
                    t_hat = np.clip(np.round(z_bad / v.sizes[0]), -1, 1).astype(np.int8)
                    put(arm, "malicious t>=2", "trits_right", seed, np.mean(t_hat == tv))
                    put(arm, "malicious t>=2", "best_baseline", seed,
                        _best_baseline(tv, v.ternary[cols]))
                    put(arm, "malicious t>=2", "others_zero", seed,
                        float(not bad[1:].any()))
        # membership from the sum: the victim holds MEMBERS held-out samples
        for rep in range(REPEATS):
            base = views.make_federation(opts, seed)
            r2 = np.random.default_rng([seed, rep, 101])
            pick = r2.choice(len(base.y_test), 2 * MEMBERS, replace=False)
            cx, cy = base.x_test[pick], base.y_test[pick]
            member = np.arange(2 * MEMBERS) < MEMBERS
            fmi = views.make_federation(opts, seed, victim_data=(cx[member], cy[member]))
            for arm in arms:
                score = {"t=1": np.zeros(2 * MEMBERS), "t>=2": np.zeros(2 * MEMBERS)}
                for v in views.run_arm(fmi, arm, rounds, seed):
                    d = np.asarray(sample_directions(fmi.model, v.p_prev, cx, cy))
                    score[_t(v.epoch)] += cosines(sum_direction(secure_sum(v), v), d)
                for st, sc in score.items():
                    put(arm, st, "auc_sum", seed, stats.roc_auc(member, sc))
        if progress:
            progress(f"E10 seed {seed} done")
    vals = {k: [float(np.mean(v)) for v in by.values()] for k, by in per_seed.items()}
    rows = [row(a, st, mt, v) for (a, st, mt), v in vals.items() if mt != "pilot_f1_excess"]
    regimes = []
    tests = []
    given = ("the secure sum sum_{k != k*} S_k T_k, the pilot's model, every cost and size, "
             "P^{t-1}, P^{t-2}, public data")
    cells_f1, cells_auc, cells_pilot = [], [], []
    for arm in arms:
        for st in ("t=1", "t>=2"):
            by = per_seed.get((arm, st, "f1_sum"), {})
            ctrl = per_seed.get((arm, st, "f1_control"), {})
            cells_f1.append((f"{arm} {st} sum", [np.mean(by[s]) - np.mean(ctrl[s]) for s in by]))
            cells_pilot.append((f"{arm} {st} pilot rounds",
                                vals.get((arm, st, "pilot_f1_excess"), [])))
            cells_auc.append((f"{arm} {st} sum", [a - 0.5 for a in
                                                  vals.get((arm, st, "auc_sum"), [])]))
    r, t = judge_families("honest-but-curious secure-sum master (victim: full share)", given, [
        ("class F1 from the sum above the control", cells_f1, 0.2, (-1.0, 1.0)),
        ("membership AUC from the sum above 0.5", cells_auc, 0.1, (-0.5, 0.5)),
        ("class F1 from the pilot rounds above the control", cells_pilot, 0.2, (-1.0, 1.0))])
    regimes.append(r)
    tests += t
    for name, setting_of, given_ in (
            ("secure-sum master + N-2 colluding workers", lambda st: st,
             given + "; the colluders' own T_c"),
            ("malicious secure-sum master (model inconsistency)", lambda st: "malicious t>=2",
             given + "; it sends the non-victims last round's model")):
        cells = []
        for arm in arms:
            for st in (("t=1", "t>=2") if "colluding" in name else ("t>=2",)):
                key = setting_of(st)
                right = per_seed.get((arm, key, "trits_right"), {})
                base = per_seed.get((arm, key, "best_baseline"), {})
                cells.append((f"{arm} {key}", [np.mean(right[s]) - np.mean(base[s])
                                               for s in right]))
        r, t = judge(name, given_, cells, 0.05, (-1.0, 1.0), "excess of trits right")
        regimes.append(r)
        tests += t
    notes = " ".join([
        f"N = {n}, victim = worker 0 (planted with {N_PLANTED} classes, a full share), honest "
        f"peer = worker 1, colluders 2..{n - 1}; {rounds} rounds; values are per-seed means "
        "over the rounds of a setting. The secure-sum view is simulated from the recorded "
        "rounds without the cryptography; one real secagg.simulate_round per seed gave the "
        f"same sum exactly in {sum(checked)} of {len(checked)} seeds. `class_f1_message`: the "
        "F1 from the victim's own message without the shield (E2's attack), for contrast. "
        "`pilot_exposed`: the share of rounds the victim's model was in the clear. Trits under "
        "collusion exclude the rounds the victim was the pilot (its model is in the clear "
        "then); `others_zero`: the malicious master's inconsistent models made every other "
        "ternary zero. Membership: the victim holds "
        f"{MEMBERS} held-out samples, as many non-members, {REPEATS} victims per seed."])
    return Result("E10", TITLE, CLAIM, CRITERION, rows, overall(regimes), notes,
                  extra={"secagg_checked": checked}, regimes=regimes, tests=tests)


def _only(ternary: np.ndarray, rows: list[int]) -> np.ndarray:
    """i8[N, M] with every row but ``rows`` zeroed."""
    out = np.zeros_like(ternary)
    out[rows] = ternary[rows]
    return out
