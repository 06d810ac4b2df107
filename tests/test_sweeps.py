"""Sweeps on a real local Ray with real MLflow (sqlite) and Optuna (sqlite) storage."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import session_pids
from mlflow.tracking import MlflowClient

from sweeps.records import ResultsLedger
from sweeps.runner import fixed_settings, resume_checkpoints, run_sweep
from sweeps.searcher import config_key, own_trials
from sweeps.spec import load_spec, parse_spec
from trainables.config import TrialConfig
from trainables.contract import EPOCH_METRICS, Status


def children(sweep_dir: Path, parent_run_id: str):
    client = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(json.loads((sweep_dir / "state.json").read_text())["name"])
    return client, client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    )


def study_of(sweep_dir: Path) -> optuna.Study:
    state = json.loads((sweep_dir / "state.json").read_text())
    return optuna.load_study(study_name=state["study_name"], storage=f"sqlite:///{sweep_dir / 'optuna.db'}")


def test_digits_sweep_records_every_trial_once(digits_sweep, tmp_path):
    outcome = digits_sweep
    sweep_dir = outcome.sweep_dir
    assert (outcome.total, outcome.ok) == (6, 6)
    assert not outcome.front.empty

    state = json.loads((sweep_dir / "state.json").read_text())
    client, runs = children(sweep_dir, state["parent_run_id"])
    assert len(runs) == 6
    assert client.get_run(state["parent_run_id"]).info.status == "FINISHED"
    region = client.get_metric_history(state["parent_run_id"], "region_hypervolume")
    assert [m.step for m in region][:6] == [1, 2, 3, 4, 5, 6] and all(0 <= m.value <= 1 for m in region)
    assert [m.value for m in region][:6] == sorted(m.value for m in region[:6])  # a front only grows
    param_keys = {frozenset(run.data.params) for run in runs}
    assert param_keys == {frozenset([*TrialConfig.__dataclass_fields__, "trial_number"])}
    for run in runs:
        assert run.info.status == "FINISHED"
        assert {
            "final_val_accuracy",
            "final_test_accuracy",
            "final_nonzero_frac",
            "final_flops_frac",
            "final_loss",
        } <= set(run.data.metrics)
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in history] == [1, 2, 3]
        assert set(EPOCH_METRICS) - {"reg_loss"} <= set(run.data.metrics)
        assert run.data.tags["pareto"] in ("true", "false")
        layers = client.download_artifacts(run.info.run_id, "layers.csv", str(tmp_path / run.info.run_id))
        assert Path(layers).read_text().startswith("name,shape,numel,nonzero")
    pareto_runs = {int(run.data.tags["hoyersweep.trial_number"]) for run in runs if run.data.tags["pareto"] == "true"}
    assert pareto_runs == set(outcome.front["trial_number"])

    study = study_of(sweep_dir)
    assert [t.state for t in own_trials(study)] == [optuna.trial.TrialState.COMPLETE] * 6
    assert all("val_accuracy_min" in t.constraints for t in own_trials(study))
    assert study.metric_names == ["val_accuracy", "nonzero_frac"]
    ledger = ResultsLedger(sweep_dir / "results.jsonl")
    assert sorted(ledger.rows) == list(range(6))
    assert (sweep_dir / "pareto.csv").read_text().startswith("trial_number,")


def trained_configs(rows: dict[int, dict]) -> list[str]:
    """The parameter sets of a ledger's trials (one per trained trial)."""
    return [
        config_key({k.removeprefix("param."): v for k, v in row.items() if k.startswith("param.")})
        for row in rows.values()
    ]


def test_a_small_categorical_space_trains_each_configuration_once_failures_included(local_ray, tmp_path):
    """NSGA-II with a population of 2 proposes repeats: each of the 4 configurations trains once, then it ends."""
    spec = parse_spec(
        {
            "name": "flaky",
            "trial": {"epochs": 2, "finetune_epochs": 1, "optimizer": "sgd", "reg": "l1", "strength": 1.0},
            "search": {
                "batch_size": {"type": "categorical", "choices": [256, 0]},  # 0 makes the trial fail
                "lr": {"type": "categorical", "choices": [0.01, 1.0e12]},  # 1e12 makes it diverge
            },
            "sampler": {"type": "nsga2", "seed": 2, "population_size": 2},
            "budget": {"num_samples": 8, "max_concurrent_trials": 2},
            "max_failures": 0,
        },
        "flaky.yaml",
    )
    outcome = run_sweep(spec, storage=str(tmp_path), quiet=True)
    rows = ResultsLedger(outcome.sweep_dir / "results.jsonl").rows
    assert len(rows) == 4 and len(set(trained_configs(rows))) == 4
    assert "4 configurations" in outcome.exhausted
    assert sum(outcome.failures.values()) == 3 and any(k.startswith("failed: ConfigError") for k in outcome.failures)
    assert json.loads((outcome.sweep_dir / "state.json").read_text())["status"] == "finished"
    for row in rows.values():
        if row["param.batch_size"] == 0:  # a bad configuration: failed once, not retried, traceback kept
            assert row["status"] == Status.FAILED and "batch_size" in row["message"]
            log = (outcome.sweep_dir / "logs" / f"trial-{row['trial_number']:04d}.log").read_text()
            assert "Traceback" in log and "ConfigError" in log
        elif row["param.lr"] > 1:
            assert row["status"] == Status.DIVERGED
        else:
            assert row["status"] == Status.OK
    study = study_of(outcome.sweep_dir)
    failed = {t.number for t in own_trials(study) if t.state == optuna.trial.TrialState.FAIL}
    assert failed == {n for n, row in rows.items() if row["status"] != "ok"}
    state = json.loads((outcome.sweep_dir / "state.json").read_text())
    _, runs = children(outcome.sweep_dir, state["parent_run_id"])
    expected = sorted("FINISHED" if r["status"] == "ok" else "FAILED" for r in rows.values())
    assert sorted(run.info.status for run in runs) == expected


def _hoyersweep(*args: str) -> list[str]:
    return [sys.executable, "-m", "sweeps.cli", *args]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_an_interrupted_driver_resumes_losing_and_repeating_nothing(tmp_path, sig):
    """Ctrl-C (SIGINT) or SIGKILL of the driver alone, then ``resume`` from a relative path.

    SIGINT: the driver exits 130, says how to resume and leaves no MLflow run RUNNING.  SIGKILL:
    the local Ray it started outlives it until the resume, which stops exactly those processes.
    Either way nothing finished before the interruption runs again, no two trained trials share a
    parameter set, every trial has exactly one ledger row, Optuna result and MLflow run, and
    interrupted trials continue from their checkpoints.
    """
    num_samples = 8
    args = ["run", "sweeps/digits_quick.yaml", "--storage", str(tmp_path), "--num-samples", str(num_samples)]
    args += ["--num-cpus", "2", "--set", "trial.epochs=6", "--set", "trial.finetune_epochs=2"]
    args += ["--set", "checkpoint_interval_s=0.2"]
    root = Path(__file__).resolve().parents[1]
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen(
        _hoyersweep(*args), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root
    )
    sweep_dir = tmp_path / "digits_quick"
    results = sweep_dir / "results.jsonl"
    deadline = time.time() + 180
    try:
        while time.time() < deadline and driver.poll() is None:
            if results.exists() and len(results.read_text().splitlines()) >= 3:
                break
            time.sleep(0.2)
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()
        driver.send_signal(sig)  # SIGINT: what Ctrl-C delivers; SIGKILL: the driver alone, not its Ray
        driver.wait(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    output = (tmp_path / "driver.log").read_text()
    if sig == signal.SIGINT:
        assert driver.returncode == 130, output
        assert f"hoyersweep resume {sweep_dir}" in output and "Tuner.restore" not in output, output
        state = json.loads((sweep_dir / "state.json").read_text())
        _, runs = children(sweep_dir, state["parent_run_id"])
        assert runs and all(run.info.status != "RUNNING" for run in runs)
    else:
        assert session_pids(driver.pid), "the killed driver's local Ray should still be running"
    done_before = {
        int(json.loads(line)["trial_number"]) for line in results.read_text().splitlines() if line.strip().endswith("}")
    }
    assert 3 <= len(done_before) < num_samples
    # Interrupted = still RUNNING in the study (a trial told to Optuna whose ledger line the kill cut
    # is repaired on resume, not re-run).
    running_at_stop = {t.number for t in own_trials(study_of(sweep_dir)) if not t.state.is_finished()}
    interrupted_with_checkpoint = set(resume_checkpoints(sweep_dir)) & running_at_stop

    resumed = subprocess.run(  # a relative path, as the README shows: checkpoints must still be found
        _hoyersweep("resume", "digits_quick", "--num-cpus", "2"),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert not session_pids(driver.pid), "processes of the killed run are left"

    study = study_of(sweep_dir)
    trials = own_trials(study)
    assert len(trials) == num_samples and all(t.state.is_finished() for t in trials)
    assert len({config_key(t.params) for t in trials}) == num_samples
    rows = ResultsLedger(results).rows
    assert sorted(rows) == sorted(t.number for t in trials)
    assert len(set(trained_configs(rows))) == num_samples  # no configuration trained twice
    state = json.loads((sweep_dir / "state.json").read_text())
    assert state["status"] == "finished"
    _, runs = children(sweep_dir, state["parent_run_id"])
    numbers = [int(run.data.tags["hoyersweep.trial_number"]) for run in runs]
    assert sorted(numbers) == sorted(rows)  # exactly one MLflow run per trial
    assert all(run.info.status != "RUNNING" for run in runs)
    # No trial finished before the interruption ran again: every one was recorded by the first driver run.
    assert {n for n, row in rows.items() if row["driver_run"] == 1} == done_before
    assert {n for n, row in rows.items() if row["driver_run"] == 2} == set(rows) - done_before
    # An interrupted trial with a checkpoint continued from it instead of starting over.
    for number in interrupted_with_checkpoint:
        assert rows[number]["resumed_from_epoch"] >= 1, (number, rows[number])
    assert all(rows[n]["resumed_from_epoch"] is None for n in done_before)


def test_a_second_sweep_of_the_same_problem_warm_starts_from_the_first(digits_sweep, capsys):
    spec, _ = load_spec(
        "sweeps/digits_quick.yaml",
        {"budget.num_samples": 2, "trial.epochs": 2, "trial.finetune_epochs": 1, "trial.batch_size": 256},
    )
    second = run_sweep(spec, storage=str(digits_sweep.sweep_dir.parent), quiet=True)
    assert second.sweep_dir.name == "digits_quick-2" and second.total == 2
    study = study_of(second.sweep_dir)
    warm = [t for t in study.trials if t.user_attrs.get("warm_start_from") == "digits_quick"]
    assert len(warm) == 6 and len(own_trials(study)) == 2
    first = own_trials(study_of(digits_sweep.sweep_dir))
    assert sorted(tuple(t.values) for t in warm) == sorted(tuple(t.values) for t in first)
    # Nothing the first sweep finished is proposed again.
    assert not {config_key(t.params) for t in own_trials(study)} & {config_key(t.params) for t in first}
    # Warm-start copies inform the sampler but are not this sweep's trials: no runs, no ledger lines.
    _, runs = children(second.sweep_dir, json.loads((second.sweep_dir / "state.json").read_text())["parent_run_id"])
    assert len(runs) == 2 and len(ResultsLedger(second.sweep_dir / "results.jsonl").rows) == 2


def test_sweeps_in_one_storage_share_the_pretrain_cache(tmp_path):
    spec, _ = load_spec("sweeps/digits_quick.yaml", {"trial.pretrain_epochs": 2})
    caches = {fixed_settings(spec, tmp_path / name)["pretrain_cache_dir"] for name in ("hs-sweep", "l1-sweep")}
    assert caches == {str((tmp_path / "pretrain_cache").resolve())}
    no_pretraining, _ = load_spec("sweeps/digits_quick.yaml")
    assert "pretrain_cache_dir" not in fixed_settings(no_pretraining, tmp_path / "x")


def test_one_ray_trial_can_train_several_members_each_recorded_as_its_own_trial(local_ray, tmp_path):
    spec, _ = load_spec(
        "sweeps/digits_quick.yaml",
        {
            "budget.num_samples": 5,
            "budget.cohort_size": 2,
            "trial.epochs": 2,
            "trial.finetune_epochs": 1,
            "trial.batch_size": 256,
        },
    )
    outcome = run_sweep(spec, storage=str(tmp_path), quiet=True)
    sweep_dir = outcome.sweep_dir
    rows = ResultsLedger(sweep_dir / "results.jsonl").rows
    assert outcome.total == 5 and len(set(trained_configs(rows))) == 5
    sizes: dict[str, list[int]] = {}
    for row in rows.values():
        sizes.setdefault(row["ray_trial_id"], []).append(row["cohort_size"])
    assert sorted(sizes.values()) == [[1], [2, 2], [2, 2]]  # cohorts of 2 + 2 + the 1 still owed
    study = study_of(sweep_dir)
    assert sorted(t.number for t in own_trials(study)) == sorted(rows)
    _, runs = children(sweep_dir, json.loads((sweep_dir / "state.json").read_text())["parent_run_id"])
    assert sorted(int(run.data.tags["hoyersweep.trial_number"]) for run in runs) == sorted(rows)
    for run in runs:  # each member's own curves, not its Ray trial-mate's
        history = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}").get_metric_history(
            run.info.run_id, "val_accuracy"
        )
        assert [m.step for m in history] == [1, 2, 3]


def test_reading_a_stored_sweep_imports_neither_torch_nor_ray(digits_sweep, tmp_path):
    code = (
        "import sys\n"
        "from sweeps.cli import main\n"
        f"main(['pareto', {str(digits_sweep.sweep_dir)!r}, '--format', 'json'])\n"
        f"main(['report', {str(digits_sweep.sweep_dir)!r}, '-o', {str(tmp_path / 'r.html')!r}])\n"
        "loaded = [m for m in ('torch', 'ray', 'optuna') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "r.html").exists()


def test_front_models_are_logged_and_the_knee_is_registered(digits_sweep):
    import mlflow.pytorch
    import torch

    from trainables.contract import tracking_uri_of

    sweep_dir = digits_sweep.sweep_dir
    uri = tracking_uri_of(sweep_dir)
    client = MlflowClient(uri)
    state = json.loads((sweep_dir / "state.json").read_text())
    rows = ResultsLedger(sweep_dir / "results.jsonl").rows
    front = set(digits_sweep.front["trial_number"])
    _, runs = children(sweep_dir, state["parent_run_id"])
    mlflow.set_tracking_uri(uri)
    try:
        for run in runs:
            number = int(run.data.tags["hoyersweep.trial_number"])
            has_model = any(f.path == "model" for f in client.list_artifacts(run.info.run_id))
            assert has_model == (number in front), number  # models: front — only the front's, once it is final
            assert (sweep_dir / "models" / f"trial-{number:04d}.pt").exists()  # every ok trial's kept on disk
            if not has_model:
                continue
            model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
            weights = [p for name, p in model.state_dict().items() if name.endswith("weight") and p.dim() > 1]
            nonzero = sum(int(torch.count_nonzero(p)) for p in weights) / sum(p.numel() for p in weights)
            assert nonzero == pytest.approx(rows[number]["nonzero_frac"], abs=1e-9)
            assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
            study = study_of(sweep_dir)
            assert study.trials[number].user_attrs["mlflow_run_id"] == run.info.run_id
        contexts = {i.tags[0].value: json.loads(i.dataset.profile)["num_rows"] for i in run.inputs.dataset_inputs}
        assert set(contexts) == {"train", "validation", "test"} and min(contexts.values()) > 0
        assert run.data.tags["hoyersweep.device"] == "cpu" and run.data.metrics["epoch_time_s"] > 0
        parent_files = {f.path for f in client.list_artifacts(state["parent_run_id"])}
        assert {"report.html", "pareto.csv", "spec.yaml"} <= parent_files
        knee = mlflow.pytorch.load_model(f"models:/{state['name']}@knee")
        assert knee(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    finally:
        mlflow.set_tracking_uri(None)


def test_export_of_a_sweeps_knee_and_one_line_errors(digits_sweep, tmp_path, capsys):
    import torch

    from sweeps.cli import main

    sweep_dir = str(digits_sweep.sweep_dir)
    out = tmp_path / "knee.pt2"
    assert main(["export", sweep_dir, "--knee", "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["check"]["same_predictions"] == 1.0 and report["check"]["max_abs_logit_diff"] < 1e-4
    assert report["trial"] in set(digits_sweep.front["trial_number"])
    loaded = torch.export.load(str(out)).module()
    assert loaded(torch.zeros(5, 1, 8, 8)).shape == (5, 10)  # a dynamic batch
    for argv, must in (
        (["--trial", "999"], "--trial 999: no such trial"),
        (["--min-accuracy", "1.01"], "no ok trial reaches"),
    ):
        with pytest.raises(SystemExit) as raised:
            main(["export", sweep_dir, *argv, "-o", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert raised.value.code == 2 and must in err and len(err.strip().splitlines()) == 1, err
    copy = tmp_path / "copy"  # a sweep whose models are gone
    shutil.copytree(sweep_dir, copy, ignore=shutil.ignore_patterns("models", "ray"))
    for argv, must in ((["--knee"], "is missing"),):
        with pytest.raises(SystemExit) as raised:
            main(["export", str(copy), *argv, "-o", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert raised.value.code == 2 and must in err and len(err.strip().splitlines()) == 1, err
