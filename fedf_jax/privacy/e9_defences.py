"""E9: defences inside FEDF — their accuracy cost, the attacks they stop, and an audit.

Arms: FEDF (d = +1) without defence, with Gaussian noise on the pilot's model
only (:class:`defences.PilotNoise`), and with worker-level DP
(:class:`defences.WorkerDP`) at epsilon in {1, 8, inf} (inf: clipping only),
delta = ``opts.delta``, calibrated for the rounds run. FedAvg runs alongside
as the accuracy reference.

- Accuracy cost: test accuracy of P^R after R rounds.
- Attack success under each defence: E2's class-set F1 (planted 3-class worker,
  mean over rounds) and E4's master agreement score for membership (AUC).
- Audit with canaries (Jagielski et al. 2020): the attacked worker's one-round
  release is run many times with its data set plus a canary (a test image with a
  wrong label) and with its data set plus an ordinary image instead (replace-one
  neighbours); the score is the projection of the released update on the
  noiseless mean difference between the two (estimated on separate runs), the
  likelihood-ratio direction for Gaussian noise. :func:`defences.audited_epsilon` turns the
  two score samples into a lower bound on epsilon (Clopper-Pearson, 95 %),
  stated next to the accountant's epsilon of one round. The audit scores the
  model the worker would send as pilot; T_k is computed from that same model, so
  it can leak no more.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fedf_jax import keys
from fedf_jax.privacy import defences, stats, views
from fedf_jax.privacy.common import Options, Result, Row, row
from fedf_jax.privacy.e2_class_leakage import (
    class_scores,
    fed_layout,
    observed_update,
    recovered_set,
    simulate_workers,
)
from fedf_jax.privacy.e4_membership import cosines, sample_directions

TITLE = "Defences: pilot noise and worker-level DP (accuracy, attacks, audit)"
CLAIM = ("Worker-level DP (clip Q - P^{t-1}, Gaussian noise, Q and T from the noised update, "
         "noised cost) bounds what any party learns by the accountant's epsilon; noise on the "
         "pilot's model alone does not protect the ternaries.")
CRITERION = ("Refuted if, for a worker-DP arm, the audited epsilon lower bound (95 % "
             "Clopper-Pearson) exceeds the accountant's epsilon for the audited release. "
             "Supported otherwise; the accuracy cost and the attacks' success are reported "
             "next to it (no pass mark).")

PILOT_NOISE = 0.02  # std of the pilot-noise defence, per parameter
DP_EPS = (1.0, 8.0, math.inf)
# FedAvg with the same worker-level DP: is the accuracy cost FEDF's (one noised model
# becomes P^t) or DP's (FedAvg averages N noised models)?
FEDAVG_DP = tuple(f"fedavg+dp{e:g}" for e in DP_EPS if math.isfinite(e))
ACC_ROUNDS = 10
CANARY_BASE = 8  # the audited worker's samples besides the canary / its replacement


def arms(base: str = "fedf+1") -> tuple[str, ...]:
    """The defended arms, e.g. ``fedf+1+dp8``."""
    return (base, f"{base}+pilotnoise{PILOT_NOISE:g}",
            *(f"{base}+dp{e:g}" for e in DP_EPS))


def audit(fed: views.Federation, defence, trials: int, seed: int, delta: float
          ) -> dict[str, float]:
    """Canary audit of one worker's one-round release under ``defence`` (None: none).

    Returns:
      ``defences.audited_epsilon``'s dict plus ``"eps_accountant"`` (one round).
    """
    rng = np.random.default_rng([seed, 9])
    pick = rng.choice(len(fed.y_test), CANARY_BASE + 2, replace=False)
    x, y = fed.x_test[pick], fed.y_test[pick]
    base_x, base_y = x[:CANARY_BASE], y[:CANARY_BASE]
    canary_x, canary_y = x[CANARY_BASE:CANARY_BASE + 1], (y[CANARY_BASE:CANARY_BASE + 1] + 1) % 10
    other_x, other_y = x[CANARY_BASE + 1:], y[CANARY_BASE + 1:]
    parts_x = ([np.concatenate([base_x, canary_x])] * trials
               + [np.concatenate([base_x, other_x])] * trials)
    parts_y = ([np.concatenate([base_y, canary_y])] * trials
               + [np.concatenate([base_y, other_y])] * trials)
    spec = fed.specs[0]
    q, _ = simulate_workers(fed.model, fed.p0, fed.p0, 1, parts_x, parts_y,
                            (spec,) * (2 * trials), seed, fed.beta)
    # the test direction: the mean difference of the release with and without the canary
    # before any noise (the likelihood-ratio direction for Gaussian noise), estimated on
    # separate runs so the scored runs are not used to choose it
    q_ref, _ = simulate_workers(fed.model, fed.p0, fed.p0, 1, parts_x, parts_y,
                                (spec,) * (2 * trials), seed + 7919, fed.beta)
    ref = q_ref - fed.p0
    if isinstance(defence, defences.WorkerDP):
        ref = np.asarray(jax.vmap(defences.clip_l2, in_axes=(0, None))(jnp.asarray(ref),
                                                                        defence.clip))
    w = ref[:trials].mean(axis=0) - ref[trials:].mean(axis=0)
    if defence is not None:
        trial_keys = jax.random.split(keys.stream(seed, keys.AUDIT), 2 * trials)
        q, _ = jax.vmap(defence.worker, in_axes=(0, 0, None, None))(
            trial_keys, jnp.asarray(q), jnp.asarray(fed.p0), jnp.float32(1.0))
        q = np.asarray(q)
    s = (q - fed.p0).astype(np.float64) @ w.astype(np.float64)
    out = defences.audited_epsilon(s[:trials], s[trials:], delta)
    eps = math.inf
    if isinstance(defence, defences.WorkerDP):
        eps = defence.epsilon(1, delta)
    out["eps_accountant"] = eps
    return out


def run(opts: Options, seed0: int = 0, progress: Callable[[str], None] | None = None
        ) -> Result:
    """E9: every defended arm x seeds; accuracy, E2 F1, E4 AUC, canary audit."""
    seeds = range(seed0, seed0 + (1 if opts.quick else opts.seeds))
    rounds = 3 if opts.quick else ACC_ROUNDS
    trials = 100 if opts.quick else 400
    arm_list = ("fedavg",) + arms() + FEDAVG_DP
    cells: dict[tuple[str, str, str], list[float]] = {}
    audits: dict[str, list[dict]] = {}

    def add(arm, setting, metric, value):
        cells.setdefault((arm, setting, metric), []).append(value)

    for seed in seeds:
        rng = np.random.default_rng([seed, 90])
        planted = sorted(rng.choice(10, 3, replace=False).tolist())
        fed = views.make_federation(opts, seed, victim_classes=planted)
        layout = fed_layout(fed, opts)
        held = set(np.unique(fed.y_parts[0]).tolist())
        # membership: a 4-sample worker of held-out images, 4 non-members
        base = views.make_federation(opts, seed)
        pick = rng.choice(len(base.y_test), 8, replace=False)
        cand_x, cand_y = base.x_test[pick], base.y_test[pick]
        member = np.arange(8) < 4
        fed_mi = views.make_federation(opts, seed, victim_data=(cand_x[member], cand_y[member]))
        for arm in arm_list:
            defence = defences.from_arm(arm, rounds, opts.delta)
            seen = views.run_arm(fed, arm, rounds, seed, defence=defence)
            add(arm, f"R={rounds}", "test_accuracy", views.evaluate(fed, seen[-1].p_new)[1])
            f1 = [stats.set_f1(held, recovered_set(class_scores(observed_update(v, 0), layout)))
                  for v in seen]
            add(arm, f"R={rounds}", "e2_class_f1", float(np.mean(f1)))
            seen_mi = views.run_arm(fed_mi, arm, opts.rounds, seed,
                                    defence=defences.from_arm(arm, opts.rounds, opts.delta))
            score = np.zeros(8)
            for v in seen_mi:
                d = np.asarray(sample_directions(fed.model, v.p_prev, cand_x, cand_y))
                score += cosines(observed_update(v, 0), d)
            add(arm, f"R={opts.rounds}", "e4_member_auc", stats.roc_auc(member, score))
            if not arm.startswith("fedavg"):  # FedAvg+DP releases the same noised update
                a = audit(fed, defence, trials, seed, opts.delta)
                audits.setdefault(arm, []).append(a)
                add(arm, "one round", "audited_eps_lb", a["eps_lb"])
                if math.isfinite(a["eps_accountant"]):  # rows keep finite values only
                    add(arm, "one round", "accountant_eps", a["eps_accountant"])
            if isinstance(defence, defences.WorkerDP) and defence.noise_multiplier > 0:
                add(arm, f"R={rounds}", "accountant_eps_all_rounds",
                    defence.epsilon(rounds, opts.delta))
        if progress:
            progress(f"E9 seed={seed} done")
    rows = [row(arm, setting, metric, vals) for (arm, setting, metric), vals in cells.items()]
    verdict, notes = _verdict(rows)
    notes += _fedavg_dp_note(rows)
    notes += (" The accountant's epsilon is inf (no row) for FEDF without defence, with pilot "
              "noise and with clipping only (dpinf). The fedavg+dp arms apply the same "
              "worker-level DP to every FedAvg worker; their release is the audited one of "
              "the FEDF DP arm at the same epsilon (not audited again).")
    notes += (f" Audit: {trials} runs with and {trials} without the canary per seed; the "
              "largest bound CP intervals allow with this many runs is about "
              f"{math.log(trials / 3.7):.1f}. Accountant epsilons assume replace-one "
              "neighbouring local data sets (update sensitivity 2 clip); the DP arms are "
              f"calibrated for {rounds} rounds (accuracy, E2) and {opts.rounds} rounds (E4).")
    return Result("E9", TITLE, CLAIM, CRITERION, rows, verdict, notes,
                  extra={"audits": {k: v for k, v in audits.items()}, "rounds": rounds,
                         "trials": trials})


def _fedavg_dp_note(rows: list[Row]) -> str:
    """One sentence: test accuracy of FEDF and FedAvg under worker DP at each epsilon."""
    acc = {r.arm: r.mean for r in rows if r.metric == "test_accuracy"}
    parts = [f"eps {a[len('fedavg+dp'):]}: FEDF {acc.get('fedf+1' + a[6:], math.nan):.3f}, "
             f"FedAvg {acc[a]:.3f}" for a in FEDAVG_DP if a in acc]
    if not parts:
        return ""
    return (" Test accuracy under worker DP, FEDF vs FedAvg (same clip and noise per worker): "
            + "; ".join(parts) + ".")


def _verdict(rows: list[Row]) -> tuple[str, str]:
    by = {(r.arm, r.metric): r for r in rows}
    bad = []
    for (arm, metric), r in by.items():
        if metric == "audited_eps_lb" and (arm, "accountant_eps") in by:
            acc = by[(arm, "accountant_eps")]
            if r.mean > acc.mean:
                bad.append(f"{arm}: audited {r.mean:.2f} > accountant {acc.mean:.2f}")
    if bad:
        return "refuted", "; ".join(bad) + "."
    return "supported", "Every worker-DP arm's audited lower bound is below its accountant's."
