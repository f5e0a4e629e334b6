"""fedf_jax.secure.secagg (Bonawitz et al. 2017, Fig. 4) against plain sums written here:
exact sums under every allowed dropout set, uniform-looking masked vectors, refusals
below the threshold, reproducible seeds and byte counts by hand formula."""

import itertools

import numpy as np
import pytest
from scipy import stats

from fedf_jax.secure import secagg, shamir

M = 37
DTYPES = [np.uint32, np.uint64]


def _inputs(n, dtype, seed=0, m=M):
    info = np.iinfo(dtype)
    return np.random.default_rng(seed).integers(0, info.max, (n, m), dtype=dtype,
                                                endpoint=True)


def _plain_sum(x, survivors):
    """Sum mod 2^w with Python ints, one element at a time."""
    w = x.dtype.itemsize * 8
    return np.array([sum(int(x[k, j]) for k in survivors) % 2**w for j in range(x.shape[1])],
                    dtype=x.dtype)


def _dropout_sets(n, t):
    for d in range(n - t + 1):
        yield from itertools.combinations(range(n), d)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n", "t", "weak"), [(3, 2, False), (4, 3, False), (5, 3, False),
                                              (4, 2, True), (2, 1, True)])
def test_sum_exact_for_every_allowed_dropout_set(n, t, weak, dtype):
    x = _inputs(n, dtype, seed=n * 10 + t)
    for trial, dropped in enumerate(_dropout_sets(n, t)):
        total, seen = secagg.simulate_round(x, threshold=t, dropped=dropped, seed=trial,
                                            allow_weak_threshold=weak)
        survivors = [k for k in range(n) if k not in dropped]
        np.testing.assert_array_equal(total, _plain_sum(x, survivors))
        assert total.dtype == dtype and seen.shape == (len(survivors), M)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_exact_with_late_dropouts_at_seven_clients(dtype):
    x = _inputs(7, dtype, seed=7)
    for dropped, late in [((2, 5), ()), ((0, 6), (1,)), ((), (0, 1, 2)), ((3,), (4, 5))]:
        total, _ = secagg.simulate_round(x, threshold=4, dropped=dropped, seed=1,
                                         dropped_after_input=late)
        np.testing.assert_array_equal(total, _plain_sum(x, [k for k in range(7)
                                                            if k not in dropped]))


def test_masked_vector_bytes_look_uniform():
    x = np.full((4, 4096), 7, np.uint32)  # a constant input, far from uniform
    _, seen = secagg.simulate_round(x, threshold=3, dropped=(1,), seed=3)
    for row, masked in ((seen[0], True), (x[0], False)):
        counts = np.bincount(row.view(np.uint8), minlength=256)
        p = stats.chisquare(counts).pvalue
        if masked:
            assert p > 1e-3, counts
        else:
            assert p < 1e-6  # the check can tell a non-uniform vector


def test_masked_vector_differs_from_input():
    x = _inputs(5, np.uint32, seed=5)
    _, seen = secagg.simulate_round(x, threshold=3, dropped=(0,), seed=0)
    assert np.mean(seen == x[1:]) < 0.05


@pytest.mark.parametrize(("n", "t", "dropped", "late", "step"), [
    (5, 3, (0, 1, 2), (), "masked-input"),
    (5, 3, (0,), (1, 2), "unmasking"),
    (4, 4, (3,), (), "masked-input"),
])
def test_too_few_survivors_refuse_the_round(n, t, dropped, late, step):
    x = _inputs(n, np.uint32)
    left = n - len(dropped) - (len(late) if step == "unmasking" else 0)
    with pytest.raises(secagg.SecAggError,
                       match=rf"only {left} clients survived .*{step}.*threshold t={t}"):
        secagg.simulate_round(x, threshold=t, dropped=dropped, dropped_after_input=late)
    assert issubclass(secagg.SecAggError, ValueError)


def _run_to_masked(n, t, x, seed=0, senders=None):
    clients = [secagg.Client(k, n, t, x.shape[1], x.dtype, seed=seed) for k in range(n)]
    server = secagg.Server(n, t, x.shape[1], x.dtype)
    keys = server.collect_keys({k: c.advertise() for k, c in enumerate(clients)})
    senders = range(n) if senders is None else senders
    routed = server.route_shares({k: clients[k].share_keys(keys) for k in senders})
    return clients, server, routed


def test_clients_refuse_a_short_or_second_survivor_list():
    x = _inputs(5, np.uint32)
    clients, server, routed = _run_to_masked(5, 3, x)
    ys = {k: clients[k].masked_input(x[k], routed[k]) for k in range(5)}
    server.collect_masked(ys)
    short = np.array([0, 1], "<u4").tobytes()
    with pytest.raises(secagg.SecAggError, match=r"only 2 clients survived.*t=3"):
        clients[0].unmask_shares(short)
    clients[0].unmask_shares(np.array([0, 1, 2, 3, 4], "<u4").tobytes())
    with pytest.raises(ValueError, match="refusing a second one"):
        clients[0].unmask_shares(np.array([0, 1, 2], "<u4").tobytes())


def test_pieces_driven_by_hand_with_a_dropout_before_sharing():
    x = _inputs(5, np.uint64, seed=9)
    clients, server, routed = _run_to_masked(5, 3, x, senders=[0, 1, 2, 4])
    assert set(routed) == {0, 1, 2, 4} and all(isinstance(m, bytes) for m in routed.values())
    survivors = server.collect_masked({k: clients[k].masked_input(x[k], routed[k])
                                       for k in (0, 2, 4)})
    total = server.aggregate({k: clients[k].unmask_shares(survivors) for k in (0, 2, 4)})
    np.testing.assert_array_equal(total, _plain_sum(x, [0, 2, 4]))


def test_tampered_share_fails_authentication():
    x = _inputs(3, np.uint32)
    clients, server, routed = _run_to_masked(3, 2, x)
    bad = bytearray(routed[0])
    bad[40] ^= 1
    y = clients[0].masked_input(x[0], bytes(bad))
    server.collect_masked({0: y, 1: clients[1].masked_input(x[1], routed[1])})
    with pytest.raises(ValueError, match="fails authentication"):
        clients[0].unmask_shares(np.array([0, 1], "<u4").tobytes())


def test_same_seed_same_masks_other_seed_other_masks():
    x = _inputs(4, np.uint32)
    t1, a = secagg.simulate_round(x, threshold=3, dropped=(2,), seed=0)
    t2, b = secagg.simulate_round(x, threshold=3, dropped=(2,), seed=0)
    t3, c = secagg.simulate_round(x, threshold=3, dropped=(2,), seed=1)
    t4, d = secagg.simulate_round(x, threshold=3, dropped=(2,), seed=None)
    t5, e = secagg.simulate_round(x, threshold=3, dropped=(2,), seed=0, context=b"epoch 1")
    np.testing.assert_array_equal(a, b)
    for other in (c, d, e):
        assert np.mean(a == other) < 0.05
    for t in (t2, t3, t4, t5):
        np.testing.assert_array_equal(t, t1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_byte_counts_match_hand_formula(dtype):
    n, t, dropped = 6, 4, (1, 4)
    x = _inputs(n, dtype)
    _, _, rb = secagg.simulate_round(x, threshold=t, dropped=dropped, return_bytes=True)
    w, d = np.dtype(dtype).itemsize, len(dropped)
    keys, share = 4 + 32 + 32, 4 + (4 + 4 + 33 + 33) + 16  # id|c^PK|s^PK; id|AES-GCM(..)
    for k in range(n):
        alive = k not in dropped
        sent = [keys, share * (n - 1), w * M if alive else 0, (4 + 33) * n if alive else 0]
        got = [keys * n, share * (n - 1), 4 * (n - d) if alive else 0, 0]
        np.testing.assert_array_equal(rb.sent[k], sent)
        np.testing.assert_array_equal(rb.received[k], got)
    assert rb.plain == w * M
    assert rb.expansion()[0] == pytest.approx((sum(rb.sent[0]) + sum(rb.received[0])) / (w * M))


def test_threshold_rule_and_input_errors():
    x = _inputs(5, np.uint32)
    with pytest.raises(ValueError, match=r"`threshold` \(=2\) must lie in \[3, 5\] for n=5 "
                                         r"\(t > n/2"):
        secagg.simulate_round(x, threshold=2)
    secagg.simulate_round(x, threshold=2, allow_weak_threshold=True)
    for bad, weak in ((6, False), (0, True), (6, True)):
        with pytest.raises(ValueError, match=rf"`threshold` \(={bad}\)"):
            secagg.simulate_round(x, threshold=bad, allow_weak_threshold=weak)
    with pytest.raises(TypeError, match="dtype int32 is not supported"):
        secagg.simulate_round(x.astype(np.int32), threshold=3)
    with pytest.raises(ValueError, match=r"got shape \(37,\)"):
        secagg.simulate_round(x[0], threshold=3)
    with pytest.raises(ValueError, match=r"`dropped` \(=\(7,\)\)"):
        secagg.simulate_round(x, threshold=3, dropped=(7,))
    with pytest.raises(ValueError, match=r"`seed` \(=-1\)"):
        secagg.simulate_round(x, threshold=3, seed=-1)


def test_shamir_any_t_shares_rebuild_and_fewer_do_not():
    gmpy2 = pytest.importorskip("gmpy2")
    assert gmpy2.is_prime(shamir.PRIME, 50) and shamir.PRIME > 2**256
    rand = np.random.default_rng(0)
    secret = 2**256 - 12345
    xs = [1, 2, 3, 4, 5]
    shares = shamir.shamir_share(secret, xs, 3, lambda k: rand.bytes(k))
    pts = list(zip(xs, shares, strict=True))
    for subset in itertools.combinations(pts, 3):
        assert shamir.shamir_reconstruct(subset) == secret
    assert shamir.shamir_reconstruct(pts[:2]) != secret


def test_prg_streams_are_prefixes_and_words():
    seed = bytes(range(32))
    long = secagg.prg(seed, 10, np.uint32)
    np.testing.assert_array_equal(secagg.prg(seed, 4, np.uint32), long[:4])
    np.testing.assert_array_equal(secagg.prg(seed, 5, np.uint64).view(np.uint32), long)
    assert not np.array_equal(secagg.prg(bytes(32), 10, np.uint32), long)
