"""Fused protocol kernels vs a copy-bandwidth kernel and vs the unfused path.

Worker kernel, vmapped over N workers: ``ternarize_pack`` (Eq. 4/5 + packing) reads
Q f32[N, M], P^{t-1}, P^{t-2} f32[M] and writes u8[N, packed_size(M)]. Master kernel:
``unpack_update`` (unpack + Eq. 3) reads u8[N, packed_size(M)] and Q_{k*}, P^{t-1},
P^{t-2} f32[M], and writes P^t f32[M]. Effective GB/s = those bytes / time. The
baseline is a plain jitted ``x + y`` on f32 vectors moving the same number of bytes
(reads + writes), timed in the same process; the figure is the ratio. The unfused
path runs each stage as its own jitted call (``protocol.ternarize_then_pack``,
``protocol.unpack_then_update``).

    python sims/bench/kernels.py                        # M = 1M, 10M; N = 3, 10, 100
    python sims/bench/kernels.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from fedf_jax import codec, protocol

MAX_WORKER_BYTES = 1 << 30  # the worker kernel's Q [N, M] above this is skipped (host RAM)


def time_interleaved(calls, reps: int) -> list[tuple[float, float]]:
    """(median, min) seconds of each ``(fn, args)``, called in turn ``reps`` times
    after one warm-up each, so that all of them see the same load on a shared box."""
    for fn, args in calls:
        jax.block_until_ready(fn(*args))
    ts = [[] for _ in calls]
    for _ in range(reps):
        for i, (fn, args) in enumerate(calls):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            ts[i].append(time.perf_counter() - t0)
    return [(statistics.median(t), min(t)) for t in ts]


_add = jax.jit(lambda x, y: x + y)


def copy_inputs(n_bytes: int):
    """f32 ``x``, ``y`` for ``x + y`` whose reads and write total ``n_bytes``."""
    n = max(n_bytes // 12, 1)
    return jnp.ones((n,), jnp.float32), jnp.full((n,), 2.0, jnp.float32)


def _inputs(n: int, m: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    p_prev = jnp.asarray(rng.normal(size=m).astype(np.float32))
    p_prev2 = p_prev + jnp.asarray(0.01 * rng.normal(size=m).astype(np.float32))
    return rng, p_prev, p_prev2


def bench_worker(n: int, m: int, scheme: str, reps: int) -> dict:
    """Worker kernel over N workers: fused vs unfused, effective GB/s vs ``x + y``."""
    rng, p_prev, p_prev2 = _inputs(n, m)
    q = p_prev + 0.01 * jnp.asarray(rng.standard_normal((n, m), dtype=np.float32))
    alpha = jnp.full((n,), 0.01, jnp.float32)
    beta = jnp.full((n,), 0.2, jnp.float32)
    epoch = jnp.int32(2)
    axes = (0, None, None, 0, 0, None)
    fused = jax.jit(jax.vmap(functools.partial(protocol.ternarize_pack, scheme=scheme), axes))
    # Unfused: the ternaries i8[N, M] are materialised, then packed by a second call.
    tern = jax.jit(jax.vmap(protocol.ternarize, axes))
    pack = jax.jit(functools.partial(codec.pack_jnp, scheme=scheme))

    def unfused(*a):
        return pack(tern(*a))

    args = (q, p_prev, p_prev2, alpha, beta, epoch)
    if not np.array_equal(np.asarray(fused(*args)), np.asarray(unfused(*args))):
        raise AssertionError("fused and unfused worker kernels disagree")
    n_bytes = 4 * n * m + 8 * m + n * codec.packed_size(m, scheme)
    return _row("worker ternarize+pack", n, m, scheme, n_bytes, reps, fused, unfused, args)


def bench_master(n: int, m: int, scheme: str, reps: int) -> dict:
    """Master kernel over N packed ternaries: fused vs unfused, GB/s vs ``x + y``."""
    rng, p_prev, p_prev2 = _inputs(n, m)
    q_pilot = p_prev + jnp.asarray(0.01 * rng.normal(size=m).astype(np.float32))
    # one row at a time: host memory stays near the packed size
    packed = jnp.asarray(np.stack([codec.pack(rng.integers(-1, 2, m, dtype=np.int8), scheme)
                                   for _ in range(n)]))
    sizes = jnp.asarray(rng.integers(10, 100, size=n).astype(np.float32))
    mask = jnp.asarray(rng.random(n) > 0.1)
    betas = jnp.full((n,), 0.2, jnp.float32)
    args = (q_pilot, packed, sizes, jnp.int32(n // 2), p_prev, p_prev2, 0.01, betas,
            jnp.int32(2))
    fused = functools.partial(protocol.unpack_update, scheme=scheme, mask=mask)
    unfused = functools.partial(protocol.unpack_then_update, scheme=scheme, mask=mask)
    a, b = np.asarray(fused(*args)), np.asarray(unfused(*args))
    if not np.allclose(a, b, rtol=1e-5, atol=1e-6):
        raise AssertionError("fused and unfused master kernels disagree")
    n_bytes = n * codec.packed_size(m, scheme) + 16 * m
    return _row("master unpack+update", n, m, scheme, n_bytes, reps, fused, unfused, args)


def _row(kernel, n, m, scheme, n_bytes, reps, fused, unfused, args) -> dict:
    xy = copy_inputs(n_bytes)
    copy_bytes = 12 * xy[0].shape[0]
    fused_t, unfused_t, copy_t = time_interleaved(
        [(fused, args), (unfused, args), (_add, xy)], reps)
    copy = {"median_s": copy_t[0], "min_s": copy_t[1], "gbps": copy_bytes / copy_t[0] / 1e9}
    gbps = n_bytes / fused_t[0] / 1e9
    return {
        "kernel": kernel, "N": n, "M": m, "scheme": scheme, "bytes": n_bytes,
        "fused_median_s": fused_t[0], "fused_min_s": fused_t[1],
        "unfused_median_s": unfused_t[0], "unfused_min_s": unfused_t[1],
        "copy_median_s": copy["median_s"], "copy_min_s": copy["min_s"],
        "fused_gbps": gbps, "copy_gbps": copy["gbps"],
        "fraction_of_copy": gbps / copy["gbps"],
        "fraction_of_copy_mins": (n_bytes / fused_t[1]) / (copy_bytes / copy["min_s"]),
        "unfused_over_fused": unfused_t[0] / fused_t[0],
    }


def run(quick: bool = False, schemes=("2bit", "base3"), log=print) -> list[dict]:
    """Every (kernel, M, N, scheme) case; ``quick``: M = 1M and N = 3, 10 only."""
    ms = [1_000_000] if quick else [1_000_000, 10_000_000]
    ns = [3, 10] if quick else [3, 10, 100]
    reps = 5 if quick else 9
    rows = []
    for scheme in schemes:
        for m in ms:
            for n in ns:
                cases = [bench_master]
                if 4 * n * m <= MAX_WORKER_BYTES:
                    cases.insert(0, bench_worker)
                else:
                    log(f"  worker kernel N={n} M={m}: Q is {4 * n * m / 2**30:.1f} GiB, "
                        "skipped (host memory)")
                for case in cases:
                    r = case(n, m, scheme, reps)
                    rows.append(r)
                    log(f"  {r['kernel']:<22} {scheme:<5} N={n:<4} M={m:<9} "
                        f"fused {1e3 * r['fused_median_s']:8.2f} ms {r['fused_gbps']:6.2f} GB/s "
                        f"= {100 * r['fraction_of_copy']:5.1f}% of x+y "
                        f"({r['copy_gbps']:.2f} GB/s); unfused {r['unfused_over_fused']:.2f}x",
                        flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="M = 1M, N = 3 and 10")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    rows = run(args.quick)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"jax": jax.__version__, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
