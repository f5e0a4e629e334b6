"""The ``fedf`` command.

``fedf simulate`` runs FEDF (or a baseline) with every worker simulated on this
machine, prints a per-epoch table and a summary, and writes the JSONL run log and
``final_model.npy``; ``fedf train`` runs it over MPI; ``fedf report`` and ``fedf
attack`` read run logs and run privacy experiments. The run flags come from the
fields of ``fedf_jax.config``. Known errors print one line and exit with code 2;
flags are checked before JAX is imported, so a bad one is answered at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path

from fedf_jax import config as config_lib
from fedf_jax import config_files

EPILOG = """\
examples:
  fedf simulate                                   # digits, MLP, 5 workers, 30 epochs
  fedf simulate --workers 3 --direction -1        # Eq. (3) with the sign as printed
  fedf simulate --partition label-dirichlet --dirichlet-alpha 0.3 --centralized
  fedf simulate --config workers.toml --out runs/hetero
  fedf simulate --algorithm fedavg --fraction 0.5  # a baseline on the same data and log
  fedf report runs/                               # tables and plots from run logs

A config file (JSON or TOML) sets any option by its long name with '_' for '-'
(or in sections [run], [data], [model], [master]) and may give each worker its
own private spec:
  [[worker]]
  lr = 0.05
  optimizer = "sgd"
  [[worker]]
  lr = 0.001
  optimizer = "adam"
  batch_size = 32
Flags given on the command line override the file.
"""

TRAIN_EPILOG = """\
examples:
  mpiexec -n 4 fedf train --workers 6 --out runs/mpi         # 3 worker ranks, 2 workers each
  mpiexec -n 4 fedf train --out runs/mpi --checkpoint-every 5
  mpiexec -n 4 fedf train --out runs/mpi --checkpoint-every 5 --resume
  mpiexec -n 3 python -m mpi4py -m fedf_jax.cli train --workers 2

Any error on any rank ends the whole job (MPI_Abort) with a message naming the rank.
"""

# Sections of the run flags in --help, and the fields each shows.
_GROUPS = (("federation", ("run", "master", "workers"),
            ("algorithm", "fraction", "workers", "epochs", "alpha0", "beta", "direction",
             "scheme", "seed", "groups", "group_epochs", "secure_sum", "paillier_bits",
             "pilot_guard")),
           ("ADMM linear SVM (--algorithm admm-svm)", ("master",),
            ("svm_c", "rho", "tol", "prox")),
           ("model and data", ("model", "data"), None),
           ("run", ("run",), ("bandwidth", "latency", "group_bandwidth", "group_latency",
                              "backend", "devices", "scan_epochs", "worker_chunk")),
           ("asynchronous top level (--schedule async)", ("run",),
            ("schedule", "speeds", "staleness", "stale_policy", "staleness_fn", "buffer",
             "mixing", "unit_seconds")),
           ("wire (fedf train)", ("run",), ("wire", "key_file")))
_FILE_ONLY = ("worker_specs", "default_worker", "group_workers")


def _csv(kind):
    def parse(text: str):
        try:
            values = tuple(kind(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of "
                                             f"{kind.__name__}") from None
        return values[0] if len(values) == 1 and kind is float else values
    return parse


def _add_field(group, f: dataclasses.Field, default) -> None:
    """One flag from a config field: its flat name, type, choices and help."""
    name = config_lib.flat_name(f)
    meta, kind = f.metadata, str(f.type)
    kw: dict = {"dest": name, "help": meta["help"]}
    if "csv" in meta:
        kw["type"] = _csv(meta["csv"])
    elif kind.startswith("bool"):
        kw["action"] = argparse.BooleanOptionalAction
        kw["default"] = None
    elif kind.startswith("int"):
        kw["type"] = int
    elif kind.startswith("float"):
        kw["type"] = float
    if "choices" in meta:
        kw["choices"] = meta["choices"]
    if "metavar" in meta:
        kw["metavar"] = meta["metavar"]
    if default is not None and "action" not in kw:
        kw["help"] += f" (default {default})"
    group.add_argument("--" + name.replace("_", "-"), **kw)


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """The flags of a run, shared by ``simulate`` and ``train``, from the config fields."""
    d = config_lib.RunConfig()
    done = set(_FILE_ONLY)
    for title, sections, names in _GROUPS:
        g = p.add_argument_group(title)
        for section in sections:
            obj = getattr(d, section)
            for f in dataclasses.fields(obj):
                flat = config_lib.flat_name(f)
                if flat in done or (names is not None and flat not in names):
                    continue
                done.add(flat)
                _add_field(g, f, getattr(obj, f.name))
    g = p.add_argument_group("private worker spec (all workers; a config file can give "
                             "each worker its own)")
    for f in dataclasses.fields(config_lib.WorkerSpec):
        _add_field(g, f, getattr(d.workers.default, f.name))
    g = p.add_argument_group("output")
    g.add_argument("--config", help="JSON or TOML file of options and per-worker specs")
    g.add_argument("--out", help="output directory for run.jsonl and final_model.npy "
                   "(default runs/<time>-seed<S>)")
    g.add_argument("--force", action="store_true",
                   help="overwrite the run log of a previous run in --out")
    g.add_argument("--quiet", action="store_true", help="print only the summary")


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
    sim.add_argument("--centralized", action="store_true",
                     help="also train centrally (same model, data, loop) and compare")
    train = sub.add_parser(
        "train", help="train FEDF over MPI: mpiexec -n K fedf train [flags]",
        description="Train FEDF over MPI: rank 0 is the master, ranks 1..K-1 hold the "
        "workers (--workers N in all, spread as evenly as possible); the run log is the "
        "one of `fedf simulate`. Takes every flag of `fedf simulate`, plus the MPI ones.",
        epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_flags(train)
    g = train.add_argument_group("MPI")
    g.add_argument("--timeout", type=float,
                   help="seconds any rank waits for a message before the job is aborted, "
                   "naming the silent rank; must exceed the slowest local training of an "
                   "epoch (default 300)")
    g.add_argument("--checkpoint-every", type=int, metavar="E",
                   help="checkpoint every E epochs into OUT/checkpoint (default: never)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint")
    _add_report(sub)
    _add_attack(sub)
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


def make_config(args: argparse.Namespace) -> config_lib.RunConfig:
    """Config file values, overridden by the flags that were given."""
    flat = config_files.load_file(args.config) if args.config else {}
    flat.update({k: getattr(args, k) for k in (*config_lib.FLAT, *config_lib.SPEC_FIELDS)
                 if getattr(args, k, None) is not None})
    return config_lib.make(**flat)


def out_dir(args: argparse.Namespace, cfg: config_lib.RunConfig, resume: bool = False) -> Path:
    """The run directory, checked before any work: it must be a directory we can
    write, and must not hold another run's log unless ``--force`` (or ``--resume``)."""
    if args.out:
        out = Path(args.out)
    else:
        out = Path("runs") / (time.strftime("%Y%m%d-%H%M%S") + f"-seed{cfg.run.seed}")
        k = 1
        while out.exists():
            k += 1
            out = out.with_name(f"{out.name.split('~')[0]}~{k}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out (={str(out)!r}) is a file, not a directory.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out (={str(out)!r}) cannot be created: {e.strerror or e}.") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"--out (={str(out)!r}) is not writable.")
    if (out / "run.jsonl").exists() and not (resume or getattr(args, "force", False)):
        raise ValueError(f"--out (={str(out)!r}) already holds a run log (run.jsonl); pass "
                         "--force to overwrite it, or choose another --out.")
    return out


def simulate(args: argparse.Namespace) -> int:
    cfg = make_config(args)
    out = out_dir(args, cfg)
    from fedf_jax import console, harness, simulation

    say = (lambda *a, **k: None) if args.quiet else print
    host = harness.load(cfg)
    say(console.describe(cfg, host))
    ticker = console.Ticker(say) if not args.quiet else None
    start, row = console.table(cfg, say, ticker)
    try:
        result = simulation.run(cfg, out, on_epoch=row, on_start=start, host=host)
    finally:
        if ticker:
            ticker.stop()
    print(f"final test accuracy   {result['final_test_accuracy']:.4f} "
          f"(best {result['best_test_accuracy']:.4f})"
          + ("; the global model DIVERGED (see the warning above)" if result["diverged"]
             else ""))
    if args.centralized and cfg.run.algorithm != "central":
        central = simulation.run(cfg.replace(algorithm="central", backend="vmap"), host=host)
        print(f"centralized accuracy  {central['final_test_accuracy']:.4f} (same model, data "
              f"and loop, one worker with all {len(host.union)} samples)")
    for line in console.summary(result, cfg, out):
        print(line)
    return 0


def train(args: argparse.Namespace, faults=()) -> int:
    """``fedf train``: thin; ``fedf_jax.train`` runs the ranks (``faults``: injected by
    tests, see ``fedf_jax.backends.mpi.faults``)."""
    from mpi4py import MPI

    from fedf_jax import console
    from fedf_jax import train as train_lib
    from fedf_jax.backends.mpi import link

    link.install_excepthook()
    rank = MPI.COMM_WORLD.Get_rank()
    say = print if rank == 0 and not args.quiet else (lambda *a, **k: None)
    try:  # the same flags on every rank: a bad one fails alike everywhere, say it once
        cfg = make_config(args)
        train_lib.check(cfg, MPI.COMM_WORLD.Get_size(),
                        resumable=bool(args.checkpoint_every or args.resume))
        if args.resume and not args.out:
            raise ValueError("--resume needs the --out directory of the run to continue.")
        if args.timeout is not None and not args.timeout > 0:
            raise ValueError(f"--timeout (={args.timeout}) must be a positive number.")
        if args.checkpoint_every is not None and args.checkpoint_every < 1:
            raise ValueError(f"--checkpoint-every (={args.checkpoint_every}) must be >= 1.")
        out = out_dir(args, cfg, resume=args.resume) if rank == 0 else None
    except ValueError as e:
        if rank == 0:
            print(f"fedf: error: {e}", file=sys.stderr)
        return 2

    svm = cfg.run.algorithm == "admm-svm"

    def setup(h):
        where = (f"{cfg.run.groups} groups of ranks {h['group_ranks']} (group master first) "
                 "under the top master rank 0" if "group_ranks" in h else
                 f"{h['ranks'] - 1} worker ranks (+ master rank 0)")
        what = (f"linear SVM with {h['num_params']:,} weights, C = {cfg.master.svm_c:g}"
                if svm else f"{cfg.model.name.upper()} with {h['num_params']:,} parameters, "
                f"d = {cfg.master.direction:+d}, {cfg.master.scheme} ternaries"
                + (", pilot guard on" if cfg.master.pilot_guard else ""))
        say(f"{'ADMM linear SVM' if svm else 'FEDF'} over MPI on {cfg.data.name}: "
            f"{cfg.n_workers} workers on {where}, {what}, {cfg.run.epochs} epochs"
            + (f"; resuming at epoch {h['first_epoch']}" if h["first_epoch"] > 1 else ""))
        say(f"{'epoch':>5} {'objective' if svm else 'pilot':>9} {'test acc':>8} "
            f"{'test loss':>9} {'bytes':>12} {'mpi bytes':>12} {'dropped':>7} {'wall s':>7}",
            flush=True)

    def row(rec):
        lead = f"{rec['objective']:>9.5g}" if svm else f"{rec['pilot']:>9}"
        say(f"{rec['epoch']:>5} {lead} {rec['test_accuracy']:>8.4f} "
            f"{rec['test_loss']:>9.4f} {rec['bytes_total']:>12,} {rec['mpi_bytes']:>12,} "
            f"{len(rec['dropped_frames']):>7} {rec['wall_s']:>7.3f}", flush=True)

    try:
        result = train_lib.run(cfg, out, timeout=args.timeout or train_lib.DEFAULT_TIMEOUT,
                               checkpoint_every=args.checkpoint_every, resume=args.resume,
                               on_setup=setup, on_epoch=row, faults=faults)
    except train_lib.ResumeError as e:
        if rank == 0:
            print(f"fedf: error: {e}", file=sys.stderr)
        return 2
    if rank == 0:
        print(f"final test accuracy   {result['final_test_accuracy']:.4f} "
              f"(best {result['best_test_accuracy']:.4f})")
        print(f"bytes                 {console.fmt_bytes(result['bytes_total'])} counted as "
              f"deployed; {console.fmt_bytes(result['mpi_bytes_total'])} moved by MPI")
        print(f"time                  {result['wall_s']:.1f} s")
        print(f"run log               {out / 'run.jsonl'}; final model "
              f"{out / 'final_model.npy'}")
    return 0


class _Formatter(logging.Formatter):
    """``fedf: warning: ...``: the level in lower case after the program's name."""

    def format(self, record):
        return f"fedf: {record.levelname.lower()}: {record.getMessage()}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(_Formatter())
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
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
