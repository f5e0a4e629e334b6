"""The privacy experiments E1-E12: registry, runner, result files, verdicts per theorem.

Every experiment module exposes ``TITLE``, ``CLAIM``, ``CRITERION`` (the
falsification criterion, fixed before running) and ``run(opts, seed0, progress) ->
Result``. ``EXPERIMENTS`` holds the modules present in this installation, by name.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from fedf_jax.privacy.common import VERDICTS, Options, Result

MODULES = {
    "E1": "e1_inversion", "E2": "e2_class_leakage", "E3": "e3_reconstruction",
    "E4": "e4_membership", "E5": "e5_property", "E6": "e6_curious_worker",
    "E7": "e7_collusion", "E8": "e8_lying", "E9": "e9_defences",
    "E10": "e10_secure_sum", "E11": "e11_hierarchy", "E12": "e12_pilot_guard",
}

# which of the paper's claims each experiment tests (DESIGN §7, paper section 4.2)
THEOREMS = {
    "Theorem 2 (honest-but-curious master)": ("E1", "E2", "E3", "E4", "E5"),
    "Theorem 3 (honest-but-curious workers)": ("E6",),
    "Theorem 4 (up to N-2 colluders)": ("E7", "E8"),
    "Defences (DP, pilot noise) and audit": ("E9",),
    "Secure layers (secure sum, hierarchy, Paillier)": ("E10", "E11"),
    "Robust pilot choice (DESIGN §9)": ("E12",),
}


def _load(name: str) -> ModuleType | None:
    module = f"fedf_jax.privacy.{MODULES[name]}"
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:  # the experiment is not in this installation
            return None
        raise


EXPERIMENTS: dict[str, ModuleType] = {
    name: m for name in MODULES if (m := _load(name)) is not None}
MISSING = tuple(name for name in MODULES if name not in EXPERIMENTS)


def get(name: str) -> ModuleType:
    """The module of an experiment, by name (case-insensitive)."""
    key = name.strip().upper()
    if key not in MODULES:
        raise ValueError(f"`--experiment` (={name!r}) must be one of "
                         f"{', '.join(MODULES)}.")
    if key not in EXPERIMENTS:
        raise ValueError(f"experiment {key} ({MODULES[key]}.py) is not in this installation; "
                         f"available: {', '.join(EXPERIMENTS) or 'none'}.")
    return EXPERIMENTS[key]


def make_options(quick: bool = False, **overrides: Any) -> Options:
    """Options for a run; ``quick`` shrinks the sweeps to a CI-size check (2 seeds, n_k in
    {1, 4}, one local epoch, batch 8, 2 epochs) unless ``overrides`` set them."""
    base: dict[str, Any] = {}
    if quick:
        base = {"seeds": 2, "n_local": (1, 4), "local_epochs": (1,), "batch_sizes": (8,),
                "rounds": 2, "quick": True}
    base.update({k: v for k, v in overrides.items() if v is not None})
    opts = Options(**base)
    check_options(opts)
    return opts


def check_options(opts: Options) -> None:
    """Raises ValueError naming the first bad option."""
    from fedf_jax.privacy import views

    for name in ("seeds", "workers", "rounds", "hidden"):
        value = getattr(opts, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` (={value!r}) must be an integer >= 1.")
    if opts.workers < 2:
        raise ValueError(f"`workers` (={opts.workers}) must be >= 2.")
    if not opts.arms:
        raise ValueError("`arms` is empty; give at least one, e.g. fedavg,fedf+1.")
    for arm in opts.arms:
        views.parse_arm(arm)
    if opts.data not in ("digits", "cifar10"):
        raise ValueError(f"`data` (={opts.data!r}) must be 'digits' or 'cifar10'.")
    if opts.data == "cifar10" and not opts.data_dir:
        raise ValueError("`data='cifar10'` needs --data-dir (a folder with cifar-10-batches-*).")
    if not (0 < opts.delta < 1):
        raise ValueError(f"`delta` (={opts.delta}) must be in (0, 1).")
    for name in ("n_local", "local_epochs", "batch_sizes"):
        values = getattr(opts, name)
        low = 0 if name == "n_local" else 1
        if not values or any(int(v) != v or v < low for v in values):
            raise ValueError(f"`{name}` (={values!r}) must be integers >= {low}.")


def run_experiment(name: str, opts: Options, seed0: int = 0,
                   progress: Callable[[str], None] | None = None,
                   out_dir: str | Path | None = None) -> Result:
    """Runs one experiment; writes ``out_dir/result.json`` and ``result.md`` when given."""
    module = get(name)
    check_options(opts)
    t0 = time.perf_counter()
    result = module.run(opts, seed0, progress)
    result.extra.setdefault("wall_s", time.perf_counter() - t0)
    result.extra.setdefault("options", dataclasses.asdict(opts))
    if out_dir is not None:
        write_result(result, out_dir)
    return result


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return value


def write_result(result: Result, out_dir: str | Path) -> tuple[Path, Path]:
    """``out_dir/result.json`` (the Result as JSON; NaN as null) and ``result.md``."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"`--out` (={str(out)!r}) cannot be created: {e.strerror}.") from None
    js, md = out / "result.json", out / "result.md"
    js.write_text(json.dumps(_jsonable(result.to_dict()), indent=1) + "\n")
    md.write_text(result.to_markdown())
    return js, md


def read_result(path: str | Path) -> Result:
    """A Result back from its ``result.json``."""
    from fedf_jax.privacy.common import Regime, Row, Test

    d = json.loads(Path(path).read_text())
    nan = float("nan")

    def back(v):
        return nan if v is None else v

    rows = [Row(**{k: back(v) for k, v in r.items()}) for r in d["rows"]]
    regimes = [Regime(**r) for r in d.get("regimes", [])]
    tests = [Test(**{k: back(v) for k, v in t.items()}) for t in d.get("tests", [])]
    return Result(d["experiment"], d["title"], d["claim"], d["criterion"], rows, d["verdict"],
                  d.get("notes", ""), d.get("extra", {}), regimes, tests)


def theorem_verdict(verdicts: list[str]) -> str:
    """A claim is refuted if any of its experiments refutes it, supported if all of them
    support it, else inconclusive (also with no experiment)."""
    if any(v == "refuted" for v in verdicts):
        return "refuted"
    if verdicts and all(v == "supported" for v in verdicts):
        return "supported"
    return VERDICTS[2]
