"""E6: an honest-but-curious worker reads the global steps (Theorem 3).

Every worker receives P^{t-1} and P^t, so it sees the global step P^t - P^{t-1}.
In FEDF that step is the pilot's whole local update plus the weighted ternary votes,
Eq. (3): at t = 1 the votes weigh alpha0 p_k per coordinate, small next to a local
update, so a worker that is not the pilot sees nearly the pilot's Q_{k*} - P^{t-1}
(the case the proof of Theorem 3 calls unlikely). In FedAvg the step is the
size-weighted mean of all updates.

The curious worker (the last one) removes what it knows of its own contribution
(FedAvg: p_c (Q_c - P^{t-1}); FEDF: d c_t p_c T_c s; p_c = 1/N, every worker holding
n_k samples) and runs E1's analytic first-layer inversion on the rest, keeping as
many images as the other workers hold together, and reads the classes whose output
bias rose. Scores, against the other workers' data:

- ``recovered``: share of their samples matched by an output image at PSNR >= 30 dB;
- ``recovered_best_worker``: the same share for the most exposed worker;
- ``class_f1``: F1 of the class set read off the output bias against the classes the
  other workers hold (``class_f1_chance``: a random set of the same size).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedf_jax import protocol
from fedf_jax.privacy import e1_inversion, metrics, stats, views
from fedf_jax.privacy.common import Options, Result, conclude, mean_ci95, row

TITLE = "A curious worker inverts the global step P^t - P^{t-1}"
CLAIM = ("Theorem 3: an honest-but-curious worker has no information on the private data of "
         "other workers.")
CRITERION = ("Refuted if, in a FEDF arm, the curious worker recovers (PSNR >= 30 dB) a share of "
             "some other worker's samples whose 95 % interval lies above 0.1, or reads their "
             "class set with an F1 whose 95 % interval lies above chance + 0.2, in some setting. "
             "Supported if recovery is below 0.02 and the F1 within 0.1 of chance everywhere. "
             "Inconclusive otherwise.")

RECOVERED_DB = 30.0


def own_contribution(view: views.RoundView, fed: views.Federation, arm: str, me: int
                     ) -> np.ndarray | None:
    """f64[M] the curious worker's own share of P^t - P^{t-1} as it can compute it (sizes
    taken equal), or None when it is the pilot (its own model is the step)."""
    n = len(fed.specs)
    if arm.startswith("fedf"):
        if view.pilot == me:
            return None
        # Eq. (3) with only its own ternary (and no pilot model): its share of the step.
        rows = np.zeros_like(view.ternary)
        rows[me] = view.ternary[me]
        share = protocol.master_update(
            np.zeros_like(view.p_prev), rows, np.ones(n), view.pilot, view.p_prev,
            view.p_prev2, fed.alpha0, fed.beta, view.epoch,
            direction=-1 if arm.startswith("fedf-1") else 1)
        return np.asarray(share, np.float64)
    if arm.startswith("signfedavg"):
        return fed.alpha0 * view.ternary[me] / n
    return (view.q_true[me].astype(np.float64) - view.p_prev) / n


def attack_step(view: views.RoundView, fed: views.Federation, arm: str, me: int, layers
                ) -> dict[str, float] | None:
    """The curious worker's analytic inversion and class reading of one global step."""
    mine = own_contribution(view, fed, arm, me)
    if mine is None:
        return None
    step = view.p_new.astype(np.float64) - view.p_prev - mine
    others = [k for k in range(len(fed.specs)) if k != me]
    x = np.concatenate([fed.x_parts[k] for k in others])
    y = np.concatenate([fed.y_parts[k] for k in others])
    owner = np.concatenate([np.full(len(fed.y_parts[k]), k) for k in others])
    recon = e1_inversion.analytic_inversion(step, layers["first"], len(y), x.shape[1:])
    idx = metrics.match(recon, x)
    ok = idx >= 0
    hit = np.zeros(len(y), bool)
    hit[ok] = metrics.psnr(recon[idx[ok]], x[ok]) >= RECOVERED_DB
    db = step[layers["out"].bias]
    predicted = np.flatnonzero(db > 0)
    true = np.unique(y)
    n_classes = layers["out"].shape[1]
    chance = (stats.chance_set_f1(n_classes, len(true), len(predicted)) if len(predicted)
              else 0.0)
    return {"recovered": float(hit.mean()),
            "recovered_best_worker": float(max(hit[owner == k].mean() for k in others)),
            "class_f1": stats.set_f1(true, predicted), "class_f1_chance": chance}


def run(opts: Options, seed0: int = 0, progress: Callable[[str], None] | None = None
        ) -> Result:
    """E6 over every arm and n_k in {1, 4, 16} (of opts.n_local)."""
    sizes = [n for n in opts.n_local if 0 < n <= 16] or [1]
    rounds = 1 if opts.quick else opts.rounds
    me = opts.workers - 1
    vals: dict[tuple[str, str, str], list[float]] = {}
    for n in sizes:
        for s in range(opts.seeds):
            seed = seed0 + s
            fed = e1_inversion.cut_to(views.make_federation(opts, seed), n)
            layers = e1_inversion.layers_of(fed)
            if layers is None:
                raise ValueError(f"E6 needs the MLP (data 'digits'); `data` (={opts.data!r}) "
                                 f"uses a model without a dense first layer.")
            for arm in opts.arms:
                for v in views.run_arm(fed, arm, rounds, seed, delta=opts.delta):
                    out = attack_step(v, fed, arm, me, layers)
                    if out is None:
                        continue
                    for metric, value in out.items():
                        st = f"n_k={n} {'t=1' if v.epoch == 1 else 't>=2'}"
                        vals.setdefault((arm, st, metric), []).append(value)
            if progress:
                progress(f"E6 n_k={n} seed {seed} done")
    rows = [row(a, st, m, v) for (a, st, m), v in vals.items()]
    verdict, why = _verdict(vals)
    notes = " ".join([
        f"{why} The curious worker is worker {me}; every worker holds n_k samples;",
        f"an image counts as recovered at PSNR >= {RECOVERED_DB:.0f} dB after a Hungarian",
        "match of the outputs to the other workers' samples. Epochs in which the curious",
        "worker was itself the pilot are left out (it then sees only the votes)."])
    return Result("E6", TITLE, CLAIM, CRITERION, rows, verdict, notes)


def _verdict(vals) -> tuple[str, str]:
    refute, support = [], True
    for (arm, st, metric), v in vals.items():
        if not arm.startswith("fedf") or "+" in arm[6:]:
            continue
        m, lo, _ = mean_ci95(v, metric)
        if metric == "recovered_best_worker":
            if lo > 0.1:
                refute.append(f"{arm} {st}: {m:.0%} of a worker's samples recovered")
            if m >= 0.02:
                support = False
        if metric == "class_f1":
            chance = float(np.mean(vals.get((arm, st, "class_f1_chance"), [np.nan])))
            if lo > chance + 0.2:
                refute.append(f"{arm} {st}: class F1 {m:.2f} vs chance {chance:.2f}")
            if abs(m - chance) > 0.1:
                support = False
    return conclude(refute, support,
                    "Supported: the curious worker learns nothing above chance.",
                    "Inconclusive: some leakage, below the refutation bar.", most=4)
