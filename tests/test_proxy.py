"""The prune-now proxy: each regularized epoch reports what the trial would be if pruned right then."""

import math

import pytest

from trainables import pipeline
from trainables.branching import SHARED, prune_now_proxy, run_branches
from trainables.config import TrialConfig
from trainables.contract import (
    FLOPS_FRAC,
    METRICS,
    NONZERO_FRAC,
    PROXY_FLOPS_FRAC,
    PROXY_METRICS,
    PROXY_NONZERO_FRAC,
    PROXY_VAL_ACCURACY,
    VAL_ACCURACY,
    direction,
)
from trainables.pipeline import TRAIN, dense, regularize, run_trial, start_run

FAST = dict(epochs=3, finetune_epochs=2, batch_size=256, strength=3e-4)
PROXIES = tuple(PROXY_METRICS)


def without(history, keys):
    return [{k: v for k, v in epoch.items() if k not in keys} for epoch in history]


def comparable(result):
    body = result.to_dict()
    for key in ("wall_time_s", "epoch_time_s", "peak_memory_mb"):
        body.pop(key)
    body["history"] = without(body["history"], ("time_s",))
    return body


@pytest.fixture(scope="module")
def traced():
    reports = []
    result = run_trial(dict(FAST, pretrain_epochs=1), report=lambda metrics, state: reports.append(metrics))
    return result, reports


def test_contract_names_each_proxy_and_the_final_metric_it_stands_for():
    assert PROXY_METRICS == {
        PROXY_VAL_ACCURACY: VAL_ACCURACY,
        PROXY_NONZERO_FRAC: NONZERO_FRAC,
        PROXY_FLOPS_FRAC: FLOPS_FRAC,
    }
    assert PROXIES == ("proxy_val_accuracy", "proxy_nonzero_frac", "proxy_flops_frac")
    assert [direction(final) for final in PROXY_METRICS.values()] == ["max", "min", "min"]
    assert not set(PROXIES) & set(METRICS)  # per-epoch reports, not final metrics


def test_proxies_are_reported_in_every_regularized_epoch_and_only_there(traced):
    result, reports = traced
    assert [r["phase"] for r in reports] == ["pretrain"] + ["train"] * 3 + ["finetune"] * 2
    for report in reports:
        if report["phase"] == TRAIN:
            assert all(math.isfinite(report[key]) for key in PROXIES), report
            assert 0.0 <= report[PROXY_VAL_ACCURACY] <= 1.0 and 0.0 < report[PROXY_NONZERO_FRAC] <= 1.0
            # before the prune the sparsity reported is already the prune-now projection
            assert report[PROXY_NONZERO_FRAC] == report[NONZERO_FRAC]
            assert report[PROXY_FLOPS_FRAC] == report[FLOPS_FRAC]
        else:
            assert not set(PROXIES) & set(report), report
    assert result.history == reports  # the stored curves carry them too


def test_the_last_regularized_epoch_proxy_is_the_prune_that_follows(traced):
    result, reports = traced
    last = [r for r in reports if r["phase"] == TRAIN][-1]
    assert last[PROXY_VAL_ACCURACY] == result.val_accuracy_after_prune
    assert last[VAL_ACCURACY] == result.val_accuracy_before_prune  # val_accuracy stays the unpruned model's
    assert last[PROXY_NONZERO_FRAC] == result.nonzero_frac  # fine-tuning holds the mask
    assert last[PROXY_FLOPS_FRAC] == result.flops_frac


@pytest.mark.parametrize("threshold, mode", [(0.03, "abs"), (0.8, "std")])
def test_a_proxy_equals_pruning_and_evaluating_the_model_at_that_epoch(threshold, mode):
    run = start_run(TrialConfig(**dict(FAST, epochs=2, threshold=threshold, threshold_mode=mode)))
    assert dense(run) and regularize(run)
    report = run.history[-1]
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    (point,) = prune_now_proxy(run, [threshold], mode)
    assert (report[PROXY_VAL_ACCURACY], report[PROXY_NONZERO_FRAC], report[PROXY_FLOPS_FRAC]) == (
        point.val_accuracy,
        point.nonzero_frac,
        point.flops_frac,
    )
    assert all((before[k] == v).all() for k, v in run.model.state_dict().items())  # the run is untouched
    run.set_masks(run.projected_masks())  # now prune the run itself
    sparsity = run.sparsity()
    assert report[PROXY_VAL_ACCURACY] == run.validate()[0]
    assert (report[PROXY_NONZERO_FRAC], report[PROXY_FLOPS_FRAC]) == (sparsity.nonzero_frac, sparsity.flops_frac)
    with pytest.raises(ValueError, match="unpruned"):
        run.pruned_accuracies([run.projected_masks()])


def _measure_without_proxy(run, phase, phase_epoch, lr, losses):
    """``measure_epoch`` as it was before the proxy."""
    val_accuracy, val_loss = run.validate()
    sparsity = run.sparsity()
    return {
        "phase": phase.name,
        "epoch": phase.epoch(phase_epoch),
        "phase_epoch": phase_epoch,
        "lr": lr,
        **losses,
        VAL_ACCURACY: val_accuracy,
        "val_loss": val_loss,
        NONZERO_FRAC: sparsity.nonzero_frac,
        FLOPS_FRAC: sparsity.flops_frac,
        "time_s": run.elapsed(),
    }


def test_measuring_the_proxy_changes_nothing_else(monkeypatch, traced):
    with_proxy, _ = traced
    monkeypatch.setattr(pipeline, "measure_epoch", _measure_without_proxy)
    reference = run_trial(dict(FAST, pretrain_epochs=1))
    assert PROXY_VAL_ACCURACY not in reference.history[1]
    body, expected = comparable(with_proxy), comparable(reference)
    body["history"] = without(body["history"], PROXIES)
    assert body == expected  # every final metric, layer and curve bit for bit


def test_a_shared_phase_reports_the_proxy_at_the_runs_own_threshold_and_each_branch_keeps_its_own():
    reports = []
    branches = [dict(threshold=0.02), dict(threshold=0.06)]
    results = run_branches(FAST, branches, report=lambda m, s: reports.append(m))
    shared = [r for r in reports if r["branch"] == SHARED]
    own = run_trial(dict(FAST, threshold=0.02))
    assert [r[PROXY_VAL_ACCURACY] for r in shared] == [e[PROXY_VAL_ACCURACY] for e in own.history[:3]]
    for branch, result in zip(branches, results):
        reference = run_trial(dict(FAST, **branch))
        assert [e[PROXY_VAL_ACCURACY] for e in result.history[:3]] == [
            e[PROXY_VAL_ACCURACY] for e in reference.history[:3]
        ]
    assert results[0].history[2][PROXY_VAL_ACCURACY] != results[1].history[2][PROXY_VAL_ACCURACY]
