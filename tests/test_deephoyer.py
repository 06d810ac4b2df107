"""The trial pipeline on digits: real training, reproducibility, resume, divergence, sparsity."""

import json
import math
import subprocess
import sys

import pytest
import torch

from trainables import ConfigError, TrialConfig, run_trial
from trainables.contract import (
    EPOCH_METRICS,
    FLOPS_FRAC,
    NONZERO_FRAC,
    TEST_ACCURACY,
    VAL_ACCURACY,
    Status,
    TrialResult,
)

FAST = dict(epochs=3, finetune_epochs=2, batch_size=128)
FINAL = (VAL_ACCURACY, TEST_ACCURACY, NONZERO_FRAC, FLOPS_FRAC, "loss", "val_loss")


def test_reports_every_epoch_and_returns_final_metrics():
    reports = []
    result = run_trial(dict(FAST), report=lambda metrics, state: reports.append(metrics))
    assert [r["epoch"] for r in reports] == [1, 2, 3, 4, 5]
    assert [r["phase"] for r in reports] == ["train"] * 3 + ["finetune"] * 2
    for r in reports:
        assert set(EPOCH_METRICS) <= set(r)
    assert isinstance(result, TrialResult) and result.status is Status.OK and result.ok
    for key in FINAL + ("val_accuracy_before_prune", "val_accuracy_after_prune", "wall_time_s"):
        assert math.isfinite(result.metric(key)), key
    assert result.epochs == 5 and result.resumed_from_epoch is None and result.diverged_epoch is None
    assert result.history == reports
    assert 0 < result.nonzero_frac <= 1
    assert {layer["name"] for layer in result.layers} == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert result.nonzero == sum(layer["nonzero"] for layer in result.layers)
    assert result.num_weights == sum(layer["numel"] for layer in result.layers)


def test_same_config_and_seed_give_the_same_numbers():
    first, second = run_trial(dict(FAST, seed=3)), run_trial(dict(FAST, seed=3))
    for key in FINAL:
        assert first.metric(key) == second.metric(key), key
    assert first.nonzero == second.nonzero
    other = run_trial(dict(FAST, seed=4))
    assert (other.loss, other.nonzero) != (first.loss, first.nonzero)


class Interrupted(Exception):
    pass


def _without_times(history):
    return [{k: v for k, v in epoch.items() if k != "time_s"} for epoch in history]


@pytest.mark.parametrize(
    "pretrain_epochs, stop_after_epoch",
    [(0, 2), (0, 4), (1, 1), (1, 3)],  # inside regularized training, inside fine-tuning, after pretraining
)
def test_resume_from_checkpoint_matches_an_uninterrupted_run(tmp_path, pretrain_epochs, stop_after_epoch):
    config = dict(FAST, optimizer="sgd", lr=0.05, pretrain_epochs=pretrain_epochs)
    total = pretrain_epochs + 5
    reference = run_trial(config)
    checkpoint = tmp_path / "state.pt"

    def save_then_die(metrics, state):
        state.save(checkpoint)
        if metrics["epoch"] == stop_after_epoch:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_trial(config, report=save_then_die)
    epochs_after_resume = []
    resumed = run_trial(config, report=lambda m, s: epochs_after_resume.append(m["epoch"]), resume_from=checkpoint)
    assert epochs_after_resume == list(range(stop_after_epoch + 1, total + 1))
    assert resumed.epochs == total and resumed.resumed_from_epoch == stop_after_epoch
    for key in FINAL + ("val_accuracy_before_prune", "val_accuracy_after_prune"):
        assert resumed.metric(key) == reference.metric(key), key  # bit-identical, not merely close
    assert resumed.nonzero == reference.nonzero and resumed.layers == reference.layers
    assert _without_times(resumed.history) == _without_times(reference.history)


def test_phases_branch_from_a_checkpoint_taken_after_regularizing(tmp_path):
    """dense + regularize once, save at the branch point, then prune + finetune with other thresholds."""
    from trainables.pipeline import dense, finish, plan_phases, regularize, start_run

    config = TrialConfig.from_dict(dict(FAST, optimizer="sgd", lr=0.05, pretrain_epochs=1))
    assert [(p.name, p.offset, p.epochs) for p in plan_phases(config).values()] == [
        ("pretrain", 0, 1),
        ("train", 1, 3),
        ("finetune", 4, 2),
    ]
    run = start_run(config)
    assert not run.at_branch_point
    assert dense(run) and regularize(run) and run.at_branch_point
    state = run.state()
    assert (state.phase, state.phase_epoch, state.epoch) == ("train", 3, 4)
    state.save(tmp_path / "branch.pt")
    for threshold in (0.02, 0.05):
        branch = dict(FAST, optimizer="sgd", lr=0.05, pretrain_epochs=1, threshold=threshold)
        result = finish(start_run(branch, resume_from=tmp_path / "branch.pt"))
        reference = run_trial(branch)
        assert result.resumed_from_epoch == 4 and [e["epoch"] for e in result.history] == [1, 2, 3, 4, 5, 6]
        for key in FINAL + ("val_accuracy_after_prune",):
            assert result.metric(key) == reference.metric(key), (threshold, key)


def test_a_gradual_prune_tightens_over_its_ramp_to_the_thresholds_count_and_resumes_inside_it(tmp_path):
    """``prune_ramp_epochs`` R: the masks tighten at each of the first R fine-tune epochs and end with
    each layer's count from the threshold at the prune (the one-shot trial's), then hold; a run
    interrupted inside the ramp resumes to the same numbers."""
    config = dict(FAST, epochs=3, finetune_epochs=4, threshold=0.05, prune_ramp_epochs=3)
    one_shot = run_trial(dict(config, prune_ramp_epochs=0))
    gradual = run_trial(config)
    assert [layer["nonzero"] for layer in gradual.layers] == [layer["nonzero"] for layer in one_shot.layers]
    ramp = [epoch[NONZERO_FRAC] for epoch in gradual.history if epoch["phase"] == "finetune"]
    assert ramp[0] > ramp[1] > ramp[2] == ramp[3] == one_shot.nonzero_frac
    checkpoint = tmp_path / "state.pt"

    def save_then_die(metrics, state):
        state.save(checkpoint)
        if metrics["phase"] == "finetune" and metrics["phase_epoch"] == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_trial(config, report=save_then_die)
    resumed = run_trial(config, resume_from=checkpoint)
    for key in FINAL + ("val_accuracy_after_prune",):
        assert resumed.metric(key) == gradual.metric(key), key
    assert _without_times(resumed.history) == _without_times(gradual.history)
    with pytest.raises(ConfigError, match="prune_ramp_epochs must be ≤ finetune_epochs"):
        TrialConfig.from_dict(dict(config, prune_ramp_epochs=5))


def test_importing_the_package_config_and_contract_loads_no_torch():
    code = "import sys, trainables, trainables.config, trainables.contract; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


def test_diverging_run_stops_and_says_so():
    result = run_trial(dict(FAST, optimizer="sgd", lr=1e12, reg="l1", strength=1.0))
    assert result.status is Status.DIVERGED and not result.ok
    assert "non-finite" in result.message and result.diverged_epoch == 1
    assert math.isnan(result.val_accuracy) and result.epochs < 5
    assert result.objective_values([VAL_ACCURACY, NONZERO_FRAC]) is None


def test_hoyer_square_is_clearly_sparser_than_plain_pruning_at_the_same_threshold():
    common = dict(threshold=0.02, epochs=20, finetune_epochs=5, val_fraction=0.2)
    dense = run_trial(dict(common, reg="hs", strength=0.0))
    sparse = run_trial(dict(common, reg="hs", strength=3e-4))
    assert sparse.nonzero_frac < 0.5 * dense.nonzero_frac, (sparse.nonzero_frac, dense.nonzero_frac)
    assert sparse.val_accuracy > dense.val_accuracy - 0.04
    assert sparse.test_accuracy > dense.test_accuracy - 0.04
    assert sparse.test_accuracy > 0.9


@pytest.mark.parametrize("model", ["lenet5", "resnet20"])
def test_conv_models_with_group_hs_count_filters_and_channels(model):
    result = run_trial(
        dict(model=model, reg="group_hs", strength=1e-3, threshold=0.05, epochs=1, finetune_epochs=1, batch_size=256)
    )
    assert result.status is Status.OK
    convs = [layer for layer in result.layers if len(layer["shape"]) == 4]
    assert convs and all(layer["rows_total"] == layer["shape"][0] for layer in convs)
    assert 0 < result.flops_frac <= 1


def test_pretrain_cache_is_reused(tmp_path):
    config = dict(FAST, pretrain_epochs=2, pretrain_cache_dir=str(tmp_path))
    phases = []
    run_trial(config, report=lambda m, s: phases.append(m["phase"]))
    assert phases.count("pretrain") == 2 and len(list(tmp_path.glob("dense-*.pt"))) == 1
    phases.clear()
    run_trial(dict(config, strength=1e-3), report=lambda m, s: phases.append(m["phase"]))
    assert "pretrain" not in phases


def test_bad_settings_name_the_field():
    with pytest.raises(ConfigError, match="strength"):
        run_trial(dict(strength=-1.0))
    with pytest.raises(ConfigError, match="unknown trial setting.*lambda"):
        TrialConfig.from_dict({"lambda": 1.0})
    with pytest.raises(ConfigError, match="unknown model 'vgg'"):
        run_trial(dict(model="vgg", epochs=1))
    with pytest.raises(ConfigError, match="augment must be one of none, crop_flip, shift, got 'mirror'"):
        TrialConfig.from_dict({"augment": "mirror"})


def test_augmentation_choice_follows_config_then_data():
    from trainables.data import load_dataset, random_crop_flip, random_shift
    from trainables.pipeline import augmenter

    digits = load_dataset("digits")
    assert augmenter(TrialConfig(), digits) is None  # 8×8 grey digits: none unless asked
    assert augmenter(TrialConfig(augment="shift"), digits) is random_shift
    assert augmenter(TrialConfig(augment=True), digits) is random_crop_flip
    assert augmenter(TrialConfig(augment="none"), digits) is None
    shifted, plain = run_trial(dict(FAST, augment="shift")), run_trial(dict(FAST, augment="none"))
    assert shifted.status == plain.status == Status.OK
    assert shifted.history[0]["task_loss"] != plain.history[0]["task_loss"]  # the shifts reached training


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "trainables.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_json_prints_exactly_one_object():
    done = _cli("--epochs", "2", "--finetune-epochs", "1", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(FINAL) <= set(result) and isinstance(result["layers"], list) and result["status"] == "ok"
    assert TrialResult.from_dict(result).ok


@pytest.mark.parametrize(
    "args, field",
    [
        (["--strength", "-1"], "strength"),
        (["--model", "nope"], "unknown model"),
        (["--dataset", "mnist", "--data-dir", "/nonexistent"], "/nonexistent"),
    ],
)
def test_cli_bad_values_are_one_line_errors(args, field):
    done = _cli(*args, "--epochs", "1")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0], done.stderr


def test_runs_on_cuda_when_asked_and_available():
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            run_trial(dict(FAST, device="cuda"))
    else:
        assert run_trial(dict(FAST, device="cuda")).status is Status.OK
