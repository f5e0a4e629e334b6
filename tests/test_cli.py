"""`fedf simulate` as a user runs it: learns digits, writes the log, rejects bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest

from fedf_jax import cli, runlog


def test_fedf_simulate_defaults_learn_digits(tmp_path, capsys):
    assert cli.main(["simulate", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    header, epochs = runlog.read(tmp_path / "run.jsonl")
    assert header["config"]["workers"] == 5 and header["config"]["direction"] == 1
    assert len(epochs) == header["config"]["epochs"]
    assert epochs[-1]["test_accuracy"] >= 0.90
    assert "final test accuracy" in printed and "Eq. (8)" in printed
    assert printed.count("\n") > len(epochs)  # one table row per epoch
    final = np.load(tmp_path / "final_model.npy")
    assert final.dtype == np.float32 and final.shape == (header["num_params"],)
    summary = json.loads((tmp_path / "run.jsonl").read_text().splitlines()[-1])
    assert summary["type"] == "summary" and summary["diverged"] is False
    # the final model is the global model the last epoch was evaluated on
    from fedf_jax import harness, worker

    host = harness.load(cli.make_config(cli.build_parser().parse_args(["simulate"])))
    ds = host.dataset
    _, acc = worker.evaluate(host.model, final, ds.x_test, ds.y_test, len(ds.y_test), 512)
    assert float(acc) == pytest.approx(epochs[-1]["test_accuracy"], abs=1e-6)


def test_config_file_gives_each_worker_its_own_spec(tmp_path):
    cfg = tmp_path / "w.toml"
    cfg.write_text('epochs = 2\nbeta = [0.1, 0.2, 0.3]\n'
                   '[[worker]]\nlr = 0.1\n'
                   '[[worker]]\nlr = 0.01\noptimizer = "adam"\nbatch_size = 32\n'
                   '[[worker]]\nlr = 0.05\noptimizer = "momentum"\nlocal_epochs = 2\n')
    assert cli.main(["simulate", "--config", str(cfg), "--out", str(tmp_path), "--quiet",
                     "--seed", "3"]) == 0
    header, epochs = runlog.read(tmp_path / "run.jsonl")
    specs = header["config"]["worker_specs"]
    assert header["config"]["workers"] == 3 and header["config"]["seed"] == 3
    assert [s["optimizer"] for s in specs] == ["sgd", "adam", "momentum"]
    assert specs[2]["local_epochs"] == 2 and specs[1]["batch_size"] == 32
    assert len(epochs) == 2


@pytest.mark.parametrize("argv,needle", [
    (["--workers", "0"], "workers"),
    (["--beta", "1.5"], "beta"),
    (["--model", "transformer"], "model"),
    (["--partition", "alphabetical"], "partition"),
    (["--config", "/nonexistent/cfg.toml"], "does not exist"),
    (["--lr", "-0.1"], "lr"),
    (["--scheme", "3bit"], "scheme"),
    (["--direction", "2"], "direction"),
    (["--workers", "5000"], "n_workers"),
])
def test_bad_values_exit_2_with_one_line(argv, needle, tmp_path, capsys):
    try:
        code = cli.main(["simulate", *argv, "--out", str(tmp_path)])
    except SystemExit as e:  # argparse rejects a flag's type or choice
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run.jsonl").exists()


def test_bad_value_from_the_shell_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fedf_jax.cli", "simulate", "--beta", "1.5",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "fedf: error: `beta` (=1.5) must be a number in (0, 1)."


def test_bad_config_key_is_named(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"epochz": 3}))
    with pytest.raises(ValueError, match="epochz"):
        cli.make_config(cli.build_parser().parse_args(["simulate", "--config", str(cfg)]))


def test_help_explains_every_flag():
    text = cli.build_parser()._subparsers._group_actions[0].choices["simulate"].format_help()
    for flag in ("--workers", "--epochs", "--model", "--data", "--data-dir", "--partition",
                 "--alpha0", "--beta", "--direction", "--scheme", "--seed", "--config", "--out"):
        assert flag in text, flag


@pytest.mark.parametrize("text,needle", [
    ('workers = "five"\n', "`workers` (='five')"),
    ("alpha0 = [1, 2]\n", "`alpha0`"),
    ('[[worker]]\nlr = "fast"\n', "`lr` (='fast')"),
    ("epochs = 3\n[broken\n", "not valid TOML"),
])
def test_bad_config_file_values_exit_2_naming_them(text, needle, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    assert cli.main(["simulate", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err


def test_a_reused_out_is_refused_unless_forced(tmp_path, capsys):
    argv = ["simulate", "--epochs", "1", "--workers", "2", "--quiet", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    before = (tmp_path / "run.jsonl").read_text()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "already holds a run log" in err and "--force" in err
    assert (tmp_path / "run.jsonl").read_text() == before  # nothing lost
    assert cli.main([*argv, "--force", "--seed", "4"]) == 0
    assert (tmp_path / "run.jsonl").read_text() != before


@pytest.mark.parametrize("make_out", ["file_parent", "file"])
def test_a_bad_out_is_named_before_any_work(make_out, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    out = afile / "sub" if make_out == "file_parent" else afile
    assert cli.main(["simulate", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and str(out) in err and len(err.strip().splitlines()) == 1


def test_a_config_whose_top_level_is_a_list_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text("[1, 2]")
    assert cli.main(["simulate", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "top level" in err and "list" in err and len(err.strip().splitlines()) == 1


def test_a_flag_error_is_answered_before_jax_is_imported(tmp_path):
    code = ("import sys\nfrom fedf_jax import cli\n"
            f"rc = cli.main(['simulate', '--workers', '0', '--out', {str(tmp_path)!r}])\n"
            "print(rc, 'jax' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.split() == ["2", "False"], proc.stderr


def test_a_diverging_pilot_is_reported_and_logged(tmp_path, capsys):
    # One of 4 workers at lr = 1e6: its cost drop wins Eq. (1) and the model explodes.
    cfg = tmp_path / "d.toml"
    cfg.write_text("workers = 4\nepochs = 4\n" + "[[worker]]\nlr = 0.2\n" * 3
                   + "[[worker]]\nlr = 1e6\n")
    assert cli.main(["simulate", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 0
    out, err = capsys.readouterr()
    lines = [x for x in err.splitlines() if x.startswith("fedf: warning: epoch")]
    assert len(lines) == 1 and "diverged" in lines[0] and "pilot was worker 3" in lines[0]
    assert "DIVERGED" in out
    summary = json.loads((tmp_path / "r" / "run.jsonl").read_text().splitlines()[-1])
    assert summary["diverged"] is True


def test_base3_summary_names_why_it_is_below_eq8(tmp_path, capsys):
    assert cli.main(["simulate", "--scheme", "base3", "--epochs", "1", "--workers", "3",
                     "--out", str(tmp_path)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "Eq. (8)" in x)
    assert "base3 packs 5 trits per byte" in line and "(-" in line and "+-" not in line


def test_central_header_says_one_worker(tmp_path, capsys):
    assert cli.main(["simulate", "--algorithm", "central", "--epochs", "1", "--out",
                     str(tmp_path)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "one worker holding all" in first and "5 workers (" not in first
