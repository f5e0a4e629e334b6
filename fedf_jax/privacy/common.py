"""Types shared by the privacy experiments: options, results, defences, intervals, and
the verdict rule.

Intervals over seeds come from :func:`fedf_jax.privacy.stats.mean_interval`: 95 %,
inside the metric's range (:data:`fedf_jax.privacy.stats.METRIC_RANGES`), none for a
single value. Verdicts are given per *regime* (a set-up: local set sizes, epochs,
recipe, what the attacker is given) by :func:`judge`: each regime has a family of
cells fixed before the run, one per-seed leak statistic per cell (0 = no leak), a
one-sided test per cell, Holm's correction over the family, and a practical margin.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import jax
import numpy as np

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


class Regime(NamedTuple):
    """The verdict of an experiment in one regime.

    Attributes:
      name: the set-up, e.g. ``"victim n_k=1, others full shares; E=1 B=8"``.
      given: what the attacker is given (observations, priors, anything more).
      verdict: one of ``VERDICTS``.
      reason: one sentence: the deciding cell, or why none decides.
    """

    name: str
    given: str
    verdict: str
    reason: str


class Test(NamedTuple):
    """One cell of a regime's family: its one-sided test and Holm-adjusted p-value.

    Attributes:
      regime: the regime's name.
      cell: the cell, e.g. ``"fedf+1 t=1 analytic"``.
      estimate: mean over seeds of the leak statistic (its excess over the baseline).
      hi: the 95 % upper bound of that mean (NaN for fewer than two values).
      margin: the excess a refutation needs (practical relevance).
      p: one-sided p-value of H0 "excess <= 0" (:func:`stats.p_above`).
      p_holm: Holm-adjusted over the regime's family.
      n: seeds.
      method: how p was found.
      refutes: p_holm <= 0.05 and estimate >= margin.
    """

    regime: str
    cell: str
    estimate: float
    hi: float
    margin: float
    p: float
    p_holm: float
    n: int
    method: str
    refutes: bool


FWER = 0.05  # family-wise error rate of each regime's family of cells


def judge(regime: str, given: str, cells: Sequence[tuple[str, Sequence[float]]],
          margin: float, bounds: Sequence[float], what: str = "leak"
          ) -> tuple[Regime, list[Test]]:
    """A regime's verdict from its family of cells (the rule every experiment states in
    its criterion).

    Each cell holds one value per seed of a leak statistic whose baseline is 0 (e.g. an
    attack's score minus its chance level, per seed). A cell *refutes* when the
    one-sided test of "mean <= 0" is rejected after Holm's correction over the family
    (family-wise error ``FWER``) and its mean is at least ``margin``. The regime is
    refuted when a cell refutes; supported when every cell's 95 % upper bound is below
    ``margin`` (each with >= 2 seeds that are not all equal: identical values give no
    interval); inconclusive otherwise (also with no cell).

    Args:
      regime: the regime's name; given: what the attacker is given.
      cells: (label, per-seed values) in a fixed order.
      margin: the practical margin of a leak.
      bounds: the range of the statistic (for the tests and intervals).
      what: the statistic's name in the reason.

    Returns:
      (the Regime, one Test per cell).
    """
    if not cells:
        return Regime(regime, given, "inconclusive", "No cell was measured."), []
    ps, ivs = [], []
    observed = any(np.any(np.asarray(v, np.float64) > 0) for _, v in cells)
    for _, values in cells:
        ps.append(stats.p_above(values, 0.0, bounds))
        ivs.append(stats.mean_interval(values, bounds))
    adjusted = stats.holm([p.p for p in ps])
    tests = [Test(regime, label, iv.mean, iv.hi, margin, p.p, float(a), iv.n, p.method,
                  bool(a <= FWER and iv.mean >= margin))
             for (label, _), p, iv, a in zip(cells, ps, ivs, adjusted, strict=True)]
    hits = [t for t in tests if t.refutes]
    if hits:
        best = max(hits, key=lambda t: t.estimate)
        verdict = Regime(regime, given, "refuted",
                         f"{len(hits)} of {len(tests)} cells refute (Holm); strongest: "
                         f"{best.cell}, {what} {best.estimate:+.3g} (Holm p "
                         f"{best.p_holm:.2g}).")
    elif all(_bounded_below(t, iv, margin) for t, iv in zip(tests, ivs, strict=True)):
        verdict = Regime(regime, given, "supported",
                         f"Every cell's 95 % upper bound of the {what} is below {margin:g}.")
    elif not observed:
        seeds = max(t.n for t in tests)
        bounded = [t.hi for t, iv in zip(tests, ivs, strict=True)
                   if iv.method != "all equal" and math.isfinite(t.hi)]
        same = sum(iv.method == "all equal" for iv in ivs)
        parts = []
        if bounded:
            parts.append(f"the 95 % upper bounds (up to {max(bounded):.2g}; distribution-free "
                         "where the values sit at an end of their range)")
        if same:
            parts.append(f"{same} cell{'s' if same != 1 else ''} with the same value in every "
                         "seed (no spread: no interval)")
        bound = " and ".join(parts) or "no interval"
        verdict = Regime(regime, given, "inconclusive",
                         f"No {what} above 0 in any seed of any of the {len(tests)} cells, but "
                         f"with {seeds} seed{'s' if seeds != 1 else ''}, {bound} cannot exclude "
                         f"{margin:g}.")
    else:
        open_ = [t for t, iv in zip(tests, ivs, strict=True)
                 if not _bounded_below(t, iv, margin)]
        top = max(open_, key=lambda t: t.estimate if math.isfinite(t.estimate) else -math.inf)
        verdict = Regime(regime, given, "inconclusive",
                         f"No cell refutes after Holm, but {len(open_)} of {len(tests)} "
                         f"cannot exclude {margin:g} ({what}; largest: {top.cell}, "
                         f"{top.estimate:+.3g}).")
    return verdict, tests


def judge_each(families: dict[str, Sequence[tuple[str, Sequence[float]]]], given: str,
               margin: float, bounds: Sequence[float], what: str = "leak",
               name: str = "victim {}, others full shares") -> tuple[list[Regime], list[Test]]:
    """:func:`judge` for one regime per key of ``families`` (e.g. the victim's n_k), named
    ``name.format(key)``, in the dict's order.

    Returns:
      (one Regime per key, every Test).
    """
    regimes, tests = [], []
    for key, cells in families.items():
        r, t = judge(name.format(key), given, cells, margin, bounds, what)
        regimes.append(r)
        tests += t
    return regimes, tests


def judge_families(regime: str, given: str,
                   families: Sequence[tuple[str, Sequence[tuple[str, Sequence[float]]], float,
                                            Sequence[float]]]
                   ) -> tuple[Regime, list[Test]]:
    """A regime judged on several statistics, each with its own family of cells
    (:func:`judge` per family, each at family-wise ``FWER``): refuted if any family
    refutes, supported if every measured family supports, inconclusive otherwise.

    Args:
      families: (statistic's name, cells, margin, bounds) each.
    """
    parts, tests = [], []
    for what, cells, margin, bounds in families:
        if not cells:
            continue
        r, t = judge(regime, given, cells, margin, bounds, what)
        parts.append((what, r))
        tests += t
    if not parts:
        return Regime(regime, given, "inconclusive", "No cell was measured."), tests
    verdict = overall([r for _, r in parts])
    order = {"refuted": 0, "inconclusive": 1, "supported": 2}  # the deciding part first
    parts.sort(key=lambda p: order[p[1].verdict])
    reason = " ".join(f"({what}) {r.reason}" for what, r in parts)
    return Regime(regime, given, verdict, reason), tests


def _bounded_below(t: Test, iv: stats.Interval, margin: float) -> bool:
    """Whether a cell's 95 % upper bound is below the margin (identical values give no
    interval: they cannot support)."""
    return (t.n >= 2 and iv.method != "all equal" and math.isfinite(t.hi) and t.hi < margin)


def overall(regimes: Sequence[Regime]) -> str:
    """An experiment's one-word verdict over its regimes: refuted if one regime is (the
    regime table says which), supported if all are, inconclusive otherwise."""
    verdicts = [r.verdict for r in regimes]
    if "refuted" in verdicts:
        return "refuted"
    if verdicts and all(v == "supported" for v in verdicts):
        return "supported"
    return "inconclusive"


@dataclasses.dataclass
class Result:
    """What an experiment found, against a criterion written down before running it.

    Attributes:
      experiment: ``"E1"`` ... ``"E9"``.
      title: one line.
      claim: the paper's claim under test (theorem and wording).
      criterion: the falsification criterion, fixed before the run.
      rows: the measured cells.
      verdict: one of ``VERDICTS`` (:func:`overall` of ``regimes`` where there are any).
      notes: what the numbers mean, caveats.
      extra: anything else worth keeping (curves for plots, raw scores).
      regimes: the verdict per regime (set-up and what the attacker is given).
      tests: every cell's test (Holm-adjusted within its regime).
    """

    experiment: str
    title: str
    claim: str
    criterion: str
    rows: list[Row]
    verdict: str
    notes: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    regimes: list[Regime] = dataclasses.field(default_factory=list)
    tests: list[Test] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"`verdict` (={self.verdict!r}) must be one of {VERDICTS}.")
        for r in self.regimes:
            if r.verdict not in VERDICTS:
                raise ValueError(f"regime {r.name!r}: `verdict` (={r.verdict!r}) must be one "
                                 f"of {VERDICTS}.")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rows"] = [r._asdict() for r in self.rows]
        d["regimes"] = [r._asdict() for r in self.regimes]
        d["tests"] = [t._asdict() for t in self.tests]
        return d

    def to_markdown(self) -> str:
        """A section for RESULTS.md: claim, criterion, verdict per regime, table, tests,
        notes."""
        lines = [f"### {self.experiment}: {self.title}", "",
                 f"- **Claim:** {self.claim}", f"- **Falsified if:** {self.criterion}",
                 f"- **Verdict:** {self.verdict}", ""]
        if self.regimes:
            lines += ["| regime | attacker given | verdict | why |", "|---|---|---|---|"]
            lines += [f"| {r.name} | {r.given} | **{r.verdict}** | {r.reason} |"
                      for r in self.regimes]
            lines.append("")
        lines += ["| arm | setting | metric | estimate | 95 % interval | n |",
                  "|---|---|---|---:|---|---:|"]
        for r in self.rows:
            lines.append(f"| {r.arm} | {r.setting} | {r.metric} | {r.mean:.4g} | "
                         f"{interval_text(r)} | {r.n} |")
        lines += ["", INTERVAL_NOTE]
        if self.tests:
            lines += ["", "Tests (one per cell; Holm within each regime's family; a cell "
                      f"refutes at Holm p <= {FWER:g} with an estimate >= the margin):", "",
                      "| regime | cell | estimate | 95 % upper | margin | p | Holm p | "
                      "method | refutes |", "|---|---|---:|---:|---:|---:|---:|---|---|"]
            for t in self.tests:
                hi = f"{t.hi:.3g}" if math.isfinite(t.hi) else "—"
                lines.append(f"| {t.regime} | {t.cell} | {t.estimate:+.3g} | {hi} | "
                             f"{t.margin:g} | {t.p:.2g} | {t.p_holm:.2g} | {t.method} | "
                             f"{'yes' if t.refutes else ''} |")
        if self.notes:
            lines += ["", self.notes]
        return "\n".join(lines) + "\n"


INTERVAL_NOTE = ("Estimates are means over the n values (one per seed unless the setting "
                 "says otherwise), except metrics ending in `_median`: the median, with an "
                 "order-statistic interval (`range`: [min, max], too few values for 95 % "
                 "coverage). Intervals: two-sided 95 % over the n values, Student-t "
                 "clipped to the metric's range (F1, AUC, rates and accuracies in [0, 1], "
                 f"PSNR in [0, {stats.PSNR_CAP_DB:g}] dB, SSIM in [-1, 1]); CP: "
                 "Clopper-Pearson, where every value is at an end of the range (a rate of "
                 "successes); none for a single value; \"all equal\" where the n values "
                 "are identical (no spread to estimate).")


def interval_text(r: Row) -> str:
    """The interval cell of a row: ``[lo, hi]``, ``[lo, hi] CP``, ``all equal (n=K)`` or
    ``— (n=1)``."""
    if r.interval == "n=0" or not math.isfinite(r.mean):
        return "—"
    if r.interval == "n=1" or not (math.isfinite(r.lo) and math.isfinite(r.hi)):
        return f"— (n={r.n})"
    if r.interval == "all equal":
        return f"all equal (n={r.n})"
    suffix = {"clopper-pearson": " CP", "median range": " range"}.get(r.interval, "")
    return f"[{r.lo:.4g}, {r.hi:.4g}]{suffix}"


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
    """A Row from the per-seed values of one cell (interval inside ``metric``'s range);
    a metric ending in ``_median`` gets the median and its order-statistic interval."""
    bounds = stats.metric_range(metric)
    if metric.endswith("_median"):
        iv = stats.median_interval(values, bounds)
    else:
        iv = stats.mean_interval(values, bounds)
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
