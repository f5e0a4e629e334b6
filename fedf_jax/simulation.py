"""Drives a simulated run: data, model, epochs, bytes, timing, run log.

The library side of ``fedf simulate``. FEDF and every baseline
(``cfg.algorithm``) go through the same loop: a :class:`~fedf_jax.baselines.Runner`
runs one epoch per call of its jitted step (or ``scan_epochs`` of them in one
``lax.scan``), and the host reads back only the small per-epoch outputs (costs,
goodness, pilot, metrics) for the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from fedf_jax import baselines, codec, runlog, timing
from fedf_jax.backends import sharded as sharded_backend
from fedf_jax.backends import vmap as vmap_backend
from fedf_jax.config import RunConfig
from fedf_jax.data import Dataset, load_dataset, partition, stack_workers
from fedf_jax.models import Model, make_model

log = logging.getLogger(__name__)


class Setup(NamedTuple):
    """A run's model, data and layout, ready for a backend."""

    model: Model
    dataset: Dataset
    sizes: np.ndarray  # i64[N] S_k
    plan: vmap_backend.Plan
    data: vmap_backend.SimData
    p0: jax.Array
    union: np.ndarray  # indices of the training samples held by some worker
    parts: list[np.ndarray]  # each worker's training-sample indices


def root_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """(init key for P^0, training key) from the run's one root key."""
    root = jax.random.key(seed)
    return jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)


def partition_workers(cfg: RunConfig, ds: Dataset) -> list[np.ndarray]:
    """Each worker's training-sample indices: the run's seeded partition (the MPI
    backend computes the same one on every rank)."""
    labels = ds.y_train
    if labels.ndim > 1:  # segmentation masks: only the label-free partitions apply
        if cfg.partition == "label-dirichlet":
            raise ValueError(f"`partition='label-dirichlet'` needs class labels; data set "
                             f"{cfg.data!r} has masks. Use iid, sizes or dirichlet-sizes.")
        labels = np.zeros(len(labels), np.int32)
    return partition(labels, cfg.workers, cfg.partition, seed=cfg.seed,
                     sizes=cfg.sizes, alpha=cfg.dirichlet_alpha)


def setup(cfg: RunConfig) -> Setup:
    """Loads the data, partitions it over the workers and builds the model."""
    ds = load_dataset(cfg.data, cfg.data_dir, **cfg.data_options)
    parts = partition_workers(cfg, ds)
    wd = stack_workers(ds.x_train, ds.y_train, parts)
    model = make_model(cfg.model, ds.x_train.shape[1:], ds.num_classes, **cfg.model_options)
    init_key, train_key = root_keys(cfg.seed)
    specs = cfg.specs
    plan = vmap_backend.make_plan(specs, wd.sizes, len(ds.y_test), augment=cfg.augment)
    data = vmap_backend.make_data(plan, wd.x, wd.y, wd.sizes, specs,
                                  cfg.master.betas(cfg.workers), ds.x_test, ds.y_test,
                                  train_key)
    return Setup(model, ds, np.asarray(wd.sizes), plan, data, model.init(init_key),
                 np.sort(np.concatenate(parts)), parts)


class Backend(NamedTuple):
    """A backend made ready for a run: its jitted step, first state, data, devices."""

    step: Callable
    state: vmap_backend.SimState
    data: vmap_backend.SimData
    devices: list[str]


def make_backend(cfg: RunConfig, s: Setup) -> Backend:
    """The vmap backend (one device) or the sharded one (a mesh of local devices)."""
    if cfg.backend == "sharded":
        mesh = sharded_backend.make_mesh(cfg.devices)
        data = sharded_backend.shard_data(s.plan, s.data, mesh)
        return Backend(sharded_backend.make_epoch_fn(s.model, s.plan, cfg.master, mesh),
                       sharded_backend.init_state(s.plan, data, s.p0, mesh), data,
                       [str(d) for d in mesh.devices.flat])
    return Backend(vmap_backend.make_epoch_fn(s.model, s.plan, cfg.master),
                   vmap_backend.init_state(s.plan, s.data, s.p0), s.data,
                   [str(jax.devices()[0])])


def epoch_record(cfg: RunConfig, out: dict[str, np.ndarray], n_params: int, sizes,
                 wall_s: float) -> dict[str, Any]:
    """The run-log line of one FEDF epoch from the backend's outputs (host values)."""
    pilot = int(out["pilot"])
    n = cfg.workers
    counted = codec.epoch_bytes(n_params, n, cfg.scheme, has_pilot=pilot >= 0)
    senders = np.asarray(out["valid"]) & (np.arange(n) != pilot)
    nz = float(np.asarray(out["nonzero"])[senders].sum()) / max(senders.sum() * n_params, 1)
    work = timing.work_units(sizes, [s.local_epochs for s in cfg.specs])
    dropped = np.flatnonzero(~np.asarray(out["valid"])).tolist()
    modeled = timing.modeled_epoch_s(wall_s, work, counted.total, cfg.bandwidth, cfg.latency)
    rec = baselines.epoch_record(out, counted, wall_s, modeled, pilot=pilot,
                                 goodness=out["goodness"], nonzero_fraction=nz, dropped=dropped)
    if dropped:
        log.warning("epoch %d: workers %s reported a non-finite cost; their ternaries "
                    "were dropped%s", rec["epoch"], dropped,
                    "" if pilot >= 0 else " and no pilot was usable (P^t = P^{t-1})")
    return rec


def fedf_runner(cfg: RunConfig, s: Setup) -> baselines.Runner:
    """FEDF on the configured backend, ``cfg.scan_epochs`` epochs per jitted call."""
    b = make_backend(cfg, s)
    compiler = baselines.Compiler()
    chunk = min(cfg.scan_epochs, cfg.epochs)

    def compiled(n):  # ahead of epoch 1: no epoch's wall time holds a compile
        fn = b.step if n == 1 else vmap_backend.make_scan_fn(s.model, s.plan, cfg.master, n)
        return compiler(fn, b.state, b.data)

    steps = {n: compiled(n) for n in {chunk, cfg.epochs % chunk} - {0}}  # the loop's sizes

    def step(state, n):
        t = int(state.master.epoch)
        state, out = steps[n](state, b.data)
        if n == 1:
            return state, [baselines.host_outputs(out._asdict(), t)]
        stacked = jax.device_get(out._asdict())
        return state, [{**{k: v[i] for k, v in stacked.items()}, "epoch": t + i}
                       for i in range(n)]

    def record(out, wall_s):
        return epoch_record(cfg, out, s.model.num_params, s.sizes, wall_s)

    return baselines.Runner(step, b.state, b.devices, record,
                            lambda st: st.master.p_prev, chunk, compiler.seconds)


def make_runner(cfg: RunConfig, s: Setup) -> baselines.Runner:
    """The runner of ``cfg.algorithm``."""
    if cfg.algorithm == "fedf":
        return fedf_runner(cfg, s)
    from fedf_jax.baselines import centralized, fedavg, phong, terngrad

    modules = {"fedavg": fedavg, "phong": phong, "terngrad": terngrad, "central": centralized}
    return modules[cfg.algorithm].make_runner(cfg, s)


def run(cfg: RunConfig, out_dir: str | Path | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Runs ``cfg.algorithm``; writes ``out_dir/run.jsonl`` when given.

    Args:
      cfg: the run.
      out_dir: where the run log goes (None: no log).
      on_epoch: called with each epoch's record (the CLI prints from it).

    Returns:
      A summary dict (final accuracy, bytes, Eq. 8 check, wall time), the records
      and the final global model (``params``).
    """
    s = setup(cfg)
    r = make_runner(cfg, s)
    state = r.state
    header = runlog.make_header(
        cfg.to_dict(), r.devices, backend=cfg.backend, algorithm=cfg.algorithm,
        compile_s=r.compile_s,
        num_params=s.model.num_params, worker_sizes=s.sizes.tolist(),
        num_test=int(len(s.dataset.y_test)))
    logfile = runlog.RunLog(Path(out_dir) / "run.jsonl", header) if out_dir else None
    records = []
    t_start = time.perf_counter()
    try:
        done = 0
        while done < cfg.epochs:
            n = min(r.chunk, cfg.epochs - done)
            t0 = time.perf_counter()
            state, outs = r.step(state, n)
            wall = (time.perf_counter() - t0) / n
            for out in outs:
                rec = r.record(out, wall)
                records.append(rec)
                if logfile:
                    logfile.write(rec)
                if on_epoch:
                    on_epoch(rec)
            done += n
        summary = summarize(cfg, records, s.model.num_params, time.perf_counter() - t_start)
        summary["compile_s"] = r.compile_s
        if logfile:
            logfile.write({"type": "summary", **summary})
    finally:
        if logfile:
            logfile.close()
    return {**summary, "records": records, "params": np.asarray(r.params(state))}


def summarize(cfg: RunConfig, records: list[dict[str, Any]], n_params: int,
              wall_s: float) -> dict[str, Any]:
    """Final accuracy, bytes and the Eq. (8) check of a finished run."""
    last = records[-1]
    counted = last["bytes_down"] + last["bytes_up_model"] + last["bytes_up_ternary"]
    return {
        "final_test_accuracy": last["test_accuracy"], "final_test_loss": last["test_loss"],
        "best_test_accuracy": max(r["test_accuracy"] for r in records),
        "bytes_total": int(sum(r["bytes_total"] for r in records)),
        "bytes_per_epoch_payload": counted,
        "bytes_per_epoch": float(np.mean([r["bytes_total"] for r in records])),
        "eq8_bytes_per_epoch": codec.paper_bytes_per_epoch(4 * n_params, cfg.workers),
        "num_params": n_params, "wall_s": wall_s,
        "epoch_wall_s": float(sum(r["wall_s"] for r in records)),
        "modeled_s": float(sum(r["modeled_s"] for r in records)),
    }
