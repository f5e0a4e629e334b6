"""The privacy experiments on CIFAR-10 (``--data-dir``): a tiny folder in the official
binary format, built in tmp_path, run end to end; the experiments that need the MLP's
dense first layer refuse it with a one-line error."""

import numpy as np
import pytest

from fedf_jax.privacy import cli, experiments, views

PER_FILE = 20  # records per data_batch_i.bin (100 training images in all)
N_TEST = 40


def _write_cifar_bin(root, seed: int = 0) -> dict:
    """cifar-10-batches-bin/data_batch_1..5.bin and test_batch.bin: each record is 1 label
    byte then 3072 pixel bytes (1024 red, 1024 green, 1024 blue, row-major). Returns the
    records {stem: (pixels u8[n, 3072], labels u8[n])}."""
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    out = {}
    for stem, n in [(f"data_batch_{i}", PER_FILE) for i in range(1, 6)] + [("test_batch",
                                                                              N_TEST)]:
        labels = (np.arange(n) % 10).astype(np.uint8)
        pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        (d / f"{stem}.bin").write_bytes(np.concatenate([labels[:, None], pixels], 1).tobytes())
        out[stem] = (pixels, labels)
    return out


def _image(record: np.ndarray) -> np.ndarray:
    """One record's pixels u8[3072] as the NHWC float image, by explicit indexing."""
    img = np.zeros((32, 32, 3), np.float32)
    for ch in range(3):
        for r in range(32):
            for c in range(32):
                img[r, c, ch] = record[ch * 1024 + r * 32 + c] / 255.0
    return img


@pytest.fixture()
def cifar_dir(tmp_path):
    records = _write_cifar_bin(tmp_path)
    return tmp_path, records


def test_cnn_only_experiments_refuse_cifar_with_one_line(cifar_dir, capsys):
    root, _ = cifar_dir
    for name in ("E3", "E6"):
        code = cli.main(["--experiment", name, "--quick", "--data-dir", str(root)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2
        assert err[-1].startswith("fedf: error: ") and "digits" in err[-1]
        assert "Traceback" not in "\n".join(err)


def test_e2_runs_end_to_end_on_a_tiny_cifar10_folder(cifar_dir, tmp_path):
    root, records = cifar_dir
    opts = experiments.make_options(quick=True, seeds=1, arms=("fedavg", "fedf+1"),
                                    data="cifar10", data_dir=str(root))
    # the federation is built from the written records (checked against a plain decode)
    fed = views.make_federation(opts, 0, victim_classes=[1, 4, 7])
    train = np.concatenate([records[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = np.concatenate([records[f"data_batch_{i}"][1] for i in range(1, 6)])
    assert fed.model.name == "cnn" and fed.x_test.shape == (N_TEST, 32, 32, 3)
    np.testing.assert_allclose(fed.x_test[3], _image(records["test_batch"][0][3]), atol=1e-6)
    victim = fed.x_parts[0]
    assert set(np.unique(fed.y_parts[0]).tolist()) <= {1, 4, 7}
    # every victim image is one of the written training records, with its label
    flat = np.stack([_image(r) for r in train]).reshape(len(train), -1)
    for x, y in zip(victim, fed.y_parts[0], strict=True):
        hit = np.flatnonzero(np.all(np.abs(flat - x.ravel()) < 1e-6, axis=1))
        assert hit.size == 1 and labels[hit[0]] == y

    result = experiments.run_experiment("E2", opts, 0, None, tmp_path / "out")
    assert result.experiment == "E2"
    assert result.extra["options"]["data"] == "cifar10"
    cells = {(r.arm, r.setting, r.metric): r for r in result.rows}
    for arm in ("fedavg", "fedf+1", "random-ternary"):
        for t in ("t=1", "t>=2"):
            r = cells[(arm, f"n_k=all E=1 B=8 {t}", "f1")]
            assert r.n == 1 and 0.0 <= r.mean <= 1.0
    # FedAvg's update raises exactly the output rows of the classes the worker holds in
    # one step: the full-update attack must not miss a held class at t = 1
    assert cells[("fedavg", "n_k=all E=1 B=8 t=1", "f1")].mean > 0
    assert (tmp_path / "out" / "result.json").exists()
    back = experiments.read_result(tmp_path / "out" / "result.json")
    assert back.verdict == result.verdict and len(back.rows) == len(result.rows)
