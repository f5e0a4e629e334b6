"""The senders of an asynchronous top (``--schedule async``): flat workers or group masters,
each given as the :class:`Parts` the loop of :mod:`fedf_jax.algorithms.asynchronous`
drives (the synchronous epoch, every sender's job, which senders' states to keep, the
top's state), and what a job sends (:class:`Sent`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedf_jax import layout
from fedf_jax.algorithms import fedavg, fedf, hierarchy
from fedf_jax.algorithms import secure as secure_sums
from fedf_jax.algorithms.common import rows_where
from fedf_jax.config import RunConfig
from fedf_jax.harness import Host


class Sent(NamedTuple):
    """What every sender sends after one job, one row each."""

    q: jax.Array  # f32[n, M] Q_k (a group's Q_g)
    costs: jax.Array  # f32[n] C_k (C_g); NaN for FedAvg
    packed: jax.Array  # u8[n, B] ternaries against the start models (FEDF; B = 0 else)
    nonzero: jax.Array  # i32[n]
    extra: dict  # per-sender outputs for the log (a group's costs and pilot)


class Parts(NamedTuple):
    """An algorithm's top level, as the asynchronous loop drives it.

    Attributes:
      n: senders; sizes: f32[n] S_k (S_g); betas: f32[n] beta of Eq. (5) per sender.
      step: the synchronous epoch ``(state, data) -> (state, outputs)``.
      send: ``(state, data) -> (state, Sent)``: every sender's job from the state's top.
      keep: ``(new, old, bool[n]) -> state``: the senders' states of ``new`` where True.
      top / with_top: the top's state (``master.MasterState`` or ``fedavg.State``) of a
        state, and a state with another top.
      secure: the top's vote sum through a secure layer (FEDF), or None.
      x_test, y_test, test_chunk: the test set.
    """

    n: int
    sizes: jax.Array
    betas: jax.Array
    step: Callable
    send: Callable
    keep: Callable
    top: Callable
    with_top: Callable
    secure: secure_sums.SecureSum | None
    test_chunk: int


def flat_parts(cfg: RunConfig, host: Host, w: layout.Workers) -> Parts:
    """Flat workers as the senders (FEDF or FedAvg)."""
    model, lay, spread = host.model, w.layout, layout.HERE.spread
    n = cfg.n_workers
    nan = jnp.full((n,), jnp.nan)
    if cfg.run.algorithm == "fedf":
        secure = None
        if cfg.master.secure_sum == "secagg":
            secure = secure_sums.secagg_votes(
                cfg.run.seed, secure_sums.frac_bits(w.sizes, cfg.master.betas(n)))
        step = functools.partial(fedf.epoch, model, lay, cfg.master, spread, secure=secure)

        def send(state: fedf.State, data):
            ms = state.master
            outs = fedf.workers_side(model, lay, cfg.master.scheme, spread, ms.p_prev,
                                     ms.p_prev2, ms.epoch, state.opt_states, data)
            gather = functools.partial(layout.to_workers, lay)
            sent = Sent(gather([o.q for o in outs]), gather([o.costs for o in outs]),
                        gather([o.packed for o in outs]), gather([o.nonzero for o in outs]),
                        {})
            return state._replace(opt_states=tuple(o.opt_state for o in outs)), sent

        def keep(new, old, mask):
            return old._replace(opt_states=layout.keep_rows(lay, mask, new.opt_states,
                                                            old.opt_states))

        return Parts(n, w.data.sizes, w.data.betas, step, send, keep, lambda s: s.master,
                     lambda s, top: s._replace(master=top), secure, lay.test_chunk)

    step = functools.partial(fedavg.epoch, model, lay, spread, n, None)

    def send_avg(state: fedavg.State, data):
        q, opt = fedavg.local_models(model, lay, spread, state.p, state.opt_states, data,
                                     state.epoch)
        return state._replace(opt_states=opt), Sent(q, nan, jnp.zeros((n, 0), jnp.uint8),
                                                     jnp.zeros((n,), jnp.int32), {})

    def keep_avg(new, old, mask):
        return old._replace(opt_states=layout.keep_rows(lay, mask, new.opt_states,
                                                        old.opt_states))

    return Parts(n, w.data.sizes, jnp.full((n,), 0.5), step, send_avg, keep_avg,
                 lambda s: s, lambda s, top: s._replace(p=top.p, epoch=top.epoch), None,
                 lay.test_chunk)


def group_parts(cfg: RunConfig, st: hierarchy.Setup) -> Parts:
    """Group masters as the senders (FEDF or FedAvg in ``--groups``)."""
    g = cfg.run.groups
    single = g == 1
    step = functools.partial(hierarchy.outer, st.level, st.kappa, single)

    def send(state: hierarchy.State, data):
        groups, q, cost, size, out = hierarchy.groups_side(st.level, st.kappa, single, state,
                                                           data)
        if st.level.vote is not None:
            packed, nonzero = st.level.vote(state.top, q)
        else:
            packed, nonzero = jnp.zeros((g, 0), jnp.uint8), jnp.zeros((g,), jnp.int32)
        extra = {"group_costs": out["costs"]}
        if "pilot" in out:
            extra["group_pilots"] = out["pilot"]
        return state._replace(groups=groups), Sent(q, cost, packed, nonzero, extra)

    def keep(new, old, mask):
        return old._replace(groups=rows_where(mask, new.groups, old.groups))

    sizes = jnp.asarray([st.groups.sizes[list(m)].sum() for m in cfg.group_workers()],
                        jnp.float32)
    betas = jnp.asarray(st.betas if st.betas is not None else np.full(g, 0.5), jnp.float32)
    return Parts(g, sizes, betas, step, send, keep, lambda s: s.top,
                 lambda s, top: s._replace(top=top), st.top_secure,
                 st.groups.layout.test_chunk)


__all__ = ["Sent", "Parts", "flat_parts", "group_parts"]
