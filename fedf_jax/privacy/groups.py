"""What the masters of the two-level hierarchy (DESIGN §8) observe: each group master
its group's FEDF epochs, the top master the groups' contributions.

:func:`run_groups` runs FEDF in two levels over a :class:`~fedf_jax.privacy.views.Federation`
with the project's own code (``fedf.level``'s reset and contribution, the FEDF round of
:func:`~fedf_jax.privacy.views.fedf_round`) and records a :class:`GroupRound` per outer
epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from fedf_jax import keys, layout, master
from fedf_jax.algorithms import fedf
from fedf_jax.privacy.views import Federation, RoundView, fedf_round, train_workers


class GroupRound(NamedTuple):
    """One outer epoch of the two-level hierarchy (DESIGN §8), as each master sees it.

    Attributes:
      epoch: the outer epoch t.
      groups: ``groups[g][i]``: group g's inner epoch i as its group master sees it (a
        :class:`RoundView` whose rows are the group's workers, in ``members[g]`` order;
        its epoch is the group master's own epoch count).
      top: the top level, a RoundView whose rows are the G group masters (``q_sent``:
        the groups' models Q_g, ``costs``: C_g, ``sizes``: S_g, ``ternary``: T_g with
        threshold alpha0 at t = 1).
    """

    epoch: int
    groups: list[list[RoundView]]
    top: RoundView


def run_groups(fed: Federation, members: Sequence[Sequence[int]], kappa: int, rounds: int,
               seed: int) -> list[GroupRound]:
    """Runs FEDF in two levels and records what every group master and the top master
    observe.

    Each outer epoch the top's P^{t-1} becomes every group's (``fedf.level``'s
    ``reset``); each group runs ``kappa`` FEDF epochs over its workers
    (:func:`fedf_round`, its workers trained with their global ids' keys); each group
    master is then one worker of the top level (``fedf.level``'s ``contribution``: S_g
    the sum of S_k, C_g the S_k-weighted mean of the last finite costs, Q_g the group's
    model), and the top runs :func:`fedf_round` over the G groups with the threshold
    alpha0 (Eq. 4) and beta_g the mean of its workers' beta_k. The same epochs as
    ``hierarchy.outer`` over ``fedf.level`` (checked in the tests).

    Args:
      fed: the federation.
      members: G disjoint lists of worker ids covering 0..N-1.
      kappa: inner epochs per outer epoch.
      rounds: outer epochs.
      seed: the training seed.

    Returns:
      One GroupRound per outer epoch.
    """
    n = len(fed.specs)
    groups = [list(map(int, g)) for g in members]
    if sorted(k for g in groups for k in g) != list(range(n)) or any(not g for g in groups):
        raise ValueError(f"`members` (={groups}) must split the workers 0..{n - 1} into "
                         "non-empty groups, each worker once.")
    if isinstance(kappa, bool) or int(kappa) != kappa or kappa < 1:
        raise ValueError(f"`kappa` (={kappa!r}) must be an integer >= 1.")
    if isinstance(rounds, bool) or int(rounds) != rounds or rounds < 1:
        raise ValueError(f"`rounds` (={rounds!r}) must be an integer >= 1.")
    cfg = master.MasterConfig(alpha0=fed.alpha0, beta=fed.beta)
    # fedf.level's reset and contribution: the hierarchy's own rules (RunConfig-free: the
    # level reads cfg.master only)
    lay0 = None
    parts_x, parts_y = fed.x_parts, fed.y_parts
    setups = []
    for g in groups:
        x = np.concatenate([parts_x[k] for k in g])
        y = np.concatenate([parts_y[k] for k in g])
        bounds = np.cumsum([0] + [len(parts_y[k]) for k in g])
        parts = [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        w = layout.build([fed.specs[k] for k in g], x, y, parts,
                         betas=np.full(len(g), fed.beta), x_test=fed.x_test, y_test=fed.y_test,
                         train_key=keys.stream(seed, keys.TRAIN), ids=g)
        lay0 = lay0 or w.layout
        setups.append((w, layout.init_opt_states(w.layout, w.data, jnp.asarray(fed.p0))))
    level = fedf.level(_LevelConfig(cfg), fed.model, lay0, np.full(len(groups), fed.beta))
    g_states = [fedf.State(master.init(fed.p0, len(g)), ()) for g in groups]
    top = master.init(fed.p0, len(groups))
    betas_g = jnp.full((len(groups),), fed.beta, jnp.float32)
    alphas_g = jnp.full((len(groups),), fed.alpha0, jnp.float32)
    out = []
    for t in range(1, rounds + 1):
        per_group, q_g, c_g, s_g = [], [], [], []
        for gi, g in enumerate(groups):
            w, opt = setups[gi]
            state = level.reset(g_states[gi], top)
            ms = state.master
            lrs = jnp.asarray([fed.specs[k].lr for k in g], jnp.float32)
            betas = jnp.full((len(g),), fed.beta, jnp.float32)
            inner = []
            costs = None
            for _ in range(kappa):
                p_prev, p_prev2 = np.asarray(ms.p_prev), np.asarray(ms.p_prev2)
                q, costs, opt = train_workers(fed.model, w, opt, p_prev, int(ms.epoch))
                r = fedf_round(ms, q, costs, w.sizes, lrs, betas, cfg)
                inner.append(RoundView(int(ms.epoch), p_prev, p_prev2, q, q.copy(), r.ternary,
                                       costs, w.sizes.copy(), r.pilot,
                                       np.asarray(r.state.p_prev), r.paper_pilot, r.refused))
                ms = r.state
            setups[gi] = (w, opt)
            g_states[gi] = state._replace(master=ms)
            q, c, size = level.contribution(g_states[gi], w.data, {"costs": jnp.asarray(costs)})
            per_group.append(inner)
            q_g.append(np.asarray(q))
            c_g.append(float(c))
            s_g.append(float(size))
        q_g = np.stack(q_g)
        c_g = np.asarray(c_g, np.float32)
        s_g = np.asarray(s_g, np.float64)
        p_prev, p_prev2 = np.asarray(top.p_prev), np.asarray(top.p_prev2)
        top = top._replace(epoch=jnp.int32(t))
        r = fedf_round(top, q_g, c_g, s_g, alphas_g, betas_g, cfg)
        top_view = RoundView(t, p_prev, p_prev2, q_g, q_g.copy(), r.ternary, c_g, s_g,
                             r.pilot, np.asarray(r.state.p_prev), r.paper_pilot, r.refused)
        top = r.state
        out.append(GroupRound(t, per_group, top_view))
    return out


class _LevelConfig(NamedTuple):
    """The part of a RunConfig that ``fedf.level`` reads: the master's settings."""

    master: master.MasterConfig
