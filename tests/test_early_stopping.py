"""A real digits sweep with MO-ASHA: stopped trials are results of their own, never on a front."""

from __future__ import annotations

import json

import optuna
from mlflow.tracking import MlflowClient

from sweeps.records import ResultsLedger
from sweeps.runner import run_sweep
from sweeps.searcher import own_trials
from sweeps.spec import load_spec
from trainables.contract import SCHEDULER_FILE, Status, tracking_uri_of


def test_moasha_stops_trials_that_stay_off_every_front(local_ray, tmp_path):
    spec, _ = load_spec(
        "sweeps/digits_quick.yaml",
        {
            "budget.num_samples": 9,
            "trial.epochs": 3,
            "trial.finetune_epochs": 1,
            "trial.batch_size": 256,
            "scheduler.type": "moasha",
            "scheduler.grace_epochs": 1,  # rungs at regularized epochs 1 and 3
        },
    )
    outcome = run_sweep(spec, storage=str(tmp_path), quiet=True)
    sweep_dir = outcome.sweep_dir
    rows = ResultsLedger(sweep_dir / "results.jsonl").rows
    pruned = {n for n, row in rows.items() if row["status"] == Status.PRUNED}
    assert len(rows) == 9 and pruned, "the scheduler stopped nothing"
    assert all(rows[n]["stopped_at_rung"] in (1, 3) for n in pruned)
    assert not pruned & set(outcome.front["trial_number"])  # pareto.csv
    state = json.loads((sweep_dir / "state.json").read_text())
    study = optuna.load_study(study_name=state["study_name"], storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    trials = {t.number: t for t in own_trials(study)}
    assert {n for n, t in trials.items() if t.state == optuna.trial.TrialState.PRUNED} == pruned
    assert all("proxy_val_accuracy" in trials[n].user_attrs for n in pruned)
    client = MlflowClient(tracking_uri_of(sweep_dir))
    runs = client.search_runs([client.get_experiment_by_name(state["name"]).experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert all(r.info.status != "RUNNING" for r in children)
    for run in children:
        number = int(run.data.tags["hoyersweep.trial_number"])
        assert (run.data.tags["pareto"] == "true") <= (number not in pruned)
        if number in pruned:
            assert run.data.tags["hoyersweep.status"] == "pruned" and "hoyersweep.stopped_at_rung" in run.data.tags
    recorded = json.loads((sweep_dir / SCHEDULER_FILE).read_text())  # rung records a resume reads back
    assert set(recorded) == {"1", "3"} and len(recorded["1"]) >= len(pruned)
