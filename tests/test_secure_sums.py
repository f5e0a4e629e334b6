"""--secure-sum: the master gets only the sum it needs (secure aggregation inside groups,
packed Paillier at the top), and the run is the same run: FEDF bit for bit with one beta,
ADMM to its tolerance; the run log counts the secure layers' bytes."""

import numpy as np
import pytest

from fedf_jax import codec, config, simulation
from fedf_jax.secure import secagg, sums


def test_integer_sum_is_exact_and_its_bytes_follow_the_formula():
    rows = np.random.default_rng(0).integers(-300, 300, (6, 37)).astype(np.int32)
    total, moved = sums.integer_sum(rows, b"seed", b"round 1")
    np.testing.assert_array_equal(total, rows.sum(axis=0))
    np.testing.assert_array_equal(moved, sums.round_bytes(6, 37, 4))
    _, _, counted = secagg.simulate_round(rows.view(np.uint32), threshold=4, seed=b"seed",
                                          context=b"round 1", return_bytes=True)
    assert int((counted.sent + counted.received).sum()) == int(moved.sum())


def test_fixed_sum_is_within_its_bound():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(5, 3, 11)).astype(np.float32)
    w = np.array([1, 0, 1, 1, 1], np.float32)
    got = sums.fixed_sum(v, w, b"seed")
    want = (w[:, None, None] * v.astype(np.float64)).sum(axis=0)
    assert np.abs(got - want).max() <= 5 * 2.0**-33 + np.abs(want).max() * 2.0**-23
    with pytest.raises(ValueError, match="fixed point"):
        sums.fixed_sum(np.full((2, 3), 3e9), np.ones(2), b"seed")


@pytest.fixture(scope="module")
def flat():
    cfg = config.make(workers=4, epochs=3, seed=3, partition="dirichlet-sizes")
    return cfg, simulation.run(cfg), simulation.run(cfg.replace(secure_sum="secagg"))


def test_secagg_fedf_is_plain_fedf_bit_for_bit(flat):
    _, plain, secure = flat
    assert [r["pilot"] for r in plain["records"]] == [r["pilot"] for r in secure["records"]]
    np.testing.assert_array_equal(plain["params"], secure["params"])


def test_secagg_bytes_replace_the_ternaries(flat):
    cfg, plain, secure = flat
    m, n = plain["num_params"], cfg.n_workers
    for a, b in zip(plain["records"], secure["records"], strict=True):
        assert b["bytes_up_ternary"] == 0
        ternaries = (n - 1) * (codec.packed_size(m) + codec.HEADER_SIZE)
        want = sums.round_bytes(n, m, 4)
        assert [b[f"bytes_secagg_{s}"] for s in ("keys", "shares", "masked", "unmask")] == (
            want.tolist())
        assert b["bytes_total"] == a["bytes_total"] - ternaries + int(want.sum())
        assert b["bytes_secagg_masked"] == n * (4 * m + 4 * n)  # 4 bytes a parameter


def test_per_worker_betas_go_through_in_fixed_point():
    cfg = config.make(workers=4, epochs=3, seed=3, beta=(0.1, 0.2, 0.3, 0.25))
    plain, secure = simulation.run(cfg), simulation.run(cfg.replace(secure_sum="secagg"))
    assert [r["pilot"] for r in plain["records"]] == [r["pilot"] for r in secure["records"]]
    np.testing.assert_allclose(secure["params"], plain["params"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["secagg", "paillier"])
def test_groups_with_secure_layers_are_the_plain_run(mode):
    cfg = config.make(workers=6, epochs=2, seed=1, groups=2, paillier_bits=1024)
    plain, secure = simulation.run(cfg), simulation.run(cfg.replace(secure_sum=mode))
    assert [r["group_pilots"] for r in plain["records"]] == [
        r["group_pilots"] for r in secure["records"]]
    np.testing.assert_array_equal(plain["params"], secure["params"])
    m = plain["num_params"]
    for a, b in zip(plain["records"], secure["records"], strict=True):
        assert b["bytes_total"] == b["bytes_group"] + b["bytes_top"]
        # two groups of three workers, one secure round each: masked vectors of 4M bytes
        assert b["bytes_secagg_masked"] == 2 * int(sums.round_bytes(3, m, 4)[2])
        if mode == "secagg":  # the top still gets the groups' ternaries
            assert b["bytes_top"] == a["bytes_top"] and "bytes_paillier" not in b
        else:  # the top gets Paillier ciphertexts instead
            assert b["bytes_paillier"] > 0 and b["bytes_top"] != a["bytes_top"]


def test_secure_admm_reaches_the_plain_objective():
    cfg = config.make(algorithm="admm-svm", data="breast-cancer", workers=4, epochs=2000)
    plain, secure = simulation.run(cfg), simulation.run(cfg.replace(secure_sum="secagg"))
    a, b = plain["records"][-1], secure["records"][-1]
    assert b["converged"] and abs(a["objective"] - b["objective"]) <= 1e-4 * a["objective"]
    assert b["bytes_secagg_masked"] > 0 and b["bytes_up_model"] == 0


@pytest.mark.parametrize("flags, needle", [
    ({"secure_sum": "paillier"}, "needs `groups` >= 2"),
    ({"secure_sum": "secagg", "algorithm": "phong"}, "applies to fedf and admm-svm"),
])
def test_secure_sum_flag_errors_name_the_value(flags, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        config.make(**flags)
