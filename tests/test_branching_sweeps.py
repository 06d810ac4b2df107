"""Threshold branching in real sweeps: every branch is its own trial; an interrupted run keeps its shared phase."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from conftest import resume_in_subprocess
from mlflow.tracking import MlflowClient

from sweeps.records import ResultsLedger
from sweeps.runner import run_sweep
from sweeps.searcher import config_key, own_trials
from sweeps.spec import load_spec
from trainables.branching import threshold_grid
from trainables.config import split_branch_settings
from trainables.contract import SHARED_RUN_TAG, tracking_uri_of

ROOT = Path(__file__).resolve().parents[1]
NONZERO_CAP = 0.3  # the worst end of the region's nonzero axis
# Thresholds around the cap: at 3 epochs most of digits_quick's range past 0.07 cuts a layer off (no branch
# there), and a run with too few connected points within the cap would rightly branch beyond it.
NEAR_CAP = {"search.threshold": {"type": "float", "low": 0.02, "high": 0.08, "log": True}}
SMALL = {"trial.epochs": 3, "trial.finetune_epochs": 1, "trial.batch_size": 256, "budget.thresholds_per_run": 4}


def study_of(sweep_dir: Path) -> optuna.Study:
    state = json.loads((sweep_dir / "state.json").read_text())
    return optuna.load_study(study_name=state["study_name"], storage=f"sqlite:///{sweep_dir / 'optuna.db'}")


def configs(rows: dict[int, dict]) -> list[str]:
    return [config_key({k[6:]: v for k, v in row.items() if k.startswith("param.")}) for row in rows.values()]


@pytest.mark.parametrize("mode", ["proxy", "optuna"])
def test_every_branch_is_a_trial_of_its_own(local_ray, tmp_path, mode):
    region = {"hypervolume.nonzero_frac": {"worst": NONZERO_CAP, "best": 1e-3, "log": True}}
    overrides = {**SMALL, **region, **NEAR_CAP, "budget.num_samples": 8, "budget.branch_mode": mode}
    spec, _ = load_spec("sweeps/digits_quick.yaml", overrides)
    outcome = run_sweep(spec, storage=str(tmp_path), quiet=True)
    sweep_dir = outcome.sweep_dir
    rows = ResultsLedger(sweep_dir / "results.jsonl").rows
    assert outcome.total == 8 and len(set(configs(rows))) == 8
    if mode == "proxy":  # the branches a run chose itself keep within the region (their sparsity is exact)
        chosen = [row for number, row in rows.items() if row["shared_run"] != number]
        assert len(chosen) == 6 and all(row["nonzero_frac"] <= NONZERO_CAP for row in chosen), chosen
    runs_of = {}
    for row in rows.values():
        shared, _ = split_branch_settings({k[6:]: v for k, v in row.items() if k.startswith("param.")})
        runs_of.setdefault(row["ray_trial_id"], set()).add(config_key(shared))
    assert len(runs_of) == 2 and all(len(keys) == 1 for keys in runs_of.values())  # 2 regularized runs × 4 branches
    study = study_of(sweep_dir)
    assert sorted(t.number for t in own_trials(study, [optuna.trial.TrialState.COMPLETE])) == sorted(rows)
    client = MlflowClient(tracking_uri_of(sweep_dir))
    experiment = client.get_experiment_by_name(json.loads((sweep_dir / "state.json").read_text())["name"])
    children = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert sorted(int(r.data.tags["hoyersweep.trial_number"]) for r in children) == sorted(rows)
    for run in children:  # each branch: the shared phase's curves and its own fine-tuning, and whose run it shares
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy"))
        assert steps == [1, 2, 3, 4] and run.info.status == "FINISHED"
        assert run.data.tags[SHARED_RUN_TAG] in {str(n) for n in rows}
    assert not list((sweep_dir / "branch_points").glob("*.pt"))  # removed once every branch finished
    result_files = list((sweep_dir / "ray" / "run-1").glob("*/result.json"))
    assert len(result_files) == 2
    for result_file in result_files:  # each branch's final report as soon as it finished, before the next branch
        reports = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        order = [(r["branch_index"], bool(r.get("final"))) for r in reports if r.get("branch_index") is not None]
        assert order == [(index, final) for index in range(4) for final in (False, True)], result_file


def test_an_interrupted_branching_sweep_resumes_without_retraining_a_shared_phase(tmp_path):
    args = ["run", "sweeps/digits_quick.yaml", "--storage", str(tmp_path), "--num-samples", "8", "--num-cpus", "2"]
    args += ["--set", "trial.epochs=8", "--set", "trial.finetune_epochs=4", "--set", "trial.batch_size=128"]
    args += ["--set", "budget.thresholds_per_run=4", "--set", "checkpoint_interval_s=0.2"]
    driver = subprocess.Popen(
        [sys.executable, "-m", "sweeps.cli", *args],
        cwd=ROOT,
        start_new_session=True,
        stdout=open(tmp_path / "driver.log", "w"),
        stderr=subprocess.STDOUT,
    )
    sweep_dir = tmp_path / "digits_quick"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and driver.poll() is None:
            if (sweep_dir / "results.jsonl").exists() and (sweep_dir / "results.jsonl").read_text().strip():
                break  # a branch finished: its run's shared phase is done, its other branches are not all
            time.sleep(0.1)
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()
        driver.send_signal(signal.SIGINT)
        driver.wait(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    before = ResultsLedger(sweep_dir / "results.jsonl").rows
    points = list((sweep_dir / "branch_points").glob("*.pt"))
    assert points, "the interrupted run's branch point is kept for the resume"

    resumed = resume_in_subprocess(sweep_dir)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    rows = ResultsLedger(sweep_dir / "results.jsonl").rows
    assert len(rows) == 8 and len(set(configs(rows))) == 8  # nothing lost, no branch trained twice
    assert {n: r["driver_run"] for n, r in rows.items() if n in before} == {n: 1 for n in before}
    shared_done = {
        config_key(split_branch_settings({k[6:]: v for k, v in r.items() if k.startswith("param.")})[0])
        for r in before.values()
    }
    # The resumed Ray trials of a run whose shared phase was done report no regularized epoch again.
    for result_file in (sweep_dir / "ray" / "run-2").glob("*/result.json"):
        members = json.loads(result_file.with_name("params.json").read_text())["members"]
        shared = config_key(split_branch_settings(members[0]["params"])[0])
        reports = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        if shared in shared_done:
            assert not [r for r in reports if r.get("phase") == "train"], result_file
    assert not list((sweep_dir / "branch_points").glob("*.pt"))


def test_runs_with_one_shared_phase_train_it_once(local_ray, tmp_path):
    """λ = 0 with only the threshold searched: every run trains the same model.  One trains it; the
    other, waiting for it when both start at once, adopts its branch point and trains no epoch of its
    own before the prune.  The point is kept for later runs until the sweep completes, then removed."""
    search = {"threshold": {"type": "float", "low": 1e-3, "high": 0.2, "log": True}}
    overrides = {**SMALL, "trial.reg": "none", "trial.strength": 0.0, "search": search, "budget.num_samples": 8}
    spec, _ = load_spec("sweeps/digits_quick.yaml", overrides)
    outcome = run_sweep(spec, storage=str(tmp_path), quiet=True)
    sweep_dir = outcome.sweep_dir
    rows = ResultsLedger(sweep_dir / "results.jsonl").rows
    assert outcome.ok == 8 and len({row["param.threshold"] for row in rows.values()}) == 8
    resumed_at: dict[int, set] = {}
    for row in rows.values():
        resumed_at.setdefault(row["shared_run"], set()).add(row["resumed_from_epoch"])
    # one run trained the shared phase; the other started at its branch point (epoch 3)
    assert sorted(resumed_at.values(), key=str) == [{3}, {None}], resumed_at
    trained = []
    for result_file in (sweep_dir / "ray" / "run-1").glob("*/result.json"):
        reports = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        trained.append(sum(r.get("phase") == "train" for r in reports))
    assert sorted(trained) == [0, 3], trained
    assert not list((sweep_dir / "branch_points").iterdir())  # kept for later runs, removed at completion


def test_a_sweeps_wanted_sparsities_reach_the_proxy(tmp_path):
    """``budget.branch_under`` goes from the spec to every run's choice of thresholds."""
    from sweeps.plan import branch_settings
    from trainables.branching import ProxyPoint

    region = {"hypervolume.nonzero_frac": {"worst": 0.1, "best": 1e-3}}
    spec, _ = load_spec("sweeps/digits_quick.yaml", {**SMALL, **region, "budget.branch_under": [0.05]})
    settings = branch_settings(spec, tmp_path)
    assert settings is not None and settings.under == (0.05,) and settings.caps == {"nonzero_frac": 0.1}
    # cohorts (Ray's and the ask/tell driver's) refine toward the same fractions as a run on its own
    options = settings.cohort_options({3: (2, 0), 7: (0, 0)}, print)
    assert options["refine_under"] == [0.05, 0.1] and options["grid"] == settings.grid
    assert options["choose"] is print and options["chosen_per_member"] == 2
    assert settings.cohort_options({3: (0, 0)}, print)["choose"] is None  # no run chooses: no proxy pass
    rows = [(0.01, 0.98, 0.5), (0.03, 0.96, 0.1), (0.04, 0.95, 0.05), (0.06, 0.9, 0.01), (0.08, 0.6, 0.001)]
    points = [ProxyPoint(t, acc, nz, nz) for t, acc, nz in rows]
    assert settings.more_thresholds(points, 0.035, 2) == [0.04, 0.08]  # without branch_under: [0.06, 0.08]
    # a real run's proxy: the grid, then a refined point right under 5 % (if no grid point keeps 5 %
    # exactly) and under the cap, 10 %
    from trainables.pipeline import dense, regularize, start_run

    run = start_run(spec.trial_config({"strength": 3e-4, "threshold": 0.05, "reg": "hs"}))
    assert dense(run) and regularize(run)
    settings = replace(settings, grid=tuple(threshold_grid(0.02, 0.3, 4)))
    proxy = settings.proxy_points(run, "abs")
    grid_points, refined = proxy[:4], proxy[4:]
    for fraction in (0.05, 0.1):
        below = [p.nonzero_frac for p in grid_points if p.nonzero_frac <= fraction]
        above = [p for p in grid_points if p.nonzero_frac > fraction]
        if below and above and fraction not in below:
            assert any(max(below) < p.nonzero_frac <= fraction for p in refined), (fraction, proxy)
