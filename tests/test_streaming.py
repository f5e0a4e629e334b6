"""Streaming workers (--worker-chunk K): the same run as all workers at once.

Chunks of K rows train exactly what the whole-cohort vmap trains; the master keeps a
running argmax (Eq. 1) and vote sum (Eq. 3). Bit for bit where XLA compiles a
chunk's batch like the whole cohort's (one optimizer kind, one beta, an IID split
here); to float32 rounding where it may not (several kinds, one beta per worker,
FedAvg's mean in another order), with the same pilots. ADMM's worker phases run
``lax.map`` over batches of K workers: the same iterates to float32 rounding.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedf_jax import config, harness, layout, simulation, stream
from fedf_jax.algorithms import fedf
from fedf_jax.config import WorkerSpec

N = 13
DIVERGES = WorkerSpec(lr=1e37, batch_size=4)  # its model overflows: a NaN cost every epoch
MIXED = (WorkerSpec(lr=0.1), WorkerSpec(lr=0.02, optimizer="adam", batch_size=16)) * 6 + (
    DIVERGES,)  # two cohorts, interleaved in worker order


def _runs(ks, **flat):
    """The run without chunks and with each K: {K or None: result}."""
    cfg = config.make(workers=N, seed=3, **flat)
    host = harness.load(cfg)
    return {k: simulation.run(cfg if k is None else cfg.replace(worker_chunk=k), host=host)
            for k in (None, *ks)}


def _field(run, name):
    return [np.asarray(r[name], np.float64) for r in run["records"]]


def _same_records(a, b, exact: bool):
    for name in ("pilot", "dropped", "ternary_nonzero_fraction", "bytes_total", "sampled"):
        assert [r.get(name) for r in a["records"]] == [r.get(name) for r in b["records"]], name
    # goodness S_k (C^{t-1} - C^t) is a difference of costs: a few ulps of C, times S_k
    for name, atol in (("costs", 1e-6), ("goodness", 1e-3), ("test_loss", 1e-6)):
        for x, y in zip(_field(a, name), _field(b, name), strict=True):
            if exact:
                np.testing.assert_array_equal(x, y, err_msg=name)
            else:
                np.testing.assert_allclose(x, y, rtol=1e-5, atol=atol, err_msg=name)


def test_plan_cuts_rows_into_even_chunks_without_padding():
    assert stream.plan(13, 5) == (3, 5)  # the last chunk overlaps the second by 2 rows
    assert stream.plan(13, 7) == (2, 7)
    assert stream.plan(13, 13) == stream.plan(13, 100) == (1, 13)
    assert stream.plan(100_000, 8192) == (13, 7693)
    with pytest.raises(ValueError, match=r"`worker_chunk` \(=0\)"):
        stream.plan(13, 0)


def test_scan_rows_gives_each_row_to_exactly_one_chunk():
    ids = (0, 2, 3, 5, 6, 8, 9, 10, 12)  # one cohort's workers, 2 padding rows after them
    cohort = layout.Cohort("sgd", ids, ids, None, 11)
    cd = layout.CohortData(*(jnp.arange(11.0),) * 7)

    def body(carry, ch):  # sums the workers it owns, counts each row's visits
        seen = jnp.sum(jnp.where(ch.new & (ch.worker < N), ch.worker, 0))
        return carry + seen, (ch.opt_state + 1, {"row": ch.cd.x, "worker": ch.worker})

    for k in (1, 3, 4, 5, 11, 20):
        total, opt, out = jax.jit(lambda c, o, k=k: stream.scan_rows(
            body, c, cohort, N, k, cd, o))(jnp.int32(0), jnp.zeros(11))
        assert int(total) == sum(ids), k
        np.testing.assert_array_equal(opt, np.ones(11))  # written once per row
        np.testing.assert_array_equal(out["row"], np.arange(11))
        np.testing.assert_array_equal(out["worker"], [*ids, N, N])


def test_running_pilot_takes_higher_goodness_then_lower_worker_never_nan():
    g = jnp.array([1.0, 3.0, 3.0, jnp.nan, 9.0])
    worker = jnp.array([4, 5, 6, 7, 8])
    stale = jnp.array([True, True, True, True, False])  # row 4 belongs to another chunk
    better, row = fedf.beats(jnp.float32(3.0), jnp.int32(2), g, worker, stale)
    assert not bool(better)  # a tie with a lower worker index keeps the old pilot
    better, row = fedf.beats(jnp.float32(3.0), jnp.int32(7), g, worker, stale)
    assert bool(better) and int(row) == 1  # a tie with a higher index: the lowest row wins
    better, _ = fedf.beats(jnp.float32(-jnp.inf), jnp.int32(N), jnp.full(5, jnp.nan), worker,
                           stale)
    assert not bool(better)  # no finite goodness: no pilot


def test_fedf_streamed_is_the_unchunked_run_bit_for_bit():
    specs = (WorkerSpec(lr=0.1),) * (N - 1) + (DIVERGES,)
    runs = _runs((5,), epochs=3, worker_specs=specs)  # 3 chunks, the last overlapping
    assert all(r["dropped"] == [N - 1] for r in runs[None]["records"])
    _same_records(runs[None], runs[5], exact=True)
    np.testing.assert_array_equal(runs[5]["params"], runs[None]["params"])


def test_fedf_streamed_with_uneven_sizes_kinds_and_betas_matches_to_rounding():
    betas = tuple(float(b) for b in np.linspace(0.1, 0.5, N).round(3))
    runs = _runs((6,), epochs=2, worker_specs=MIXED, beta=betas, partition="dirichlet-sizes")
    assert all(r["dropped"] == [N - 1] for r in runs[None]["records"])
    _same_records(runs[None], runs[6], exact=False)
    np.testing.assert_allclose(runs[6]["params"], runs[None]["params"], rtol=1e-5, atol=1e-6)


def test_fedavg_streamed_matches_to_rounding():
    runs = _runs((5,), epochs=3, algorithm="fedavg", fraction=0.6, partition="dirichlet-sizes")
    _same_records(runs[None], runs[5], exact=False)
    np.testing.assert_allclose(runs[5]["params"], runs[None]["params"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("algorithm", ["fedf", "fedavg"])
def test_groups_stream_inside_each_group(algorithm):
    # 2 groups of 7 and 6 workers; K = 10 streams 5 of each group's 7 rows at a time
    runs = _runs((10,), epochs=2, algorithm=algorithm, groups=2)
    exact = algorithm == "fedf"
    _same_records(runs[None], runs[10], exact=exact)
    assert [r.get("group_pilots") for r in runs[None]["records"]] == [
        r.get("group_pilots") for r in runs[10]["records"]]
    if exact:
        np.testing.assert_array_equal(runs[10]["params"], runs[None]["params"])
    else:
        np.testing.assert_allclose(runs[10]["params"], runs[None]["params"], rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.parametrize("groups", [1, 2])
def test_admm_streamed_matches_to_rounding(groups):
    # the x-update and dual phases 5 workers at a time (lax.map), the sums unchanged
    runs = _runs((5,), epochs=3, algorithm="admm-svm", groups=groups)
    for a, b in zip(runs[None]["records"], runs[5]["records"], strict=True):
        np.testing.assert_allclose(b["costs"], a["costs"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b["objective"], a["objective"], rtol=1e-5)
        np.testing.assert_allclose(b["rho"], a["rho"])
    np.testing.assert_allclose(runs[5]["params"], runs[None]["params"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("flat", [{"backend": "sharded"}, {"algorithm": "phong"},
                                  {"algorithm": "admm-svm", "split": "features"},
                                  {"secure_sum": "secagg"}, {"schedule": "async"},
                                  {"algorithm": "admm-svm", "schedule": "async"}])
def test_worker_chunk_names_what_it_does_not_apply_to(flat):
    with pytest.raises(ValueError, match=r"`worker_chunk` \(=4\).*drop --worker-chunk"):
        config.make(workers=4, worker_chunk=4, **flat)
