"""Runs the asynchronous-schedule experiments and writes RESULTS.md, results.json and
four plots.

    python sims/async/run_all.py                 # about 20 min on 2 busy shared CPU cores
    python sims/async/run_all.py --quick         # a CI-size check (about 1 min), into quick/
    python sims/async/run_all.py --from-results  # rebuild the report from results.json

Parts (each script also runs alone; ``budget.py`` holds what they share;
``figures.py``, ``verdicts.py`` and ``report.py`` turn the results into the plots,
the verdicts and RESULTS.md):

1. ``race.py``: time to a target accuracy on digits (FedAvg, FEDF) of the synchronous
   run against FedAsync, FedBuff and asynchronous FEDF, with one group four times
   slower and with lognormal worker speeds, on one virtual-time budget;
2. ``svm_race.py``: ADMM linear SVM, synchronous against partial-barrier asynchronous
   ADMM with one slow sender: time to the optimal objective within 1e-3;
3. ``staleness.py``: final accuracy against the staleness bound S.

OUT (``--out``) defaults to this folder, or to its git-ignored ``quick/`` with
--quick. Compiled programs are cached in runs/async/xla-cache (git-ignored).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import figures  # noqa: E402
import race  # noqa: E402
import report  # noqa: E402
import run_all_cli  # noqa: E402
import staleness  # noqa: E402
import svm_race  # noqa: E402
import verdicts  # noqa: E402, F401  (run_all.verdicts: the verdicts' module)

CACHE = HERE.parents[1] / "runs" / "async" / "xla-cache"


def output_dir(quick: bool, out: str | Path | None = None) -> Path:
    """``out``, else this folder, or its git-ignored ``quick/`` for a quick run."""
    return run_all_cli.output_dir(HERE, quick, out)


def paths(out: Path) -> dict[str, Path]:
    """Every file this script writes, under ``out``."""
    return {"results": out / "results.json", "report": out / "RESULTS.md",
            "race_png": out / "race.png", "speedup_png": out / "speedup.png",
            "svm_png": out / "svm.png", "staleness_png": out / "staleness.png"}


def get_config(quick: bool = False) -> dict:
    """The experiment's options (flax-style entry point)."""
    if quick:
        return {"race": {"settings": ["slow-group", "lognormal"], "seeds": 1, "sync_epochs": 4,
                         "only": {"slow-group": ["FedAsync s=const α=1", "FedBuff K=2 s=poly",
                                                 "sync FEDF", "FEDF B=2 s=poly α=0.5"],
                                  "lognormal": ["FedBuff K=4 s=poly"]}},
                "svm": {"data": ["breast-cancer"], "regimes": ["compute-bound"],
                        "layouts": ["flat"], "seeds": 1, "iterations": {"breast-cancer": 60},
                        "only": ["A=5 τ=1", "A=5 τ=4 prox=0"]},
                "staleness": {"bounds": [0, 2], "seeds": 1, "sync_epochs": 4,
                              "algorithms": ["FedAsync (FedAvg)"]}}
    return {"race": {"settings": list(race.SETTINGS), "seeds": 3,
                     "sync_epochs": race.SYNC_EPOCHS, "only": None},
            "svm": {"data": list(svm_race.DATA_SETS), "regimes": list(svm_race.REGIMES),
                    "layouts": list(svm_race.LAYOUTS), "seeds": 2,
                    "iterations": dict(svm_race.ITERATIONS), "only": None},
            "staleness": {"bounds": list(staleness.BOUNDS), "seeds": 3,
                          "sync_epochs": staleness.SYNC_EPOCHS,
                          "algorithms": list(staleness.ALGORITHMS)}}

def run(opts: dict, log=print) -> dict:
    """Every part; the numbers RESULTS.md is written from."""
    walls, res = {}, {"options": opts}
    t0 = time.perf_counter()
    o = opts["race"]
    log("part 1: time to target accuracy ...")
    rows = race.run(tuple(o["settings"]), o["seeds"], o["sync_epochs"], o["only"], log=log)
    res["race"] = race.summarize(rows)
    res["race_curves"] = figures.curves(rows, ("setting", "method"), "test_accuracy")
    walls["race"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    o = opts["svm"]
    log("part 2: ADMM SVM ...")
    out = svm_race.run(tuple(o["data"]), tuple(o["regimes"]), tuple(o["layouts"]), o["seeds"],
                       o["iterations"], o["only"], log=log)
    res["svm_optima"] = out["optima"]
    res["svm"] = svm_race.summarize(out)
    res["svm_curves"] = figures.curves(out["runs"], ("data", "regime", "layout", "variant"),
                                       "gap")
    walls["svm"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    o = opts["staleness"]
    log("part 3: accuracy against the staleness bound ...")
    rows = staleness.run(tuple(o["bounds"]), o["seeds"], o["sync_epochs"],
                         tuple(o["algorithms"]), log=log)
    res["staleness"] = staleness.summarize(rows)
    walls["staleness"] = time.perf_counter() - t0
    res["walls"] = walls
    return res


def main(argv: list[str] | None = None) -> int:
    return run_all_cli.main(argv, doc=__doc__, here=HERE, cache=CACHE, paths=paths,
                            get_config=get_config, run=run, draw=figures.draw,
                            markdown=report.markdown)


if __name__ == "__main__":
    sys.exit(main())
