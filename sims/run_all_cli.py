"""The command line the ``sims/*/run_all.py`` reports share: run the experiments (or
read them back from ``results.json``) and write RESULTS.md, results.json and the plots.

    python sims/<name>/run_all.py                 # the full run, into sims/<name>/
    python sims/<name>/run_all.py --quick         # a CI-size check, into its quick/
    python sims/<name>/run_all.py --from-results  # rebuild the report from results.json

A quick run writes under the git-ignored ``quick/`` so that a check never overwrites
the committed results. Compiled programs are cached in the script's CACHE folder
(git-ignored) unless ``--no-compile-cache``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path


def output_dir(here: Path, quick: bool, out: str | Path | None = None) -> Path:
    """Where a report goes: ``out``, else ``here``, or its git-ignored ``quick/`` for a
    quick run."""
    if out is not None:
        return Path(out)
    return here / "quick" if quick else here


def save_figure(fig, path: Path) -> None:
    """Lays out, saves (110 dpi, the folder made) and closes a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(res: dict, out: Path, mode: str, argv: list[str], *,
          paths: Callable[[Path], dict[str, Path]], draw: Callable[[dict, dict], None],
          markdown: Callable[[dict, str, list[str]], str],
          indent: int | None = None) -> dict[str, Path]:
    """results.json (NaN kept), the plots (``draw(res, paths)``) and RESULTS.md under
    ``out``; returns the paths."""
    p = paths(out)
    out.mkdir(parents=True, exist_ok=True)
    p["results"].write_text(json.dumps(res, indent=indent, allow_nan=True) + "\n",
                            encoding="utf-8")
    draw(res, p)
    p["report"].write_text(markdown(res, mode, argv), encoding="utf-8")
    return p


def main(argv: list[str] | None, *, doc: str, here: Path, cache: Path,
         paths: Callable[[Path], dict[str, Path]], get_config: Callable[[bool], dict],
         run: Callable[..., dict], draw: Callable[[dict, dict], None],
         markdown: Callable[[dict, str, list[str]], str], indent: int | None = None) -> int:
    """Parses ``argv`` and runs (or reloads) and writes one report (:func:`write`).

    Args:
      doc: the script's docstring (its first line is the description).
      here: the script's folder (the default output; ``quick/`` under it).
      cache: the folder of the persistent compilation cache.
      paths: ``out -> {"results": ..., "report": ..., ...}``, every file written.
      get_config: ``quick -> options``.
      run: ``(options, log=...) -> results`` (a dict with ``walls``).
      draw: ``(results, paths) -> None``, every plot.
      markdown: ``(results, mode, argv) -> RESULTS.md``.
      indent: results.json's indent (None: one line).

    Returns:
      0, or 2 (one line on stderr) when ``--from-results`` finds no results.json.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a CI-size check into quick/")
    parser.add_argument("--out", type=Path, help="output folder (default: the script's "
                        "folder; quick/ under it with --quick)")
    parser.add_argument("--from-results", action="store_true",
                        help="rebuild RESULTS.md and the plots from OUT/results.json")
    parser.add_argument("--no-compile-cache", action="store_true",
                        help="compile every run afresh")
    args = parser.parse_args(argv)
    out = output_dir(here, args.quick, args.out)
    mode = "quick" if args.quick else "full"
    if args.from_results:
        f = paths(out)["results"]
        if not f.is_file():
            print(f"run_all: error: {f} does not exist; run without --from-results first.",
                  file=sys.stderr)
            return 2
        res = json.loads(f.read_text(encoding="utf-8"))
        argv, mode = res.get("argv", []), res.get("mode", mode)
    else:
        import jax

        if not args.no_compile_cache:
            cache.mkdir(parents=True, exist_ok=True)
            jax.config.update("jax_compilation_cache_dir", str(cache))
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        t0 = time.perf_counter()
        res = run(get_config(args.quick),
                  log=lambda s: print(f"[{time.strftime('%H:%M:%S')}] {s}", flush=True))
        res["walls"]["total"] = time.perf_counter() - t0
        res.update(argv=argv, mode=mode, jax=jax.__version__,
                   date=datetime.datetime.now(datetime.timezone.utc).strftime(
                       "%Y-%m-%d %H:%M UTC"))
    p = write(res, out, mode, argv, paths=paths, draw=draw, markdown=markdown, indent=indent)
    committed = paths(here)["report"].relative_to(here.parents[1])  # sims/<name>/RESULTS.md
    print(f"wrote {p['report']}" + (f" (a quick run; the committed {committed} is unchanged)"
                                     if args.quick and out != here else ""))
    return 0


__all__ = ["output_dir", "save_figure", "write", "main"]
