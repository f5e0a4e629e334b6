"""Types shared by the privacy experiments: options, results, defences, intervals.

Intervals over seeds come from :func:`fedf_jax.privacy.stats.mean_interval`: 95 %,
inside the metric's range (:data:`fedf_jax.privacy.stats.METRIC_RANGES`), none for a
single value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import jax

from fedf_jax.privacy import stats

VERDICTS = ("supported", "refuted", "inconclusive")


@dataclasses.dataclass(frozen=True)
class Options:
    """The knobs of a privacy experiment (each experiment uses the ones it needs).

    Attributes:
      arms: protocol arms to attack: ``"fedavg"``, ``"signfedavg"``, ``"fedf+1"``,
        ``"fedf-1"`` (FEDF with the sign d of Eq. 3), optionally with a defence suffix:
        ``"+dp<eps>"`` (worker-level DP at that epsilon, ``inf`` for clipping only) or
        ``"+pilotnoise<sigma>"`` (Gaussian noise on the pilot's model only), e.g.
        ``"fedf+1+dp8"``.
      seeds: independent repetitions (95 % intervals over them).
      workers: N.
      n_local: local set sizes of the attacked worker; 0 means its whole share.
      local_epochs: local epoch counts to sweep.
      batch_sizes: mini-batch sizes to sweep.
      rounds: global epochs the adversary observes.
      data: ``"digits"`` (bundled) or ``"cifar10"`` (needs ``data_dir``).
      partition, dirichlet_alpha: how the non-attacked workers' data is split.
      hidden: hidden width of the MLP attacked on digits.
      delta: the delta of every (epsilon, delta) statement.
      quick: a CI-size run (fewer seeds, sweeps and iterations).
    """

    arms: tuple[str, ...] = ("fedavg", "signfedavg", "fedf+1", "fedf-1")
    seeds: int = 5
    workers: int = 5
    n_local: tuple[int, ...] = (1, 4, 16, 0)
    local_epochs: tuple[int, ...] = (1, 5)
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    rounds: int = 3
    data: str = "digits"
    data_dir: str | None = None
    partition: str = "label-dirichlet"
    dirichlet_alpha: float = 0.5
    hidden: int = 32
    delta: float = 1e-5
    quick: bool = False


class Row(NamedTuple):
    """One measured cell of an experiment: a metric of an arm in a setting."""

    arm: str
    setting: str  # e.g. "n_k=4 E=1 B=8 t=1"
    metric: str  # e.g. "psnr_db", "f1", "auc"
    mean: float
    lo: float  # 95 % interval over seeds, inside the metric's range; NaN for one value
    hi: float
    n: int  # values averaged (seeds, or seeds x targets)
    interval: str = ""  # how lo, hi were found (stats.INTERVALS); "" in older result files


@dataclasses.dataclass
class Result:
    """What an experiment found, against a criterion written down before running it.

    Attributes:
      experiment: ``"E1"`` ... ``"E9"``.
      title: one line.
      claim: the paper's claim under test (theorem and wording).
      criterion: the falsification criterion, fixed before the run.
      rows: the measured cells.
      verdict: one of ``VERDICTS``.
      notes: what the numbers mean, caveats.
      extra: anything else worth keeping (curves for plots, raw scores).
    """

    experiment: str
    title: str
    claim: str
    criterion: str
    rows: list[Row]
    verdict: str
    notes: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"`verdict` (={self.verdict!r}) must be one of {VERDICTS}.")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rows"] = [r._asdict() for r in self.rows]
        return d

    def to_markdown(self) -> str:
        """A section for RESULTS.md: claim, criterion, table, verdict, notes."""
        lines = [f"### {self.experiment}: {self.title}", "",
                 f"- **Claim:** {self.claim}", f"- **Falsified if:** {self.criterion}",
                 f"- **Verdict:** {self.verdict}", "",
                 "| arm | setting | metric | mean | 95 % interval | n |",
                 "|---|---|---|---:|---|---:|"]
        for r in self.rows:
            lines.append(f"| {r.arm} | {r.setting} | {r.metric} | {r.mean:.4g} | "
                         f"{interval_text(r)} | {r.n} |")
        lines += ["", INTERVAL_NOTE]
        if self.notes:
            lines += ["", self.notes]
        return "\n".join(lines) + "\n"


INTERVAL_NOTE = ("Intervals: two-sided 95 % over the n values, Student-t clipped to the "
                 "metric's range (F1, AUC, rates and accuracies in [0, 1], PSNR in "
                 f"[0, {stats.PSNR_CAP_DB:g}] dB, SSIM in [-1, 1]); CP: Clopper-Pearson, "
                 "where every value is at an end of the range (a rate of successes); "
                 "none for a single value; \"all equal\" where the n values are identical "
                 "(no spread to estimate).")


def interval_text(r: Row) -> str:
    """The interval cell of a row: ``[lo, hi]``, ``[lo, hi] CP``, ``all equal (n=K)`` or
    ``— (n=1)``."""
    if r.interval == "n=0" or not math.isfinite(r.mean):
        return "—"
    if r.interval == "n=1" or not (math.isfinite(r.lo) and math.isfinite(r.hi)):
        return f"— (n={r.n})"
    if r.interval == "all equal":
        return f"all equal (n={r.n})"
    return f"[{r.lo:.4g}, {r.hi:.4g}]" + (" CP" if r.interval == "clopper-pearson" else "")


def mean_ci95(values: Sequence[float], metric: str | None = None
              ) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean and its two-sided 95 % interval inside ``metric``'s range
    (:func:`fedf_jax.privacy.stats.mean_interval`).

    Non-finite values are dropped; one value has no interval (lo, hi NaN, so that no
    criterion is met by it); none gives NaNs.
    """
    iv = stats.mean_interval(values, stats.metric_range(metric))
    return iv.mean, iv.lo, iv.hi


def conclude(refute: Sequence[str], support: bool, supported: str, inconclusive: str,
             most: int = 4) -> tuple[str, str]:
    """(verdict, reason) from a criterion's findings: refuted if any refuting cell was
    found (the first ``most`` are named), supported if every cell met the support bar,
    inconclusive otherwise."""
    if refute:
        return "refuted", "Refuted: " + "; ".join(refute[:most]) + "."
    return ("supported", supported) if support else ("inconclusive", inconclusive)


def row(arm: str, setting: str, metric: str, values: Sequence[float]) -> Row:
    """A Row from the per-seed values of one cell (interval inside ``metric``'s range)."""
    iv = stats.mean_interval(values, stats.metric_range(metric))
    return Row(arm, setting, metric, iv.mean, iv.lo, iv.hi, iv.n, iv.method)


class Defence(Protocol):
    """A defence applied inside the protocol, before a worker's message leaves it.

    Both methods are jittable and act on ONE worker (the runner vmaps them).
    """

    name: str

    def worker(self, key: jax.Array, q: jax.Array, p_prev: jax.Array, cost: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
        """(Q_k sent, C_k reported) from the true local model and cost. Every message of
        the worker (its model if pilot, its ternary otherwise) is derived from the
        returned Q_k."""

    def pilot(self, key: jax.Array, q_pilot: jax.Array) -> jax.Array:
        """The pilot's model as sent (after ``worker``)."""
