"""E8: N - 2 colluders lie about their cost C_k and size S_k (Theorem 4, DESIGN §7).

Both numbers are self-reported and unchecked: the goodness of Eq. (1) and the
weights p_k = S_k / S of Eq. (3) take them at face value. Worker 0 is the victim,
worker 1 the other honest worker, workers 2..N-1 collude. Strategies:

- ``honest``: no lie (the reference for pilot shares and accuracy).
- ``inflate cost``: the paper's attack with N - 2 colluders: ever larger costs (never
  the pilot) and no update (all-zero ternaries). The pilot is the victim or the
  honest peer; when it is the victim, P^t = Q_v + d c_t p_h T_h s, and the
  colluders take P^t as the victim's model.
- ``inflate cost+size``: the same, with reported sizes x10^4: p_h shrinks towards 0,
  so P^t is the victim's model up to a vanishing residual.
- ``steer to self``: sizes x10^4 and costs 1/t (a steady decrease): a colluder is the
  pilot every epoch; the colluders then decode the victim's trits (E7's N - 2
  decoding, sizes known to them) while the honest workers' weights shrink.

Metrics: how often the steering works (victim or colluder is the pilot), the
relative residual ||P^t - Q_v|| / ||Q_v - P^{t-1}|| of the recovered update when
the victim is the pilot, the share of the victim's trits recovered, and the test
accuracy of P^T (its drop against the honest run is the damage).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedf_jax.privacy import e7_collusion, views
from fedf_jax.privacy.common import Options, Result, conclude, mean_ci95, row

TITLE = "Lying colluders steer the pilot choice and the weights"
CLAIM = ("Theorem 4 (with self-reported C_k and S_k): N-2 colluders cannot single out the "
         "victim's data.")
CRITERION = ("Refuted if, under some lying strategy, N-2 colluders recover the victim's update "
             "with a mean relative residual < 0.1 (95 % interval below 0.2) in the epochs it "
             "is the pilot, and the victim is the pilot in a share of epochs whose 95 % "
             "interval lies above 0.2. Supported if no strategy gets a residual below 0.5. "
             "Inconclusive otherwise.")

SIZE_FACTOR = 10_000
ROUNDS = 10  # epochs per run: the pilot shares are per-seed means over them
STRATEGIES = ("honest", "inflate cost", "inflate cost+size", "steer to self")


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
        return e7_collusion.paper_attack(colluders)
    if strategy == "inflate cost+size":
        return e7_collusion.paper_attack(colluders, size_factor=SIZE_FACTOR)
    if strategy == "steer to self":
        return steer_to_self(colluders)
    raise ValueError(f"`strategy` (={strategy!r}) must be one of {STRATEGIES}.")


def relative_residual(view: views.RoundView, victim: int = 0) -> float:
    """||P^t - Q_v|| / ||Q_v - P^{t-1}||: the error of taking P^t as the victim's model."""
    q = view.q_sent[victim].astype(np.float64)
    return float(np.linalg.norm(view.p_new - q) / max(np.linalg.norm(q - view.p_prev), 1e-30))


def run(opts: Options, seed0: int = 0, progress: Callable[[str], None] | None = None
        ) -> Result:
    """E8 on the FEDF arms."""
    n = opts.workers
    if n < 4:
        raise ValueError(f"`workers` (={n}) must be >= 4 for E8 (victim, honest peer and at "
                         f"least two colluders).")
    cols = list(range(2, n))
    rounds = 2 if opts.quick else max(opts.rounds, ROUNDS)
    arms = [a for a in opts.arms if a.startswith("fedf")] or ["fedf+1"]
    vals: dict[tuple[str, str, str], list[float]] = {}

    def put(arm, setting, metric, value):
        vals.setdefault((arm, setting, metric), []).append(float(value))

    for arm in arms:
        d = -1 if arm.startswith("fedf-1") else 1
        for s in range(opts.seeds):
            seed = seed0 + s
            fed = views.make_federation(opts, seed)
            for strategy in STRATEGIES:
                rv = views.run_arm(fed, arm, rounds, seed, report=hook_for(strategy, cols),
                                   delta=opts.delta)
                put(arm, strategy, "victim_pilot", np.mean([v.pilot == 0 for v in rv]))
                put(arm, strategy, "colluder_pilot", np.mean([v.pilot in cols for v in rv]))
                res = [relative_residual(v) for v in rv if v.pilot == 0]
                if res and strategy != "steer to self":
                    put(arm, strategy, "residual", np.mean(res))
                right = [np.mean(e7_collusion.decode_two(v, fed, 0, 1, cols, d)[0]
                                 == v.ternary[0]) for v in rv if v.pilot in cols]
                if right and strategy != "honest":
                    put(arm, strategy, "trits_right", np.mean(right))
                put(arm, strategy, "test_accuracy", views.evaluate(fed, rv[-1].p_new)[1])
            if progress:
                progress(f"E8 {arm} seed {seed} done")
    for arm in arms:  # the damage: accuracy drop against the honest run, per seed
        base = vals[(arm, "honest", "test_accuracy")]
        for strategy in STRATEGIES[1:]:
            acc = vals[(arm, strategy, "test_accuracy")]
            vals[(arm, strategy, "accuracy_drop")] = [b - a for a, b in zip(acc, base,
                                                                            strict=True)]
    rows = [row(a, st, m, v) for (a, st, m), v in vals.items()]
    verdict, why = _verdict(vals, arms)
    notes = " ".join([
        f"{why} N = {n}, victim = worker 0, honest peer = worker 1, colluders 2..{n - 1};",
        f"{rounds} epochs per run, sizes inflated x{SIZE_FACTOR} where a strategy says so.",
        "`residual`: ||P^t - Q_v|| / ||Q_v - P^{t-1}|| over the epochs the victim was the",
        "pilot; `trits_right`: the victim's trits decoded when a colluder was the pilot",
        "(sizes known to the colluders); `accuracy_drop`: honest accuracy minus the",
        "accuracy under the lie, per seed."])
    return Result("E8", TITLE, CLAIM, CRITERION, rows, verdict, notes)


def _verdict(vals, arms) -> tuple[str, str]:
    refute, support = [], True
    for arm in arms:
        for strategy in STRATEGIES[1:]:
            res = vals.get((arm, strategy, "residual"))
            if not res:
                continue
            m, _, hi = mean_ci95(res, "residual")
            pm, plo, _ = mean_ci95(vals[(arm, strategy, "victim_pilot")], "victim_pilot")
            if m < 0.1 and hi < 0.2 and plo > 0.2:
                refute.append(f"{arm} '{strategy}': residual {m:.2g}, victim pilot in "
                              f"{pm:.0%} of epochs")
            if m < 0.5:
                support = False
    return conclude(refute, support,
                    "Supported: no lie recovered the victim's update.",
                    "Inconclusive: partial recovery, below the refutation bar.", most=3)
