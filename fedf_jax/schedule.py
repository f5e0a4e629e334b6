"""The asynchronous top level's clock (DESIGN §8, ``--schedule async``): who arrives when,
which arrivals an update applies, how stale each one is. Host code, no JAX.

Senders (the flat workers, or the group masters with ``--groups``) run at their own
speeds on a virtual clock. A sender's job (train from the model it was sent, report)
takes a fixed number of modeled seconds (:func:`durations`); the top applies an
update once its buffer holds ``buffer`` arrivals (FedBuff; 1 is FedAsync) and,
under the ``wait`` policy with a bound S, only when no sender still running would
then be more than S updates stale. Under ``drop``, an arrival more than S updates
stale is dropped (and logged) and its sender starts again from the current model.
A sender whose arrival waits in the buffer starts again when the update that
applies it goes out (it needs that model). So S = 0 (wait) or a buffer of every
sender is the synchronous run: every update holds every sender, none stale.

:class:`Clock` makes these choices deterministically (ties go to the lower sender),
so a run is a function of its config.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

# FedAsync's staleness functions (Xie et al. 2019, §5.2): polynomial (tau + 1)^-a, hinge
# 1 up to b then 1 / (a (tau - b) + 1), with the paper's a and b.
POLY_A = 0.5
HINGE_A, HINGE_B = 10.0, 4
LOGNORMAL = "lognormal:"


def parse_speeds(text: str | None, n_senders: int, seed: int) -> np.ndarray:
    """Each sender's relative compute time, f64[n]: ``None`` (all 1), ``"1,1,4"`` (one
    per sender) or ``"lognormal:SIGMA"`` (exp of N(0, SIGMA^2), seeded by the run).

    Raises:
      ValueError: naming the bad value and what would do.
    """
    if text is None:
        return np.ones(n_senders)
    text = str(text).strip()
    if text.startswith(LOGNORMAL):
        try:
            sigma = float(text[len(LOGNORMAL):])
        except ValueError:
            sigma = math.nan
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"`speeds` (={text!r}): lognormal needs a spread SIGMA >= 0, "
                             "e.g. lognormal:0.5.")
        rng = np.random.default_rng([seed, 16])
        return np.exp(rng.normal(0.0, sigma, n_senders))
    try:
        speeds = np.array([float(v) for v in text.split(",")])
    except ValueError:
        raise ValueError(f"`speeds` (={text!r}) must be comma-separated numbers (1,1,4) or "
                         "lognormal:SIGMA.") from None
    if len(speeds) != n_senders:
        raise ValueError(f"`speeds` (={text!r}) has {len(speeds)} values for {n_senders} "
                         "senders (one per group with --groups, else one per worker).")
    if not np.all(np.isfinite(speeds) & (speeds > 0)):
        raise ValueError(f"`speeds` (={text!r}): every speed must be a number > 0.")
    return speeds


def staleness_weight(name: str, tau) -> np.ndarray:
    """FedAsync's s(tau) for ``constant``, ``polynomial`` or ``hinge``; s(0) = 1."""
    tau = np.asarray(tau, np.float64)
    if name == "constant":
        return np.ones_like(tau)
    if name == "polynomial":
        return (tau + 1.0) ** -POLY_A
    if name == "hinge":
        return np.where(tau <= HINGE_B, 1.0, 1.0 / (HINGE_A * (tau - HINGE_B) + 1.0))
    raise ValueError(f"`staleness_fn` (={name!r}) must be constant, polynomial or hinge.")


FLOPS = 1e9  # a sender's compute speed when --unit-seconds is not given


def unit_seconds(n_params: int) -> float:
    """The default seconds per unit of work (a forward pass of one sample, about 2 M
    flops for M parameters) at :data:`FLOPS`."""
    return 2.0 * max(int(n_params), 1) / FLOPS


def durations(speeds: np.ndarray, work: np.ndarray, unit_seconds: float,
              link_s: np.ndarray | float) -> np.ndarray:
    """Seconds of each sender's job: its speed times its work units (``timing.work_units``,
    the busiest worker of a group) times ``unit_seconds``, plus its transfers."""
    return (np.asarray(speeds, np.float64) * np.asarray(work, np.float64) * unit_seconds
            + np.asarray(link_s, np.float64))


ASYNC_ONLY = {"speeds": None, "staleness": None, "stale_policy": "wait",
              "staleness_fn": "constant", "buffer": 1, "mixing": 1.0}


def check(cfg) -> None:
    """Raises ValueError when a RunConfig's ``--schedule`` options do not fit its run."""
    run, n = cfg.run, cfg.workers.count
    check_prox(cfg)
    if run.schedule == "sync":
        for name, default in ASYNC_ONLY.items():
            if getattr(run, name) != default:
                raise ValueError(f"`{name}` (={getattr(run, name)!r}) applies to "
                                 "`schedule='async'`.")
        return
    senders = run.groups if run.groups > 1 else n
    where = f"{run.groups} groups" if run.groups > 1 else f"{n} workers"
    if run.algorithm not in ("fedf", "fedavg", "admm-svm"):
        raise ValueError(f"`schedule='async'` applies to fedf, fedavg and admm-svm, not "
                         f"{run.algorithm!r}.")
    if run.backend != "vmap" or run.scan_epochs != 1 or run.fraction < 1:
        raise ValueError("`schedule='async'` runs on the vmap backend, one update per call, "
                         "every sender taking part (no --backend sharded, --scan-epochs or "
                         "--fraction).")
    if run.buffer > senders:
        raise ValueError(f"`buffer` (={run.buffer}) must be at most the number of senders "
                         f"({where}).")
    if run.algorithm == "admm-svm" and (cfg.data.split != "samples"
                                        or cfg.master.secure_sum != "none"):
        raise ValueError("`schedule='async'` with admm-svm runs the samples split (consensus "
                         "ADMM) without --secure-sum.")
    parse_speeds(run.speeds, senders, run.seed)


def check_prox(cfg) -> None:
    """``prox`` applies to admm-svm under ``--schedule async``."""
    if cfg.master.prox is not None and (cfg.run.schedule != "async"
                                        or cfg.run.algorithm != "admm-svm"):
        raise ValueError(f"`prox` (={cfg.master.prox}) applies to `algorithm='admm-svm'` with "
                         "`schedule='async'`.")


def default_prox(rho, n_senders: int, buffer: int, staleness: int | None):
    """The async ADMM master's proximal weight when ``--prox`` is not given:
    rho n (n/A - 1 + tau), tau the staleness bound (or n/A when unbounded); 0 for the
    synchronous case. Stale x_i push z further the more senders lag and the longer."""
    per = n_senders / buffer
    tau = per if staleness is None else staleness
    return rho * n_senders * (per - 1.0 + tau)


def ready(waiting: int, buffer: int, version: int, running_starts, staleness: int | None,
          policy: str) -> bool:
    """Whether the top applies its next update now (the module docstring's rule): its
    buffer holds ``buffer`` arrivals (``waiting``) and, under ``wait`` with a bound S, no
    sender still running (from the versions ``running_starts``) would then be more than
    S updates stale. The virtual :class:`Clock` and the MPI top master both ask it."""
    if waiting < buffer:
        return False
    if policy == "wait" and staleness is not None:
        return bool(np.all(version + 1 - np.asarray(running_starts, np.int64) <= staleness))
    return True


def too_stale(version: int, start: int, staleness: int | None, policy: str) -> bool:
    """Whether an arrival that trained from version ``start`` is dropped when the top is
    at ``version``: under ``drop``, more than S updates stale."""
    return policy == "drop" and staleness is not None and version - start > staleness


class Update(NamedTuple):
    """One update of the top, as the clock decided it.

    Attributes:
      version: the top's model the update makes (1-based; the epoch of its log line).
      time: clock seconds when its model is out.
      members: the senders it applies, in order of arrival.
      starts: the version each member trained from (its staleness = version - 1 - start).
      dropped: (sender, start) of the arrivals dropped as too stale since the last update.
      prevs: the version each member was sent before its start (0 at its first job): the
        two models a sender holds, as a FEDF worker holds P^{t-1} and P^{t-2}.
    """

    version: int
    time: float
    members: tuple[int, ...]
    starts: tuple[int, ...]
    dropped: tuple[tuple[int, int], ...]
    prevs: tuple[int, ...] = ()

    @property
    def staleness(self) -> tuple[int, ...]:
        return tuple(self.version - 1 - s for s in self.starts)


class Clock:
    """The virtual clock of an asynchronous run: :meth:`next` gives each update in turn.

    Args:
      durations: f64[n] each sender's seconds per job.
      buffer: arrivals per update (at most n).
      staleness: the bound S, or None (unbounded).
      policy: ``wait`` or ``drop`` (see the module docstring).
      overhead_s: the top's seconds per update after its last arrival (FEDF: fetching
        the pilot's model).
    """

    def __init__(self, durations: Sequence[float], buffer: int = 1,
                 staleness: int | None = None, policy: str = "wait", overhead_s: float = 0.0):
        d = np.asarray(durations, np.float64)
        if d.ndim != 1 or not d.size or not np.all(np.isfinite(d) & (d > 0)):
            raise ValueError(f"every sender's job needs a duration > 0 s, got {d.tolist()}.")
        if not 1 <= buffer <= d.size:
            raise ValueError(f"`buffer` (={buffer}) must be between 1 and the {d.size} "
                             "senders.")
        if staleness is not None and staleness < 0:
            raise ValueError(f"`staleness` (={staleness}) must be >= 0.")
        if policy not in ("wait", "drop"):
            raise ValueError(f"`stale_policy` (={policy!r}) must be wait or drop.")
        self.d, self.buffer, self.bound, self.policy = d, buffer, staleness, policy
        self.overhead = float(overhead_s)
        self.version = 0  # updates applied so far
        self.now = 0.0
        self.start = np.zeros(d.size, np.int64)  # the version each sender trains from
        self.prev = np.zeros(d.size, np.int64)  # the version it was sent before that
        self.finish = d.copy()  # when each sender's job arrives
        self.waiting: list[int] = []  # arrivals in the buffer, in order
        self.dropped: list[tuple[int, int]] = []

    def _ready(self) -> bool:
        running = np.setdiff1d(np.arange(self.d.size), self.waiting)
        return ready(len(self.waiting), self.buffer, self.version, self.start[running],
                     self.bound, self.policy)

    def next(self) -> Update:
        """The next update: arrivals in order of time (then sender) until it is ready."""
        while not self._ready():
            running = np.setdiff1d(np.arange(self.d.size), self.waiting)
            k = int(running[np.argmin(self.finish[running])])  # first minimum: lowest id
            self.now = max(self.now, float(self.finish[k]))  # after the top's last update
            if too_stale(self.version, int(self.start[k]), self.bound, self.policy):
                self.dropped.append((k, int(self.start[k])))
                self._restart(k)
                continue
            self.waiting.append(k)
        members = tuple(self.waiting)
        starts = tuple(int(self.start[k]) for k in members)
        prevs = tuple(int(self.prev[k]) for k in members)
        self.version += 1
        self.now += self.overhead
        for k in members:  # each starts again from the new model
            self._restart(k)
        update = Update(self.version, self.now, members, starts, tuple(self.dropped), prevs)
        self.waiting, self.dropped = [], []
        return update

    def _restart(self, k: int) -> None:
        """Sender k gets the current model and starts its next job now."""
        self.prev[k], self.start[k] = self.start[k], self.version
        self.finish[k] = self.now + self.d[k]

    def oldest(self) -> int:
        """The oldest version a sender holds (older models can go)."""
        return int(self.prev.min())


__all__ = ["ASYNC_ONLY", "check", "check_prox", "default_prox", "POLY_A", "HINGE_A",
           "HINGE_B", "parse_speeds", "staleness_weight", "FLOPS", "unit_seconds", "durations",
           "ready", "too_stale", "Update", "Clock"]
