"""``fedf attack``: run one privacy experiment and write its result files.

Wired into ``fedf`` through :func:`add_arguments` and :func:`main` (as ``fedf report``);
``python -m fedf_jax.privacy.cli`` runs it alone.
"""

from __future__ import annotations

import argparse
import sys

HELP = "run a privacy attack experiment (E1-E12) against FEDF, FedAvg and defences"
DESCRIPTION = ("Run one privacy experiment: each adversary (the master, a curious worker, "
               "colluders) sees exactly the messages of the protocol; the result holds the "
               "claim under test, the falsification criterion fixed before the run, the "
               "measured cells with 95 % intervals over seeds, and the verdict.")
EPILOG = """\
experiments:
  E1 master inverts the pilot's update    E6 curious worker reads P^t - P^{t-1}
  E2 class leakage from ternaries         E7 collusion (N-1 and N-2 workers)
  E3 reconstruction from ternaries        E8 lying colluders (costs, sizes)
  E4 membership inference                 E9 defences (DP, pilot noise) and audit
  E5 property inference                   E10 the secure-sum master
                                          E11 the hierarchy (group and top master)
                                          E12 guarding the pilot choice
arms: fedavg, signfedavg, fedf+1, fedf-1, optionally +dp<eps> or +pilotnoise<sigma>
examples:
  fedf attack --experiment E7 --quick --out runs/e7
  fedf attack --experiment E1 --seeds 5 --arms fedavg,fedf+1 --out runs/e1
  fedf attack --experiment E2 --data cifar10 --data-dir ~/data/cifar10
"""


def _arms(text: str) -> tuple[str, ...]:
    return tuple(a.strip() for a in text.split(",") if a.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``fedf attack``."""
    parser.add_argument("--experiment", required=True, metavar="E",
                        help="which experiment: E1 ... E12")
    parser.add_argument("--quick", action="store_true",
                        help="a CI-size check: 2 seeds, n_k in {1, 4}, 1 local epoch, batch 8")
    parser.add_argument("--seeds", type=int, help="independent repetitions (default 5)")
    parser.add_argument("--arms", type=_arms,
                        help="comma-separated arms (default fedavg,signfedavg,fedf+1,fedf-1)")
    parser.add_argument("--workers", type=int, help="N (default 5)")
    parser.add_argument("--rounds", type=int, help="global epochs observed (default 3)")
    parser.add_argument("--data", choices=("digits", "cifar10"),
                        help="data set (default digits, bundled)")
    parser.add_argument("--data-dir", help="folder of a data set that is not bundled")
    parser.add_argument("--seed0", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--out", help="folder for result.json and result.md")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedf attack", description=DESCRIPTION,
                                     epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser


def main(args: argparse.Namespace | list[str] | None = None) -> int:
    """Runs the experiment of ``args``; prints its table and verdict. Returns the exit
    code (2 with a one-line error for bad input)."""
    if not isinstance(args, argparse.Namespace):
        args = build_parser().parse_args(args)
    from fedf_jax.privacy import experiments

    try:
        module = experiments.get(args.experiment)
        data = args.data or ("cifar10" if args.data_dir else None)
        opts = experiments.make_options(
            quick=args.quick, seeds=args.seeds, arms=args.arms, workers=args.workers,
            rounds=args.rounds, data=data, data_dir=args.data_dir)
        name = args.experiment.strip().upper()
        print(f"fedf attack: {name} {module.TITLE}", file=sys.stderr)
        result = experiments.run_experiment(
            name, opts, args.seed0, lambda msg: print(f"  {msg}", file=sys.stderr), args.out)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        print(f"fedf: error: {e}", file=sys.stderr)
        return 2
    print(result.to_markdown())
    if args.out:
        print(f"fedf attack: wrote {args.out}/result.json and result.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
