"""Loading a ``sims/<folder>`` script as a module in a test, without leaving its folder
on sys.path or its sibling modules in sys.modules."""

import importlib.util
import sys
from pathlib import Path

SIMS = Path(__file__).resolve().parents[1] / "sims"


def load(folder: str, name: str):
    """``sims/<folder>/<name>.py`` as a module; sys.path and the modules it imports from
    that folder are put back afterwards."""
    here = SIMS / folder
    path_before, modules_before = list(sys.path), set(sys.modules)
    sys.path.insert(0, str(here))
    spec = importlib.util.spec_from_file_location(f"_{folder}_{name}", here / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path_before
        for key in set(sys.modules) - modules_before:
            if str(getattr(sys.modules[key], "__file__", "") or "").startswith(str(here)):
                del sys.modules[key]
    return module
