"""sims/async's RESULTS.md, written from the results (``run_all.run``'s dict, or
results.json) alone: tables from the parts' summaries, verdicts from ``verdicts.py``."""

from __future__ import annotations

import datetime
import math
import os
import platform

import race
import staleness
import svm_race
import verdicts
from verdicts import HEADLINE


def markdown(res: dict, mode: str, argv: list[str]) -> str:
    """RESULTS.md of ``res``, run in ``mode`` (full or quick) with ``argv``."""
    when = res.get("date") or datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC")
    walls = res.get("walls", {})
    o = res["options"]
    took = ", ".join(f"{k} {v:.0f} s" for k, v in walls.items())
    cmd = "python sims/async/run_all.py" + ("" if not argv else " " + " ".join(argv))
    svm_regimes = list(dict.fromkeys(r["regime"] for r in res["svm"]))
    lines = [
        "# Asynchronous groups: time to target on a virtual clock", "",
        f"Written by `{cmd}` ({mode}) on {when}, {platform.machine()} "
        f"({os.cpu_count()} CPUs visible, shared), jax {res.get('jax', '?')}. Parts took "
        f"{took}. Scripts: `race.py` (part 1), `svm_race.py` (part 2), `staleness.py` "
        "(part 3), `budget.py` (running to a virtual-time budget; time to target, "
        "speed-ups and verdicts from the run logs; `verdicts.py` the verdicts, `figures.py` "
        "the plots, `report.py` this file); each part runs alone. Rebuild this file "
        "from `results.json` with `python sims/async/run_all.py --from-results`.", "",
        f"Run size: part 1 {o['race']['seeds']} seeds with a budget of "
        f"{o['race']['sync_epochs']} synchronous epochs, part 2 {o['svm']['seeds']} seeds, "
        f"part 3 {o['staleness']['seeds']} seeds with {o['staleness']['sync_epochs']} "
        "synchronous epochs: sized so that the full run takes about 20 minutes on two "
        "shared CPU cores (budgets of 30 epochs take about half as long again). "
        + _headroom(res["race"]) + " More seeds would narrow the per-seed ranges; the "
        "verdicts state how many seeds they rest on.", "",
        "## The clock", "",
        "Every run is `simulation.run` with `schedule=\"async\"`; each run-log line is one "
        "top update with `clock_s`, the virtual seconds when it is applied "
        "(`fedf_jax/schedule.py`). A sender's job takes speed × work units × "
        "`unit_seconds` plus its link time (the timing model's bytes / bandwidth + rounds "
        "× latency); the synchronous baseline is `staleness=0` (wait policy), which is the "
        "synchronous run bit for bit, on the same clock: each of its updates waits for "
        "the slowest sender. FEDF's top also pays one fetch of the pilot's model per "
        "update. Times to target are the `clock_s` of the first update whose test "
        "accuracy (objective gap) reaches the target; \"at budget\" is the model in place "
        "when the budget ends. Speed-ups are seed-paired: mean synchronous time over "
        "mean asynchronous time on the seeds where both reached; the verdict words "
        "(faster/slower in every seed, mixed, never) compare each seed's pair.", "",
        "## Criteria (fixed in `verdicts.py` before the runs)", "",
        *[f"- {c}" for c in verdicts.CRITERIA], "",
        "## Issue 16's checks (computed)", "",
        *[f"- {v}" for v in verdicts.issue_checks(res["race"], res["svm"])], "",
        "## 1. Time to a target accuracy (digits, MLP)", "",
        f"12 workers, IID shards of digits, lr 0.2, batch 10, one local epoch; seeds 0.."
        f"{o['race']['seeds'] - 1} (lognormal speeds are drawn per seed, so each seed is "
        f"another draw). Budget: the clock of synchronous FedAvg after "
        f"{o['race']['sync_epochs']} epochs. Settings: `slow-group` = 3 groups of 4 workers, "
        "speeds 1,1,4 (the top's senders are the group masters); `lognormal` = 12 flat "
        "workers, speeds lognormal:0.5. FedAsync: FedAvg with buffer 1, staleness "
        "function s(τ) (const, poly = (τ+1)^-0.5, hinge = 1 up to τ = 4 then "
        "1/(10(τ−4)+1)) and mixing α; FedBuff: buffer K, each member's change rebased on "
        "the current model; async FEDF: buffer B, pilot by Eq. (1) among the buffer. No "
        "staleness bound (S unbounded) in part 1. Speed-ups of FedAvg-based methods are "
        "against synchronous FedAvg, of FEDF-based ones against synchronous FEDF. The "
        f"third target is {race.RELATIVE:g} × the same algorithm's synchronous final "
        "accuracy (per row's base: "
        + ", ".join(sorted({f"{r['setting']} {r['base']} {r['targets']['rel']:.4f}"
                            for r in res["race"] if math.isfinite(r["targets"]["rel"])}))
        + ").", "",
        "What each top rule does with an arrival from sender k, which started from P^s "
        "(`fedf_jax/algorithms/asynchronous.py`); it explains most of what follows. "
        "FedAsync: P^{v+1} = (1 − a) P^v + a Q_k with a = α s(τ). With α = 1 and s "
        "constant (the library's defaults), P^{v+1} = Q_k and k starts again from "
        "P^{v+1}, i.e. from its own model: a sender never builds on another's work and the "
        "global model is the last arrival (hinge gives a = 1 up to τ = 4, so it differs "
        "from constant only on the staler arrivals). FedBuff: the size- and "
        "s(τ)-weighted mean of the K members' changes Q_k − P^{s_k}, added to P^v. Async "
        "FEDF: the pilot's change Q* − P^{s*} added to P^v (plus the other members' "
        "ternary votes), times a = α s(τ*): with B = 1 every arrival's whole change is "
        "added, each computed on a model τ updates old.", "",
    ]
    for setting in dict.fromkeys(r["setting"] for r in res["race"]):
        lines += [f"### {setting}", "", race.table(res["race"], setting), ""]
    lines += ["Verdicts (computed from the tables' numbers):", "",
              *[f"- {v}" for v in verdicts.race_verdicts(res["race"])],
              f"- {verdicts.anchor_verdict(res['race'])}",
              *[f"- {v}" for v in verdicts.staleness_fn_verdicts(res["race"])], "",
              "![accuracy against virtual time](race.png)", "",
              f"![speed-up to accuracy {HEADLINE}](speedup.png)", ""]
    optima = res["svm_optima"]
    lines += [
        "## 2. ADMM linear SVM: partial barrier against the synchronous iteration", "",
        "Consensus ADMM (samples split), C = 1, 6 workers. `flat`: speeds 1,1,1,1,1,4; "
        "`groups`: 3 groups of 2, speeds 1,1,4. The optimum per data set and seed is a "
        f"synchronous flat run with tol {svm_race.OPT_TOL:g} ("
        + "; ".join(f"{k}: {v['objective']:.6f} after {v['iterations']} iterations"
                    for k, v in optima.items())
        + "); gap = (objective − optimum) / optimum. Budget: the synchronous run's clock "
        "after " + ", ".join(f"{k} {v}" for k, v in o["svm"]["iterations"].items())
        + " iterations. Measured runs use tol 1e-7 so none stops before the budget. "
        "Asynchronous: A = `buffer` arrivals per update, τ = `staleness` bound (wait "
        "policy), prox = the master's proximal weight (default ρ n (n/A − 1 + τ)). "
        "Regimes: `link-bound` = the default `unit_seconds` (2M/1e9 s per row, M = 31 or "
        "65 weights), where a job is almost all link time, so a 4× slower CPU barely "
        "delays a sender; `compute-bound` = `unit_seconds` 1e-4 s per row, where the "
        "x-update dominates and the slow sender is a straggler.", ""]
    for regime in svm_regimes:
        lines += [f"### {regime}", "", svm_race.table(res["svm"], regime), ""]
    lines += ["Verdicts:", "", *[f"- {v}" for v in verdicts.svm_verdicts(res["svm"], optima)], "",
              "![relative objective gap against virtual time](svm.png)", ""]
    st = res["staleness"]
    lines += [
        "## 3. The accuracy cost of staleness", "",
        "`slow-group` (12 workers, 3 groups, speeds 1,1,4), buffer 1, s(τ) constant, α = 1, "
        f"wait policy; seeds 0..{o['staleness']['seeds'] - 1}. Two readings of the same runs: "
        "**fixed virtual time** (the clock of synchronous FedAvg after "
        f"{o['staleness']['sync_epochs']} epochs) and **fixed number of updates** (as many "
        "as the algorithm's S = 0 run makes in that time, in brackets). ∞: no bound.", "",
        staleness.table(st), "",
        "Verdicts:", "", *[f"- {v}" for v in verdicts.staleness_verdicts(st)], "",
        "![accuracy against the staleness bound](staleness.png)", ""]
    return "\n".join(lines) + "\n"


def _headroom(summary: list[dict]) -> str:
    """How much of the budget the synchronous runs need to reach the headline target."""
    parts = [f"{r['setting']} {r['method']} {1e3 * r['time_to'][HEADLINE]['mean']:.0f} of "
             f"{1e3 * r['budget_s']['mean']:.0f} ms"
             + (f" ({r['time_to'][HEADLINE]['n']} of {r['seeds']} seeds)"
                if r["time_to"][HEADLINE]["n"] < r["seeds"] else "")
             for r in summary if r["method"] == r["base"] and r["time_to"][HEADLINE]["n"]]
    never = [f"{r['setting']} {r['method']}" for r in summary
             if r["method"] == r["base"] and not r["time_to"][HEADLINE]["n"]]
    return (f"The synchronous runs reach accuracy {HEADLINE} after: " + ", ".join(parts)
            + (f"; never within the budget: {', '.join(never)}" if never else "") + ".")


__all__ = ["markdown"]
