"""Shared benchmark helpers: machine description, interleaved timing, compile count, RSS.

Figures are ratios against a baseline run in the same process, timed in turn so
both see the same load (the box may be shared), plus medians and minimums.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import jax
import jax.monitoring

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles: list[tuple[str, float]] = []


def _on_duration(event: str, duration: float, **kwargs) -> None:
    if event == BACKEND_COMPILE_EVENT:
        _compiles.append((str(kwargs.get("fun_name", "?")), duration))


jax.monitoring.register_event_duration_secs_listener(_on_duration)


def compile_count() -> int:
    """XLA compilations in this process so far (jax.monitoring's backend-compile event)."""
    return len(_compiles)


def compiles_since(start: int) -> list[tuple[str, float]]:
    """(function name, seconds) of each compilation after ``compile_count() == start``."""
    return list(_compiles[start:])


def machine() -> dict:
    """CPU model, cores, memory, jax version, devices and the date (UTC)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            mem_gib = int(f.readline().split()[1]) / 2**20
    except (OSError, IndexError, ValueError):
        pass
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem_gib,
        "platform": platform.platform(), "python": platform.python_version(),
        "jax": jax.__version__, "devices": [str(d) for d in jax.devices()],
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_avg_1m": os.getloadavg()[0],
    }


def timed(fn, *args):
    """(fn(*args), seconds), waiting for the result."""
    t0 = time.perf_counter()
    out = fn(*args)
    jax.block_until_ready(out)
    return out, time.perf_counter() - t0


def warm_compiler() -> None:
    """Compiles a tiny function, so that XLA's one-time set-up is not billed to the
    first program whose compile time is measured."""
    jax.jit(lambda x: x * 2 + 1).lower(1.0).compile()


def compile_time(jitted, *args) -> tuple[float, float]:
    """(wall, process CPU) seconds of tracing, lowering and compiling ``jitted(*args)``.

    The CPU time is less disturbed by other jobs on a shared box."""
    w0, c0 = time.perf_counter(), time.process_time()
    jitted.lower(*args).compile()
    return time.perf_counter() - w0, time.process_time() - c0


def stats(ts: list[float]) -> dict:
    return {"median_s": statistics.median(ts), "min_s": min(ts), "n": len(ts)}


def rss_mib() -> float:
    """Current resident set size (VmRSS) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    """Peak resident set size of this process image (VmHWM) in MiB.

    Not ``ru_maxrss``: that high-water mark survives fork and exec, so a child
    started by a large parent would report the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def spawn(script: str, *args: str, timeout: float | None = None) -> dict:
    """Runs ``python script --child ARGS`` in a fresh process (this folder on its path)
    and returns the JSON object on the last line of its output."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": here + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, os.path.abspath(script), "--child", *args],
                         capture_output=True, text=True, env=env, check=False,
                         timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{os.path.basename(script)} child {args} failed:\n"
                           f"{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def save_json(res, path: str | None) -> None:
    """Writes ``res`` to ``path`` as indented JSON (nothing when ``path`` is None)."""
    if path:
        with open(path, "w") as f:
            json.dump(res, f, indent=1)
