"""Attack-success statistics: ROC AUC, TPR at a fixed FPR, set F1, balanced accuracy,
Clopper-Pearson intervals, the 95 % interval of a metric's mean (or median) over seeds,
one-sided p-values of a leak and Holm's correction over a family of cells.

Host-side numpy. Scores follow one convention throughout: a larger score means
"more likely positive" (a member, a held class, a worker with the property).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from scipy import stats

from fedf_jax.privacy.metrics import PSNR_CAP_DB

_UNIT = (0.0, 1.0)
_PSNR = (0.0, PSNR_CAP_DB)  # images clipped to [0, 1]: MSE <= 1; exact scores the cap
_SIGNED = (-1.0, 1.0)
_NONNEG = (0.0, math.inf)
# The range of every metric the experiments report; a metric not listed is unbounded.
METRIC_RANGES: dict[str, tuple[float, float]] = {
    # rates, shares, AUCs, F1 scores, accuracies
    **dict.fromkeys(("auc", "f1", "tpr@1%fpr", "class_f1", "class_f1_chance", "e2_class_f1",
                     "e4_member_auc", "test_accuracy", "label_acc", "iip", "iip_chance",
                     "analytic_iip", "analytic_iip_chance", "opt_iip", "opt_iip_chance",
                     "recovered", "recovered_best_worker", "trits_right", "identifiable",
                     "size_right", "sizes_found", "ambiguous", "constant_guess",
                     "victim_pilot", "colluder_pilot", "victim_exposed", "pilot_exposed",
                     "analytic_recovered", "opt_iip_hit", "pair_right", "victim_right",
                     "victim_right_no_prior", "victim_right_class_prior",
                     "victim_right_informed", "own_vote_guess", "attribution_right",
                     "hijack", "false_alarm", "guard_rejected", "auc_sum", "f1_sum",
                     "f1_control", "member_auc", "class_f1_pilot", "class_f1_message",
                     "exposed", "trits_right_informed", "diverged", "e12_accuracy",
                     "victim_pilot_guarded", "bad_pilot", "liar_pilot", "best_baseline",
                     "others_zero", "trits_right_blind", "refused", "admissible_share",
                     "overridden", "victim_recovered"),
                    _UNIT),
    **dict.fromkeys(("psnr_db", "analytic_psnr_db", "opt_psnr_db", "victim_psnr_db",
                     "analytic_psnr_db_median", "opt_psnr_db_median", "psnr_db_median"),
                    _PSNR),
    **dict.fromkeys(("ssim", "analytic_ssim", "opt_ssim", "accuracy_drop",
                     "accuracy_cost", "f1_excess_message", "f1_excess_sum",
                     "f1_excess_pilot_rounds", "pilot_f1_excess", "best_baseline_excess"),
                    _SIGNED),
    **dict.fromkeys(("residual", "q_max_abs_err", "audited_eps_lb", "accountant_eps",
                     "accountant_eps_all_rounds", "residual_no_prior", "residual_class_prior",
                     "residual_informed", "test_loss", "clip"), _NONNEG),
}
ALPHA = 0.05  # every interval over seeds is two-sided 95 %
# How :func:`mean_interval` found an interval (the ``interval`` field of a result row).
INTERVALS = {
    "student-t": "Student-t interval of the mean",
    "student-t clipped": "Student-t interval of the mean, clipped to the metric's range",
    "clopper-pearson": "every value at an end of the range: Clopper-Pearson interval of "
                       "the share at the top end (a rate)",
    "all equal": "every value the same: no spread to build an interval from (lo = hi = "
                 "the value)",
    "n=1": "one value: no interval (lo, hi NaN)",
    "n=0": "no finite value",
    "median order statistics": "the median; interval between two order statistics with "
                               "binomial coverage >= 95 %",
    "median range": "the median; interval from the smallest to the largest value (too few "
                    "values for 95 % order-statistic coverage: the coverage is stated)",
}


def metric_range(metric: str | None) -> tuple[float, float]:
    """(low, high) of a metric's values (:data:`METRIC_RANGES`; unbounded if unknown)."""
    return METRIC_RANGES.get(metric or "", (-math.inf, math.inf))


class Interval(NamedTuple):
    """The mean of repeated measurements and its two-sided 95 % interval.

    Attributes:
      mean: of the finite values (NaN: none).
      lo, hi: the interval, inside the metric's range; NaN for fewer than two values.
      n: finite values.
      method: a key of :data:`INTERVALS`.
    """

    mean: float
    lo: float
    hi: float
    n: int
    method: str


def mean_interval(values: npt.ArrayLike, bounds: Sequence[float] = (-math.inf, math.inf)
                  ) -> Interval:
    """The mean of ``values`` and its 95 % interval, kept inside ``bounds``.

    * fewer than two finite values: no interval (a single seed says nothing of spread);
    * ``bounds`` finite and every value at one of its ends (0/1 outcomes of a rate, or
      a PSNR at its cap): the Clopper-Pearson interval of the share at the top end,
      mapped onto ``bounds``. It is valid for any variable in ``bounds``: one with mean
      mu is at the top end with probability at most (mu - low) / (high - low);
    * every value equal (elsewhere): lo = hi = the value, flagged ``"all equal"`` so
      that it is not shown as a certain interval;
    * else the Student-t interval, clipped to ``bounds`` (a mean cannot leave them).

    Args:
      values: f[n]; NaN and inf are left out (``n`` counts the rest).
      bounds: (low, high), the metric's range (:func:`metric_range`).

    Raises:
      ValueError: ``bounds`` is not low < high, or a value lies outside them.
    """
    low, high = (float(b) for b in bounds)
    if not low < high:
        raise ValueError(f"`bounds` (={tuple(bounds)}) must be (low, high) with low < high.")
    v = np.asarray(values, np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "n=0")
    tol = 1e-9 * max([1.0, *(abs(b) for b in (low, high) if math.isfinite(b))])
    bad = v[(v < low - tol) | (v > high + tol)]
    if bad.size:
        raise ValueError(f"value {float(bad[0])!r} lies outside the metric's range "
                         f"[{low}, {high}]; fix the metric's entry in stats.METRIC_RANGES or "
                         "the values.")
    v = np.clip(v, low, high)  # rounding past an end
    m = float(v.mean())
    if v.size == 1:
        return Interval(m, math.nan, math.nan, 1, "n=1")
    at_top, at_bottom = np.abs(v - high) <= tol, np.abs(v - low) <= tol
    if math.isfinite(low) and math.isfinite(high) and np.all(at_top | at_bottom):
        lo, hi = clopper_pearson(int(at_top.sum()), int(v.size), ALPHA)
        return Interval(m, low + (high - low) * lo, low + (high - low) * hi, int(v.size),
                        "clopper-pearson")
    if np.all(v == v[0]):
        return Interval(m, m, m, int(v.size), "all equal")
    half = float(stats.t.ppf(1 - ALPHA / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    lo, hi = max(m - half, low), min(m + half, high)
    clipped = lo > m - half or hi < m + half
    return Interval(m, lo, hi, int(v.size), "student-t clipped" if clipped else "student-t")


def _labels_scores(labels: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[np.ndarray,
                                                                          np.ndarray]:
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"`labels` ({y.size} values) and `scores` ({s.size} values) must "
                         "have the same length.")
    if not np.all(np.isfinite(s)):
        raise ValueError("`scores` must be finite (replace NaN/inf before scoring).")
    return y, s


def roc_auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney U / (n_pos n_neg), ties count one half).

    Args:
      labels: bool[n] (or 0/1) true classes.
      scores: f[n], larger = more likely positive.

    Returns:
      AUC in [0, 1]; NaN when one class is absent.
    """
    y, s = _labels_scores(labels, scores)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = stats.rankdata(s)  # average ranks: ties get one half
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def roc_curve(labels: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray,
                                                                     np.ndarray]:
    """The ROC curve at every distinct threshold ("positive" means score >= threshold).

    Returns:
      (fpr, tpr, thresholds): f64[K+1] each, from (0, 0) at threshold +inf to (1, 1).
    """
    y, s = _labels_scores(labels, scores)
    thresholds = np.concatenate([[np.inf], np.unique(s)[::-1]])
    pos, neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    tp = np.array([np.sum(y & (s >= t)) for t in thresholds], np.float64)
    fp = np.array([np.sum(~y & (s >= t)) for t in thresholds], np.float64)
    return fp / neg, tp / pos, thresholds


def tpr_at_fpr(labels: npt.ArrayLike, scores: npt.ArrayLike, fpr: float = 0.01) -> float:
    """The largest true-positive rate of a threshold whose false-positive rate is <= ``fpr``.

    With n negatives, FPRs below 1/n can only be met by flagging no negative at all;
    report ``fpr`` >= 1/n (PRIVACY-ANCHORS 1.3: TPR at 1 % FPR on digits).
    """
    if not 0 <= fpr <= 1:
        raise ValueError(f"`fpr` (={fpr}) must be in [0, 1].")
    f, t, _ = roc_curve(labels, scores)
    return float(t[f <= fpr + 1e-12].max())


def balanced_accuracy(labels: npt.ArrayLike, predictions: npt.ArrayLike) -> float:
    """Mean of the true-positive and true-negative rates of binary predictions."""
    y = np.asarray(labels).astype(bool).ravel()
    p = np.asarray(predictions).astype(bool).ravel()
    if y.shape != p.shape:
        raise ValueError(f"`labels` ({y.size}) and `predictions` ({p.size}) must have the "
                         "same length.")
    rates = [np.mean(p[y]) if y.any() else math.nan, np.mean(~p[~y]) if (~y).any() else
             math.nan]
    return float(np.nanmean(rates))


def best_balanced_accuracy(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Balanced accuracy of the best threshold (LiRA's "balanced accuracy"):
    ``max_t (TPR(t) + 1 - FPR(t)) / 2``."""
    f, t, _ = roc_curve(labels, scores)
    return float(np.max((t + 1 - f) / 2))


def set_f1(true_set: Iterable[int], predicted_set: Iterable[int]) -> float:
    """F1 of a recovered set against the true set (1 when both are empty)."""
    a, b = set(int(v) for v in true_set), set(int(v) for v in predicted_set)
    if not a and not b:
        return 1.0
    tp = len(a & b)
    return 2 * tp / (len(a) + len(b))


def chance_set_f1(n_items: int, n_true: int, n_predicted: int) -> float:
    """Expected F1 of a uniformly random ``n_predicted``-subset of ``n_items`` against a
    fixed ``n_true``-subset (the chance level of :func:`set_f1`).

    The overlap is hypergeometric with mean ``n_true n_predicted / n_items``, and F1
    is linear in the overlap.
    """
    if not 0 < n_true <= n_items or not 0 < n_predicted <= n_items:
        raise ValueError(f"set sizes (={n_true}, {n_predicted}) must be in 1..{n_items}.")
    return 2 * (n_true * n_predicted / n_items) / (n_true + n_predicted)


def clopper_pearson(successes: int, trials: int, alpha: float = 0.05) -> tuple[float, float]:
    """The exact two-sided (1 - alpha) binomial interval of ``successes / trials``."""
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"`successes` (={successes}) must be in 0..`trials` (={trials}), "
                         "trials >= 1.")
    lo = 0.0 if successes == 0 else stats.beta.ppf(alpha / 2, successes,
                                                   trials - successes + 1)
    hi = 1.0 if successes == trials else stats.beta.ppf(1 - alpha / 2, successes + 1,
                                                        trials - successes)
    return float(lo), float(hi)


def median_interval(values: npt.ArrayLike, bounds: Sequence[float] = (-math.inf, math.inf)
                    ) -> Interval:
    """The median of ``values`` and a distribution-free interval for it.

    The interval is [x_(j), x_(n+1-j)] with the largest j whose binomial coverage
    ``1 - 2 P(Binom(n, 1/2) <= j - 1)`` is at least 95 %; with fewer than 6 values no j
    reaches it and the interval is [min, max] (method ``"median range"``; its coverage,
    ``1 - 2^(1-n)``, is below 95 %); identical values give ``"all equal"`` (no
    interval), as in :func:`mean_interval`. The median is what a capped metric (PSNR at
    :data:`PSNR_CAP_DB`) should be summarised by: a mean mixes exact and failed
    reconstructions.

    Raises:
      ValueError: a value lies outside ``bounds``.
    """
    low, high = (float(b) for b in bounds)
    v = np.sort(np.asarray(values, np.float64).ravel())
    v = v[np.isfinite(v)]
    tol = 1e-9 * max([1.0, *(abs(b) for b in (low, high) if math.isfinite(b))])
    if v.size and (v[0] < low - tol or v[-1] > high + tol):
        raise ValueError(f"values [{v[0]!r}, {v[-1]!r}] lie outside the metric's range "
                         f"[{low}, {high}].")
    if v.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "n=0")
    med = float(np.median(v))
    if v.size == 1:
        return Interval(med, math.nan, math.nan, 1, "n=1")
    if v[0] == v[-1]:  # no spread: flagged, not shown as a certain interval
        return Interval(med, med, med, int(v.size), "all equal")
    n = v.size
    best = 0
    for j in range(1, n // 2 + 1):
        if 1 - 2 * stats.binom.cdf(j - 1, n, 0.5) >= 1 - ALPHA:
            best = j
    if best == 0:
        return Interval(med, float(v[0]), float(v[-1]), n, "median range")
    return Interval(med, float(v[best - 1]), float(v[n - best]), n, "median order statistics")


class PValue(NamedTuple):
    """A one-sided p-value and how it was found."""

    p: float
    method: str  # "student-t", "binomial (values at the range's ends)", "no spread", "n<2"


def p_above(values: npt.ArrayLike, threshold: float = 0.0,
            bounds: Sequence[float] = (-math.inf, math.inf)) -> PValue:
    """One-sided p-value of H0: mean <= ``threshold`` against mean > ``threshold``, from
    independent values (one per seed).

    * fewer than two finite values: p = 1 (one seed never refutes);
    * ``bounds`` finite and every value at one of its ends (a rate of 0/1 outcomes, a
      PSNR at its cap): exact binomial test of the share k at the top end. A variable in
      [low, high] with mean mu is at the top end with probability at most
      ``(mu - low) / (high - low)`` (Markov), so under H0 ``p = P(Binom(n, pi0) >= k)``
      with ``pi0 = (threshold - low) / (high - low)`` is valid;
    * every value equal elsewhere: no spread to test with, p = 1 (stated as such);
    * else Student's one-sample t-test.

    Raises:
      ValueError: ``bounds`` not low < high.
    """
    low, high = (float(b) for b in bounds)
    if not low < high:
        raise ValueError(f"`bounds` (={tuple(bounds)}) must be (low, high) with low < high.")
    v = np.asarray(values, np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size < 2:
        return PValue(1.0, "n<2")
    tol = 1e-9 * max([1.0, *(abs(b) for b in (low, high) if math.isfinite(b))])
    at_top, at_bottom = np.abs(v - high) <= tol, np.abs(v - low) <= tol
    if math.isfinite(low) and math.isfinite(high) and np.all(at_top | at_bottom):
        pi0 = min(max((threshold - low) / (high - low), 0.0), 1.0)
        k = int(at_top.sum())
        return PValue(float(stats.binom.sf(k - 1, v.size, pi0)) if k else 1.0,
                      "binomial (values at the range's ends)")
    if np.all(v == v[0]):
        return PValue(1.0, "no spread")
    t = (v.mean() - threshold) / (v.std(ddof=1) / math.sqrt(v.size))
    return PValue(float(stats.t.sf(t, v.size - 1)), "student-t")


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979): reject cell i at level a when its
    adjusted p is <= a; the family-wise error rate is then at most a.

    ``p_(i) -> max_{j <= i} min(1, (m - j + 1) p_(j))`` over the p-values sorted
    ascending.

    Returns:
      f64[m], in the input's order.
    """
    p = np.asarray(pvalues, np.float64).ravel()
    m = p.size
    if m == 0:
        return p
    if np.any(np.isnan(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError(f"`pvalues` must lie in [0, 1]; got {p.tolist()}.")
    order = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adj = np.maximum.accumulate(adj)
    out = np.empty(m)
    out[order] = adj
    return out
