"""Threshold branching: one regularized run, K pruned + fine-tuned results, each equal to an independent trial."""

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from trainables.branching import (
    SHARED,
    ProxyChoice,
    ProxyPoint,
    load_branch_point,
    more_thresholds,
    pareto_layers,
    projected_fractions,
    prune_now_proxy,
    ranked_thresholds,
    refine_under,
    run_branches,
    select_thresholds,
    threshold_grid,
)
from trainables.config import BRANCH_SETTINGS, ConfigError, TrialConfig, check_branchable, split_branch_settings
from trainables.contract import Status, TrialResult
from trainables.pipeline import BRANCH_FIELDS, dense, regularize, run_trial, start_run

BASE = dict(epochs=3, finetune_epochs=2, batch_size=256, strength=3e-4)
BRANCHES = [
    dict(threshold=0.01),
    dict(threshold=0.05, finetune_lr=3e-4),
    dict(threshold=0.5, threshold_mode="std", finetune_epochs=1),
]
TIMING = ("wall_time_s", "resumed_from_epoch", "epoch_time_s", "peak_memory_mb")  # measured, not computed


def comparable(result):
    """Everything a result says, but timings (and resumed_from_epoch, which says how it was run)."""
    body = result.to_dict()
    for key in TIMING:
        body.pop(key)
    body["history"] = [{k: v for k, v in epoch.items() if k != "time_s"} for epoch in body["history"]]
    return body


@pytest.fixture(scope="module")
def independent():
    return [run_trial({**BASE, **branch}) for branch in BRANCHES]


@pytest.fixture(scope="module")
def branched():
    reports = []
    results = run_branches(BASE, BRANCHES, report=lambda m, s: reports.append(m))
    return results, reports


class Interrupted(Exception):
    pass


# --- (a) the same numbers as independent runs ------------------------------------------------


def test_branches_equal_independent_trials_exactly(branched, independent):
    results, _ = branched
    assert len(results) == len(BRANCHES)
    for branch, result, reference in zip(BRANCHES, results, independent):
        assert result.status is Status.OK, branch
        assert comparable(result) == comparable(reference), branch  # val/test accuracy, sparsity, layers, history
        assert result.resumed_from_epoch is None
    assert len({r.nonzero_frac for r in results}) == 3  # the thresholds did differ


def test_shared_epochs_are_reported_once_then_each_branch(branched):
    results, reports = branched
    tags = [(r["branch"], r["phase"], r["epoch"]) for r in reports]
    assert tags == [
        (SHARED, "train", 1),
        (SHARED, "train", 2),
        (SHARED, "train", 3),
        (0, "finetune", 4),
        (0, "finetune", 5),
        (1, "finetune", 4),
        (1, "finetune", 5),
        (2, "finetune", 4),
    ]
    for epoch, report in enumerate(reports[:3]):  # each branch's projected sparsity rides along
        assert report["branch_nonzero_frac"] == [r.history[epoch]["nonzero_frac"] for r in results]
        assert report["branch_flops_frac"] == [r.history[epoch]["flops_frac"] for r in results]


def test_each_branch_is_told_as_soon_as_it_is_final(branched):
    reference, _ = branched
    events = []
    results = run_branches(
        BASE,
        BRANCHES[:2],
        report=lambda metrics, state: events.append(("epoch", metrics["branch"])),
        on_end=lambda index, result: events.append(("end", index, comparable(result))),
    )
    assert [event[:2] for event in events] == [
        *[("epoch", SHARED)] * 3,
        ("epoch", 0),
        ("epoch", 0),
        ("end", 0),  # before branch 1's first epoch
        ("epoch", 1),
        ("epoch", 1),
        ("end", 1),
    ]
    ends = [event[2] for event in events if event[0] == "end"]
    assert ends == [comparable(r) for r in results] == [comparable(r) for r in reference[:2]]


def test_divergence_in_the_shared_phase_diverges_every_branch_and_in_a_branch_only_that_one():
    config = dict(BASE, optimizer="sgd", lr=1e12, reg="l1", strength=1.0)
    results = run_branches(config, BRANCHES[:2])
    assert [r.status for r in results] == [Status.DIVERGED] * 2
    for branch, result in zip(BRANCHES[:2], results):
        assert comparable(result) == comparable(run_trial({**config, **branch}))

    config = dict(BASE, optimizer="sgd", lr=0.05)
    branches = [dict(threshold=0.02), dict(threshold=0.02, finetune_lr=1e30)]
    results = run_branches(config, branches)
    assert [r.status for r in results] == [Status.OK, Status.DIVERGED]
    assert results[1].diverged_epoch == 4 and "finetune" in results[1].message
    for branch, result in zip(branches, results):
        assert comparable(result) == comparable(run_trial({**config, **branch}))


# --- (b) interrupted and resumed ------------------------------------------------------------


@pytest.mark.parametrize("stop_at", [(SHARED, 2), (SHARED, 3), (1, 4)])
def test_resume_continues_where_it_stopped_and_never_retrains_finished_work(tmp_path, branched, stop_at):
    reference, _ = branched
    checkpoint = tmp_path / "state.pt"

    def save_then_die(metrics, state):
        state.save(checkpoint)
        if (metrics["branch"], metrics["epoch"]) == stop_at:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_branches(BASE, BRANCHES, report=save_then_die)
    after, ended = [], []
    resumed = run_branches(
        BASE,
        BRANCHES,
        report=lambda m, s: after.append((m["branch"], m["epoch"])),
        resume_from=checkpoint,
        on_end=lambda index, result: ended.append((index, result)),
    )
    assert ended == list(enumerate(resumed))  # a branch the checkpoint held is told too, in its turn
    shared_after = [epoch for branch, epoch in after if branch == SHARED]
    assert shared_after == (list(range(stop_at[1] + 1, 4)) if stop_at[0] == SHARED else [])
    if stop_at[0] == 1:  # branch 0 came back from the checkpoint; branch 1 went on from epoch 5
        assert after == [(1, 5), (2, 4)]
        assert resumed[1].resumed_from_epoch == 4 and resumed[2].resumed_from_epoch == 3
    assert [comparable(r) for r in resumed] == [comparable(r) for r in reference]


def test_skip_leaves_out_branches_the_caller_already_has(tmp_path, branched):
    reference, _ = branched
    checkpoint = tmp_path / "state.pt"

    def save_then_die(metrics, state):
        state.save(checkpoint)
        if metrics["branch"] == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_branches(BASE, BRANCHES, report=save_then_die)
    resumed = run_branches(BASE, BRANCHES, resume_from=checkpoint, skip={0})
    assert resumed[0] is None
    assert [comparable(r) for r in resumed[1:]] == [comparable(r) for r in reference[1:]]


def test_a_branch_point_file_spares_the_shared_phase(tmp_path, branched):
    reference, _ = branched
    point = tmp_path / "branch_point.pt"

    def die_in_first_branch(metrics, state):
        if metrics["branch"] == 0:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_branches(BASE, BRANCHES, report=die_in_first_branch, branch_point=point)
    assert load_branch_point(point).epoch == 3
    phases = []
    resumed = run_branches(BASE, BRANCHES, report=lambda m, s: phases.append(m["branch"]), branch_point=point)
    assert SHARED not in phases and [r.resumed_from_epoch for r in resumed] == [3, 3, 3]
    assert [comparable(r) for r in resumed] == [comparable(r) for r in reference]
    with pytest.raises(ConfigError, match="strength"):  # a branch point of another regularized run is refused
        run_branches(dict(BASE, strength=1e-3), BRANCHES, branch_point=point)


RUN_ONE_BRANCH = """
import json, sys
from trainables.branching import run_branches
base, branch, point, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
(result,) = run_branches(base, [branch], branch_point=point)
open(out, "w").write(json.dumps(result.to_dict()))
"""


def test_runs_that_share_a_branch_point_at_once_train_the_shared_phase_once(tmp_path, branched):
    """Two processes (as two Ray workers) with equal shared settings start together: one trains the
    shared phase, the other waits for its branch point and adopts it."""
    reference, _ = branched
    point, root = tmp_path / "branch_point.pt", Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    outs = [tmp_path / f"result-{index}.json" for index in (0, 1)]
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", RUN_ONE_BRANCH, json.dumps(BASE), json.dumps(BRANCHES[i]), str(point), str(outs[i])],
            cwd=root,
            env=env,
        )
        for i in (0, 1)
    ]
    assert [run.wait(timeout=300) for run in runs] == [0, 0]
    results = [TrialResult.from_dict(json.loads(out.read_text())) for out in outs]

    (trained,) = [i for i in (0, 1) if results[i].resumed_from_epoch is None]
    (adopted,) = [i for i in (0, 1) if results[i].resumed_from_epoch == 3]
    # the adopter's shared epochs are the trainer's, as recorded (bit for bit); only the projections at
    # its own threshold are missing before the point, which only the trainer could have measured
    shared = ("epoch", "phase", "loss", "task_loss", "reg_loss", "val_accuracy", "val_loss", "lr")
    for mine, theirs in zip(results[adopted].history[:3], results[trained].history[:3]):
        assert {k: mine[k] for k in shared} == {k: theirs[k] for k in shared}
    assert math.isnan(results[adopted].history[0]["nonzero_frac"])
    # and both are the results of independent trials (another process: equal up to float rounding)
    for i in (0, 1):
        assert results[i].nonzero_frac == pytest.approx(reference[i].nonzero_frac, rel=1e-2)
        assert results[i].val_accuracy == pytest.approx(reference[i].val_accuracy, abs=0.02)


def test_checkpoints_of_the_two_kinds_are_not_mixed_up(tmp_path):
    checkpoint = tmp_path / "state.pt"

    def save_then_die(metrics, state):
        state.save(checkpoint)
        raise Interrupted

    with pytest.raises(Interrupted):
        run_branches(BASE, BRANCHES, report=save_then_die)
    with pytest.raises(ConfigError, match="run_branches"):
        run_trial(BASE, resume_from=checkpoint)
    with pytest.raises(ConfigError, match="branches may only set"):
        run_branches(BASE, [dict(strength=1.0)])


# --- (c) the branch rule ---------------------------------------------------------------------


def test_one_rule_says_what_branches_may_differ_in():
    assert BRANCH_FIELDS == BRANCH_SETTINGS
    assert BRANCH_SETTINGS == ("threshold", "threshold_mode", "finetune_epochs", "finetune_lr", "prune_ramp_epochs")
    shared, branch = split_branch_settings(dict(strength=1e-4, threshold=0.01, finetune_lr=1e-4, epochs=3))
    assert shared == dict(strength=1e-4, epochs=3) and branch == dict(threshold=0.01, finetune_lr=1e-4)
    check_branchable(["strength", "threshold"])
    check_branchable(["finetune_epochs"])
    with pytest.raises(ConfigError, match="threshold"):
        check_branchable(["strength", "lr"])
    with pytest.raises(ConfigError, match="nothing"):
        check_branchable([])


# --- (d) the proxy and choosing thresholds ---------------------------------------------------


def test_threshold_grid():
    grid = threshold_grid(1e-3, 0.1, n=3)
    assert grid[0] == 1e-3 and grid[-1] == 0.1 and grid[1] == pytest.approx(1e-2)
    assert threshold_grid(0.0, 1.0, n=5, log=False) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert len(threshold_grid(1e-3, 0.1)) == 32
    with pytest.raises(ValueError):
        threshold_grid(0.0, 1.0)


def _points(rows):
    return [ProxyPoint(t, acc, nz, nz) for t, acc, nz in rows]


def test_select_thresholds_spans_the_front_in_log_sparsity():
    # a front from (acc .98, nz .5) down to (acc .60, nz .001), plus dominated points
    front = [(0.01, 0.98, 0.5), (0.02, 0.97, 0.2), (0.03, 0.96, 0.1), (0.04, 0.95, 0.05), (0.05, 0.93, 0.02)]
    front += [(0.06, 0.90, 0.01), (0.07, 0.80, 0.005), (0.08, 0.60, 0.001)]
    dominated = [(0.015, 0.97, 0.6), (0.025, 0.90, 0.3), (0.2, math.nan, 0.0)]
    points = _points(front + dominated)
    assert [p.threshold for p in pareto_layers(points)[0]] == [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08]
    chosen = select_thresholds(points, 3)
    assert chosen == [0.01, 0.05, 0.08]  # most accurate, sparsest, and the one nearest the log-middle
    assert select_thresholds(list(reversed(points)), 3) == chosen  # order does not matter
    assert select_thresholds(points, 1) == [0.01]
    assert select_thresholds(points, 2) == [0.01, 0.08]
    assert select_thresholds(points, 8) == [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08]  # the whole front
    assert select_thresholds(points, 3, low=0.02, high=0.06) == [0.02, 0.04, 0.06]
    everything = sorted(p.threshold for p in points if p.nonzero_frac > 0)
    assert select_thresholds(points, 20) == everything  # k beyond all: every point but the one that keeps nothing


def test_select_thresholds_fills_from_the_next_layers_when_the_front_is_short():
    points = _points([(0.01, 0.9, 0.5), (0.02, 0.8, 0.1), (0.03, 0.85, 0.6), (0.04, 0.5, 0.2), (0.05, math.nan, 0.1)])
    assert select_thresholds(points, 2) == [0.01, 0.02]
    assert select_thresholds(points, 3) == [0.01, 0.02, 0.04]  # of the next layer, the one farther in log nonzero
    assert select_thresholds(points, 4) == [0.01, 0.02, 0.03, 0.04]
    assert select_thresholds(points, 10) == [0.01, 0.02, 0.03, 0.04]  # 0.05 keeps 0.02's mask


def test_select_thresholds_ranks_what_is_sparser_than_the_floor_as_at_the_floor():
    # a tail of ever fewer weights at chance accuracy: without a floor the ε-net reaches for its end
    points = _points([(0.01, 0.98, 0.2), (0.02, 0.97, 0.05), (0.03, 0.9, 0.01), (0.04, 0.5, 2e-3)])
    points += _points([(0.05, 0.1, 5e-4), (0.06, 0.1, 1e-4), (0.07, 0.1, 2e-5)])
    assert select_thresholds(points, 3) == [0.01, 0.04, 0.07]
    assert select_thresholds(points, 3, floor=1e-3) == [0.01, 0.03, 0.05]  # the tail past 0.1 %: one point, its densest
    assert select_thresholds(points, 4, floor=1e-3, caps={"nonzero_frac": 0.06}) == [0.02, 0.03, 0.04, 0.05]
    with pytest.raises(ValueError, match="floor"):
        select_thresholds(points, 2, floor=0.0)


def test_select_thresholds_spends_no_branch_on_a_repeated_mask_or_an_empty_one():
    # nested masks: an equal nonzero fraction is the same mask, and 0 leaves a constant network
    points = _points([(0.1, 0.95, 0.2), (0.2, 0.9, 0.05), (0.3, 0.9, 0.05), (0.4, 0.5, 0.01), (0.5, 0.1, 0.0)])
    points += _points([(0.6, 0.1, 0.0), (0.7, 0.1, 0.0)])
    assert select_thresholds(points, 4) == [0.1, 0.2, 0.4]  # fewer than k: nothing else makes a result of its own
    assert select_thresholds(points, 2, caps={"nonzero_frac": 0.06}) == [0.2, 0.4]


def test_more_thresholds_never_repeats_the_asked_thresholds_mask():
    # 0.07 and 0.09 keep one mask, so the asked 0.08 keeps it too: the pick 0.07 would repeat its result
    points = _points([(0.01, 0.98, 0.5), (0.03, 0.96, 0.1), (0.05, 0.93, 0.02), (0.07, 0.9, 0.01), (0.09, 0.9, 0.01)])
    assert select_thresholds(points, 3) == [0.01, 0.03, 0.07]
    assert more_thresholds(points, 0.08, 2) == [0.01, 0.03]
    assert select_thresholds(points, 5) == [0.01, 0.03, 0.05, 0.07]  # 0.09 is 0.07's mask
    assert more_thresholds(points, 0.08, 4) == [0.01, 0.03, 0.05]  # given way with no other point to take its place
    assert more_thresholds(points, 0.08, 3) == [0.01, 0.03, 0.05]
    assert more_thresholds(points, 0.06, 4) == [0.01, 0.03, 0.05, 0.07]  # 0.06 may differ from both: all kept


def test_runs_of_one_model_branch_where_the_runs_before_them_did_not():
    # λ = 0 with one seed: two runs, one model, one proxy front; the second passes over the first's picks
    points = _points([(0.01 * i, 1.0 - 0.05 * i, 0.5**i) for i in range(1, 11)])
    ranked = ranked_thresholds(points, 10)
    assert ranked[:4] == ranked_thresholds(points, 4) and sorted(ranked[:4]) == select_thresholds(points, 4)
    first = more_thresholds(points, 0.055, 3)
    second = more_thresholds(points, 0.035, 3, skip=4)
    assert len(first) == len(second) == 3 and not set(first) & set(second)
    assert set(second) <= set(ranked[4:8])
    assert more_thresholds(points, 0.035, 3, skip=9) == [ranked[9]]  # what is left


def test_select_thresholds_keeps_within_the_sparsity_caps():
    front = [(0.01, 0.98, 0.5), (0.02, 0.97, 0.2), (0.03, 0.96, 0.1), (0.04, 0.95, 0.05), (0.05, 0.93, 0.02)]
    front += [(0.06, 0.90, 0.01), (0.07, 0.80, 0.005), (0.08, 0.60, 0.001)]
    points = _points(front)  # flops_frac = nonzero_frac here
    assert select_thresholds(points, 3) == [0.01, 0.05, 0.08]
    # the ε-net over the points within the cap: its most accurate, its sparsest, the log-middle
    assert select_thresholds(points, 3, caps={"nonzero_frac": 0.1}) == [0.03, 0.06, 0.08]
    assert select_thresholds(points, 2, caps={"flops_frac": 0.05}) == [0.04, 0.08]
    assert select_thresholds(points, 2, caps={"nonzero_frac": 0.1, "flops_frac": 0.05}) == [0.04, 0.08]
    # fewer within than k: the rest from beyond the caps, the nearest first
    assert select_thresholds(points, 5, caps={"nonzero_frac": 0.01}) == [0.04, 0.05, 0.06, 0.07, 0.08]
    assert select_thresholds(points, 2, caps={"nonzero_frac": 1e-4}) == [0.07, 0.08]
    assert more_thresholds(points, 0.03, 2, caps={"nonzero_frac": 0.1}) == [0.06, 0.08]  # beside the asked one
    assert more_thresholds(points, 0.055, 2, caps={"nonzero_frac": 0.1}) == [0.03, 0.08]  # the nearest gives way
    # the asked 0.02 keeps 20 %, beyond the cap: its result adds nothing within, so 0.03 (in-cap, most
    # accurate) stays and the last-ranked pick gives way
    assert ranked_thresholds(points, 3, caps={"nonzero_frac": 0.1}) == [0.03, 0.08, 0.06]
    assert more_thresholds(points, 0.02, 2, caps={"nonzero_frac": 0.1}) == [0.03, 0.08]
    assert more_thresholds(points, 0.035, 2, caps={"nonzero_frac": 0.1}) == [0.06, 0.08]  # maybe within: nearest
    assert more_thresholds(points[:2], 0.01, 2) == [0.02]  # too few points: all but the asked one
    assert more_thresholds(points[:2], 0.5, 2) == [0.01, 0.02]
    # one pick of four lies beyond the cap: it gives way, not the in-cap pick nearest the asked 0.075
    assert select_thresholds(points, 4, caps={"nonzero_frac": 0.01}) == [0.05, 0.06, 0.07, 0.08]
    assert more_thresholds(points, 0.075, 3, caps={"nonzero_frac": 0.01}) == [0.06, 0.07, 0.08]
    assert more_thresholds(points, 0.075, 3) == [0.01, 0.03, 0.05]  # no caps: 0.08, the nearest, gives way
    for caps in ({"val_accuracy": 0.5}, {"nonzero_frac": 0.0}, {"flops_frac": math.nan}):
        with pytest.raises(ValueError, match="caps"):
            select_thresholds(points, 2, caps=caps)


def test_select_thresholds_branches_at_the_best_point_under_each_wanted_sparsity():
    front = [(0.01, 0.98, 0.5), (0.02, 0.97, 0.2), (0.03, 0.96, 0.1), (0.04, 0.95, 0.05), (0.05, 0.93, 0.02)]
    front += [(0.06, 0.90, 0.01), (0.07, 0.80, 0.005), (0.08, 0.60, 0.001)]
    points = _points(front)
    assert select_thresholds(points, 3) == [0.01, 0.05, 0.08]  # ≤ 10 % gets 2 %, whatever falls under it
    # after the most accurate point, the most accurate under each wanted fraction, densest first
    assert select_thresholds(points, 3, under=[0.1]) == [0.01, 0.03, 0.08]
    assert ranked_thresholds(points, 4, under=[0.01, 0.1]) == [0.01, 0.03, 0.06, 0.08]
    assert select_thresholds(points, 3, under=[0.5, 0.9]) == [0.01, 0.05, 0.08]  # the most accurate already is
    assert select_thresholds(points, 3, under=[1e-4]) == [0.01, 0.05, 0.08]  # nothing keeps that little
    assert ranked_thresholds(points, 3, caps={"nonzero_frac": 0.1}, under=[0.05]) == [0.03, 0.04, 0.08]
    # the asked 0.035 keeps 5-10 %: the pick under 5 % stays though it is the nearest; 0.03 gives way
    assert more_thresholds(points, 0.035, 2, caps={"nonzero_frac": 0.1}) == [0.06, 0.08]
    assert more_thresholds(points, 0.035, 2, caps={"nonzero_frac": 0.1}, under=[0.05]) == [0.04, 0.08]
    # the asked 0.045 surely keeps ≤ 5 % (0.04 keeps 5 % and contains its mask): its own result serves there
    assert more_thresholds(points, 0.045, 2, caps={"nonzero_frac": 0.1}, under=[0.05]) == [0.03, 0.08]
    with pytest.raises(ValueError, match="under"):
        select_thresholds(points, 2, under=[1.5])


def test_projected_fractions_are_those_of_a_sparsity_report():
    from trainables.pruning import compute_masks, sparsity_report

    run = start_run(TrialConfig(**dict(BASE, epochs=1)))
    assert dense(run) and regularize(run)
    pairs = {"a0": (0.0, "abs"), "a": (0.02, "abs"), "s": (0.7, "std")}
    fractions = projected_fractions(run.model, run.positions, pairs)
    for key, (threshold, mode) in pairs.items():
        report = sparsity_report(run.model, run.positions, compute_masks(run.model, threshold, mode))
        assert fractions[key] == [report.nonzero_frac, report.flops_frac], key


def test_prune_now_proxy_is_what_pruning_there_gives():
    run = start_run(TrialConfig(**BASE))
    assert dense(run) and regularize(run)
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    thresholds = [0.0, 0.01, 0.05]
    points = prune_now_proxy(run, thresholds)
    assert all((before[k] == v).all() for k, v in run.model.state_dict().items())  # the run is untouched
    assert [p.threshold for p in points] == thresholds
    assert points[0].nonzero_frac == 1.0 and points[0].val_accuracy == run.validate()[0]
    for point, threshold in zip(points[1:], thresholds[1:]):
        reference = run_trial(dict(BASE, threshold=threshold))
        assert point.val_accuracy == reference.val_accuracy_after_prune
        assert point.nonzero_frac == reference.history[2]["nonzero_frac"]


def test_refine_under_finds_the_densest_threshold_under_a_fraction_between_grid_points():
    run = start_run(TrialConfig(**BASE))
    assert dense(run) and regularize(run)
    grid = threshold_grid(0.01, 0.2, n=4)
    points = prune_now_proxy(run, grid)
    denser, sparser = points[1], points[2]  # a fraction between two grid points
    fraction = (denser.nonzero_frac + sparser.nonzero_frac) / 2
    (refined,) = refine_under(run, points, [fraction, 2.0, 1e-9])  # the others have no bracket: nothing
    assert denser.threshold < refined.threshold < sparser.threshold
    assert sparser.nonzero_frac < refined.nonzero_frac <= fraction
    assert refined == prune_now_proxy(run, [refined.threshold])[0]  # a proxy point like any other
    assert refine_under(run, points, [sparser.nonzero_frac]) == []  # the grid hits it already


def test_the_proxy_marks_masks_that_cut_the_input_off_and_never_picks_them():
    """A threshold past one layer's largest weight leaves weights elsewhere (nonzero > 0) but a constant
    network: marked, and left out of the choice, whatever its place on the front."""
    from trainables.regularizers import prunable_weights

    run = start_run(TrialConfig(**BASE))
    assert dense(run) and regularize(run)
    largest = [getattr(m, n).abs().max().item() for _, m, n in prunable_weights(run.model)]
    below, past = min(largest) * 0.9, (min(largest) + max(largest)) / 2
    alive, cut = prune_now_proxy(run, [below, past])
    assert alive.connected and alive.nonzero_frac > cut.nonzero_frac > 0
    assert not cut.connected
    assert select_thresholds([alive, cut], 2) == [below]
    assert select_thresholds([replace(alive, connected=False), cut], 2) == []


def test_a_proxy_choice_at_the_branch_point_gives_exact_branches():
    choice = ProxyChoice(k=2, grid=tuple(threshold_grid(0.005, 0.1, n=6)), settings=dict(finetune_epochs=1))
    results = run_branches(BASE, choice)
    assert len(results) == 2 and len(choice.points) == 6
    chosen = select_thresholds(choice.points, 2)
    for threshold, result in zip(chosen, results):
        reference = run_trial(dict(BASE, threshold=threshold, finetune_epochs=1))
        # Exact, but the prune-now proxy accuracy of the shared epochs before the branch point: a threshold
        # chosen there was not known earlier, and measuring every grid threshold each epoch would cost a
        # validation pass per threshold (NaN instead; exact at the branch point itself).
        ours, theirs = comparable(result), comparable(reference)
        shared = [e for e in ours["history"] if e["phase"] == "train"]
        assert [e["proxy_val_accuracy"] for e in shared[:-1]] == pytest.approx(
            [math.nan] * (len(shared) - 1), nan_ok=True
        )
        for body in (ours, theirs):
            for epoch in body["history"][: len(shared) - 1]:
                epoch.pop("proxy_val_accuracy", None)
        assert ours == theirs


# --- (e) the command line --------------------------------------------------------------------


def test_cli_thresholds_prints_one_line_per_threshold(capsys):
    from trainables.cli import main

    args = ["--epochs", "2", "--finetune-epochs", "1", "--batch-size", "256", "--thresholds", "0.01,0.02,0.05"]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[:4] for line in lines] == [["threshold", t, "status", "ok"] for t in ("0.01", "0.02", "0.05")]
    assert main([*args, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["threshold"] for row in rows] == [0.01, 0.02, 0.05] and all(row["status"] == "ok" for row in rows)
    with pytest.raises(SystemExit):
        main(["--thresholds", "0.1,x"])
