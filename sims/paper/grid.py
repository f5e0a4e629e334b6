"""Runs a grid of simulated runs into one folder, one sub-folder per run, resumably.

A run whose folder already holds a finished run log (a summary line) with the
same config is skipped, so an interrupted grid continues where it stopped.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fedf_jax import runlog, simulation
from fedf_jax.config import RunConfig


def finished(path: Path, cfg: RunConfig) -> bool:
    """Whether ``path/run.jsonl`` is a finished run of exactly ``cfg``."""
    log = path / "run.jsonl"
    if not log.is_file():
        return False
    lines = log.read_text(encoding="utf-8").splitlines()
    if not lines or not lines[-1].startswith('{"type": "summary"'):
        return False
    header = json.loads(lines[0])
    return header.get("config") == runlog.to_json(cfg.to_dict())


def run_grid(runs: Sequence[tuple[str, RunConfig]], root: str | Path) -> list[Path]:
    """Runs each (name, config) into ``root/name``; prints one progress line per run."""
    root = Path(root)
    done = []
    t0 = time.perf_counter()
    for i, (name, cfg) in enumerate(runs, 1):
        out = root / name
        tag = f"[{i}/{len(runs)}] {name}"
        if finished(out, cfg):
            print(f"{tag}: done before, kept", flush=True)
        else:
            result = simulation.run(cfg, out)
            print(f"{tag}: final accuracy {result['final_test_accuracy']:.4f}, "
                  f"{result['wall_s'] + result['compile_s']:.1f} s "
                  f"({time.perf_counter() - t0:.0f} s so far)", flush=True)
        done.append(out)
    return done


def data_args(parser) -> None:
    """The data and model flags every paper script takes."""
    parser.add_argument("--data", default="digits",
                        help="digits (bundled, default), cifar10 or segmentation "
                        "(these two need --data-dir)")
    parser.add_argument("--data-dir", help="local folder of cifar10 / segmentation data")
    parser.add_argument("--model", help="default: mlp on digits, resnet32 on cifar10, "
                        "unet on segmentation")


def default_model(data: str, model: str | None) -> str:
    return model or {"cifar10": "resnet32", "segmentation": "unet"}.get(data, "mlp")


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
