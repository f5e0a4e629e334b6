"""`fedf report` (analysis/): run logs written with known numbers, no training.

Expected values are computed here with numpy (or by hand) and compared with
report.md and summary.json.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sims_loader
from PIL import Image

from analysis import report, runs, tables
from fedf_jax.runlog import RunLog

E = 6
# Centralized: seeds 0 and 1 logged with N=1, seed 2 beside an N=3 run (N is not matched).
CENTRAL_ACC = {0: [0.30, 0.50, 0.70, 0.80, 0.85, 0.90],
               1: [0.35, 0.55, 0.80, 0.82, 0.86, 0.88],
               2: [0.32, 0.52, 0.69, 0.81, 0.87, 0.89]}
CENTRAL_N = {0: 1, 1: 1, 2: 3}
CENTRAL_MODELED = [9.0, 10.0, 11.0, 12.0, 13.0, 14.0]
FEDF3_ACC = {0: [0.40, 0.60, 0.75, 0.80, 0.82, 0.84],
             1: [0.38, 0.62, 0.74, 0.79, 0.83, 0.85],
             2: [0.41, 0.59, 0.70, 0.81, 0.80, 0.86]}
FEDF3_MODELED = [2.0, 2.5, 3.0, 3.5, 4.0, 4.5]
OLD_ACC = [0.10, 0.12, 0.15, 0.20, 0.25, 0.30]  # d=-1, no `algorithm` key: never reaches


def epoch_bytes(n: int, extra: int = 0) -> dict[str, int]:
    parts = {"bytes_down": 1000 * n + extra, "bytes_up_model": 1000,
             "bytes_up_ternary": 63 * (n - 1), "bytes_other": 9 * n, "bytes_header": 80 * n}
    return {**parts, "bytes_total": sum(parts.values())}


def write_run(path: Path, config: dict, acc, modeled=None, wall=None, nbytes=None,
              summary=True, overrides=None):
    """A run log: header, one line per epoch (``overrides[i]`` replaces fields), summary."""
    n = config["workers"]
    header = {"type": "header", "schema": 1, "seed": config["seed"], "config": config,
              "versions": {}, "devices": ["cpu"], "num_params": 250,
              "worker_sizes": [10] * n, "num_test": 50, "backend": "vmap"}
    modeled = modeled or [1.0] * len(acc)
    wall = wall or [0.5] * len(acc)
    with RunLog(path / "run.jsonl", header) as log:
        for i, a in enumerate(acc):
            rec = {"type": "epoch", "epoch": i + 1, "pilot": 0, "costs": [1.0] * n,
                   "goodness": [1.0] * n, "test_loss": 1.0 / (i + 1), "test_accuracy": a,
                   **(nbytes or epoch_bytes(n)), "ternary_nonzero_fraction": 0.3,
                   "wall_s": wall[i], "modeled_s": modeled[i]}
            rec.update((overrides or {}).get(i, {}))
            log.write(rec)
        if summary and acc:
            log.write({"type": "summary", "final_test_accuracy": acc[-1]})


def cfg(algorithm, workers, seed, **extra):
    out = {"workers": workers, "epochs": E, "model": "mlp", "data": "digits", "seed": seed,
           "direction": 1, "scheme": "2bit", **extra}
    if algorithm is not None:
        out["algorithm"] = algorithm
    return out


def random_acc(seed):
    return np.random.default_rng(100 + seed).uniform(0.5, 0.9, E).round(6).tolist()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("runs")
    for s, acc in CENTRAL_ACC.items():
        write_run(r / f"central/s{s}", cfg("central", CENTRAL_N[s], s), acc,
                  modeled=CENTRAL_MODELED, wall=[1.0] * E, nbytes=epoch_bytes(1))
    for s, acc in FEDF3_ACC.items():
        write_run(r / f"fedf3/s{s}", cfg("fedf", 3, s), acc, modeled=FEDF3_MODELED)
    for s in (0, 1):  # random accuracies; seed-dependent bytes (a non-zero std)
        write_run(r / f"fedf5/s{s}", cfg("fedf", 5, s), random_acc(s),
                  nbytes=epoch_bytes(5, extra=700 * s))
    old = cfg(None, 3, 0, direction=-1)  # an older log: no `algorithm`, no `fraction`
    write_run(r / "old", old, OLD_ACC)
    # FedAvg with C=0.5: seed 1 has a null final accuracy and died (no summary line).
    write_run(r / "fedavg_half/s0", cfg("fedavg", 3, 0, fraction=0.5), [0.5] * 5 + [0.7])
    write_run(r / "fedavg_half/s1", cfg("fedavg", 3, 1, fraction=0.5),
              [0.5] * 5 + [float("nan")], summary=False)
    write_run(r / "fedavg/s0", cfg("fedavg", 3, 0, fraction=1.0), [0.6] * E)
    write_run(r / "phong/s0", cfg("phong", 3, 0), [0.7] * E)
    # TernGrad with nulls in goodness, accuracy and loss.
    write_run(r / "terngrad/s0", cfg("terngrad", 3, 0), [0.2, None, 0.4, 0.5, 0.6, 0.65],
              overrides={0: {"goodness": [None, 1.0, None]}, 2: {"test_loss": None}})
    # A run that has not finished its first epoch: skipped.
    write_run(r / "starting", cfg("fedf", 3, 9), [])
    return r


@pytest.fixture(scope="module")
def default_report(root):
    return report.make_report([root])


@pytest.fixture(scope="module")
def target_report(root, tmp_path_factory):
    """The same runs through the CLI entry points with --target 0.8."""
    out = tmp_path_factory.mktemp("target") / "rep"
    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    args = parser.parse_args([str(root), "--out", str(out), "--target", "0.8",
                              "--title", "Target run"])
    assert report.main(args) == 0
    return out


def section(markdown: str, title: str) -> str:
    return markdown.split(f"## {title}")[1].split("\n## ")[0]


def row(text: str, label: str, n) -> list[str]:
    lead = f"| digits | mlp | {label} | {n} |"
    lines = [ln for ln in text.splitlines() if ln.startswith(lead)]
    assert len(lines) == 1, (lead, text)
    return [c.strip() for c in lines[0].strip("|").split("|")][4:]


def test_report_writes_files_and_valid_pngs(root, default_report):
    out = root / "report"
    assert Path(default_report["out"]) == out
    for name in ("report.md", "summary.json", "accuracy_vs_epoch.png", "accuracy_vs_time.png",
                 "loss_vs_epoch.png", "bytes_per_epoch.png", "speedup.png"):
        assert (out / name).is_file(), name
    for name in ("accuracy_vs_epoch.png", "accuracy_vs_time.png", "loss_vs_epoch.png",
                 "bytes_per_epoch.png", "speedup.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG"
            w, h = im.size
            assert 700 <= w <= 4000 and 400 <= h <= 3000, (name, im.size)
            pixels = np.asarray(im.convert("L"))
            assert pixels.std() > 5, f"{name} looks blank"
    md = (out / "report.md").read_text()
    assert md.startswith("# FEDF run report")
    for name in report.FIGURES:
        assert f"- `{name}`: {report.FIGURES[name]}" in md
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["runs"]) == 14 and summary["skipped"] == [
        str(root / "starting" / "run.jsonl")]
    assert "Skipped (no epoch line yet)" in md


def test_runs_are_listed_with_algorithm_n_seed_epochs(root, default_report):
    md = default_report["markdown"]
    listed = section(md, "Runs")
    assert f"| `{root / 'old' / 'run.jsonl'}` | fedf | FEDF (d=-1) | 3 | 0 | 6 | yes |" in listed
    assert (f"| `{root / 'fedavg_half' / 's1' / 'run.jsonl'}` | fedavg | FedAvg (C=0.5) | 3 | "
            "1 | 6 | no (no summary line) |") in listed


def test_accuracy_table_matches_numpy(default_report):
    acc = section(default_report["markdown"], "Test accuracy")
    for label, n, per_seed in (("FEDF (d=+1)", 3, list(FEDF3_ACC.values())),
                               ("FEDF (d=+1)", 5, [random_acc(0), random_acc(1)]),
                               ("Centralized", "1,3", list(CENTRAL_ACC.values()))):
        a = np.array(per_seed)
        final, best = a[:, -1], a.max(axis=1)
        cells = row(acc, label, n)
        assert cells[0] == f"{final.mean():.4f} ± {final.std(ddof=1):.4f} (n={len(a)})"
        assert cells[1] == f"{best.mean():.4f} ± {best.std(ddof=1):.4f} (n={len(a)})"
    central_final = np.mean([v[-1] for v in CENTRAL_ACC.values()])
    fedf_final = np.mean([v[-1] for v in FEDF3_ACC.values()])
    assert row(acc, "FEDF (d=+1)", 3)[2] == f"{100 * (fedf_final - central_final):+.2f}"
    assert row(acc, "Centralized", "1,3")[2] == "reference"
    # Null accuracies: a null final is left out and counted apart; a null epoch is skipped.
    assert row(acc, "FedAvg (C=0.5)", 3)[0] == "0.7000 (n=1 of 2)"
    assert row(acc, "TernGrad", 3)[:2] == ["0.6500 (n=1)", "0.6500 (n=1)"]
    assert row(acc, "FedAvg", 3)[0] == "0.6000 (n=1)"


def test_bytes_table_in_mb_matches_numpy(default_report):
    byt = section(default_report["markdown"], "Data exchanged")
    assert "1 MB = 10^6 bytes" in byt
    totals = np.array([epoch_bytes(5, 700 * s)["bytes_total"] for s in (0, 1)], float)
    cells = row(byt, "FEDF (d=+1)", 5)
    assert cells[0] == f"{totals.mean() / 1e6:.4g} ± {totals.std(ddof=1) / 1e6:.2g}"
    b3 = epoch_bytes(3)
    assert row(byt, "FEDF (d=+1)", 3) == [
        f"{b3[k] / 1e6:.4g}" for k in ("bytes_total", "bytes_down", "bytes_up_model",
                                       "bytes_up_ternary", "bytes_other", "bytes_header")]
    groups = json.loads((Path(default_report["out"]) / "summary.json").read_text())["groups"]
    g = next(g for g in groups if g["label"] == "FEDF (d=+1)" and g["workers"] == 5)
    np.testing.assert_allclose(g["bytes_per_epoch"]["total"]["mean"], totals.mean())
    np.testing.assert_allclose(g["bytes_per_epoch"]["total"]["std"], totals.std(ddof=1))


def test_time_to_target_and_speedup_by_hand(target_report):
    md = (target_report / "report.md").read_text()
    assert md.startswith("# Target run")
    tim = section(md, "Time to target")
    assert "**0.8000** (given with --target)" in tim
    # Centralized reaches 0.8 at epochs 4, 3, 4: modeled 9+10+11+12 = 42, 30, 42 s.
    c = row(tim, "Centralized", "1,3")
    assert c[:5] == ["0.8000", "3/3", "3.7 ± 0.6 (n=3)", "38.0 ± 6.9 (n=3)",
                     "3.67 ± 0.58 (n=3)"]
    # FEDF N=3 reaches it at epochs 4, 5, 4: modeled 11, 15, 11 s; wall 2.0, 2.5, 2.0 s.
    f = row(tim, "FEDF (d=+1)", 3)
    assert f[:5] == ["0.8000", "3/3", "4.3 ± 0.6 (n=3)", "12.3 ± 2.3 (n=3)",
                     "2.17 ± 0.29 (n=3)"]
    assert f[5] == f"{38 / (37 / 3):.2f}×" == "3.08×"
    # Whole runs: centralized 69 s each, FEDF 19.5 s each.
    assert f[7] == f"{69 / 19.5:.2f}×"
    summary = json.loads((target_report / "summary.json").read_text())
    g = next(g for g in summary["groups"] if g["label"] == "FEDF (d=+1)" and g["workers"] == 3)
    np.testing.assert_allclose(g["speedup"], 38 / (37 / 3))
    np.testing.assert_allclose(g["target_modeled_s"]["mean"], 37 / 3)
    np.testing.assert_allclose(g["target_epoch"]["mean"], 13 / 3)


def test_not_reached_is_reported(default_report, target_report):
    tim = section((target_report / "report.md").read_text(), "Time to target")
    assert row(tim, "FEDF (d=-1)", 3)[1:3] == ["0/1", "not reached (0/1)"]
    assert row(tim, "FEDF (d=-1)", 3)[5] == "—"
    # Default target 0.95 x mean centralized final (0.89) = 0.8455: FEDF N=3 seed 0 misses.
    tim = section(default_report["markdown"], "Time to target")
    target = 0.95 * np.mean([v[-1] for v in CENTRAL_ACC.values()])
    assert f"**{target:.4f}** (0.95 × the Centralized mean final accuracy (0.8900))" in tim
    f = row(tim, "FEDF (d=+1)", 3)
    assert f[:3] == [f"{target:.4f}", "2/3", "6.0 ± 0.0 (n=2 of 3)"]
    c_time = np.mean([sum(CENTRAL_MODELED[:5])] * 3)
    assert f[5] == f"{c_time / sum(FEDF3_MODELED):.2f}×"


def test_no_centralized_target_is_lowest_best_and_no_speedup(tmp_path):
    write_run(tmp_path / "a/s0", cfg("fedf", 2, 0), [0.5, 0.6])
    write_run(tmp_path / "a/s1", cfg("fedf", 2, 1), [0.7, 0.65])
    write_run(tmp_path / "b", cfg("fedavg", 2, 0), [0.8, 0.9])
    rep = report.make_report([tmp_path / "a", tmp_path / "b"], out=tmp_path / "rep")
    md = rep["markdown"]
    assert "**0.5850** (0.9 × the lowest group mean best accuracy (0.6500, FEDF (d=+1), N=2))" \
        in md
    assert not (tmp_path / "rep" / "speedup.png").exists()
    assert "`speedup.png`: not written (no centralized run" in md
    assert row(section(md, "Test accuracy"), "FEDF (d=+1)", 2)[2] == "—"


def test_old_log_without_algorithm_is_fedf(root):
    run = runs.load_run(root / "old" / "run.jsonl")
    assert (run.algorithm, run.label, run.workers) == ("fedf", "FEDF (d=-1)", 3)
    assert runs.label({"algorithm": "fedavg", "fraction": 0.25}) == "FedAvg (C=0.25)"
    assert runs.label({"direction": 1}) == "FEDF (d=+1)"


def test_grouping_ignores_n_for_centralized_only(root):
    groups = runs.group_runs(runs.load_runs([root])[0])
    keys = list(groups)
    assert keys[0][:4] == ("digits", "mlp", "Centralized", None) and keys[0].variant == ()
    assert [r.seed for r in groups[keys[0]]] == [0, 1, 2]
    assert [k.label for k in keys] == ["Centralized", "FEDF (d=+1)", "FEDF (d=+1)",
                                       "FEDF (d=-1)", "FedAvg", "FedAvg (C=0.5)",
                                       "Phong et al.", "TernGrad"]
    assert [k.workers for k in keys][1:3] == [3, 5]


def _grouped(tmp_path, capsys, *specs):
    """Writes one run per (folder, config, accuracies); runs `fedf report` on them.

    Returns (accuracy section of report.md, summary.json, what was printed)."""
    for folder, config, acc in specs:
        write_run(tmp_path / folder, config, acc)
    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    assert report.main(parser.parse_args([str(tmp_path), "--out", str(tmp_path / "rep")])) == 0
    printed = capsys.readouterr().out
    md = (tmp_path / "rep" / "report.md").read_text()
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    return section(md, "Test accuracy"), summary, printed


def test_runs_differing_only_in_epochs_are_separate_rows_and_seeds_still_merge(tmp_path,
                                                                                 capsys):
    acc, summary, printed = _grouped(
        tmp_path, capsys,
        ("e6/s0", cfg("fedf", 3, 0), [0.5, 0.6]), ("e6/s1", cfg("fedf", 3, 1), [0.5, 0.8]),
        ("e10/s0", cfg("fedf", 3, 0, epochs=10), [0.5, 0.9]))
    six = row(acc, "FEDF (d=+1) [epochs=6]", 3)
    assert six[0] == f"0.7000 ± {np.std([0.6, 0.8], ddof=1):.4f} (n=2)"
    assert row(acc, "FEDF (d=+1) [epochs=10]", 3)[0] == "0.9000 (n=1)"
    groups = {g["name"]: g for g in summary["groups"]}
    assert groups["FEDF (d=+1) [epochs=6]"]["seeds"] == [0, 1]
    assert groups["FEDF (d=+1) [epochs=10]"]["variant"] == {"epochs": "10"}
    assert "merged: digits/mlp FEDF (d=+1) [epochs=6] N=3: 2 runs, seeds 0, 1" in printed
    assert ("split: digits/mlp FEDF (d=+1) N=3 into 2 groups by epochs: epochs=6; epochs=10"
            in printed)
    assert summary["notes"] == []  # nothing averaged across configs, nothing to warn about


def test_runs_differing_in_partition_scheme_or_backend_are_separate_rows(tmp_path, capsys):
    acc, summary, printed = _grouped(
        tmp_path, capsys,
        ("iid", cfg("fedf", 3, 0, partition="iid"), [0.5]),
        ("dir", cfg("fedf", 3, 0, partition="label-dirichlet"), [0.6]),
        ("b3", cfg("fedf", 3, 0, partition="iid", scheme="base3"), [0.7]),
        ("sh", cfg("fedf", 3, 0, partition="iid", backend="sharded"), [0.8]))
    names = [g["name"] for g in summary["groups"]]
    assert len(names) == len(set(names)) == 4
    # fields in the order of the logged config
    assert row(acc, "FEDF (d=+1) [scheme=2bit, partition=label-dirichlet, backend=vmap]",
               3)[0] == "0.6000 (n=1)"
    assert row(acc, "FEDF (d=+1) [scheme=base3, partition=iid, backend=vmap]",
               3)[0] == "0.7000 (n=1)"
    assert row(acc, "FEDF (d=+1) [scheme=2bit, partition=iid, backend=sharded]",
               3)[0] == "0.8000 (n=1)"
    assert "groups differ in scheme, partition, backend" in printed


def test_old_logs_without_newer_fields_merge_with_their_defaults(tmp_path, capsys):
    new = cfg("fedf", 3, 1, backend="vmap", devices=None, width=None, augment=False,
              image_size=None, tile=None, fraction=1.0, scan_epochs=1)
    acc, summary, printed = _grouped(
        tmp_path, capsys, ("old", cfg(None, 3, 0), [0.4, 0.6]), ("new", new, [0.5, 0.8]))
    assert row(acc, "FEDF (d=+1)", 3)[0] == f"0.7000 ± {np.std([0.6, 0.8], ddof=1):.4f} (n=2)"
    assert "merged: digits/mlp FEDF (d=+1) N=3: 2 runs, seeds 0, 1" in printed
    # a field the older log lacks and no default is known for: never merged
    odd = cfg("fedf", 3, 2, new_knob=3)
    acc, summary, _ = _grouped(tmp_path / "odd", capsys, ("a", cfg("fedf", 3, 0), [0.4]),
                               ("b", odd, [0.5]))
    assert {g["name"] for g in summary["groups"]} == {"FEDF (d=+1) [new_knob=absent]",
                                                      "FEDF (d=+1) [new_knob=3]"}


def test_worker_specs_split_groups_and_centralized_uses_the_first_spec(tmp_path):
    spec = {"lr": 0.2, "batch_size": 10, "local_epochs": 1, "optimizer": "sgd",
            "momentum": 0.9}
    fast = {**spec, "lr": 0.5}
    write_run(tmp_path / "a", cfg("fedf", 2, 0, worker_specs=[spec, spec]), [0.5])
    write_run(tmp_path / "b", cfg("fedf", 2, 1, worker_specs=[spec, spec]), [0.6])
    write_run(tmp_path / "c", cfg("fedf", 2, 0, worker_specs=[spec, fast]), [0.7])
    write_run(tmp_path / "d", cfg("central", 2, 0, worker_specs=[spec, spec]), [0.9])
    write_run(tmp_path / "e", cfg("central", 3, 1, worker_specs=[spec, fast, fast]), [0.8])
    groups = runs.group_runs(runs.load_runs([tmp_path])[0])
    by = {k.name: [r.seed for r in v] for k, v in groups.items()}
    # the two centralized runs train with the same first spec: one group over N = 2, 3
    assert by["Centralized"] == [0, 1]
    assert by["FEDF (d=+1) [worker.lr=0.2]"] == [0, 1]
    assert by["FEDF (d=+1) [worker[0].lr=0.2, worker[1].lr=0.5]"] == [0]


def test_gap_uses_the_centralized_group_of_the_same_epochs(tmp_path, capsys):
    acc, summary, printed = _grouped(
        tmp_path, capsys,
        ("c6", cfg("central", 1, 0), [0.8]), ("c10", cfg("central", 1, 0, epochs=10), [0.9]),
        ("f10", cfg("fedf", 3, 0, epochs=10), [0.85]))
    assert row(acc, "FEDF (d=+1) [epochs=10]", 3)[2] == "-5.00 (vs Centralized [epochs=10])"
    assert ("reference: digits/mlp FEDF (d=+1) [epochs=10] N=3 is compared with "
            "Centralized [epochs=10]") in printed


def test_stat_leaves_nan_out():
    s = tables.stat([0.5, float("nan"), 0.7, 0.9])
    np.testing.assert_allclose([s.mean, s.std], [0.7, np.std([0.5, 0.7, 0.9], ddof=1)])
    assert (s.n, s.total) == (3, 4)
    assert tables.first_reaching(np.array([np.nan, 0.79, 0.8, 0.9]), 0.8) == 2
    assert tables.first_reaching(np.array([np.nan, 0.5]), 0.8) is None


def _bad_inputs(tmp: Path) -> dict[str, Path]:
    (tmp / "empty").mkdir()
    (tmp / "text").mkdir()
    (tmp / "text" / "run.jsonl").write_text("epoch,accuracy\n1,0.5\n")
    (tmp / "binary").mkdir()
    (tmp / "binary" / "run.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    (tmp / "array").mkdir()
    (tmp / "array" / "run.jsonl").write_text("[1, 2]\n")
    (tmp / "noheader").mkdir()
    (tmp / "noheader" / "run.jsonl").write_text('{"type": "epoch", "epoch": 1}\n')
    write_run(tmp / "noconfig", {"workers": 2, "seed": 0}, [0.5])
    write_run(tmp / "unknown", cfg("sgd", 2, 0), [0.5])
    write_run(tmp / "noepoch", cfg("fedf", 2, 0), [])
    return {"missing": tmp / "missing", "empty": tmp / "empty",
            "text": tmp / "text" / "run.jsonl", "binary": tmp / "binary" / "run.jsonl",
            "array": tmp / "array" / "run.jsonl", "noheader": tmp / "noheader" / "run.jsonl",
            "noconfig": tmp / "noconfig" / "run.jsonl",
            "unknown": tmp / "unknown" / "run.jsonl", "noepoch": tmp / "noepoch" / "run.jsonl"}


@pytest.mark.parametrize("case", ["missing", "empty", "text", "binary", "array", "noheader",
                                  "noconfig", "unknown", "noepoch"])
def test_bad_input_is_a_one_line_value_error_naming_the_path(tmp_path, case):
    bad = _bad_inputs(tmp_path)[case]
    arg = bad.parent if bad.name == "run.jsonl" else bad
    with pytest.raises(ValueError) as e:
        report.make_report([arg], out=tmp_path / "rep")
    msg = str(e.value)
    assert str(bad) in msg and "\n" not in msg, msg
    assert not (tmp_path / "rep").exists()


def test_bad_target_is_a_value_error(root, tmp_path):
    with pytest.raises(ValueError, match=r"--target \(=1.5\) must be a test accuracy"):
        report.make_report([root], out=tmp_path / "rep", target=1.5)


def test_module_command_prints_one_line_error_and_exit_code_2(tmp_path):
    missing = tmp_path / "nowhere"
    proc = subprocess.run([sys.executable, "-m", "analysis.report", str(missing)],
                          capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and str(missing) in proc.stderr, proc.stderr
    assert proc.stderr.startswith("python -m analysis.report: error:")


@pytest.mark.parametrize("script", ["paper/make_results.py", "bench/run_all.py",
                                    "privacy/run_all.py"])
def test_quick_runs_write_to_a_git_ignored_quick_folder(script):
    repo = Path(__file__).resolve().parents[1]
    path = repo / "sims" / script
    module = sims_loader.load(path.parent.name, path.stem)
    here = path.parent
    assert Path(module.output_dir(False)) == here
    assert Path(module.output_dir(True)) == here / "quick"
    assert Path(module.output_dir(True, "elsewhere")) == Path("elsewhere")
    ignored = (repo / ".gitignore").read_text().splitlines()
    assert f"sims/{here.name}/quick/" in ignored
    if script.startswith("paper"):  # quick run logs apart from the ones a full run resumes
        assert module.runs_dir("digits-mlp", True) != module.runs_dir("digits-mlp", False)

