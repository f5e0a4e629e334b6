"""Time to a target accuracy on one virtual-time budget: synchronous FedAvg and FEDF
against FedAsync, FedBuff and asynchronous FEDF, on digits.

    python sims/async/race.py                       # both speed settings, 3 seeds
    python sims/async/race.py --setting slow-group --seeds 1 --sync-epochs 10

The synchronous baseline is ``--schedule async --staleness 0`` (the synchronous run
bit for bit, on the same virtual clock). The budget of a setting and seed is the
clock of synchronous FedAvg after ``sync_epochs`` epochs; every other run is run
until its clock passes that budget (``budget.run_to``) and read within it.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import budget  # noqa: E402

DATA = {"data": "digits"}
SETTINGS = {
    # one group four times slower than the other two
    "slow-group": {"workers": 12, "groups": 3, "speeds": "1,1,4"},
    # every worker its own speed, exp(N(0, 0.5^2)), drawn per seed
    "lognormal": {"workers": 12, "speeds": "lognormal:0.5"},
}
# FedBuff's buffer K per setting: 2 of 3 groups, 4 of 12 workers
FEDBUFF_K = {"slow-group": 2, "lognormal": 4}
SHORT = {"constant": "const", "polynomial": "poly", "hinge": "hinge"}
TARGETS = (0.85, 0.90)  # absolute test accuracies
RELATIVE = 0.98  # and this fraction of the same algorithm's synchronous final accuracy
SYNC_EPOCHS = 20  # the budget: synchronous FedAvg's clock after this many epochs


def methods(setting: str) -> list[dict]:
    """Every method of a setting: name, the synchronous run it is compared with
    (``base``), and its async options."""
    k = FEDBUFF_K[setting]
    out = [{"name": "sync FedAvg", "base": "sync FedAvg", "algorithm": "fedavg",
            "opts": {"staleness": 0}}]
    for alpha in (1.0, 0.6):
        for fn in ("constant", "polynomial", "hinge"):
            out.append({"name": f"FedAsync s={SHORT[fn]} α={alpha:g}", "base": "sync FedAvg",
                        "algorithm": "fedavg",
                        "opts": {"buffer": 1, "staleness_fn": fn, "mixing": alpha}})
    for fn in ("constant", "polynomial"):
        out.append({"name": f"FedBuff K={k} s={SHORT[fn]}", "base": "sync FedAvg",
                    "algorithm": "fedavg", "opts": {"buffer": k, "staleness_fn": fn}})
    out.append({"name": "sync FEDF", "base": "sync FEDF", "algorithm": "fedf",
                "opts": {"staleness": 0}})
    for fn, alpha in (("constant", 1.0), ("polynomial", 0.5)):
        for b in (1, 2):
            out.append({"name": f"FEDF B={b} s={SHORT[fn]} α={alpha:g}", "base": "sync FEDF",
                        "algorithm": "fedf",
                        "opts": {"buffer": b, "staleness_fn": fn, "mixing": alpha}})
    return out


def options(setting: str, method: dict, seed: int) -> dict:
    """Flat config options of one run (no ``epochs``)."""
    return {**DATA, **SETTINGS[setting], "schedule": "async", "algorithm": method["algorithm"],
            "seed": seed, **method["opts"]}


def senders(setting: str) -> int:
    s = SETTINGS[setting]
    return s["groups"] if s.get("groups", 1) > 1 else s["workers"]


def run(settings=tuple(SETTINGS), seeds: int = 3, sync_epochs: int = SYNC_EPOCHS,
        only: dict[str, list[str]] | None = None, log=print) -> list[dict]:
    """One dict per (setting, method, seed): its kept records and run facts.

    ``only``: per setting, the methods to run (synchronous FedAvg, which sets the
    budget, always runs); None runs every method."""
    rows = []
    t_all = time.perf_counter()
    for setting in settings:
        ms = [m for m in methods(setting) if only is None or m["name"] in only.get(setting, ())
              or m["name"] == "sync FedAvg"]
        for seed in range(seeds):
            head = ms[0]
            first = budget.run_to(options(setting, head, seed), math.inf, sync_epochs,
                                  probe=1.0)
            budget_s = first["records"][-1]["clock_s"]
            for m in ms:
                if m is head:
                    res = first
                else:
                    o = options(setting, m, seed)
                    res = budget.run_to(o, budget_s, budget.guess_updates(o, sync_epochs),
                                        probe=1.0 if o.get("staleness") == 0 else
                                        budget.PROBE)
                rows.append({"setting": setting, "method": m["name"], "base": m["base"],
                             "algorithm": m["algorithm"], "opts": m["opts"], "seed": seed,
                             "budget_s": budget_s, "sync_epochs": sync_epochs, **res})
                log(f"{setting} seed {seed} {m['name']}: {len(res['records'])} updates, "
                    f"clock {res['records'][-1]['clock_s']:.4f} of {budget_s:.4f} s, accuracy "
                    f"{res['records'][-1]['test_accuracy']:.4f} ({res['wall_s']:.1f} s, "
                    f"{time.perf_counter() - t_all:.0f} s so far)")
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per (setting, method): times to each target, speed-ups against its synchronous
    base (seed-paired), final accuracy at the budget and the clock evidence."""
    out = []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == setting]
        by = {}
        for r in mine:
            by.setdefault(r["method"], []).append(r)
        for runs in by.values():
            runs.sort(key=lambda r: r["seed"])
        finals = {m: [budget.at_budget(r["records"], "test_accuracy") for r in runs]
                  for m, runs in by.items()}
        for name, runs in by.items():
            base = by.get(runs[0]["base"])
            if base is None or [r["seed"] for r in base] != [r["seed"] for r in runs]:
                base = None
            rel = (RELATIVE * budget.summary(finals[runs[0]["base"]])["mean"]
                   if base else math.nan)
            targets = {f"{t:g}": t for t in TARGETS}
            targets["rel"] = rel
            times, speed, verdicts = {}, {}, {}
            stay, stay_speed, stay_verdicts = {}, {}, {}
            for key, t in targets.items():
                for fn, tt, sp, vd in ((budget.time_to, times, speed, verdicts),
                                       (budget.time_to_stay, stay, stay_speed, stay_verdicts)):
                    mine_t = [fn(r["records"], "test_accuracy", t) for r in runs]
                    tt[key] = {"per_seed": mine_t, **budget.summary(mine_t)}
                    if base is not None:
                        sync_t = [fn(r["records"], "test_accuracy", t) for r in base]
                        sp[key] = budget.speedup(sync_t, mine_t)
                        vd[key] = budget.verdict(sync_t, mine_t)
            ev = [budget.evidence(r["records"], senders(setting)) for r in runs]
            out.append({
                "setting": setting, "method": name, "base": runs[0]["base"],
                "algorithm": runs[0]["algorithm"], "opts": runs[0]["opts"],
                "seeds": len(runs), "budget_s": budget.summary([r["budget_s"] for r in runs]),
                "targets": targets, "time_to": times, "speedup": speed, "verdict": verdicts,
                "time_to_stay": stay, "speedup_stay": stay_speed, "verdict_stay": stay_verdicts,
                "final": {"per_seed": finals[name], **budget.summary(finals[name])},
                "best": budget.summary([max(x["test_accuracy"] for x in r["records"])
                                        for r in runs]),
                "diverged": sum(r["diverged"] for r in runs),
                "evidence": ev,
                "updates": budget.summary([e["updates"] for e in ev]),
                "arrivals": budget.summary([e["arrivals"] for e in ev]),
                "staleness_mean": budget.summary([e["staleness_mean"] for e in ev]),
                "staleness_max": max(e["staleness_max"] for e in ev),
                "slowest_staleness": budget.summary([e["slowest_staleness_mean"] for e in ev]),
                "slowest_arrivals": budget.summary([e["slowest_arrivals"] for e in ev]),
                "seconds_per_update": budget.summary([e["seconds_per_update"] for e in ev]),
            })
    return out


STAY = "0.9"  # the target whose time to stay is a column


def table(summary: list[dict], setting: str) -> str:
    """Markdown: one row per method of a setting."""
    rows = [r for r in summary if r["setting"] == setting]
    keys = list(rows[0]["targets"]) if rows else []
    head = ["method", "updates", "arrivals", "staleness mean (max)", "slowest sender: "
            "arrivals, staleness"]
    for k in keys:
        label = f"{RELATIVE:g}× sync final" if k == "rel" else f"acc {k}"
        head += [f"time to {label} (ms)", "speed-up"]
    head += [f"stays ≥ {STAY} from (ms)", "speed-up", "final accuracy at budget",
             "loss blow-ups"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], budget.fmt(r["updates"], ".0f"), budget.fmt(r["arrivals"], ".0f"),
                 f"{budget.fmt(r['staleness_mean'], '.2f')} ({r['staleness_max']})",
                 f"{budget.fmt(r['slowest_arrivals'], '.0f')}, "
                 f"{budget.fmt(r['slowest_staleness'], '.1f')}"]
        for k in keys:
            base = r["method"] == r["base"]
            cells += [budget.fmt(r["time_to"][k], ".0f", 1e3),
                      "1 (base)" if base else budget.speed_text(r["speedup"].get(k))]
        cells += [budget.fmt(r["time_to_stay"][STAY], ".0f", 1e3),
                  "1 (base)" if r["method"] == r["base"] else
                  budget.speed_text(r["speedup_stay"].get(STAY)),
                  budget.fmt(r["final"]), f"{r['diverged']} of {r['seeds']}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--sync-epochs", type=int, default=SYNC_EPOCHS)
    args = p.parse_args(argv)
    summary = summarize(run(tuple(args.setting), args.seeds, args.sync_epochs))
    for s in args.setting:
        print(f"\n{s}\n" + table(summary, s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
