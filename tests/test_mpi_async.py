"""The asynchronous top under mpiexec (``fedf train --schedule async --groups G``): the top
master takes the group masters as they finish. ``--staleness 0`` makes the synchronous
run's choices; a slowed group (``--speeds``, a real sleep) does not hold the others back;
stale arrivals are dropped on a sealed wire; a group master that hangs or dies is named;
what the MPI backend does not run is refused in one line.

On K = 5 ranks: the top master (rank 0), group 0 on ranks 1-2 and group 1 on ranks 3-4
(each a group master and one worker rank).
"""

import numpy as np
import pytest
from mpi_jobs import config_of, needs_mpiexec, ok, train

mpi4py = pytest.importorskip("mpi4py")
mpi4py.rc.initialize = False  # the in-process tests need no MPI; the jobs use mpiexec
mpi4py.rc.finalize = False

from fedf_jax import runlog, simulation  # noqa: E402
from fedf_jax import train as train_lib  # noqa: E402

FLAGS = ["--workers", "6", "--groups", "2", "--seed", "1"]
ASYNC = ["--schedule", "async"]
FIELDS = ("bytes_down", "bytes_up_model", "bytes_up_ternary", "bytes_other", "bytes_header",
          "bytes_total", "bytes_group", "bytes_top")


@needs_mpiexec
def test_staleness_zero_makes_the_synchronous_two_level_runs_choices(tmp_path):
    flags = [*FLAGS, "--epochs", "3"]
    ok(train(tmp_path, *flags, *ASYNC, "--staleness", "0", ranks=5))
    header, epochs = runlog.read(tmp_path / "run.jsonl")
    sim = simulation.run(config_of(*flags))  # the synchronous run
    assert header["backend"] == "mpi" and header["group_ranks"] == [[1, 2], [3, 4]]
    assert [r["pilot"] for r in epochs] == [r["pilot"] for r in sim["records"]]
    assert [r["group_pilots"] for r in epochs] == [r["group_pilots"] for r in sim["records"]]
    for a, b in zip(epochs, sim["records"], strict=True):
        assert sorted(a["senders"]) == [0, 1] and a["staleness"] == [0, 0]
        assert a["stale_dropped"] == [] and a["dropped_frames"] == []
        for field in FIELDS:
            assert a[field] == b[field], field
    clocks = [r["clock_s"] for r in epochs]
    assert clocks == sorted(clocks) and clocks[0] > 0
    np.testing.assert_allclose(epochs[0]["costs"], sim["records"][0]["costs"], rtol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "final_model.npy"), sim["params"],
                               rtol=1e-5, atol=1e-6)


@needs_mpiexec
def test_a_slow_group_does_not_hold_the_fast_one_back(tmp_path):
    # Group 1 sleeps 7 times its job time after each job. Buffer 1, staleness bound 2
    # (wait): group 0's arrivals make updates 1 and 2 alone; update 3 would leave group 1
    # three updates behind, so it waits for it: it comes 2 updates stale.
    ok(train(tmp_path, *FLAGS, "--epochs", "4", *ASYNC, "--speeds", "1,8", "--buffer", "1",
             "--staleness", "2", ranks=5))
    _, epochs = runlog.read(tmp_path / "run.jsonl")
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4]
    assert [r["senders"] for r in epochs[:2]] == [[0], [0]]
    assert [r["staleness"] for r in epochs[:2]] == [[0], [0]]
    third = dict(zip(epochs[2]["senders"], epochs[2]["staleness"], strict=True))
    assert third[1] == 2 and third.get(0, 0) == 0  # group 0 too, unless group 1 came first
    clocks = [r["clock_s"] for r in epochs]
    assert clocks == sorted(clocks)
    assert clocks[1] < 0.5 * clocks[2]  # the fast group's updates did not wait
    assert epochs[0]["costs"][3:] == [None] * 3  # group 1's workers are not in it (NaN)
    assert all(np.isfinite(r["test_loss"]) for r in epochs)


@needs_mpiexec
def test_a_sealed_run_drops_stale_arrivals_and_goes_on(tmp_path):
    # Buffer 1, bound 0, drop: the first arrival makes update 1 alone, so the other
    # group's first arrival comes stale and is dropped (it starts again from the current
    # model). Groups of 3 and 2 workers; every message sealed.
    ok(train(tmp_path, "--workers", "5", "--groups", "2", "--seed", "1", "--epochs", "4",
             *ASYNC, "--buffer", "1", "--staleness", "0", "--stale-policy", "drop",
             "--wire", "aead", ranks=5))
    _, epochs = runlog.read(tmp_path / "run.jsonl")
    assert len(epochs) == 4
    assert all(r["staleness"] == [0] for r in epochs)
    dropped = [(r["epoch"], d) for r in epochs for d in r["stale_dropped"]]
    assert dropped and all(t - 1 - d["start"] > 0 for t, d in dropped)
    assert all(r["bytes_aead"] > 0 and r["dropped_frames"] == [] for r in epochs)
    assert all(np.isfinite(r["test_loss"]) for r in epochs)


@needs_mpiexec
@pytest.mark.parametrize("fault, needle", [
    ("hang:3:2", "fedf: error: rank 3 sent nothing for 5 s"),
    ("raise:3:2", "fedf: error: rank 3 failed at epoch"),
])
def test_a_group_master_that_hangs_or_dies_is_named(tmp_path, fault, needle):
    # Rank 3 is group 1's master; its second job never reports.
    proc = train(tmp_path, *FLAGS, "--epochs", "6", *ASYNC, "--timeout", "5", ranks=5,
                 fault=fault, timeout=150)
    assert proc.returncode != 0
    assert needle in proc.stderr, proc.stderr
    assert "at epoch 0" not in proc.stderr  # the run had started
    if fault.startswith("hang"):
        assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("flags, resumable, needle", [
    (["--workers", "6"], False, "needs `groups` >= 2"),
    ([*FLAGS], True, "keeps no checkpoints"),
    (["--algorithm", "admm-svm", "--data", "breast-cancer", "--workers", "4"], False,
     "runs fedf, not 'admm-svm'"),
])
def test_what_mpi_does_not_run_asynchronously_is_refused(flags, resumable, needle):
    with pytest.raises(ValueError, match=needle):
        train_lib.check(config_of(*flags, *ASYNC), 5, resumable=resumable)


@needs_mpiexec
def test_a_refused_async_run_is_one_line_exit_2(tmp_path):
    proc = train(tmp_path, *FLAGS, *ASYNC, "--checkpoint-every", "1", ranks=5, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("fedf: ")]
    assert len(lines) == 1 and "keeps no checkpoints" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
