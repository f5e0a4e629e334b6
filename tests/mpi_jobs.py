"""Running ``fedf train`` under mpiexec in the MPI tests (not a test module)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedf_jax import cli

FAULTS = Path(__file__).with_name("mpi_faults.py")
VOLATILE = ("wall_s", "modeled_s")


def _mpiexec() -> str | None:
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


MPIEXEC = _mpiexec()
needs_mpiexec = pytest.mark.skipif(
    MPIEXEC is None, reason="no mpiexec next to the Python executable or on PATH "
    "(pip install mpich, or a system MPI)")


def env(devices: int | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def train(out: Path, *flags: str, ranks: int = 3, fault: str | None = None,
           timeout: float = 240, devices: int | None = None) -> subprocess.CompletedProcess:
    """``fedf train`` under mpiexec (with ``fault`` injected by tests/mpi_faults.py); a
    job that neither finishes nor aborts within ``timeout`` fails the test."""
    entry = ["-m", "fedf_jax.cli", "train"] if fault is None else [str(FAULTS), fault]
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "mpi4py", *entry,
           "--quiet", "--out", str(out), "--force", *flags]
    return subprocess.run(cmd, env=env(devices), capture_output=True, text=True,
                          timeout=timeout)


def module_job(tmp_path_factory, name: str, *flags: str, **kw) -> Path:
    """A module fixture's ``fedf train`` job in a fresh folder ``name`` (skips the
    module's MPI tests when there is no mpiexec); returns the folder."""
    if MPIEXEC is None:
        pytest.skip("no mpiexec")
    out = tmp_path_factory.mktemp(name)
    ok(train(out, *flags, **kw))
    return out


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"rc {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def config_of(*flags: str):
    args = cli.build_parser().parse_args(["simulate", *flags])
    return cli.make_config(args)


def strip(records):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]
