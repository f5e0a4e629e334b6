"""``fedf train --secure-sum secagg``: secure aggregation of FEDF's votes under mpiexec.

Every worker is a secagg client on its worker rank, the master the server relaying the
round's messages (``fedf_jax.ranks.secure``). Two jobs: the secure run (sealed with
``--wire aead``, so every secagg message crosses the link sealed too) and the plain run
with the same flags. The secure run makes the plain run's choices and gives its model
bit for bit (one beta: the sum is exact integers), counts the simulator's bytes, and its
master receives the pilot's model frame and no ternary frame. In-process: a worker rank's
rows are ``protocol.integer_votes``'s, in fixed point too; bad combinations are refused.
"""

import subprocess
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest
from mpi_jobs import config_of, env, module_job, needs_mpiexec

mpi4py = pytest.importorskip("mpi4py")
mpi4py.rc.initialize = False  # the in-process tests need no MPI; the jobs use mpiexec
mpi4py.rc.finalize = False

from fedf_jax import codec, protocol, runlog, simulation  # noqa: E402
from fedf_jax import train as train_lib  # noqa: E402
from fedf_jax.algorithms.secure import STEPS, frac_bits  # noqa: E402
from fedf_jax.backends.mpi import frames, wire  # noqa: E402
from fedf_jax.ranks import secure  # noqa: E402
from fedf_jax.secure import sums  # noqa: E402

FLAGS = ["--workers", "4", "--epochs", "3", "--seed", "3"]  # 2 workers per rank at K = 3
BYTE_FIELDS = ("bytes_down", "bytes_up_model", "bytes_up_ternary", "bytes_other",
               "bytes_header", "bytes_total", *(f"bytes_secagg_{s}" for s in STEPS))


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """The secure run (sealed), the plain run, and the simulator's secure run."""
    runs = {name: module_job(tmp_path_factory, name, *FLAGS, *extra) for name, extra in (
        ("secagg", ["--secure-sum", "secagg", "--wire", "aead"]), ("plain", []))}
    out = {name: (*runlog.read(path / "run.jsonl"), np.load(path / "final_model.npy"))
           for name, path in runs.items()}
    out["sim"] = simulation.run(config_of(*FLAGS, "--secure-sum", "secagg"))
    return out


@needs_mpiexec
def test_secagg_under_mpiexec_is_the_plain_run_and_counts_the_simulators_bytes(jobs):
    _, secure_epochs, secure_model = jobs["secagg"]
    _, plain_epochs, plain_model = jobs["plain"]
    sim = jobs["sim"]
    pilots = [r["pilot"] for r in secure_epochs]
    assert pilots == [r["pilot"] for r in plain_epochs] == [r["pilot"] for r in sim["records"]]
    np.testing.assert_array_equal(secure_model, plain_model)  # one beta: exact integers
    for a, b in zip(secure_epochs, sim["records"], strict=True):
        for field in BYTE_FIELDS:
            assert a[field] == b[field], field
        assert a["dropped_frames"] == [] and a["bytes_up_ternary"] == 0
    # The first epoch starts from the same P^0: costs and P^1 (its test loss) to float32
    # (later epochs can drift by a trit on Eq. 5's threshold, as plain MPI runs do).
    np.testing.assert_allclose(secure_epochs[0]["costs"], sim["records"][0]["costs"],
                               rtol=1e-6)
    np.testing.assert_allclose(secure_epochs[0]["test_loss"], sim["records"][0]["test_loss"],
                               rtol=1e-5)


@needs_mpiexec
def test_the_master_gets_the_pilots_model_and_no_ternary_frame(jobs):
    header, epochs, _ = jobs["secagg"]
    _, plain_epochs, _ = jobs["plain"]
    m, n, k, env_ = header["num_params"], 4, 3, wire.ENVELOPE
    sealed = env_ * (k - 1)  # one sealed message per worker rank and stage
    for r, plain in zip(epochs, plain_epochs, strict=True):
        detail = r["mpi_bytes_detail"]
        # the plain master's frames hold the N - 1 ternaries; the secure master's, the
        # pilot's model frame alone
        assert plain["mpi_bytes_detail"]["frames"] == (
            codec.HEADER_SIZE + 4 * m + (n - 1) * (codec.HEADER_SIZE + codec.packed_size(m)))
        assert detail["frames"] == codec.HEADER_SIZE + 4 * m + sealed
        assert "nonzero_counts" not in detail and r["ternary_nonzero_fraction"] is None
        assert detail["secagg_keys"] == 68 * n + 68 * n * (k - 1) + 2 * sealed
        assert detail["secagg_shares"] == 2 * 94 * n * (n - 1) + 2 * sealed
        assert detail["secagg_masked"] == 4 * m * n + 4 * n * (k - 1) + 2 * sealed
        assert detail["secagg_unmask"] == 37 * n * n + sealed
        assert r["mpi_bytes"] == sum(detail.values())
        assert [r[f"bytes_secagg_{s}"] for s in STEPS] == sums.round_bytes(n, m, 4).tolist()


def test_a_worker_ranks_rows_are_integer_votes_in_fixed_point_too():
    n, m, scheme = 5, 23, "2bit"
    rng = np.random.default_rng(0)
    packed = np.stack([codec.pack(rng.integers(-1, 2, m), scheme) for _ in range(n)])
    sizes = np.array([40, 31, 57, 12, 66], np.float32)
    betas = np.array([0.1, 0.2, 0.3, 0.25, 0.05], np.float32)
    valid = np.array([True, True, False, True, True])
    bits = frac_bits(sizes, betas)
    assert bits > 0
    for epoch in (1, 2):
        want, _ = protocol.integer_votes(packed, m, sizes, 1, 0.05, betas, epoch, scheme,
                                         valid, bits)
        ids = [2, 3, 4]  # a rank's workers; worker 1 (the pilot) is on another rank
        rows, nonzero = secure._votes_fn(m, scheme, bits, 0.05, sizes[[0, *ids]],
                                         betas[[0, *ids]], packed[ids], valid[ids],
                                         jnp.int32(epoch))
        np.testing.assert_array_equal(rows, np.asarray(want)[ids])
        np.testing.assert_array_equal(nonzero, codec.count_nonzero_jnp(packed[ids], scheme))
    cmds = frames.commands(4, 2)
    assert secure.Clients.frame_commands(cmds).tolist() == [frames.SEND_NOTHING] * 2 + [
        codec.Command.SEND_MODEL, frames.SEND_NOTHING]


def test_the_master_reads_the_pilots_frame_and_refuses_a_ternary_in_the_clear():
    m, ids, scheme = 11, [0, 1, 2, 3], "2bit"
    q = np.arange(m, dtype=np.float32)
    packed = np.stack([codec.pack(np.ones(m, np.int8), scheme)] * 4)
    reader = types.SimpleNamespace(n=4, m=m, senders=ids, cfg=types.SimpleNamespace(
        scheme=scheme), link=types.SimpleNamespace(rejected={}, checksum=True))
    cmds = frames.commands(4, 1)

    def upload(commands):
        return frames.encode_frames(2, ids, commands, packed, lambda i: q, m, scheme)

    with pytest.raises(RuntimeError, match="worker 0 sent a frame of 39 bytes"):
        secure.Server.pilot_frame(reader, *upload(cmds), 1, 2)  # a plain upload
    buf, lengths = upload(secure.Clients.frame_commands(cmds))
    assert lengths.tolist() == [0, codec.HEADER_SIZE + 4 * m, 0, 0]
    up = secure.Server.pilot_frame(reader, buf, lengths, 1, 2)
    np.testing.assert_array_equal(up.q_pilot, q)
    assert up.ok.all() and up.dropped == []
    buf[codec.HEADER_SIZE] ^= 1  # the pilot's model, after its CRC32: dropped, P^t = P^{t-1}
    up = secure.Server.pilot_frame(reader, buf, lengths, 1, 2)
    assert up.q_pilot is None and up.ok.tolist() == [True, False, True, True]
    assert [d["worker"] for d in up.dropped] == [1]


@pytest.mark.parametrize("flags", [
    ["--groups", "2"], ["--groups", "2", "--schedule", "async"],
    ["--algorithm", "admm-svm", "--data", "breast-cancer"]])
def test_secagg_runs_flat_synchronous_fedf_only(flags):
    cfg = config_of("--workers", "4", "--secure-sum", "secagg", *flags)
    with pytest.raises(ValueError, match="runs secagg for flat, synchronous fedf"):
        train_lib.check(cfg, 5)
    train_lib.check(config_of("--workers", "4", "--secure-sum", "secagg"), 3)


def test_a_refused_combination_exits_2_with_one_line():
    proc = subprocess.run([sys.executable, "-m", "fedf_jax.cli", "train", "--workers", "4",
                           "--groups", "2", "--secure-sum", "secagg"],
                          env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "runs secagg for flat, synchronous fedf" in lines[0], lines
