"""Streaming workers (``--worker-chunk K``): a cohort's rows trained K at a time.

One jitted epoch scans over chunks of a cohort's rows instead of vmapping all of
them at once, so that only K local models are ever alive: memory O(K M) for the
models, whatever N. An algorithm gives a *body* written for one chunk, which folds
the chunk into a small running carry (FEDF: the best goodness so far with its
model and ternary, and the vote sum of Eq. 3; FedAvg: the weighted sum of the
models), and returns the chunk's new optimizer states and per-row outputs (costs,
flags: O(N) in all). :func:`scan_rows` writes those back into the cohort's arrays.

Chunks never pad the data (a copy): a cohort of R rows is cut into C = ceil(R / K)
chunks of K' = ceil(R / C) <= K rows, and the last chunk starts at R - K', so it
may overlap the one before by fewer than C rows. A row belongs to the first chunk
that holds it (:attr:`Chunk.new`); the overlapping rows of the last chunk are
trained again and thrown away (their outputs and optimizer states are not written,
and a body must leave them out of its carry).

Each row runs the same computation as in the whole-cohort vmap (same keys from its
global id, same data, same optimizer state), so a streamed epoch gives the same
local models, costs and ternaries. Bit for bit as long as XLA compiles a chunk's
batch like the whole cohort's: on CPU it picks dot and reduction kernels by operand
size, so a chunk of a few rows (1-4 for the digits MLP), or one whose batched
matmuls fall on the other side of a size threshold, can round differently (float32
rounding; pilots and ternaries agree unless two goodness values are that close).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedf_jax import layout


class Chunk(NamedTuple):
    """One chunk of a cohort's rows, as a body sees it."""

    cd: layout.CohortData  # the chunk's rows of the cohort's data
    opt_state: Any  # their optimizer states
    new: jax.Array  # bool[K'] rows first held by this chunk (False: the overlap)
    worker: jax.Array  # i32[K'] each row's worker position; N for a padding row


def plan(n_rows: int, k: int) -> tuple[int, int]:
    """(C, K'): ``C = ceil(R / K)`` chunks of ``K' = ceil(R / C) <= K`` rows."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"`worker_chunk` (={k!r}) must be an integer >= 1.")
    chunks = -(-n_rows // k)
    return chunks, -(-n_rows // chunks)


def worker_of(cohort: layout.Cohort, n_workers: int) -> np.ndarray:
    """i32[R] each row's worker position (``n_workers`` for padding rows)."""
    pad = cohort.n_rows - len(cohort.rows)
    return np.concatenate([np.asarray(cohort.rows, np.int32),
                           np.full(pad, n_workers, np.int32)])


def take(values: jax.Array, worker: jax.Array, fill) -> jax.Array:
    """``values[worker]`` for a chunk's rows; ``fill`` for padding rows (worker N)."""
    return values.at[worker].get(mode="fill", fill_value=fill)


def _rows_like(shapes, n_rows: int):
    return jax.tree.map(lambda s: jnp.zeros((n_rows, *s.shape[1:]), s.dtype), shapes)


def scan_rows(body: Callable, carry, cohort: layout.Cohort, n_workers: int, k: int,
              cd: layout.CohortData, opt_state):
    """Runs ``body`` over a cohort's rows, K' at a time (one ``lax.scan``).

    Args:
      body: ``(carry, Chunk) -> (carry, (opt_state, outputs))``, where the optimizer
        states and every leaf of ``outputs`` have the chunk's rows on their leading
        axis.
      carry: the running state, folded chunk by chunk.
      k: the most rows per chunk, K.
      cd, opt_state: the cohort's data and optimizer states (R rows).

    Returns:
      (carry, opt_state, outputs), the last two with the cohort's R rows.
    """
    n_rows = cohort.n_rows
    chunks, size = plan(n_rows, k)
    workers = jnp.asarray(worker_of(cohort, n_workers))
    if chunks == 1:  # the whole cohort at once
        carry, (opt_state, out) = body(carry, Chunk(cd, opt_state, jnp.ones(n_rows, bool),
                                                    workers))
        return carry, opt_state, out

    def cut(i, opt):
        start = jnp.minimum(i * size, n_rows - size)

        def rows(a):
            return jax.lax.dynamic_slice_in_dim(a, start, size)

        new = start + jnp.arange(size) >= i * size
        return start, Chunk(jax.tree.map(rows, cd), jax.tree.map(rows, opt), new,
                            rows(workers))

    def put(start, new, whole, part):
        old = jax.lax.dynamic_slice_in_dim(whole, start, size)
        keep = new.reshape((-1,) + (1,) * (part.ndim - 1))
        return jax.lax.dynamic_update_slice_in_dim(whole, jnp.where(keep, part, old), start,
                                                   0)

    def step(state, i):
        carry, opt, out = state
        start, ch = cut(i, opt)
        carry, (opt_new, out_new) = body(carry, ch)
        opt = jax.tree.map(lambda w, p: put(start, ch.new, w, p), opt, opt_new)
        out = jax.tree.map(lambda w, p: put(start, ch.new, w, p), out, out_new)
        return (carry, opt, out), None

    shapes = jax.eval_shape(body, carry, cut(0, opt_state)[1])[1][1]
    (carry, opt_state, out), _ = jax.lax.scan(
        step, (carry, opt_state, _rows_like(shapes, n_rows)), jnp.arange(chunks))
    return carry, opt_state, out


def scan_cohorts(body: Callable, carry, lay: layout.Layout, k: int, cohorts, opt_states):
    """:func:`scan_rows` over every cohort in turn, one carry through all of them.

    Args:
      body: ``(cohort, carry, Chunk) -> (carry, (opt_state, outputs))``.
      cohorts, opt_states: per cohort, the data and the optimizer states.

    Returns:
      (carry, opt_states per cohort, outputs per cohort).
    """
    opts, outs = [], []
    for c, cd, o in zip(lay.cohorts, cohorts, opt_states, strict=True):
        carry, o, out = scan_rows(lambda cr, ch, c=c: body(c, cr, ch), carry, c, lay.n_workers,
                                  k, cd, o)
        opts.append(o)
        outs.append(out)
    return carry, tuple(opts), outs


__all__ = ["Chunk", "plan", "worker_of", "take", "scan_rows", "scan_cohorts"]
