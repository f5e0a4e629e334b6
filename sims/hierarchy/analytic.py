"""The timing model of a two-level FEDF epoch in closed form, and the G that minimizes it.

The run log's ``modeled_s`` (``fedf_jax.algorithms.hierarchy.make``, README "The run
log") charges one outer epoch of N workers in G groups, with kappa inner epochs, as

    T(G) = kappa (c + b(n_g) / B_g + R L_g) + b(G) / B + R L,     n_g = ceil(N / G),

and a flat epoch (G = 1, kappa = 1) as ``T(1) = c + b(N) / B + R L``, where c is the
slowest worker's compute, b(n) = ``codec.epoch_bytes(M, n).total`` the bytes of one
FEDF epoch with n participants, B and L the top master's wide-area link, B_g and L_g
a group's local link and R = ``timing.ROUNDS`` message rounds. Groups run in
parallel, so the busiest group (``np.array_split``: ceil(N / G) workers) bounds the
group level.

b is affine in n: every participant costs alpha bytes (its P^{t-1}, its cost, its
command, a ternary and four headers), and the pilot's model replacing one ternary
adds beta (Eq. 8: V (n + 1) + V (n - 1) / 16 plus frames). With n_g = N / G relaxed
to a real number,

    dT/dG = -kappa alpha N / (B_g G^2) + alpha / B = 0   =>   G* = sqrt(kappa N B / B_g),

a minimum (T is convex in G there). G* depends on neither M, compute, latency nor
beta: alpha cancels, and the rest does not move with G. The integer optimum needs
a short search because n_g = ceil(N / G) is a step function: :func:`best_g`
searches only the window where the relaxed time is below the best of G*'s two
neighbours, which every better G must satisfy.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from fedf_jax import codec, timing


class Links(NamedTuple):
    """The timing model's links (RunConfig defaults)."""

    bandwidth: float = 125e6  # B: the top master's wide-area link, bytes/s
    latency: float = 1e-3  # L: seconds per message round on it
    group_bandwidth: float = 1.25e9  # B_g: a group's local link
    group_latency: float = 1e-4  # L_g
    rounds: int = timing.ROUNDS  # R: FEDF's message rounds per epoch

    @classmethod
    def of(cls, cfg) -> Links:
        """The links of a RunConfig."""
        r = cfg.run
        return cls(r.bandwidth, r.latency, r.group_bandwidth, r.group_latency)


DEFAULT = Links()
TIE_S = 1e-12  # times closer than this are a tie (float rounding of equal sums)


def epoch_bytes(m: int, n: int) -> int:
    """b(n): bytes of one FEDF epoch with n participants (frames included)."""
    return int(codec.epoch_bytes(m, n).total)


def affine_bytes(m: int) -> tuple[int, int]:
    """(alpha, beta) with b(n) = alpha n + beta for every n >= 1; checked at a few n."""
    alpha = epoch_bytes(m, 2) - epoch_bytes(m, 1)
    beta = epoch_bytes(m, 1) - alpha
    for n in (3, 17, 1000, 123457):
        if epoch_bytes(m, n) != alpha * n + beta:
            raise ValueError(f"codec.epoch_bytes({m}, n) is not affine in n (n = {n}): "
                             "the closed form does not apply.")
    return alpha, beta


def group_size(n: int, g: int) -> int:
    """Workers in the busiest of G groups of N (np.array_split's largest block)."""
    return -(-n // g)


def check(n: int, g: int, kappa: int = 1) -> None:
    if not (isinstance(n, int) and isinstance(g, int) and 1 <= g <= n):
        raise ValueError(f"`g` (={g!r}) must be an integer in 1..N (N = {n!r}).")
    if not (isinstance(kappa, int) and kappa >= 1):
        raise ValueError(f"`kappa` (={kappa!r}) must be an integer >= 1.")


def top_bytes(m: int, n: int, g: int) -> int:
    """Bytes on the top master's link per outer epoch: b(G), or b(N) when flat."""
    check(n, g)
    return epoch_bytes(m, g if g > 1 else n)


def epoch_s(n: int, g: int, m: int, compute_s: float, links: Links = DEFAULT,
            kappa: int = 1) -> float:
    """T(G): modeled seconds of one outer epoch (module docstring); G = 1 with
    kappa = 1 is flat FEDF (every worker on the wide-area link)."""
    check(n, g, kappa)
    top = links.rounds * links.latency
    if g == 1 and kappa == 1:
        return compute_s + epoch_bytes(m, n) / links.bandwidth + top
    group = (epoch_bytes(m, group_size(n, g)) / links.group_bandwidth
             + links.rounds * links.group_latency)
    return kappa * (compute_s + group) + epoch_bytes(m, g) / links.bandwidth + top


def g_star(n: int, links: Links = DEFAULT, kappa: int = 1) -> float:
    """The relaxed optimum G* = sqrt(kappa N B / B_g), clipped to [1, N]."""
    return min(max(math.sqrt(kappa * n * links.bandwidth / links.group_bandwidth), 1.0),
               float(n))


def relaxed_epoch_s(n: int, g: float, m: int, compute_s: float, links: Links = DEFAULT,
                    kappa: int = 1) -> float:
    """T(G) of the hierarchy with n_g = N / G a real number (a lower bound of T(G))."""
    alpha, beta = affine_bytes(m)
    return (kappa * (compute_s + (alpha * n / g + beta) / links.group_bandwidth
                     + links.rounds * links.group_latency)
            + (alpha * g + beta) / links.bandwidth + links.rounds * links.latency)


def best_g(n: int, m: int, compute_s: float = 0.0, links: Links = DEFAULT,
           kappa: int = 1) -> int:
    """The integer G in 1..N that minimizes T(G): the smallest G within ``TIE_S`` of
    the minimum (exact ties are common: moving one worker per group can cost the same
    seconds on the group link as one more group costs on the top link).

    The hierarchy's T(G) is at least its relaxed form, alpha G / B + kappa alpha N /
    (G B_g) + const; so any G better than the best neighbour of G* has a relaxed time
    below that neighbour's T, a quadratic inequality in G whose roots bound the search.
    G = 1 (flat when kappa = 1) is compared on its own.
    """
    check(n, 1, kappa)
    alpha, _ = affine_bytes(m)
    gs = g_star(n, links, kappa)
    lo_g = 1 if kappa > 1 else min(2, n)
    near = {min(max(math.floor(gs), lo_g), n), min(max(math.ceil(gs), lo_g), n)}
    upper = min(epoch_s(n, g, m, compute_s, links, kappa) for g in near)
    const = relaxed_epoch_s(n, 1.0, m, compute_s, links, kappa) - (
        alpha / links.bandwidth + kappa * alpha * n / links.group_bandwidth)
    # alpha/B G^2 - (upper - const) G + kappa alpha N / B_g <= 0
    a, b, c = alpha / links.bandwidth, upper - const, kappa * alpha * n / links.group_bandwidth
    disc = max(b * b - 4 * a * c, 0.0)
    lo = max(math.floor((b - math.sqrt(disc)) / (2 * a)) - 1, lo_g)
    hi = min(math.ceil((b + math.sqrt(disc)) / (2 * a)) + 1, n)
    window = sorted({1, *near, *range(lo, hi + 1)})
    times = [epoch_s(n, g, m, compute_s, links, kappa) for g in window]
    return next(g for g, t in zip(window, times, strict=True) if t <= min(times) + TIE_S)


def break_even_n(m: int, links: Links = DEFAULT) -> float:
    """The N above which the relaxed hierarchy at G* beats flat FEDF (kappa = 1).

    T(1) - T(G*) = alpha N / B - 2 alpha sqrt(N / (B B_g)) - (beta / B_g + R L_g) with
    x = sqrt(N): a quadratic in x whose positive root is returned squared. (Compute
    and the top link's latency are in both and cancel.)
    """
    alpha, beta = affine_bytes(m)
    a = alpha / links.bandwidth
    b = 2 * alpha / math.sqrt(links.bandwidth * links.group_bandwidth)
    d = beta / links.group_bandwidth + links.rounds * links.group_latency
    x = (b + math.sqrt(b * b + 4 * a * d)) / (2 * a)
    return x * x


def break_even_n_integer(m: int, compute_s: float = 0.0, links: Links = DEFAULT,
                         limit: int = 100_000) -> int:
    """The smallest N at which some integer G >= 2 beats flat FEDF (kappa = 1)."""
    for n in range(2, limit + 1):
        if best_g(n, m, compute_s, links) > 1:
            return n
    raise ValueError(f"no N <= {limit} where the hierarchy beats flat FEDF.")


def grid(n: int) -> list[int]:
    """The swept G: 1, 2, 4, 5, 8, 10, 16, 20, 32, 50, 64, 100, ... (powers of 2 and
    the 1-2-5 decades) below N, and N."""
    gs = {1, n}
    p = 1
    while p < n:
        gs.add(p)
        p *= 2
    for decade in (1, 10, 100, 1000, 10_000, 100_000):
        gs.update(k * decade for k in (1, 2, 5) if k * decade < n)
    return sorted(gs)


__all__ = ["Links", "DEFAULT", "TIE_S", "epoch_bytes", "affine_bytes", "group_size",
           "top_bytes", "epoch_s", "g_star", "relaxed_epoch_s", "best_g", "break_even_n",
           "break_even_n_integer", "grid"]
