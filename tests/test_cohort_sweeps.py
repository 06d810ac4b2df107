"""Fused cohorts in real sweeps (``budget.cohort_size``): every member is a trial of its own, resumes lose
nothing, MO-ASHA ranks members out through the rung channel, and ``train --strengths`` trains one cohort."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import (
    IDLE_MEMBERS_MOASHA_SPEC,
    SEEDED_RUNG,
    check_idle_members_pruned,
    resume_in_subprocess,
    session_pids,
)
from mlflow.tracking import MlflowClient

from sweeps.cli import main
from sweeps.records import ResultsLedger
from sweeps.runner import execute_sweep, prepare_sweep, resume_checkpoints, run_sweep
from sweeps.searcher import config_key, own_trials
from sweeps.spec import load_spec, parse_spec
from trainables.contract import SCHEDULER_FILE, Status, tracking_uri_of

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"trial.epochs": 2, "trial.finetune_epochs": 1, "trial.batch_size": 256}


def study_of(sweep_dir: Path) -> optuna.Study:
    state = json.loads((sweep_dir / "state.json").read_text())
    return optuna.load_study(study_name=state["study_name"], storage=f"sqlite:///{sweep_dir / 'optuna.db'}")


def child_runs(sweep_dir: Path) -> tuple[MlflowClient, list]:
    client = MlflowClient(tracking_uri_of(sweep_dir))
    experiment = client.get_experiment_by_name(json.loads((sweep_dir / "state.json").read_text())["name"])
    runs = client.search_runs([experiment.experiment_id])
    return client, [run for run in runs if "mlflow.parentRunId" in run.data.tags]


def params_of(row: dict) -> dict:
    return {k.removeprefix("param."): v for k, v in row.items() if k.startswith("param.")}


@pytest.mark.parametrize("mode", ["proxy", "optuna"])
def test_a_branching_cohort_sweep_branches_every_run_of_the_stack(local_ray, tmp_path, mode):
    """cohort_size 2 × thresholds_per_run 3: a Ray trial trains 2 regularized runs as one stack and each
    branches into 3 trials (proxy: 2 chosen by the run at its branch point) — 12 trials, each recorded
    once, no configuration twice, every run's branches sharing its strength."""
    budget = {"budget.num_samples": 12, "budget.cohort_size": 2, "budget.thresholds_per_run": 3}
    spec, _ = load_spec("sweeps/digits_quick.yaml", {**SMALL, **budget, "budget.branch_mode": mode})
    outcome = run_sweep(spec, storage=str(tmp_path), quiet=True)
    sweep_dir = outcome.sweep_dir
    rows = ResultsLedger(sweep_dir / "results.jsonl").rows
    assert (outcome.total, outcome.ok) == (12, 12)
    assert len({config_key(params_of(row)) for row in rows.values()}) == 12
    runs: dict[int, list[dict]] = {}
    for row in rows.values():
        runs.setdefault(row["shared_run"], []).append(row)
        assert row["cohort_size"] == 2 and row["epochs"] == 3 and Path(row["model_file"]).exists()
    assert sorted(len(branches) for branches in runs.values()) == [3, 3, 3, 3]
    for branches in runs.values():
        assert len({(b["param.strength"], b["param.reg"]) for b in branches}) == 1  # one regularized run
        assert len({b["param.threshold"] for b in branches}) == 3
    assert len({row["ray_trial_id"] for row in rows.values()}) == 2  # two runs per Ray trial
    trials = own_trials(study_of(sweep_dir))
    assert sorted(t.number for t in trials) == sorted(rows)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    _, mlflow_runs = child_runs(sweep_dir)
    assert len(mlflow_runs) == 12 and all(r.info.status == "FINISHED" for r in mlflow_runs)


def test_a_cohort_sweep_records_every_member_as_its_own_trial(local_ray, tmp_path):
    spec, _ = load_spec("sweeps/digits_quick.yaml", {**SMALL, "budget.num_samples": 8, "budget.cohort_size": 4})
    outcome = run_sweep(spec, storage=str(tmp_path), quiet=True)
    sweep_dir = outcome.sweep_dir
    rows = ResultsLedger(sweep_dir / "results.jsonl").rows
    assert (outcome.total, outcome.ok) == (8, 8)
    assert len(rows) == 8 and len({config_key(params_of(row)) for row in rows.values()}) == 8  # no repeats
    cohorts: dict[str, list[int]] = {}
    for row in rows.values():
        cohorts.setdefault(row["ray_trial_id"], []).append(row["cohort_index"])
        assert row["cohort_size"] == 4 and row["epochs"] == 3
        assert Path(row["model_file"]).exists()
    assert sorted(sorted(indices) for indices in cohorts.values()) == [[0, 1, 2, 3]] * 2  # 2 Ray trials × 4
    trials = own_trials(study_of(sweep_dir))
    assert sorted(t.number for t in trials) == sorted(rows)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    client, runs = child_runs(sweep_dir)
    assert sorted(int(r.data.tags["hoyersweep.trial_number"]) for r in runs) == sorted(rows)  # one run each
    for run in runs:  # each member's own curves and tags
        assert run.info.status == "FINISHED" and run.data.tags["hoyersweep.cohort_size"] == "4"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2, 3]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["sigkill", "sigint"])
def test_a_killed_cohort_sweep_resumes_losing_and_repeating_nothing(tmp_path, sig):
    """SIGKILL (or Ctrl-C's SIGINT) of the driver while cohorts train, then ``resume``: every trial has
    exactly one ledger row, Optuna result and MLflow run; nothing finished before the kill runs again;
    interrupted members continue from their cohort's checkpoint.  After SIGINT the driver exits 130
    and leaves no MLflow run RUNNING."""
    num_samples = 12  # 3 cohorts of 4, 2 at a time
    args = ["run", "sweeps/digits_quick.yaml", "--storage", str(tmp_path), "--num-samples", str(num_samples)]
    args += ["--num-cpus", "2", "--set", "budget.cohort_size=4", "--set", "trial.epochs=6"]
    args += ["--set", "trial.finetune_epochs=2", "--set", "checkpoint_interval_s=0.2"]
    driver = subprocess.Popen(
        [sys.executable, "-m", "sweeps.cli", *args],
        stdout=open(tmp_path / "driver.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=ROOT,
    )
    sweep_dir = tmp_path / "digits_quick"
    results = sweep_dir / "results.jsonl"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and driver.poll() is None:
            if results.exists() and results.read_text().strip():
                break  # a cohort is reporting its results: the others are training
            time.sleep(0.05)
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()
        driver.send_signal(sig)
        driver.wait(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    if sig == signal.SIGINT:
        assert driver.returncode == 130, (tmp_path / "driver.log").read_text()
        _, runs = child_runs(sweep_dir)
        assert runs and all(run.info.status != "RUNNING" for run in runs)
    done_before = set(ResultsLedger(results).rows)
    assert 1 <= len(done_before) < num_samples
    running_at_kill = {t.number for t in own_trials(study_of(sweep_dir)) if not t.state.is_finished()}
    interrupted_with_checkpoint = set(resume_checkpoints(sweep_dir)) & running_at_kill
    assert interrupted_with_checkpoint, "no interrupted cohort had a checkpoint to continue from"

    resumed = resume_in_subprocess(sweep_dir)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert not session_pids(driver.pid), "processes of the killed run are left"

    trials = own_trials(study_of(sweep_dir))
    assert len(trials) == num_samples and all(t.state.is_finished() for t in trials)
    assert len({config_key(t.params) for t in trials}) == num_samples
    rows = ResultsLedger(results).rows
    assert sorted(rows) == sorted(t.number for t in trials)
    assert len({config_key(params_of(row)) for row in rows.values()}) == num_samples
    # Repaired rows too (told to Optuna before the kill, ledger line cut) say which cohort they trained in.
    assert all(row["status"] == Status.OK and row["cohort_size"] == 4 for row in rows.values()), rows
    _, runs = child_runs(sweep_dir)
    assert sorted(int(r.data.tags["hoyersweep.trial_number"]) for r in runs) == sorted(rows)
    assert all(run.info.status == "FINISHED" for run in runs)
    assert {n for n, row in rows.items() if row["driver_run"] == 1} == done_before
    for number in interrupted_with_checkpoint:
        assert rows[number]["resumed_from_epoch"] >= 1, (number, rows[number])


def spec_file(tmp_path: Path, **budget) -> str:
    """digits_quick with ``budget`` changed and batch_size left free (to search)."""
    spec = yaml.safe_load((ROOT / "sweeps" / "digits_quick.yaml").read_text())
    spec["budget"] |= budget
    del spec["trial"]["batch_size"]
    path = tmp_path / "cohort.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


@pytest.mark.parametrize(
    "flags, musts",
    [
        (
            ["--set", "search.batch_size={type: categorical, choices: [64, 128]}"],
            ["budget.cohort_size: the members of a cohort may differ only in reg, strength,", "search.batch_size"],
        ),
    ],
    ids=["searched-batch-size"],
)
def test_cohort_specs_that_cannot_run_are_refused_in_one_line(tmp_path, capsys, flags, musts):
    with pytest.raises(SystemExit) as raised:
        main(["check", spec_file(tmp_path, cohort_size=4), "--storage", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert raised.value.code == 2 and len(err) == 1 and all(must in err[0] for must in musts), err


def test_check_shows_cohorts_and_refuses_a_model_with_buffers(tmp_path, capsys):
    path = spec_file(tmp_path, cohort_size=4)
    assert main(["check", path, "--storage", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "40 trials, 2 at a time in cohorts of 4" in out and "1 CPU, 0 GPU per cohort of 4" in out
    assert re.search(r"a cohort of 4 \(4 rows after the branch point\) needs about \d+ MiB", out), out
    with pytest.raises(SystemExit) as raised:
        main(["check", path, "--storage", str(tmp_path / "out"), "--set", "model=resnet20"])
    err = capsys.readouterr().err.strip().splitlines()
    assert raised.value.code == 2 and len(err) == 1 and "budget.cohort_size: 'resnet20' keeps buffers" in err[0], err


def test_moasha_ranks_a_cohort_member_out_while_its_cohort_mates_go_on(local_ray, tmp_path):
    """``IDLE_MEMBERS_MOASHA_SPEC``: the idle members stop at rung 1 while a cohort-mate trains on."""
    spec = parse_spec(IDLE_MEMBERS_MOASHA_SPEC, "cohort_moasha.yaml")
    sweep_dir, state = prepare_sweep(spec, str(tmp_path))
    (sweep_dir / SCHEDULER_FILE).write_text(json.dumps(SEEDED_RUNG))
    execute_sweep(spec, sweep_dir, state, quiet=True)

    rows = ResultsLedger(sweep_dir / "results.jsonl").rows
    assert len({row["ray_trial_id"] for row in rows.values()}) == 1  # one cohort
    pruned = check_idle_members_pruned(rows)
    idle = {n for n, row in rows.items() if row["param.lr"] < 1e-6}
    trials = {t.number: t for t in own_trials(study_of(sweep_dir))}
    assert {n for n, t in trials.items() if t.state == optuna.trial.TrialState.PRUNED} == pruned
    assert all(trials[n].user_attrs["proxy_val_accuracy"] < 0.5 for n in idle)
    _, runs = child_runs(sweep_dir)
    for run in runs:
        number = int(run.data.tags["hoyersweep.trial_number"])
        assert run.data.tags["hoyersweep.status"] == ("pruned" if number in pruned else "ok")
        assert (run.data.tags.get("hoyersweep.stopped_at_rung") == "1") == (number in pruned)
    rung = json.loads((sweep_dir / SCHEDULER_FILE).read_text())["1"]  # the actor kept the earlier record
    assert set(rung) == {"1000000", *(str(n) for n in rows)}


def test_train_strengths_trains_one_cohort(tmp_path, capsys):
    argv = ["train", "--strengths", "1e-4,3e-4,1e-3", "--epochs", "2", "--finetune-epochs", "1"]
    argv += ["--batch-size", "256", "--json", "--save", str(tmp_path / "m.pt")]
    assert main(argv) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["strength"] for r in results] == [1e-4, 3e-4, 1e-3]
    assert [r["status"] for r in results] == ["ok"] * 3
    assert [(r["cohort_size"], r["cohort_index"]) for r in results] == [(3, 0), (3, 1), (3, 2)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-0.pt", "m-1.pt", "m-2.pt"]
    argv = ["train", "--strengths", "1e-4,3e-4", "--thresholds", "0.01,0.05", "--epochs", "2"]
    argv += ["--finetune-epochs", "1", "--batch-size", "256", "--json"]
    assert main(argv) == 0
    branched = json.loads(capsys.readouterr().out)
    assert [(r["strength"], r["threshold"]) for r in branched] == [
        (1e-4, 0.01),
        (1e-4, 0.05),
        (3e-4, 0.01),
        (3e-4, 0.05),
    ]
    assert branched[0]["nonzero_frac"] > branched[1]["nonzero_frac"]  # each branch pruned at its own threshold
    with pytest.raises(SystemExit) as raised:
        main(["train", "--strengths", "1e-4,x"])
    assert raised.value.code == 2 and "--strengths" in capsys.readouterr().err


def test_a_member_with_a_bad_configuration_fails_alone(local_ray, tmp_path):
    spec = parse_spec(
        {
            "name": "cohort_bad_member",
            "trial": {"epochs": 2, "finetune_epochs": 1, "batch_size": 256},
            "search": {
                "lr": {"type": "categorical", "choices": [0.01, 0.0]},  # lr 0 is not a valid setting
                "seed": {"type": "categorical", "choices": [0, 1]},
            },
            "sampler": {"type": "random", "seed": 0},
            "budget": {"num_samples": 4, "max_concurrent_trials": 1, "cohort_size": 4},
            "max_failures": 0,
        },
        "cohort_bad_member.yaml",
    )
    outcome = run_sweep(spec, storage=str(tmp_path), quiet=True)
    rows = ResultsLedger(outcome.sweep_dir / "results.jsonl").rows
    assert len(rows) == 4 and len({row["ray_trial_id"] for row in rows.values()}) == 1
    for row in rows.values():
        if row["param.lr"] == 0.0:
            assert row["status"] == Status.FAILED and "lr must be > 0" in row["message"], row
        else:  # trained in a cohort of the two valid members
            assert row["status"] == Status.OK and row["cohort_size"] == 2, row
    assert sum(row["status"] == Status.FAILED for row in rows.values()) == 2
