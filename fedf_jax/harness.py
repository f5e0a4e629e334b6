"""One harness for every algorithm: set up once, compile ahead, run epochs, write the log.

An algorithm (``fedf_jax.algorithms``) is given as an :class:`Algorithm`: ``init``
(the state before epoch 1), ``step`` (one epoch, a pure jittable function of the
state and the data it never changes), ``record`` (one epoch's run-log fields from
its host outputs) and ``params`` (the global model). :func:`load` reads a run's
data and builds its model once (:class:`Host`); :func:`compile_runner` turns an
algorithm into a :class:`Runner` (compiled ahead of time, warmed up, optionally
many epochs per ``lax.scan``), and the MPI master builds its own Runner around the
same pieces. :func:`drive` is the one epoch loop of ``fedf simulate`` and of the
MPI master: it times each call, writes each record to the run log, watches for
divergence (DESIGN §9) and calls back; :func:`header` and :func:`finish` write the
log's first and last lines and ``final_model.npy``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from fedf_jax import codec, keys, layout, runlog
from fedf_jax.config import RunConfig, WorkerSpec
from fedf_jax.data import Dataset, load_dataset, partition
from fedf_jax.models import Model, make_model

log = logging.getLogger(__name__)

EXPLODE = 10.0  # a test loss this many times the best so far (and 1 nat above it) diverged


class Algorithm(NamedTuple):
    """An algorithm on a backend, ready to run.

    Attributes:
      init: ``() -> state``, the state before epoch 1 (fresh buffers: steps donate it).
      step: ``(state, data) -> (state, outputs)``, one epoch; pure and jittable.
        ``outputs`` is a dict of small arrays with at least ``epoch``, ``costs``,
        ``test_loss`` and ``test_accuracy``.
      data: what every step reads and never changes (worker data, test set, keys).
      record: ``(host outputs, wall_s) -> dict``, the epoch's run-log line (DESIGN §6).
      params: ``state -> f32[M]``, the global model.
      devices: the devices it runs on (for the run-log header).
      num_params: M, the length of the global model.
      runner: ``(state, epochs) -> Runner``: a loop of its own on the host instead of
        ``step`` (the asynchronous top level); None for a jitted ``step``.
    """

    init: Callable[[], Any]
    step: Callable[[Any, Any], tuple[Any, dict[str, Any]]]
    data: Any
    record: Callable[[dict[str, Any], float], dict[str, Any]]
    params: Callable[[Any], jax.Array]
    devices: list[str]
    num_params: int
    runner: Callable[[Any, int], Any] | None = None


class Host(NamedTuple):
    """A run's data, partition and model on the host: loaded once per run."""

    cfg: RunConfig
    dataset: Dataset
    parts: list[np.ndarray]  # each worker's training-sample indices
    model: Model | None  # None for an algorithm without a neural model (admm-svm)
    p0: jax.Array | None  # f32[M] P^0

    @property
    def union(self) -> np.ndarray:
        """The training samples held by some worker, sorted."""
        return np.sort(np.concatenate(self.parts))

    @property
    def train_key(self) -> jax.Array:
        return keys.stream(self.cfg.run.seed, keys.TRAIN)

    def workers(self, placement: layout.Placement = layout.HERE,
                specs: Sequence[WorkerSpec] | None = None) -> layout.Workers:
        """The run's workers, laid out and placed once (``layout.build``), with their
        specs (default the config's)."""
        cfg, ds = self.cfg, self.dataset
        return layout.build(specs or cfg.specs, ds.x_train, ds.y_train, self.parts,
                            betas=cfg.master.betas(cfg.n_workers), x_test=ds.x_test,
                            y_test=ds.y_test, train_key=self.train_key,
                            augment=cfg.data.augment, placement=placement)


def partition_workers(cfg: RunConfig, ds: Dataset) -> list[np.ndarray]:
    """Each worker's training-sample indices: the run's seeded partition (every MPI
    rank computes the same one)."""
    labels = ds.y_train
    if labels.ndim > 1:  # segmentation masks: only the label-free partitions apply
        if cfg.data.partition == "label-dirichlet":
            raise ValueError(f"`partition='label-dirichlet'` needs class labels; data set "
                             f"{cfg.data.name!r} has masks. Use iid, sizes or "
                             "dirichlet-sizes.")
        labels = np.zeros(len(labels), np.int32)
    return partition(labels, cfg.n_workers, cfg.data.partition, seed=cfg.run.seed,
                     sizes=cfg.data.sizes, alpha=cfg.data.dirichlet_alpha)


def data_options(cfg: RunConfig) -> dict[str, Any]:
    """The data set loader's keyword arguments: the config's, with synthetic data's
    sample count defaulting to 10 per worker, at least 2000."""
    opts = dict(cfg.data.options)
    if cfg.data.name == "synthetic" and opts.get("num_samples") is None:
        from fedf_jax.data.synthetic import default_num_samples

        opts["num_samples"] = default_num_samples(cfg.n_workers)
    return opts


def load(cfg: RunConfig) -> Host:
    """Loads the data, partitions it over the workers and builds the model and P^0 (no
    model for admm-svm: its model is the SVM's weights)."""
    ds = load_dataset(cfg.data.name, cfg.data.data_dir, **data_options(cfg))
    parts = partition_workers(cfg, ds)
    if cfg.run.algorithm == "admm-svm":
        return Host(cfg, ds, parts, None, None)
    model = make_model(cfg.model.name, ds.input_shape, ds.num_classes, **cfg.model_options())
    return Host(cfg, ds, parts, model, model.init(keys.stream(cfg.run.seed, keys.INIT)))


class Compiler:
    """Compiles jitted functions ahead of time and runs each once, adding up the seconds,
    so that no epoch's wall time holds a compile or a first call.

    The warm-up call runs on copies of the donated arguments only (the state), never
    on a copy of the data.
    """

    def __init__(self):
        self.seconds = 0.0

    def __call__(self, jitted, *args, donated: tuple[int, ...] = (0,)):
        t0 = time.perf_counter()
        compiled = jitted.lower(*args).compile()
        warm = [jax.tree.map(lambda a: a.copy() if isinstance(a, jax.Array) else a, a)
                if i in donated else a for i, a in enumerate(args)]
        jax.block_until_ready(compiled(*warm))
        self.seconds += time.perf_counter() - t0
        return compiled


class Runner(NamedTuple):
    """Runs epochs: ``advance(state, n) -> (state, [host outputs of each epoch])``."""

    advance: Callable[[Any, int], tuple[Any, list[dict[str, Any]]]]
    chunk: int  # the most epochs one call runs
    compile_s: float


def scan(step: Callable, n: int) -> Callable:
    """``n`` epochs of ``step`` in one ``lax.scan``: ``(state, data) -> (state, outputs
    stacked along a leading [n] axis)``; the same program as ``n`` calls of ``step``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n_epochs` (={n!r}) must be an integer >= 1.")

    def many(state, data):
        return jax.lax.scan(lambda s, _: step(s, data), state, None, length=n)
    return many


def compile_runner(alg: Algorithm, state, epochs: int, scan_epochs: int = 1) -> Runner:
    """Compiles ``alg.step`` (and a ``lax.scan`` of ``scan_epochs`` of them) ahead of
    epoch 1 for exactly the call sizes the loop will use (or the algorithm's own
    ``runner``)."""
    if alg.runner is not None:
        return alg.runner(state, epochs)
    compiler = Compiler()
    chunk = max(1, min(scan_epochs, epochs))
    fns = {}
    for n in {chunk, epochs % chunk} - {0}:
        fn = alg.step if n == 1 else scan(alg.step, n)
        fns[n] = compiler(jax.jit(fn, donate_argnums=0), state, alg.data)

    def advance(state, n):
        state, out = fns[n](state, alg.data)
        out = jax.device_get(out)
        if n == 1:
            return state, [out]
        return state, [{k: v[i] for k, v in out.items()} for i in range(n)]

    return Runner(advance, chunk, compiler.seconds)


class Watch:
    """Notices a run whose global model diverges (DESIGN §9) and logs one warning
    naming the epoch and the pilot.

    An epoch diverged when its test loss is not finite, when it explodes (above ten
    times the best so far and 1 nat above it), or when the model is no better than
    a uniform guess: a loss more than 1 nat above ln(C) with accuracy at chance
    (at most 1.5 / C) for C classes.
    """

    def __init__(self, num_classes: int = 0):
        self.best = math.inf
        self.diverged = False
        self.guess = math.log(num_classes) if num_classes > 1 else math.inf
        self.chance = 1.5 / num_classes if num_classes > 1 else 0.0

    def __call__(self, rec: dict[str, Any]) -> None:
        loss, acc = rec["test_loss"], rec["test_accuracy"]
        if not math.isfinite(loss):
            why = f"test loss {loss}"
        elif math.isfinite(self.best) and loss > max(EXPLODE * self.best, self.best + 1.0):
            why = f"test loss {loss:.6g}, best so far {self.best:.6g}"
        elif loss > self.guess + 1.0 and acc <= self.chance:
            why = (f"test loss {loss:.6g} against {self.guess:.3g} for a uniform guess, "
                   f"accuracy {acc:.3g} at chance")
        else:
            why = ""
        if why and not self.diverged:
            pilot = rec.get("pilot", -1)
            who = f"; the pilot was worker {pilot}" if pilot is not None and pilot >= 0 else ""
            log.warning("epoch %d: the global model diverged (%s)%s. A worker whose cost "
                        "drops a lot wins Eq. (1), even one that diverges; a learning rate "
                        "far too large does this.", rec["epoch"], why, who)
        self.diverged |= bool(why)
        if math.isfinite(loss):
            self.best = min(self.best, loss)


def drive(runner: Runner, state, record: Callable[[dict[str, Any], float], dict[str, Any]], *,
          first: int, last: int, logfile: runlog.RunLog | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None,
          after: Callable[[Any, dict[str, Any]], None] | None = None,
          watch: Watch | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """The epoch loop of every run: epochs ``first..last``, each recorded and logged.

    Args:
      runner: advances the state by up to ``runner.chunk`` epochs per call.
      record: the algorithm's record; gets each epoch's outputs and its wall seconds
        (a call's time split evenly over its epochs).
      logfile: the run log (rank 0 only).
      on_epoch: called with each record (the CLI prints a row).
      after: called with the state and the record after each call's last epoch
        (the MPI master checkpoints there).
      watch: a divergence watch (default: a new one).

    An epoch whose record says ``"converged": true`` (ADMM's stopping rule) is the last.

    Returns:
      (state, records).
    """
    watch = watch or Watch()
    records = []
    t = first
    while t <= last and not (records and records[-1].get("converged") is True):
        n = min(runner.chunk, last - t + 1)
        t0 = time.perf_counter()
        state, outs = runner.advance(state, n)
        wall = (time.perf_counter() - t0) / n
        for out in outs:
            rec = record(out, wall)
            watch(rec)
            records.append(rec)
            if logfile:
                logfile.write(rec)
            if on_epoch:
                on_epoch(rec)
            if rec.get("converged") is True:  # an algorithm met its stopping rule
                break
        if after:
            after(state, records[-1])
        t += n
    return state, records


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
        "eq8_bytes_per_epoch": codec.paper_bytes_per_epoch(4 * n_params, cfg.n_workers),
        "num_params": n_params, "wall_s": wall_s,
        "epoch_wall_s": float(sum(r["wall_s"] for r in records)),
        "modeled_s": float(sum(r["modeled_s"] for r in records)),
    }


def header(cfg: RunConfig, host: Host, num_params: int, devices: list[str], compile_s: float,
           **extra) -> dict[str, Any]:
    """The run log's first line (DESIGN §6)."""
    return runlog.make_header(
        cfg.to_dict(), devices, backend=extra.pop("backend", cfg.run.backend),
        algorithm=cfg.run.algorithm, compile_s=compile_s, num_params=num_params,
        worker_sizes=[len(p) for p in host.parts], num_test=int(len(host.dataset.y_test)),
        **extra)


def finish(cfg: RunConfig, out_dir: Path | None, records: list[dict[str, Any]],
           params: np.ndarray, n_params: int, wall_s: float, compile_s: float,
           watch: Watch, logfile: runlog.RunLog | None, **extra) -> dict[str, Any]:
    """The summary line and ``final_model.npy`` (flat f32[M]) of a finished run."""
    summary = {**summarize(cfg, records, n_params, wall_s), "compile_s": compile_s,
               "diverged": watch.diverged, **extra}
    if out_dir is not None:
        np.save(Path(out_dir) / "final_model.npy", np.asarray(params, np.float32))
    if logfile:
        logfile.write({"type": "summary", **summary})
    return {**summary, "records": records, "params": np.asarray(params)}


def execute(cfg: RunConfig, runner: Runner, state, record: Callable, params: Callable, *,
            out_dir: Path | None, head: dict[str, Any], num_params: int, num_classes: int,
            first: int = 1, done: Sequence[dict[str, Any]] = (), resumed: bool = False,
            on_epoch: Callable[[dict[str, Any]], None] | None = None,
            after: Callable[[Any, dict[str, Any]], None] | None = None,
            extra: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None
            ) -> dict[str, Any]:
    """A whole run: the run log (new, or continued after ``done`` epochs when
    ``resumed``), :func:`drive` from epoch ``first`` to the last, :func:`finish`.

    Args:
      params: ``state -> f32[M]`` the global model; extra: more summary fields from all
        the records (e.g. MPI's bytes moved).
    """
    path = Path(out_dir) / "run.jsonl" if out_dir is not None else None
    logfile = None
    if path is not None:
        logfile = (runlog.RunLog(path, {"type": "resume", "epoch": first - 1,
                                        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
                                 append=True) if resumed else runlog.RunLog(path, head))
    watch = Watch(num_classes)
    t0 = time.perf_counter()
    try:
        state, new = drive(runner, state, record, first=first, last=cfg.run.epochs,
                           logfile=logfile, on_epoch=on_epoch, after=after, watch=watch)
        records = [*done, *new]
        return finish(cfg, out_dir, records, np.asarray(params(state)), num_params,
                      time.perf_counter() - t0, runner.compile_s, watch, logfile,
                      **(extra(records) if extra else {}))
    finally:
        if logfile:
            logfile.close()


__all__ = ["Algorithm", "Host", "Runner", "Compiler", "Watch", "data_options", "load",
           "partition_workers", "scan", "compile_runner", "drive", "summarize", "header",
           "finish", "execute"]
