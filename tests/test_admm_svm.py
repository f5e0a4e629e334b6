"""`fedf simulate --algorithm admm-svm` as a user runs it, on LIBSVM files it did not write:
the final model against scikit-learn's LinearSVC on the same problem."""

import json

import numpy as np
import pytest
from mpi_jobs import config_of, needs_mpiexec, ok, train
from sklearn.datasets import dump_svmlight_file, make_classification
from sklearn.svm import LinearSVC

from fedf_jax import cli, runlog, simulation

C = 1.0


@pytest.fixture(scope="module")
def libsvm_dir(tmp_path_factory):
    """Standardized make_classification data, written with dump_svmlight_file."""
    x, y = make_classification(n_samples=360, n_features=8, n_informative=5, flip_y=0.05,
                               class_sep=0.8, random_state=3)
    x = (x - x.mean(0)) / x.std(0)
    d = tmp_path_factory.mktemp("libsvm")
    dump_svmlight_file(x[:280], y[:280], str(d / "train.svm"))
    dump_svmlight_file(x[280:], y[280:], str(d / "test.svm"))
    return d, x[:280], 2 * y[:280] - 1, x[280:], 2 * y[280:] - 1


def _objective(w, x, y):
    a = np.concatenate([x, np.ones((len(x), 1))], 1)
    return 0.5 * w @ w + C * np.maximum(0, 1 - y * (a @ w)).sum()


@pytest.fixture(scope="module")
def reference(libsvm_dir):
    _, x, y, xt, yt = libsvm_dir
    a = np.concatenate([x, np.ones((len(x), 1))], 1)
    ref = LinearSVC(C=C, loss="hinge", fit_intercept=False, tol=1e-10, max_iter=200_000)
    w = ref.fit(a, y).coef_[0]
    at = np.concatenate([xt, np.ones((len(xt), 1))], 1)
    return _objective(w, x, y), int((np.sign(at @ w) == yt).sum())


@pytest.mark.parametrize("flags", [
    ["--workers", "4", "--partition", "dirichlet-sizes"],
    ["--workers", "3", "--split", "features"],
    ["--workers", "5", "--groups", "2", "--group-epochs", "2"],
], ids=["samples", "features", "two-levels"])
def test_final_model_reaches_linearsvc(flags, libsvm_dir, reference, tmp_path):
    d, x, y, xt, yt = libsvm_dir
    out = tmp_path / "run"
    assert cli.main(["simulate", "--algorithm", "admm-svm", "--data", "libsvm", "--data-dir",
                     str(d), "--epochs", "4000", "--svm-c", str(C), "--quiet", "--out",
                     str(out), *flags]) == 0
    w = np.load(out / "final_model.npy").astype(np.float64)
    assert w.shape == (x.shape[1] + 1,)
    obj, right = reference
    assert abs(_objective(w, x, y) - obj) / obj <= 1e-3
    at = np.concatenate([xt, np.ones((len(xt), 1))], 1)
    assert abs(int((np.sign(at @ w) == yt).sum()) - right) <= 2
    header, epochs = runlog.read(out / "run.jsonl")
    assert header["num_params"] == x.shape[1] + 1 and header["algorithm"] == "admm-svm"
    last = epochs[-1]
    assert last["converged"] is True and len(epochs) < 4000  # stopped on Boyd's rule
    assert last["objective"] == pytest.approx(_objective(w, x, y), rel=1e-4)
    for field in ("primal_residual", "dual_residual", "rho", "bytes_total", "test_accuracy",
                  "modeled_s"):
        assert field in last
    if "--groups" in flags:
        assert all(e["bytes_total"] == e["bytes_group"] + e["bytes_top"] for e in epochs)


def test_bytes_per_iteration_follow_the_message_sizes(libsvm_dir, tmp_path):
    d, x, *_ = libsvm_dir
    p = x.shape[1] + 1
    for flags, want in [
        (["--workers", "4"], 4 * (4 * (p + 1) + 4 * p + 4 * 4) + 2 * 4 * 36),
        (["--workers", "3", "--split", "features"],
         3 * (4 * 280 + 4 * 280 + 4 * 5) + 2 * 3 * 36),
    ]:
        out = tmp_path / str(len(flags))
        assert cli.main(["simulate", "--algorithm", "admm-svm", "--data", "libsvm",
                         "--data-dir", str(d), "--epochs", "2", "--tol", "0", "--quiet",
                         "--out", str(out), *flags]) == 0
        _, epochs = runlog.read(out / "run.jsonl")
        assert [e["bytes_total"] for e in epochs] == [want, want]


@pytest.mark.parametrize("flags, needle", [
    (["--split", "features", "--workers", "12"], "needs at least 12 columns"),
    (["--groups", "7", "--workers", "5"], "`groups` (=7) must be at most `workers` (=5)"),
    (["--groups", "2", "--algorithm", "phong"], "`groups` (=2) applies to algorithms"),
    (["--split", "features", "--algorithm", "fedf"], "`split='features'` applies to"),
])
def test_bad_layouts_are_one_line_exit_2(flags, needle, libsvm_dir, tmp_path, capsys):
    d = libsvm_dir[0]
    argv = ["simulate", "--algorithm", "admm-svm", "--data", "libsvm", "--data-dir", str(d),
            "--epochs", "1", "--out", str(tmp_path / "r"), *flags]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err


def test_a_bad_libsvm_line_is_named(tmp_path, capsys):
    (tmp_path / "train.svm").write_text("1 1:0.5 2:1\n-1 1:0.2 2:oops\n")
    (tmp_path / "test.svm").write_text("1 1:0.5\n")
    argv = ["simulate", "--algorithm", "admm-svm", "--data", "libsvm", "--data-dir",
            str(tmp_path), "--workers", "1", "--out", str(tmp_path / "r")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "train.svm:2:" in err and "oops" in err and len(err.strip().splitlines()) == 1


def test_a_config_file_can_list_each_groups_workers(libsvm_dir, tmp_path):
    d = libsvm_dir[0]
    cfg = tmp_path / "g.json"
    cfg.write_text(json.dumps({"algorithm": "admm-svm", "data": "libsvm", "data_dir": str(d),
                               "workers": 4, "groups": 2, "epochs": 3,
                               "group_workers": [[0, 3], [1, 2]]}))
    assert cli.main(["simulate", "--config", str(cfg), "--quiet", "--out",
                     str(tmp_path / "r")]) == 0
    header, _ = runlog.read(tmp_path / "r" / "run.jsonl")
    assert header["config"]["group_workers"] == [[0, 3], [1, 2]]


@needs_mpiexec
def test_admm_svm_under_mpiexec_equals_simulate(libsvm_dir, reference, tmp_path):
    d, x, y, *_ = libsvm_dir
    flags = ["--algorithm", "admm-svm", "--data", "libsvm", "--data-dir", str(d), "--workers",
             "4", "--epochs", "4000"]
    ok(train(tmp_path / "mpi", *flags, ranks=3))
    sim = simulation.run(config_of(*flags))
    header, epochs = runlog.read(tmp_path / "mpi" / "run.jsonl")
    assert header["backend"] == "mpi" and header["worker_ranks"] == [[], [0, 1], [2, 3]]
    w = np.load(tmp_path / "mpi" / "final_model.npy").astype(np.float64)
    np.testing.assert_allclose(w, sim["params"], rtol=1e-4, atol=1e-5)
    assert abs(len(epochs) - len(sim["records"])) <= 1  # the sums are float64 here
    assert abs(_objective(w, x, y) - reference[0]) / reference[0] <= 1e-3
    first = epochs[0]
    assert first["bytes_total"] == sim["records"][0]["bytes_total"]
    assert set(first["mpi_bytes_detail"]) == {"control", "x+u", "z", "statistics", "reports"}


@needs_mpiexec
def test_admm_svm_under_mpiexec_refuses_what_it_does_not_run(libsvm_dir, tmp_path):
    proc = train(tmp_path, "--algorithm", "admm-svm", "--data", "libsvm", "--data-dir",
                 str(libsvm_dir[0]), "--split", "features", ranks=3, timeout=120)
    assert proc.returncode == 2
    assert "runs consensus ADMM (--split samples) in one level" in proc.stderr
