"""Two levels under mpiexec (``fedf train --groups G``): the top master on rank 0, each
group's master and worker ranks on their own communicator; against `fedf simulate
--groups G`, with a crash and a resume, and layouts that cannot fit."""

import json

import numpy as np
import pytest
from mpi_jobs import config_of, needs_mpiexec, ok, strip, train

from fedf_jax import runlog, simulation

FLAGS = ["--workers", "6", "--groups", "2", "--epochs", "3", "--seed", "1"]
GROUPED = ["--group-epochs", "2", "--checkpoint-every", "1"]
FIELDS = ("bytes_down", "bytes_up_model", "bytes_up_ternary", "bytes_other", "bytes_header",
          "bytes_total", "bytes_group", "bytes_top")


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    """6 workers in 2 groups of 3 on K = 5 ranks (top + 2 x (group master + 1 worker
    rank)), and the simulator on the same run."""
    out = tmp_path_factory.mktemp("groups")
    ok(train(out, *FLAGS, ranks=5))
    header, epochs = runlog.read(out / "run.jsonl")
    return header, epochs, np.load(out / "final_model.npy"), simulation.run(config_of(*FLAGS))


@needs_mpiexec
def test_mpi_groups_make_the_simulators_choices_at_both_levels(grouped):
    header, epochs, final, sim = grouped
    assert header["backend"] == "mpi" and header["ranks"] == 5
    assert header["group_ranks"] == [[1, 2], [3, 4]]
    assert header["group_workers"] == [[0, 1, 2], [3, 4, 5]]
    assert [r["pilot"] for r in epochs] == [r["pilot"] for r in sim["records"]]
    assert [r["group_pilots"] for r in epochs] == [r["group_pilots"] for r in sim["records"]]
    for a, b in zip(epochs, sim["records"], strict=True):
        for field in FIELDS:
            assert a[field] == b[field], field
        assert a["dropped_frames"] == []
        assert a["mpi_bytes_detail"]["groups"] > 0
    np.testing.assert_allclose(epochs[0]["costs"], sim["records"][0]["costs"], rtol=1e-6)
    np.testing.assert_allclose(final, sim["params"], rtol=1e-5, atol=1e-6)


@needs_mpiexec
def test_a_crashed_grouped_run_resumes_to_the_same_model(tmp_path):
    crashed = train(tmp_path / "a", *FLAGS, *GROUPED, ranks=5, fault="raise:4:3")
    assert crashed.returncode != 0
    assert "fedf: error: rank 4 failed at epoch 3" in crashed.stderr
    latest = json.loads((tmp_path / "a" / "checkpoint" / "latest.json").read_text())
    assert latest == {"epoch": 1, "ranks": 5}
    ok(train(tmp_path / "a", *FLAGS, *GROUPED, "--resume", ranks=5))
    ok(train(tmp_path / "b", *FLAGS, *GROUPED, ranks=5))
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "final_model.npy"),
                                  np.load(tmp_path / "b" / "final_model.npy"))
    assert strip(runlog.read(tmp_path / "a" / "run.jsonl")[1]) == strip(
        runlog.read(tmp_path / "b" / "run.jsonl")[1])


@needs_mpiexec
def test_a_silent_group_worker_rank_is_named_by_its_group_master(tmp_path):
    proc = train(tmp_path, *FLAGS, "--timeout", "5", ranks=5, fault="hang:4:2", timeout=150)
    assert proc.returncode != 0
    assert "fedf: error: rank 4 sent nothing for 5 s at epoch 2" in proc.stderr
    assert "noticed by rank 3" in proc.stderr


@needs_mpiexec
@pytest.mark.parametrize("ranks, flags, needle", [
    (4, FLAGS, "needs K = 1 + G r MPI ranks with r >= 2"),
    (7, ["--workers", "3", "--groups", "2"], "group 1 has 1 worker(s) for its 2 worker ranks"),
])
def test_layouts_that_do_not_fit_are_one_line(ranks, flags, needle, tmp_path):
    proc = train(tmp_path, *flags, ranks=ranks, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr
