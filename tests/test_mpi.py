"""The MPI backend (`fedf train`) against the vmap simulator, its bytes, faults and resume.

The jobs run as subprocesses, ``mpiexec -n K python -m mpi4py -m fedf_jax.cli train
...``, each with a timeout. Faults are injected by ``tests/mpi_faults.py``, which runs
``fedf train`` with ``faults=`` (``fedf_jax.backends.mpi.faults``): ``raise:RANK:EPOCH``
(that rank raises), ``hang:RANK:EPOCH`` (that worker rank stops answering),
``corrupt:WORKER:EPOCH`` (one byte of that worker's frame is flipped after its CRC32
was computed: the master must drop the frame and go on).

The in-process tests import the backend with MPI left uninitialised.
"""

import argparse
import functools
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from mpi_jobs import MPIEXEC, config_of, env, module_job, needs_mpiexec, ok, strip, train

mpi4py = pytest.importorskip("mpi4py")
mpi4py.rc.initialize = False  # the in-process tests need no MPI; the jobs use mpiexec
mpi4py.rc.finalize = False

from fedf_jax import (  # noqa: E402
    cli,
    codec,
    harness,
    layout,
    master,
    runlog,
    simulation,
    worker,  # noqa: E402
)
from fedf_jax.algorithms import fedf  # noqa: E402
from fedf_jax.backends import mpi, sharded  # noqa: E402
from fedf_jax.backends.mpi import faults, frames, resume  # noqa: E402
from fedf_jax.models import make_model  # noqa: E402
from fedf_jax.ranks import fedf as ranks_lib  # noqa: E402

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



# --------------------------------------------------------------------------- in-process


def test_workers_split_contiguously_and_evenly_over_worker_ranks():
    ranks = mpi.split_workers(7, 4)
    assert ranks.ids == ((), (0, 1, 2), (3, 4), (5, 6))
    assert ranks.counts.tolist() == [0, 3, 2, 2] and ranks.starts.tolist() == [0, 0, 3, 5]
    assert mpi.split_workers(2, 3).ids == ((), (0,), (1,))
    with pytest.raises(ValueError, match="at least 2 MPI ranks"):
        mpi.split_workers(3, 1)
    with pytest.raises(ValueError, match="number of worker ranks"):
        mpi.split_workers(2, 4)


def test_faults_parse_items_and_reject_bad_ones():
    assert faults.parse("raise:2:3, hang:1:2,corrupt:0:1") == (
        faults.Fault("raise", 2, 3), faults.Fault("hang", 1, 2), faults.Fault("corrupt", 0, 1))
    assert faults.parse("") == ()
    with pytest.raises(ValueError, match="'explode:1:1' must be raise:RANK:EPOCH"):
        faults.parse("explode:1:1")


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


def test_train_takes_every_simulate_flag_and_no_test_hook(capsys):
    train = _options("train")
    assert _options("simulate") - {"--centralized"} <= train
    assert {"--timeout", "--checkpoint-every", "--resume"} <= train
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    assert "--checkpoint-every" in text
    assert not re.search(r"\b(faults?|hang)\b", text)


def test_train_without_mpiexec_fails_with_one_clear_line():
    proc = subprocess.run([sys.executable, "-m", "fedf_jax.cli", "train", "--epochs", "1"],
                          env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "at least 2 MPI ranks" in proc.stderr and "Traceback" not in proc.stderr


def _tiny_round(n=4, scheme="2bit", seed=0):
    """A fixed epoch-2 master input: model, state, costs, local models, packed ternaries."""
    rng = np.random.default_rng(seed)
    model = make_model("mlp", (3, 3, 1), 3, hidden=(6,))
    m = model.num_params
    p_prev2 = rng.normal(size=m).astype(np.float32)
    p_prev = (p_prev2 + 0.01 * rng.normal(size=m)).astype(np.float32)
    ms = master.MasterState(jax.numpy.asarray(p_prev), jax.numpy.asarray(p_prev2),
                            jax.numpy.asarray(rng.uniform(1, 2, n), np.float32),
                            jax.numpy.int32(2))
    costs = rng.uniform(0.5, 1.5, n).astype(np.float32)
    q = (p_prev + 0.02 * rng.normal(size=(n, m))).astype(np.float32)
    packed = np.stack([codec.pack(rng.integers(-1, 2, m), scheme) for _ in range(n)])
    x_test = rng.normal(size=(5, 3, 3, 1)).astype(np.float32)
    y_test = rng.integers(0, 3, 5).astype(np.int32)
    return model, ms, costs, q, packed, x_test, y_test


@pytest.mark.parametrize("scheme", ["2bit", "base3"])
def test_eq3_replay_is_bit_identical_across_vmap_sharded_and_mpi(scheme):
    """The master's side from fixed inputs: P^t and the test metrics are the same bits
    whether the rows come from one device, from a mesh, or through the MPI frames."""
    n = 4
    model, ms, costs, q, packed, x_test, y_test = _tiny_round(n, scheme)
    cfg = master.MasterConfig(alpha0=0.05, beta=0.3, scheme=scheme)
    sizes = np.array([30, 20, 25, 40])
    specs = [worker.WorkerSpec()] * n
    lay = layout.make_layout(specs, sizes, len(y_test))
    betas = cfg.betas(n)
    nz = codec.count_nonzero_jnp(jax.numpy.asarray(packed), scheme)

    def through(placement):
        data = layout.Data((), placement.put(sizes.astype(np.float32)), placement.put(betas),
                           placement.put(x_test), placement.put(y_test), None)
        out = fedf.CohortOut(placement.put_rows(q), placement.put_rows(costs),
                             placement.put_rows(packed), placement.put_rows(nz), ())
        state = fedf.State(ms, ())
        new, rec = jax.jit(functools.partial(fedf.master_side, model, lay, cfg))(state, data,
                                                                                 [out])
        return np.asarray(new.master.p_prev), float(rec["test_loss"]), int(rec["pilot"])

    vmap = through(layout.HERE)
    shard = through(sharded.placement(min(4, len(jax.devices()))))
    # MPI: the ranks' frames (2 workers each), gathered and checked by the master.
    sel = jax.jit(master.select)(ms, costs, sizes.astype(np.float32))
    pilot = int(sel.pilot)
    cmds = frames.commands(n, pilot)
    ups = [frames.encode_frames(2, ids, cmds[ids], packed[ids], lambda i, ids=ids: q[ids[i]],
                                model.num_params, scheme) for ids in ([0, 1], [2, 3])]
    up = frames.decode_frames(np.concatenate([u[0] for u in ups]),
                              np.concatenate([u[1] for u in ups]), pilot, 2, model.num_params,
                              scheme, np.zeros_like(packed))
    finish = jax.jit(functools.partial(ranks_lib._finish_fn, model, cfg, len(y_test)))
    new, (loss, _), _, _ = finish(ms, sel, costs, up.q_pilot, up.packed, up.ok, np.bool_(True),
                                  sizes.astype(np.float32), betas, x_test, y_test)
    mpi_run = (np.asarray(new.p_prev), float(loss), pilot)
    assert vmap[2] == shard[2] == mpi_run[2]
    np.testing.assert_array_equal(vmap[0], shard[0])
    np.testing.assert_array_equal(vmap[0], mpi_run[0])
    assert vmap[1] == shard[1] == mpi_run[1]


# --------------------------------------------------------------------------- MPI jobs


def _agree(header, epochs, sim):
    """The MPI run and the simulator make the same choices and count the same bytes."""
    assert header["backend"] == "mpi" and header["ranks"] >= 2
    assert len(header["rank_devices"]) == header["ranks"]
    assert [r["pilot"] for r in epochs] == [r["pilot"] for r in sim["records"]]
    for a, b in zip(epochs, sim["records"], strict=True):
        for field in BYTE_FIELDS:
            assert a[field] == b[field], field
        assert a["dropped_frames"] == []
        for field in runlog.EPOCH_FIELDS:
            assert field in a


def _agree_one_epoch(out: Path, sim):
    """One epoch from the same P^0: costs and P^1 equal to float32 rounding.

    (A rank's vmap holds fewer workers than the simulator's, and XLA on CPU may order
    a reduction differently for another batch of workers, so Q can differ in its last
    bit; over many epochs a trit exactly on Eq. (5)'s threshold can then flip. The
    master's own arithmetic is bit-identical: see the Eq. (3) replay test.)"""
    header, epochs = runlog.read(out / "run.jsonl")
    _agree(header, epochs, sim)
    np.testing.assert_allclose(epochs[0]["costs"], sim["records"][0]["costs"], rtol=1e-6)
    np.testing.assert_allclose(np.load(out / "final_model.npy"), sim["params"], rtol=1e-6,
                               atol=1e-7)


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    """4 workers on 2 worker ranks, 4 epochs, 2bit, and the simulator on the same run."""
    out = module_job(tmp_path_factory, "mpi_a", *FLAGS_A)
    sim = simulation.run(config_of(*FLAGS_A))
    header, epochs = runlog.read(out / "run.jsonl")
    return {"out": out, "header": header, "epochs": epochs, "sim": sim,
            "final": np.load(out / "final_model.npy")}


@needs_mpiexec
def test_mpi_run_makes_the_simulators_choices_with_two_workers_per_rank(run_a):
    assert run_a["header"]["worker_ranks"] == [[], [0, 1], [2, 3]]
    _agree(run_a["header"], run_a["epochs"], run_a["sim"])


@needs_mpiexec
@pytest.mark.parametrize("backend", ["vmap", "sharded"])
def test_one_mpi_epoch_equals_the_simulators_to_float32(tmp_path, backend):
    flags = [*FLAGS_A, "--epochs", "1"]
    extra = ["--backend", "sharded", "--devices", "2"] if backend == "sharded" else []
    ok(train(tmp_path, *flags, *extra, devices=2 if extra else None))
    if extra:  # each worker rank spreads its 2 workers over its 2 (forced CPU) devices
        header, _ = runlog.read(tmp_path / "run.jsonl")
        assert all(len(d["devices"]) == 2 for d in header["rank_devices"][1:])
    _agree_one_epoch(tmp_path, simulation.run(config_of(*flags)))


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
    conf.write_text(HETERO_TOML.replace("epochs = 3", "epochs = 1"))
    ok(train(tmp_path / "run", "--config", str(conf), ranks=4))
    header, epochs = runlog.read(tmp_path / "run" / "run.jsonl")
    assert header["worker_ranks"] == [[], [0, 1], [2], [3]]
    _agree_one_epoch(tmp_path / "run", simulation.run(config_of("--config", str(conf))))
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
    return {"out": out, "proc": train(out, *FLAGS_A, "--checkpoint-every", "2",
                                       fault="raise:2:3")}


@needs_mpiexec
def test_a_raising_rank_ends_the_job_and_is_named(crashed):
    proc = crashed["proc"]
    assert proc.returncode != 0
    assert "fedf: error: rank 2 failed at epoch 3" in proc.stderr
    assert "injected fault" in proc.stderr


@needs_mpiexec
def test_resume_after_a_crash_gives_the_identical_model_and_log(crashed, run_a):
    out = crashed["out"]
    assert json.loads((out / "checkpoint" / "latest.json").read_text())["epoch"] == 2
    ok(train(out, *FLAGS_A, "--checkpoint-every", "2", "--resume"))
    np.testing.assert_array_equal(np.load(out / "final_model.npy"), run_a["final"])
    header, epochs = runlog.read(out / "run.jsonl")
    assert header["config"] == run_a["header"]["config"]
    assert strip(epochs) == strip(run_a["epochs"])
    # A different run cannot resume this one; the error names the differing keys.
    with pytest.raises(ValueError, match="differs from the checkpoint's in: default_worker"):
        resume.resume_point(config_of(*FLAGS_A, "--lr", "0.1"), out, 3)
    with pytest.raises(ValueError, match=r"MPI ranks \(3 in the checkpoint, 4 now\)"):
        resume.resume_point(config_of(*FLAGS_A), out, 4)


@needs_mpiexec
def test_a_silent_rank_is_named_when_the_deadline_expires(tmp_path):
    proc = train(tmp_path, *FLAGS_A, "--timeout", "5", fault="hang:2:2", timeout=120)
    assert proc.returncode != 0
    assert "fedf: error: rank 2 sent nothing for 5 s at epoch 2" in proc.stderr


@needs_mpiexec
def test_corrupt_frames_are_dropped_with_their_reason_and_the_run_completes(tmp_path, run_a):
    pilot1 = run_a["epochs"][0]["pilot"]  # epoch 1 does not depend on earlier frames
    other = (pilot1 + 1) % 4
    ok(train(tmp_path, *FLAGS_A, "--epochs", "3",
               fault=f"corrupt:{pilot1}:1,corrupt:{other}:3"))
    _, epochs = runlog.read(tmp_path / "run.jsonl")
    assert len(epochs) == 3
    crc = "CRC32 mismatch (corrupted frame)"
    assert epochs[0]["dropped_frames"] == [{"worker": pilot1, "reason": crc}]
    assert epochs[1]["dropped_frames"] == []
    assert epochs[2]["dropped_frames"] == [{"worker": other, "reason": crc}]
    # The pilot's model was dropped at epoch 1, so P^1 = P^0: its test loss is P^0's.
    host = harness.load(config_of(*FLAGS_A))
    ds = host.dataset
    loss, _ = worker.evaluate(host.model, host.p0, ds.x_test, ds.y_test, len(ds.y_test),
                              len(ds.y_test))
    np.testing.assert_allclose(epochs[0]["test_loss"], float(loss), rtol=1e-5)
