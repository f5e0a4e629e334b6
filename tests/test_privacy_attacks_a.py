"""Attacks E1, E6, E7, E8, the image metrics, the runner and `fedf attack`: each attack
succeeds where it must and fails (chance level) where it must; the blind colluders take
only what they observe."""

import dataclasses
import inspect
import json
import math

import jax
import numpy as np
import pytest

from fedf_jax import protocol
from fedf_jax.privacy import (
    cli,
    collusion,
    e1_inversion,
    e2_class_leakage,
    e6_curious_worker,
    e8_lying,
    experiments,
    inversion,
    metrics,
    views,
)
from fedf_jax.privacy.common import Options, Result, mean_ci95, row

OPTS = Options(workers=4, hidden=8, partition="iid", seeds=1, rounds=2, arms=("fedf+1",))


@pytest.fixture(scope="module")
def one_sample():
    """Every worker holds one sample; one local epoch of batch 8 = one SGD step."""
    return e1_inversion.cut_to(views.make_federation(OPTS, 5), 1)


@pytest.fixture(scope="module")
def one_sample_runs(one_sample):
    return {arm: views.run_arm(one_sample, arm, 2, 5) for arm in ("fedavg", "fedf+1")}


# ---- metrics ---------------------------------------------------------------------------

def test_psnr_of_a_known_error_and_the_cap_for_an_exact_image():
    a = np.zeros((2, 8, 8, 1))
    b = a.copy()
    b[0] += 0.1  # MSE 0.01 -> 20 dB
    np.testing.assert_allclose(metrics.psnr(b, a), [20.0, metrics.PSNR_CAP_DB])
    np.testing.assert_allclose(metrics.psnr(a + 2.0, a + 1.0), [metrics.PSNR_CAP_DB] * 2)


def test_ssim_is_one_for_identical_images_and_low_for_noise():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(3, 8, 8, 1))
    np.testing.assert_allclose(metrics.ssim(x, x), 1.0)
    assert metrics.ssim(rng.uniform(size=x.shape), x).mean() < 0.3


def test_match_undoes_a_permutation_and_iip_finds_the_true_image():
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(5, 8, 8, 1))
    perm = np.array([3, 0, 4, 1, 2])
    idx = metrics.match(x[perm], x)
    np.testing.assert_array_equal(perm[idx], np.arange(5))
    distract = [rng.uniform(size=(7, 8, 8, 1)) for _ in range(5)]
    assert metrics.iip_pixel(x + 0.01, x, distract).all()
    near = np.stack([d[0] for d in distract]) + 0.01  # next to a distractor
    assert not metrics.iip_pixel(near, x, distract).any()


def test_label_accuracy_is_the_multiset_overlap():
    assert metrics.label_accuracy([1, 1, 2, 7], [1, 2, 2, 7]) == 0.75
    assert metrics.label_accuracy([3], [3]) == 1.0


# ---- E1 --------------------------------------------------------------------------------

def test_mlp_layout_matches_the_models_forward_pass(one_sample):
    fed = one_sample
    layers = e1_inversion.layers_of(fed)
    p = fed.p0.astype(np.float64)
    first, out = layers["first"], layers["out"]
    x = fed.x_test[:5].reshape(5, -1)
    h = np.maximum(x @ p[first.kernel].reshape(first.shape) + p[first.bias], 0)
    logits = h @ p[out.kernel].reshape(out.shape) + p[out.bias]
    np.testing.assert_allclose(logits, np.asarray(fed.model.apply(fed.p0, fed.x_test[:5])),
                               atol=1e-5)


def test_analytic_inversion_recovers_a_one_sample_workers_input_exactly(one_sample,
                                                                        one_sample_runs):
    fed, layers = one_sample, e1_inversion.layers_of(one_sample)
    for v in one_sample_runs["fedavg"]:
        for k in range(4):
            delta = v.q_sent[k].astype(np.float64) - v.p_prev
            rec = e1_inversion.analytic_inversion(delta, layers["first"], 1, (8, 8, 1))
            assert np.abs(rec - fed.x_parts[k]).max() < 1e-4
            assert e1_inversion.infer_labels(delta, layers["out"], 1)[0] == fed.y_parts[k][0]


def test_the_fedf_master_recovers_its_pilots_input_whatever_the_private_lr(one_sample,
                                                                           one_sample_runs):
    fed, layers = one_sample, e1_inversion.layers_of(one_sample)
    for v in one_sample_runs["fedf+1"]:
        delta = v.q_sent[v.pilot].astype(np.float64) - v.p_prev
        rec = e1_inversion.analytic_inversion(delta, layers["first"], 1, (8, 8, 1))
        assert metrics.psnr(rec, fed.x_parts[v.pilot])[0] > 40


def test_analytic_inversion_is_exact_after_five_local_steps_on_one_sample():
    fed = e1_inversion.cut_to(views.make_federation(OPTS, 6, local_epochs=5), 1)
    (v,) = views.run_arm(fed, "fedavg", 1, 6)
    delta = v.q_sent[0].astype(np.float64) - v.p_prev
    rec = e1_inversion.analytic_inversion(delta, e1_inversion.layers_of(fed)["first"], 1,
                                          (8, 8, 1))
    assert metrics.psnr(rec, fed.x_parts[0])[0] > 40


def test_analytic_inversion_of_a_random_update_is_at_chance(one_sample):
    fed = one_sample
    layers = e1_inversion.layers_of(fed)
    rng = np.random.default_rng(2)
    delta = rng.normal(scale=1e-3, size=fed.p0.shape)
    rec = e1_inversion.analytic_inversion(delta, layers["first"], 1, (8, 8, 1))
    s = metrics.scores(rec, fed.x_parts[0], fed.y_parts[0], fed.x_aux, fed.y_aux)
    assert s["psnr_db"] < 15
    hits = [metrics.scores(e1_inversion.analytic_inversion(
        rng.normal(scale=1e-3, size=fed.p0.shape), layers["first"], 1, (8, 8, 1)),
        fed.x_parts[k], fed.y_parts[k], fed.x_aux, fed.y_aux)["iip"] for k in range(4)]
    assert np.mean(hits) <= 0.25


def test_label_rule_reads_the_classes_whose_output_bias_rose():
    out = e1_inversion.Layer(slice(0, 0), slice(0, 10), (0, 10))
    db = np.full(10, -0.01)
    db[[2, 7]] = [0.3, 0.1]
    labels = e1_inversion.infer_labels(db, out, 4)
    assert sorted(set(labels.tolist())) == [2, 7] and len(labels) == 4
    assert (labels == 2).sum() >= (labels == 7).sum()


def test_optimisation_inversion_reconstructs_a_one_step_update(one_sample, one_sample_runs):
    fed = one_sample
    v = one_sample_runs["fedavg"][0]
    delta = v.q_sent[0].astype(np.float64) - v.p_prev
    rec, value = inversion.optimisation_inversion(fed.model, v.p_prev, delta,
                                                     fed.y_parts[0], (8, 8, 1), fed.specs[0],
                                                     100, jax.random.key(0))
    good = metrics.psnr(rec, fed.x_parts[0])[0]
    rng = np.random.default_rng(3)
    noise, noise_value = inversion.optimisation_inversion(
        fed.model, v.p_prev, rng.normal(scale=1e-3, size=delta.shape), fed.y_parts[0],
        (8, 8, 1), fed.specs[0], 100, jax.random.key(0))
    assert good > 25 and metrics.psnr(noise, fed.x_parts[0])[0] < good - 10
    assert value < noise_value  # the attacker's own criterion ranks the true update's fit first


def test_the_attacker_guesses_the_recipe_from_its_prior_not_from_the_worker():
    guesses = inversion.prior_guesses(4)
    assert {(g.local_epochs, g.batch_size) for g in guesses} == {(1, 1), (1, 4), (5, 1), (5, 4)}
    lo, hi = views.LR_RANGE
    assert all(g.lr == pytest.approx(math.sqrt(lo * hi)) for g in guesses)
    assert len(inversion.prior_guesses(1)) == 2  # every batch is one full batch
    # the guessed attack never reads the worker's spec: a spec-free call reconstructs too
    fed = e1_inversion.cut_to(views.make_federation(OPTS, 5, local_epochs=5), 1)
    (v,) = views.run_arm(fed, "fedavg", 1, 5)
    delta = v.q_sent[0].astype(np.float64) - v.p_prev
    rec = inversion.guessed_inversion(fed.model, v.p_prev, delta, fed.y_parts[0], (8, 8, 1),
                                         60, jax.random.key(1))
    assert metrics.psnr(rec, fed.x_parts[0])[0] > 20


def test_e1_cuts_only_the_victim_outside_the_tiny_federation_regime():
    opts = dataclasses.replace(OPTS, n_local=(1, 0), local_epochs=(1, 5), batch_sizes=(8,))
    cells = e1_inversion.settings(opts)
    victim = [c for c in cells if c.regime.startswith("victim")]
    assert victim and not any(c.every_worker for c in victim)
    tiny = [c for c in cells if c.every_worker]
    assert len(tiny) == 1 and tiny[0].n_k == 1 and tiny[0].regime.startswith("tiny")
    fed = e1_inversion._federation(OPTS, 5, victim[0])
    assert fed.sizes[0] == 1 and fed.sizes[1:].min() > 1


# ---- E6 --------------------------------------------------------------------------------

def test_a_curious_worker_reads_a_one_sample_pilot_off_the_global_step(one_sample,
                                                                      one_sample_runs):
    fed, layers = one_sample, e1_inversion.layers_of(one_sample)
    v = one_sample_runs["fedf+1"][0]
    me = next(k for k in range(4) if k != v.pilot)
    out = e6_curious_worker.attack_step(v, fed, "fedf+1", me, layers)
    assert out["recovered_best_worker"] == 1.0
    assert e6_curious_worker.attack_step(v, fed, "fedf+1", v.pilot, layers) is None
    # the curious worker of an epoch is never its pilot, nor the victim (worker 0)
    for view in one_sample_runs["fedf+1"]:
        for n in (3, 4, 5):
            k = e6_curious_worker.curious(view._replace(pilot=n - 1), n)
            assert k == n - 2 and k != 0
            assert e6_curious_worker.curious(view._replace(pilot=0), n) == n - 1


# ---- E7 --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fed5():
    return views.make_federation(dataclasses.replace(OPTS, workers=5), 7)


def test_n_minus_1_colluders_recover_the_victims_ternary_exactly(fed5):
    cols = [1, 2, 3, 4]
    seen = 0
    for v in views.run_arm(fed5, "fedf+1", 3, 7):
        if v.pilot not in cols:
            continue
        seen += 1
        t_hat, size = collusion.recover_victim_ternary(collusion.observe(v, fed5, cols, 1))
        assert size == v.sizes[0]
        ok = collusion.identifiable(v, fed5, 0, 1)
        np.testing.assert_array_equal(t_hat[ok], v.ternary[0][ok])
        assert ok.mean() > 0.5
        if v.epoch == 1:
            assert ok.all()
    assert seen >= 1


def test_n_minus_1_colluders_of_the_paper_get_the_victims_model_bit_for_bit(fed5):
    rv = views.run_arm(fed5, "fedf-1", 3, 7, report=collusion.paper_attack([1, 2, 3, 4]))
    for v in rv:
        assert v.pilot == 0
        np.testing.assert_array_equal(v.p_new, v.q_true[0])


def test_n_minus_1_recovery_from_a_random_global_model_is_no_better_than_guessing(fed5):
    cols = [1, 2, 3, 4]
    v = next(v for v in views.run_arm(fed5, "fedf+1", 3, 7) if v.pilot in cols)
    rng = np.random.default_rng(4)
    fake = v._replace(p_new=v.p_new + rng.normal(scale=0.05, size=v.p_new.shape))
    t_hat, _ = collusion.recover_victim_ternary(collusion.observe(fake, fed5, cols, 1),
                                                   max_size=400)
    _, counts = np.unique(v.ternary[0], return_counts=True)
    assert np.mean(t_hat == v.ternary[0]) < counts.max() / v.ternary[0].size


BLIND = (collusion.pooled_residual, collusion.recover_victim_ternary,
         collusion.refine_exact, collusion.search_two_sizes, collusion.decode_pair,
         collusion.decode_run, collusion.own_vote, collusion.direction_of,
         e8_lying.cluster_epochs, e8_lying.cluster_signatures)


def test_blind_attackers_take_only_what_the_colluders_observe():
    truth = {"victim", "honest", "fed", "view", "sizes", "ternaries", "q_true"}
    for fn in BLIND:
        params = inspect.signature(fn).parameters
        assert not truth & set(params), (fn.__name__, sorted(truth & set(params)))
        first = next(iter(params.values())).annotation
        assert "ColluderView" in str(first), fn.__name__
    # a ColluderView holds the colluders' rows only: no field for an honest worker
    fields = collusion.ColluderView._fields
    assert not {"q_true", "q_sent", "costs"} & set(fields)


def test_blind_colluders_see_the_same_round_whichever_honest_worker_is_the_victim(fed5):
    cols = [2, 3, 4]
    fed = fed5._replace(x_parts=[fed5.x_parts[0], fed5.x_parts[1][:150], *fed5.x_parts[2:]],
                        y_parts=[fed5.y_parts[0], fed5.y_parts[1][:150], *fed5.y_parts[2:]])
    rv = [v for v in views.run_arm(fed, "fedf+1", 3, 7, report=e8_lying.steer_to_self(cols, 1))
          if v.pilot in cols]
    v = rv[-1]
    swap = [1, 0, 2, 3, 4]
    other = v._replace(q_true=v.q_true[swap], q_sent=v.q_sent[swap], ternary=v.ternary[swap],
                       costs=v.costs[swap], sizes=v.sizes[swap])
    a, b = (collusion.observe(w, fed, cols, 1) for w in (v, other))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # so their output is the same pair, and their no-prior score does not depend on who
    # the victim is: it is the mean over the two namings
    (x, y), decoded = collusion.decode_run([a])
    assert (x, y) == (150, 216)
    _, tx, ty, amb = decoded[0]
    np.testing.assert_array_equal(np.sort(np.stack([tx, ty]), axis=0),
                                  np.sort(v.ternary[:2], axis=0))
    layout = e2_class_leakage.fed_layout(fed, OPTS)
    for w, victim in ((v, 0), (other, 0)):
        got = collusion.blind_scores([a], [(w.ternary[victim], w.ternary[1 - victim])],
                                        layout, 3)
        assert got["pair_right"][0][1] == pytest.approx(1.0, abs=0.01)
        assert got["victim_right_no_prior"][0][1] < 0.95  # one of the two namings is wrong


def test_shuffled_honest_workers_give_blind_colluders_the_same_unordered_sizes(fed5):
    cols = [2, 3, 4]
    found = []
    fed5 = fed5._replace(x_parts=[fed5.x_parts[0], fed5.x_parts[1][:150], *fed5.x_parts[2:]],
                         y_parts=[fed5.y_parts[0], fed5.y_parts[1][:150], *fed5.y_parts[2:]])
    for fed in (fed5, views.permute_workers(fed5, [1, 0, 2, 3, 4])):
        rv = views.run_arm(fed, "fedf+1", 3, 7, report=e8_lying.steer_to_self(cols, 1))
        cvs = [collusion.observe(v, fed, cols, 1) for v in rv if v.pilot in cols]
        found.append(collusion.decode_run(cvs)[0])
        assert found[-1] == tuple(sorted(fed.sizes[:2].tolist()))
    assert found[0] == found[1] and fed5.sizes[0] != fed5.sizes[1]


def test_n_minus_2_colluders_with_unequal_sizes_decode_and_with_equal_sizes_do_not(fed5):
    cols = [2, 3, 4]
    fed = fed5._replace(x_parts=[fed5.x_parts[0], fed5.x_parts[1][:150], *fed5.x_parts[2:]],
                        y_parts=[fed5.y_parts[0], fed5.y_parts[1][:150], *fed5.y_parts[2:]])
    rv = views.run_arm(fed, "fedf+1", 3, 7, report=e8_lying.steer_to_self(cols, 10))
    v = rv[-1]
    assert v.pilot in cols and v.epoch == 3 and v.sizes[0] != v.sizes[1]
    cv = collusion.observe(v, fed, cols, 1)
    x, y = collusion.search_two_sizes(cv)
    assert sorted((x, y)) == sorted(v.sizes[:2].tolist())
    lo_first = v.sizes[0] == min(x, y)
    tx, ty, amb = collusion.decode_pair(cv, min(x, y), max(x, y))
    t_v = tx if lo_first else ty
    np.testing.assert_array_equal(t_v[~amb], v.ternary[0][~amb])
    assert amb.mean() < 0.2
    # equal sizes: the two honest trits only show through their sum
    same = v._replace(sizes=np.where(np.arange(5) == 1, v.sizes[0], v.sizes))
    same = same._replace(p_new=_eq3(same, fed))
    z = np.asarray(v.ternary[0], np.int64) + v.ternary[1]
    cv = collusion.observe(same, fed, cols, 1)
    _, _, amb = collusion.decode_pair(cv, int(v.sizes[0]), int(v.sizes[0]))
    both = (z == 0) | (np.abs(z) == 1)
    assert amb[both & (np.abs(v.p_prev.astype(np.float64) - v.p_prev2) > 1e-4)].mean() > 0.95


def test_class_prior_attribution_picks_the_identity_whose_signature_holds_the_class():
    sig = [np.array([0.0, 1.0, 0.0, 3.0]), np.array([2.0, 0.0, 1.0, 0.0])]
    assert collusion.attribute(sig, 3) == 0
    assert collusion.attribute(sig, 0) == 1


def _eq3(v, fed):
    """P^t as the master computes it (Eq. 3, d = +1) for a view with edited sizes."""
    return np.asarray(protocol.master_update(v.q_sent[v.pilot], v.ternary, v.sizes, v.pilot,
                                             v.p_prev, v.p_prev2, fed.alpha0, fed.beta,
                                             v.epoch))


# ---- E8 --------------------------------------------------------------------------------

def test_inflated_costs_and_sizes_leave_the_victims_update_almost_unmixed(fed5):
    cols = [2, 3, 4]
    rv = views.run_arm(fed5, "fedf+1", 3, 7,
                       report=e8_lying.hook_for("inflate cost+size", cols))
    assert all(v.pilot in (0, 1) for v in rv)
    for v in rv:
        if v.pilot == 0:
            assert e8_lying.relative_residual(v) < 1e-3
    honest = views.run_arm(fed5, "fedf+1", 3, 7)
    assert any(v.pilot in cols for v in honest)  # without the lie, colluders are chosen


def test_blind_clustering_splits_epochs_by_the_class_signature_of_the_global_step(fed5):
    layout = e2_class_leakage.fed_layout(fed5, OPTS)
    off, shape = layout["out.bias"]
    rng = np.random.default_rng(5)
    who = np.array([0, 1, 1, 0, 0, 1, 0, 1])
    cvs = []
    for k in who:  # two workers whose updates raise classes {1, 2} and {7, 8}
        step = rng.normal(scale=1e-3, size=fed5.p0.shape).astype(np.float32)
        bias = np.full(shape, -0.02, np.float32)
        bias[[1, 2] if k == 0 else [7, 8]] = 0.05
        step[off:off + shape[0]] = bias + rng.normal(scale=1e-3, size=shape)
        cvs.append(collusion.ColluderView(2, fed5.p0, fed5.p0, fed5.p0 + step, 5, (2, 3, 4),
                                             fed5.p0[None].repeat(3, 0),
                                             np.zeros((3, fed5.p0.size), np.int8),
                                             np.ones(3, np.int64), -1, 0.01, 0.2, 1))
    labels = e8_lying.cluster_epochs(cvs, layout)
    assert np.array_equal(labels, who) or np.array_equal(labels, 1 - who)
    sig = e8_lying.cluster_signatures(cvs, labels, layout)
    pick = collusion.attribute(sig, 7)  # the stated prior: the victim holds class 7
    assert np.all(who[labels == pick] == 1)


def test_unknown_lie_is_rejected():
    with pytest.raises(ValueError, match="strategy"):
        e8_lying.hook_for("whisper", [2])


# ---- runner and CLI --------------------------------------------------------------------

def test_help_lists_every_experiment(capsys):
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--experiment" in text and all(f"E{i}" in text for i in range(1, 13))


@pytest.mark.parametrize("argv, needle", [
    (["--experiment", "E13"], "`--experiment` (='E13') must be one of"),
    (["--experiment", "E7", "--arms", "fedf+3"], "`arm` (='fedf+3')"),
    (["--experiment", "E7", "--seeds", "0"], "`seeds` (=0)"),
    (["--experiment", "E2", "--data", "cifar10"], "--data-dir"),
])
def test_bad_input_is_a_one_line_error(capsys, argv, needle):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedf: error:") and needle in err and "\n" not in err


class _Tiny:
    """A stand-in experiment module: the CLI's plumbing without the computation."""

    TITLE, CLAIM, CRITERION = "tiny", "a claim", "a criterion"

    @staticmethod
    def run(opts, seed0=0, progress=None):
        progress("tiny done")
        return Result("E6", "tiny", "a claim", "a criterion",
                      [row(a, "s", "m", [1.0, 2.0, float("nan")]) for a in opts.arms],
                      "inconclusive", "notes")


def test_an_experiment_runs_from_the_cli_and_writes_its_result(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(experiments.EXPERIMENTS, "E6", _Tiny)
    argv = ["--experiment", "e6", "--quick", "--arms", "fedavg,fedf+1", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    d = json.loads((tmp_path / "result.json").read_text())
    assert d["experiment"] == "E6" and [r["arm"] for r in d["rows"]] == ["fedavg", "fedf+1"]
    assert d["rows"][0]["mean"] == 1.5 and d["rows"][0]["n"] == 2
    assert d["extra"]["options"]["quick"] is True and d["extra"]["options"]["seeds"] == 2
    back = experiments.read_result(tmp_path / "result.json")
    assert [x.mean for x in back.rows] == [1.5, 1.5] and back.verdict == "inconclusive"
    assert "### E6" in capsys.readouterr().out and (tmp_path / "result.md").exists()


def test_result_rows_keep_intervals_in_range_and_give_none_to_one_value(tmp_path):
    f1 = row("fedf+1", "s", "f1", [0.05, 0.95])  # Student-t alone: [-5.2, 6.2]
    assert (f1.lo, f1.hi, f1.interval) == (0.0, 1.0, "student-t clipped")
    one = row("fedf+1", "s", "auc", [0.7, float("nan")])
    assert one.n == 1 and math.isnan(one.lo) and math.isnan(one.hi) and one.interval == "n=1"
    assert mean_ci95([0.7], "auc")[0] == 0.7 and math.isnan(mean_ci95([0.7], "auc")[1])
    rate = row("fedf+1", "s", "victim_pilot", [1.0] * 5)
    same = row("fedf+1", "s", "recovered", [0.25] * 4)
    result = Result("E7", "t", "c", "k", [f1, one, rate, same], "inconclusive")
    cells = [ln.split(" | ")[4] for ln in result.to_markdown().splitlines()
             if ln.startswith("| fedf+1 ")]
    assert cells == ["[0, 1]", "— (n=1)", "[0.4782, 1] CP", "all equal (n=4)"]
    # result.json: no interval is null, and read back as NaN; the method is kept
    js, _ = experiments.write_result(result, tmp_path)
    d = json.loads(js.read_text())
    assert d["rows"][1]["lo"] is None and d["rows"][2]["interval"] == "clopper-pearson"
    back = experiments.read_result(js)
    assert math.isnan(back.rows[1].hi) and back.rows[3].interval == "all equal"
    # a result file written before rows had `interval` still reads
    for r in d["rows"]:
        del r["interval"]
    js.write_text(json.dumps(d))
    old = experiments.read_result(js)
    assert old.rows[0].interval == "" and "| [0, 1] |" in old.to_markdown()


def test_e8_runs_end_to_end_and_its_lies_steer_the_pilot(fed5):
    opts = dataclasses.replace(OPTS, workers=5, quick=True)
    r = e8_lying.run(opts, seed0=7)
    cell = {(x.setting, x.metric): x.mean for x in r.rows}
    assert cell[("steer to self", "colluder_pilot")] == 1.0
    assert cell[("inflate cost+size", "colluder_pilot")] == 0.0
    assert r.experiment == "E8" and [g.name.split(" (")[0] for g in r.regimes] == [
        "lies that make an honest worker pilot", "lies that make a colluder pilot"]
    # the blind residual is never below the informed one (the informed attacker knows
    # which epochs are the victim's)
    if ("inflate cost", "residual_informed") in cell:
        assert cell[("inflate cost", "residual_no_prior")] >= cell[("inflate cost",
                                                                    "residual_informed")]
    assert ("inflate cost", "residual_no_prior") in cell


def test_every_registered_experiment_states_its_criterion_before_running():
    for name, module in experiments.EXPERIMENTS.items():
        assert module.TITLE and module.CLAIM and module.CRITERION, name
        assert callable(module.run)
    assert experiments.theorem_verdict(["supported", "refuted"]) == "refuted"
    assert experiments.theorem_verdict(["supported", "supported"]) == "supported"
    assert experiments.theorem_verdict([]) == "inconclusive"
