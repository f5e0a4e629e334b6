"""sims/hierarchy: the analytic optimum G* against brute force, and --quick writing only
under quick/."""

from pathlib import Path

import numpy as np
import pytest
import sims_loader

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "sims" / "hierarchy"
M = 9610  # the digits MLP


@pytest.fixture(scope="module")
def run_all():
    return sims_loader.load("hierarchy", "run_all")


@pytest.fixture(scope="module")
def analytic():
    return sims_loader.load("hierarchy", "analytic")


@pytest.mark.parametrize("kappa", [1, 2])
@pytest.mark.parametrize("n", [64, 1000, 4000])
def test_best_g_is_the_brute_force_argmin_of_the_modeled_time(analytic, n, kappa):
    times = np.array([analytic.epoch_s(n, g, M, 1e-3, kappa=kappa) for g in range(1, n + 1)])
    first = int(np.flatnonzero(times <= times.min() + analytic.TIE_S)[0]) + 1
    for c in (1e-3, 0.0, 0.5):  # compute is in every G's time: it never moves the optimum
        assert analytic.best_g(n, M, c, kappa=kappa) == first


@pytest.mark.parametrize("n", [256, 10_000])
def test_g_star_is_the_argmin_of_the_relaxed_time_and_next_to_the_integer_optimum(analytic, n):
    gs = np.linspace(2.0, 200.0, 19_801)  # steps of 0.01
    relaxed = [analytic.relaxed_epoch_s(n, g, M, 0.0) for g in gs]
    star = analytic.g_star(n)
    assert abs(gs[int(np.argmin(relaxed))] - star) <= 0.01
    np.testing.assert_allclose(star, np.sqrt(n / 10))  # B / B_g = 125e6 / 1.25e9
    assert abs(analytic.best_g(n, M) - star) < 1


def test_quick_writes_only_under_a_git_ignored_quick_folder(run_all, analytic, tmp_path,
                                                            monkeypatch):
    assert run_all.output_dir(False) == HERE
    assert run_all.output_dir(True) == HERE / "quick"
    assert run_all.output_dir(True, "elsewhere") == Path("elsewhere")
    assert all(p.parent == HERE / "quick" for p in run_all.paths(run_all.output_dir(True))
               .values())
    assert "sims/hierarchy/quick/" in (REPO / ".gitignore").read_text().splitlines()

    def canned(opts, log=print):  # the closed forms only: no runs
        links = analytic.Links()
        ws = [64, 1000]
        sw = run_all.sweep.sweep
        return {"options": opts, "links": links._asdict(), "num_params": M,
                "compute": {"compute_s": 1e-3, "workers": 12, "epochs": 1,
                            "shard_sizes": [119, 120], "num_params": M,
                            "epoch_wall_median_s": 0.012},
                "alpha": analytic.affine_bytes(M)[0], "beta": analytic.affine_bytes(M)[1],
                "break_even_n": analytic.break_even_n(M), "break_even_n_integer": 4,
                "sweep": sw(M, 1e-3, ws), "sweep_same_links": sw(
                    M, 1e-3, ws, analytic.Links(125e6, 1e-3, 125e6, 1e-3)),
                "sweep_kappa2": sw(M, 1e-3, ws, kappa=2), "check": [],
                "accuracy_runs": [
                    {"algorithm": "fedf", "workers": 12, "groups": g, "kappa": 1, "seed": 0,
                     "epochs": 3, "final_test_accuracy": 0.8, "bytes_top": 1, "bytes_total": 2,
                     "modeled_s_median": 0.01} for g in (1, 3)],
                "walls": {}}

    monkeypatch.setattr(run_all, "HERE", tmp_path)
    monkeypatch.setattr(run_all, "run", canned)
    assert run_all.main(["--quick", "--no-compile-cache"]) == 0
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert written and all(p.parent == tmp_path / "quick" for p in written)
    assert "RESULTS.md" in {p.name for p in written}
