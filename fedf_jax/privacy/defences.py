"""Defences inside the protocol, their privacy accounting, and an empirical audit.

Two defences implement :class:`fedf_jax.privacy.common.Defence`:

- :class:`WorkerDP`, worker-level DP. The update ``Delta = Q_k - P^{t-1}`` is clipped
  to L2 norm ``clip`` and gets ``N(0, sigma^2 clip^2)`` per coordinate; the worker
  sends ``P^{t-1} + noised Delta`` when it is pilot and derives its ternary T_k
  (Eq. 4/5) from the same noised model otherwise. Its reported cost is clipped
  to ``[0, cost_clip]`` and gets ``N(0, cost_sigma^2 cost_clip^2)``. Everything
  else a worker releases (T_k, the pilot's model) is post-processing of those two.
- :class:`PilotNoise`, the naive defence: Gaussian noise on the pilot's model only.
  It has no finite epsilon: nothing is clipped and the ternaries are sent as is.

Accounting. FEDF has no secure aggregation: the master sees each worker's message
by itself, so worker-level DP here is *local* DP of the worker's data set. Two
local data sets of one worker that differ in one sample (replace-one; the
reported size S_k does not change) can move the clipped update anywhere in the
ball of radius ``clip``, so the L2 sensitivity of the update is ``2 clip`` and
that of the clipped cost is ``cost_clip``. One round is the composition of two
Gaussian mechanisms with noise multipliers (std / sensitivity) ``sigma / 2`` and
``cost_sigma``, which is exactly one Gaussian mechanism with
``z^-2 = (sigma/2)^-2 + cost_sigma^-2``; ``rounds`` rounds compose to one with
``z / sqrt(rounds)``. :func:`epsilon` asks dp-accounting's PLD accountant;
:func:`from_arm` calibrates ``z`` for a target epsilon and gives
:data:`COST_SHARE` of the per-round budget (in ``z^-2``) to the cost.

Audit: :func:`audited_epsilon` turns the scores of an attack on runs with and
without a canary into a lower bound on epsilon (Clopper-Pearson intervals on the
attack's TPR and FPR, as in Jagielski et al. 2020 and Nasr et al. 2021).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
from scipy import stats as sp_stats

from fedf_jax.privacy import stats
from fedf_jax.privacy.common import Defence

COST_SHARE = 0.1  # share of each round's budget (in z^-2) spent on the reported cost
COST_CLIP = 5.0  # costs are clipped to [0, COST_CLIP] (cross-entropy of 10 classes
# starts near ln 10 = 2.3, so honest costs are rarely clipped)


@dataclasses.dataclass(frozen=True)
class WorkerDP:
    """Worker-level DP: clipped, noised update; noised cost (a :class:`Defence`).

    Attributes:
      name: e.g. ``"dp8"``.
      clip: C, the L2 bound of ``Q_k - P^{t-1}``.
      sigma: noise std per coordinate in units of ``clip`` (0: clipping only).
      cost_sigma: noise std of the reported cost in units of ``cost_clip`` (0: none).
      cost_clip: the reported cost is clipped to ``[0, cost_clip]`` first.
    """

    name: str
    clip: float
    sigma: float
    cost_sigma: float
    cost_clip: float = COST_CLIP

    def __post_init__(self):
        for field in ("clip", "cost_clip"):
            v = getattr(self, field)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"`{field}` (={v}) must be a positive number.")
        for field in ("sigma", "cost_sigma"):
            v = getattr(self, field)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"`{field}` (={v}) must be a finite number >= 0.")

    def worker(self, key: jax.Array, q: jax.Array, p_prev: jax.Array, cost: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
        """(Q_k sent, C_k reported) of one worker.

        Args:
          key: this worker's key for this round.
          q: f32[M] its true local model Q_k^t; p_prev: f32[M] P^{t-1}; cost: f32[] C_k^t.

        Returns:
          (f32[M] ``P^{t-1} + clip(Q - P^{t-1}) + N(0, sigma^2 C^2)``, f32[] noised cost).
          A non-finite update or cost counts as zero / ``cost_clip`` (so the
          sensitivity bound holds whatever the local training did).
        """
        k_update, k_cost = jax.random.split(key)
        delta = jnp.asarray(q, jnp.float32) - p_prev
        delta = jnp.where(jnp.all(jnp.isfinite(delta)), delta, 0.0)
        delta = clip_l2(delta, self.clip)
        noise = self.sigma * self.clip * jax.random.normal(k_update, delta.shape)
        cost = jnp.where(jnp.isfinite(cost), jnp.clip(cost, 0.0, self.cost_clip),
                         self.cost_clip)
        cost = cost + self.cost_sigma * self.cost_clip * jax.random.normal(k_cost, ())
        return p_prev + delta + noise, cost

    def pilot(self, key: jax.Array, q_pilot: jax.Array) -> jax.Array:
        """The pilot's model as sent: already noised by :meth:`worker`."""
        del key  # not used: no second release
        return q_pilot

    @property
    def noise_multiplier(self) -> float:
        """z of the one Gaussian mechanism equal to one round (update and cost); 0 when
        either channel has no noise (no finite epsilon)."""
        if self.sigma == 0 or self.cost_sigma == 0:
            return 0.0
        return 1.0 / math.sqrt((2.0 / self.sigma) ** 2 + (1.0 / self.cost_sigma) ** 2)

    def epsilon(self, rounds: int, delta: float) -> float:
        """Epsilon of ``rounds`` rounds, composing both channels' events in dp-accounting."""
        if self.sigma == 0 or self.cost_sigma == 0:
            return math.inf
        _check_budget(rounds, delta)
        return _pld_epsilon((self.sigma / 2.0, self.cost_sigma), int(rounds), float(delta))


@dataclasses.dataclass(frozen=True)
class PilotNoise:
    """Naive defence: ``N(0, sigma^2)`` on every coordinate of the pilot's model only
    (a :class:`Defence`). No clipping, ternaries and costs untouched: epsilon is inf."""

    name: str
    sigma: float

    def __post_init__(self):
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(f"`sigma` (={self.sigma}) must be a finite number >= 0.")

    def worker(self, key: jax.Array, q: jax.Array, p_prev: jax.Array, cost: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
        del key, p_prev  # not used: workers send their true messages
        return q, cost

    def pilot(self, key: jax.Array, q_pilot: jax.Array) -> jax.Array:
        """f32[M] ``Q_{k*} + N(0, sigma^2 I)``."""
        return q_pilot + self.sigma * jax.random.normal(key, jnp.shape(q_pilot))


def clip_l2(v: jax.Array, bound: float) -> jax.Array:
    """``v * min(1, bound / ||v||_2)`` (f32[M] -> f32[M]); zero stays zero."""
    norm = jnp.sqrt(jnp.sum(jnp.square(v)))
    return v * jnp.minimum(1.0, bound / jnp.maximum(norm, 1e-30))


def _check_budget(rounds: int, delta: float) -> None:
    if isinstance(rounds, bool) or int(rounds) != rounds or rounds < 1:
        raise ValueError(f"`rounds` (={rounds}) must be an integer >= 1.")
    if not 0 < delta < 1:
        raise ValueError(f"`delta` (={delta}) must be in (0, 1).")


@functools.lru_cache(maxsize=256)
def _pld_epsilon(multipliers: tuple[float, ...], rounds: int, delta: float) -> float:
    """PLD epsilon of ``rounds`` rounds, each composing Gaussians of these multipliers."""
    one_round = dp_accounting.ComposedDpEvent(
        [dp_accounting.GaussianDpEvent(float(z)) for z in multipliers])
    accountant = dp_accounting.pld.PLDAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(one_round, rounds))
    return float(accountant.get_epsilon(delta))


def epsilon(sigma: float, rounds: int, delta: float) -> float:
    """Epsilon at ``delta`` of ``rounds`` Gaussian mechanisms of noise multiplier ``sigma``
    (std / L2 sensitivity), from dp-accounting's PLD accountant; inf for ``sigma == 0``.
    """
    _check_budget(rounds, delta)
    if not (sigma >= 0 and not math.isnan(sigma)):
        raise ValueError(f"`sigma` (={sigma}) must be >= 0.")
    if sigma == 0:
        return math.inf
    if math.isinf(sigma):
        return 0.0
    return _pld_epsilon((float(sigma),), int(rounds), float(delta))


def sigma_for_epsilon(eps: float, rounds: int, delta: float) -> float:
    """The noise multiplier whose ``rounds``-fold composition has exactly ``eps`` at
    ``delta``; 0.0 for ``eps == inf``.

    dp-accounting's PLD accountant treats ``rounds`` Gaussians of multiplier z as one
    of multiplier ``z / sqrt(rounds)`` (exact for Gaussians), so the inverse is
    ``sqrt(rounds)`` times the analytic Gaussian mechanism's sigma (Balle & Wang 2018).
    """
    _check_budget(rounds, delta)
    if math.isinf(eps) and eps > 0:
        return 0.0
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"`eps` (={eps}) must be a positive number or inf.")
    return float(dp_accounting.get_sigma_gaussian(eps, delta)) * math.sqrt(rounds)


def worker_dp(eps: float, rounds: int, delta: float, clip: float = 1.0,
              cost_clip: float = COST_CLIP, name: str | None = None) -> WorkerDP:
    """The :class:`WorkerDP` whose ``rounds`` rounds spend exactly ``eps`` at ``delta``.

    The per-round multiplier z (:func:`sigma_for_epsilon`) is split so that the cost
    gets :data:`COST_SHARE` of ``z^-2``: ``cost_sigma = z / sqrt(COST_SHARE)`` and
    ``sigma / 2 = z / sqrt(1 - COST_SHARE)`` (sensitivity ``2 clip``). ``eps = inf``
    gives clipping only.
    """
    z = sigma_for_epsilon(eps, rounds, delta)
    name = name or f"dp{eps:g}"
    if z == 0:
        return WorkerDP(name, clip, 0.0, 0.0, cost_clip)
    return WorkerDP(name, clip, 2.0 * z / math.sqrt(1 - COST_SHARE),
                    z / math.sqrt(COST_SHARE), cost_clip)


_NUMBER = r"(inf|\d+(?:\.\d*)?(?:e[+-]?\d+)?)"
_SUFFIX = re.compile(r"^(?P<base>fedavg|signfedavg|fedf[+-]1)(?:\+(?P<kind>dp|pilotnoise)"
                     + _NUMBER + r")?$")


def from_arm(arm: str, rounds: int, delta: float, clip: float = 1.0) -> Defence | None:
    """The defence named by an arm's suffix: ``"+dp<eps>"`` (:func:`worker_dp`, ``inf`` for
    clipping only) or ``"+pilotnoise<sigma>"`` (:class:`PilotNoise`); None without one.

    Examples: ``"fedf+1"`` -> None, ``"fedf+1+dp8"`` -> WorkerDP at epsilon 8,
    ``"fedf-1+pilotnoise0.01"`` -> PilotNoise(0.01).
    """
    m = _SUFFIX.match(arm)
    if m is None:
        raise ValueError(f"arm (={arm!r}) must be fedavg, signfedavg, fedf+1 or fedf-1, "
                         "optionally followed by +dp<eps> or +pilotnoise<sigma> "
                         "(e.g. fedf+1+dp8).")
    kind, value = m.group("kind"), m.group(3)
    if kind is None:
        return None
    if kind == "pilotnoise":
        return PilotNoise(f"pilotnoise{value}", float(value))
    eps = float(value)
    if eps <= 0:
        raise ValueError(f"arm (={arm!r}): epsilon must be > 0.")
    return worker_dp(eps, rounds, delta, clip=clip, name=f"dp{value}")


def _cp_lower(successes: np.ndarray, trials: int, alpha: float) -> np.ndarray:
    """Lower ends of two-sided (1 - alpha) Clopper-Pearson intervals (vectorised
    :func:`stats.clopper_pearson`); the upper end of k is 1 - lower end of n - k."""
    k = np.asarray(successes)
    lo = sp_stats.beta.ppf(alpha / 2, np.maximum(k, 1), trials - k + 1)
    return np.where(k == 0, 0.0, lo)


def audited_epsilon(in_scores: npt.ArrayLike, out_scores: npt.ArrayLike, delta: float,
                    alpha: float = 0.05) -> dict[str, float]:
    """A lower bound on epsilon from an attack's scores on runs with / without a canary.

    For each threshold tau, "canary in" when score >= tau. Any (eps, delta)-DP
    mechanism satisfies ``TPR <= e^eps FPR + delta`` and ``TNR <= e^eps FNR + delta``,
    so ``eps >= log((TPR_lo - delta) / FPR_hi)`` (and the same with TNR/FNR), with
    one-sided ``1 - alpha/2`` Clopper-Pearson bounds on each rate. The bound is the
    maximum over thresholds; choosing the threshold on the same scores makes it
    slightly optimistic, which the CP margins partly absorb.

    Args:
      in_scores: f[n_in] attack scores of runs trained with the canary.
      out_scores: f[n_out] scores of runs without it.
      delta: the delta of the guarantee being audited.
      alpha: the intervals' total miss probability.

    Returns:
      {"eps_lb": the audited lower bound (0 when nothing is found), "tpr", "fpr": the
      point rates of the best threshold, "threshold", "auc"}.
    """
    a = np.asarray(in_scores, np.float64).ravel()
    b = np.asarray(out_scores, np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError("`in_scores` and `out_scores` must both be non-empty.")
    taus = np.unique(np.concatenate([a, b]))
    tp = np.sum(a[None, :] >= taus[:, None], axis=1)
    fp = np.sum(b[None, :] >= taus[:, None], axis=1)
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
        best = {"eps_lb": 0.0, "tpr": math.nan, "fpr": math.nan, "threshold": math.nan}
    labels = np.concatenate([np.ones(a.size, bool), np.zeros(b.size, bool)])
    best["auc"] = stats.roc_auc(labels, np.concatenate([a, b]))
    return best
