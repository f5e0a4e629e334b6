"""E12: guarding the pilot choice (DESIGN §9) with ``fedf_jax.guard``.

Eq. (1) rewards any large reported cost drop, so a worker that diverges (a huge
learning rate: its cost falls from 1e5 to 1e4) or lies (E8) becomes the pilot and
Eq. (3) makes its model the global one. The guard (``guard.admissible``,
``guard.step_ok``; its rule in that module's docstring) bounds the reported costs and
sizes robustly (median/MAD on the log scale) and checks the pilot's step against the
steps the other workers' ternaries imply. Scenarios, each run with the paper's rule
and with the guard (default knobs, ``guard.DEFAULT``), FEDF d = +1:

- **diverging worker**: 4 workers (iid equal shares, as in the next three), worker 3 at
  learning rate 1e6;
- **one liar**: 5 workers, worker 4 reports sizes x10^4 and costs 1/t (E8's "steer to
  self");
- **N - 2 colluders**: 5 workers, workers 2..4 lie alike (E8's "steer to self"): a
  majority, past the medians' breakdown point;
- **inflate cost** (E8): workers 2..4 report ever larger costs to make the victim the
  pilot: the guard is not built against it (the colluders want not to be the pilot);
- **honest, heterogeneous**: 5 honest workers with unequal shares (label Dirichlet 0.5),
  learning rates log-uniform in [0.01, 0.5], local epochs in {1, 2, 5}, batch sizes in
  {8, 16, 32}, drawn per worker: the false alarms.

``hijack``: the share of epochs whose global model took the bad worker's model (it was
the pilot and its step was not refused). ``false_alarm``: the share of epochs where the
guard changed the paper's pilot or refused its step, in honest runs (``overridden``: the
same share where there is a bad worker). The guard's knobs (``guard.DEFAULT``) were set
on calibration runs with other seeds (1000-1011), not on these. Accuracy and test
loss of P^R with and without the guard; ``diverged``: P^R's test loss above 10 times
P^0's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from fedf_jax import guard, worker
from fedf_jax.privacy import collusion, e8_lying, views
from fedf_jax.privacy.common import Options, Result, judge, row

TITLE = "Guarding the pilot choice: robust bounds on reports and the pilot's step"
CLAIM = ("DESIGN §9: an optional guarded selection (robust bounds on the reported costs, "
         "sizes and the pilot's step) keeps a diverging or lying minority from taking over "
         "Eq. (1), with rare false alarms on honest heterogeneous runs.")
CRITERION = ("Per regime, one cell per run of a seed (the guard on): 'diverging worker', "
             "'one liar' and 'N-2 colluders': the hijack share (epochs whose global model "
             "took the bad worker's model); 'honest, heterogeneous': the false-alarm share. "
             "Margin 0.2 (one epoch in five). The guard fails a regime (refuted) if the "
             "one-sided test of the share > 0 is rejected (family-wise 0.05) with a mean "
             ">= 0.2; it holds (supported) if the 95 % upper bound is below 0.2; "
             "inconclusive otherwise. The N-2 colluders form a majority: the guard is "
             "expected to fail there. Accuracy with and without the guard is reported "
             "without a pass mark.")

ROUNDS = 10
SEEDS_PER_OPTION_SEED = 4  # runs: 4 x opts.seeds (the hijack shares sit at 0 or 1)
DIVERGING_LR = 1e6
MARGIN = 0.2
HETERO_LR = (0.01, 0.5)
HETERO_EPOCHS = (1, 2, 5)
HETERO_BATCHES = (8, 16, 32)
SCENARIOS = ("diverging worker", "one liar", "N-2 colluders", "inflate cost",
             "honest, heterogeneous")


def scenario(opts: Options, name: str, seed: int
             ) -> tuple[views.Federation, views.Report | None, list[int]]:
    """(federation, report hook, bad workers) of a scenario."""
    # the attack scenarios split the data iid (equal shares: one compiled program for
    # every seed); the honest scenario is the heterogeneous one
    if name == "diverging worker":
        fed = views.make_federation(dataclasses.replace(opts, workers=4, partition="iid"), seed)
        specs = list(fed.specs)
        specs[3] = dataclasses.replace(specs[3], lr=DIVERGING_LR)
        return fed._replace(specs=tuple(specs)), None, [3]
    o = dataclasses.replace(opts, workers=5, partition="iid")
    if name == "one liar":
        return views.make_federation(o, seed), e8_lying.steer_to_self([4]), [4]
    if name == "N-2 colluders":
        return views.make_federation(o, seed), e8_lying.steer_to_self([2, 3, 4]), [2, 3, 4]
    if name == "inflate cost":
        return views.make_federation(o, seed), collusion.paper_attack([2, 3, 4]), [2, 3, 4]
    if name == "honest, heterogeneous":
        fed = views.make_federation(dataclasses.replace(o, partition="label-dirichlet",
                                                        dirichlet_alpha=0.5), seed)
        rng = np.random.default_rng([seed, 120])
        lrs = np.exp(rng.uniform(np.log(HETERO_LR[0]), np.log(HETERO_LR[1]), 5))
        specs = tuple(worker.WorkerSpec(lr=float(lr), batch_size=int(rng.choice(HETERO_BATCHES)),
                                        local_epochs=int(rng.choice(HETERO_EPOCHS)))
                      for lr in lrs)
        return fed._replace(specs=specs), None, []
    raise ValueError(f"`scenario` (={name!r}) must be one of {SCENARIOS}.")


def run(opts: Options, seed0: int = 0, progress: Callable[[str], None] | None = None
        ) -> Result:
    """E12: every scenario with and without the guard."""
    rounds = 4 if opts.quick else ROUNDS
    n_seeds = SEEDS_PER_OPTION_SEED * opts.seeds
    vals: dict[tuple[str, str, str], list[float]] = {}

    def put(name, arm, metric, value):
        vals.setdefault((name, arm, metric), []).append(float(value))

    for s in range(n_seeds):
        seed = seed0 + s
        for name in SCENARIOS:
            fed, hook, bad = scenario(opts, name, seed)
            loss0 = views.evaluate(fed, fed.p0)[0]
            for arm, cfg in (("paper rule", None), ("guard", guard.DEFAULT)):
                rv = views.run_arm(fed, "fedf+1", rounds, seed, report=hook, guard=cfg)
                loss, acc = views.evaluate(fed, rv[-1].p_new)
                put(name, arm, "test_accuracy", acc)
                put(name, arm, "test_loss", loss if np.isfinite(loss) else 1e30)
                put(name, arm, "diverged", not (np.isfinite(loss) and loss <= 10 * loss0))
                if bad:
                    put(name, arm, "hijack", np.mean([v.pilot in bad and not v.pilot_refused
                                                      for v in rv]))
                if name == "inflate cost":
                    put(name, arm, "victim_pilot", np.mean([v.pilot == 0 for v in rv]))
                if cfg is not None:
                    changed = np.mean([v.pilot != v.paper_pilot or v.pilot_refused for v in rv])
                    put(name, arm, "false_alarm" if not bad else "overridden", changed)
                    put(name, arm, "refused", np.mean([v.pilot_refused for v in rv]))
        if progress:
            progress(f"E12 seed {seed} done")
    for name in SCENARIOS:  # the guard's accuracy cost, per run
        a = vals[(name, "paper rule", "test_accuracy")]
        b = vals[(name, "guard", "test_accuracy")]
        vals[(name, "guard", "accuracy_cost")] = [x - y for x, y in zip(a, b, strict=True)]
    rows = [row(arm, name, m, v) for (name, arm, m), v in vals.items()]
    regimes, tests = [], []
    given = "the guard's rule; the bad workers report what the scenario says"
    for name in ("diverging worker", "one liar", "N-2 colluders"):
        r, t = judge(f"{name}, guard on", given,
                     [(f"guard {name}", vals[(name, "guard", "hijack")])], MARGIN, (0.0, 1.0),
                     "hijack share")
        regimes.append(r)
        tests += t
    r, t = judge("honest, heterogeneous, guard on", "honest workers only",
                 [("guard honest, heterogeneous",
                   vals[("honest, heterogeneous", "guard", "false_alarm")])], MARGIN,
                 (0.0, 1.0), "false-alarm share")
    regimes.append(r)
    tests += t
    verdict = ("refuted" if any(r.verdict == "refuted" for r in regimes
                                if not r.name.startswith("N-2")) else
               "supported" if all(r.verdict == "supported" for r in regimes
                                  if not r.name.startswith("N-2")) else "inconclusive")
    h = {k: float(np.mean(v)) for k, v in vals.items()}
    notes = " ".join([
        f"{n_seeds} runs per scenario and arm ({SEEDS_PER_OPTION_SEED} x the suite's seeds: a "
        "share that is 0 or 1 in every run needs about 20 runs for a 95 % bound below 0.2), "
        f"{rounds} rounds each, guard knobs {dict(guard.DEFAULT._asdict())}. The overall "
        "verdict leaves out the N-2 colluders (a majority, beyond what a median can "
        "resist; reported as a regime). Under 'inflate cost' the same majority moves the "
        "cost band onto its own huge costs: the honest workers become inadmissible and a "
        "colluder (sending P^{t-1}) is the pilot every epoch, which stalls training.",
        "Hijack share without / with the guard: " + "; ".join(
            f"{n} {h.get((n, 'paper rule', 'hijack'), np.nan):.2f} / "
            f"{h.get((n, 'guard', 'hijack'), np.nan):.2f}"
            for n in ("diverging worker", "one liar", "N-2 colluders")) + ".",
        "Test accuracy without / with the guard: " + "; ".join(
            f"{n} {h[(n, 'paper rule', 'test_accuracy')]:.3f} / "
            f"{h[(n, 'guard', 'test_accuracy')]:.3f}" for n in SCENARIOS) + ".",
        "Inflate cost: the victim is the pilot in "
        f"{h[('inflate cost', 'paper rule', 'victim_pilot')]:.2f} / "
        f"{h[('inflate cost', 'guard', 'victim_pilot')]:.2f} of the epochs (the guard "
        "does not stop the colluders from staying out of the pilot's seat)."])
    return Result("E12", TITLE, CLAIM, CRITERION, rows, verdict, notes,
                  extra={"guard": dict(guard.DEFAULT._asdict()), "runs": n_seeds},
                  regimes=regimes, tests=tests)

