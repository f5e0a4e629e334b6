"""Defences inside the protocol and their privacy accounting.

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

A third defence, :class:`DPSGD`, is example-level DP-SGD inside local training
(Abadi et al. 2016): per step, each example is taken with probability q = B / n_k
(Poisson sampling), its gradient clipped to ``clip``, the sum noised with
``N(0, sigma^2 clip^2)``; the reported cost is the mean of per-example losses clipped
to ``[0, cost_clip]`` plus ``N(0, (cost_sigma cost_clip / n_k)^2)`` (replace-one
sensitivity ``cost_clip / n_k``). Its accountant composes, per round, the sampled
Gaussian over the worker's steps with the cost's Gaussian (dp-accounting's RDP
accountant); ``sigma`` is calibrated for the worker with the largest epsilon.

The empirical audit of these accountants is in :mod:`fedf_jax.privacy.audit`.
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

from fedf_jax import keys
from fedf_jax.privacy.common import Defence

COST_SHARE = 0.1  # share of each round's budget (in z^-2) spent on the reported cost
EXAMPLE_CLIP = 1.0  # DP-SGD's per-example gradient bound (E9 sets it from public data)
# RDP orders of the DP-SGD accountant (integers and a few fractions above 1: the series
# for orders close to 1 does not converge for sampled Gaussians of small sigma)
RDP_ORDERS = (2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 24.0,
              32.0, 48.0, 64.0, 128.0, 256.0, 512.0, 1024.0)
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


@dataclasses.dataclass(frozen=True)
class DPSGD:
    """Example-level DP-SGD in every worker's local training (a :class:`Defence` whose
    ``train`` replaces the local training; ``worker`` and ``pilot`` send its result as is).

    Attributes:
      name: e.g. ``"dpsgd8"``.
      target_eps: the epsilon it was calibrated for (inf: clipping only).
      clip: the per-example gradient L2 bound.
      sigma: noise std of each step's gradient sum, in units of ``clip`` (0: none).
      cost_sigma: noise std of the reported cost, in units of ``cost_clip / n_k``.
      cost_clip: per-example losses are clipped to ``[0, cost_clip]`` in the cost.
    """

    name: str
    target_eps: float
    clip: float
    sigma: float
    cost_sigma: float
    cost_clip: float = COST_CLIP

    def train(self, fed, seed: int, epoch: int, p_prev: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        """Every worker's DP-SGD local training from P^{t-1} and its noised cost.

        Worker k runs ``local_epochs * ceil(n_k / B)`` steps with sampling rate
        ``q_k = min(1, B / n_k)`` and its private learning rate; the step is
        ``-lr (sum of clipped sampled gradients + noise) / (q_k n_k)``. Keys: the
        DEFENCE stream folded with the epoch and the worker (as the other defences).

        Returns:
          (q: f32[N, M], costs: f32[N]).
        """
        sizes = np.array([len(y) for y in fed.y_parts])
        n_max = int(sizes.max())
        x = np.stack([np.pad(v, [(0, n_max - len(v))] + [(0, 0)] * (v.ndim - 1))
                      for v in fed.x_parts]).astype(np.float32)
        y = np.stack([np.pad(v, (0, n_max - len(v))) for v in fed.y_parts]).astype(np.int32)
        batch = np.array([s.batch_size for s in fed.specs])
        rates = np.minimum(1.0, batch / sizes)
        counts = np.array([s.local_epochs for s in fed.specs]) * -(-sizes // batch)
        root = jax.random.fold_in(keys.stream(seed, keys.DEFENCE), epoch)
        wkeys = jax.vmap(lambda k: jax.random.fold_in(root, k))(jnp.arange(len(sizes)))
        q, costs = _dpsgd_train(fed.model, jnp.asarray(p_prev), jnp.asarray(x), jnp.asarray(y),
                                jnp.asarray(sizes, jnp.int32),
                                jnp.asarray([s.lr for s in fed.specs], jnp.float32),
                                jnp.asarray(rates, jnp.float32), jnp.asarray(counts, jnp.int32),
                                wkeys, jnp.float32(self.clip), jnp.float32(self.sigma),
                                jnp.float32(self.cost_sigma), jnp.float32(self.cost_clip),
                                steps=int(counts.max()))
        return np.asarray(q), np.asarray(costs)

    def worker(self, key: jax.Array, q: jax.Array, p_prev: jax.Array, cost: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
        del key, p_prev  # not used: the noise is inside the training
        return q, cost

    def pilot(self, key: jax.Array, q_pilot: jax.Array) -> jax.Array:
        del key  # not used: no second release
        return q_pilot

    def epsilon(self, rounds: int, delta: float, recipes) -> float:
        """The largest epsilon after ``rounds`` rounds over workers with these recipes.

        Args:
          recipes: (n_k, batch size, local epochs) of each worker.
        """
        if self.sigma == 0 or self.cost_sigma == 0:
            return math.inf
        _check_budget(rounds, delta)
        return max(_dpsgd_epsilon(self.sigma, self.cost_sigma, min(1.0, b / n),
                                  e * -(-n // b), int(rounds), delta)
                   for n, b, e in sorted(set((int(n), int(b), int(e)) for n, b, e in recipes)))


@functools.partial(jax.jit, static_argnames=("model", "steps"))
def _dpsgd_train(model, p, x, y, sizes, lrs, rates, counts, wkeys, clip, sigma, cost_sigma,
                 cost_clip, steps: int):
    """vmapped DP-SGD of every worker (padded data; a worker's surplus steps are no-ops)."""
    from fedf_jax import worker  # noqa: PLC0415 (the model's loss)

    n_max = x.shape[1]

    def loss(params, xi, yi):
        return worker.cross_entropy(model.apply(params, xi[None]), yi[None])[0]

    per_example = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))

    def one(x, y, size, lr, q, count, key):
        valid = jnp.arange(n_max) < size
        k_steps, k_cost = jax.random.split(key)

        def step(p, s):
            k_take, k_noise = jax.random.split(jax.random.fold_in(k_steps, s))
            take = valid & (jax.random.uniform(k_take, (n_max,)) < q)
            g = per_example(p, x, y)
            norms = jnp.sqrt(jnp.sum(jnp.square(g), axis=1))
            g = g * jnp.minimum(1.0, clip / jnp.maximum(norms, 1e-30))[:, None]
            total = jnp.sum(jnp.where(take[:, None], g, 0.0), axis=0)
            total = total + sigma * clip * jax.random.normal(k_noise, total.shape)
            new = p - lr * total / (q * size)
            return jnp.where(s < count, new, p), None

        q_final, _ = jax.lax.scan(step, p, jnp.arange(steps))
        losses = jax.vmap(loss, in_axes=(None, 0, 0))(q_final, x, y)
        losses = jnp.clip(jnp.where(jnp.isfinite(losses), losses, cost_clip), 0.0, cost_clip)
        cost = jnp.sum(jnp.where(valid, losses, 0.0)) / size
        cost = cost + cost_sigma * cost_clip / size * jax.random.normal(k_cost, ())
        return q_final, cost

    return jax.vmap(one)(x, y, sizes, lrs, rates, counts, wkeys)


@functools.lru_cache(maxsize=512)
def _dpsgd_epsilon(sigma: float, cost_sigma: float, rate: float, steps: int, rounds: int,
                   delta: float) -> float:
    """RDP epsilon of ``rounds`` rounds of ``steps`` Poisson-sampled Gaussian steps plus
    one Gaussian cost release each."""
    one_round = dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(sigma)),
            steps),
        dp_accounting.GaussianDpEvent(cost_sigma)])
    accountant = dp_accounting.rdp.RdpAccountant(RDP_ORDERS)
    accountant.compose(dp_accounting.SelfComposedDpEvent(one_round, rounds))
    return float(accountant.get_epsilon(delta))


def dpsgd(eps: float, rounds: int, delta: float, recipes, clip: float = 1.0,
          name: str | None = None) -> DPSGD:
    """The :class:`DPSGD` whose ``rounds`` rounds spend ``eps`` at ``delta`` for the worker
    with the largest epsilon (``recipes``: (n_k, batch, local epochs) per worker). The
    cost's multiplier is the one that alone would spend ``COST_SHARE * eps`` over the
    rounds; the steps' ``sigma`` is then calibrated (bisection) so the composition spends
    exactly ``eps``. ``eps = inf``:
    clipping only."""
    _check_budget(rounds, delta)
    name = name or f"dpsgd{eps:g}"
    if math.isinf(eps) and eps > 0:
        return DPSGD(name, eps, clip, 0.0, 0.0)
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"`eps` (={eps}) must be a positive number or inf.")
    cost_sigma = sigma_for_epsilon(COST_SHARE * eps, rounds, delta)
    recipes = sorted(set((int(n), int(b), int(e)) for n, b, e in recipes))
    return _calibrate_dpsgd(name, float(eps), int(rounds), float(delta), tuple(recipes),
                            float(clip), cost_sigma)


@functools.lru_cache(maxsize=64)
def _calibrate_dpsgd(name: str, eps: float, rounds: int, delta: float, recipes: tuple,
                     clip: float, cost_sigma: float) -> DPSGD:
    probe = DPSGD(name, eps, clip, 1.0, cost_sigma)
    # the worker with the fewest samples has the largest sampling rate and epsilon: bisect
    # on it, then check every worker
    worst = (min(recipes),)
    lo, hi = 1e-2, 1e3
    for _ in range(22):  # eps falls with sigma: bisection in log space
        mid = math.sqrt(lo * hi)
        e = dataclasses.replace(probe, sigma=mid).epsilon(rounds, delta, worst)
        lo, hi = (mid, hi) if e > eps else (lo, mid)
    out = dataclasses.replace(probe, sigma=hi)
    if out.epsilon(rounds, delta, recipes) > eps * (1 + 1e-6):  # another worker is worse
        lo, hi = hi, 1e3
        for _ in range(22):
            mid = math.sqrt(lo * hi)
            e = dataclasses.replace(probe, sigma=mid).epsilon(rounds, delta, recipes)
            lo, hi = (mid, hi) if e > eps else (lo, mid)
        out = dataclasses.replace(probe, sigma=hi)
    return out


_NUMBER = r"(inf|\d+(?:\.\d*)?(?:e[+-]?\d+)?)"
_SUFFIX = re.compile(r"^(?P<base>fedavg|signfedavg|fedf[+-]1)"
                     r"(?:\+(?P<kind>dpsgd|dp|pilotnoise)" + _NUMBER + r")?$")


def from_arm(arm: str, rounds: int, delta: float, clip: float = 1.0, fed=None,
             example_clip: float = EXAMPLE_CLIP) -> Defence | None:
    """The defence named by an arm's suffix: ``"+dp<eps>"`` (:func:`worker_dp`, ``inf`` for
    clipping only), ``"+dpsgd<eps>"`` (:func:`dpsgd`, calibrated for ``fed``'s workers,
    per-example clip ``example_clip``) or ``"+pilotnoise<sigma>"`` (:class:`PilotNoise`);
    None without one.

    Examples: ``"fedf+1"`` -> None, ``"fedf+1+dp8"`` -> WorkerDP at epsilon 8,
    ``"fedf-1+pilotnoise0.01"`` -> PilotNoise(0.01).
    """
    m = _SUFFIX.match(arm)
    if m is None:
        raise ValueError(f"arm (={arm!r}) must be fedavg, signfedavg, fedf+1 or fedf-1, "
                         "optionally followed by +dp<eps>, +dpsgd<eps> or +pilotnoise<sigma> "
                         "(e.g. fedf+1+dp8).")
    kind, value = m.group("kind"), m.group(3)
    if kind is None:
        return None
    if kind == "pilotnoise":
        return PilotNoise(f"pilotnoise{value}", float(value))
    eps = float(value)
    if eps <= 0:
        raise ValueError(f"arm (={arm!r}): epsilon must be > 0.")
    if kind == "dpsgd":
        if fed is None:
            raise ValueError(f"arm (={arm!r}): DP-SGD is calibrated for a federation's local "
                             "sets; pass `fed`.")
        recipes = [(len(y), s.batch_size, s.local_epochs)
                   for y, s in zip(fed.y_parts, fed.specs, strict=True)]
        return dpsgd(eps, rounds, delta, recipes, clip=example_clip, name=f"dpsgd{value}")
    return worker_dp(eps, rounds, delta, clip=clip, name=f"dp{value}")
