"""``fedf train --wire aead``: every message of an epoch sealed per link and direction.

In-process: the envelope's seal and checks (``backends.mpi.wire``), the sealed uploads
opened back to back, the key derivation, the test faults. Under mpiexec: the sealed run
gives the run log and the model of the CRC run (bytes apart); a tampered upload is
dropped as not authentic and a replayed one as a replay, the run going on; a key file
works, and a wrong key file on one rank (an MPMD launch) ends the job with one line
naming the rank; two levels with checkpoints; the ADMM SVM.
"""

import subprocess
import sys
import types

import numpy as np
import pytest
from mpi_jobs import MPIEXEC, env, module_job, needs_mpiexec, ok, strip, train

mpi4py = pytest.importorskip("mpi4py")
mpi4py.rc.initialize = False  # the in-process tests need no MPI; the jobs use mpiexec
mpi4py.rc.finalize = False

from fedf_jax import codec, runlog  # noqa: E402
from fedf_jax.backends.mpi import faults, frames, split_workers, wire  # noqa: E402
from fedf_jax.secure import aead  # noqa: E402

KEY = bytes(range(32))
FLAGS = ["--workers", "4", "--epochs", "3", "--seed", "3"]  # 2 workers per rank at K = 3
AUTH = "sealed upload: authentication failed (aes-gcm tag)"


def _ends(n_ranks=3, faults_=()):
    """The master's wire and each worker rank's, on the links 0 <-> r of a job whose
    communicator ranks are the job ranks."""
    world = list(range(n_ranks))
    master = wire.Wire(world, 0, dict.fromkeys(range(1, n_ranks), KEY))
    return master, [None] + [wire.Wire(world, r, {0: KEY}, faults=faults_)
                             for r in range(1, n_ranks)]


# --------------------------------------------------------------------------- in-process


def test_a_sealed_message_opens_once_on_its_link_with_its_kind_and_epoch():
    master, ends = _ends()
    costs = np.array([0.5, 1.5], np.float64)
    sealed = ends[1].seal(0, ends[1].stage(wire.Message.COSTS, 4, costs)).copy()
    assert sealed.size == costs.nbytes + wire.ENVELOPE == costs.nbytes + 36 + aead.OVERHEAD
    assert costs.tobytes() not in sealed.tobytes()  # the payload travels encrypted
    got = master.open(1, wire.Message.COSTS, 4, sealed)
    np.testing.assert_array_equal(got.view(np.float64), costs)
    with pytest.raises(codec.FrameError, match="costs: replayed or reordered") as e:
        master.open(1, wire.Message.COSTS, 4, sealed)
    assert (e.value.sender, e.value.epoch) == (1, 4)

    def fresh(kind=wire.Message.COSTS, epoch=4, r=1):
        return ends[r].seal(0, ends[r].stage(kind, epoch, costs)).copy()

    with pytest.raises(codec.FrameError, match=r"message kind 17, expected 2 \(COSTS\)"):
        master.open(1, wire.Message.COSTS, 4, fresh(wire.Message.LENGTHS))
    with pytest.raises(codec.FrameError, match="epoch 3, expected 4"):
        master.open(1, wire.Message.COSTS, 4, fresh(epoch=3))
    bad = fresh()
    bad[-30] ^= 4
    with pytest.raises(codec.FrameError, match="costs: authentication failed") as e:
        master.open(1, wire.Message.COSTS, 4, bad)
    assert "sender 1, epoch 4" in str(e.value)
    with pytest.raises(codec.FrameError, match=r"misdirected: sealed for link 2->0, this "
                                               r"channel receives 1->0"):
        master.open(1, wire.Message.COSTS, 4, fresh(r=2))
    # The same link key, the other direction: another key, so the seal does not open.
    down = master.seal(1, master.stage(wire.Message.COMMANDS, 4, np.zeros(2, np.uint8)))
    with pytest.raises(codec.FrameError, match="misdirected"):
        master.open(1, wire.Message.COMMANDS, 4, down)
    assert ends[1].open(0, wire.Message.COMMANDS, 4, down).tolist() == [0, 0]


def test_sealed_uploads_open_back_to_back_and_a_rejected_rank_names_its_workers():
    m, scheme, rng = 37, "2bit", np.random.default_rng(2)
    layout = split_workers(3, 3)  # rank 1: workers 0, 1; rank 2: worker 2
    packed = np.stack([codec.pack(rng.integers(-1, 2, m), scheme) for _ in range(3)])
    q = rng.normal(size=(3, m)).astype(np.float32)
    cmds = frames.commands(3, pilot=1)
    master, ends = _ends()

    def gather(epoch, tamper_rank=None):
        parts, lengths = [np.empty(0, np.uint8)], []
        for r in (1, 2):
            ids = list(layout.ids[r])
            buf, n = frames.encode_frames(epoch, ids, cmds[ids], packed[ids],
                                          lambda i, ids=ids: q[ids[i]], m, scheme,
                                          alloc=lambda size, r=r: ends[r].stage(
                                              wire.Message.UPLOAD, epoch, size=size)[36:])
            env = ends[r].stage(wire.Message.UPLOAD, epoch, size=buf.size)  # in place
            sealed = ends[r].seal_upload(env, n, ids, epoch).copy()
            if r == tamper_rank:
                sealed[100] ^= 1
            parts.append(sealed)
            lengths.append(n)
        displs = np.cumsum([0] + [p.size for p in parts[:-1]]).tolist()
        return np.concatenate(parts), displs, np.concatenate(lengths)

    link = types.SimpleNamespace(epoch=5, layout=layout, rejected={})
    recv, displs, lengths = gather(5)
    sizes = [0, int(lengths[:2].sum()), int(lengths[2])]
    buf = master.open_uploads(link, recv, displs, sizes)
    assert link.rejected == {}
    up = frames.decode_frames(buf, lengths, 1, 5, m, scheme, np.zeros_like(packed))
    assert up.ok.all()
    np.testing.assert_array_equal(up.q_pilot, q[1])
    np.testing.assert_array_equal(up.packed[[0, 2]], packed[[0, 2]])

    link.epoch = 6
    recv, displs, lengths = gather(6, tamper_rank=1)
    buf = master.open_uploads(link, recv, displs, sizes)
    reason = f"{AUTH}: tampered, or sealed under another key or cipher (sealed by rank 1 " \
             "for epoch 6)"
    assert link.rejected == {0: reason, 1: reason}
    up = frames.decode_frames(buf, lengths, 1, 6, m, scheme, np.zeros_like(packed),
                              rejected=link.rejected)
    assert up.ok.tolist() == [False, False, True] and up.q_pilot is None
    assert up.dropped == [{"worker": 0, "reason": reason}, {"worker": 1, "reason": reason}]
    np.testing.assert_array_equal(up.packed[2], packed[2])


def test_frames_under_a_seal_skip_their_crc_and_keep_every_other_check():
    q = np.arange(37, dtype=np.float32)
    head = codec.frame_header(codec.Kind.MODEL_UP, 2, 5, codec.Payload.F32, 37, q,
                              checksum=False)
    frame = np.frombuffer(head + q.tobytes(), np.uint8).copy()
    assert frame[32:36].tolist() == [0, 0, 0, 0]  # the CRC field, not computed
    np.testing.assert_array_equal(codec.decode_array(frame, checksum=False), q)
    with pytest.raises(codec.FrameError, match="CRC32 mismatch"):
        codec.decode_array(frame)
    with pytest.raises(codec.FrameError, match="epoch is 2, expected 3"):
        codec.decode_array(frame, expected_epoch=3, checksum=False)
    cmds = np.array([codec.Command.SEND_TERNARY], np.uint8)
    packed = codec.pack(np.ones(37, np.int8), "2bit")[None]
    buf, lengths = frames.encode_frames(2, [0], cmds, packed, None, 37, "2bit",
                                        checksum=False)
    up = frames.decode_frames(buf, lengths, 1, 2, 37, "2bit", np.zeros((2, 10), np.uint8)[:1],
                              checksum=False)
    assert up.ok.all()


def test_tamper_flips_one_sealed_bit_and_replay_resends_the_last_upload():
    _, ends = _ends(2, faults.parse("tamper:1:1,replay:0:3"))
    _, twins = _ends(2)  # the same keys and counters, no faults
    lengths = np.array([40, 45], np.int64)
    sealed, clean = {}, {}
    for t in (1, 2, 3):
        payload = np.arange(85, dtype=np.uint8) + t
        sealed[t] = ends[1].seal_upload(ends[1].stage(wire.Message.UPLOAD, t, payload),
                                        lengths, [0, 1], t).copy()
        clean[t] = twins[1].seal(0, twins[1].stage(wire.Message.UPLOAD, t, payload)).copy()
    bits = np.unpackbits(sealed[1] ^ clean[1])
    at = 20 + 36 + 40 + 36  # prefix, envelope header, worker 0's frame, worker 1's header
    assert np.flatnonzero(bits).tolist() == [8 * at + 7]
    np.testing.assert_array_equal(sealed[2], clean[2])
    np.testing.assert_array_equal(sealed[3], clean[2])  # epoch 2's upload again
    master, _ = _ends(2)
    with pytest.raises(codec.FrameError, match="authentication failed"):
        master.open(1, wire.Message.UPLOAD, 1, sealed[1])
    assert master.open(1, wire.Message.UPLOAD, 2, sealed[2])[0] == 2
    with pytest.raises(codec.FrameError, match="replayed or reordered: counter 2 is not "
                                               "above the last accepted 2"):
        master.open(1, wire.Message.UPLOAD, 3, sealed[3])


def test_key_file_link_keys_are_per_link_and_per_start(tmp_path):
    salt, other = bytes(16), bytes(range(16))
    k01 = wire.file_link_key(KEY, salt, 0, 1)
    assert k01 == wire.file_link_key(KEY, salt, 1, 0)  # both ends agree
    assert len({k01, wire.file_link_key(KEY, salt, 0, 2), wire.file_link_key(KEY, other, 0, 1),
                wire.file_link_key(bytes(32), salt, 0, 1)}) == 4
    (tmp_path / "hex").write_text(KEY.hex() + "\n")
    (tmp_path / "raw").write_bytes(KEY)
    (tmp_path / "short").write_text("abc")
    assert wire.read_key_file(tmp_path / "hex") == (KEY, None)
    assert wire.read_key_file(tmp_path / "raw") == (KEY, None)
    key, problem = wire.read_key_file(tmp_path / "short")
    assert key is None and problem.endswith("holds 3 bytes; expected 32 raw bytes or 64 hex "
                                            "digits")
    key, problem = wire.read_key_file(tmp_path / "missing")
    assert key is None and "cannot be read (No such file or directory)" in problem


def test_faults_parse_tamper_and_replay():
    assert faults.parse("tamper:3:1,replay:0:2") == (faults.Fault("tamper", 3, 1),
                                                     faults.Fault("replay", 0, 2))


# --------------------------------------------------------------------------- MPI jobs

BYTES = ("mpi_bytes", "mpi_bytes_detail", "bytes_aead")


def _epochs(out):
    return runlog.read(out / "run.jsonl")[1]


@pytest.fixture(scope="module")
def crc_run(tmp_path_factory):
    """The CRC run the sealed runs are compared with."""
    out = module_job(tmp_path_factory, "crc", *FLAGS)
    return _epochs(out), np.load(out / "final_model.npy")


@needs_mpiexec
def test_a_sealed_run_gives_the_crc_runs_log_and_model_and_counts_its_bytes(tmp_path,
                                                                            crc_run):
    epochs, final = crc_run
    ok(train(tmp_path, *FLAGS, "--wire", "aead"))
    sealed = _epochs(tmp_path)
    np.testing.assert_array_equal(np.load(tmp_path / "final_model.npy"), final)
    assert ([{k: v for k, v in r.items() if k not in BYTES} for r in strip(sealed)]
            == [{k: v for k, v in r.items() if k not in BYTES} for r in strip(epochs)])
    for a, b in zip(sealed, epochs, strict=True):
        # Per epoch and worker rank: the model's tag and sealed key; costs, commands,
        # lengths and the upload sealed.
        assert b["bytes_aead"] == 0
        assert a["bytes_aead"] == 2 * (wire.MODEL_EXTRA + 4 * wire.ENVELOPE)
        assert a["mpi_bytes"] == b["mpi_bytes"] + a["bytes_aead"]
        extra = {"model_down": 2 * wire.MODEL_EXTRA}
        assert a["mpi_bytes_detail"] == {k: v + extra.get(k, 2 * wire.ENVELOPE)
                                         for k, v in b["mpi_bytes_detail"].items()}


@needs_mpiexec
def test_tampered_and_replayed_uploads_are_dropped_with_their_reason(tmp_path, crc_run):
    pilot = crc_run[0][0]["pilot"]  # epoch 1 does not depend on earlier frames
    tampered = [0, 1] if pilot < 2 else [2, 3]  # the workers of the pilot's rank
    ok(train(tmp_path, *FLAGS, "--wire", "aead", fault=f"tamper:{pilot}:1,replay:0:3"))
    epochs = _epochs(tmp_path)
    assert len(epochs) == 3 and epochs[1]["dropped_frames"] == []
    assert [d["worker"] for d in epochs[0]["dropped_frames"]] == tampered
    assert all(d["reason"].startswith(AUTH) and d["reason"].endswith(
        f"(sealed by rank {1 + tampered[0] // 2} for epoch 1)")
        for d in epochs[0]["dropped_frames"])
    assert [d["worker"] for d in epochs[2]["dropped_frames"]] == [0, 1]
    assert all(d["reason"].startswith("sealed upload: replayed or reordered: counter ")
               and d["reason"].endswith("(sealed by rank 1 for epoch 2)")
               for d in epochs[2]["dropped_frames"])


def _mpmd(out, *parts):
    """``mpiexec -n A fedf train ... --key-file X : -n B ...`` (one --key-file per part)."""
    cmd = [MPIEXEC]
    for n, key in parts:
        cmd += [":"] * (len(cmd) > 1) + ["-n", str(n), sys.executable, "-m", "mpi4py", "-m",
                                         "fedf_jax.cli", "train", "--quiet", "--out", str(out),
                                         "--force", *FLAGS, "--wire", "aead", "--key-file",
                                         str(key)]
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=120)


def _one_error_line(proc):
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = [s for s in proc.stderr.splitlines() if s.startswith("fedf: error")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@needs_mpiexec
def test_a_key_file_works_and_a_wrong_key_file_on_one_rank_is_named(tmp_path, crc_run):
    key, other = tmp_path / "key", tmp_path / "other"
    aead.write_key(key)
    aead.write_key(other)
    ok(train(tmp_path / "run", *FLAGS, "--wire", "aead", "--key-file", str(key)))
    np.testing.assert_array_equal(np.load(tmp_path / "run" / "final_model.npy"), crc_run[1])
    line = _one_error_line(_mpmd(tmp_path / "bad", (2, key), (1, other)))
    assert line == ("fedf: error: the link key of rank 2 does not match rank 0's at "
                    "start-up: its --key-file holds another key than rank 0's; give every "
                    "rank the same file.")
    line = _one_error_line(_mpmd(tmp_path / "bad", (3, tmp_path / "missing")))
    assert line.startswith("fedf: error: --key-file on ranks 0, 1, 2: ")
    assert "cannot be read (No such file or directory)" in line


@needs_mpiexec
def test_two_sealed_levels_with_checkpoints_make_the_simulators_choices(tmp_path):
    from mpi_jobs import config_of

    from fedf_jax import simulation

    flags = ["--workers", "6", "--groups", "2", "--group-epochs", "2", "--epochs", "2",
             "--seed", "1", "--checkpoint-every", "1"]
    ok(train(tmp_path, *flags, "--wire", "aead", ranks=5))
    sim = simulation.run(config_of(*flags[:-2]))["records"]
    epochs = _epochs(tmp_path)
    assert [r["pilot"] for r in epochs] == [r["pilot"] for r in sim]
    assert [r["group_pilots"] for r in epochs] == [r["group_pilots"] for r in sim]
    epoch = wire.MODEL_EXTRA + 4 * wire.ENVELOPE  # one epoch's messages with one rank
    for r in epochs:  # top: an epoch and a report per group; groups: 2 inner epochs each
        assert r["bytes_aead"] == 2 * (epoch + wire.ENVELOPE) + 2 * 2 * epoch
        assert r["bytes_top"] == sim[0]["bytes_top"] and r["dropped_frames"] == []


@needs_mpiexec
def test_a_sealed_admm_run_equals_the_crc_run(tmp_path):
    flags = ["--algorithm", "admm-svm", "--data", "breast-cancer", "--workers", "4",
             "--epochs", "12"]
    ok(train(tmp_path / "crc", *flags))
    ok(train(tmp_path / "aead", *flags, "--wire", "aead"))
    crc, sealed = _epochs(tmp_path / "crc"), _epochs(tmp_path / "aead")
    assert [r["objective"] for r in sealed] == [r["objective"] for r in crc]
    np.testing.assert_array_equal(np.load(tmp_path / "aead" / "final_model.npy"),
                                  np.load(tmp_path / "crc" / "final_model.npy"))
    # control, x+u, z, statistics and the costs' report, each from or to 2 worker ranks
    assert all(r["bytes_aead"] == 5 * 2 * wire.ENVELOPE for r in sealed)
