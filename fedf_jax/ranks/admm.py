"""The ADMM SVM under MPI (consensus ADMM, data split by samples): rank 0 the master,
the worker ranks hold their workers' rows.

One iteration is ``admm.consensus_step``'s four phases across ranks, every sum over
ranks in float64 buffers (nothing pickled, every wait under the link's deadline):

1. master to all: the control vector f64[2 + 2K]: a stop flag, the iteration, rho^k
   and the factor of the scaled duals from the last iteration (3.13);
2. each worker rank: u *= factor, its workers' x-updates (``admm.worker_x``), and up
   the sum over its workers of x_i + u_i, f64[K, p];
3. master: z^{k+1} from the sum (``admm.master_z``), down to all as f64[K, p];
4. each worker rank: u_i += x_i - z and the statistics (``admm.worker_dual``), up
   their sum f64[K, 4], then its workers' hinge losses at z (the run log's costs);
5. master: residuals, (3.12) and rho^{k+1} (``admm.master_close``), test metrics.

The run ends when the master says so (the last iteration, or Boyd's tolerances met).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedf_jax import admm, admm_data, harness, svm
from fedf_jax.algorithms import admm_svm
from fedf_jax.backends.mpi import resume
from fedf_jax.backends.mpi.link import Link
from fedf_jax.config import RunConfig

RHO = admm_svm.RHO["samples"]


def _features(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1)


def run_worker(cfg: RunConfig, link: Link, ids: Sequence[int], *, world_rank: int) -> None:
    """A worker rank: its workers' rows, their duals, one iteration per control message."""
    host = harness.load(cfg)
    ds = host.dataset
    data = admm_data.split_samples(_features(ds.x_train), ds.y_train, ds.num_classes,
                                   [host.parts[k] for k in ids])
    del host, ds
    n_r, k, s = data.y.shape
    p = data.A.shape[-1]
    C = jnp.float32(cfg.master.svm_c)
    u = jnp.zeros((n_r, k, p), jnp.float32)
    alpha = jnp.zeros((n_r, k, s), jnp.float32)
    z = jnp.zeros((k, p), jnp.float32)
    phase_x = jax.jit(jax.vmap(admm.worker_x, (0, 0, 0, None, 0, 0, None, None)))
    phase_dual = jax.jit(jax.vmap(admm.worker_dual, (0, 0, 0, 0, 0, None, None, None)))
    costs_at = jax.jit(functools.partial(admm_svm.worker_costs, C=None))
    link.gather_json({"rank": world_rank, "host": _host(), "ids": list(ids),
                      "sizes": [int(m.sum()) for m in data.mask],
                      "devices": [str(d) for d in jax.local_devices()]})
    start = link.bcast_json(None)
    if start.get("error"):
        raise resume.ResumeError(start["error"])
    ctrl = np.empty(2 + 2 * k, np.float64)
    zbuf = np.empty((k, p), np.float64)
    while True:
        link.share(ctrl, "control")
        if ctrl[0]:
            return
        link.epoch = int(ctrl[1])
        rho, scale = jnp.asarray(ctrl[2:2 + k], jnp.float32), jnp.asarray(ctrl[2 + k:],
                                                                          jnp.float32)
        u = u * scale[None, :, None]
        x, alpha = phase_x(data.A, data.y, data.mask, z, u, alpha, rho, C)
        link.sum_up(np.asarray(x + u, np.float64).sum(axis=0), (k, p), "x+u")
        link.share(zbuf, "z")
        z = jnp.asarray(zbuf, jnp.float32)
        u, stats = phase_dual(data.A, data.y, data.mask, x, u, z, C, 1.0)
        link.sum_up(np.asarray(stats, np.float64).sum(axis=0), (k, 4), "statistics")
        link.send_report(np.asarray(costs_at(data, z), np.float64)[:, None])


class State(NamedTuple):
    z: jax.Array  # f32[K, p]
    rho: jax.Array  # f32[K]
    scale: jax.Array  # f32[K] the factor of every worker's u, from the last iteration
    epoch: int


def run_master(cfg: RunConfig, link: Link, out: Path, head_extra: Callable[[list], dict],
               on_setup: Callable[[dict[str, Any]], None] | None,
               on_epoch: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    """Rank 0: the consensus master; writes the run log as ``fedf simulate`` does."""
    host = harness.load(cfg)
    ds = host.dataset
    infos = link.gather_json(None)
    sizes = np.concatenate([np.asarray(i["sizes"], np.float64) for i in infos])
    n = len(sizes)
    k = 1 if ds.num_classes == 2 else ds.num_classes
    p = int(np.prod(ds.input_shape)) + 1
    test_a = jnp.asarray(admm_data.add_bias(_features(ds.x_test)))
    labels = jnp.asarray(ds.y_test, jnp.int32)
    hyper = admm.make_hyper(cfg.master.svm_c, eps_abs=cfg.master.tol, eps_rel=cfg.master.tol)
    compiler = harness.Compiler()
    zeros = jnp.zeros((k, p), jnp.float32)
    ones = jnp.ones((k,), jnp.float32)
    rho0 = jnp.full((k,), cfg.master.rho or RHO, jnp.float32)
    master_z = compiler(jax.jit(admm.master_z), zeros, jnp.float32(n), ones, ones, zeros,
                        donated=())
    close = compiler(jax.jit(admm.master_close), jnp.zeros((k, 4)), zeros, zeros, ones,
                     jnp.float32(n), hyper, donated=())

    def test(w):
        targets = svm.ovr_targets(labels, max(2, ds.num_classes))
        hinge = jax.vmap(svm.hinge_loss, (0, None, 0, None, None))(
            w, test_a, targets, jnp.ones(labels.shape, jnp.float32), 1.0)
        return jnp.sum(hinge) / labels.shape[0], svm.accuracy(w, test_a, labels)

    test = compiler(jax.jit(test), zeros, donated=())
    link.bcast_json({"out": str(out), "first_epoch": 1})
    extra = head_extra(infos)
    head = harness.header(cfg, host, k * p, extra.pop("devices"), compiler.seconds,
                          backend="mpi", **extra)
    if on_setup:
        on_setup({**head, "first_epoch": 1})
    ctrl = np.zeros(2 + 2 * k, np.float64)

    def advance(state: State, count):
        t = link.epoch = state.epoch
        link.moved, link.added = {}, {}
        ctrl[0], ctrl[1] = 0, t
        ctrl[2:2 + k], ctrl[2 + k:] = np.asarray(state.rho), np.asarray(state.scale)
        link.share(ctrl, "control")
        total = link.sum_up(None, (k, p), "x+u")
        z = master_z(jnp.asarray(total, jnp.float32), jnp.float32(n), state.rho, ones, zeros)
        link.share(np.asarray(z, np.float64), "z")
        stats = link.sum_up(None, (k, 4), "statistics")
        rho, scale, info = close(jnp.asarray(stats, jnp.float32), z, state.z, state.rho,
                                 jnp.float32(n), hyper)
        costs = link.gather_reports(1)[:, 0]
        loss, acc = test(z)
        out = jax.device_get({"objective": jnp.sum(info.objective),
                              "primal_residual": info.residuals.r,
                              "dual_residual": info.residuals.s, "rho": info.rho,
                              "converged": jnp.all(info.converged), "test_loss": loss,
                              "test_accuracy": acc})
        return State(z, rho, scale, t + 1), [
            {**out, "epoch": t, "costs": costs, "dropped_frames": [],
             "mpi_bytes": int(sum(link.moved.values())), "mpi_bytes_detail": dict(link.moved),
             "bytes_aead": link.bytes_aead}]

    base = admm_svm.make_record(cfg, admm_svm.iteration_bytes("samples", n, k, p)[0], 2, sizes)

    def record(out, wall_s):
        return {**base(out, wall_s),
                **{key: out[key] for key in ("dropped_frames", "mpi_bytes", "mpi_bytes_detail",
                                             "bytes_aead")}}

    try:
        return harness.execute(
            cfg, harness.Runner(advance, 1, compiler.seconds), State(zeros, rho0, ones, 1),
            record, lambda s: s.z.reshape(-1), out_dir=out, head=head, num_params=k * p,
            num_classes=ds.num_classes, on_epoch=on_epoch,
            extra=lambda recs: {"mpi_bytes_total": int(sum(r["mpi_bytes"] for r in recs))})
    finally:
        ctrl[0] = 1  # the workers stop (after the last iteration, or on an error here)
        link.share(ctrl, "control")


def _host() -> str:
    import platform

    return platform.node()


__all__ = ["run_worker", "run_master"]
