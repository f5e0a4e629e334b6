"""E9: defences inside FEDF — their accuracy cost, the attacks they stop, and a tight audit.

Arms: FEDF (d = +1) without defence; with Gaussian noise on the pilot's model only
(:class:`defences.PilotNoise`); with worker-level DP (:class:`defences.WorkerDP`:
the update Q - P^{t-1} clipped and noised, T_k and the pilot's model derived from the
noised model, the cost clipped and noised); with example-level DP-SGD in the local
training (:class:`defences.DPSGD`); each DP arm at epsilon in ``DP_EPS`` (inf:
clipping only), delta = ``opts.delta``, calibrated for the rounds run. FedAvg runs
alongside, plain and with the same worker-level DP.

Clipping bounds come from public data, not from the workers: the update clip is the
median ||Q - P^0|| of shadow workers trained on auxiliary samples with the federation's
public recipe (a typical update norm), the per-example clip of DP-SGD the median
per-example gradient norm on auxiliary samples at P^0.

- Accuracy cost: test accuracy of P^R after R rounds (utility at each epsilon).
- Attack success under each defence: E2's class-set F1 (planted 3-class worker,
  mean over rounds) and E4's master agreement score for membership (AUC; not for the
  DP-SGD arms, whose runs are the slow part).
- **Tight audit** (Nasr et al. 2021, "Adversary Instantiation"): a white-box adversary
  instantiates the accountant's own worst-case neighbouring pair for one round of
  worker-level DP. Replace-one neighbours let one sample move the clipped update
  anywhere in the ball of radius C, so the adversary's canary gradient (norm = the
  clip) makes the update ``+C u`` in one world and ``-C u`` in the other (u a Dirac
  direction: one random coordinate), and the reported cost ``cost_clip`` or 0. Both pass through the
  arm's own ``WorkerDP.worker`` (clipping and noise), ``trials`` times per world with
  fresh keys; the score is the likelihood-ratio statistic of the two Gaussian
  channels; the threshold is fixed before the runs (:func:`planned_threshold`, from the
  noise the accountant claims) and :func:`audit.audited_epsilon` bounds epsilon at
  it (Clopper-Pearson, 95 %). The accountant's epsilon of that
  release is the arm's one-round epsilon (the audited arms are calibrated for one
  round). The same adversary against pilot noise and no defence scores the pilot's
  model as sent (noised) and, separately, the ternary (Eq. 4, never noised).
- The weak adversary of the previous audit (an input-space canary: a test image with
  a wrong label, replace-one against an ordinary image) is kept for epsilon in {1, 8}
  to show the gap between the two.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fedf_jax import keys, protocol, worker
from fedf_jax.privacy import audit, defences, stats, views
from fedf_jax.privacy.common import Options, Regime, Result, row
from fedf_jax.privacy.e2_class_leakage import (
    class_scores,
    fed_layout,
    observed_update,
    recovered_set,
    simulate_workers,
)
from fedf_jax.privacy.e4_membership import cosines, sample_directions

TITLE = "Defences: DP (worker and example level), pilot noise: accuracy, attacks, tight audit"
CLAIM = ("Worker-level DP (clip Q - P^{t-1}, Gaussian noise, Q and T from the noised update, "
         "noised cost) bounds what any party learns by the accountant's epsilon, and the "
         "implementation's clipping and noise meet that epsilon; noise on the pilot's model "
         "alone does not protect the ternaries.")
CRITERION = ("Regime 'worker-level DP, one round, white-box worst-case canary': refuted if, "
             "for some epsilon in {1, 8, 50, 200, 1000}, the audited 95 % lower bound "
             "exceeds the accountant's epsilon of the audited one-round release; "
             "inconclusive if the audit is not tight (its bound below half the accountant's "
             "epsilon at epsilon = 1 or 8: it could not have caught a leak); supported "
             "otherwise. Utility (test accuracy at each epsilon, FEDF and FedAvg with "
             "worker-level DP, FEDF with DP-SGD) and the attacks' success under each "
             "defence are reported without a pass mark.")

PILOT_NOISE = 0.02  # std of the pilot-noise defence, per parameter
DP_EPS = (1.0, 8.0, 50.0, 200.0, 1000.0, math.inf)
DP_EPS_QUICK = (1.0, 8.0, math.inf)
AUDIT_EPS = (1.0, 8.0, 50.0, 200.0, 1000.0)  # one-round calibrations audited
TIGHT_AT = (1.0, 8.0)  # the audit must reach half the accountant's epsilon here
ACC_ROUNDS = 10
CANARY_BASE = 8  # the weak audit's worker: samples besides the canary / its replacement
AUDIT_TRIALS = 200_000  # per world, at TIGHT_AT (fewer elsewhere)
AUDIT_TRIALS_OTHER = 40_000
AUDIT_TRIALS_QUICK = 40_000
WEAK_TRIALS = 300
CLIP_SHADOWS = 8
AUDIT_CHUNK = 8192


def arms(eps_grid=DP_EPS, base: str = "fedf+1") -> tuple[str, ...]:
    """The defended FEDF arms, e.g. ``fedf+1+dp8``, ``fedf+1+dpsgd8``."""
    return (base, f"{base}+pilotnoise{PILOT_NOISE:g}",
            *(f"{base}+dp{e:g}" for e in eps_grid),
            *(f"{base}+dpsgd{e:g}" for e in eps_grid))


def public_clips(fed: views.Federation, seed: int) -> tuple[float, float]:
    """(update clip, per-example clip) from public auxiliary data and the reported sizes
    only: the median update norm of ``CLIP_SHADOWS`` shadow workers holding the median
    reported size's number of auxiliary samples, trained from P^0 with the suite's base
    recipe (one local epoch, batch 8) and the geometric mean of the public learning-rate
    range; and the median per-example gradient norm of the auxiliary samples at P^0."""
    rng = np.random.default_rng([seed, 91])
    n = int(np.median(fed.sizes))
    picks = [rng.choice(len(fed.y_aux), min(n, len(fed.y_aux)), replace=False)
             for _ in range(CLIP_SHADOWS)]
    lr = math.sqrt(views.LR_RANGE[0] * views.LR_RANGE[1])
    spec = worker.WorkerSpec(lr=lr, batch_size=8, local_epochs=1)
    q, _ = simulate_workers(fed.model, fed.p0, fed.p0, 1, [fed.x_aux[p] for p in picks],
                            [fed.y_aux[p] for p in picks], (spec,) * CLIP_SHADOWS, seed,
                            fed.beta)
    update_clip = float(np.median(np.linalg.norm(q - fed.p0, axis=1)))
    sub = np.random.default_rng([seed, 92]).choice(len(fed.y_aux), min(256, len(fed.y_aux)),
                                                   replace=False)
    g = np.asarray(sample_directions(fed.model, jnp.asarray(fed.p0), jnp.asarray(fed.x_aux[sub]),
                                     jnp.asarray(fed.y_aux[sub])))
    return update_clip, float(np.median(np.linalg.norm(g, axis=1)))


def _scores(release: Callable, p: jax.Array, q: jax.Array, cost: float, trials: int,
            key: jax.Array, score: Callable) -> np.ndarray:
    """f64[trials] scores of ``release(key, q, p, cost)`` over fresh keys (trial i: key
    ``fold_in(key, i)``), in chunks of one shape."""
    @jax.jit
    def run(start):
        ks = jax.vmap(lambda i: jax.random.fold_in(key, i))(start + jnp.arange(AUDIT_CHUNK))
        return jax.vmap(lambda k: score(*release(k, q, p, jnp.float32(cost))))(ks)

    out = [np.asarray(run(jnp.int32(start)), np.float64)
           for start in range(0, trials, AUDIT_CHUNK)]
    return np.concatenate(out)[:trials]


def planned_threshold(mu: float, trials: int, delta: float, alpha: float = 0.05) -> float:
    """The threshold, fixed before the audit's runs, that maximises the lower bound the
    audit expects if the mechanism is what the accountant claims: scores
    ``N(+mu/2, 1)`` with the canary and ``N(-mu/2, 1)`` without (mu = 1 / z for a
    Gaussian mechanism of multiplier z), the CP bounds taken at the expected counts.
    Chosen without the scores, it keeps :func:`audit.audited_epsilon`'s bound valid
    whatever the implementation does (a wrong implementation only makes it a worse
    choice). Infinite ``mu`` (no noise): 0."""
    if not math.isfinite(mu):
        return 0.0
    from scipy import stats as sps  # noqa: PLC0415 (host-side planning only)

    taus = np.linspace(-mu / 2, mu / 2 + 6.0, 2000)
    tp = np.round(trials * sps.norm.sf(taus - mu / 2))
    fp = np.round(trials * sps.norm.sf(taus + mu / 2))
    tpr_lo = sps.beta.ppf(alpha / 2, np.maximum(tp, 1), trials - tp + 1)
    fpr_hi = sps.beta.ppf(1 - alpha / 2, fp + 1, np.maximum(trials - fp, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = np.where(tp > 0, np.log((tpr_lo - delta) / fpr_hi), -np.inf)
    return float(taus[int(np.nanargmax(bound))])


def tight_audit(defence, p0: np.ndarray, clip: float, trials: int, key: jax.Array,
                delta: float, release: str = "model", alpha: float = 1.0) -> dict[str, float]:
    """The white-box audit of one round (see the module doc).

    Args:
      defence: a WorkerDP, PilotNoise or None (no defence).
      p0: f32[M] the round's P^{t-1}.
      clip: the canary gradient's norm (the arm's clip for WorkerDP).
      trials: runs per world.
      key: the audit's key (``keys.AUDIT``).
      delta: the audited delta.
      release: ``"model"`` (the update as sent: the WorkerDP release, or the pilot's
        model under pilot noise) or ``"ternary"`` (T_k of Eq. 4 from the model as the
        worker holds it before any pilot noise).
      alpha: the ternary's threshold alpha_k (Eq. 4), for ``release="ternary"``.

    Returns:
      :func:`audit.audit_split`'s dict plus ``"trials"``.
    """
    m = p0.shape[0]
    k_dir, k_in, k_out = jax.random.split(key, 3)
    # a Dirac canary (Nasr et al.): the whole gradient on one coordinate, so that it also
    # crosses the ternary's threshold; for isotropic noise any direction is equivalent
    u = jax.nn.one_hot(jax.random.randint(k_dir, (), 0, m), m, dtype=jnp.float32)
    p = jnp.asarray(p0, jnp.float32)
    cost_top = defence.cost_clip if isinstance(defence, defences.WorkerDP) else 1.0
    if isinstance(defence, defences.WorkerDP):
        def rel(k, q, p, c):
            return defence.worker(k, q, p, c)
    elif isinstance(defence, defences.PilotNoise) and release == "model":
        def rel(k, q, p, c):
            return defence.pilot(k, q), c
    else:  # no defence, or the ternary under pilot noise: the worker's own model
        def rel(k, q, p, c):
            del k
            return q, c

    if release == "ternary":
        def score(q, c):
            del c
            t = protocol.ternarize(q, p, p, alpha, 0.2, 1).astype(jnp.float32)
            return jnp.dot(t, u)
    elif isinstance(defence, defences.WorkerDP) and defence.sigma > 0 and defence.cost_sigma > 0:
        s_u, s_c, cc = defence.sigma, defence.cost_sigma, defence.cost_clip
        mu = 1.0 / defence.noise_multiplier

        def score(q, c):
            # the likelihood-ratio statistic of the two Gaussian channels (each standardised
            # channel weighted by the distance of its two means), scaled to unit variance:
            # N(+-mu/2, 1) if the mechanism is what the accountant claims
            a = jnp.dot(q - p, u) / (s_u * defence.clip)
            b = (c - cc / 2) / (s_c * cc)
            return ((2.0 / s_u) * a + (1.0 / s_c) * b) / mu
    else:
        def score(q, c):
            del c
            return jnp.dot(q - p, u)

    s_in = _scores(rel, p, p + clip * u, cost_top, trials, k_in, score)
    s_out = _scores(rel, p, p - clip * u, 0.0, trials, k_out, score)
    if isinstance(defence, defences.WorkerDP) and defence.sigma > 0 and defence.cost_sigma > 0:
        tau = planned_threshold(1.0 / defence.noise_multiplier, trials, delta)
    else:
        tau = 0.0  # no noise claimed: the two worlds' scores are +-clip (or T . u)
    out = audit.audited_epsilon(s_in, s_out, delta, threshold=tau)
    out["trials"] = trials
    return out


def weak_audit(fed: views.Federation, defence, trials: int, seed: int, delta: float
               ) -> dict[str, float]:
    """The input-space canary audit (a weak adversary): the worker's one-round release
    with its data set plus a canary (a test image with a wrong label) against the same
    set plus an ordinary image; score: the projection on the noiseless mean difference
    (estimated on separate runs); bound: :func:`audit.audited_epsilon`."""
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
    q_ref, _ = simulate_workers(fed.model, fed.p0, fed.p0, 1, parts_x, parts_y,
                                (spec,) * (2 * trials), seed + 7919, fed.beta)
    ref = np.asarray(jax.vmap(defences.clip_l2, in_axes=(0, None))(
        jnp.asarray(q_ref - fed.p0), defence.clip))
    w = ref[:trials].mean(axis=0) - ref[trials:].mean(axis=0)
    trial_keys = jax.random.split(keys.stream(seed, keys.AUDIT), 2 * trials)
    q, _ = jax.vmap(defence.worker, in_axes=(0, 0, None, None))(
        trial_keys, jnp.asarray(q), jnp.asarray(fed.p0), jnp.float32(1.0))
    s = (np.asarray(q) - fed.p0).astype(np.float64) @ w.astype(np.float64)
    out = audit.audited_epsilon(s[:trials], s[trials:], delta)
    out["trials"] = trials
    return out


def run(opts: Options, seed0: int = 0, progress: Callable[[str], None] | None = None
        ) -> Result:
    """E9: every defended arm x seeds (accuracy, E2 F1, E4 AUC); the audits once."""
    seeds = range(seed0, seed0 + (1 if opts.quick else opts.seeds))
    rounds = 3 if opts.quick else ACC_ROUNDS
    grid = DP_EPS_QUICK if opts.quick else DP_EPS
    finite = [e for e in grid if math.isfinite(e)]
    arm_list = ("fedavg",) + arms(grid) + tuple(f"fedavg+dp{e:g}" for e in finite)
    cells: dict[tuple[str, str, str], list[float]] = {}
    clips: list[tuple[float, float]] = []

    def add(arm, setting, metric, value):
        cells.setdefault((arm, setting, metric), []).append(value)

    for seed in seeds:
        rng = np.random.default_rng([seed, 90])
        planted = sorted(rng.choice(10, 3, replace=False).tolist())
        fed = views.make_federation(opts, seed, victim_classes=planted)
        clip, example_clip = public_clips(fed, seed)
        clips.append((clip, example_clip))
        layout = fed_layout(fed, opts)
        held = set(np.unique(fed.y_parts[0]).tolist())
        # membership: a 4-sample worker of held-out images, 4 non-members
        base = views.make_federation(opts, seed)
        pick = rng.choice(len(base.y_test), 8, replace=False)
        cand_x, cand_y = base.x_test[pick], base.y_test[pick]
        member = np.arange(8) < 4
        fed_mi = views.make_federation(opts, seed, victim_data=(cand_x[member], cand_y[member]))
        recipes = [(len(y), s.batch_size, s.local_epochs)
                   for y, s in zip(fed.y_parts, fed.specs, strict=True)]
        for arm in arm_list:
            defence = defences.from_arm(arm, rounds, opts.delta, clip=clip, fed=fed,
                                        example_clip=example_clip)
            seen = views.run_arm(fed, arm, rounds, seed, defence=defence)
            setting = f"R={rounds}"
            add(arm, setting, "test_accuracy", views.evaluate(fed, seen[-1].p_new)[1])
            f1 = [stats.set_f1(held, recovered_set(class_scores(observed_update(v, 0), layout)))
                  for v in seen]
            add(arm, setting, "e2_class_f1", float(np.mean(f1)))
            if isinstance(defence, defences.WorkerDP) and defence.noise_multiplier > 0:
                add(arm, setting, "accountant_eps_all_rounds", defence.epsilon(rounds, opts.delta))
            if isinstance(defence, defences.DPSGD):
                e = defence.epsilon(rounds, opts.delta, recipes)
                if math.isfinite(e):
                    add(arm, setting, "accountant_eps_all_rounds", e)
                continue  # DP-SGD: utility and E2 only (its runs are the slow part)
            mi_def = defences.from_arm(arm, opts.rounds, opts.delta, clip=clip, fed=fed_mi)
            seen_mi = views.run_arm(fed_mi, arm, opts.rounds, seed, defence=mi_def)
            score = np.zeros(8)
            for v in seen_mi:
                d = np.asarray(sample_directions(fed.model, v.p_prev, cand_x, cand_y))
                score += cosines(observed_update(v, 0), d)
            add(arm, f"R={opts.rounds}", "e4_member_auc", stats.roc_auc(member, score))
        if progress:
            progress(f"E9 seed={seed} done (clip {clip:.3g}, example clip {example_clip:.3g})")

    # the audits: once (the worst-case pair does not depend on the workers' data)
    fed = views.make_federation(opts, seed0)
    clip = clips[0][0]
    akey = keys.stream(seed0, keys.AUDIT)
    audit_rows: list[dict] = []

    def audit_row(arm, release, adversary, eps_acc, res):
        audit_rows.append({"arm": arm, "release": release, "adversary": adversary,
                           "accountant_epsilon": eps_acc,
                           "audited_epsilon_lower": res["eps_lb"],
                           "trials_per_world": res.get("trials", res.get("n_eval")),
                           "tpr": res.get("tpr"), "fpr": res.get("fpr"), "auc": res.get("auc")})

    audit_grid = [e for e in AUDIT_EPS if e in finite or not opts.quick]
    for i, eps in enumerate(audit_grid):
        d = defences.worker_dp(eps, 1, opts.delta, clip=clip)
        trials = (AUDIT_TRIALS_QUICK if opts.quick else
                  AUDIT_TRIALS if eps in TIGHT_AT else AUDIT_TRIALS_OTHER)
        res = tight_audit(d, fed.p0, clip, trials, jax.random.fold_in(akey, i), opts.delta)
        audit_row(f"fedf+1+dp{eps:g} (one round)", "update and cost", "white-box canary",
                  d.epsilon(1, opts.delta), res)
        if progress:
            progress(f"E9 audit eps={eps:g}: lower bound {res['eps_lb']:.3g}")
        if eps in TIGHT_AT:
            weak = weak_audit(fed, d, 100 if opts.quick else WEAK_TRIALS, seed0, opts.delta)
            audit_row(f"fedf+1+dp{eps:g} (one round)", "update", "input-space canary (weak)",
                      d.epsilon(1, opts.delta), weak)
    n_other = AUDIT_TRIALS_QUICK if opts.quick else AUDIT_TRIALS_OTHER
    others = [("fedf+1+dpinf", defences.worker_dp(math.inf, 1, opts.delta, clip=clip), "model"),
              (f"fedf+1+pilotnoise{PILOT_NOISE:g}", defences.PilotNoise("pn", PILOT_NOISE),
               "model"),
              (f"fedf+1+pilotnoise{PILOT_NOISE:g}", defences.PilotNoise("pn", PILOT_NOISE),
               "ternary"),
              ("fedf+1", None, "model")]
    for j, (arm, d, release) in enumerate(others):
        res = tight_audit(d, fed.p0, clip, n_other, jax.random.fold_in(akey, 100 + j),
                          opts.delta, release=release, alpha=fed.specs[0].lr)
        audit_row(arm, "pilot's model as sent" if release == "model" and d is not None
                  and not isinstance(d, defences.WorkerDP) else
                  ("ternary T_k" if release == "ternary" else "update"),
                  "white-box canary", math.inf, res)
    rows = [row(arm, setting, metric, vals) for (arm, setting, metric), vals in cells.items()]
    for a in audit_rows:
        setting = f"one round, {a['adversary']}, {a['release']}"
        rows.append(row(a["arm"], setting, "audited_eps_lb", [a["audited_epsilon_lower"]]))
        if math.isfinite(a["accountant_epsilon"]):
            rows.append(row(a["arm"], setting, "accountant_eps", [a["accountant_epsilon"]]))
    regime = _verdict(audit_rows)
    cap = math.log(n_other / 3.7)
    notes = " ".join([
        regime.reason,
        f"Clips from public data: update clip {np.mean([c for c, _ in clips]):.3g} (mean over "
        f"seeds of the median shadow update norm), DP-SGD per-example clip "
        f"{np.mean([c for _, c in clips]):.3g}.",
        _utility_note(cells, rounds, grid),
        "Audit: once, on seed 0's P^0 (the worst-case pair does not depend on the data);",
        f"{AUDIT_TRIALS} runs per world at epsilon 1 and 8, {AUDIT_TRIALS_OTHER} elsewhere",
        f"({AUDIT_TRIALS_QUICK} in a quick run); the threshold is planned before the runs.",
        "With n runs per world no bound can exceed about log(n / 3.7) (a perfectly",
        f"separated audit), e.g. {cap:.1f} for {n_other}: the rows with infinite",
        "accountant epsilon (no noise) sit at that cap. Accountant epsilons assume",
        "replace-one neighbouring local data sets (update sensitivity 2 clip, cost",
        "sensitivity cost_clip); the audited arms are calibrated for one round, the",
        f"utility arms for {rounds} rounds (accuracy, E2) and {opts.rounds} rounds (E4).",
        "DP-SGD's accountant is dp-accounting's RDP accountant (Poisson sampling q = B / n_k,",
        "E ceil(n_k / B) steps a round, plus the cost's Gaussian); its arms are not attacked",
        "with E4 (slow)."])
    return Result("E9", TITLE, CLAIM, CRITERION, rows, regime.verdict, notes,
                  extra={"audit_rows": audit_rows, "rounds": rounds,
                         "clips": [list(c) for c in clips]},
                  regimes=[regime])


def _utility_note(cells, rounds: int, grid) -> str:
    """One sentence: test accuracy of each DP family at each epsilon."""
    acc = {a: float(np.mean(v)) for (a, _, m), v in cells.items() if m == "test_accuracy"}
    parts = []
    for e in grid:
        tag = f"{e:g}"
        parts.append(f"eps {tag}: FEDF+DP {acc.get('fedf+1+dp' + tag, math.nan):.2f}, "
                     f"FedAvg+DP {acc.get('fedavg+dp' + tag, math.nan):.2f}, "
                     f"FEDF+DP-SGD {acc.get('fedf+1+dpsgd' + tag, math.nan):.2f}")
    return (f"Test accuracy after {rounds} rounds (plain FEDF "
            f"{acc.get('fedf+1', math.nan):.2f}, FedAvg {acc.get('fedavg', math.nan):.2f}): "
            + "; ".join(parts) + ".")


def _verdict(audit_rows: list[dict]) -> Regime:
    """Applies :data:`CRITERION` to the white-box audits of the worker-DP arms."""
    name = "worker-level DP, one round"
    given = ("white-box: the canary gradient (norm = clip), both worlds' updates and costs, "
             "the defence's code; not the noise")
    dp = [a for a in audit_rows if a["adversary"] == "white-box canary"
          and math.isfinite(a["accountant_epsilon"])]
    over = [a for a in dp if a["audited_epsilon_lower"] > a["accountant_epsilon"]]
    if over:
        return Regime(name, given, "refuted", "Refuted: " + "; ".join(
            f"{a['arm']}: audited {a['audited_epsilon_lower']:.3g} > accountant "
            f"{a['accountant_epsilon']:.3g}" for a in over) + ".")
    loose = [a for a in dp if any(a["arm"].startswith(f"fedf+1+dp{e:g} ") for e in TIGHT_AT)
             and a["audited_epsilon_lower"] < a["accountant_epsilon"] / 2]
    if loose or not dp:
        return Regime(name, given, "inconclusive",
                      "Inconclusive: the audit is not tight (" + "; ".join(
                          f"{a['arm']}: {a['audited_epsilon_lower']:.3g} < half of "
                          f"{a['accountant_epsilon']:.3g}" for a in loose) + ").")
    ratios = ", ".join(f"{a['arm'].split()[0]} {a['audited_epsilon_lower']:.3g} of "
                       f"{a['accountant_epsilon']:.3g}" for a in dp)
    return Regime(name, given, "supported",
                  f"Supported: every audited lower bound is below its accountant's epsilon and "
                  f"the audit is tight at epsilon 1 and 8 ({ratios}).")
