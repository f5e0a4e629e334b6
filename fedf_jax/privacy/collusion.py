"""What colluding workers can compute from their pooled observations (Theorem 4, E7/E8).

The colluders pool what they observe (:class:`ColluderView`, built by
:func:`observe` and nothing else): their own Q_k, T_k, reported S_k and ids, the
master's public alpha0, beta and d, P^{t-2}, P^{t-1}, P^t, and whether one of them is
the pilot (the one that got SEND_MODEL). They do not see the honest workers' sizes or
messages, nor which honest worker is which: the attack functions below take a
ColluderView only. Worker 0 is the victim; scoring against the truth happens
outside them.

**N - 1 colluders, honest behaviour.** When a colluder is the pilot, Eq. (3) gives

    (P^t - Q_{k*}) / (d c_t s) = (sum_{colluders c != k*} S_c T_c + S_v T_v) / S,

with c_t = alpha0 at t = 1 and beta after, s = 1 at t = 1 and P^{t-1} - P^{t-2}
after (a coordinate with s = 0 has T_v = 0 by Eq. 5). Everything but S_v and T_v
is known; T_v is integer in {-1, 0, 1}, so the colluders search the S_v that makes
the implied T_v integral (:func:`recover_victim_ternary`) and read T_v exactly.

**N - 1 colluders, the paper's attack** (proof of Theorem 4): the colluders report
ever larger costs (their goodness never wins) and send no update (Q_c = P^{t-1},
so T_c = 0); the victim is the pilot every epoch and P^t = Q_victim exactly.

**N - 2 colluders, blind.** Two honest workers. With a colluder as pilot the
colluders see z = S_a T_a + S_b T_b per coordinate for the two unknown honest
workers a, b. (1) :func:`search_two_sizes` finds the unordered sizes {x <= y} from
the messages (the total S makes z integral; the split whose lattice holds the observed
levels); the run's sizes are the most frequent pair over its epochs. (2)
:func:`decode_pair` replays the master's float32 Eq. (3) for the nine (T_x, T_y) pairs
and keeps those that reproduce P^t bit for bit (the nearest lattice point elsewhere):
the two honest ternaries, labelled by size, not by worker. (3) Which one is the
victim's? With no side knowledge the colluders can only guess (a fair coin: the
expected score is the mean over both namings, ``victim_right_no_prior``). With one
stated fact about the victim, its most frequent class, they attribute by the class
signature (E2's ``class_scores``) of each slot's ternaries summed over the run
(:func:`attribute`, ``victim_right_class_prior``). With unequal sizes the nine pairs
give nine distinct z, so the pair is exact; with equal sizes z = +-S is ambiguous
(which worker moved) and z = 0 too (both still, or opposite).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from fedf_jax import protocol
from fedf_jax.privacy import views
from fedf_jax.privacy.e2_class_leakage import class_scores

BIG_COST = 1e6  # a colluder's reported cost in the paper's attack (times the epoch)


class ColluderView(NamedTuple):
    """What the colluders observe of one round, pooled (nothing of the honest workers).

    Attributes:
      epoch: t.
      p_prev, p_prev2, p_new: f32[M] P^{t-1}, P^{t-2}, P^t.
      n_workers: N (public).
      ids: the colluders' worker ids; the honest ids are the others (public).
      q: f32[C, M] their models as sent; ternary: i8[C, M] their T_k.
      sizes: i64[C] their reported S_k.
      pilot: the colluder id that is the pilot, or -1 when an honest worker is (which
        one, the colluders do not learn).
      alpha0, beta, direction: the master's public settings.
    """

    epoch: int
    p_prev: np.ndarray
    p_prev2: np.ndarray
    p_new: np.ndarray
    n_workers: int
    ids: tuple[int, ...]
    q: np.ndarray
    ternary: np.ndarray
    sizes: np.ndarray
    pilot: int
    alpha0: float
    beta: float
    direction: int


def observe(view: views.RoundView, fed: views.Federation, colluders: Sequence[int],
            direction: int) -> ColluderView:
    """The colluders' pooled observation of a recorded round (the only place the attack
    touches a RoundView)."""
    ids = tuple(int(c) for c in colluders)
    return ColluderView(view.epoch, view.p_prev, view.p_prev2, view.p_new, len(view.sizes), ids,
                        view.q_sent[list(ids)], view.ternary[list(ids)],
                        np.asarray(view.sizes)[list(ids)].astype(np.int64),
                        view.pilot if view.pilot in ids else -1, fed.alpha0, fed.beta,
                        direction)


def honest_ids(cv: ColluderView) -> list[int]:
    """The ids that are not colluders (public: N and their own ids)."""
    return [k for k in range(cv.n_workers) if k not in cv.ids]


def _coef(cv: ColluderView) -> tuple[float, np.ndarray]:
    """(c_t, s): Eq. (3)'s ternary coefficient without p_k, and its per-coordinate scale."""
    if cv.epoch == 1:
        return cv.alpha0, np.ones_like(cv.p_prev, dtype=np.float64)
    return cv.beta, cv.p_prev.astype(np.float64) - cv.p_prev2


def _own(cv: ColluderView, k: int) -> int:
    return cv.ids.index(k)


def pooled_residual(cv: ColluderView) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, known, live): u = (P^t - Q_{k*}) / (d c_t s) (what S times it equals the honest
    workers' weighted trits plus ``known``), the colluders' own sum_c S_c T_c (pilot
    excluded), and the coordinates where s != 0. A colluder must be the pilot."""
    if cv.pilot < 0:
        raise ValueError("the colluders can decode only a round one of them piloted.")
    c_t, s = _coef(cv)
    live = s != 0
    diff = cv.p_new.astype(np.float64) - cv.q[_own(cv, cv.pilot)]
    u = np.where(live, diff / (cv.direction * c_t * np.where(live, s, 1.0)), 0.0)
    others = [i for i, k in enumerate(cv.ids) if k != cv.pilot]
    known = (cv.sizes[others, None] * cv.ternary[others].astype(np.float64)).sum(axis=0)
    return u, known, live


def _replay(cv: ColluderView, honest: dict[int, tuple[float, np.ndarray | int]]
            ) -> np.ndarray:
    """P^t of the master's float32 Eq. (3) (``protocol.master_update``) with the colluders'
    rows and the given honest (size, trits) rows."""
    n, m = cv.n_workers, cv.p_prev.shape[0]
    t_all = np.zeros((n, m), np.int8)
    sizes = np.zeros(n, np.float64)
    for i, k in enumerate(cv.ids):
        t_all[k], sizes[k] = cv.ternary[i], cv.sizes[i]
    for k, (size, trits) in honest.items():
        t_all[k], sizes[k] = trits, size
    return np.asarray(protocol.master_update(
        cv.q[_own(cv, cv.pilot)], t_all, sizes, cv.pilot, cv.p_prev, cv.p_prev2, cv.alpha0,
        cv.beta, cv.epoch, direction=cv.direction))


def recover_victim_ternary(cv: ColluderView, max_size: int = 5000) -> tuple[np.ndarray, int]:
    """N - 1 colluders, a colluder as pilot: (T_victim i8[M], S_victim) from Eq. (3).

    S_v is the candidate in 1..max_size whose implied T_v = (u S - known) / S_v is
    nearest to integers in [-1, 1] (least squares); then :func:`refine_exact`.
    """
    u, known, live = pooled_residual(cv)
    s_col = float(cv.sizes.sum())
    best, best_err = 1, np.inf
    cand = np.arange(1, max_size + 1, dtype=np.float64)
    for chunk in np.array_split(cand, max(1, len(cand) // 256)):
        t = (u[None, :] * (s_col + chunk[:, None]) - known[None, :]) / chunk[:, None]
        err = ((t - np.clip(np.round(t), -1, 1)) ** 2).sum(axis=1)
        i = int(np.argmin(err))
        if err[i] < best_err:
            best, best_err = int(chunk[i]), float(err[i])
    t = (u * (s_col + best) - known) / best
    guess = np.where(live, np.clip(np.round(t), -1, 1), 0).astype(np.int8)
    return refine_exact(cv, guess, best), best


def refine_exact(cv: ColluderView, guess: np.ndarray, size: int) -> np.ndarray:
    """Replays the master's float32 Eq. (3) with each value of the one honest worker's
    trit and keeps, per coordinate, a value that reproduces P^t bit for bit (``guess``
    where several do: float32 rounding erased the trit there)."""
    (victim,) = honest_ids(cv)
    fits = np.stack([_replay(cv, {victim: (size, np.full_like(guess, v))}) == cv.p_new
                     for v in (-1, 0, 1)])  # [3, M]
    unique = fits.sum(axis=0) == 1
    return np.where(unique, np.argmax(fits, axis=0) - 1, guess).astype(np.int8)


def identifiable(view: views.RoundView, fed: views.Federation, victim: int, direction: int
                 ) -> np.ndarray:
    """Scoring only (uses the truth): bool[M], where the victim's true trit is the only
    value that reproduces P^t in float32 (where exact recovery is possible at all)."""
    t_all = view.ternary.copy()
    outs = []
    for value in (-1, 0, 1):
        t_all[victim] = value
        outs.append(np.asarray(protocol.master_update(
            view.q_sent[view.pilot], t_all, view.sizes, view.pilot, view.p_prev,
            view.p_prev2, fed.alpha0, fed.beta, view.epoch, direction=direction)))
    return (np.stack(outs) == view.p_new).sum(axis=0) == 1


def search_two_sizes(cv: ColluderView, max_size: int = 5000) -> tuple[int, int]:
    """N - 2 colluders, a colluder as pilot: the unordered honest sizes (x <= y) from the
    messages alone. S is the total that makes z = u S - known integral everywhere; then
    x + y = S - S_colluders, and x is the split whose lattice
    {0, +-x, +-y, +-(x + y), +-(y - x)} holds the most observed levels of z."""
    u, known, live = pooled_residual(cv)
    # coordinates with a tiny P^{t-1} - P^{t-2} carry float32 noise of u: use the larger half
    _, scale = _coef(cv)
    mag = np.abs(scale)
    use = live & (mag >= np.median(mag[live])) if live.any() else live
    u, known = u[use], known[use]
    s_col = int(cv.sizes.sum())
    cand = np.arange(s_col + 2, s_col + 2 * max_size + 1, dtype=np.float64)
    best_s, best_err = int(cand[0]), np.inf
    for chunk in np.array_split(cand, max(1, len(cand) // 256)):
        z = u[None, :] * chunk[:, None] - known[None, :]
        err = ((z - np.round(z)) ** 2).sum(axis=1)
        i = int(np.argmin(err))
        if err[i] < best_err:
            best_s, best_err = int(chunk[i]), float(err[i])
    total = best_s - s_col
    levels = np.unique(np.abs(np.round(u * best_s - known))).astype(np.int64)
    levels = levels[levels > 0]
    xs = np.arange(1, total // 2 + 1)
    ys = total - xs
    lattice = np.stack([xs, ys, xs + ys, ys - xs], axis=1)  # [X, 4]
    held = (levels[None, :, None] == lattice[:, None, :]).any(axis=2).sum(axis=1)
    unused = np.array([len(set(r.tolist()) - set(levels.tolist())) for r in lattice])
    # the most observed levels explained, then the fewest lattice values never observed
    x = int(xs[np.argmax(held * 10 - unused)]) if len(xs) else 0
    return x, total - x


PAIRS = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]


def decode_pair(cv: ColluderView, x: int, y: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """N - 2 colluders, a colluder as pilot, sizes {x, y} found: (T_x, T_y, ambiguous).

    The colluders replay the master's float32 Eq. (3) for each of the nine (T_x, T_y)
    pairs (slot x at the lower honest id; the order is the colluders' convention, not
    knowledge) and keep, per coordinate, the pairs that reproduce P^t bit for bit. Where
    the fitting pairs agree, both trits are known; where they do not (equal sizes, or
    float32 rounding erased the difference), ``ambiguous`` is set and the guess is the
    first fitting pair with a zero in slot x, else the first fitting pair. Where no pair
    fits, the nearest lattice point ``a x + b y`` to z = u S - known is taken.

    Returns:
      (i8[M], i8[M], bool[M]).
    """
    lo_id, hi_id = honest_ids(cv)
    u, known, live = pooled_residual(cv)
    z = u * float(cv.sizes.sum() + x + y) - known
    fits = np.stack([_replay(cv, {lo_id: (x, np.full(z.shape, a, np.int8)),
                                  hi_id: (y, np.full(z.shape, b, np.int8))}) == cv.p_new
                     for a, b in PAIRS], axis=1)  # [M, 9]
    a_of = np.array([a for a, _ in PAIRS])
    b_of = np.array([b for _, b in PAIRS])
    lattice = (a_of * x + b_of * y).astype(np.float64)
    nearest = np.argmin(np.abs(z[:, None] - lattice), axis=1)
    any_fit = fits.any(axis=1)
    zero_fit = fits & (a_of == 0)
    pick = np.where(zero_fit.any(axis=1), np.argmax(zero_fit, axis=1), np.argmax(fits, axis=1))
    pick = np.where(any_fit, pick, nearest)

    def spread(values):
        return (np.where(fits, values, 9).min(axis=1) != np.where(fits, values, -9).max(axis=1))

    amb = any_fit & (spread(a_of) | spread(b_of))
    return (np.where(live, a_of[pick], 0).astype(np.int8),
            np.where(live, b_of[pick], 0).astype(np.int8), amb & live)


def decode_run(cvs: Sequence[ColluderView]) -> tuple[tuple[int, int], list[tuple]]:
    """The blind N - 2 pipeline over a run's colluder-pilot rounds: the run's sizes (the
    most frequent pair found), then each round's (epoch, T_x, T_y, ambiguous)."""
    found = [tuple(sorted(search_two_sizes(cv))) for cv in cvs]
    if not found:
        return (0, 0), []
    x, y = Counter(found).most_common(1)[0][0]
    return (x, y), [(cv.epoch, *decode_pair(cv, x, y)) for cv in cvs]


def direction_of(cv: ColluderView, trits: np.ndarray) -> np.ndarray:
    """The sign of Q - P^{t-1} that a worker's ternary encodes (``protocol.ternary_direction``:
    the colluders know P^{t-1} and P^{t-2})."""
    return np.asarray(protocol.ternary_direction(trits, cv.p_prev, cv.p_prev2, cv.epoch))


def attribute(signatures: Sequence[np.ndarray], known_class: int) -> int:
    """Which of the identities is the victim, given one fact about it (its most frequent
    class): the identity whose class signature (summed over the run, standardised)
    scores that class highest. ``signatures``: f[C] per identity."""
    z = [(s - s.mean()) / (s.std() + 1e-12) for s in np.asarray(signatures, np.float64)]
    return int(np.argmax([v[known_class] for v in z]))


def own_vote(cv: ColluderView) -> np.ndarray:
    """i8[M]: the colluders' majority trit per coordinate (ties: 0), their guess of any
    worker's T without its message."""
    s = cv.ternary.astype(np.int64).sum(axis=0)
    return np.sign(s).astype(np.int8)


def paper_attack(colluders, size_factor: int = 1) -> views.Report:
    """The report hook of the paper's attack: the colluders report costs that grow with
    the epoch (BIG_COST t: their Eq. (1) goodness never wins, at t = 1 or after) and send
    Q_c = P^{t-1} (all-zero ternaries). ``size_factor`` > 1 also inflates their reported
    S_k (E8), which shrinks every honest worker's weight p_k in Eq. (3)."""
    cols = list(colluders)

    def hook(t, p_prev, q, costs, sizes):
        costs[cols] = BIG_COST * t
        q[cols] = p_prev
        sizes[cols] = sizes[cols] * size_factor
        return q, costs, sizes

    return hook


def decode_two_informed(view: views.RoundView, fed: views.Federation, victim: int,
                        honest: int, colluders, direction: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """The informed upper bound (not an attack the colluders can run): the blind decode
    given the honest workers' true sizes and which of them is the victim.

    Returns:
      (T_v guess i8[M], ambiguous bool[M]).
    """
    cv = observe(view, fed, colluders, direction)
    lo_id, hi_id = honest_ids(cv)
    sv, sh = int(view.sizes[victim]), int(view.sizes[honest])
    x, y = (sv, sh) if victim == lo_id else (sh, sv)
    tx, ty, amb = decode_pair(cv, x, y)
    return (tx if victim == lo_id else ty), amb


def blind_scores(cvs: Sequence[ColluderView], truth: Sequence[tuple[np.ndarray, np.ndarray]],
                 layout: dict, known_class: int) -> dict[str, list[tuple[int, float]]]:
    """Runs the blind pipeline on a run's colluder-pilot rounds and scores it.

    Args:
      cvs: the colluders' observations (the attack sees these only).
      truth: per round, (T_victim, T_other honest) — for scoring.
      layout: the public parameter layout (class signatures).
      known_class: the stated prior: the victim's most frequent class.

    Returns:
      {metric: [(epoch, value)]} for ``pair_right``, ``victim_right_no_prior`` and
      ``victim_right_class_prior``, and ``attribution_right`` (one value for the run,
      epoch 0).
    """
    _, decoded = decode_run(cvs)
    out: dict[str, list[tuple[int, float]]] = {}
    if not decoded:
        return out
    sig_x = sum(class_scores(direction_of(cv, tx), layout) for cv, (_, tx, _, _)
                in zip(cvs, decoded, strict=True))
    sig_y = sum(class_scores(direction_of(cv, ty), layout) for cv, (_, _, ty, _)
                in zip(cvs, decoded, strict=True))
    pick = attribute([sig_x, sig_y], known_class)
    agree_x = np.mean([np.mean(tx == tv) for (_, tx, _, _), (tv, _) in zip(decoded, truth,
                                                                           strict=True)])
    agree_y = np.mean([np.mean(ty == tv) for (_, _, ty, _), (tv, _) in zip(decoded, truth,
                                                                           strict=True)])
    right_slot = 0 if agree_x >= agree_y else 1
    for (epoch, tx, ty, _), (tv, th) in zip(decoded, truth, strict=True):
        rx, ry = np.mean(tx == tv), np.mean(ty == tv)
        pair = max((rx + np.mean(ty == th)) / 2, (ry + np.mean(tx == th)) / 2)
        out.setdefault("pair_right", []).append((epoch, pair))
        out.setdefault("victim_right_no_prior", []).append((epoch, (rx + ry) / 2))
        out.setdefault("victim_right_class_prior", []).append((epoch, rx if pick == 0 else ry))
    out["attribution_right"] = [(0, float(pick == right_slot))]
    return out
