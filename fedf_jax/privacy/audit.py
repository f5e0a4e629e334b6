"""An empirical audit of a DP accountant: a lower bound on epsilon from an attack's scores.

:func:`audited_epsilon` turns the scores of an attack on runs with and without a canary
into a lower bound on epsilon (Clopper-Pearson intervals on the attack's TPR and FPR,
as in Jagielski et al. 2020 and Nasr et al. 2021); :func:`audit_split` chooses the
threshold on other runs than those it bounds on.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy import stats as sp_stats

from fedf_jax.privacy import stats


def _cp_lower(successes: np.ndarray, trials: int, alpha: float) -> np.ndarray:
    """Lower ends of two-sided (1 - alpha) Clopper-Pearson intervals (vectorised
    :func:`stats.clopper_pearson`); the upper end of k is 1 - lower end of n - k."""
    k = np.asarray(successes)
    lo = sp_stats.beta.ppf(alpha / 2, np.maximum(k, 1), trials - k + 1)
    return np.where(k == 0, 0.0, lo)


def audited_epsilon(in_scores: npt.ArrayLike, out_scores: npt.ArrayLike, delta: float,
                    alpha: float = 0.05, threshold: float | None = None) -> dict[str, float]:
    """A lower bound on epsilon from an attack's scores on runs with / without a canary.

    For a threshold tau, "canary in" when score >= tau. Any (eps, delta)-DP
    mechanism satisfies ``TPR <= e^eps FPR + delta`` and ``TNR <= e^eps FNR + delta``,
    so ``eps >= log((TPR_lo - delta) / FPR_hi)`` (and the same with TNR/FNR), with
    one-sided ``1 - alpha/2`` Clopper-Pearson bounds on each rate. Without ``threshold``
    the bound is the maximum over every threshold (choosing it on the same scores makes
    it slightly optimistic, which the CP margins partly absorb); with one (chosen on
    other runs, :func:`audit_split`) the bound is valid at level ``alpha``.

    Args:
      in_scores: f[n_in] attack scores of runs trained with the canary.
      out_scores: f[n_out] scores of runs without it.
      delta: the delta of the guarantee being audited.
      alpha: the intervals' total miss probability.
      threshold: a fixed threshold (None: the best over all of them).

    Returns:
      {"eps_lb": the audited lower bound (0 when nothing is found), "tpr", "fpr": the
      point rates of the best threshold, "threshold", "auc"}.
    """
    a = np.sort(np.asarray(in_scores, np.float64).ravel())
    b = np.sort(np.asarray(out_scores, np.float64).ravel())
    if a.size == 0 or b.size == 0:
        raise ValueError("`in_scores` and `out_scores` must both be non-empty.")
    taus = (np.unique(np.concatenate([a, b])) if threshold is None
            else np.array([float(threshold)]))
    tp = a.size - np.searchsorted(a, taus, side="left")  # scores >= tau
    fp = b.size - np.searchsorted(b, taus, side="left")
    tpr_lo = _cp_lower(tp, a.size, alpha)
    fpr_hi = 1.0 - _cp_lower(b.size - fp, b.size, alpha)
    tnr_lo = _cp_lower(b.size - fp, b.size, alpha)
    fnr_hi = 1.0 - _cp_lower(tp, a.size, alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        eps = np.maximum(np.log((tpr_lo - delta) / fpr_hi), np.log((tnr_lo - delta) / fnr_hi))
    eps = np.where(np.isfinite(eps), eps, 0.0)
    i = int(np.argmax(eps))
    if eps[i] > 0:
        best = {"eps_lb": float(eps[i]), "tpr": tp[i] / a.size, "fpr": fp[i] / b.size,
                "threshold": float(taus[i])}
    else:
        best = {"eps_lb": 0.0, "tpr": math.nan, "fpr": math.nan,
                "threshold": math.nan if threshold is None else float(threshold)}
    labels = np.concatenate([np.ones(a.size, bool), np.zeros(b.size, bool)])
    best["auc"] = stats.roc_auc(labels, np.concatenate([a, b]))
    return best


def audit_split(in_scores: npt.ArrayLike, out_scores: npt.ArrayLike, delta: float,
                fit_share: float = 0.2, alpha: float = 0.05) -> dict[str, float]:
    """:func:`audited_epsilon` with the threshold chosen on the first ``fit_share`` of each
    score sample and the bound computed on the rest (so the threshold's choice does not
    bias it). Scores must come in an order independent of their values (trial order).

    Returns:
      :func:`audited_epsilon`'s dict on the held-out scores, plus ``"n_fit"`` and
      ``"n_eval"`` (runs per world).
    """
    a = np.asarray(in_scores, np.float64).ravel()
    b = np.asarray(out_scores, np.float64).ravel()
    if not 0 < fit_share < 1:
        raise ValueError(f"`fit_share` (={fit_share}) must be in (0, 1).")
    ka, kb = int(a.size * fit_share), int(b.size * fit_share)
    if min(ka, kb, a.size - ka, b.size - kb) < 1:
        raise ValueError(f"{a.size} and {b.size} scores are too few to split at "
                         f"`fit_share` (={fit_share}).")
    fit = audited_epsilon(a[:ka], b[:kb], delta, alpha)
    tau = fit["threshold"]
    if not math.isfinite(tau):
        out = audited_epsilon(a[ka:], b[kb:], delta, alpha, threshold=np.inf)
        out["eps_lb"] = 0.0
    else:
        out = audited_epsilon(a[ka:], b[kb:], delta, alpha, threshold=tau)
    out.update(n_fit=min(ka, kb), n_eval=min(a.size - ka, b.size - kb))
    return out
