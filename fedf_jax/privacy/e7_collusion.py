"""E7: colluding workers recover the victim's messages (Theorem 4).

The colluders pool what they see: their own Q_k, T_k, reported S_k and private
alpha_k, the master's public alpha0 and beta, P^{t-2}, P^{t-1}, P^t, and who the
pilot is. Worker 0 is the victim.

**N - 1 colluders, honest behaviour.** When a colluder is the pilot, Eq. (3) gives

    (P^t - Q_{k*}) / (d c_t s) = (sum_{colluders c != k*} S_c T_c + S_v T_v) / S,

with c_t = alpha0 at t = 1 and beta after, s = 1 at t = 1 and P^{t-1} - P^{t-2}
after (a coordinate with s = 0 has T_v = 0 by Eq. 5). Everything but S_v and T_v
is known; T_v is integer in {-1, 0, 1}, so the colluders search the S_v that makes
the implied T_v integral (:func:`recover_victim_ternary`) and read T_v exactly.

**N - 1 colluders, the paper's attack** (proof of Theorem 4): the colluders report
ever larger costs (their goodness never wins) and send no update (Q_c = P^{t-1},
so T_c = 0); the victim is the pilot every epoch and P^t = Q_victim exactly.

**N - 2 colluders.** Two honest workers, v and h. With a colluder as pilot the
colluders see z = S_v T_v + S_h T_h per coordinate (sizes given to them: a worst
case; :func:`search_two_sizes` finds them). If S_v != S_h and neither is twice the
other, the nine (T_v, T_h) pairs give nine distinct z, so T_v is still exact; with
equal sizes z = +-S_v is ambiguous (which worker moved) and z = 0 is ambiguous
(both still, or opposite). Measured:
the share of the victim's trits the colluders get right (ambiguity resolved by the
likelier guess) against guessing the victim's most common trit value.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedf_jax import protocol
from fedf_jax.privacy import e1_inversion, metrics, views
from fedf_jax.privacy.common import Options, Result, conclude, mean_ci95, row

TITLE = "Colluding workers recover the victim's ternary vector or its model"
CLAIM = ("Theorem 4: FEDF preserves a worker's privacy against up to N-2 colluding workers "
         "(and, as the paper admits, not against N-1).")
CRITERION = ("Refuted if N-2 colluders recover the victim's ternary vector T_k (share of trits "
             "right) with a 95 % interval above the best constant guess by more than 0.05, in "
             "any size setting. Supported if, for N-2, the share stays within 0.05 of the "
             "constant guess. (N-1: exact recovery of T_k and of Q_k is expected, the "
             "paper's own admitted break; it is checked, not a criterion.)")

BIG_COST = 1e6  # a colluder's reported cost in the paper's attack (times the epoch)


def _coef(view: views.RoundView, fed: views.Federation) -> tuple[float, np.ndarray]:
    """(c_t, s): Eq. (3)'s ternary coefficient without p_k, and its per-coordinate scale."""
    if view.epoch == 1:
        return fed.alpha0, np.ones_like(view.p_prev, dtype=np.float64)
    return fed.beta, view.p_prev.astype(np.float64) - view.p_prev2


def pooled_residual(view: views.RoundView, fed: views.Federation, colluders, direction: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, known, live): u = (P^t - Q_{k*}) / (d c_t s) (what S times it equals the honest
    workers' weighted trits plus ``known``), the colluders' own sum_c S_c T_c (pilot
    excluded), and the coordinates where s != 0. The pilot must be a colluder."""
    c_t, s = _coef(view, fed)
    live = s != 0
    diff = view.p_new.astype(np.float64) - view.q_sent[view.pilot]
    u = np.where(live, diff / (direction * c_t * np.where(live, s, 1.0)), 0.0)
    others = [c for c in colluders if c != view.pilot]
    known = (view.sizes[others, None] * view.ternary[others].astype(np.float64)).sum(axis=0)
    return u, known, live


def recover_victim_ternary(view: views.RoundView, fed: views.Federation, victim: int,
                           colluders, direction: int, max_size: int = 5000
                           ) -> tuple[np.ndarray, int]:
    """N - 1 colluders, a colluder as pilot: (T_victim i8[M], S_victim) from Eq. (3).

    S_v is the candidate in 1..max_size whose implied T_v = (u S - known) / S_v is
    nearest to integers in [-1, 1] (least squares).
    """
    u, known, live = pooled_residual(view, fed, colluders, direction)
    s_col = float(view.sizes[list(colluders)].sum())
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
    return refine_exact(view, fed, victim, guess, best, direction), best


def refine_exact(view: views.RoundView, fed: views.Federation, victim: int, guess: np.ndarray,
                 size: int, direction: int) -> np.ndarray:
    """Replays the master's float32 Eq. (3) (``protocol.master_update``) with each value
    of the victim's trit and keeps, per coordinate, a value that reproduces P^t bit for
    bit (``guess`` where several do: float32 rounding erased the trit there)."""
    sizes = view.sizes.copy()
    sizes[victim] = size
    t_all = view.ternary.copy()
    fits = []
    for value in (-1, 0, 1):
        t_all[victim] = value
        p = np.asarray(protocol.master_update(
            view.q_sent[view.pilot], t_all, sizes, view.pilot, view.p_prev, view.p_prev2,
            fed.alpha0, fed.beta, view.epoch, direction=direction))
        fits.append(p == view.p_new)
    fits = np.stack(fits)  # [3, M]
    unique = fits.sum(axis=0) == 1
    return np.where(unique, np.argmax(fits, axis=0) - 1, guess).astype(np.int8)


def identifiable(view: views.RoundView, fed: views.Federation, victim: int, direction: int
                 ) -> np.ndarray:
    """bool[M]: where the victim's true trit is the only value that reproduces P^t in
    float32 (the coordinates where exact recovery is possible at all)."""
    t_all = view.ternary.copy()
    outs = []
    for value in (-1, 0, 1):
        t_all[victim] = value
        outs.append(np.asarray(protocol.master_update(
            view.q_sent[view.pilot], t_all, view.sizes, view.pilot, view.p_prev,
            view.p_prev2, fed.alpha0, fed.beta, view.epoch, direction=direction)))
    return (np.stack(outs) == view.p_new).sum(axis=0) == 1


def search_two_sizes(view: views.RoundView, fed: views.Federation, colluders, direction: int,
                     max_size: int = 5000) -> tuple[int, int]:
    """N - 2 colluders, a colluder as pilot, sizes unknown: the unordered honest sizes
    (x <= y) from the messages alone. S is the total that makes z = u S - known integral
    everywhere; then x + y = S - S_colluders, and x is the split whose lattice
    {0, +-x, +-y, +-(x + y), +-(y - x)} holds the most observed levels of z."""
    u, known, live = pooled_residual(view, fed, colluders, direction)
    # coordinates with a tiny P^{t-1} - P^{t-2} carry float32 noise of u: use the larger half
    _, scale = _coef(view, fed)
    mag = np.abs(scale)
    use = live & (mag >= np.median(mag[live])) if live.any() else live
    u, known = u[use], known[use]
    s_col = int(view.sizes[list(colluders)].sum())
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


def decode_two(view: views.RoundView, fed: views.Federation, victim: int, honest: int,
               colluders, direction: int) -> tuple[np.ndarray, np.ndarray]:
    """N - 2 colluders, a colluder as pilot, sizes known: (T_v guess i8[M], ambiguous
    bool[M]).

    The colluders replay the master's float32 Eq. (3) (``protocol.master_update``) for
    each of the nine (T_v, T_h) pairs and keep, per coordinate, the pairs that reproduce
    P^t bit for bit; T_v is known where those pairs agree on it. Elsewhere (two pairs
    give the same vote, e.g. equal sizes, or float32 rounding erased the difference)
    the guess is T_v = 0 if a fitting pair has it, else the sign of the vote. Where no
    pair fits, the nearest one in real arithmetic is taken.
    """
    u, known, live = pooled_residual(view, fed, colluders, direction)
    sv, sh = float(view.sizes[victim]), float(view.sizes[honest])
    z = u * float(view.sizes.sum()) - known
    t_all = view.ternary.copy()
    pairs = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]
    fits = []
    for a, b in pairs:
        t_all[victim], t_all[honest] = a, b
        fits.append(np.asarray(protocol.master_update(
            view.q_sent[view.pilot], t_all, view.sizes, view.pilot, view.p_prev,
            view.p_prev2, fed.alpha0, fed.beta, view.epoch, direction=direction))
            == view.p_new)
    fits = np.stack(fits, axis=1)  # [M, 9]
    tv_of = np.array([a for a, _ in pairs])
    nearest = tv_of[np.argmin(np.abs(z[:, None] - np.array([a * sv + b * sh
                                                              for a, b in pairs])), axis=1)]
    lo = np.where(fits, tv_of, 2).min(axis=1)
    hi = np.where(fits, tv_of, -2).max(axis=1)
    any_fit = fits.any(axis=1)
    agreed = any_fit & (lo == hi)
    ambiguous = any_fit & (lo != hi)
    has_zero = (fits & (tv_of == 0)).any(axis=1)
    guess = np.where(has_zero, 0, np.sign(z)).astype(np.int64)
    tv = np.where(agreed, lo, np.where(ambiguous, guess, nearest))
    return np.where(live, tv, 0).astype(np.int8), ambiguous & live


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


def _arms(opts: Options) -> list[str]:
    return [a for a in opts.arms if a.startswith("fedf")] or ["fedf+1"]


def run(opts: Options, seed0: int = 0, progress: Callable[[str], None] | None = None
        ) -> Result:
    """E7 on the FEDF arms: N-1 honest-but-pooling, N-1 paper attack, N-2 pooling with
    equal and unequal honest sizes."""
    n = opts.workers
    if n < 3:
        raise ValueError(f"`workers` (={n}) must be >= 3 for E7 (a victim, an honest peer, "
                         f"a colluder).")
    rounds = max(2, 2 if opts.quick else opts.rounds)
    vals: dict[tuple[str, str, str], list[float]] = {}

    def put(arm, setting, metric, value):
        vals.setdefault((arm, setting, metric), []).append(float(value))

    for arm in _arms(opts):
        d = -1 if arm.startswith("fedf-1") else 1
        for s in range(opts.seeds):
            seed = seed0 + s
            # N - 1, honest behaviour: a colluder is pilot unless the victim is
            fed = views.make_federation(opts, seed)
            cols = list(range(1, n))
            rv = views.run_arm(fed, arm, rounds, seed, delta=opts.delta)
            for v in rv:
                if v.pilot in cols:
                    t_hat, s_hat = recover_victim_ternary(v, fed, 0, cols, d)
                    st = f"N-1 honest t={v.epoch}"
                    put(arm, st, "trits_right", np.mean(t_hat == v.ternary[0]))
                    put(arm, st, "identifiable", identifiable(v, fed, 0, d).mean())
                    put(arm, st, "size_right", s_hat == v.sizes[0])
            # N - 1, the paper's attack on a 1-sample victim
            fed1 = views.make_federation(opts, seed, victim_size=1)
            rv = views.run_arm(fed1, arm, rounds, seed, report=paper_attack(cols),
                               delta=opts.delta)
            layers = e1_inversion.layers_of(fed1)
            for v in rv:
                st = f"N-1 paper attack t={v.epoch}"
                put(arm, st, "victim_pilot", v.pilot == 0)
                if v.pilot == 0:
                    put(arm, st, "q_max_abs_err", np.abs(v.p_new - v.q_sent[0]).max())
                    if layers is not None:
                        rec = e1_inversion.analytic_inversion(
                            v.p_new.astype(np.float64) - v.p_prev, layers["first"], 1,
                            fed1.x_parts[0].shape[1:])
                        put(arm, st, "victim_psnr_db",
                            metrics.psnr(rec, fed1.x_parts[0]).mean())
            # N - 2: honest peer h = 1, colluders 2..N-1
            cols2 = list(range(2, n))
            for name, vsize in (("unequal sizes", 0), ("equal sizes", -1)):
                fed2 = views.make_federation(opts, seed)
                if vsize < 0:  # the victim and the honest peer hold as many samples
                    m = min(len(fed2.y_parts[0]), len(fed2.y_parts[1]))
                    fed2 = fed2._replace(x_parts=[fed2.x_parts[0][:m], fed2.x_parts[1][:m],
                                                  *fed2.x_parts[2:]],
                                         y_parts=[fed2.y_parts[0][:m], fed2.y_parts[1][:m],
                                                  *fed2.y_parts[2:]])
                rv = views.run_arm(fed2, arm, rounds, seed, delta=opts.delta)
                for v in rv:
                    if v.pilot not in cols2:
                        continue
                    st = f"N-2 {name} t={v.epoch}"
                    t_hat, amb = decode_two(v, fed2, 0, 1, cols2, d)
                    truth = v.ternary[0]
                    put(arm, st, "trits_right", np.mean(t_hat == truth))
                    _, counts = np.unique(truth, return_counts=True)
                    put(arm, st, "constant_guess", counts.max() / truth.size)
                    put(arm, st, "ambiguous", amb.mean())
                    x, y = search_two_sizes(v, fed2, cols2, d)
                    put(arm, st, "sizes_found", sorted((x, y)) == sorted(v.sizes[:2].tolist()))
            if progress:
                progress(f"E7 {arm} seed {seed} done")
    rows = [row(a, st, m, v) for (a, st, m), v in sorted(vals.items())]
    verdict, why = _verdict(vals)
    notes = " ".join([
        f"{why} N = {n} workers, victim = worker 0; N-2: honest peer = worker 1.",
        "`trits_right`: share of the victim's T_k recovered; `constant_guess`: share right",
        "by guessing its most common value; `ambiguous`: share of coordinates where two",
        "(T_v, T_h) pairs fit. N-1 honest: S_victim found by integer search (`size_right`);",
        "`identifiable`: the share of coordinates where float32 rounding left the trit",
        "recoverable at all. N-1 paper attack: colluders report growing costs and send",
        "P^{t-1}; `q_max_abs_err` = max |P^t - Q_victim|, `victim_psnr_db` = the analytic",
        "first-layer inversion of P^t - P^{t-1} for a 1-sample victim. N-2 rows exist only",
        "for epochs where a colluder was the pilot; `trits_right` gives the colluders the",
        "honest workers' sizes, and `sizes_found` measures whether they can find them",
        "(unordered) from the messages alone."])
    return Result("E7", TITLE, CLAIM, CRITERION, rows, verdict, notes)


def _verdict(vals) -> tuple[str, str]:
    """Applies CRITERION to the N-2 cells."""
    refute, support = [], True
    for (arm, st, metric), v in vals.items():
        if not st.startswith("N-2") or metric != "trits_right":
            continue
        m, lo, _ = mean_ci95(v, metric)
        base = float(np.mean(vals.get((arm, st, "constant_guess"), [np.nan])))
        if lo > base + 0.05:
            refute.append(f"{arm} {st}: {m:.3f} right vs {base:.3f} by a constant guess")
        if abs(m - base) > 0.05:
            support = False
    return conclude(refute, support,
                    "Supported: N-2 colluders do no better than a constant guess.",
                    "Inconclusive: N-2 recovery differs from a constant guess, within the "
                    "95 % intervals.", most=3)
