"""Where each worker's data and state sit: cohorts, padding, masks, worker order.

Workers that share an optimizer kind share one compiled training program; they
form a :class:`Cohort`, whose rows are stacked along a leading axis and trained
with one ``vmap`` of :func:`worker.train_and_cost`. A cohort may carry padding
rows (empty workers: no samples, so every step of theirs is a masked no-op and
their cost is NaN), for a backend that needs a multiple of its device count.
Everything an algorithm produces per worker comes out per cohort, and
:func:`to_workers` is the one place that puts the real rows back in worker order.

The chain from a data set to arrays on the device is :func:`build`: stack each
worker's samples, lay them out by cohort, and place them with the backend's
``put`` (one device, or rows sharded over a mesh), once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedf_jax import keys, worker
from fedf_jax.config import WorkerSpec
from fedf_jax.data import WorkerData, stack_workers
from fedf_jax.models import Model

EVAL_CHUNK = 2048  # rows per forward pass of the cost and test passes


class Cohort(NamedTuple):
    """Workers that share an optimizer kind, and so one compiled training program."""

    kind: str
    rows: tuple[int, ...]  # positions in the layout's worker list, ascending
    ids: tuple[int, ...]  # global worker ids of those rows (their PRNG streams)
    shapes: worker.Shapes
    n_rows: int  # rows including padding (empty workers) at the end


class Layout(NamedTuple):
    """The static layout of a set of workers (it changes the compiled program)."""

    cohorts: tuple[Cohort, ...]
    n_workers: int
    test_chunk: int

    @property
    def gather(self) -> np.ndarray | None:
        """i64[N]: each worker's position among the cohorts' real rows stacked end to end;
        None when that is the identity (e.g. one cohort)."""
        rows = np.concatenate([np.asarray(c.rows, np.int64) for c in self.cohorts])
        if (rows == np.arange(self.n_workers)).all():
            return None
        return np.argsort(rows)


class CohortData(NamedTuple):
    """One cohort's rows on the device (padding rows last)."""

    x: jax.Array  # f32[R, S_max, ...]
    y: jax.Array  # i32[R, S_max]
    sizes: jax.Array  # i32[R] S_k (0 for padding)
    hp: worker.HParams  # one row per worker
    alpha: jax.Array  # f32[R] alpha_k, the threshold of Eq. (4): the worker's learning rate
    beta: jax.Array  # f32[R] beta_k of Eq. (5)
    ids: jax.Array  # i32[R] global ids (padding: ids past every real worker)


class Data(NamedTuple):
    """Everything the workers' side reads and never changes, plus the test set."""

    cohorts: tuple[CohortData, ...]
    sizes: jax.Array  # f32[N] S_k in worker order
    betas: jax.Array  # f32[N]
    x_test: jax.Array
    y_test: jax.Array
    train_key: jax.Array


Put = Callable[[np.ndarray], jax.Array]


def _here(fn: Callable, n_broadcast: int) -> Callable:
    del n_broadcast  # one device: every row is here
    return fn


class Placement(NamedTuple):
    """Where a backend puts the workers' rows and how code runs over them.

    Attributes:
      name: the backend's name (``vmap``, ``sharded``).
      multiple: each cohort is padded to a multiple of this many rows.
      put_rows: places an array whose leading axis is a cohort's rows.
      put: places everything else (replicated where there are several devices).
      spread: ``spread(fn, n_broadcast)`` runs ``fn`` (already vmapped over rows) where
        the rows live: its first ``n_broadcast`` arguments are the same for every row,
        the others and every output have the rows on their leading axis.
      devices: the devices, for the run-log header.
    """

    name: str = "vmap"
    multiple: int = 1
    put_rows: Put = jnp.asarray
    put: Put = jnp.asarray
    spread: Callable[[Callable, int], Callable] = _here
    devices: tuple[str, ...] = ()


HERE = Placement()  # the default: everything on the default device


def make_layout(specs: Sequence[WorkerSpec], sizes: Sequence[int], n_test: int, *,
                ids: Sequence[int] | None = None, augment: bool = False, multiple: int = 1,
                eval_chunk: int = EVAL_CHUNK) -> Layout:
    """Groups workers into cohorts by optimizer kind (in the order kinds first appear).

    Args:
      specs, sizes: one per worker.
      n_test: test-set size.
      ids: the workers' global ids (default 0..n-1); a host that runs a subset of the
        workers passes theirs, so each worker keeps its own PRNG stream.
      augment: random crop and flip of training images.
      multiple: pad each cohort with empty workers to a multiple of this many rows.
      eval_chunk: rows per forward pass of the cost and test passes.
    """
    ids = list(range(len(specs))) if ids is None else [int(i) for i in ids]
    cohorts = []
    for kind in dict.fromkeys(s.optimizer for s in specs):
        rows = tuple(i for i, s in enumerate(specs) if s.optimizer == kind)
        shapes = worker.group_shapes([specs[i] for i in rows], [sizes[i] for i in rows],
                                     eval_chunk, augment)
        n_rows = -(-len(rows) // multiple) * multiple
        cohorts.append(Cohort(kind, rows, tuple(ids[i] for i in rows), shapes, n_rows))
    return Layout(tuple(cohorts), len(specs), min(eval_chunk, max(n_test, 1)))


def _rows(a: np.ndarray, rows: Sequence[int], total: int, fill=0) -> np.ndarray:
    """``a[rows]`` padded with ``fill`` to ``total`` rows (a slice when rows are 0..n-1)."""
    rows = list(rows)
    part = a[:len(rows)] if rows == list(range(len(rows))) else a[rows]
    pad = total - len(rows)
    if not pad:
        return part
    return np.concatenate([part, np.full((pad, *a.shape[1:]), fill, a.dtype)])


def place(layout: Layout, wd, specs: Sequence[WorkerSpec], betas, x_test, y_test,
          train_key: jax.Array, placement: Placement = HERE) -> Data:
    """Lays the workers' padded data out by cohort and puts it on the device, once.

    Args:
      wd: host ``WorkerData`` (x: f32[N, S_max, ...], y: i32[N, S_max], sizes: [N]).
      specs, betas: one per worker.
      placement: the backend's placement of rows and of everything else.
    """
    put_rows, put = placement.put_rows, placement.put
    hp = worker.stack_hparams(specs)
    betas = np.asarray(betas, np.float32)
    next_id = max((max(c.ids) for c in layout.cohorts), default=-1) + 1
    cohorts = []
    for c in layout.cohorts:
        s_max = max(int(wd.sizes[list(c.rows)].max()), 1)
        pad = c.n_rows - len(c.rows)
        rows = functools.partial(_rows, rows=c.rows, total=c.n_rows)
        # Padding workers hold nothing and take valid hyper-parameters (batch 1, one epoch).
        hp_c = worker.HParams(rows(hp.lr, fill=1), rows(hp.batch_size, fill=1),
                              rows(hp.local_epochs, fill=1), rows(hp.momentum))
        ids = np.concatenate([np.asarray(c.ids, np.int32),
                              np.arange(next_id, next_id + pad, dtype=np.int32)])
        next_id += pad
        cohorts.append(CohortData(
            x=put_rows(rows(wd.x[:, :s_max])), y=put_rows(rows(wd.y[:, :s_max])),
            sizes=put_rows(rows(np.asarray(wd.sizes, np.int32))),
            hp=jax.tree.map(put_rows, hp_c), alpha=put_rows(hp_c.lr),
            beta=put_rows(rows(betas, fill=0.5)), ids=put_rows(ids)))
    return Data(tuple(cohorts), put(np.asarray(wd.sizes, np.float32)), put(betas),
                put(np.asarray(x_test, np.float32)), put(np.asarray(y_test, np.int32)),
                put(train_key))


class Workers(NamedTuple):
    """A set of workers laid out and placed: what every algorithm's step reads."""

    layout: Layout
    data: Data
    sizes: np.ndarray  # i64[N] S_k (host)


def build(specs: Sequence[WorkerSpec], x: np.ndarray, y: np.ndarray,
          parts: Sequence[np.ndarray], *, betas, x_test, y_test, train_key: jax.Array,
          ids: Sequence[int] | None = None, augment: bool = False,
          placement: Placement = HERE) -> Workers:
    """The setup chain: each worker's samples (``parts``: index arrays into x, y),
    stacked, laid out by cohort and placed on the device.

    Args:
      specs: one private spec per worker of ``parts``.
      ids: their global ids (default 0..n-1).
      placement: the backend's (row multiple, placements).
    """
    wd = stack_workers(x, y, parts)
    layout = make_layout(specs, wd.sizes, len(y_test), ids=ids, augment=augment,
                         multiple=placement.multiple)
    data = place(layout, wd, specs, betas, x_test, y_test, train_key, placement)
    return Workers(layout, data, np.asarray(wd.sizes, np.int64))


class Groups(NamedTuple):
    """Workers in G groups, laid out alike so that one program runs every group (vmap).

    Attributes:
      layout: a group's static layout, the same for every group. Its positions are the
        cohorts' rows end to end, each cohort padded to its largest count over the
        groups; a padding position is an empty worker (no samples, NaN cost).
      data: one group's :class:`Data` with a leading G axis on ``cohorts``, ``sizes`` and
        ``betas``; the test set and the key are shared (:data:`GROUP_AXES`).
      where: i64[G, R] the global worker at each group position (-1: padding).
      sizes: i64[N] S_k (host).
    """

    layout: Layout
    data: Data
    where: np.ndarray
    sizes: np.ndarray


GROUP_AXES = Data(0, 0, 0, None, None, None)  # vmap axes of Groups.data


def one_group(data: Data, i) -> Data:
    """Group ``i``'s :class:`Data` out of :attr:`Groups.data` (shared fields as they are)."""
    return data._replace(cohorts=jax.tree.map(lambda a: a[i], data.cohorts),
                         sizes=data.sizes[i], betas=data.betas[i])


def build_groups(specs: Sequence[WorkerSpec], x: np.ndarray, y: np.ndarray,
                 parts: Sequence[np.ndarray], groups: Sequence[Sequence[int]], *, betas,
                 x_test, y_test, train_key: jax.Array, augment: bool = False) -> Groups:
    """The setup chain for the hierarchy: each group's workers laid out alike and placed
    on the device once, stacked along a leading group axis.

    One group holding every worker in order keeps the flat layout (worker order within
    cohorts), so that ``--groups 1`` runs the flat program.
    """
    n = len(specs)
    sizes = np.array([len(p) for p in parts], np.int64)
    betas = np.asarray(betas, np.float32)
    flat = make_layout(specs, sizes, len(y_test), augment=augment)
    host = Placement(put_rows=np.asarray, put=lambda a: a)  # stacked, then put once
    if len(groups) == 1 and list(groups[0]) == list(range(n)):
        data = place(flat, stack_workers(x, y, parts), specs, betas, x_test, y_test,
                     train_key, host)
        per, where, lay = [data], np.arange(n)[None], flat
        samples = [(cd.x[None], cd.y[None]) for cd in data.cohorts]
    else:
        kinds = [c.kind for c in flat.cohorts]
        width = [max(sum(specs[k].optimizer == kind for k in g) for g in groups)
                 for kind in kinds]
        starts = np.concatenate([[0], np.cumsum(width)])
        where = np.full((len(groups), int(starts[-1])), -1, np.int64)
        per = []
        for gi, g in enumerate(groups):
            for c, kind in enumerate(kinds):
                members = [k for k in g if specs[k].optimizer == kind]
                where[gi, starts[c]:starts[c] + len(members)] = members
            real = where[gi] >= 0
            ids = np.where(real, where[gi], n + gi * where.shape[1] + np.arange(where.shape[1]))
            kind_of = np.repeat(kinds, width)
            g_specs = [specs[k] if k >= 0 else WorkerSpec(lr=1.0, batch_size=1,
                                                          optimizer=kind_of[p])
                       for p, k in enumerate(where[gi])]
            lay = Layout(tuple(Cohort(kind, tuple(range(starts[c], starts[c + 1])),
                                      tuple(int(i) for i in ids[starts[c]:starts[c + 1]]),
                                      flat.cohorts[c].shapes, width[c])
                               for c, kind in enumerate(kinds)),
                         int(starts[-1]), flat.test_chunk)
            g_sizes = np.where(real, sizes[np.maximum(where[gi], 0)], 0).astype(np.int32)
            no_samples = WorkerData(np.zeros((len(real), 0, *x.shape[1:]), np.float32),
                                    np.zeros((len(real), 0, *y.shape[1:]), np.int32), g_sizes)
            per.append(place(lay, no_samples, g_specs,  # the samples: below, stacked once
                             np.where(real, betas[np.maximum(where[gi], 0)], 0.5),
                             x_test, y_test, train_key, host))
        samples = _group_samples(x, y, parts, where, lay)
    cohorts = []
    for c, (xs, ys) in enumerate(samples):  # the other fields are one row per position
        stacked = jax.tree.map(lambda *a: jnp.asarray(np.stack(a)),
                               *[d.cohorts[c]._replace(x=None, y=None) for d in per])
        cohorts.append(stacked._replace(x=jnp.asarray(xs), y=jnp.asarray(ys)))
    data = Data(tuple(cohorts), jnp.asarray(np.stack([d.sizes for d in per])),
                jnp.asarray(np.stack([d.betas for d in per])), jnp.asarray(per[0].x_test),
                jnp.asarray(per[0].y_test), train_key)
    return Groups(lay, data, where, sizes)


def _group_samples(x: np.ndarray, y: np.ndarray, parts: Sequence[np.ndarray],
                   where: np.ndarray, lay: Layout) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each cohort's samples at every group position, (x f32[G, R_c, S_c, ...], y), padded
    with zeros to the cohort's largest worker (``S_c``, at least 1): the data gathered
    once for all groups, no copy per group.

    Args:
      where: i64[G, R] the global worker at each group position (-1: padding).
    """
    empty = np.zeros(0, np.int64)
    wd = stack_workers(x, y, [parts[k] if k >= 0 else empty for k in where.ravel()])
    sizes = wd.sizes.reshape(where.shape)
    xs = wd.x.reshape(*where.shape, *wd.x.shape[1:])
    ys = wd.y.reshape(*where.shape, *wd.y.shape[1:])
    out = []
    for c in lay.cohorts:
        cols = slice(c.rows[0], c.rows[-1] + 1)  # a group layout's cohorts are contiguous
        s_c = max(int(sizes[:, cols].max()), 1)
        out.append((xs[:, cols, :s_c], ys[:, cols, :s_c]))
    return out


def init_opt_states(layout: Layout, data: Data, p0: jax.Array) -> tuple:
    """A fresh optimizer state for every row of every cohort (stacked per cohort)."""
    return tuple(
        jax.vmap(functools.partial(worker.init_opt_state, c.kind), in_axes=(0, None))(cd.hp, p0)
        for c, cd in zip(layout.cohorts, data.cohorts, strict=True))


def cohort_keys(train_key: jax.Array, epoch: jax.Array, cd: CohortData) -> jax.Array:
    """Each row's key at this global epoch (its global id's stream)."""
    return jax.vmap(keys.worker_key, in_axes=(None, None, 0))(train_key, epoch, cd.ids)


def train_cohort(model: Model, cohort: Cohort, p: jax.Array, train_key: jax.Array,
                 epoch: jax.Array, opt_state, cd: CohortData, cost_pass: bool = True):
    """Every row of a cohort trains from ``p`` (Algorithm 2, line 1), vmapped.

    The arguments shared by every row come first, then the rows' own (the order a
    placement's ``spread`` expects).

    Returns:
      With ``cost_pass``: (q, costs, opt_state): f32[R, M], f32[R] C_k^t (NaN for a
      padding row or a diverged worker), the cohort's optimizer states. Without:
      (q, opt_state), the local models only (FedAvg, Phong: no cost pass).
    """
    k = cohort_keys(train_key, epoch, cd)
    fn = worker.train_and_cost if cost_pass else worker.local_train
    fn = functools.partial(fn, model, cohort.kind, cohort.shapes)
    out = jax.vmap(fn, in_axes=(None, 0, 0, 0, 0, 0, 0))(p, opt_state, cd.x, cd.y, cd.sizes,
                                                          cd.hp, k)
    if not cost_pass:
        return out
    q, costs, opt_state = out
    return q, jnp.where(cd.sizes > 0, costs, jnp.nan), opt_state


def to_workers(layout: Layout, per_cohort: Sequence[jax.Array]) -> jax.Array:
    """Per-cohort row arrays -> one array in worker order (padding rows cut off)."""
    real = [a if a.shape[0] == len(c.rows) else a[:len(c.rows)]
            for a, c in zip(per_cohort, layout.cohorts, strict=True)]
    stacked = real[0] if len(real) == 1 else jnp.concatenate(real)
    gather = layout.gather
    return stacked if gather is None else stacked[gather]


def row_of(layout: Layout, per_cohort: Sequence[jax.Array], k: jax.Array) -> jax.Array:
    """Worker ``k``'s row (traced ``k``), read from its cohort: no [N, ...] copy."""
    if len(layout.cohorts) == 1:
        return per_cohort[0][k]
    cohort = np.concatenate([np.full(len(c.rows), i) for i, c in enumerate(layout.cohorts)])
    row = np.concatenate([np.arange(len(c.rows)) for c in layout.cohorts])
    where = np.empty((2, layout.n_workers), np.int32)
    where[:, np.concatenate([c.rows for c in layout.cohorts])] = cohort, row
    c, r = jnp.asarray(where[0])[k], jnp.asarray(where[1])[k]
    return jax.lax.switch(c, [lambda r, a=a: a[r] for a in per_cohort], r)


def keep_rows(layout: Layout, active: jax.Array, new: tuple, old: tuple) -> tuple:
    """Per-cohort pytrees: rows of workers in ``active`` (bool[N]) take ``new``, the
    others keep ``old`` (a worker that sat a round out keeps its optimizer state)."""
    out = []
    for c, n, o in zip(layout.cohorts, new, old, strict=True):
        rows = jnp.zeros((c.n_rows,), bool).at[:len(c.rows)].set(active[np.asarray(c.rows)])
        out.append(jax.tree.map(
            lambda a, b, rows=rows: jnp.where(rows.reshape((-1,) + (1,) * (a.ndim - 1)), a, b),
            n, o))
    return tuple(out)


__all__ = ["EVAL_CHUNK", "Placement", "HERE", "Cohort", "Layout", "CohortData", "Data",
           "Workers", "Groups", "GROUP_AXES", "one_group", "make_layout", "place", "build",
           "build_groups", "init_opt_states", "cohort_keys", "train_cohort", "to_workers",
           "row_of", "keep_rows"]
