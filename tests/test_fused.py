"""Fused kernels vs the unfused path and plain numpy; many epochs in one scan vs the loop.

The fused worker kernel (ternarize + pack) must equal the unfused one and a numpy loop
bit for bit; the fused master kernel (unpack + Eq. 3) must equal the unfused one and a
float64 numpy loop up to float32 rounding (the sums run in a different order).
``harness.scan(epoch, n)`` must give the outputs and state of n epoch calls.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import TRITS_PER_BYTE, ref_master_update, ref_pack, ref_ternarize

from fedf_jax import codec, harness, layout, master, protocol, worker
from fedf_jax.algorithms import fedf
from fedf_jax.data import WorkerData
from fedf_jax.models import make_model

SCHEMES = ["2bit", "base3"]


# ------------------------------------------------------------------ numpy references


def ref_unpack_byte(b, scheme):
    """Every byte, invalid ones included, as the jnp decoders read it: 2-bit code 10 -> 0,
    base-3 digits of any byte."""
    if scheme == "2bit":
        return [{0: 0, 1: 1, 2: 0, 3: -1}[(b >> (2 * j)) & 3] for j in range(4)]
    return [(b // 3**j) % 3 - 1 for j in range(5)]


# ------------------------------------------------------------------ decoding


@pytest.mark.parametrize("scheme", SCHEMES)
def test_float_lanes_decode_every_byte_like_the_spec(scheme):
    per = TRITS_PER_BYTE[scheme]
    buf = jnp.arange(256, dtype=jnp.uint8)
    got = np.asarray(codec.unpack_f32_jnp(buf, 256 * per, scheme))
    want = np.array([ref_unpack_byte(b, scheme) for b in range(256)], np.float32).reshape(-1)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, np.asarray(codec.unpack_jnp(buf, 256 * per, scheme)))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_float_lanes_keep_leading_axes_and_cut_the_tail(scheme):
    """Rows [3, B] decode row by row; n not a multiple of the trits per byte."""
    per = TRITS_PER_BYTE[scheme]
    rng = np.random.default_rng(7)
    n = 5 * per + 2
    t = rng.integers(-1, 2, size=(3, n)).astype(np.int8)
    buf = np.stack([ref_pack(row, scheme) for row in t])
    got = np.asarray(codec.unpack_f32_jnp(jnp.asarray(buf), n, scheme))
    assert got.shape == (3, n)
    np.testing.assert_array_equal(got, t.astype(np.float32))


# ------------------------------------------------------------------ worker kernel


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("epoch", [1, 2, 5])
@pytest.mark.parametrize("m", [37, 1003])
def test_fused_ternarize_pack_equals_unfused_and_numpy_exactly(scheme, epoch, m):
    rng = np.random.default_rng(m + epoch)
    p_prev = rng.normal(size=m).astype(np.float32)
    p_prev2 = p_prev + 0.05 * rng.normal(size=m).astype(np.float32)
    q = p_prev + 0.05 * rng.normal(size=m).astype(np.float32)
    q[:5] = p_prev[:5]  # zero deltas
    p_prev2[5:10] = p_prev[5:10]  # zero previous steps
    alpha, beta = np.float32(0.03), np.float32(0.4)
    fused = np.asarray(protocol.ternarize_pack(q, p_prev, p_prev2, alpha, beta, epoch, scheme))
    unfused = np.asarray(protocol.ternarize_then_pack(q, p_prev, p_prev2, alpha, beta, epoch,
                                                      scheme))
    tern = ref_ternarize(q, p_prev, p_prev2, alpha, beta, epoch)
    assert set(np.unique(tern)) == {-1, 0, 1}
    np.testing.assert_array_equal(fused, ref_pack(tern, scheme))
    np.testing.assert_array_equal(unfused, fused)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_fused_worker_kernel_vmapped_over_workers_with_private_alpha_beta(scheme):
    rng = np.random.default_rng(3)
    n, m = 5, 41
    p_prev = rng.normal(size=m).astype(np.float32)
    p_prev2 = p_prev + 0.05 * rng.normal(size=m).astype(np.float32)
    q = p_prev + 0.05 * rng.normal(size=(n, m)).astype(np.float32)
    alpha = rng.uniform(0.01, 0.05, n).astype(np.float32)
    beta = rng.uniform(0.1, 0.9, n).astype(np.float32)
    axes = (0, None, None, 0, 0, None)
    fn = jax.jit(jax.vmap(functools.partial(protocol.ternarize_pack, scheme=scheme), axes))
    got = np.asarray(fn(q, p_prev, p_prev2, alpha, beta, jnp.int32(2)))
    for k in range(n):
        want = ref_pack(ref_ternarize(q[k], p_prev, p_prev2, alpha[k], beta[k], 2), scheme)
        np.testing.assert_array_equal(got[k], want)


# ------------------------------------------------------------------ master kernel


def _master_case(n, m, seed):
    rng = np.random.default_rng(seed)
    tern = rng.integers(-1, 2, size=(n, m)).astype(np.int8)
    p_prev = rng.normal(size=m).astype(np.float32)
    p_prev2 = p_prev + 0.1 * rng.normal(size=m).astype(np.float32)
    q_pilot = p_prev + 0.1 * rng.normal(size=m).astype(np.float32)
    sizes = rng.integers(5, 50, size=n).astype(np.float32)
    betas = rng.uniform(0.1, 0.9, n).astype(np.float32)
    mask = rng.random(n) > 0.3
    return tern, p_prev, p_prev2, q_pilot, sizes, betas, mask


@pytest.fixture(params=["one block", "blocks of 32 rows"])
def block(request, monkeypatch):
    """The master's reduction in one block, or (at M = 37, 2bit and base3 alike) in
    blocks of 32 rows: N = 33 and 70 then end on a block that overlaps the one before."""
    if request.param != "one block":
        monkeypatch.setattr(protocol, "_BLOCK_BYTES", 32 * 4 * 4 * 10)
    jax.clear_caches()  # the block size is read when the kernels are traced
    yield request.param
    monkeypatch.undo()
    jax.clear_caches()


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("n", [1, 5, 33, 70])
def test_fused_unpack_update_equals_unfused_and_numpy(block, scheme, n):
    m = 37
    tern, p_prev, p_prev2, q_pilot, sizes, betas, mask = _master_case(n, m, n)
    packed = np.stack([codec.pack(r, scheme) for r in tern])
    for epoch, direction in [(1, 1), (2, -1), (3, 1)]:  # epoch is traced: one compile
        for pilot in sorted({0, n // 2, n - 1}):  # the pilot first, in the middle, last
            args = (q_pilot, packed, sizes, pilot, p_prev, p_prev2, 0.05, betas, epoch)
            fused = np.asarray(protocol.unpack_update(*args, direction=direction,
                                                      scheme=scheme, mask=mask))
            unfused = np.asarray(protocol.unpack_then_update(*args, direction=direction,
                                                             scheme=scheme, mask=mask))
            want = ref_master_update(q_pilot, tern, sizes, pilot, p_prev, p_prev2, 0.05,
                                     betas, epoch, direction, mask)
            np.testing.assert_allclose(fused, want, rtol=2e-6, atol=2e-6)
            np.testing.assert_allclose(unfused, fused, rtol=2e-6, atol=2e-6)


def test_masked_rows_with_garbage_bytes_add_nothing():
    n, m = 40, 37
    tern, p_prev, p_prev2, q_pilot, sizes, betas, mask = _master_case(n, m, 1)
    packed = np.stack([codec.pack(r, "2bit") for r in tern])
    garbage = packed.copy()
    garbage[~mask] = 0xFF  # all -1 trits on the dropped rows
    args = (q_pilot, sizes, 3, p_prev, p_prev2, 0.05, betas, 2)
    a = protocol.unpack_update(args[0], packed, *args[1:], mask=mask)
    b = protocol.unpack_update(args[0], garbage, *args[1:], mask=mask)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ------------------------------------------------------------------ many epochs per call


def _tiny_run(kinds):
    rng = np.random.default_rng(0)
    n = len(kinds)
    model = make_model("mlp", (3, 3, 1), 3, hidden=(6,))
    sizes = np.array([7, 9, 5, 8][:n])
    x = rng.normal(size=(n, 9, 3, 3, 1)).astype(np.float32)
    y = rng.integers(0, 3, (n, 9)).astype(np.int32)
    specs = [worker.WorkerSpec(lr=0.1, batch_size=3, optimizer=k) for k in kinds]
    cfg = master.MasterConfig(alpha0=0.05, beta=0.3)
    lay = layout.make_layout(specs, sizes, 4)
    data = layout.place(lay, WorkerData(x, y, sizes), specs, cfg.betas(n), x[0, :4], y[0, :4],
                        jax.random.key(0))
    step = functools.partial(fedf.epoch, model, lay, cfg, layout.HERE.spread)
    return step, lay, data, model.init(jax.random.key(1))


def test_scan_of_three_epochs_equals_three_epoch_calls():
    # two optimizer kinds: two vmapped cohorts, gathered back in worker order
    epoch, lay, data, p0 = _tiny_run(["sgd", "adam", "sgd"])
    step = jax.jit(epoch, donate_argnums=0)
    state = fedf.init(lay, data, p0)
    outs = []
    for _ in range(3):
        state, out = step(state, data)
        outs.append(jax.device_get(out))
    scan = jax.jit(harness.scan(epoch, 3), donate_argnums=0)
    s_state, s_out = scan(fedf.init(lay, data, p0), data)
    for name in outs[0]:
        got = np.asarray(s_out[name])
        assert got.shape[0] == 3
        want = np.stack([np.asarray(o[name]) for o in outs])
        # the same program body: equal up to float32 rounding (observed: bit for bit)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=name)
    for a, b in zip(jax.tree.leaves(s_state), jax.tree.leaves(state), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert int(s_state.master.epoch) == 4
    # a second call continues from epoch 4 with the same executable
    s_state, s_out = scan(s_state, data)
    assert int(s_state.master.epoch) == 7 and scan._cache_size() == 1


@pytest.mark.parametrize("bad", [0, -2, 2.0, True])
def test_scan_names_a_bad_epoch_count(bad):
    epoch, _, _, _ = _tiny_run(["sgd"])
    with pytest.raises(ValueError, match="n_epochs"):
        harness.scan(epoch, bad)
