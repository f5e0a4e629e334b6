"""The verdicts of sims/async's RESULTS.md, computed from the summaries' numbers.

The criteria are fixed here, before any run, and RESULTS.md prints them
(:data:`CRITERIA`); no verdict is written by hand. Words per method and target
(``budget.verdict``, seed-paired against the synchronous run of the same family):
faster / slower in every seed, mixed, the same, or never reached within the budget.
"""

from __future__ import annotations

import math

import budget
import staleness
import svm_race

HEADLINE = "0.9"  # the target accuracy of the headline speed-ups
FEDBUFF_ANCHOR = (3.3, 3.8)  # Nguyen et al. 2022: FedBuff against synchronous FL
NOISE_STDS = 2.0  # a difference of means counts when above this many seed stds ...
NOTABLE = 0.01  # ... and above this much accuracy (1 pp)

CRITERIA = [
    "Time to a target: the `clock_s` of the first update at or above it (at or below "
    "the gap for the SVM). A method is *faster* when it is sooner than the synchronous "
    "run of its family in every seed (a seed where only it reaches counts as sooner), "
    "*slower* when later (or never) in every seed, *mixed* otherwise. Speed-ups are "
    "mean synchronous time / mean asynchronous time over the seeds both reached.",
    f"The headline target is accuracy {HEADLINE}; the FedBuff anchor holds when FedBuff's "
    f"speed-up to it lies in {FEDBUFF_ANCHOR[0]}–{FEDBUFF_ANCHOR[1]}× (below, within or "
    f"above is stated).",
    f"A final accuracy (or a staleness cost) differs from its reference when the means "
    f"differ by more than {NOISE_STDS:g} × the larger seed std and by more than "
    f"{100 * NOTABLE:g} pp.",
    f"Issue 16's checks: (a) with speeds 1,1,4 (`slow-group`), at least one asynchronous "
    f"method of each family (FedAvg-based, FEDF-based) reaches accuracy {HEADLINE} "
    f"*faster* than its synchronous run; (b) in every (data set, regime, layout) at "
    f"least one asynchronous ADMM run reaches the relative gap {svm_race.GAP:g} to the "
    f"flat optimum within the budget in every seed.",
]


def _range(s: dict) -> str:
    return budget.speed_text(s)


def _ms(s: dict) -> str:
    return budget.fmt(s, ".1f", 1e3)


WORDS = {"faster": "faster than the synchronous run in every seed",
         "slower": "slower than the synchronous run in every seed",
         "mixed": "faster in some seeds and slower in others",
         "same": "as fast as the synchronous run",
         "never": "never reached within the budget"}


def race_verdicts(summary: list[dict], target: str = HEADLINE) -> list[str]:
    """Per setting: who reaches the target first, by how much, and why (clock and
    staleness), from the summary's numbers."""
    out = []
    for setting in dict.fromkeys(r["setting"] for r in summary):
        mine = [r for r in summary if r["setting"] == setting]
        base = {r["method"]: r for r in mine if r["method"] == r["base"]}
        asyn = [r for r in mine if r["method"] != r["base"] and target in r["speedup"]]
        if not asyn or "sync FedAvg" not in base:
            continue
        sync = base["sync FedAvg"]
        seeds = sync["seeds"]
        by = {w: [r for r in asyn if r["verdict"][target] == w] for w in WORDS}
        parts = [f"**{setting}** ({seeds} seed{'s' if seeds > 1 else ''}), accuracy {target}: "
                 f"synchronous FedAvg takes {_ms(sync['time_to'][target])} ms"
                 + (f", synchronous FEDF {_ms(base['sync FEDF']['time_to'][target])} ms"
                    if "sync FEDF" in base else "") + "."]
        for w, rs in by.items():
            if rs:
                parts.append(f"{WORDS[w][0].upper()}{WORDS[w][1:]}: "
                             + ", ".join(_speed_text(r, r["speedup"][target], w)
                                         for r in rs) + ".")
        if all(target in r.get("verdict_stay", {}) for r in asyn):
            stay = {w: [r for r in asyn if r["verdict_stay"][target] == w] for w in WORDS}
            parts.append(f"Counting instead the time from which the accuracy stays ≥ {target} "
                         "to the end of the budget (a later dip counts): " + "; ".join(
                             f"{WORDS[w]}: " + ", ".join(
                                 _speed_text(r, r["speedup_stay"][target], w) for r in rs)
                             for w, rs in stay.items() if rs) + ".")
        reached = [r for r in asyn if math.isfinite(r["speedup"][target]["ratio"])
                   and r["time_to"][target]["n"] == r["seeds"]]
        if reached:
            best = max(reached, key=lambda r: r["speedup"][target]["ratio"])
            parts.append(f"The largest speed-up is {best['method']}'s, "
                         f"{_range(best['speedup'][target])} against {best['base']}.")
        out.append(" ".join(parts))
        # why: the clock and the staleness
        a = [r for r in mine if r["method"] != r["base"] and r["base"] == "sync FedAvg"]
        if a:
            fast = max(a, key=lambda r: r["updates"]["mean"])
            slow_arr = sync["slowest_arrivals"]["mean"]
            out.append(
                f"Why ({setting}): in the same {_ms(sync['budget_s'])} ms the synchronous run "
                f"applies {sync['updates']['mean']:.0f} updates of all "
                f"{sync['arrivals']['mean'] / sync['updates']['mean']:.0f} "
                f"senders ({_ms(sync['seconds_per_update'])} ms each: every update waits for "
                f"the slowest sender), while {fast['method']} applies "
                f"{fast['updates']['mean']:.0f} ({_ms(fast['seconds_per_update'])} ms apart) "
                f"holding {fast['arrivals']['mean']:.0f} arrivals, "
                f"{fast['arrivals']['mean'] / sync['arrivals']['mean']:.2f}× the synchronous "
                f"run's {sync['arrivals']['mean']:.0f}. The slowest sender still arrives "
                f"{fast['slowest_arrivals']['mean']:.0f} times (synchronous: {slow_arr:.0f}), "
                f"each arrival {fast['slowest_staleness']['mean']:.1f} updates stale on "
                f"average (all arrivals {fast['staleness_mean']['mean']:.2f}, at most "
                f"{fast['staleness_max']}).")
        for r in mine:
            if r["method"] == r["base"] or not r["final"]["n"]:
                continue
            b = base.get(r["base"])
            if b is None:
                continue
            d = r["final"]["mean"] - b["final"]["mean"]
            spread = max(_finite(r["final"]["std"]), _finite(b["final"]["std"]))
            if r["diverged"] or differs(d, spread):
                out.append(
                    f"{setting}, {r['method']}: final accuracy at the budget "
                    f"{budget.fmt(r['final'])} against {b['method']}'s "
                    f"{budget.fmt(b['final'])} ({100 * d:+.1f} pp)"
                    + (f"; the test loss blew up (harness.Watch's rule) in {r['diverged']} "
                       f"of {r['seeds']} seeds" if r["diverged"] else "") + ".")
    return out


def _speed_text(r: dict, s: dict, word: str) -> str:
    """A method and its speed-up ``s``, or why it has none."""
    if word == "never":
        return r["method"]
    if s["both"] == 0:
        return f"{r['method']} (reached; {r['base']} did not)"
    if s["both"] < r["seeds"]:
        return f"{r['method']} ({_range(s)} on the {s['both']} seeds both reached)"
    return f"{r['method']} ({_range(s)})"


def _finite(x: float) -> float:
    return x if math.isfinite(x) else 0.0


def anchor_verdict(summary: list[dict], target: str = HEADLINE) -> str:
    """FedBuff's speed-ups here against the paper's 3.3-3.8x."""
    fb = [r for r in summary if r["method"].startswith("FedBuff") and target in r["speedup"]]
    if not fb:
        return "No FedBuff run."
    lo, hi = FEDBUFF_ANCHOR
    parts = []
    for r in fb:
        s = r["speedup"][target]["ratio"]
        where = ("no speed-up: not reached by both" if not math.isfinite(s) else
                 "below the range" if s < lo else "within the range" if s <= hi else
                 "above the range")
        parts.append(f"{r['setting']} {r['method']}: {_range(r['speedup'][target])} ({where})")
    return (f"FedBuff against the anchor (Nguyen et al. 2022 report {lo}–{hi}× faster than "
            f"synchronous FL, to a target accuracy): " + "; ".join(parts) + ".")


def staleness_fn_verdicts(summary: list[dict]) -> list[str]:
    """FedAsync's staleness functions, per setting and alpha: final accuracy and time
    to the headline target."""
    out = []
    for setting in dict.fromkeys(r["setting"] for r in summary):
        for alpha in ("1", "0.6"):
            rs = [r for r in summary if r["setting"] == setting
                  and r["method"].startswith("FedAsync") and r["method"].endswith(f"α={alpha}")]
            if len(rs) < 2:
                continue
            best = max(rs, key=lambda r: r["final"]["mean"])
            out.append(f"{setting}, FedAsync α = {alpha}: final accuracy "
                       + ", ".join(f"{r['method'].split()[1]} {budget.fmt(r['final'])}"
                                   for r in rs)
                       + f" (highest: {best['method'].split()[1]}); time to {HEADLINE} "
                       + ", ".join(f"{_ms(r['time_to'][HEADLINE])} ms" for r in rs) + ".")
    return out


def svm_verdicts(summary: list[dict], optima: dict) -> list[str]:
    out = []
    for regime in dict.fromkeys(r["regime"] for r in summary):
        rows = [r for r in summary if r["regime"] == regime]
        asyn = [r for r in rows if r["variant"] != "sync"]
        faster = [r for r in asyn if r["verdict"] == "faster"]
        slower = [r for r in asyn if r["verdict"] in ("slower", "never")]
        reached = [r for r in asyn if r["time_to"]["n"] == r["time_to"]["total"]]
        text = (f"**{regime}**: {len(faster)} of {len(asyn)} asynchronous runs reach the "
                f"{svm_race.GAP:g} gap sooner than the synchronous run in every seed, "
                f"{len(slower)} later or never; {len(reached)} of {len(asyn)} reach it within "
                "the budget in every seed.")
        if faster:
            best = max(faster, key=lambda r: r["speedup"]["ratio"])
            text += (f" The largest speed-up: {best['data']} {best['layout']} "
                     f"{best['variant']}, {_range(best['speedup'])}.")
        sync_spu = [r["seconds_per_update"]["mean"] for r in rows if r["variant"] == "sync"]
        asy_spu = [r["seconds_per_update"]["mean"] for r in asyn]
        if sync_spu and asy_spu:
            text += (f" Virtual seconds per update: synchronous {1e3 * min(sync_spu):.2f}–"
                     f"{1e3 * max(sync_spu):.2f} ms, asynchronous {1e3 * min(asy_spu):.2f}–"
                     f"{1e3 * max(asy_spu):.2f} ms.")
        out.append(text)
        default = [r for r in asyn if r["opts"].get("prox") is None]
        zero = [r for r in asyn if r["opts"].get("prox") == 0.0]
        if default and zero:
            out.append(
                f"{regime}: updates to the {svm_race.GAP:g} gap with the default proximal "
                "weight: " + ", ".join(f"{r['data']} {r['layout']} {r['variant']} "
                                       f"{budget.fmt(r['updates_to_gap'], '.0f')}"
                                       for r in default)
                + "; with prox = 0: " + ", ".join(f"{r['data']} {r['layout']} {r['variant']} "
                                                  f"{budget.fmt(r['updates_to_gap'], '.0f')}"
                                                  for r in zero)
                + "; synchronous: " + ", ".join(
                    f"{r['data']} {r['layout']} {budget.fmt(r['updates_to_gap'], '.0f')}"
                    for r in rows if r["variant"] == "sync") + ".")
    low = min(r["min_gap"] for r in summary)
    out.append(f"The lowest relative gap any run reached is {low:.1e}: "
               + ("no run went below the optimum." if low >= 0 else
                  "below the optimum by that much, so the tol 1e-6 optimum is that close to the "
                  "true one, far inside the 1e-3 target."))
    return out


def staleness_verdicts(summary: list[dict]) -> list[str]:
    out = []
    for name in dict.fromkeys(r["algorithm"] for r in summary):
        rows = [r for r in summary if r["algorithm"] == name]
        zero = next((r for r in rows if r["bound"] == 0), None)
        if zero is None:
            continue
        best = max(rows, key=lambda r: r["final"]["mean"])
        worst = min(rows, key=lambda r: r["final"]["mean"])
        below = [r for r in rows if r["bound"] != 0
                 and r["fixed_updates"]["mean"] < zero["fixed_updates"]["mean"]]
        spread = max(_finite(r["final"]["std"]) for r in rows)
        diff = best["final"]["mean"] - worst["final"]["mean"]
        if zero["seeds"] > 1:
            noise = (("exceeds" if differs(diff, spread) else "is within")
                     + f" the noise ({NOISE_STDS:g} × the largest seed std, "
                     f"{100 * spread:.1f} pp, and {100 * NOTABLE:g} pp)")
        else:
            noise = "(one seed: no spread to compare with)"
        text = (f"{name}: at the same virtual time the final accuracy is highest at S = "
                f"{staleness.label(best['bound'])} ({budget.fmt(best['final'])}) and lowest at "
                f"S = {staleness.label(worst['bound'])} ({budget.fmt(worst['final'])}); "
                f"S = 0 (synchronous) gives {budget.fmt(zero['final'])}. The largest "
                f"difference, {100 * diff:.1f} pp, {noise}. "
                f"After the same number of updates as S = 0 makes, {len(below)} of "
                f"{len(rows) - 1} bounds S > 0 are below S = 0 "
                f"({budget.fmt(zero['fixed_updates'])}): "
                + ", ".join(f"S = {staleness.label(r['bound'])} "
                            f"{budget.fmt(r['fixed_updates'])}" for r in rows if r is not zero)
                + ". The bound buys updates: "
                + ", ".join(f"S = {staleness.label(r['bound'])} {r['updates']['mean']:.0f}"
                            for r in rows) + " in the budget.")
        blew = [r for r in rows if r["diverged"]]
        if blew:
            text += (" The test loss blew up (harness.Watch's rule) within the budget at "
                     + ", ".join(f"S = {staleness.label(r['bound'])} ({r['diverged']} of "
                                 f"{r['seeds']})" for r in blew) + ".")
        out.append(text)
    return out


def differs(diff: float, spread: float) -> bool:
    """The criterion for a difference of means: beyond NOISE_STDS seed stds and NOTABLE."""
    return abs(diff) > NOISE_STDS * spread and abs(diff) > NOTABLE


def issue_checks(race_summary: list[dict], svm_summary: list[dict],
                 setting: str = "slow-group", target: str = HEADLINE) -> list[str]:
    """Issue 16's two measured checks (CRITERIA's last item), each met or not."""
    out = []
    rows = [r for r in race_summary if r["setting"] == setting]
    if rows:
        fams = list(dict.fromkeys(r["base"] for r in rows))
        per = {f: [r["method"] for r in rows if r["base"] == f and r["method"] != f
                   and r["verdict"].get(target) == "faster"] for f in fams}
        met = all(per.values())
        out.append(f"(a) {setting}, accuracy {target}: " + ("met" if met else "not met")
                   + " — " + "; ".join(
                       f"against {f}: " + (", ".join(ms) if ms else "no asynchronous method "
                                           "is faster in every seed")
                       for f, ms in per.items()) + ".")
    cells = list(dict.fromkeys((r["data"], r["regime"], r["layout"]) for r in svm_summary))
    if cells:
        per = {}
        for cell in cells:
            per[cell] = [r["variant"] for r in svm_summary
                         if (r["data"], r["regime"], r["layout"]) == cell
                         and r["variant"] != "sync"
                         and r["time_to"]["n"] == r["time_to"]["total"]]
        met = all(per.values())
        out.append(f"(b) asynchronous ADMM SVM to the relative gap {svm_race.GAP:g}: "
                   + ("met" if met else "not met") + " — " + "; ".join(
                       f"{d} {g} {lay}: " + (", ".join(vs) if vs else _closest(
                           svm_summary, (d, g, lay)))
                       for (d, g, lay), vs in per.items()) + ".")
    return out


def _closest(svm_summary: list[dict], cell: tuple[str, str, str]) -> str:
    """For a cell where no asynchronous run reached the gap in every seed: the run whose
    gap at the budget is smallest, and that gap."""
    rows = [r for r in svm_summary if (r["data"], r["regime"], r["layout"]) == cell
            and r["variant"] != "sync" and r["gap_at_budget"]["n"]]
    if not rows:
        return "none"
    best = min(rows, key=lambda r: r["gap_at_budget"]["mean"])
    return (f"none (closest: {best['variant']}, gap at the budget "
            f"{budget.fmt(best['gap_at_budget'], '.1e')}; reached in "
            f"{best['time_to']['n']} of {best['time_to']['total']} seeds)")


__all__ = ["HEADLINE", "FEDBUFF_ANCHOR", "NOISE_STDS", "NOTABLE", "CRITERIA", "WORDS",
           "race_verdicts", "anchor_verdict", "staleness_fn_verdicts", "svm_verdicts",
           "staleness_verdicts", "differs", "issue_checks"]
