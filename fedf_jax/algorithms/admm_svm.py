"""A linear SVM trained by ADMM (DESIGN §8) on the harness: ``--algorithm admm-svm``.

One ``--epochs`` step is one ADMM iteration (with ``--groups G``, one outer
iteration of ``--group-epochs`` inner ones); the equations are ``admm``'s:

- ``--split samples`` (default): each worker holds its partition's rows; consensus
  ADMM (Boyd et al. 2011, §8.2), ``admm.consensus_step``.
- ``--split features``: each worker holds a block of columns of every training row
  (the bias column in the last block); sharing ADMM (§8.3), ``admm.sharing_step``.
- ``--groups G``: consensus inside each group to z_g, consensus of the z_g at the top
  (``admm.hier_step``), the top's rho fixed (residual balancing at the top, whose
  x-updates are inexact, can slow it down).

Images are flattened to feature vectors and x~ = [x, 1] gets the bias column; more
than two classes are one-vs-rest, one problem per class. The global model is W
f32[K, F + 1] (K = 1 for two classes), flat in ``final_model.npy``. The run stops
early once every class meets Boyd's tolerances (``--tol``).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedf_jax import admm, admm_data, codec, svm, timing
from fedf_jax.algorithms import hierarchy
from fedf_jax.algorithms import secure as secure_sums
from fedf_jax.algorithms.common import epoch_record
from fedf_jax.config import RunConfig
from fedf_jax.harness import Algorithm, Host
from fedf_jax.layout import Placement
from fedf_jax.secure import sums

RHO = {"samples": 3.0, "features": 0.1}  # first rho of each split (admm's tuned defaults)
RHO_TOP = 10.0  # the top level's rho with --groups (admm.hier_init's default)
_F32 = 4


class State(NamedTuple):
    admm: Any  # admm.ConsensusState, admm.HierState or admm.SharingState
    epoch: jax.Array  # i32[] the iteration about to run (1-based)


class Test(NamedTuple):
    A: jax.Array  # f32[S_test, F + 1] with the bias column
    labels: jax.Array  # i32[S_test]


def weights_of(keep: np.ndarray | None, state) -> jax.Array:
    """The model W f32[K, F + 1] of an ADMM state; ``keep`` (features split): bool[N, B],
    each block's real columns (host values: the gather is static)."""
    if keep is None:
        return state.z
    return jnp.concatenate([state.x[j][:, keep[j]] for j in range(keep.shape[0])], axis=1)


def worker_costs(data: admm.ConsensusData, z: jax.Array, C) -> jax.Array:
    """Each worker's mean hinge loss (summed over classes) at the consensus z: f32[..., N]."""
    def one(A, y, mask):
        loss = jax.vmap(svm.hinge_loss, (0, None, 0, None, None))(z, A, y, mask, 1.0)
        return jnp.sum(loss) / jnp.maximum(jnp.sum(mask), 1.0)
    lead = data.A.ndim - 3  # a group axis with --groups
    fn = one
    for _ in range(lead + 1):
        fn = jax.vmap(fn)
    del C
    return fn(data.A, data.y, data.mask)


def step(split: str, grouped: bool, kappa: int, keep: np.ndarray | None, hyper: admm.Hyper,
         top: admm.Hyper, aggregate: admm.Aggregate, state: State, data: tuple,
         chunk: int | None = None) -> tuple[State, dict]:
    """One ADMM iteration (outer, with groups), then the test metrics of W; pure (but for
    the host callback of a secure ``aggregate``). ``chunk`` (samples split): the workers'
    phases that many workers at a time (``admm.each_worker``)."""
    train, test = data
    if split == "features":
        new, info = admm.sharing_step(state.admm, train, hyper, aggregate=aggregate)
        costs = jnp.full((train.A.shape[0],), jnp.nan)
    elif grouped:
        new, info = admm.hier_step(state.admm, train, hyper, top, kappa=kappa,
                                   aggregate=aggregate, chunk=chunk)
        costs = worker_costs(train, new.z, hyper.C).reshape(-1)
    else:
        new, info = admm.consensus_step(state.admm, train, hyper, aggregate=aggregate,
                                        chunk=chunk)
        costs = worker_costs(train, new.z, hyper.C)
    return State(new, state.epoch + 1), outputs(keep, test, state.epoch, new, info, costs)


def outputs(keep: np.ndarray | None, test: Test, epoch, new, info: admm.StepInfo, costs
            ) -> dict[str, jax.Array]:
    """An iteration's outputs: the workers' costs, the objective, residuals, rho,
    ``converged`` and the test metrics of the model W of the ADMM state ``new``."""
    w = weights_of(keep, new)
    targets = svm.ovr_targets(test.labels, max(2, w.shape[0] if w.shape[0] > 1 else 2))
    hinge = jax.vmap(svm.hinge_loss, (0, None, 0, None, None))(
        w, test.A, targets, jnp.ones(test.labels.shape, jnp.float32), 1.0)
    return {"epoch": epoch, "costs": costs, "objective": jnp.sum(info.objective),
            "primal_residual": info.residuals.r, "dual_residual": info.residuals.s,
            "rho": info.rho, "converged": jnp.all(info.converged),
            "test_loss": jnp.sum(hinge) / test.labels.shape[0],
            "test_accuracy": svm.accuracy(w, test.A, test.labels)}


def iteration_bytes(split: str, n_parties: int, k: int, width: int, secure: bool = False
                    ) -> tuple[codec.EpochBytes, np.ndarray]:
    """Bytes of one ADMM iteration between a master and ``n_parties`` parties, one framed
    message each way: samples split, z and rho down (K (p + 1) f32), x_i + u_i and four
    statistics up (K (p + 4) f32); features split (``width`` = S rows), zbar - axbar - u
    down (K S f32), the partial scores A_j x_j and five statistics up (K (S + 5) f32).

    With ``secure`` the two sums go up through secure aggregation instead (8 bytes a
    value, fixed point): returned apart, per step of a round (``secure.sums.round_bytes``).

    Returns:
      (codec.EpochBytes, i64[4] the secure rounds' bytes).
    """
    stats = 5 if split == "features" else 4
    down = k * width if split == "features" else k * (width + 1)
    up, other = k * width, stats * k
    secagg = np.zeros(4, np.int64)
    if secure:
        secagg = (sums.round_bytes(n_parties, up, 8)
                  + sums.round_bytes(n_parties, other, 8))
        up = other = 0
    down, up, other = (n_parties * _F32 * v for v in (down, up, other))
    header = (1 if secure else 2) * n_parties * codec.HEADER_SIZE
    return codec.EpochBytes(down, up, 0, other, header, down + up + other + header), secagg


def add_bytes(a: codec.EpochBytes, b: codec.EpochBytes, times: int = 1) -> codec.EpochBytes:
    return codec.EpochBytes(*(x + times * y for x, y in zip(a, b, strict=True)))


def make_record(cfg: RunConfig, counted: codec.EpochBytes, rounds: int, work: np.ndarray,
                costs_of: np.ndarray | None = None,
                levels: tuple[codec.EpochBytes, codec.EpochBytes] | None = None,
                secagg: np.ndarray | None = None):
    """The run-log line of one ADMM iteration (simulated or under MPI): the usual fields
    (no pilot), plus ``objective``, ``primal_residual``, ``dual_residual`` and ``rho``
    (one per class) and ``converged``; with two levels ``bytes_group`` and ``bytes_top``.

    Args:
      counted: the iteration's bytes as deployed; rounds: its message rounds; work: each
        worker's share of the compute. costs_of: where each worker's cost sits in the
        outputs' ``costs`` (None: in worker order). levels: (group, top) bytes. secagg:
      the bytes of the secure sums per round step (``bytes_secagg_*``, in the total).
    """

    def record(out, wall_s):
        costs = np.asarray(out["costs"], np.float64)
        out = {**out, "costs": costs if costs_of is None else costs[costs_of]}
        modeled = timing.modeled_epoch_s(wall_s, work, counted.total, cfg.run.bandwidth,
                                         cfg.run.latency, rounds=rounds)
        rec = epoch_record(out, counted, wall_s, modeled)
        rec.update(objective=float(out["objective"]),
                   primal_residual=np.asarray(out["primal_residual"], np.float64),
                   dual_residual=np.asarray(out["dual_residual"], np.float64),
                   rho=np.asarray(out["rho"], np.float64), converged=bool(out["converged"]))
        if levels is not None:
            rec.update(bytes_group=int(levels[0].total), bytes_top=int(levels[1].total))
        if secagg is not None:
            rec.update({f"bytes_secagg_{s}": int(v) for s, v in zip(
                ("keys", "shares", "masked", "unmask"), secagg, strict=True)})
            rec["bytes_total"] += int(np.sum(secagg))
        return rec

    return record


class Setup(NamedTuple):
    """An ADMM SVM run laid out: its data, hyper-parameters, state and bookkeeping."""

    split: str
    groups: tuple[tuple[int, ...], ...]
    kappa: int
    train: Any  # admm.ConsensusData (a leading G axis with groups) or admm.SharingData
    test: Test
    keep: np.ndarray | None  # features split: each block's real columns
    hyper: admm.Hyper
    top: admm.Hyper  # the top level's (rho fixed)
    init: Any  # () -> State
    k: int  # problems (1 for two classes, else one per class)
    p: int  # features + the bias column
    blocks: Any  # features split: the column blocks
    costs_of: np.ndarray | None  # where each worker's cost sits in the outputs' costs


def setup(cfg: RunConfig, host: Host, placement: Placement) -> Setup:
    """The SVM over the run's workers (rows, ``parts``, or column blocks), placed."""
    ds, split, n = host.dataset, cfg.data.split, cfg.n_workers
    x = ds.x_train.reshape(len(ds.x_train), -1)
    k_classes = ds.num_classes
    groups = cfg.group_workers()
    grouped = len(groups) > 1
    keep = blocks = None
    if split == "features":
        blocks = admm_data.even_blocks(x.shape[1] + 1, n) if n <= x.shape[1] + 1 else None
        if blocks is None:
            raise ValueError(f"`split='features'` with {n} workers needs at least {n} "
                             f"columns; data {cfg.data.name!r} has {x.shape[1]} features "
                             "and the bias column. Use fewer --workers.")
        train = admm_data.split_features(x, ds.y_train, k_classes, blocks)
        keep = np.asarray(train.cols, bool)
    elif grouped:
        train = admm_data.split_groups(x, ds.y_train, k_classes, host.parts, groups)
    else:
        train = admm_data.split_samples(x, ds.y_train, k_classes, host.parts)
    train = jax.tree.map(placement.put, train)
    test = Test(placement.put(admm_data.add_bias(ds.x_test.reshape(len(ds.x_test), -1))),
                placement.put(np.asarray(ds.y_test, np.int32)))
    tol = cfg.master.tol
    hyper = admm.make_hyper(cfg.master.svm_c, eps_abs=tol, eps_rel=tol)
    rho = cfg.master.rho or RHO[split]

    def init() -> State:
        if split == "features":
            s = admm.sharing_init(train, rho)
        elif grouped:
            s = admm.hier_init(train, rho, RHO_TOP)
        else:
            s = admm.consensus_init(train, rho)
        # Fresh buffers: the step donates the state, and an init may alias one array.
        return State(jax.tree.map(jnp.copy, s), jnp.int32(1))

    costs_of = None
    if grouped:  # [G * pad] costs in group-major order -> worker order
        pad = max(len(g) for g in groups)
        rows = np.concatenate([gi * pad + np.arange(len(g)) for gi, g in enumerate(groups)])
        costs_of = rows[np.argsort(np.concatenate([np.asarray(g) for g in groups]))]
    return Setup(split, groups, cfg.run.group_epochs, train, test, keep, hyper,
                 hyper._replace(adapt=jnp.asarray(False)), init,
                 1 if k_classes == 2 else k_classes, x.shape[1] + 1, blocks, costs_of)


def make(cfg: RunConfig, host: Host, placement: Placement) -> Algorithm:
    """The SVM over the run's workers: rows (``parts``) or column blocks."""
    st = setup(cfg, host, placement)
    n, k, p, groups, kappa = cfg.n_workers, st.k, st.p, st.groups, st.kappa
    grouped = len(groups) > 1
    sizes = np.array([len(pt) for pt in host.parts], np.float64)
    secure = cfg.master.secure_sum == "secagg"
    if st.split == "features":
        width = host.dataset.x_train.shape[0]
        (counted, secagg), rounds = iteration_bytes("features", n, k, width, secure), 2
        work = np.asarray(st.blocks, np.float64)  # a block's x-update: its columns
    elif grouped:
        inner = [iteration_bytes("samples", len(g), k, p, secure) for g in groups]
        group_bytes = functools.reduce(add_bytes, [b for b, _ in inner[1:]], inner[0][0])
        group_bytes = codec.EpochBytes(*(kappa * v for v in group_bytes))
        top_bytes, top_secagg = iteration_bytes("samples", len(groups), k, p, secure)
        counted, rounds = add_bytes(group_bytes, top_bytes), 2 * kappa + 2
        secagg = kappa * sum(s for _, s in inner) + top_secagg
        work = sizes
    else:
        (counted, secagg), rounds = iteration_bytes("samples", n, k, p, secure), 2
        work = sizes
    record = make_record(cfg, counted, rounds, work, st.costs_of,
                         (group_bytes, top_bytes) if grouped else None,
                         secagg if secure else None)
    aggregate = secure_sums.aggregate(cfg.run.seed) if secure else admm.masked_sum
    # --worker-chunk K: K workers at a time, K // G in each of the G groups (vmapped)
    fn = functools.partial(step, st.split, grouped, kappa, st.keep, st.hyper, st.top,
                           aggregate, chunk=hierarchy.group_chunk(cfg))
    return Algorithm(st.init, fn, (st.train, st.test), record,
                     lambda s: weights_of(st.keep, s.admm).reshape(-1),
                     list(placement.devices), k * p)


__all__ = ["State", "Test", "weights_of", "worker_costs", "step", "outputs", "add_bytes",
           "iteration_bytes", "make_record", "Setup", "setup", "make"]
