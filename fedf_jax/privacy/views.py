"""What each party of a run observes: federations and recorded protocol rounds.

A :class:`Federation` is an attacked set-up: a model, every worker's private data
(worker 0 is the victim), the workers' private specs, public auxiliary data that no
worker holds, a test set and P^0. :func:`run_arm` runs one protocol arm on it and
records, per global epoch, everything any party could see (:class:`RoundView`),
plus the ground truth the adversaries never see (the true local models), so an
attack can be scored.

Training and the FEDF equations are the project's own code: workers train with
``layout.train_cohort`` (``worker.train_and_cost``, the simulator's keys), the
ternaries come from ``protocol.ternarize`` (Eq. 4/5), the pilot from
``master.select`` (Eq. 1) and P^t from ``master.update`` (Eq. 3 over the packed
ternaries). For the same federation and seed, a ``"fedf+1"`` run is the vmap
simulator's run.

Arms (``common.Options.arms``):
  - ``"fedavg"``: every worker sends Q_k; P^t = sum_k p_k Q_k with p_k = S_k / S
    (over the workers with a finite cost).
  - ``"signfedavg"``: every worker sends s_k = sign(Q_k - P^{t-1}) in {-1, +1} (a zero
    update counts as +1, so one bit per parameter); the master steps by the
    size-weighted mean of the signs, P^t = P^{t-1} + alpha0 sum_k p_k s_k (signSGD
    with a mean vote; its step size is the master's learning rate alpha0).
  - ``"fedf+1"``, ``"fedf-1"``: FEDF with the sign d of Eq. (3).
  - a suffix ``"+dp<eps>"`` or ``"+pilotnoise<sigma>"`` adds a defence, built by
    ``defences.from_arm``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedf_jax import codec, keys, layout, master, protocol, worker
from fedf_jax import guard as pilot_guard
from fedf_jax.algorithms import fedavg
from fedf_jax.data import load_dataset
from fedf_jax.models import Model, make_model
from fedf_jax.privacy.common import Defence, Options
from fedf_jax.privacy.splits import AUX_FRACTION, recipe_cells, recipe_label, split_indices

BASE_ARMS = ("fedavg", "signfedavg", "fedf+1", "fedf-1")
DEFENCE_PREFIXES = ("+dp", "+dpsgd", "+pilotnoise")
LR_RANGE = (0.05, 0.2)  # private learning rates alpha_k, drawn log-uniformly per worker
ALPHA0 = 0.01  # the master's learning rate (MasterConfig's default)
BETA = 0.2  # beta_k of every worker (MasterConfig's default)


class Federation(NamedTuple):
    """An attacked federation (host numpy arrays).

    Attributes:
      model: MLP (hidden=opts.hidden) on digits, the CNN on cifar10.
      x_parts, y_parts: each worker's private data, f32[S_k, ...] and i32[S_k];
        worker 0 is the victim.
      specs: each worker's private hyper-parameters.
      x_aux, y_aux: public auxiliary data, disjoint from every worker's data.
      x_test, y_test: the test set.
      p0: f32[M] P^0.
      alpha0: the master's learning rate (Eq. 3 at t = 1; the signfedavg step).
      beta: beta_k of every worker (Eq. 3, 5).
    """

    model: Model
    x_parts: list[np.ndarray]
    y_parts: list[np.ndarray]
    specs: tuple[worker.WorkerSpec, ...]
    x_aux: np.ndarray
    y_aux: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    p0: np.ndarray
    alpha0: float = ALPHA0
    beta: float = BETA

    @property
    def sizes(self) -> np.ndarray:
        """i64[N] the true S_k."""
        return np.array([len(y) for y in self.y_parts], np.int64)


class RoundView(NamedTuple):
    """One global epoch: everything any party could observe, and the ground truth.

    Attributes:
      epoch: t (1-based).
      p_prev: f32[M] P^{t-1} (everyone sees it).
      p_prev2: f32[M] P^{t-2} (P^0 at t = 1, as the master's state holds it).
      q_true: f32[N, M] the true local models (ground truth, never observed).
      q_sent: f32[N, M] the models after the defence and any lie; what FedAvg workers
        send; in FEDF only the pilot's row leaves its worker (after the pilot defence).
      ternary: i8[N, M] T_k of Eq. (4)/(5) from ``q_sent`` (fedf arms; the pilot's row
        is computed but not sent); sign(Q_k - P^{t-1}) in {-1, +1} (signfedavg); None
        (fedavg).
      costs: f32[N] reported costs C_k^t.
      sizes: i64[N] reported S_k.
      pilot: k* (-1 for non-FEDF arms, or when no cost is finite, or none is admissible
        under a guard).
      p_new: f32[M] P^t.
      paper_pilot: the pilot Eq. (1) alone would choose (differs from ``pilot`` only under
        a pilot guard).
      pilot_refused: the guard refused the pilot's step; Eq. (3) used P^{t-1} in place of
        its model.
    """

    epoch: int
    p_prev: np.ndarray
    p_prev2: np.ndarray
    q_true: np.ndarray
    q_sent: np.ndarray
    ternary: np.ndarray | None
    costs: np.ndarray
    sizes: np.ndarray
    pilot: int
    p_new: np.ndarray
    paper_pilot: int = -1
    pilot_refused: bool = False


@functools.cache
def _model(data: str, input_shape: tuple[int, ...], num_classes: int, hidden: int) -> Model:
    """One Model object per configuration, so jitted steps are reused across federations."""
    if data == "cifar10":
        return make_model("cnn", input_shape, num_classes)
    return make_model("mlp", input_shape, num_classes, hidden=(hidden,))


@functools.lru_cache(maxsize=4)
def _dataset(data: str, data_dir: str | None):
    return load_dataset(data, data_dir)


def make_federation(opts: Options, seed: int, *, victim_size: int = 0, local_epochs: int = 1,
                    batch_size: int = 8, victim_classes: Sequence[int] | None = None,
                    victim_data: tuple[np.ndarray, np.ndarray] | None = None) -> Federation:
    """An attacked federation of ``opts.workers`` workers on ``opts.data``.

    Every worker trains with SGD, ``batch_size`` and ``local_epochs``, and its own
    private learning rate drawn log-uniformly from ``LR_RANGE`` (seeded).

    Args:
      opts: data, partition, workers, hidden width.
      seed: the seed of the split, the learning rates and P^0.
      victim_size: the victim's S_0 (0: a normal share).
      local_epochs, batch_size: every worker's local training.
      victim_classes: plants the victim's label set (see :func:`split_indices`).
      victim_data: (f32[S_0, ...], i32[S_0]) the victim's exact samples (membership and
        canary experiments); the caller keeps them out of the other workers' data (e.g.
        test or auxiliary samples).

    Returns:
      The federation.
    """
    if opts.workers < 2:
        raise ValueError(f"`workers` (={opts.workers}) must be >= 2 (a victim and a peer).")
    if victim_size < 0:
        raise ValueError(f"`victim_size` (={victim_size}) must be >= 0 (0: a normal share).")
    ds = _dataset(opts.data, opts.data_dir)
    aux, parts = split_indices(ds.y_train, opts.workers, seed, scheme=opts.partition,
                               alpha=opts.dirichlet_alpha, victim_size=victim_size,
                               victim_classes=victim_classes,
                               forced_victim=victim_data is not None)
    x_parts = [ds.x_train[p] for p in parts]
    y_parts = [ds.y_train[p].astype(np.int32) for p in parts]
    if victim_data is not None:
        vx, vy = np.asarray(victim_data[0], np.float32), np.asarray(victim_data[1], np.int32)
        if vx.shape[1:] != ds.x_train.shape[1:] or len(vx) != len(vy) or len(vy) == 0:
            raise ValueError(f"`victim_data` must be (x: f32[S, *{ds.x_train.shape[1:]}], "
                             f"y: i32[S]) with S >= 1; got {vx.shape} and {vy.shape}.")
        x_parts[0], y_parts[0] = vx, vy
    if min(len(y) for y in y_parts) == 0:
        raise ValueError(f"a worker got no data (sizes {[len(y) for y in y_parts]}); use "
                         f"fewer `workers` (={opts.workers}).")
    rng = np.random.default_rng([seed, 0x1A])
    lrs = np.exp(rng.uniform(np.log(LR_RANGE[0]), np.log(LR_RANGE[1]), opts.workers))
    specs = tuple(worker.WorkerSpec(lr=float(lr), batch_size=int(batch_size),
                                    local_epochs=int(local_epochs)) for lr in lrs)
    model = _model(opts.data, tuple(ds.x_train.shape[1:]), ds.num_classes, opts.hidden)
    return Federation(model, x_parts, y_parts, specs, ds.x_train[aux],
                      ds.y_train[aux].astype(np.int32), ds.x_test, ds.y_test.astype(np.int32),
                      np.asarray(model.init(keys.stream(seed, keys.INIT))))


def parse_arm(arm: str) -> tuple[str, str]:
    """(base arm, defence suffix): ``"fedf+1+dp8"`` -> ``("fedf+1", "+dp8")``."""
    for base in sorted(BASE_ARMS, key=len, reverse=True):
        if arm.startswith(base):
            suffix = arm[len(base):]
            if suffix == "" or _defence_value(suffix) is not None:
                return base, suffix
    raise ValueError(f"`arm` (={arm!r}) must be one of {BASE_ARMS}, optionally followed by "
                     f"'+dp<eps>' or '+pilotnoise<sigma>' (e.g. 'fedf+1+dp8').")


def _defence_value(suffix: str) -> float | None:
    """The number after ``+dp`` / ``+pilotnoise`` (``inf`` allowed), None if malformed."""
    for prefix in sorted(DEFENCE_PREFIXES, key=len, reverse=True):
        if suffix.startswith(prefix):
            try:
                value = float(suffix[len(prefix):])
            except ValueError:
                return None
            return value if value >= 0 else None
    return None


_ternarize = jax.jit(jax.vmap(protocol.ternarize, in_axes=(0, None, None, 0, 0, None)))


def _setup(fed: Federation, seed: int) -> tuple[layout.Workers, tuple]:
    """The simulator's workers and their first optimizer states, for this federation."""
    x, y = np.concatenate(fed.x_parts), np.concatenate(fed.y_parts)
    bounds = np.cumsum([0] + [len(p) for p in fed.y_parts])
    parts = [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    w = layout.build(fed.specs, x, y, parts, betas=np.full(len(fed.specs), fed.beta),
                     x_test=fed.x_test, y_test=fed.y_test,
                     train_key=keys.stream(seed, keys.TRAIN))
    return w, layout.init_opt_states(w.layout, w.data, jnp.asarray(fed.p0))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _train(model: Model, lay: layout.Layout, p, opt_states, data: layout.Data, epoch):
    outs = [layout.train_cohort(model, c, p, data.train_key, epoch, o, cd)
            for c, cd, o in zip(lay.cohorts, data.cohorts, opt_states, strict=True)]
    return (layout.to_workers(lay, [q for q, _, _ in outs]),
            layout.to_workers(lay, [c for _, c, _ in outs]), tuple(o for _, _, o in outs))


def train_workers(model: Model, w: layout.Workers, opt_states, p_prev, epoch: int):
    """Every worker's local training from P^{t-1} (the simulator's own step and keys).

    Returns:
      (q: f32[N, M], costs: f32[N], opt_states).
    """
    q, costs, opt_states = _train(model, w.layout, jnp.asarray(p_prev), opt_states, w.data,
                                  jnp.int32(epoch))
    return np.asarray(q), np.asarray(costs), opt_states


def _defence_keys(seed: int, epoch: int, n: int) -> tuple[jax.Array, jax.Array]:
    """(worker keys [N], pilot key) of a defence at one epoch, by fold_in."""
    at = jax.random.fold_in(keys.stream(seed, keys.DEFENCE), epoch)
    return jax.vmap(lambda k: jax.random.fold_in(at, k))(jnp.arange(n)), jax.random.fold_in(
        at, n)


Report = Callable[[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                  tuple[np.ndarray, np.ndarray, np.ndarray]]


class FedfRound(NamedTuple):
    """What one FEDF epoch at a master produced (:func:`fedf_round`)."""

    state: master.MasterState  # the master before the next epoch
    ternary: np.ndarray  # i8[N, M] T_k of every row (the pilot's is not sent)
    pilot: int  # k*, -1: none
    q_pilot: np.ndarray  # f32[M] the pilot's model as sent (after a pilot defence)
    paper_pilot: int  # Eq. (1)'s choice without a guard
    refused: bool  # the guard refused the pilot's step


def fedf_round(ms: master.MasterState, q_sent: np.ndarray, costs: np.ndarray,
               sizes: np.ndarray, alphas: jax.Array, betas: jax.Array,
               cfg: master.MasterConfig, guard: pilot_guard.GuardConfig | None = None,
               pilot_noise: Callable[[jax.Array], jax.Array] | None = None) -> FedfRound:
    """One FEDF epoch at a master, from the messages it receives: the pilot (Eq. 1, over
    the admissible workers under a ``guard``), every T_k (Eq. 4/5) and P^t (Eq. 3 over
    the packed ternaries, ``master.update``).

    Args:
      ms: the master before the epoch (``ms.epoch`` is t).
      q_sent: f32[N, M] the models the workers would send; costs: f32[N]; sizes: [N].
      alphas, betas: f32[N] alpha_k (Eq. 4) and beta_k (Eq. 5, 3).
      cfg: the master's settings (alpha0, direction, scheme).
      guard: the pilot guard's knobs (:mod:`fedf_jax.guard`); None: the paper's rule.
      pilot_noise: applied to the pilot's model before it is sent (a defence).
    """
    sel = master.select(ms, costs, sizes)
    paper = int(sel.pilot)
    if guard is not None:
        adm = pilot_guard.admissible(costs, ms.prev_costs, sizes, ms.epoch, guard)
        sel = sel._replace(pilot=pilot_guard.select(sel.goodness, adm))
    pilot = int(sel.pilot)
    ternary = np.asarray(_ternarize(jnp.asarray(q_sent), ms.p_prev, ms.p_prev2, alphas, betas,
                                    ms.epoch))
    q_pilot = jnp.asarray(q_sent[max(pilot, 0)])
    if pilot_noise is not None and pilot >= 0:
        q_pilot = pilot_noise(q_pilot)
    q_used, refused = q_pilot, False
    if guard is not None and pilot >= 0:
        ok = pilot_guard.step_ok(q_pilot, ms.p_prev, ms.p_prev2, ternary, sel.pilot, sel.valid,
                                 betas, ms.epoch, guard)
        refused = not bool(ok)
        q_used = pilot_guard.pilot_model(q_pilot, ms.p_prev, ok)
    packed = codec.pack_jnp(jnp.asarray(ternary), cfg.scheme)
    new = master.update(ms, sel, costs, q_used, packed, sizes, betas, cfg)
    return FedfRound(new, ternary, pilot, np.asarray(q_pilot), paper, refused)


def run_arm(fed: Federation, arm: str, rounds: int, seed: int,
            defence: Defence | None = None, report: Report | None = None,
            delta: float = 1e-5, guard: pilot_guard.GuardConfig | None = None
            ) -> list[RoundView]:
    """Runs one protocol arm for ``rounds`` global epochs and records every round.

    Args:
      fed: the federation.
      arm: one of ``BASE_ARMS`` with an optional defence suffix (see the module doc).
      rounds: global epochs.
      seed: the training seed (keys as the simulator's: ``keys.stream(seed, ...)``).
      defence: used instead of the arm's suffix when given. A defence with a ``train``
        method (example-level DP-SGD) replaces the local training itself.
      report: a lying worker's hook, ``report(epoch, p_prev, q_sent, costs, sizes) ->
        (q_sent, costs, sizes)`` on copies of f32[M] P^{t-1}, f32[N, M], f32[N], i64[N]:
        the returned rows are what the workers send and report (their ternaries derive
        from ``q_sent``).
      delta: the delta given to ``defences.from_arm``.
      guard: FEDF arms: the pilot guard's knobs (None: the paper's rule).

    Returns:
      One RoundView per epoch.
    """
    base, suffix = parse_arm(arm)
    if isinstance(rounds, bool) or int(rounds) != rounds or rounds < 1:
        raise ValueError(f"`rounds` (={rounds!r}) must be an integer >= 1.")
    if guard is not None:
        pilot_guard.check_config(guard)
    if defence is None and suffix:
        from fedf_jax.privacy import defences  # noqa: PLC0415 (built by the defences module)

        defence = defences.from_arm(arm, rounds, delta, fed=fed)
    trains = callable(getattr(defence, "train", None))
    workers, opt_states = _setup(fed, seed)
    n = len(fed.specs)
    lrs = jnp.asarray([s.lr for s in fed.specs], jnp.float32)
    betas = jnp.full((n,), fed.beta, jnp.float32)
    cfg = master.MasterConfig(alpha0=fed.alpha0, beta=fed.beta,
                              direction=-1 if base == "fedf-1" else 1)
    ms = master.init(fed.p0, n)
    true_sizes = fed.sizes
    views = []
    for t in range(1, rounds + 1):
        p_prev, p_prev2 = np.asarray(ms.p_prev), np.asarray(ms.p_prev2)
        if trains:
            q_true, costs = defence.train(fed, seed, t, p_prev)
        else:
            q_true, costs, opt_states = train_workers(fed.model, workers, opt_states, p_prev,
                                                      t)
        q_sent, rep_costs = q_true, costs
        worker_keys, pilot_key = _defence_keys(seed, t, n)
        if defence is not None:
            q_sent, rep_costs = jax.vmap(defence.worker, in_axes=(0, 0, None, 0))(
                worker_keys, jnp.asarray(q_true), jnp.asarray(p_prev), jnp.asarray(costs))
        q_sent = np.array(q_sent, np.float32)
        rep_costs = np.array(rep_costs, np.float32)
        sizes = true_sizes.copy()
        if report is not None:
            q_sent, rep_costs, sizes = report(t, p_prev.copy(), q_sent.copy(),
                                              rep_costs.copy(), sizes.copy())
            q_sent = np.asarray(q_sent, np.float32)
            rep_costs = np.asarray(rep_costs, np.float32)
            sizes = np.asarray(sizes, np.int64)
        ternary, pilot, paper, refused = None, -1, -1, False
        if base.startswith("fedf"):
            ms = ms._replace(epoch=jnp.int32(t))
            noise = None
            if defence is not None:
                noise = functools.partial(defence.pilot, pilot_key)
            r = fedf_round(ms, q_sent, rep_costs, sizes, lrs, betas, cfg, guard, noise)
            ms, ternary, pilot, paper, refused = (r.state, r.ternary, r.pilot, r.paper_pilot,
                                                  r.refused)
            if pilot >= 0:
                q_sent[pilot] = r.q_pilot
            p_new = np.asarray(ms.p_prev)
        else:
            ok = np.isfinite(rep_costs)
            w = np.where(ok, sizes, 0).astype(np.float64)
            w = w / max(w.sum(), 1.0)
            if base == "fedavg":
                p_new = np.asarray(fedavg.average(jnp.asarray(p_prev), jnp.asarray(q_sent),
                                                  sizes, jnp.asarray(ok)))
            else:  # signfedavg
                ternary = np.where(q_sent - p_prev >= 0, 1, -1).astype(np.int8)
                p_new = p_prev + fed.alpha0 * np.einsum("k,km->m", w, ternary)
            p_new = p_new.astype(np.float32)
            ms = master.MasterState(jnp.asarray(p_new), jnp.asarray(p_prev),
                                    jnp.asarray(rep_costs), jnp.int32(t + 1))
        views.append(RoundView(t, p_prev, p_prev2, np.asarray(q_true), q_sent, ternary,
                               rep_costs, sizes, pilot, p_new, paper, refused))
    return views


def permute_workers(fed: Federation, order: Sequence[int]) -> Federation:
    """The federation with its workers in another order: worker i of the result is worker
    ``order[i]`` of ``fed`` (its data and private spec)."""
    order = [int(k) for k in order]
    if sorted(order) != list(range(len(fed.specs))):
        raise ValueError(f"`order` (={order}) must be a permutation of 0..{len(fed.specs) - 1}.")
    return fed._replace(x_parts=[fed.x_parts[k] for k in order],
                        y_parts=[fed.y_parts[k] for k in order],
                        specs=tuple(fed.specs[k] for k in order))


@functools.partial(jax.jit, static_argnums=(0,))
def _evaluate(model: Model, p, x, y):
    return worker.evaluate(model, p, x, y, y.shape[0], y.shape[0])


def evaluate(fed: Federation, p: np.ndarray) -> tuple[float, float]:
    """(test loss, test accuracy) of a global model f32[M] on the federation's test set."""
    loss, acc = _evaluate(fed.model, jnp.asarray(p), jnp.asarray(fed.x_test),
                          jnp.asarray(fed.y_test))
    return float(loss), float(acc)


__all__ = ["BASE_ARMS", "DEFENCE_PREFIXES", "AUX_FRACTION", "LR_RANGE", "BETA", "Federation",
           "RoundView", "split_indices", "make_federation", "recipe_cells", "recipe_label",
           "parse_arm", "train_workers", "FedfRound", "fedf_round", "run_arm",
           "permute_workers", "evaluate"]
