"""The ``fedf`` command.

``fedf simulate`` runs FEDF with every worker simulated on this machine (one
jitted, vmapped step per global epoch), prints a per-epoch table and a summary,
and writes the JSONL run log. Known errors print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from fedf_jax import config as config_lib

EPILOG = """\
examples:
  fedf simulate                                   # digits, MLP, 5 workers, 30 epochs
  fedf simulate --workers 3 --direction -1        # Eq. (3) with the sign as printed
  fedf simulate --partition label-dirichlet --dirichlet-alpha 0.3 --centralized
  fedf simulate --config workers.toml --out runs/hetero
  fedf simulate --algorithm fedavg --fraction 0.5  # a baseline on the same data and log
  fedf report runs/                               # tables and plots from run logs

A config file (JSON or TOML) sets any option by its long name with '_' for '-'
and may give each worker its own private spec:
  [[worker]]
  lr = 0.05
  optimizer = "sgd"
  [[worker]]
  lr = 0.001
  optimizer = "adam"
  batch_size = 32
Flags given on the command line override the file.
"""


def _csv(kind):
    def parse(text: str):
        try:
            values = tuple(kind(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of "
                                             f"{kind.__name__}") from None
        return values[0] if len(values) == 1 and kind is float else values
    return parse


def _direction(text: str) -> int:
    if text not in ("1", "+1", "-1"):
        raise argparse.ArgumentTypeError(f"{text!r} must be +1 or -1")
    return int(text)


class _Parser(argparse.ArgumentParser):
    """Prints a bad flag as one line (not the whole usage) and exits with code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fedf", description="FEDF: privacy-preserving parallel federated learning.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sim = sub.add_parser(
        "simulate", help="simulate FEDF with all workers on this machine",
        description="Simulate FEDF: N workers train on private shards with private "
        "hyper-parameters; each epoch the master picks a pilot by goodness (Eq. 1), the "
        "pilot sends its model, the others a packed ternary vector (Eq. 4/5), and the "
        "master combines them (Eq. 3).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_flags(sim)
    train = sub.add_parser(
        "train", help="train FEDF over MPI: mpiexec -n K fedf train [flags]",
        description="Train FEDF over MPI: rank 0 is the master, ranks 1..K-1 hold the "
        "workers (--workers N in all, spread as evenly as possible); the run log is the "
        "one of `fedf simulate`. Takes every flag of `fedf simulate`, plus the MPI ones.",
        epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_flags(train)
    _add_report(sub)
    _add_attack(sub)
    g = train.add_argument_group("MPI")
    g.add_argument("--timeout", type=float,
                   help="seconds any rank waits for a message before the job is aborted, "
                   "naming the silent rank; must exceed the slowest local training of an "
                   "epoch (default 300)")
    g.add_argument("--checkpoint-every", type=int, metavar="E",
                   help="checkpoint every E epochs into OUT/checkpoint (default: never)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint")
    return parser


def _add_report(sub) -> None:
    from analysis import report

    rep = sub.add_parser("report", help=report.HELP, description=report.DESCRIPTION,
                         epilog=report.EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    report.add_arguments(rep)


def _add_attack(sub) -> None:
    from fedf_jax.privacy import cli as privacy_cli

    att = sub.add_parser("attack", help=privacy_cli.HELP, description=privacy_cli.DESCRIPTION,
                         epilog=privacy_cli.EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    privacy_cli.add_arguments(att)


def _add_run_flags(sim: argparse.ArgumentParser) -> None:
    """The flags of a run, shared by ``simulate`` and ``train``."""
    d = config_lib.RunConfig()
    w = d.default_worker
    g = sim.add_argument_group("federation")
    g.add_argument("--algorithm", choices=config_lib.ALGORITHMS,
                   help="fedf (default); or a baseline on the same data, model and run log: "
                   "fedavg (example-weighted model averaging), phong (the model visits the "
                   "workers in turn; Phong and Phuong), terngrad (synchronous SGD with "
                   "stochastic ternary gradients; Wen et al.), central (one worker holding "
                   "all the data)")
    g.add_argument("--fraction", type=float,
                   help="fedavg: fraction C of the workers sampled each round (default 1)")
    g.add_argument("--workers", type=int, help=f"number of workers N (default {d.workers})")
    g.add_argument("--epochs", type=int, help=f"global epochs (default {d.epochs})")
    g.add_argument("--alpha0", type=float,
                   help=f"master's learning rate alpha0, Eq. (3) at t=1 (default {d.alpha0})")
    g.add_argument("--beta", type=_csv(float),
                   help="threshold beta_k in (0,1), Eq. (5): one value or one per worker, "
                   f"comma-separated (default {d.beta})")
    g.add_argument("--direction", type=_direction,
                   help="sign d of Eq. (3): +1 (default, Appendix A) or -1 (as printed)")
    g.add_argument("--scheme", choices=("2bit", "base3"),
                   help="ternary packing: 2bit (the paper's, 4 per byte; default) or "
                   "base3 (5 per byte, 20%% smaller)")
    g.add_argument("--seed", type=int, help=f"root seed of the run (default {d.seed})")
    g = sim.add_argument_group("model and data")
    g.add_argument("--model", help=f"model: {', '.join(config_lib.MODELS)} (default {d.model})")
    g.add_argument("--data", help=f"data set: {', '.join(config_lib.DATASETS)} "
                   "(default digits, bundled; synthetic-seg for --model unet)")
    g.add_argument("--data-dir", help="local directory of a data set that is not bundled "
                   "(cifar10: a folder with cifar-10-batches-bin or -py; segmentation: "
                   "images/ + masks/ or ISBI train-volume.tif + train-labels.tif)")
    g.add_argument("--width", type=int,
                   help="U-Net base width (default 64, the classic U-Net; 8 on synthetic-seg)")
    g.add_argument("--image-size", type=_csv(int),
                   help="segmentation: resize images and masks to H,W")
    g.add_argument("--tile", type=int, help="segmentation: cut images into TxT tiles")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop and flip of training images (default: on for cifar10)")
    g.add_argument("--partition",
                   help=f"how data is split: {', '.join(config_lib.PARTITIONS)} "
                   f"(default {d.partition})")
    g.add_argument("--sizes", type=_csv(int),
                   help="worker sizes for --partition sizes, comma-separated")
    g.add_argument("--dirichlet-alpha", type=float,
                   help="Dirichlet concentration of the dirichlet partitions "
                   f"(default {d.dirichlet_alpha}; smaller = more skewed)")
    g = sim.add_argument_group("private worker spec (all workers; a config file can "
                               "give each worker its own)")
    g.add_argument("--lr", type=float, help=f"learning rate alpha_k (default {w.lr})")
    g.add_argument("--batch-size", type=int, help=f"mini-batch size (default {w.batch_size})")
    g.add_argument("--local-epochs", type=int,
                   help=f"local passes per global epoch (default {w.local_epochs})")
    g.add_argument("--optimizer", help=f"sgd, momentum or adam (default {w.optimizer})")
    g.add_argument("--momentum", type=float, help=f"momentum coefficient (default {w.momentum})")
    g = sim.add_argument_group("run")
    g.add_argument("--config", help="JSON or TOML file of options and per-worker specs")
    g.add_argument("--out", help="output directory for run.jsonl (default runs/<time>-seed<S>)")
    g.add_argument("--centralized", action="store_true",
                   help="also train centrally (same model, data, loop) and compare")
    g.add_argument("--bandwidth", type=float,
                   help=f"master link in bytes/s for the timing model (default {d.bandwidth:g})")
    g.add_argument("--latency", type=float,
                   help=f"seconds per message round in the timing model (default {d.latency:g})")
    g.add_argument("--backend", choices=config_lib.BACKENDS,
                   help="vmap: all workers batched on one device (default); sharded: workers "
                   "spread over the local devices with shard_map")
    g.add_argument("--devices", type=int,
                   help="with --backend sharded: use the first K local devices (default all)")
    g.add_argument("--scan-epochs", type=int, metavar="E",
                   help="fedf on the vmap backend: run E epochs per jitted call (one "
                   "lax.scan; same run log, fewer host round trips; default 1)")
    g.add_argument("--quiet", action="store_true", help="print only the summary")


_WORKER_FLAGS = ("lr", "batch_size", "local_epochs", "optimizer", "momentum")
_RUN_FLAGS = ("workers", "epochs", "model", "data", "data_dir", "partition", "sizes",
              "dirichlet_alpha", "alpha0", "beta", "direction", "scheme", "seed",
              "bandwidth", "latency", "backend", "devices", "width", "augment",
              "image_size", "tile", "algorithm", "fraction", "scan_epochs")


def make_config(args: argparse.Namespace) -> config_lib.RunConfig:
    """Config file values, overridden by the flags that were given."""
    import dataclasses

    from fedf_jax.worker import WorkerSpec

    kwargs = config_lib.load_file(args.config) if args.config else {}
    kwargs.update({k: getattr(args, k) for k in _RUN_FLAGS if getattr(args, k) is not None})
    if kwargs.get("partition") == "sizes" or kwargs.get("sizes") is not None:
        kwargs.setdefault("partition", "sizes")
    overrides = {k: getattr(args, k) for k in _WORKER_FLAGS if getattr(args, k) is not None}
    if overrides:
        kwargs["default_worker"] = dataclasses.replace(
            kwargs.get("default_worker", WorkerSpec()), **overrides)
        if kwargs.get("worker_specs"):
            kwargs["worker_specs"] = tuple(dataclasses.replace(s, **overrides)
                                           for s in kwargs["worker_specs"])
    if "sizes" in kwargs and kwargs["sizes"] is not None and "workers" not in kwargs:
        kwargs["workers"] = len(kwargs["sizes"])
    try:
        return config_lib.RunConfig(**kwargs)
    except TypeError as e:  # a wrong type in a config file
        raise ValueError(f"bad config: {e}") from None


TRAIN_EPILOG = """\
examples:
  mpiexec -n 4 fedf train --workers 6 --out runs/mpi         # 3 worker ranks, 2 workers each
  mpiexec -n 4 fedf train --out runs/mpi --checkpoint-every 5
  mpiexec -n 4 fedf train --out runs/mpi --checkpoint-every 5 --resume
  mpiexec -n 3 python -m mpi4py -m fedf_jax.cli train --workers 2

Any error on any rank ends the whole job (MPI_Abort) with a message naming the rank.
"""


def train(args: argparse.Namespace) -> int:
    """``fedf train``: thin; the MPI backend does the work (fedf_jax/backends/mpi.py)."""
    from mpi4py import MPI

    from fedf_jax.backends import mpi

    mpi.install_excepthook()
    rank = MPI.COMM_WORLD.Get_rank()
    say = print if rank == 0 and not args.quiet else (lambda *a, **k: None)
    try:  # the same flags on every rank: a bad one fails alike everywhere, say it once
        cfg = make_config(args)
        if args.centralized:
            raise ValueError("--centralized is for `fedf simulate`.")
        if cfg.algorithm != "fedf" or cfg.scan_epochs > 1:
            raise ValueError("`fedf train` runs FEDF epoch by epoch; --algorithm and "
                             "--scan-epochs are for `fedf simulate`.")
        mpi.split_workers(cfg.workers, MPI.COMM_WORLD.Get_size())
        if args.resume and not args.out:
            raise ValueError("--resume needs the --out directory of the run to continue.")
        if args.timeout is not None and not args.timeout > 0:
            raise ValueError(f"--timeout (={args.timeout}) must be a positive number.")
        if args.checkpoint_every is not None and args.checkpoint_every < 1:
            raise ValueError(f"--checkpoint-every (={args.checkpoint_every}) must be >= 1.")
    except ValueError as e:
        if rank == 0:
            print(f"fedf: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("runs") / (
        time.strftime("%Y%m%d-%H%M%S") + f"-seed{cfg.seed}")  # rank 0's name is used

    def setup(h):
        say(f"FEDF over MPI on {cfg.data}: {cfg.workers} workers on {h['ranks'] - 1} worker "
            f"ranks (+ master rank 0), {cfg.model.upper()} with {h['num_params']:,} "
            f"parameters, {cfg.epochs} epochs, d = {cfg.direction:+d}, {cfg.scheme} ternaries"
            + (f"; resuming at epoch {h['first_epoch']}" if h["first_epoch"] > 1 else ""))
        say(f"{'epoch':>5} {'pilot':>5} {'test acc':>8} {'test loss':>9} {'bytes':>12} "
            f"{'mpi bytes':>12} {'dropped':>7} {'wall s':>7}", flush=True)

    def row(rec):
        say(f"{rec['epoch']:>5} {rec['pilot']:>5} {rec['test_accuracy']:>8.4f} "
            f"{rec['test_loss']:>9.4f} {rec['bytes_total']:>12,} {rec['mpi_bytes']:>12,} "
            f"{len(rec['dropped_frames']):>7} {rec['wall_s']:>7.3f}", flush=True)

    try:
        result = mpi.run(cfg, out, timeout=args.timeout or mpi.DEFAULT_TIMEOUT,
                         checkpoint_every=args.checkpoint_every, resume=args.resume,
                         on_setup=setup, on_epoch=row)
    except mpi.ResumeError as e:
        if rank == 0:
            print(f"fedf: error: {e}", file=sys.stderr)
        return 2
    if rank == 0:
        print(f"final test accuracy   {result['final_test_accuracy']:.4f} "
              f"(best {result['best_test_accuracy']:.4f})")
        print(f"bytes                 {_fmt_bytes(result['bytes_total'])} counted as "
              f"deployed; {_fmt_bytes(result['mpi_bytes_total'])} moved by MPI")
        print(f"time                  {result['wall_s']:.1f} s")
        print(f"run log               {out / 'run.jsonl'}; final model "
              f"{out / 'final_model.npy'}")
    return 0


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


def simulate(args: argparse.Namespace) -> int:
    cfg = make_config(args)
    import jax

    from fedf_jax import simulation
    from fedf_jax.baselines import centralized

    out = Path(args.out) if args.out else Path("runs") / (
        time.strftime("%Y%m%d-%H%M%S") + f"-seed{cfg.seed}")
    say = (lambda *a, **k: None) if args.quiet else print
    setup = simulation.setup(cfg)
    if cfg.backend == "sharded":
        from fedf_jax.backends import sharded

        sharded.make_mesh(cfg.devices)  # a bad device count fails before any output
    what = {"fedf": f"d = {cfg.direction:+d}, {cfg.scheme} ternaries",
            "fedavg": f"C = {cfg.fraction:g}", "phong": "sequential", "terngrad": "2-bit",
            "central": f"all {len(setup.union)} samples on one worker"}[cfg.algorithm]
    say(f"{NAMES[cfg.algorithm]} on {cfg.data}: {cfg.workers} workers ({cfg.partition}, "
        f"sizes {_short(setup.sizes.tolist())}), {cfg.model.upper()} with "
        f"{setup.model.num_params:,} parameters, {cfg.epochs} epochs, {what}, "
        f"{cfg.backend} backend on "
        f"{cfg.devices or (len(jax.local_devices()) if cfg.backend == 'sharded' else 1)} "
        f"{jax.devices()[0].platform.upper()} device(s)")
    say("compiling ...", flush=True)
    say(f"{'epoch':>5} {'pilot':>5} {'test acc':>8} {'test loss':>9} {'bytes':>12} "
        f"{'nonzero':>7} {'wall s':>7}")

    def row(rec):
        nz = rec["ternary_nonzero_fraction"]
        say(f"{rec['epoch']:>5} {rec['pilot'] if rec['pilot'] >= 0 else '-':>5} "
            f"{rec['test_accuracy']:>8.4f} {rec['test_loss']:>9.4f} {rec['bytes_total']:>12,} "
            f"{f'{100 * nz:.1f}%' if nz == nz else '-':>7} {rec['wall_s']:>7.3f}", flush=True)

    result = simulation.run(cfg, out, on_epoch=row)
    print(f"final test accuracy   {result['final_test_accuracy']:.4f} "
          f"(best {result['best_test_accuracy']:.4f})")
    if args.centralized:
        ds, idx = setup.dataset, setup.union
        recs = centralized.run(setup.model, cfg.specs[0], ds.x_train[idx], ds.y_train[idx],
                               setup.dataset.x_test, setup.dataset.y_test, setup.p0,
                               simulation.root_keys(cfg.seed)[1], cfg.epochs)
        print(f"centralized accuracy  {recs[-1]['test_accuracy']:.4f} (same model, data and "
              f"loop, one worker with all {len(idx)} samples)")
    eq8, counted = result["eq8_bytes_per_epoch"], result["bytes_per_epoch_payload"]
    if cfg.algorithm == "fedf":
        check = "equal" if counted == eq8 else (
            f"+{counted - eq8:.0f} B: each ternary rounds up to whole bytes")
        print(f"bytes                 {_fmt_bytes(result['bytes_total'])} in all; per epoch "
              f"{counted:,} payload vs Eq. (8) {eq8:,.1f} ({check})")
    else:
        print(f"bytes                 {_fmt_bytes(result['bytes_total'])} in all; "
              f"{_fmt_bytes(result['bytes_per_epoch'])} per epoch (FEDF's Eq. 8: "
              f"{_fmt_bytes(eq8)})")
    print(f"time                  {result['wall_s']:.1f} s training + "
          f"{result['compile_s']:.1f} s compiling here; {result['modeled_s']:.2f} s modeled "
          "deployed")
    print(f"run log               {out / 'run.jsonl'}")
    return 0


NAMES = {"fedf": "FEDF", "fedavg": "FedAvg", "phong": "Phong et al.", "terngrad": "TernGrad",
         "central": "Centralized training"}


def _short(values: list, limit: int = 8) -> str:
    if len(values) <= limit:
        return ",".join(map(str, values))
    return ",".join(map(str, values[:limit])) + f",... ({len(values)})"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="fedf: %(message)s")
    try:
        if args.command == "simulate":
            return simulate(args)
        if args.command == "train":
            return train(args)
        if args.command == "report":
            from analysis import report

            return report.main(args)
        if args.command == "attack":
            from fedf_jax.privacy import cli as privacy_cli

            return privacy_cli.main(args)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        print(f"fedf: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedf: interrupted; the run log keeps every finished epoch", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
