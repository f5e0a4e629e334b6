"""Attack-success statistics: ROC AUC, TPR at a fixed FPR, set F1, balanced accuracy,
Clopper-Pearson intervals.

Host-side numpy. Scores follow one convention throughout: a larger score means
"more likely positive" (a member, a held class, a worker with the property).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
from scipy import stats


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
