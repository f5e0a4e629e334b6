"""`fedf simulate` as a user runs it: learns digits, writes the log, rejects bad input."""

import json
import subprocess
import sys

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
    assert proc.stderr.strip() == ("fedf: error: `beta` (=1.5) must be in the open interval "
                                   "(0, 1).")


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
