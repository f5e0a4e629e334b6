"""What ``fedf simulate`` prints: the run's one-line description, the per-epoch table,
the summary lines, and a ticker that shows a long compile is not a hang. Imports no
JAX at module level (the CLI checks its flags before JAX is loaded)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path


class Ticker:
    """Shows the seconds spent compiling, so a long compile does not look like a hang:
    rewrites one line on a terminal, a line every 30 s otherwise."""

    def __init__(self, say, label: str = "compiling"):
        self.say, self.label, self.t0 = say, label, time.perf_counter()
        self.tty = sys.stdout.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        period = 1.0 if self.tty else 30.0
        while not self._stop.wait(period):
            s = time.perf_counter() - self.t0
            if self.tty:
                self.say(f"\r{self.label} ... {s:.0f} s", end="", flush=True)
            else:
                self.say(f"{self.label} ... {s:.0f} s", flush=True)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return time.perf_counter() - self.t0


def fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


def short(values: list, limit: int = 8) -> str:
    if len(values) <= limit:
        return ",".join(map(str, values))
    return ",".join(map(str, values[:limit])) + f",... ({len(values)})"


def eq8_line(result: dict, scheme: str) -> str:
    eq8, counted = result["eq8_bytes_per_epoch"], result["bytes_per_epoch_payload"]
    diff = counted - eq8
    if diff == 0:
        why = "equal"
    elif scheme == "base3":
        why = f"{diff:+,.0f} B: base3 packs 5 trits per byte, Eq. (8) counts 2 bits per trit"
    else:
        why = f"{diff:+,.0f} B: each ternary rounds up to whole bytes"
    return (f"bytes                 {fmt_bytes(result['bytes_total'])} in all; per epoch "
            f"{counted:,} payload vs Eq. (8) {eq8:,.1f} ({why})")


def describe(cfg, host) -> str:
    """The run in one line: algorithm, data, workers, model, epochs, settings, devices."""
    import jax
    import numpy as np

    from fedf_jax import algorithms

    run, n, alg = cfg.run, cfg.n_workers, cfg.run.algorithm
    if alg == "central":
        who = (f"one worker holding all {len(host.union)} samples of the {n} workers' "
               "shares")
    else:
        who = (f"{n} workers ({cfg.data.partition}, sizes "
               f"{short([len(p) for p in host.parts])})")
    m = cfg.master
    what = {"fedf": f"d = {m.direction:+d}, {m.scheme} ternaries",
            "fedavg": f"C = {run.fraction:g}", "phong": "sequential", "terngrad": "2-bit",
            "central": "no messages",
            "admm-svm": f"{cfg.data.split} split, C = {m.svm_c:g}, tol {m.tol:g}"}[alg]
    if run.groups > 1:
        what += f", {run.groups} groups x {run.group_epochs} inner epoch(s)"
    if m.pilot_guard:
        what += ", pilot guard on"
    asy = run.schedule == "async"
    if asy:
        bound = "unbounded" if run.staleness is None else f"<= {run.staleness}"
        what += (f", asynchronous top (buffer {run.buffer}, staleness {bound}, "
                 f"{run.stale_policy}, speeds {run.speeds or 'all 1'})")
    where = (f"{run.backend} backend on "
             f"{run.devices or (len(jax.local_devices()) if run.backend == 'sharded' else 1)} "
             f"{jax.devices()[0].platform.upper()} device(s)")
    if host.model is None:  # the SVM: one weight vector per one-vs-rest class
        k = 1 if host.dataset.num_classes == 2 else host.dataset.num_classes
        model = f"linear SVM with {k} x {int(np.prod(host.dataset.input_shape)) + 1} weights"
    else:
        model = f"{cfg.model.name.upper()} with {host.model.num_params:,} parameters"
    return (f"{algorithms.NAMES[alg]} on {cfg.data.name}: {who}, {model}, {run.epochs} "
            f"{'updates' if asy else 'epochs'}, {what}, {where}")


def table(cfg, say: Callable, ticker: Ticker | None) -> tuple[Callable, Callable]:
    """(start, row): print the table's head once the run is compiled, then one row per
    epoch record (one per update of an asynchronous top)."""
    alg, asy = cfg.run.algorithm, cfg.run.schedule == "async"
    svm = alg == "admm-svm"

    def start(header):
        if ticker:
            s = ticker.stop()
            say(f"{chr(13) if ticker.tty else ''}compiled in {s:.1f} s")
        middle = (f"{'objective':>11} {'primal r':>9} {'dual s':>9}" if svm else
                  f"{'pilot':>5} {'test acc':>8} {'test loss':>9}")
        say(f"{'epoch':>5} {middle} {'test acc' if svm else '':>8} {'bytes':>12} "
            f"{'' if svm else 'nonzero':>7} {'wall s':>7}".replace("  ", " ", 1)
            + (f" {'clock s':>8}  senders:staleness" if asy else ""), flush=True)

    def clock(rec):
        if not asy:
            return ""
        who = " ".join(f"{k}:{t}" for k, t in zip(rec["senders"], rec["staleness"],
                                                 strict=True))
        gone = f" (dropped {len(rec['stale_dropped'])})" if rec["stale_dropped"] else ""
        return f" {rec['clock_s']:>8.3f}  {who}{gone}"

    def row(rec):
        if svm:
            say(f"{rec['epoch']:>5} {rec['objective']:>11.5g} "
                f"{max(rec['primal_residual']):>9.3g} {max(rec['dual_residual']):>9.3g} "
                f"{rec['test_accuracy']:>8.4f} {rec['bytes_total']:>12,} {'':>7} "
                f"{rec['wall_s']:>7.3f}{clock(rec)}", flush=True)
            return
        nz = rec["ternary_nonzero_fraction"]
        say(f"{rec['epoch']:>5} {rec['pilot'] if rec['pilot'] >= 0 else '-':>5} "
            f"{rec['test_accuracy']:>8.4f} {rec['test_loss']:>9.4f} {rec['bytes_total']:>12,} "
            f"{f'{100 * nz:.1f}%' if nz == nz else '-':>7} {rec['wall_s']:>7.3f}{clock(rec)}",
            flush=True)

    return start, row


def summary(result: dict, cfg, out: Path) -> list[str]:
    """The summary lines after the final accuracy: bytes, time, where the log went."""
    alg, asy = cfg.run.algorithm, cfg.run.schedule == "async"
    svm, lines = alg == "admm-svm", []
    add = lines.append
    if asy and not svm:
        add(f"bytes                 {fmt_bytes(result['bytes_total'])} in all; "
            f"{fmt_bytes(result['bytes_per_epoch'])} per update")
        add(f"virtual clock         {result['records'][-1]['clock_s']:.3f} s for "
            f"{len(result['records'])} updates")
    elif alg == "fedf":
        add(eq8_line(result, cfg.master.scheme))
    elif svm:
        last = result["records"][-1]
        state = (f"met --tol at iteration {last['epoch']}" if last["converged"] else
                 f"not within --tol after {last['epoch']} iterations")
        add(f"objective             {last['objective']:.6g} ({state})")
        add(f"bytes                 {fmt_bytes(result['bytes_total'])} in all; "
            f"{fmt_bytes(result['bytes_per_epoch'])} per iteration")
    else:
        add(f"bytes                 {fmt_bytes(result['bytes_total'])} in all; "
            f"{fmt_bytes(result['bytes_per_epoch'])} per epoch (FEDF's Eq. 8: "
            f"{fmt_bytes(result['eq8_bytes_per_epoch'])})")
    add(f"time                  {result['wall_s']:.1f} s training + "
        f"{result['compile_s']:.1f} s compiling here; {result['modeled_s']:.2f} s modeled "
        "deployed")
    add(f"run log               {out / 'run.jsonl'}; final model {out / 'final_model.npy'}")
    return lines


__all__ = ["Ticker", "fmt_bytes", "short", "eq8_line", "describe", "table", "summary"]
