"""The master kernel with the old and the new lane interleave, in one process.

``codec.interleave_lanes`` turns the master's per-lane sums back into trit order.
The old version stacked the lanes along the last axis, which XLA fuses into the
consumer as a 4- or 5-way select per element; the new one stacks them along a
leading axis and transposes (a strided load). Both give the same values; this
times ``protocol.unpack_update`` compiled with each, in turn, next to ``x + y``
over the same bytes (as ``kernels.py`` does).

    python sims/bench/interleave_ab.py
    python sims/bench/interleave_ab.py --cases 3:1000000 100:9610 --reps 21
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import kernels
import numpy as np

from fedf_jax import codec, protocol

_new_interleave = codec.interleave_lanes


def old_interleave(lanes, n: int) -> jax.Array:
    """The previous ``codec.interleave_lanes``: stack along the last axis."""
    out = lanes[0] if len(lanes) == 1 else jnp.stack(lanes, axis=-1)
    return out.reshape(*lanes[0].shape[:-1], -1)[..., :n]


def compiled(interleave, scheme: str, mask, args):
    """``unpack_update`` traced and compiled with ``interleave`` in place."""
    codec.interleave_lanes = interleave
    try:
        fn = jax.jit(functools.partial(protocol.unpack_update.__wrapped__, scheme=scheme,
                                       mask=mask))
        fn.lower(*args).compile()
        jax.block_until_ready(fn(*args))
    finally:
        codec.interleave_lanes = _new_interleave
    return fn


def case(n: int, m: int, scheme: str, reps: int, log=print) -> dict:
    rng = np.random.default_rng(0)
    packed = jnp.asarray(np.stack([codec.pack(rng.integers(-1, 2, m, dtype=np.int8), scheme)
                                   for _ in range(n)]))
    p_prev = jnp.asarray(rng.normal(size=m).astype(np.float32))
    p_prev2 = p_prev + 0.01
    q = p_prev + 0.02
    sizes = jnp.asarray(rng.integers(10, 100, size=n).astype(np.float32))
    mask = jnp.asarray(rng.random(n) > 0.1)
    args = (q, packed, sizes, jnp.int32(n // 2), p_prev, p_prev2, 0.01,
            jnp.full((n,), 0.2, jnp.float32), jnp.int32(2))
    old, new = (compiled(f, scheme, mask, args) for f in (old_interleave, _new_interleave))
    a, b = np.asarray(old(*args)), np.asarray(new(*args))
    if not np.array_equal(a, b):
        raise AssertionError("old and new interleave disagree")
    n_bytes = n * codec.packed_size(m, scheme) + 16 * m
    xy = kernels.copy_inputs(n_bytes)
    (old_t, _), (new_t, _), (copy_t, _) = kernels.time_interleaved(
        [(old, args), (new, args), (kernels._add, xy)], reps)
    copy_gbps = 12 * xy[0].shape[0] / copy_t / 1e9
    r = {"scheme": scheme, "N": n, "M": m, "old_ms": 1e3 * old_t, "new_ms": 1e3 * new_t,
         "old_over_new": old_t / new_t,
         "old_of_copy": n_bytes / old_t / 1e9 / copy_gbps,
         "new_of_copy": n_bytes / new_t / 1e9 / copy_gbps}
    log(f"  {scheme:<5} N={n:<4} M={m:<9} old {r['old_ms']:8.2f} ms "
        f"({100 * r['old_of_copy']:4.0f}% of x+y)  new {r['new_ms']:8.2f} ms "
        f"({100 * r['new_of_copy']:4.0f}% of x+y)  old/new {r['old_over_new']:.2f}x", flush=True)
    return r


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["100:9610", "3:1000000", "10:1000000",
                                                       "100:1000000", "3:10000000",
                                                       "10:10000000"],
                        help="N:M pairs")
    parser.add_argument("--reps", type=int, default=9)
    args = parser.parse_args()
    for scheme in codec.SCHEMES:
        for c in args.cases:
            n, m = (int(v) for v in c.split(":"))
            case(n, m, scheme, args.reps)


if __name__ == "__main__":
    main()
