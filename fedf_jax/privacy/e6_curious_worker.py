"""E6: an honest-but-curious worker reads the global steps (Theorem 3).

Every worker receives P^{t-1} and P^t, so it sees the global step P^t - P^{t-1}.
In FEDF that step is the pilot's whole local update plus the weighted ternary votes,
Eq. (3): at t = 1 the votes weigh alpha0 p_k per coordinate, small next to a local
update, so a worker that is not the pilot sees nearly the pilot's Q_{k*} - P^{t-1}
(the case the proof of Theorem 3 calls unlikely). In FedAvg the step is the
size-weighted mean of all updates.

The curious worker (:func:`curious`: the last worker, or the one before it in an
epoch where the last one is the pilot, which sees only the votes) removes what it
knows of its own contribution (FedAvg: p_c (Q_c - P^{t-1}); FEDF: d c_t p_c T_c s;
p_c = 1/N: it does not know the others' sizes and takes them equal to its own) and
runs E1's analytic first-layer inversion on the rest, keeping as many images as the
other workers hold together (it knows N and, in the tiny-federation regime, that each
holds n_k samples), and reads the classes whose output bias rose. Scores, against the
other workers' data:

- ``recovered``: share of their samples matched by an output image at PSNR >= 30 dB;
- ``recovered_best_worker``: the same share for the most exposed worker;
- ``victim_recovered``: the same share for worker 0 alone (the victim regime);
- ``class_f1``: F1 of the class set read off the output bias against the classes the
  other workers hold (``class_f1_chance``: a random set of the same size).

Regimes: *every worker n_k* (n_k in {1, 4, 16, 64, all}; the pilot then holds n_k
samples too: the tiny federations of the earlier headline, and up to full shares);
*victim n_k, others full shares* (n_k in {1, 4, 16, 64}; the target is the victim).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedf_jax import protocol
from fedf_jax.privacy import e1_inversion, metrics, stats, views
from fedf_jax.privacy.common import Options, Regime, Result, Test, judge_families, overall, row

TITLE = "A curious worker inverts the global step P^t - P^{t-1}"
CLAIM = ("Theorem 3: an honest-but-curious worker has no information on the private data of "
         "other workers.")
CRITERION = ("Per regime (every worker n_k; victim n_k with the others at full shares), the "
             "family of FEDF cells arm x n_k x {t=1, t>=2}; per seed (means over the epochs), "
             "(a) the share of the most exposed other worker's samples (victim regime: the "
             "victim's) recovered at PSNR >= 30 dB, margin 0.1; (b) every-worker regime: the "
             "class-set F1 of the other workers minus chance, margin 0.2. Refuted if a cell's "
             "one-sided test is rejected after Holm (family-wise 0.05, per statistic) with a "
             "mean at least the margin; supported if every cell's 95 % upper bound is below "
             "its margin; inconclusive otherwise.")

RECOVERED_DB = 30.0
EVERY_SIZES = (1, 4, 16, 64, 0)
VICTIM_SIZES = (1, 4, 16, 64)


def curious(view: views.RoundView, n_workers: int) -> int:
    """The curious worker of an epoch: worker N-1, or N-2 when N-1 is the pilot (the
    pilot's own model is the step, so it learns only the votes). Never worker 0 for
    N >= 3, so the victim is never the attacker."""
    return n_workers - 1 if view.pilot != n_workers - 1 else n_workers - 2


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
    victim = e1_inversion.recovered_share(recon, fed.x_parts[0]) if me != 0 else float("nan")
    db = step[layers["out"].bias]
    predicted = np.flatnonzero(db > 0)
    true = np.unique(y)
    n_classes = layers["out"].shape[1]
    chance = (stats.chance_set_f1(n_classes, len(true), len(predicted)) if len(predicted)
              else 0.0)
    return {"recovered": float(hit.mean()),
            "recovered_best_worker": float(max(hit[owner == k].mean() for k in others)),
            "victim_recovered": victim,
            "class_f1": stats.set_f1(true, predicted), "class_f1_chance": chance}


def run(opts: Options, seed0: int = 0, progress: Callable[[str], None] | None = None
        ) -> Result:
    """E6 over every arm: every worker cut to n_k, and the victim alone cut to n_k."""
    quick_sizes = [n for n in opts.n_local if 0 < n <= 16] or [1]
    every = quick_sizes if opts.quick else list(EVERY_SIZES)
    only = quick_sizes if opts.quick else list(VICTIM_SIZES)
    rounds = 1 if opts.quick else opts.rounds
    per_seed: dict[tuple[str, str, str], dict[int, list[float]]] = {}
    plan = [("every worker", n) for n in every] + [("victim", n) for n in only]
    for kind, n in plan:
        for s in range(opts.seeds):
            seed = seed0 + s
            if kind == "every worker":
                fed = e1_inversion.cut_to(views.make_federation(opts, seed), n)
            else:
                fed = views.make_federation(opts, seed, victim_size=n)
            layers = e1_inversion.layers_of(fed)
            if layers is None:
                raise ValueError(f"E6 needs the MLP (data 'digits'); `data` (={opts.data!r}) "
                                 f"uses a model without a dense first layer.")
            for arm in opts.arms:
                for v in views.run_arm(fed, arm, rounds, seed, delta=opts.delta):
                    out = attack_step(v, fed, arm, curious(v, opts.workers), layers)
                    if out is None:
                        continue
                    st = f"{kind} n_k={n or 'all'} {'t=1' if v.epoch == 1 else 't>=2'}"
                    for metric, value in out.items():
                        if kind == "victim" and metric not in ("victim_recovered",):
                            continue
                        if kind == "every worker" and metric == "victim_recovered":
                            continue
                        per_seed.setdefault((arm, st, metric), {}).setdefault(
                            seed, []).append(value)
            if progress:
                progress(f"E6 {kind} n_k={n or 'all'} seed {seed} done")
    vals = {k: [float(np.mean(v)) for v in by.values()] for k, by in per_seed.items()}
    rows = [row(a, st, m, v) for (a, st, m), v in vals.items()]
    regimes, tests = _verdict(vals)
    notes = " ".join([
        f"The curious worker is worker {opts.workers - 1}, or worker {opts.workers - 2} in "
        f"the epochs worker {opts.workers - 1} is the pilot; values are per-seed means over "
        "the epochs of a setting, intervals over seeds (a pilot sees only the votes, so "
        "the curious worker is never the pilot). An image counts as recovered at PSNR >= "
        f"{RECOVERED_DB:.0f} dB after a Hungarian match of the outputs to the target "
        "samples."])
    return Result("E6", TITLE, CLAIM, CRITERION, rows, overall(regimes), notes,
                  regimes=regimes, tests=tests)


def _verdict(vals) -> tuple[list[Regime], list[Test]]:
    given = ("P^{t-1}, P^t, its own messages, N; the others' sizes taken equal to its own "
             "(unknown to it)")
    fedf = sorted({a for a, _, _ in vals if a.startswith("fedf") and "+" not in a[6:]})
    regimes, tests = [], []
    for kind, metric in (("every worker", "recovered_best_worker"),
                         ("victim", "victim_recovered")):
        sizes = list(dict.fromkeys(st.split()[-2] for a, st, m in vals
                                   if st.startswith(kind) and m == metric))
        for size in sizes:
            labels = [st for a, st, m in vals if a in fedf and m == metric
                      and st.startswith(f"{kind} {size} ")]
            labels = list(dict.fromkeys(labels))
            rec = [(f"{a} {st}", vals[(a, st, metric)]) for a in fedf for st in labels
                   if (a, st, metric) in vals]
            f1 = [(f"{a} {st}", [x - y for x, y in zip(vals[(a, st, "class_f1")],
                                                       vals[(a, st, "class_f1_chance")],
                                                       strict=True)])
                  for a in fedf for st in labels if (a, st, "class_f1") in vals]
            name = (f"every worker {size}" if kind == "every worker"
                    else f"victim {size}, others full shares")
            r, t = judge_families(name, given, [
                ("share recovered", rec, 0.1, (0.0, 1.0)),
                ("class F1 above chance", f1, 0.2, (-1.0, 1.0))])
            regimes.append(r)
            tests += t
    return regimes, tests
