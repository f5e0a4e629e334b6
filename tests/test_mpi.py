"""The MPI backend (`fedf train`) against the vmap simulator, its bytes, faults and resume.

The jobs run as subprocesses, ``mpiexec -n K python -m mpi4py -m fedf_jax.cli train
...``, each with a timeout. Faults are injected with the test-only environment
variable ``FEDF_TEST_FAULT`` read by ``fedf_jax/backends/mpi.py`` (never a flag):
comma-separated items

- ``raise:RANK:EPOCH``: that rank raises an exception at that epoch;
- ``hang:RANK:EPOCH``: that worker rank stops answering at that epoch;
- ``corrupt:WORKER:EPOCH``: one byte of that worker's frame is flipped after its
  CRC32 was computed (the master must drop the frame and go on).

The in-process tests import the backend with MPI left uninitialised.
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

mpi4py = pytest.importorskip("mpi4py")
mpi4py.rc.initialize = False  # the in-process tests need no MPI; the jobs use mpiexec
mpi4py.rc.finalize = False

from fedf_jax import cli, codec, runlog, simulation, worker  # noqa: E402
from fedf_jax.backends import mpi  # noqa: E402
from fedf_jax.data import load_dataset  # noqa: E402
from fedf_jax.models import make_model  # noqa: E402

VOLATILE = ("wall_s", "modeled_s")
BYTE_FIELDS = ("bytes_down", "bytes_up_model", "bytes_up_ternary", "bytes_other",
               "bytes_header", "bytes_total")
FLAGS_A = ["--workers", "4", "--epochs", "4", "--seed", "3"]  # 2 workers per rank at K=3
HETERO_TOML = """\
workers = 4
epochs = 3
seed = 7
scheme = "base3"
partition = "sizes"
sizes = [400, 300, 350, 250]
[[worker]]
lr = 0.1
batch_size = 16
[[worker]]
lr = 0.005
optimizer = "adam"
batch_size = 32
[[worker]]
lr = 0.05
optimizer = "momentum"
local_epochs = 2
[[worker]]
lr = 0.2
"""


def _mpiexec() -> str | None:
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


MPIEXEC = _mpiexec()
needs_mpiexec = pytest.mark.skipif(
    MPIEXEC is None, reason="no mpiexec next to the Python executable or on PATH "
    "(pip install mpich, or a system MPI)")


def _env(fault: str | None = None, devices: int | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", mpi.FAULT_ENV)}
    env["JAX_PLATFORMS"] = "cpu"
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    if fault:
        env[mpi.FAULT_ENV] = fault
    return env


def _train(out: Path, *flags: str, ranks: int = 3, fault: str | None = None,
           timeout: float = 240, devices: int | None = None
           ) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "mpi4py", "-m", "fedf_jax.cli",
           "train", "--quiet", "--out", str(out), *flags]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=_env(fault, devices), capture_output=True, text=True,
                          timeout=timeout)
    return proc, time.monotonic() - t0


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"rc {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def _config(*flags: str):
    args = cli.build_parser().parse_args(["simulate", *flags])
    return cli.make_config(args)


def _strip(records):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]


# --------------------------------------------------------------------------- in-process


def test_workers_split_contiguously_and_evenly_over_worker_ranks():
    layout = mpi.split_workers(7, 4)
    assert layout.ids == ((), (0, 1, 2), (3, 4), (5, 6))
    assert layout.counts.tolist() == [0, 3, 2, 2] and layout.starts.tolist() == [0, 0, 3, 5]
    assert mpi.split_workers(2, 3).ids == ((), (0,), (1,))
    with pytest.raises(ValueError, match="at least 2 MPI ranks"):
        mpi.split_workers(3, 1)
    with pytest.raises(ValueError, match="number of worker ranks"):
        mpi.split_workers(2, 4)


def test_fault_hook_parses_items_and_rejects_bad_ones():
    env = {mpi.FAULT_ENV: "raise:2:3, hang:1:2,corrupt:0:1"}
    assert mpi.faults_from_env(env) == (mpi.Fault("raise", 2, 3), mpi.Fault("hang", 1, 2),
                                        mpi.Fault("corrupt", 0, 1))
    assert mpi.faults_from_env({}) == ()
    with pytest.raises(ValueError, match=mpi.FAULT_ENV):
        mpi.faults_from_env({mpi.FAULT_ENV: "explode:1:1"})


@pytest.mark.parametrize("scheme", ["2bit", "base3"])
def test_frames_round_trip_and_a_bad_frame_is_dropped_with_its_reason(scheme):
    m, rng = 37, np.random.default_rng(4)
    trits = rng.integers(-1, 2, (4, m)).astype(np.int8)
    packed = np.stack([codec.pack(t, scheme) for t in trits])
    q = rng.normal(size=(4, m)).astype(np.float32)
    cmds = np.array([codec.Command.SEND_TERNARY, codec.Command.SEND_MODEL,
                     codec.Command.SEND_TERNARY, codec.Command.SEND_TERNARY], np.uint8)
    # Two ranks' uploads (workers 0-1 and 2-3), gathered back to back as the Igatherv does.
    ups = [mpi.encode_frames(5, ids, cmds[ids], packed[ids], lambda i, ids=ids: q[ids[i]],
                             m, scheme) for ids in ([0, 1], [2, 3])]
    buf = np.concatenate([u[0] for u in ups])
    lengths = np.concatenate([u[1] for u in ups])
    tern = 36 + codec.packed_size(m, scheme)
    assert lengths.tolist() == [tern, 36 + 4 * m, tern, tern]
    out = np.zeros_like(packed)
    up = mpi.decode_frames(buf, lengths, 1, 5, m, scheme, out)
    np.testing.assert_array_equal(up.q_pilot, q[1])
    np.testing.assert_array_equal(out[[0, 2, 3]], packed[[0, 2, 3]])
    assert up.ok.all() and up.dropped == []

    bad = buf.copy()
    bad[int(lengths[:2].sum()) + 40] ^= 1  # worker 2's payload
    up = mpi.decode_frames(bad, lengths, 1, 5, m, scheme, out)
    assert up.ok.tolist() == [True, True, False, True]
    assert up.dropped == [{"worker": 2, "reason": "CRC32 mismatch (corrupted frame)"}]
    assert not out[2].any()

    up = mpi.decode_frames(buf, lengths, 1, 6, m, scheme, out)  # frames of another epoch
    assert not up.ok.any() and up.q_pilot is None
    assert all("epoch is 5, expected 6" in d["reason"] for d in up.dropped)

    bad = buf.copy()
    bad[int(lengths[0]) + 50] ^= 1  # the pilot's model: no Q, P^t = P^{t-1}
    up = mpi.decode_frames(bad, lengths, 1, 5, m, scheme, out)
    assert up.q_pilot is None and up.ok.tolist() == [True, False, True, True]

    none = np.full(2, mpi.SEND_NOTHING, np.uint8)
    b, n = mpi.encode_frames(5, [0, 1], none, packed[:2], lambda i: q[i], m, scheme)
    assert b.size == 0 and n.tolist() == [0, 0]


@pytest.mark.parametrize("scheme", ["2bit", "base3"])
def test_zero_copy_frame_helpers_agree_with_the_copying_ones(scheme):
    rng = np.random.default_rng(8)
    for n in (0, 1, 4, 5, 37, 101):
        t = rng.integers(-1, 2, n).astype(np.int8)
        frame = codec.encode_ternary(t, 2, 9, scheme)
        assert frame[:36] == codec.frame_header(codec.Kind.TERNARY, 2, 9,
                                                codec.decode_frame(frame).scheme, n,
                                                codec.pack(t, scheme))
        got = codec.decode_packed(np.frombuffer(frame, np.uint8), n, scheme, expected_epoch=2)
        np.testing.assert_array_equal(codec.unpack(got, n, scheme),
                                      codec.decode_ternary(frame, n))
    q = rng.normal(size=13).astype(np.float32)
    frame = codec.encode_array(codec.Kind.MODEL_UP, q, 1, 0)
    view = codec.decode_array(np.frombuffer(frame, np.uint8), copy=False)
    np.testing.assert_array_equal(view, q)
    # The fast validation raises exactly where and as unpack does.
    for _ in range(500):
        n = int(rng.integers(1, 30))
        buf = rng.integers(0, 256, codec.packed_size(n, scheme)).astype(np.uint8)
        errors = []
        for fn in (codec.unpack, codec.check_packed):
            try:
                fn(buf, n, scheme)
                errors.append(None)
            except ValueError as e:
                errors.append(str(e))
        assert errors[0] == errors[1]
    other = "base3" if scheme == "2bit" else "2bit"
    with pytest.raises(codec.FrameError, match="expected"):
        codec.decode_packed(codec.encode_ternary(np.zeros(5, np.int8), 1, 1, other), 5, scheme)


def _options(command: str) -> set[str]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {o for a in sub.choices[command]._actions for o in a.option_strings}


def test_train_takes_every_simulate_flag_and_hides_the_test_hooks(capsys):
    train = _options("train")
    assert _options("simulate") <= train
    assert {"--timeout", "--checkpoint-every", "--resume"} <= train
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    assert "--checkpoint-every" in text and mpi.FAULT_ENV not in text and "hang" not in text


def test_train_without_mpiexec_fails_with_one_clear_line():
    proc = subprocess.run([sys.executable, "-m", "fedf_jax.cli", "train", "--epochs", "1"],
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "at least 2 MPI ranks" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- MPI jobs


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    """4 workers on 2 worker ranks, 4 epochs, 2bit, and the simulator on the same run."""
    if MPIEXEC is None:
        pytest.skip("no mpiexec")
    out = tmp_path_factory.mktemp("mpi_a")
    proc, _ = _train(out, *FLAGS_A)
    _ok(proc)
    sim = simulation.run(_config(*FLAGS_A))
    header, epochs = runlog.read(out / "run.jsonl")
    return {"out": out, "header": header, "epochs": epochs, "sim": sim,
            "final": np.load(out / "final_model.npy")}


def _assert_agree(header, epochs, final, sim):
    """The MPI run and the simulator: same choices and bytes, models equal to f32 rounding
    carried through the epochs.

    A rank's vmap holds 2 workers where the simulator's holds 4, and XLA on CPU may sum
    a reduction (a bias gradient over the batch) in another order for another batch of
    workers, so a local model Q can differ in its last bit (whether it does depends on
    the CPU's vector width). Where |Q - P^{t-1}| sits exactly on Eq. (5)'s threshold
    that flips a trit, P^t differs there by one vote, and the next epochs train from
    slightly different models. So: pilots and byte counts equal, first-epoch costs
    equal to f32 rounding, later costs and the final model close, not bit-equal.
    """
    assert header["backend"] == "mpi" and header["ranks"] >= 2
    assert len(header["rank_devices"]) == header["ranks"]
    assert [r["pilot"] for r in epochs] == [r["pilot"] for r in sim["records"]]
    n_test = header["num_test"]
    for a, b in zip(epochs, sim["records"], strict=True):
        for field in BYTE_FIELDS:
            assert a[field] == b[field], field
        np.testing.assert_allclose(a["costs"], b["costs"], rtol=1e-5 if a["epoch"] == 1
                                   else 1e-2)
        assert abs(a["test_accuracy"] - b["test_accuracy"]) <= 2 / n_test
        assert a["dropped_frames"] == []
        for field in runlog.EPOCH_FIELDS:
            assert field in a
    rel = np.linalg.norm(final - sim["params"]) / np.linalg.norm(sim["params"])
    assert rel < 1e-3, rel


@needs_mpiexec
def test_mpi_run_matches_the_simulator_with_two_workers_per_rank(run_a):
    assert run_a["header"]["worker_ranks"] == [[], [0, 1], [2, 3]]
    _assert_agree(run_a["header"], run_a["epochs"], run_a["final"], run_a["sim"])


@needs_mpiexec
def test_sharded_backend_inside_each_rank_matches_the_simulator(tmp_path, run_a):
    # Each worker rank spreads its 2 workers over its 2 (forced CPU) devices.
    proc, _ = _train(tmp_path, *FLAGS_A, "--backend", "sharded", "--devices", "2", devices=2)
    _ok(proc)
    header, epochs = runlog.read(tmp_path / "run.jsonl")
    assert all(len(d["devices"]) == 2 for d in header["rank_devices"][1:])
    _assert_agree(header, epochs, np.load(tmp_path / "final_model.npy"), run_a["sim"])


@needs_mpiexec
def test_counted_payload_is_eq8_and_mpi_bytes_are_the_bytes_moved(run_a):
    m, n, k = run_a["header"]["num_params"], 4, 3
    eq8 = codec.paper_bytes_per_epoch(4 * m, n)
    for r in run_a["epochs"]:
        payload = r["bytes_down"] + r["bytes_up_model"] + r["bytes_up_ternary"]
        # M = 9610 is not a multiple of 4: each ternary rounds up to whole bytes.
        assert payload == eq8 + (n - 1) * (math.ceil(m / 4) - m / 4)
        detail = r["mpi_bytes_detail"]
        assert detail == {"model_down": (k - 1) * 4 * m, "costs": 8 * n, "commands": n,
                          "frame_lengths": 8 * n,
                          "frames": r["bytes_up_model"] + r["bytes_up_ternary"] + 36 * n}
        assert r["mpi_bytes"] == sum(detail.values())


@needs_mpiexec
def test_mpi_run_matches_the_simulator_with_heterogeneous_workers_and_base3(tmp_path, run_a):
    conf = tmp_path / "hetero.toml"
    conf.write_text(HETERO_TOML)
    proc, _ = _train(tmp_path / "run", "--config", str(conf), ranks=4)
    _ok(proc)
    header, epochs = runlog.read(tmp_path / "run" / "run.jsonl")
    assert header["worker_ranks"] == [[], [0, 1], [2], [3]]
    sim = simulation.run(_config("--config", str(conf)))
    _assert_agree(header, epochs, np.load(tmp_path / "run" / "final_model.npy"), sim)
    m, n = header["num_params"], 4
    base3 = epochs[0]["bytes_up_ternary"]
    assert base3 == (n - 1) * math.ceil(m / 5)
    two_bit = run_a["epochs"][0]["bytes_up_ternary"]  # the same M and N, 2bit
    assert abs(base3 / two_bit - 0.8) < 1e-3


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    """Run A with checkpoints every 2 epochs, killed by a rank raising at epoch 3."""
    if MPIEXEC is None:
        pytest.skip("no mpiexec")
    out = tmp_path_factory.mktemp("mpi_crash")
    proc, elapsed = _train(out, *FLAGS_A, "--checkpoint-every", "2", fault="raise:2:3")
    return {"out": out, "proc": proc, "elapsed": elapsed}


@needs_mpiexec
def test_a_raising_rank_ends_the_job_promptly_and_is_named(crashed):
    proc = crashed["proc"]
    assert proc.returncode != 0
    assert crashed["elapsed"] < 60
    assert "fedf: error: rank 2 failed at epoch 3" in proc.stderr
    assert "injected fault" in proc.stderr


@needs_mpiexec
def test_resume_after_a_crash_gives_the_identical_model_and_log(crashed, run_a):
    out = crashed["out"]
    assert json.loads((out / "checkpoint" / "latest.json").read_text())["epoch"] == 2
    proc, _ = _train(out, *FLAGS_A, "--checkpoint-every", "2", "--resume")
    _ok(proc)
    np.testing.assert_array_equal(np.load(out / "final_model.npy"), run_a["final"])
    header, epochs = runlog.read(out / "run.jsonl")
    assert header["config"] == run_a["header"]["config"]
    assert _strip(epochs) == _strip(run_a["epochs"])
    # A different run cannot resume this one; the error names the differing keys.
    with pytest.raises(ValueError, match="differs from the checkpoint's in: default_worker"):
        mpi._resume_point(_config(*FLAGS_A, "--lr", "0.1"), out, 3)
    with pytest.raises(ValueError, match=r"MPI ranks \(3 in the checkpoint, 4 now\)"):
        mpi._resume_point(_config(*FLAGS_A), out, 4)


@needs_mpiexec
def test_a_silent_rank_is_named_when_the_deadline_expires(tmp_path):
    proc, elapsed = _train(tmp_path, *FLAGS_A, "--timeout", "5", fault="hang:2:2")
    assert proc.returncode != 0
    assert "fedf: error: rank 2 sent nothing for 5 s at epoch 2" in proc.stderr
    assert elapsed < 90


@needs_mpiexec
def test_corrupt_frames_are_dropped_with_their_reason_and_the_run_completes(tmp_path, run_a):
    pilot1 = run_a["epochs"][0]["pilot"]  # epoch 1 does not depend on earlier frames
    other = (pilot1 + 1) % 4
    proc, _ = _train(tmp_path, *FLAGS_A, "--epochs", "3",
                     fault=f"corrupt:{pilot1}:1,corrupt:{other}:3")
    _ok(proc)
    _, epochs = runlog.read(tmp_path / "run.jsonl")
    assert len(epochs) == 3
    crc = "CRC32 mismatch (corrupted frame)"
    assert epochs[0]["dropped_frames"] == [{"worker": pilot1, "reason": crc}]
    assert epochs[1]["dropped_frames"] == []
    assert epochs[2]["dropped_frames"] == [{"worker": other, "reason": crc}]
    # The pilot's model was dropped at epoch 1, so P^1 = P^0: its test loss is P^0's.
    cfg = _config(*FLAGS_A)
    ds = load_dataset(cfg.data, cfg.data_dir)
    model = make_model(cfg.model, ds.x_train.shape[1:], ds.num_classes)
    p0 = model.init(simulation.root_keys(cfg.seed)[0])
    loss, _ = worker.evaluate(model, p0, ds.x_test, ds.y_test, len(ds.y_test),
                              len(ds.y_test))
    np.testing.assert_allclose(epochs[0]["test_loss"], float(loss), rtol=1e-5)
