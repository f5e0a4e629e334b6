"""FEDF (Algorithms 1 and 2 of the paper) as an algorithm of the harness.

One epoch is a pure function ``(State, layout.Data) -> (State, outputs)``: every
worker trains (one vmap per cohort, spread where its rows live), reports its cost
and packs its ternary (the fused kernel, Eq. 4/5); the master picks the pilot
(Eq. 1), reads its model, unpacks and updates (the fused kernel, Eq. 3), then P^t
is evaluated on the test set. :func:`workers_side` and :func:`master_side` are the
two halves that the MPI ranks run apart, with frames in between; every equation
is ``protocol``'s, reached through ``worker`` and ``master``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedf_jax import codec, layout, master, protocol, stream, timing, worker
from fedf_jax.algorithms.common import Level, epoch_record
from fedf_jax.algorithms.secure import SecureSum, account, frac_bits, secagg_votes
from fedf_jax.config import MasterConfig, RunConfig
from fedf_jax.harness import Algorithm, Host
from fedf_jax.layout import Placement
from fedf_jax.models import Model

log = logging.getLogger(__name__)


class State(NamedTuple):
    master: master.MasterState
    opt_states: tuple  # one stacked optimizer state per cohort


class CohortOut(NamedTuple):
    """What a cohort's workers produce in one epoch (Algorithm 2), one row each."""

    q: jax.Array  # f32[R, M] local models (only the pilot's leaves its worker)
    costs: jax.Array  # f32[R] C_k^t
    packed: jax.Array  # u8[R, packed_size(M)] ternaries (Eq. 4/5), fused and packed
    nonzero: jax.Array  # i32[R] non-zero trits of each T_k
    opt_state: Any


def cohort_side(model: Model, cohort: layout.Cohort, scheme: str, p_prev: jax.Array,
                p_prev2: jax.Array, epoch: jax.Array, train_key: jax.Array, opt_state,
                cd: layout.CohortData) -> CohortOut:
    """Every row of one cohort: train, cost, packed ternary.

    Each worker packs its ternary before the master's command arrives (it does not
    depend on who the pilot is); the master ignores the pilot's row.
    """
    q, costs, opt_state = layout.train_cohort(model, cohort, p_prev, train_key, epoch,
                                              opt_state, cd)
    packed, nonzero = jax.vmap(worker.ternary_message, in_axes=(0, None, None, 0, 0, None, None))(
        q, p_prev, p_prev2, cd.alpha, cd.beta, epoch, scheme)
    return CohortOut(q, costs, packed, nonzero, opt_state)


def workers_side(model: Model, lay: layout.Layout, scheme: str, spread: Callable,
                 p_prev: jax.Array, p_prev2: jax.Array, epoch: jax.Array, opt_states,
                 data: layout.Data) -> list[CohortOut]:
    """Every worker's side of one epoch, cohort by cohort, where the rows live."""
    return [spread(functools.partial(cohort_side, model, c, scheme), 4)(
                p_prev, p_prev2, epoch, data.train_key, o, cd)
            for c, cd, o in zip(lay.cohorts, data.cohorts, opt_states, strict=True)]


def conclude(model: Model, test_chunk: int, cfg: MasterConfig, ms: master.MasterState,
             sel: master.Selection, costs, q_pilot, packed, sizes, betas, x_test, y_test):
    """The master once the pilot's model and the ternaries are in: Eq. (3) (the fused
    unpack-and-update kernel) and the test metrics of P^t.

    Returns:
      (master state before epoch t + 1, test loss, test accuracy).
    """
    new = master.update(ms, sel, costs, q_pilot, packed, sizes, betas, cfg)
    loss, acc = worker.evaluate(model, new.p_prev, x_test, y_test, y_test.shape[0], test_chunk)
    return new, loss, acc


def combine(lay: layout.Layout, cfg: MasterConfig, state: State, data: layout.Data,
            outs: Sequence[CohortOut], secure: SecureSum | None = None
            ) -> tuple[State, dict]:
    """The master's side on the gathered cohort outputs, without the test pass: pilot
    choice (Eq. 1), the pilot's model, Eq. (3) over the packed ternaries, or (``secure``)
    over the sum of the workers' integer votes that a secure layer hands the master."""
    def gather(field):
        return layout.to_workers(lay, [getattr(o, field) for o in outs])

    costs, packed, nonzero = gather("costs"), gather("packed"), gather("nonzero")
    ms = state.master
    sel = master.select(ms, costs, data.sizes, cfg)
    q_pilot = layout.row_of(lay, [o.q for o in outs], jnp.maximum(sel.pilot, 0))
    guarded = {}
    if secure is None:
        new_master = master.update(ms, sel, costs, q_pilot, packed, data.sizes, data.betas,
                                   cfg)
        if cfg.pilot_guard:
            guarded = guard_outputs(ms, sel, q_pilot, packed, data.betas, cfg)
    else:  # each worker's share of the vote sum, summed by the secure layer
        rows, c = protocol.integer_votes(packed, ms.p_prev.shape[-1], data.sizes, sel.pilot,
                                         cfg.alpha0, data.betas, ms.epoch, cfg.scheme,
                                         sel.valid, secure.frac_bits)
        new_master = master.apply_total(ms, sel, costs, q_pilot,
                                        secure.total(rows, ms.epoch), c, cfg)
        if cfg.pilot_guard:  # the master sees no single ternary: the bands only
            guarded = {"paper_pilot": protocol.select_pilot(sel.goodness)}
    return (State(new_master, tuple(o.opt_state for o in outs)),
            {**_outputs(ms, sel, costs, nonzero), **guarded})


def guard_outputs(ms: master.MasterState, sel: master.Selection, q_pilot, packed, betas,
                  cfg: MasterConfig) -> dict:
    """What the pilot guard did this epoch (``--pilot-guard``): Eq. (1)'s own pilot
    beside the guarded one, and whether the pilot's step was refused."""
    return {"paper_pilot": protocol.select_pilot(sel.goodness),
            "step_refused": (sel.pilot >= 0)
            & ~master.pilot_passes(ms, sel, q_pilot, packed, betas, cfg)}


def _outputs(ms: master.MasterState, sel: master.Selection, costs, nonzero) -> dict:
    return {"epoch": ms.epoch, "costs": costs, "goodness": sel.goodness, "pilot": sel.pilot,
            "valid": sel.valid, "nonzero": nonzero}


class Running(NamedTuple):
    """The master's side of a streamed epoch (``--worker-chunk``) over the workers so
    far: the vote sum of Eq. (3) and the best goodness (Eq. 1) with its worker's
    model and ternary."""

    lanes: tuple  # sum_k w_k T_k over the workers seen, the best's included, in lanes
    #               (``protocol.vote_lanes``)
    goodness: jax.Array  # f32[] the best goodness so far; -inf before any
    worker: jax.Array  # i32[] its worker; N before any
    q: jax.Array  # f32[M] its local model Q_k
    packed: jax.Array  # u8[packed_size(M)] its ternary T_k

    @classmethod
    def empty(cls, m: int, n_workers: int, scheme: str) -> Running:
        packed = jnp.zeros((1, codec.packed_size(m, scheme)), jnp.uint8)
        return cls(protocol.vote_lanes(packed, jnp.zeros(1), scheme), jnp.float32(-jnp.inf),
                   jnp.int32(n_workers), jnp.zeros((m,), jnp.float32), packed[0])


def beats(best_g: jax.Array, best_k: jax.Array, g: jax.Array, worker: jax.Array,
          new: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Whether a chunk holds a better pilot than the best so far (Eq. 1's argmax, one
    chunk at a time): a higher goodness, or the same from a lower worker index; a
    non-finite goodness, or a row of another chunk (``new`` False), never.

    Args:
      best_g, best_k: the best goodness so far (f32[]) and its worker (i32[]).
      g: f32[K'] the chunk's goodness; worker: i32[K'] its rows' workers (ascending);
        new: bool[K'] the rows this chunk owns.

    Returns:
      (bool[], i32[] the chunk's best row).
    """
    row = protocol.select_pilot(jnp.where(new, g, jnp.nan))  # ties: the lowest row
    r = jnp.maximum(row, 0)
    return (row >= 0) & ((g[r] > best_g) | ((g[r] == best_g) & (worker[r] < best_k))), r


def fold_chunk(model: Model, cohort: layout.Cohort, cfg: MasterConfig,
               ms: master.MasterState, weights: jax.Array, train_key: jax.Array,
               run: Running, ch: stream.Chunk):
    """One chunk of workers (:func:`cohort_side`: train, cost, packed ternary) folded
    into the running pilot choice and vote sum.

    A worker's goodness (Eq. 1) needs only its own costs, so the pilot is a running
    argmax: the best goodness so far, ties to the lowest worker index, a non-finite
    goodness never (``protocol.select_pilot`` within the chunk, whose rows are in
    ascending worker order). Every worker with a finite cost adds ``w_k T_k``
    (``weights``: Eq. 3's ``w_k`` for all N, the pilot's not yet zeroed).

    Returns:
      (running state, (the chunk's optimizer states, its costs and non-zero counts)).
    """
    out = cohort_side(model, cohort, cfg.scheme, ms.p_prev, ms.p_prev2, ms.epoch, train_key,
                      ch.opt_state, ch.cd)
    g = protocol.goodness(out.costs, stream.take(ms.prev_costs, ch.worker, jnp.nan),
                          ch.cd.sizes, ms.epoch)
    better, best = beats(run.goodness, run.worker, g, ch.worker, ch.new)
    gain, who = g[best], ch.worker[best]
    w = jnp.where(ch.new & jnp.isfinite(out.costs), stream.take(weights, ch.worker, 0.0), 0.0)
    votes = protocol.vote_lanes(out.packed, w, cfg.scheme)
    lanes = tuple(a + b for a, b in zip(run.lanes, votes, strict=True))
    run = Running(lanes, *(jnp.where(better, new, old) for new, old in zip(
        (gain, who, out.q[best], out.packed[best]), run[1:], strict=True)))
    return run, (out.opt_state, {"costs": out.costs, "nonzero": out.nonzero})


def streamed_side(model: Model, lay: layout.Layout, cfg: MasterConfig, k: int, state: State,
                  data: layout.Data) -> tuple[State, dict]:
    """Both sides of one epoch with the workers streamed K at a time (``--worker-chunk``),
    without the test pass: the pilot (Eq. 1) and P^t (Eq. 3) of :func:`combine` over
    all workers, with K local models alive at a time (``stream.scan_cohorts``).

    Eq. (3) sums over k != k*: the running sum holds every worker's term, and the
    pilot's is taken out at the end. With one beta the terms are integers (``w_k =
    S_k``), so this is the whole-epoch master's sum bit for bit; with one beta per
    worker it is equal to float32 rounding (another order of the sum).
    """
    ms = state.master
    m = ms.p_prev.shape[-1]
    weights, c = protocol.update_weights(data.sizes, -1, cfg.alpha0, data.betas, ms.epoch)

    def body(cohort, run, ch):
        return fold_chunk(model, cohort, cfg, ms, weights, data.train_key, run, ch)

    run, opt_states, outs = stream.scan_cohorts(
        body, Running.empty(m, lay.n_workers, cfg.scheme), lay, k, data.cohorts,
        state.opt_states)
    costs = layout.to_workers(lay, [o["costs"] for o in outs])
    sel = master.select(ms, costs, data.sizes)  # the running argmax's pilot, and goodness
    own = protocol.vote_lanes(run.packed[None], weights[jnp.maximum(sel.pilot, 0)][None],
                              cfg.scheme)
    lanes = tuple(a - b for a, b in zip(run.lanes, own, strict=True))
    # The fused kernel's last loop (interleave, then Eq. 3), as the whole-epoch master
    # runs it. XLA's CPU code may contract its multiply-add into an FMA or not,
    # depending on what else it fuses into that loop: then P^t differs by one ulp.
    new_master = master.apply_lanes(ms, sel, costs, run.q, lanes, c, cfg)
    nonzero = layout.to_workers(lay, [o["nonzero"] for o in outs])
    return State(new_master, opt_states), _outputs(ms, sel, costs, nonzero)


def add_test_metrics(model: Model, lay: layout.Layout, data: layout.Data, new: State,
                     out: dict) -> tuple[State, dict]:
    """The test metrics of P^t added to an epoch's outputs."""
    loss, acc = worker.evaluate(model, new.master.p_prev, data.x_test, data.y_test,
                                data.y_test.shape[0], lay.test_chunk)
    return new, {**out, "test_loss": loss, "test_accuracy": acc}


def master_side(model: Model, lay: layout.Layout, cfg: MasterConfig, state: State,
                data: layout.Data, outs: Sequence[CohortOut],
                secure: SecureSum | None = None) -> tuple[State, dict]:
    """The master's side (:func:`combine`), then the test metrics of P^t."""
    return add_test_metrics(model, lay, data, *combine(lay, cfg, state, data, outs, secure))


def epoch(model: Model, lay: layout.Layout, cfg: MasterConfig, spread: Callable,
          state: State, data: layout.Data, secure: SecureSum | None = None,
          chunk: int | None = None) -> tuple[State, dict]:
    """One FEDF global epoch for all workers (Algorithms 1 and 2); pure and jittable
    (``secure``: the vote sum through a secure layer, a host callback; ``chunk``: the
    workers streamed that many at a time, :func:`streamed_side`)."""
    if chunk is not None:
        new, out = streamed_side(model, lay, cfg, chunk, state, data)
        return add_test_metrics(model, lay, data, new, out)
    ms = state.master
    outs = workers_side(model, lay, cfg.scheme, spread, ms.p_prev, ms.p_prev2, ms.epoch,
                        state.opt_states, data)
    return master_side(model, lay, cfg, state, data, outs, secure)


def group_epoch(model: Model, lay: layout.Layout, cfg: MasterConfig, spread: Callable,
                secure: SecureSum | None, state: State, data: layout.Data,
                chunk: int | None = None) -> tuple[State, dict]:
    """One FEDF epoch of a group's workers under its group master, without a test pass
    (an inner epoch of the hierarchy; ``chunk``: streamed, :func:`streamed_side`)."""
    if chunk is not None:
        return streamed_side(model, lay, cfg, chunk, state, data)
    ms = state.master
    outs = workers_side(model, lay, cfg.scheme, spread, ms.p_prev, ms.p_prev2, ms.epoch,
                        state.opt_states, data)
    return combine(lay, cfg, state, data, outs, secure)


def level(cfg: RunConfig, model: Model, lay: layout.Layout, betas_g: np.ndarray,
          placement: Placement = layout.HERE, secure: SecureSum | None = None,
          top_secure: SecureSum | None = None, chunk: int | None = None) -> Level:
    """FEDF as one level of the hierarchy (DESIGN §8).

    Each outer epoch the group's P^{t-1} becomes the top's model and its P^{t-2} stays
    the model its workers last trained from (with one group and one inner epoch: the
    flat run's). A group master is one worker of the top level: S_g the sum of its
    workers' S_k, C_g the S_k-weighted mean of their last costs (finite ones; NaN if
    none), Q_g the group's model after its inner epochs. The top runs Eq. (1), (3),
    (4)/(5) over the G groups. The threshold of Eq. (4) for a group is the master's
    public alpha0 (its workers' learning rates are private), beta_g the mean of its
    workers' beta_k.

    Args:
      betas_g: f32[G] each group's beta.
      secure, top_secure: the vote sums inside the groups and at the top through a secure
        layer (``algorithms.secure``), or None.
      chunk: each group's workers streamed that many at a time (:func:`streamed_side`).
    """
    scheme, m = cfg.master.scheme, model.num_params

    def reset(g: State, top: master.MasterState) -> State:
        # P^{t-1} becomes the top's; P^{t-2} stays the model the group's workers last
        # trained from (what each of them holds: no second model goes down).
        return g._replace(master=g.master._replace(p_prev=top.p_prev))

    def contribution(g: State, data: layout.Data, out: dict):
        ok = jnp.isfinite(out["costs"]) & (data.sizes > 0)
        w = jnp.where(ok, data.sizes, 0.0)
        cost = jnp.where(w.sum() > 0, jnp.sum(w * jnp.where(ok, out["costs"], 0.0))
                         / jnp.maximum(w.sum(), 1.0), jnp.nan)
        return g.master.p_prev, cost, jnp.sum(data.sizes)

    def vote(top: master.MasterState, q):
        return jax.vmap(worker.ternary_message, in_axes=(0, None, None, None, 0, None, None))(
            q, top.p_prev, top.p_prev2, cfg.master.alpha0, jnp.asarray(betas_g, jnp.float32),
            top.epoch, scheme)

    def top_step(top: master.MasterState, q, costs, sizes, x_test, y_test):
        betas = jnp.asarray(betas_g, jnp.float32)
        packed, nonzero = vote(top, q)
        sel = master.select(top, costs, sizes, cfg.master)
        q_pilot = q[jnp.maximum(sel.pilot, 0)]
        if top_secure is None:
            new, loss, acc = conclude(model, lay.test_chunk, cfg.master, top, sel, costs,
                                      q_pilot, packed, sizes, betas, x_test, y_test)
        else:  # the groups' shares of the top's vote sum, summed by the secure layer
            rows, c = protocol.integer_votes(packed, m, sizes, sel.pilot, cfg.master.alpha0,
                                             betas, top.epoch, scheme, sel.valid,
                                             top_secure.frac_bits)
            new = master.apply_total(top, sel, costs, q_pilot,
                                     top_secure.total(rows, top.epoch), c, cfg.master)
            loss, acc = worker.evaluate(model, new.p_prev, x_test, y_test, y_test.shape[0],
                                        lay.test_chunk)
        return new, {"epoch": top.epoch, "goodness": sel.goodness, "pilot": sel.pilot,
                     "valid": sel.valid, "nonzero": nonzero, "test_loss": loss,
                     "test_accuracy": acc}

    return Level(functools.partial(init, placement=placement),
                 functools.partial(group_epoch, model, lay, cfg.master, placement.spread,
                                   secure, chunk=chunk),
                 reset, contribution, lambda p0, g: master.init(p0, g), top_step,
                 lambda top: top.p_prev, lambda k: codec.epoch_bytes(m, k, scheme), vote)


def make_record(cfg: RunConfig, sizes, n_params: int) -> Callable[[dict, float], dict]:
    """The run-log line of one FEDF epoch from its host outputs.

    ``frame_ok`` (bool[N], MPI) marks the workers whose frame passed every check; a
    ternary that did not arrive is no vote and stays out of the non-zero fraction.
    """
    n, scheme = cfg.n_workers, cfg.master.scheme
    secure = cfg.master.secure_sum != "none"
    work = timing.work_units(sizes, [s.local_epochs for s in cfg.specs])

    def record(out: dict[str, Any], wall_s: float) -> dict[str, Any]:
        pilot = int(out["pilot"])
        counted = codec.epoch_bytes(n_params, n, scheme, has_pilot=pilot >= 0)
        valid = np.asarray(out["valid"], bool)
        senders = valid & np.asarray(out.get("frame_ok", True)) & (np.arange(n) != pilot)
        nz = float(np.asarray(out["nonzero"])[senders].sum()) / max(senders.sum() * n_params, 1)
        dropped = np.flatnonzero(~valid).tolist()
        modeled = timing.modeled_epoch_s(wall_s, work, counted.total, cfg.run.bandwidth,
                                         cfg.run.latency)
        rec = epoch_record(out, counted, wall_s, modeled, pilot=pilot,
                           goodness=out["goodness"], nonzero_fraction=nz, dropped=dropped)
        if secure:  # every worker's masked vote (zeros too) replaces the ternaries
            rec = account(rec, [(n, n_params)], (n - 1) * (pilot >= 0))
        if "paper_pilot" in out:
            rec = guard_record(rec, out)
        if dropped:
            log.warning("epoch %d: workers %s reported a non-finite cost; their ternaries "
                        "were dropped%s", rec["epoch"], dropped,
                        "" if pilot >= 0 else " and no pilot was usable (P^t = P^{t-1})")
        return rec

    return record


def guard_record(rec: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    """Adds the pilot guard's decisions to an epoch's run-log line (``paper_pilot``,
    ``step_refused``, absent under a secure sum: no single ternary to check against) and
    says on stderr when the guard overruled Eq. (1)."""
    paper = int(out["paper_pilot"])
    refused = bool(out["step_refused"]) if "step_refused" in out else None
    if paper != rec["pilot"]:
        log.warning("epoch %d: pilot guard: worker %d (Eq. 1's choice) reported a cost or "
                    "size outside the others' bands; pilot %d instead", rec["epoch"], paper,
                    rec["pilot"])
    if refused:
        log.warning("epoch %d: pilot guard: pilot %d's step is far beyond the step the "
                    "others' ternaries imply; P^t takes their votes only", rec["epoch"],
                    rec["pilot"])
    return {**rec, "paper_pilot": paper,
            **({} if refused is None else {"step_refused": refused})}


def init(lay: layout.Layout, data: layout.Data, p0: jax.Array,
         placement: Placement = layout.HERE) -> State:
    """P^0 at the master and a fresh optimizer state at every worker (fresh buffers)."""
    opt = layout.init_opt_states(lay, data, p0)
    return State(jax.tree.map(placement.put, master.init(p0, lay.n_workers)),
                 jax.tree.map(placement.put_rows, opt))


def make(cfg: RunConfig, host: Host, placement: Placement) -> Algorithm:
    """FEDF over the run's workers, placed by the backend."""
    w = host.workers(placement)
    secure = None
    if cfg.master.secure_sum == "secagg":
        bits = frac_bits(w.sizes, cfg.master.betas(cfg.n_workers))
        secure = secagg_votes(cfg.run.seed, bits)
    step = functools.partial(epoch, host.model, w.layout, cfg.master, placement.spread,
                             secure=secure, chunk=cfg.run.worker_chunk)
    return Algorithm(functools.partial(init, w.layout, w.data, host.p0, placement), step,
                     w.data, make_record(cfg, w.sizes, host.model.num_params),
                     lambda s: s.master.p_prev, list(placement.devices), host.model.num_params)


__all__ = ["State", "CohortOut", "Running", "cohort_side", "workers_side", "conclude",
           "guard_outputs", "guard_record", "beats", "fold_chunk", "streamed_side",
           "add_test_metrics", "master_side", "epoch", "group_epoch", "level", "make_record",
           "init", "make"]
