"""Run configuration, in one place: nested, frozen, validated when built.

A :class:`RunConfig` has five sections, frozen dataclasses that check their own
fields (ranges and choices in each field's metadata): ``run``, ``data``, ``model``,
``master`` and ``workers`` (each worker's private :class:`WorkerSpec`);
:class:`RunConfig` checks the rules that span sections.

Every field has one *flat name*, unique across sections (``workers``, ``epochs``,
``data``, ``alpha0``, ...). Flat names are what config files, command-line flags
(``--dirichlet-alpha``) and the run-log header use; :func:`make` builds a config
from them and :meth:`RunConfig.to_dict` writes them. The CLI derives its flags and
help from the field metadata here, so a new field is one edit.

Config files are read by ``config_files``. This module imports no JAX, so that a
bad flag is answered at once.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from fedf_jax import config_rules
from fedf_jax.config_fields import COUNT, POSITIVE, check_fields, flat_name, option
from fedf_jax.data import DATASETS, PARTITIONS

# Names of the registries that live in modules importing JAX (tests check they agree).
MODELS = ("mlp", "cnn", "resnet32", "unet")
SCHEMES = ("2bit", "base3")
OPTIMIZERS = ("sgd", "momentum", "adam")
BACKENDS = ("vmap", "sharded")
ALGORITHMS = ("fedf", "fedavg", "phong", "terngrad", "central", "admm-svm")
GROUPED = ("fedf", "fedavg", "admm-svm")  # the algorithms that run in groups (--groups)
SPLITS = ("samples", "features")
SECURE_SUMS = ("none", "secagg", "paillier")
SCHEDULES = ("sync", "async")
STALENESS_FNS = ("constant", "polynomial", "hinge")
STALE_POLICIES = ("wait", "drop")
WIRES = ("crc", "aead")


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """A worker's private training hyper-parameters (never sent to the master)."""

    lr: float = option(0.2, "learning rate alpha_k; also the threshold of Eq. (4) at t=1",
                       number=POSITIVE)
    batch_size: int = option(10, "mini-batch size", number=COUNT)
    local_epochs: int = option(1, "local passes over the worker's data per global epoch",
                               number=COUNT)
    optimizer: str = option("sgd", "optax optimizer", choices=OPTIMIZERS)
    momentum: float = option(0.9, "momentum coefficient of the momentum optimizer",
                             number={"low": 0, "high": 1, "high_open": True})

    def __post_init__(self):
        check_fields(self)


@dataclasses.dataclass(frozen=True)
class MasterConfig:
    """The master's public settings (Eq. 3, 5 and the wire)."""

    alpha0: float = option(0.01, "master's learning rate alpha0, Eq. (3) at t=1",
                           number={"low": 0})
    beta: float | tuple[float, ...] = option(
        0.2, "threshold beta_k in (0,1), Eq. (5): one value or one per worker", csv=float,
        number={"low": 0, "high": 1, "low_open": True, "high_open": True})
    direction: int = option(1, "sign d of Eq. (3): +1 (Appendix A) or -1 (as printed)",
                            choices=(1, -1))
    scheme: str = option("2bit", "ternary packing: 2bit (the paper's, 4 per byte) or base3 "
                         "(5 per byte, 20%% smaller)", choices=SCHEMES)
    svm_c: float = option(1.0, "admm-svm: C of 1/2 ||w||^2 + C sum hinge", number=POSITIVE)
    rho: float | None = option(None, "admm-svm: the first ADMM penalty rho (default 3 for "
                               "--split samples, 0.1 for features; then residual balancing)",
                               number=POSITIVE)
    tol: float = option(1e-4, "admm-svm: Boyd's absolute and relative tolerances; the run "
                        "stops once the residuals meet them (0: never)", number={"low": 0})
    prox: float | None = option(None, "admm-svm --schedule async: the master's proximal "
                                "weight gamma on ||z - z_prev||^2 (Chang et al. 2016; default "
                                "rho n (n/A - 1 + tau) for n senders, A = --buffer, tau = "
                                "--staleness or n/A)", number={"low": 0})
    secure_sum: str = option("none", "how the master gets the sum of Eq. (3) (or ADMM's sums): "
                             "none (each message in the clear), secagg (secure aggregation: "
                             "the master learns only the sum), paillier (with --groups: the "
                             "groups' sums encrypted to the top, which never holds the key)",
                             choices=SECURE_SUMS)
    pilot_guard: bool = option(False, "guard the pilot choice (README, 'Guarding the pilot'): "
                               "the pilot must "
                               "report a cost and size inside robust bands around the "
                               "others' (median/MAD), and its step must fit the step the "
                               "others' ternaries imply, else P^t takes their votes only; "
                               "off: Eq. (1) as the paper says")
    paillier_bits: int = option(2048, "bits of the Paillier modulus n (--secure-sum paillier)",
                                number={"low": 512, "integer": True})

    def __post_init__(self):
        if self.direction not in (1, -1) or isinstance(self.direction, bool):
            raise ValueError(f"`direction` (={self.direction!r}) must be +1 or -1.")
        check_fields(self)

    def betas(self, n_workers: int) -> np.ndarray:
        """beta as f32[N] (numpy)."""
        if isinstance(self.beta, tuple):
            if len(self.beta) != n_workers:
                raise ValueError(f"`beta` has {len(self.beta)} values for {n_workers} "
                                 "workers; give one value or one per worker.")
            return np.asarray(self.beta, np.float32)
        return np.full((n_workers,), self.beta, np.float32)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The data set and how it is split over the workers."""

    name: str | None = option(None, "data set (default digits, bundled; synthetic-seg for "
                              "--model unet)", flat="data", choices=DATASETS)
    data_dir: str | None = option(None, "local directory of a data set that is not bundled "
                                  "(cifar10: a folder with cifar-10-batches-bin or -py; "
                                  "segmentation: images/ + masks/ or ISBI tif volumes)")
    partition: str = option("iid", "how the data is split over the workers",
                            choices=PARTITIONS)
    sizes: tuple[int, ...] | None = option(None, "worker sizes for --partition sizes",
                                           csv=int, number=COUNT)
    dirichlet_alpha: float = option(0.5, "Dirichlet concentration of the dirichlet "
                                    "partitions (smaller = more skewed)", number=POSITIVE)
    augment: bool | None = option(None, "random crop and flip of training images (default: "
                                  "on for cifar10)")
    image_size: tuple[int, int] | None = option(None, "segmentation: resize images and masks "
                                                "to H,W", csv=int, number=COUNT)
    tile: int | None = option(None, "segmentation: cut images into TxT tiles", number=COUNT)
    split: str = option("samples", "admm-svm: each worker holds rows (samples) or a block of "
                        "columns of the same rows (features)", choices=SPLITS)
    num_samples: int | None = option(None, "data synthetic: training samples to generate "
                                     "(default 10 per worker, at least 2000)", number=COUNT)
    standardize: bool | None = option(None, "scale features by the training set's mean and "
                                      "std (default: on for breast-cancer, off for libsvm)")

    def __post_init__(self):
        check_fields(self)
        if self.image_size is not None and len(self.image_size) != 2:
            raise ValueError(f"`image_size` (={self.image_size}) must be two sizes H,W.")
        if (self.image_size is not None or self.tile is not None) and (
                self.name != "segmentation"):
            raise ValueError("`image_size` and `tile` apply to `data='segmentation'` only.")
        if self.partition == "sizes" and self.sizes is None:
            raise ValueError("`partition='sizes'` needs `sizes` (one per worker).")
        if self.num_samples is not None and self.name != "synthetic":
            raise ValueError(f"`num_samples` (={self.num_samples}) applies to "
                             f"`data='synthetic'` only (got data {self.name!r}); drop it "
                             "or use --data synthetic.")


    @property
    def options(self) -> dict[str, Any]:
        """Keyword arguments of the data set's loader."""
        if self.name == "segmentation":
            return {"size": self.image_size, "tile": self.tile}
        if self.name == "synthetic":  # None: harness.load's default from the workers
            return {"num_samples": self.num_samples}
        if self.name in ("libsvm", "breast-cancer") and self.standardize is not None:
            return {"standardize": self.standardize}
        return {}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model."""

    name: str = option("mlp", "model", flat="model", choices=MODELS)
    width: int | None = option(None, "U-Net base width (default 64, the classic U-Net; 8 on "
                               "synthetic-seg)", number=COUNT)

    def __post_init__(self):
        check_fields(self)
        if self.width is not None and self.name != "unet":
            raise ValueError(f"`width` (={self.width}) applies to `model='unet'` only.")


@dataclasses.dataclass(frozen=True)
class WorkersConfig:
    """The N workers and their private specs."""

    count: int = option(5, "number of workers N", flat="workers", number=COUNT)
    specs: tuple[WorkerSpec, ...] | None = option(
        None, "one private spec per worker (config files only)", flat="worker_specs")
    default: WorkerSpec = option(WorkerSpec(), "the spec of workers not given one",
                                 flat="default_worker")

    def __post_init__(self):
        check_fields(self)
        if self.specs is not None:
            if len(self.specs) != self.count:
                raise ValueError(f"{len(self.specs)} worker specs for `workers` "
                                 f"(={self.count}); give one per worker.")

    @property
    def all(self) -> tuple[WorkerSpec, ...]:
        """Every worker's spec, in worker order."""
        return self.specs or (self.default,) * self.count


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """How the run goes: algorithm, epochs, seed, backend and the timing model."""

    algorithm: str = option("fedf", "fedf, or a baseline on the same data, model and run log: "
                            "fedavg (example-weighted model averaging), phong (the model "
                            "visits the workers in turn), terngrad (synchronous SGD with "
                            "stochastic ternary gradients), central (one worker holding all "
                            "the data); or admm-svm (a linear SVM by ADMM, rows or columns "
                            "split, see --split)", choices=ALGORITHMS)
    epochs: int = option(30, "global epochs", number=COUNT)
    seed: int = option(0, "root seed of the run", number={"low": 0, "integer": True})
    fraction: float = option(1.0, "fedavg: fraction C of the workers sampled each round",
                             number={"low": 0, "high": 1, "low_open": True})
    backend: str = option("vmap", "vmap: all workers batched on one device; sharded: workers "
                          "spread over the local devices with shard_map", choices=BACKENDS)
    devices: int | None = option(None, "with --backend sharded: use the first K local "
                                 "devices (default all)", number=COUNT)
    scan_epochs: int = option(1, "run E epochs per jitted call (one lax.scan; same run log, "
                              "fewer host round trips)", metavar="E", number=COUNT)
    worker_chunk: int | None = option(None, "train the workers K at a time inside the jitted "
                                      "epoch (memory O(K M), the same pilots and model; "
                                      "fedf, fedavg, admm-svm --split samples; with "
                                      "--groups G, K // G per group; default all at once)",
                                      metavar="K", number=COUNT)
    groups: int = option(1, "two levels: the workers in G groups (contiguous blocks), each "
                         "with a group master under one top master", number=COUNT)
    group_epochs: int = option(1, "two levels: inner epochs of each group per outer epoch",
                               metavar="K", number=COUNT)
    group_workers: tuple[tuple[int, ...], ...] | None = option(
        None, "each group's workers (config files only; default contiguous blocks)")
    bandwidth: float = option(125e6, "master link in bytes/s for the timing model (with "
                              "--groups: the top master's wide-area link)", number=POSITIVE)
    latency: float = option(1e-3, "seconds per message round in the timing model",
                            number=POSITIVE)
    group_bandwidth: float = option(1.25e9, "with --groups: a group master's local link in "
                                    "bytes/s for the timing model", number=POSITIVE)
    group_latency: float = option(1e-4, "with --groups: seconds per message round on a "
                                  "group's local link", number=POSITIVE)
    schedule: str = option("sync", "sync: every sender (flat worker, or group with --groups) "
                           "in every top update; async: the top applies updates as they "
                           "arrive on a virtual clock", choices=SCHEDULES)
    speeds: str | None = option(None, "async: each sender's relative compute time, "
                                "comma-separated (1,1,4), or lognormal:SIGMA (seeded)")
    staleness: int | None = option(None, "async: the most top updates an applied update may "
                                   "lag (0: the synchronous run; default unbounded)",
                                   number={"low": 0, "integer": True})
    stale_policy: str = option("wait", "async: wait (the top holds its update until no "
                               "sender would exceed --staleness) or drop (staler arrivals "
                               "are dropped and logged)", choices=STALE_POLICIES)
    staleness_fn: str = option("constant", "async: the weight s(tau) of an update tau top "
                               "updates stale (FedAsync)", choices=STALENESS_FNS)
    buffer: int = option(1, "async: arrivals per top update (FedBuff; 1: FedAsync); "
                         "admm-svm: arrivals per z-update (partial barrier)", number=COUNT)
    mixing: float = option(1.0, "async: the top's step alpha on an arrival's change",
                           number={"low": 0, "high": 1, "low_open": True})
    unit_seconds: float | None = option(None, "async: seconds per unit of work on the "
                                        "virtual clock (3 per trained sample, 1 per cost-pass "
                                        "sample; default 2M/1e9: 1 GFLOP/s on M parameters)",
                                        number=POSITIVE)
    wire: str = option("crc", "fedf train: frames checked by their CRC32 (crc) or sealed with "
                       "AES-GCM per link and direction (aead)", choices=WIRES)
    key_file: str | None = option(None, "fedf train --wire aead: a file of 32 bytes (or 64 "
                                  "hex digits) shared by every rank, instead of X25519 key "
                                  "agreement at start-up")

    def __post_init__(self):
        check_fields(self)


SECTIONS = {"run": RunSettings, "data": DataConfig, "model": ModelConfig,
            "master": MasterConfig, "workers": WorkersConfig}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Every knob of a run, by section."""

    run: RunSettings = RunSettings()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    master: MasterConfig = MasterConfig()
    workers: WorkersConfig = WorkersConfig()

    def __post_init__(self):
        data, model = self.data, self.model
        if data.name is None:  # the default data set follows the model
            data = dataclasses.replace(data, name=_default_data(model.name))
        if data.augment is None:
            data = dataclasses.replace(data, augment=data.name == "cifar10")
        object.__setattr__(self, "data", data)
        config_rules.check(self)

    @property
    def n_workers(self) -> int:
        return self.workers.count

    @property
    def specs(self) -> tuple[WorkerSpec, ...]:
        """Every worker's private spec, in worker order."""
        return self.workers.all

    def group_workers(self) -> tuple[tuple[int, ...], ...]:
        """Each group's workers: ``run.group_workers``, or G contiguous blocks of sizes
        differing by at most one. Raises ValueError when they do not fit the workers."""
        run, n = self.run, self.workers.count
        if run.groups > 1 and run.algorithm not in GROUPED:
            raise ValueError(f"`groups` (={run.groups}) applies to algorithms {GROUPED}, "
                             f"not {run.algorithm!r}.")
        if run.group_workers is None:
            if run.groups > n:
                raise ValueError(f"`groups` (={run.groups}) must be at most `workers` (={n}): "
                                 "every group needs a worker.")
            cuts = np.array_split(np.arange(n), run.groups)
            return tuple(tuple(int(k) for k in c) for c in cuts)
        groups = tuple(tuple(int(k) for k in g) for g in run.group_workers)
        if len(groups) != run.groups or any(not g for g in groups):
            raise ValueError(f"`group_workers` must list {run.groups} non-empty groups "
                             f"(`groups`={run.groups}), got {[list(g) for g in groups]}.")
        if sorted(k for g in groups for k in g) != list(range(n)):
            raise ValueError(f"`group_workers` must name each of the {n} workers 0..{n - 1} "
                             f"exactly once, got {[list(g) for g in groups]}.")
        return groups

    def model_options(self) -> dict[str, Any]:
        """Keyword arguments of the model beyond the registry defaults."""
        if self.model.name != "unet":
            return {}
        return {"width": self.model.width or (8 if self.data.name == "synthetic-seg" else 64)}

    def replace(self, **flat) -> RunConfig:
        """A copy with fields changed by their flat names (``cfg.replace(seed=1)``).

        Values this config derived (the data set that follows the model, augmentation
        that follows the data set) are derived again unless given.
        """
        old = self.to_dict(specs=False)
        if "model" in flat and "data" not in flat and old["data"] == _default_data(
                old["model"]):
            old["data"] = None
        if "augment" not in flat and ("data" in flat or old["data"] is None):
            old["augment"] = None
        return make(**{**old, **flat})

    def to_dict(self, specs: bool = True) -> dict[str, Any]:
        """The resolved config as flat names, JSON-ready (every worker's spec spelled out
        in ``worker_specs`` unless ``specs`` is False)."""
        out: dict[str, Any] = {}
        for section in SECTIONS:
            obj = getattr(self, section)
            for f in dataclasses.fields(obj):
                value = getattr(obj, f.name)
                if isinstance(value, WorkerSpec):
                    value = dataclasses.asdict(value)
                out[flat_name(f)] = value
        if specs:
            out["worker_specs"] = [dataclasses.asdict(s) for s in self.specs]
        elif self.workers.specs is not None:
            out["worker_specs"] = self.workers.specs
        return out


def _default_data(model: str) -> str:
    return "synthetic-seg" if model == "unet" else "digits"


def _flat_index() -> dict[str, tuple[str, str]]:
    """flat name -> (section, field name)."""
    out = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            out[flat_name(f)] = (section, f.name)
    return out


FLAT = _flat_index()
SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(WorkerSpec))


def make(**flat) -> RunConfig:
    """A RunConfig from flat names: ``make(workers=3, epochs=4, beta=0.1)``.

    ``default_worker`` and ``worker_specs`` take WorkerSpec objects or dicts; a
    WorkerSpec field given by name (``lr=0.05``) sets it for every worker, over the
    default and per-worker specs (as the command-line flags do).

    Raises:
      ValueError: an unknown name, or a value that a section rejects.
    """
    every = {k: flat.pop(k) for k in SPEC_FIELDS if k in flat}
    kwargs: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for name, value in flat.items():
        if name not in FLAT:
            raise ValueError(f"unknown config key {name!r}; known keys: "
                             f"{sorted([*FLAT, *SPEC_FIELDS])}.")
        section, field = FLAT[name]
        kwargs[section][field] = value
    w = kwargs["workers"]
    default = w.get("default", WorkerSpec())
    if isinstance(default, dict):
        default = _spec(default, WorkerSpec(), "default_worker")
    w["default"] = _spec(every, default, "the worker flags")
    if w.get("specs") is not None:
        w["specs"] = tuple(_spec(every, s if isinstance(s, WorkerSpec) else
                                 _spec(s, default, "worker"), "the worker flags")
                           for s in w["specs"])
        w.setdefault("count", len(w["specs"]))
    d = kwargs["data"]
    if d.get("sizes") is not None:
        d.setdefault("partition", "sizes")
        if d["partition"] == "sizes":
            w.setdefault("count", len(d["sizes"]))
    try:
        return RunConfig(**{s: SECTIONS[s](**kw) for s, kw in kwargs.items()})
    except TypeError as e:  # a value of the wrong kind reached a comparison
        raise ValueError(f"bad config value: {e}") from None


def _spec(d: dict[str, Any], base: WorkerSpec, where: str) -> WorkerSpec:
    if not isinstance(d, dict):
        raise ValueError(f"each {where} must be a table of {list(SPEC_FIELDS)}, got {d!r}.")
    unknown = set(d) - set(SPEC_FIELDS)
    if unknown:
        raise ValueError(f"unknown worker key(s) {sorted(unknown)} in {where}; "
                         f"known: {list(SPEC_FIELDS)}.")
    return dataclasses.replace(base, **d)


__all__ = ["RunConfig", "RunSettings", "DataConfig", "ModelConfig", "MasterConfig",
           "WorkersConfig", "WorkerSpec", "SECTIONS", "FLAT", "MODELS", "SCHEMES",
           "OPTIMIZERS", "BACKENDS", "ALGORITHMS", "GROUPED", "SPLITS", "DATASETS",
           "PARTITIONS", "make", "flat_name"]
