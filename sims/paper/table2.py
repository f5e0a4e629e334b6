"""Table 2 analog (and the runs behind Figs. 2 and 4): centralized training vs FEDF
with 3, 4 and 5 workers, both signs of Eq. (3), several seeds; and the baselines
(FedAvg, Phong et al., TernGrad) on the same splits.

    python sims/paper/table2.py                     # digits, MLP, 30 epochs, 3 seeds
    python sims/paper/table2.py --data cifar10 --data-dir ~/data/cifar10 --epochs 50
    python sims/paper/table2.py --quick             # 2 seeds, 8 epochs: a smoke run

Run logs go to ``--runs`` (default runs/paper/<data>-<model>); then ``fedf report``
writes the tables and figures into ``--report`` (default sims/paper/<data>-<model>).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grid import data_args, default_model, fail, run_grid  # noqa: E402

from analysis import report  # noqa: E402
from fedf_jax import config  # noqa: E402
from fedf_jax.config import RunConfig  # noqa: E402

BASELINES = ("fedavg", "phong", "terngrad")


def grid(data: str, data_dir: str | None, model: str, epochs: int, seeds: int,
         workers: tuple[int, ...], baselines: bool) -> list[tuple[str, RunConfig]]:
    """(name, config) of every run of the table."""
    base = {"data": data, "data_dir": data_dir, "model": model, "epochs": epochs}
    runs = []
    for seed in range(seeds):
        # Centralized: the union of the largest split's workers (the whole training set).
        runs.append((f"central/seed{seed}",
                     config.make(**base, workers=max(workers), seed=seed, algorithm="central")))
        for n in workers:
            for d in (1, -1):
                runs.append((f"fedf_d{d:+d}/n{n}/seed{seed}",
                             config.make(**base, workers=n, seed=seed, direction=d)))
            for alg in BASELINES if baselines else ():
                runs.append((f"{alg}/n{n}/seed{seed}",
                             config.make(**base, workers=n, seed=seed, algorithm=alg)))
    return runs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    data_args(p)
    p.add_argument("--epochs", type=int, default=30, help="global epochs (default 30)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per cell (default 3)")
    p.add_argument("--workers", default="3,4,5", help="worker counts (default 3,4,5)")
    p.add_argument("--no-baselines", action="store_true", help="FEDF and centralized only")
    p.add_argument("--quick", action="store_true", help="2 seeds, 8 epochs")
    p.add_argument("--runs", help="folder of the run logs")
    p.add_argument("--report", help="folder of the tables and figures")
    args = p.parse_args(argv)
    model = default_model(args.data, args.model)
    if args.quick:
        args.seeds, args.epochs = 2, 8
    try:
        workers = tuple(int(v) for v in args.workers.split(","))
    except ValueError:
        fail(f"--workers (={args.workers!r}) must be comma-separated integers")
    if args.seeds < 1:
        fail(f"--seeds (={args.seeds}) must be >= 1")
    tag = f"{args.data}-{model}"
    runs_dir = Path(args.runs or Path("runs") / "paper" / tag)
    out = Path(args.report or Path(__file__).resolve().parent / tag)
    try:
        dirs = run_grid(grid(args.data, args.data_dir, model, args.epochs, args.seeds,
                             workers, not args.no_baselines), runs_dir)
        rep = report.make_report(dirs, out, title=f"FEDF vs centralized training and "
                                 f"baselines: {args.data}, {model}, {args.epochs} epochs, "
                                 f"{args.seeds} seeds")
    except ValueError as e:
        fail(str(e))
    print(rep["tables"])
    print(f"\nrun logs in {runs_dir}/, tables and figures in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
