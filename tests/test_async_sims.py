"""sims/async: time to target, speed-ups and verdicts read off run logs (synthetic
records), running to a virtual-time budget, and --quick writing only under quick/."""

import math
from pathlib import Path

import numpy as np
import pytest
import sims_loader

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "sims" / "async"


@pytest.fixture(scope="module")
def run_all():
    return sims_loader.load("async", "run_all")


@pytest.fixture(scope="module")
def budget(run_all):
    return run_all.race.budget


def records(clock, acc, senders=None, stale=None, **extra):
    """Synthetic run-log lines of an asynchronous run."""
    n = len(clock)
    senders = senders or [[0]] * n
    stale = stale or [[0] * len(s) for s in senders]
    out = []
    for i in range(n):
        r = {"epoch": i + 1, "clock_s": clock[i], "test_accuracy": acc[i], "test_loss": 0.5,
             "senders": senders[i], "staleness": stale[i], "dropped": 0}
        r.update({k: v[i] for k, v in extra.items()})
        out.append(r)
    return out


# --- time to target, value at the budget, evidence ----------------------------------------


def test_time_to_is_the_clock_of_the_first_update_reaching_the_target(budget):
    recs = records([0.1, 0.2, 0.3, 0.4], [0.5, 0.91, 0.7, 0.95])
    assert budget.time_to(recs, "test_accuracy", 0.9) == 0.2  # first, not sustained
    assert budget.time_to(recs, "test_accuracy", 0.95) == 0.4
    assert math.isnan(budget.time_to(recs, "test_accuracy", 0.96))
    nan = records([0.1, 0.2], [float("nan"), 0.9])
    assert budget.time_to(nan, "test_accuracy", 0.1) == 0.2  # NaN never reaches


def test_time_to_stay_counts_a_later_dip(budget):
    recs = records([0.1, 0.2, 0.3, 0.4, 0.5], [0.5, 0.91, 0.7, 0.95, 0.92])
    assert budget.time_to_stay(recs, "test_accuracy", 0.9) == 0.4
    assert budget.time_to_stay(recs, "test_accuracy", 0.4) == 0.1
    assert math.isnan(budget.time_to_stay(recs, "test_accuracy", 0.93))  # the last misses
    gaps = records([1.0, 2.0], [0, 0], gap=[1e-4, 1e-2])
    assert math.isnan(budget.time_to_stay(gaps, "gap", 1e-3, below=True))


def test_time_to_below_reads_an_objective_gap_downwards(budget):
    recs = records([1.0, 2.0, 3.0], [0, 0, 0], objective=[12.0, 10.02, 10.005])
    gaps = budget.relative_gap(recs, 10.0)
    np.testing.assert_allclose([g["gap"] for g in gaps], [0.2, 2e-3, 5e-4])
    assert budget.time_to(gaps, "gap", 1e-3, below=True) == 3.0
    assert budget.time_to(gaps, "gap", 0.5, below=True) == 1.0


def test_at_budget_is_the_model_in_place_when_the_budget_ends(budget):
    assert budget.at_budget(records([0.1, 0.2], [0.3, 0.4]), "test_accuracy") == 0.4
    assert math.isnan(budget.at_budget([], "test_accuracy"))


def test_evidence_counts_arrivals_and_the_least_heard_senders_staleness(budget):
    recs = records([0.01, 0.02, 0.03, 0.04], [0.5] * 4,
                   senders=[[0], [1], [2], [0, 1]], stale=[[0], [1], [6], [2, 1]])
    ev = budget.evidence(recs, 3)
    assert ev["updates"] == 4 and ev["arrivals"] == 5
    assert ev["arrivals_per_sender"] == [2, 2, 1]
    assert ev["slowest"] == 2 and ev["slowest_staleness_mean"] == 6.0
    assert ev["staleness_max"] == 6
    np.testing.assert_allclose(ev["staleness_mean"], 10 / 5)
    np.testing.assert_allclose(ev["seconds_per_update"], 0.01)


# --- seed-paired comparison --------------------------------------------------------------


def test_speedup_pairs_seeds_and_leaves_out_a_seed_either_did_not_reach(budget):
    s = budget.speedup([0.3, 0.6, 0.9], [0.1, 0.2, float("nan")])
    assert s["both"] == 2
    np.testing.assert_allclose(s["ratio"], 0.45 / 0.15)
    np.testing.assert_allclose(s["per_seed"][:2], [3.0, 3.0])
    assert math.isnan(s["per_seed"][2])
    assert math.isnan(budget.speedup([float("nan")], [0.1])["ratio"])
    with pytest.raises(ValueError, match="pair up"):
        budget.speedup([0.1, 0.2], [0.1])


@pytest.mark.parametrize("sync,asyn,word", [
    ([0.3, 0.4], [0.1, 0.2], "faster"),
    ([0.3, float("nan")], [0.1, 0.2], "faster"),  # only the async run reached in seed 1
    ([0.1, 0.2], [0.3, float("nan")], "slower"),
    ([0.1, 0.4], [0.2, 0.3], "mixed"),
    ([0.1, 0.2], [0.1, 0.2], "same"),
    ([0.1, 0.2], [float("nan")] * 2, "never"),
])
def test_verdict_words_compare_each_seeds_pair(budget, sync, asyn, word):
    assert budget.verdict(sync, asyn) == word


def test_guess_updates_scales_the_synchronous_epochs_by_the_senders_pace(budget):
    slow = {"workers": 12, "groups": 3, "speeds": "1,1,4", "schedule": "async"}
    assert budget.guess_updates({**slow, "buffer": 1}, 30) == 30 * 9  # 4/1 + 4/1 + 4/4
    assert budget.guess_updates({**slow, "buffer": 2}, 30) == 30 * 9 / 2
    assert budget.guess_updates({**slow, "staleness": 0}, 30) == 30


# --- running to a budget (a fake simulation) ----------------------------------------------


def _fake(step_s: float, stop_after: int | None = None):
    calls = []

    def runner(cfg):
        n = cfg.run.epochs if stop_after is None else min(cfg.run.epochs, stop_after)
        calls.append(cfg.run.epochs)
        clock = [step_s * (i + 1) for i in range(n)]
        return {"records": [{**r, "stale_dropped": []} for r in records(clock, [0.5] * n)]}

    return runner, calls


OPTS = {"workers": 3, "schedule": "async", "speeds": "1,1,4", "algorithm": "fedavg"}


def test_run_to_probes_then_extends_from_the_probes_clock_and_keeps_the_budget(budget):
    runner, calls = _fake(0.01)
    res = budget.run_to(OPTS, 0.25, guess=10, probe=0.4, runner=runner)
    assert calls[0] == 4  # the probe: 0.4 of the guess
    assert calls[1] == math.ceil(4 * budget.MARGIN * 0.25 / 0.04) + 1
    assert res["tries"] == 2 and res["reached_budget"] and not res["converged"]
    assert len(res["records"]) == 25
    assert max(r["clock_s"] for r in res["records"]) <= 0.25 + 1e-12


def test_run_to_stops_when_the_run_stops_on_its_tolerance(budget):
    runner, calls = _fake(0.01, stop_after=3)
    res = budget.run_to(OPTS, 1.0, guess=50, probe=1.0, runner=runner)
    assert calls == [50] and res["converged"] and len(res["records"]) == 3


def test_run_to_reaches_a_real_asynchronous_runs_budget(budget):
    sync = budget.run_to({**OPTS, "staleness": 0}, math.inf, 2, probe=1.0)
    end = sync["records"][-1]["clock_s"]
    fast = budget.run_to({**OPTS, "buffer": 1}, end, 12)
    recs = fast["records"]
    assert recs[-1]["clock_s"] <= end and fast["reached_budget"]
    ev = budget.evidence(recs, 3)
    assert ev["slowest"] == 2 and ev["updates"] > len(sync["records"])
    assert ev["slowest_staleness_mean"] > 0


# --- verdicts and the report from synthetic numbers ---------------------------------------


def _race_rows():
    rows = []
    for seed in (0, 1):
        sync_acc = [0.6 + 0.035 * i for i in range(10)]  # 0.9 first at i = 9: 0.30 s
        async_acc = [min(0.6 + 0.035 * j, 0.95) for j in range(20)]  # at j = 9: 0.15 s
        for name, base, clock, acc, snd in (
                ("sync FedAvg", "sync FedAvg", [0.03 * (i + 1) for i in range(10)], sync_acc,
                 [[0, 1, 2]] * 10),
                ("FedAsync s=const α=1", "sync FedAvg", [0.015 * (j + 1) for j in range(20)],
                 async_acc, [[j % 3] for j in range(20)]),
                ("FedBuff K=2 s=poly", "sync FedAvg", [0.03 * (i + 1) for i in range(10)],
                 [0.5] * 10, [[0, 1]] * 10)):
            rows.append({"setting": "slow-group", "method": name, "base": base,
                         "algorithm": "fedavg", "opts": {}, "seed": seed, "budget_s": 0.3,
                         "sync_epochs": 10, "records": records(clock, acc, snd),
                         "diverged": False})
    return rows


def _svm_result():
    runs = []
    for seed in (0, 1):
        for name, step in (("sync", 0.2), ("A=5 τ=4 prox=0", 0.1)):
            clock = [step * (i + 1) for i in range(int(round(2.0 / step)))]
            obj = [10.0 * (1 + 0.5 ** (i + 1)) for i in range(len(clock))]
            recs = budget_gap(records(clock, [0.9] * len(clock), objective=obj), 10.0)
            runs.append({"data": "breast-cancer", "regime": "compute-bound", "layout": "flat",
                         "variant": name, "opts": {"prox": 0.0} if name != "sync" else {},
                         "seed": seed, "budget_s": 2.0, "optimum": 10.0, "records": recs})
    return {"optima": {"breast-cancer/0": {"objective": 10.0, "iterations": 5}}, "runs": runs}


def budget_gap(recs, optimum):
    return [{**r, "gap": (r["objective"] - optimum) / optimum} for r in recs]


def _staleness_rows():
    rows = []
    for seed in (0, 1):
        for bound, n, acc in ((0, 4, 0.90), (2, 12, 0.93)):
            clock = [0.3 * (i + 1) / n for i in range(n)]
            rows.append({"algorithm": "FedAsync (FedAvg)", "bound": bound, "seed": seed,
                         "budget_s": 0.3, "diverged": False,
                         "records": records(clock, [acc - 0.05] * (n - 1) + [acc])})
    return rows


def _canned(run_all):
    race_rows, svm, st = _race_rows(), _svm_result(), _staleness_rows()

    def canned(opts, log=print):
        return {"options": opts, "race": run_all.race.summarize(race_rows),
                "race_curves": run_all.figures.curves(race_rows, ("setting", "method"),
                                              "test_accuracy"),
                "svm_optima": svm["optima"], "svm": run_all.svm_race.summarize(svm),
                "svm_curves": run_all.figures.curves(svm["runs"], ("data", "regime", "layout",
                                                           "variant"), "gap"),
                "staleness": run_all.staleness.summarize(st), "walls": {}}

    return canned


def test_race_verdicts_name_who_is_faster_by_how_much_and_who_never_reached(run_all):
    summary = run_all.race.summarize(_race_rows())
    text = "\n".join(run_all.verdicts.race_verdicts(summary))
    assert "Faster than the synchronous run in every seed: FedAsync s=const α=1 (2.00×)" in text
    assert "Never reached within the budget: FedBuff K=2 s=poly" in text
    assert "applies 10 updates of all 3 senders" in text
    assert "FedBuff K=2 s=poly: — (no speed-up" in run_all.verdicts.anchor_verdict(summary)
    fast = [r for r in summary if r["method"] == "FedAsync s=const α=1"][0]
    fast["speedup"]["0.9"].update(ratio=3.5, both=2, low=3.5, high=3.5)
    fast["method"] = "FedBuff K=2 s=const"
    assert "3.50× (within the range)" in run_all.verdicts.anchor_verdict(summary)


def test_svm_and_staleness_verdicts_follow_the_numbers(run_all):
    svm = run_all.svm_race.summarize(_svm_result())
    row = [r for r in svm if r["variant"] != "sync"][0]
    # gap 10 * 0.5^(i+1): <= 1e-3 first at i = 9; sync at 2.0 s, async at 1.0 s
    assert row["verdict"] == "faster" and row["speedup"]["ratio"] == pytest.approx(2.0)
    assert "1 of 1 asynchronous runs reach" in run_all.verdicts.svm_verdicts(svm, {})[0]
    st = run_all.staleness.summarize(_staleness_rows())
    text = run_all.verdicts.staleness_verdicts(st)[0]
    assert "highest at S = 2 (0.9300" in text and "S = 0 4, S = 2 12" in text
    assert "1 of 1 bounds S > 0 are below S = 0" in text  # 0.88 after 4 updates vs 0.90


def test_a_difference_counts_beyond_the_noise_and_one_point(run_all):
    v = run_all.verdicts
    assert v.differs(0.05, 0.01) and v.differs(-0.05, 0.01)
    assert not v.differs(0.015, 0.01)  # within NOISE_STDS stds
    assert not v.differs(0.005, 0.0)  # below NOTABLE


def test_issue_checks_are_met_only_when_the_numbers_say_so(run_all):
    v = run_all.verdicts
    race_rows, svm = _race_rows(), _svm_result()
    checks = v.issue_checks(run_all.race.summarize(race_rows), run_all.svm_race.summarize(svm))
    assert checks[0].startswith("(a) slow-group, accuracy 0.9: met")
    assert "FedAsync s=const α=1" in checks[0]
    assert checks[1].startswith("(b) asynchronous ADMM SVM to the relative gap 0.001: met")
    for r in race_rows:  # the asynchronous run now reaches 0.9 later than the synchronous
        if r["method"].startswith("FedAsync"):
            for rec in r["records"]:
                rec["clock_s"] *= 4
    for r in svm["runs"]:  # and the asynchronous ADMM never reaches the gap
        if r["variant"] != "sync":
            for rec in r["records"]:
                rec["gap"] = 1e-2
    checks = v.issue_checks(run_all.race.summarize(race_rows), run_all.svm_race.summarize(svm))
    assert checks[0].startswith("(a) slow-group, accuracy 0.9: not met")
    assert checks[1].startswith("(b) asynchronous ADMM SVM to the relative gap 0.001: not met")
    assert "breast-cancer compute-bound flat: none (closest: A=5 τ=4 prox=0, gap at the " \
           "budget 1.0e-02 ± 0.0e+00; reached in 0 of 2 seeds)" in checks[1]


def test_grid_curve_is_the_step_mean_over_seeds(run_all):
    c = run_all.figures.grid_curve([records([0.5, 1.0], [0.2, 0.4]),
                                    records([0.25, 1.0], [0.6, 0.8])], "test_accuracy", 1.0)
    t = run_all.figures.grid_times(c)
    y = np.array([np.nan if v is None else v for v in c["mean"]])
    assert np.isnan(y[t < 0.5]).all()  # the first seed has no model yet
    np.testing.assert_allclose(y[(t >= 0.5) & (t < 1.0)], 0.4)
    np.testing.assert_allclose(y[-1], 0.6)


def test_quick_writes_only_under_a_git_ignored_quick_folder(run_all, tmp_path, monkeypatch):
    assert run_all.output_dir(False) == HERE
    assert run_all.output_dir(True) == HERE / "quick"
    assert all(p.parent == HERE / "quick"
               for p in run_all.paths(run_all.output_dir(True)).values())
    assert "quick/" in (HERE / ".gitignore").read_text().splitlines()
    monkeypatch.setattr(run_all, "HERE", tmp_path)
    monkeypatch.setattr(run_all, "run", _canned(run_all))
    assert run_all.main(["--quick", "--no-compile-cache"]) == 0
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert {p.name for p in written} == {p.name for p in run_all.paths(tmp_path).values()}
    assert all(p.parent == tmp_path / "quick" for p in written)
    report = (tmp_path / "quick" / "RESULTS.md").read_text()
    assert "FedAsync s=const α=1 (2.00×)" in report
    assert all(c in report for c in run_all.verdicts.CRITERIA)  # the criteria, stated
    assert "(a) slow-group, accuracy 0.9: met" in report
    (tmp_path / "quick" / "RESULTS.md").unlink()
    assert run_all.main(["--quick", "--from-results"]) == 0
    assert (tmp_path / "quick" / "RESULTS.md").read_text() == report


def test_from_results_without_results_is_one_line_and_exit_2(run_all, tmp_path, capsys):
    assert run_all.main(["--from-results", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "results.json") in err
    assert not any(tmp_path.iterdir())  # nothing written
