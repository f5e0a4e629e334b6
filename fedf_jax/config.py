"""Run configuration: one frozen, validated dataclass, loadable from JSON or TOML.

A config file holds any :class:`RunConfig` field by name, plus ``workers`` as a
list of per-worker private specs (tables with ``lr``, ``batch_size``,
``local_epochs``, ``optimizer``, ``momentum``); a spec that leaves a field out
takes it from ``default_worker``. Example (TOML)::

    workers = 3
    epochs = 40
    beta = 0.2
    [[worker]]
    lr = 0.05
    optimizer = "sgd"
    [[worker]]
    lr = 0.001
    optimizer = "adam"
    batch_size = 32
    [[worker]]
    lr = 0.02
    optimizer = "momentum"
    local_epochs = 2
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fedf_jax.data import DATASETS, PARTITIONS
from fedf_jax.master import MasterConfig
from fedf_jax.models import MODELS as MODEL_REGISTRY
from fedf_jax.worker import WorkerSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MODELS = tuple(MODEL_REGISTRY)
BACKENDS = ("vmap", "sharded")
ALGORITHMS = ("fedf", "fedavg", "phong", "terngrad", "central")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Every knob of a simulated FEDF run.

    Attributes:
      workers: N.
      epochs: global epochs.
      model: ``"mlp"`` or ``"cnn"``.
      data: data set name; ``data_dir`` its local path where it needs one. Default:
        ``"digits"``, or the bundled ``"synthetic-seg"`` for ``model="unet"``.
      width: U-Net base width (default 64, the classic U-Net; 8 on synthetic-seg).
      augment: random crop and flip of training images (default: on for cifar10).
      image_size: (H, W) to resize segmentation images to; tile: cut them into T x T tiles.
      partition: ``"iid"`` (equal), ``"sizes"`` (IID, sizes given), ``"dirichlet-sizes"``
        (IID, Dirichlet(dirichlet_alpha) sizes), ``"label-dirichlet"`` (label skew).
      sizes: worker sizes for ``partition="sizes"``.
      dirichlet_alpha: concentration of the Dirichlet partitions.
      alpha0, beta, direction, scheme: the master's settings (see MasterConfig).
      seed: the root of every random choice of the run.
      worker_specs: one private spec per worker (default: N copies of default_worker).
      default_worker: the spec of workers not given one.
      bandwidth: bytes/s of the master's link in the timing model.
      latency: seconds per message round in the timing model.
      backend: ``"vmap"`` (all workers batched on one device) or ``"sharded"``
        (workers spread over local devices with shard_map).
      devices: how many local devices the sharded backend uses (default: all).
      algorithm: ``"fedf"`` (default) or a baseline on the same data, model and run
        log: ``"fedavg"`` (McMahan et al., example-weighted), ``"phong"`` (Phong and
        Phuong: the model passes through the workers in turn), ``"terngrad"`` (Wen et
        al.: synchronous SGD with stochastic ternary gradients), ``"central"`` (one
        worker holding the union of the workers' data).
      fraction: FedAvg's fraction C of the workers sampled each round (default 1).
      scan_epochs: FEDF epochs per jitted call (a ``lax.scan`` over epochs; the run
        log is the same, wall times are the call's time split evenly).
    """

    workers: int = 5
    epochs: int = 30
    model: str = "mlp"
    data: str | None = None
    width: int | None = None
    augment: bool | None = None
    image_size: tuple[int, int] | None = None
    tile: int | None = None
    data_dir: str | None = None
    partition: str = "iid"
    sizes: tuple[int, ...] | None = None
    dirichlet_alpha: float = 0.5
    alpha0: float = 0.01
    beta: float | tuple[float, ...] = 0.2
    direction: int = 1
    scheme: str = "2bit"
    seed: int = 0
    worker_specs: tuple[WorkerSpec, ...] | None = None
    default_worker: WorkerSpec = WorkerSpec()
    bandwidth: float = 125e6
    latency: float = 1e-3
    backend: str = "vmap"
    devices: int | None = None
    algorithm: str = "fedf"
    fraction: float = 1.0
    scan_epochs: int = 1

    def __post_init__(self):
        for name in ("alpha0", "dirichlet_alpha", "bandwidth", "latency"):
            _check_number(name, getattr(self, name))
        for b in self.beta if isinstance(self.beta, (list, tuple)) else (self.beta,):
            _check_number("beta", b)
        _check_int("workers", self.workers, 1)
        _check_int("epochs", self.epochs, 1)
        _check_int("seed", self.seed, 0)
        if self.model not in MODELS:
            raise ValueError(f"`model` (={self.model!r}) must be one of {MODELS}.")
        if self.data is None:
            object.__setattr__(self, "data", "synthetic-seg" if self.model == "unet"
                               else "digits")
        if self.augment is None:
            object.__setattr__(self, "augment", self.data == "cifar10")
        if self.width is not None:
            _check_int("width", self.width, 1)
            if self.model != "unet":
                raise ValueError(f"`width` (={self.width}) applies to `model='unet'` only.")
        if (self.image_size is not None or self.tile is not None) and self.data != "segmentation":
            raise ValueError("`image_size` and `tile` apply to `data='segmentation'` only.")
        if self.image_size is not None:
            object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))
            if len(self.image_size) != 2 or min(self.image_size) < 1:
                raise ValueError(f"`image_size` (={self.image_size}) must be two sizes H,W.")
        if self.tile is not None:
            _check_int("tile", self.tile, 1)
        if self.data not in DATASETS:
            raise ValueError(f"`data` (={self.data!r}) must be one of {DATASETS}.")
        if self.partition not in PARTITIONS:
            raise ValueError(f"`partition` (={self.partition!r}) must be one of {PARTITIONS}.")
        if self.partition == "sizes" and (self.sizes is None or len(self.sizes) != self.workers):
            raise ValueError(f"`partition='sizes'` needs `sizes` with {self.workers} values, "
                             f"got {self.sizes}.")
        if not (math.isfinite(self.dirichlet_alpha) and self.dirichlet_alpha > 0):
            raise ValueError(f"`dirichlet_alpha` (={self.dirichlet_alpha}) must be > 0.")
        if isinstance(self.beta, (list, tuple)):
            object.__setattr__(self, "beta", tuple(float(b) for b in self.beta))
            if len(self.beta) != self.workers:
                raise ValueError(f"`beta` has {len(self.beta)} values for {self.workers} "
                                 "workers; give one value or one per worker.")
        self.master  # validates alpha0, beta, direction, scheme  # noqa: B018
        if self.worker_specs is not None and len(self.worker_specs) != self.workers:
            raise ValueError(f"{len(self.worker_specs)} worker specs for `workers` "
                             f"(={self.workers}); give one per worker.")
        if self.backend not in BACKENDS:
            raise ValueError(f"`backend` (={self.backend!r}) must be one of {BACKENDS}.")
        if self.devices is not None:
            _check_int("devices", self.devices, 1)
            if self.backend != "sharded":
                raise ValueError(f"`devices` (={self.devices}) needs `backend='sharded'`.")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"`algorithm` (={self.algorithm!r}) must be one of {ALGORITHMS}.")
        _check_number("fraction", self.fraction)
        if not 0 < self.fraction <= 1:
            raise ValueError(f"`fraction` (={self.fraction}) must be in (0, 1].")
        if self.fraction < 1 and self.algorithm != "fedavg":
            raise ValueError(f"`fraction` (={self.fraction}) applies to "
                             "`algorithm='fedavg'` only.")
        _check_int("scan_epochs", self.scan_epochs, 1)
        if self.scan_epochs > 1 and (self.algorithm != "fedf" or self.backend != "vmap"):
            raise ValueError(f"`scan_epochs` (={self.scan_epochs}) needs `algorithm='fedf'` "
                             "and `backend='vmap'`.")
        if self.algorithm != "fedf" and self.backend != "vmap":
            raise ValueError(f"`backend` (={self.backend!r}) applies to `algorithm='fedf'`; "
                             f"the {self.algorithm} baseline runs on the vmap backend.")
        for name in ("bandwidth", "latency"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"`{name}` (={v}) must be a positive number.")

    @property
    def data_options(self) -> dict[str, Any]:
        """Keyword arguments of the data loader."""
        if self.data != "segmentation":
            return {}
        return {"size": self.image_size, "tile": self.tile}

    @property
    def model_options(self) -> dict[str, Any]:
        """Keyword arguments of the model beyond the registry defaults."""
        if self.model != "unet":
            return {}
        return {"width": self.width or (8 if self.data == "synthetic-seg" else 64)}

    @property
    def master(self) -> MasterConfig:
        return MasterConfig(self.alpha0, self.beta, self.direction, self.scheme)

    @property
    def specs(self) -> tuple[WorkerSpec, ...]:
        return self.worker_specs or (self.default_worker,) * self.workers

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the resolved config (per-worker specs spelled out)."""
        d = dataclasses.asdict(self)
        d["worker_specs"] = [dataclasses.asdict(s) for s in self.specs]
        return d


def _check_number(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"`{name}` (={value!r}) must be a number.")


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer)) or (
            int(value) != value or value < low):
        raise ValueError(f"`{name}` (={value!r}) must be an integer >= {low}.")


def load_file(path: str | Path) -> dict[str, Any]:
    """Reads a JSON or TOML config file into RunConfig keyword arguments."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist.")
    text = path.read_text()
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"config file {str(path)!r} is not valid "
                         f"{'TOML' if path.suffix == '.toml' else 'JSON'}: {e}") from None
    return from_dict(raw, source=str(path))


def from_dict(raw: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Turns a plain dict (file contents) into RunConfig keyword arguments."""
    raw = dict(raw)
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    spec_fields = {f.name for f in dataclasses.fields(WorkerSpec)}
    out: dict[str, Any] = {}
    specs = raw.pop("worker", None) or raw.pop("worker_specs", None)
    if isinstance(raw.get("workers"), list):
        specs = raw.pop("workers")
    default = raw.pop("default_worker", {})
    for key, value in raw.items():
        if key not in fields:
            raise ValueError(f"unknown key {key!r} in {source}; known keys: {sorted(fields)}.")
        out[key] = tuple(value) if isinstance(value, list) else value
    for d in [default, *(specs or [])]:
        unknown = set(d) - spec_fields
        if unknown:
            raise ValueError(f"unknown worker key(s) {sorted(unknown)} in {source}; "
                             f"known: {sorted(spec_fields)}.")
    base = WorkerSpec(**default)
    out["default_worker"] = base
    if specs:
        out["worker_specs"] = tuple(dataclasses.replace(base, **s) for s in specs)
        out.setdefault("workers", len(specs))
    return out
