"""E11: the two-level hierarchy (DESIGN §8): a curious group master and a curious top master.

Six workers in two groups of three (``groups.run_groups``: each group runs kappa FEDF
epochs under its group master from the top's model, then each group master is one
worker of the top level, which runs FEDF over the two groups). The victim is worker 0
of group 0, planted with 3 of the 10 classes (a full share). What each party learns of
its class set (E2's class signature, against a random-ternary control), with and
without the shields:

- **group master, no shield**: the victim's T_k each inner epoch, or its model when it
  is the group's pilot;
- **group master, secure aggregation**: only the group's sum ``sum S_k T_k`` over its
  non-pilot workers (E10's :func:`~fedf_jax.privacy.e10_secure_sum.secure_sum`; a sum
  of two workers when the victim is not the pilot), plus the group pilot's model;
- **top master, no shield**: group 0's message, its ternary T_g (Eq. 4 with alpha0, Eq. 5
  with beta) or, when group 0 is the top's pilot, the group's model Q_g;
- **top master, Paillier**: the groups' sums reach the top encrypted under a key it does
  not hold, so it sees group 0's contribution only when group 0 is its pilot (the
  pilot's model stays in the clear, as with secure aggregation); in the other rounds it
  has nothing and its best guess is the control's.

The class signature of a group-level message mixes the group's three workers over kappa
inner epochs; the victim's classes are its target all the same.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedf_jax.privacy import groups, stats, views
from fedf_jax.privacy.common import Options, Result, judge_families, overall, row
from fedf_jax.privacy.e2_class_leakage import (
    CONTROL_DRAWS,
    class_scores,
    fed_layout,
    observed_update,
    recovered_set,
)
from fedf_jax.privacy.e10_secure_sum import secure_sum, sum_direction

TITLE = "The hierarchy: what a curious group master and top master learn of a worker"
CLAIM = ("DESIGN §8: secure aggregation at the lower layer and Paillier at the upper layer "
         "give input privacy at every level: a group master learns only its group's sum, "
         "the top master only what the pilot group sends in the clear.")
CRITERION = ("Four regimes (group master without and with secure aggregation; top master "
             "without and with Paillier), each a family of cells kappa in {1, 2} x {t=1, "
             "t>=2}; per seed (mean over rounds), the class-set F1 of the victim's classes "
             "from what the party sees minus a random-ternary control, margin 0.2; where "
             "the party sees the victim's or its group's model only in pilot rounds, those "
             "rounds are a second statistic (exposure-weighted: 0 in the others), margin "
             "0.2. Refuted if a cell's one-sided t-test is rejected after Holm (family-wise "
             "0.05 per statistic) with a mean at least the margin; supported if every cell's "
             "95 % upper bound is below it; inconclusive otherwise.")

WORKERS = 6
GROUPS = ((0, 1, 2), (3, 4, 5))
KAPPAS = (1, 2)
MARGIN = 0.2


def run(opts: Options, seed0: int = 0, progress: Callable[[str], None] | None = None
        ) -> Result:
    """E11: FEDF (d = +1) in two levels."""
    import dataclasses  # noqa: PLC0415

    o = dataclasses.replace(opts, workers=WORKERS)
    rounds = max(opts.rounds, 2)
    kappas = (1,) if opts.quick else KAPPAS
    per_seed: dict[tuple[str, str, str], dict[int, list[float]]] = {}

    def put(party, setting, metric, seed, value):
        per_seed.setdefault((party, setting, metric), {}).setdefault(seed, []).append(
            float(value))

    for s in range(opts.seeds):
        seed = seed0 + s
        rng = np.random.default_rng([seed, 110])
        planted = sorted(rng.choice(10, 3, replace=False).tolist())
        fed = views.make_federation(o, seed, victim_classes=planted)
        layout = fed_layout(fed, o)
        held = set(np.unique(fed.y_parts[0]).tolist())
        m = fed.p0.shape[0]

        def f1(update, held=held, layout=layout):
            return stats.set_f1(held, recovered_set(class_scores(update, layout)))

        for kappa in kappas:
            for gr in groups.run_groups(fed, GROUPS, kappa, rounds, seed):
                st = f"kappa={kappa} {'t=1' if gr.epoch == 1 else 't>=2'}"
                ctrl = float(np.mean([f1(rng.integers(-1, 2, m).astype(np.float32))
                                      for _ in range(CONTROL_DRAWS)]))
                put("control", st, "f1_control", seed, ctrl)
                for gv in gr.groups[0]:  # group 0's inner epochs, as its master sees them
                    put("group master", st, "f1_excess_message", seed,
                        f1(observed_update(gv, 0)) - ctrl)
                    exposed = gv.pilot == 0
                    put("group master", st, "exposed", seed, exposed)
                    pilot_excess = (f1(observed_update(gv, 0)) - ctrl) if exposed else 0.0
                    put("group master", st, "f1_excess_pilot_rounds", seed, pilot_excess)
                    if not exposed:  # the victim's trits are inside the sum
                        put("group master + secagg", st, "f1_excess_sum", seed,
                            f1(sum_direction(secure_sum(gv), gv)) - ctrl)
                top = gr.top
                put("top master", st, "f1_excess_message", seed,
                    f1(observed_update(top, 0)) - ctrl)
                exposed = top.pilot == 0
                put("top master", st, "exposed", seed, exposed)
                put("top master + paillier", st, "f1_excess_pilot_rounds", seed,
                    (f1(observed_update(top, 0)) - ctrl) if exposed else 0.0)
        if progress:
            progress(f"E11 seed {seed} done")
    vals = {k: [float(np.mean(v)) for v in by.values()] for k, by in per_seed.items()}
    rows = [row(p, st, mt, v) for (p, st, mt), v in vals.items()]
    settings = [f"kappa={k} {t}" for k in kappas for t in ("t=1", "t>=2")]

    def cells(party, metric):
        return [(f"{party} {st}", vals[(party, st, metric)]) for st in settings
                if (party, st, metric) in vals]

    plan = [
        ("group master, no shield", "the victim's T_k each inner epoch (its model when it "
         "is the group pilot), the group's P^{t-1}, P^{t-2}",
         [("class F1 above the control", cells("group master", "f1_excess_message"))]),
        ("group master, secure aggregation", "the group's secure sum over its non-pilot "
         "workers, the group pilot's model, costs and sizes",
         [("class F1 from the sum above the control", cells("group master + secagg",
                                                            "f1_excess_sum")),
          ("class F1 from the pilot rounds above the control",
           cells("group master", "f1_excess_pilot_rounds"))]),
        ("top master, no shield", "group 0's T_g (its model Q_g when it is the top pilot), "
         "the top's P^{t-1}, P^{t-2}, the groups' costs and sizes",
         [("class F1 above the control", cells("top master", "f1_excess_message"))]),
        ("top master, Paillier", "the pilot group's model only (the other groups' sums "
         "encrypted), the groups' costs and sizes",
         [("class F1 from the pilot rounds above the control",
           cells("top master + paillier", "f1_excess_pilot_rounds"))]),
    ]
    regimes, tests = [], []
    for name, given, families in plan:
        r, t = judge_families(name, given, [(w, c, MARGIN, (-1.0, 1.0)) for w, c in families])
        regimes.append(r)
        tests += t
    notes = " ".join([
        f"N = {WORKERS} workers in groups {[list(g) for g in GROUPS]}; victim = worker 0 "
        f"(planted with 3 classes); FEDF d = +1 at both levels; {rounds} outer epochs of "
        f"kappa in {list(kappas)} inner epochs; values are per-seed means over the rounds "
        "(the group master's over its inner epochs too) of the F1 minus the control's "
        "(`f1_control`): `f1_excess_message` from the party's view without the shield, "
        "`f1_excess_sum` from the group's secure sum (inner epochs the victim was not the "
        "pilot), `f1_excess_pilot_rounds` from the rounds the party received the victim's "
        "(group master) or group 0's (top master) model in the clear, 0 in the others; "
        "`exposed`: the share of epochs it did. "
        "The secure-sum and Paillier views are simulated from the recorded rounds: the "
        "group master keeps only the sum, the top master only the pilot group's model."])
    return Result("E11", TITLE, CLAIM, CRITERION, rows, overall(regimes), notes,
                  regimes=regimes, tests=tests)
