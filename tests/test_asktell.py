"""The Ray-free route: ``python -m sweeps.asktell`` trains cohorts under Optuna ask/tell; ``hoyersweep import``
records its folder as a normal sweep.  Real digits runs on the CPU, a real SIGKILL, real MLflow/Optuna stores."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from conftest import IDLE_MEMBERS_MOASHA_SPEC, SEEDED_RUNG, check_idle_members_pruned
from mlflow.tracking import MlflowClient

from analysis.pareto import DEFAULT_OBJECTIVES, pareto_front
from analysis.results import feasible_mask, from_sweep_dir, sweep_constraints
from sweeps import asktell
from sweeps.cli import main as hoyersweep
from sweeps.folder import verify_records
from sweeps.study import own_trials
from trainables.contract import SCHEDULER_FILE, TRIAL_TAG, read_ledger

ROOT = Path(__file__).resolve().parents[1]
SPEC = str(ROOT / "sweeps" / "digits_quick.yaml")
TINY = ["--set", "trial.pretrain_epochs=1", "trial.epochs=2", "trial.finetune_epochs=1"]
HEAVY = ("ray", "mlflow")


def driver(out: Path, *flags: str) -> list[str]:
    return [SPEC, "--out", str(out), *TINY, "--quiet", *flags]


@pytest.fixture(scope="module")
def asktell_dir(tmp_path_factory) -> Path:
    """Five results in cohorts of three (3 + 2), trained in this process."""
    out = tmp_path_factory.mktemp("asktell") / "run"
    assert asktell.main(driver(out, "--cohort-size", "3", "--num-samples", "5")) == 0
    return out


@pytest.fixture(scope="module")
def imported(asktell_dir, tmp_path_factory) -> Path:
    storage = tmp_path_factory.mktemp("storage")
    assert hoyersweep(["import", str(asktell_dir), "--storage", str(storage), "--quiet"]) == 0
    (sweep_dir,) = [p.parent for p in storage.glob("*/state.json")]
    return sweep_dir


@pytest.mark.parametrize(
    "statement",
    [
        "import sweeps.asktell",
        "import runpy; sys.argv = ['asktell', '--help']\n"
        "try:\n    runpy.run_module('sweeps.asktell', run_name='__main__')\nexcept SystemExit:\n    pass",
    ],
)
def test_the_driver_imports_neither_ray_nor_mlflow(statement):
    probe = f"import json, sys\n{statement}\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_the_driver_records_every_result_once_as_the_sweep_does(asktell_dir):
    rows = read_ledger(asktell_dir / "results.jsonl")
    assert sorted(row["trial_number"] for row in rows) == [0, 1, 2, 3, 4]
    assert [row["cohort_size"] for row in rows] == [3, 3, 3, 2, 2]
    assert all(row["status"] == "ok" and (asktell_dir / "trials" / f"trial-{row['trial_number']:04d}.json").exists()
               for row in rows)  # fmt: skip
    assert all(Path(row["model_file"]).exists() for row in rows)
    study = optuna.load_study(
        study_name=asktell.DriverState.load(asktell_dir).study_name, storage=asktell.journal_storage(asktell_dir)
    )
    assert len({json.dumps(t.params, sort_keys=True) for t in own_trials(study)}) == 5
    assert all(t.constraints for t in own_trials(study))  # the accuracy floor, told as a constraint
    assert asktell.main(driver(asktell_dir, "--cohort-size", "3", "--num-samples", "5")) == 0  # nothing owed
    assert len(read_ledger(asktell_dir / "results.jsonl")) == 5


def test_a_killed_driver_continues_without_repeating_a_result(tmp_path):
    out = tmp_path / "killed"
    flags = ["--set", "trial.epochs=40", "checkpoint_interval_s=0.2", "--cohort-size", "2", "--num-samples", "6"]
    command = [sys.executable, "-m", "sweeps.asktell", *driver(out, *flags)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if (out / "checkpoints" / "group-0002.pt").exists():  # the second cohort (trials 2, 3) has a checkpoint
                break
            time.sleep(0.02)
        assert process.poll() is None, process.stderr.read().decode()
        os.kill(process.pid, 9)  # SIGKILL, of the process started above only
    finally:
        process.wait(timeout=30)
    before = {row["trial_number"] for row in read_ledger(out / "results.jsonl")}
    interrupted = list((out / "checkpoints").glob("group-*.pt"))
    assert 2 <= len(before) < 6 and interrupted
    assert asktell.main(driver(out, *flags)) == 0
    rows = read_ledger(out / "results.jsonl")
    numbers = [row["trial_number"] for row in rows]
    assert len(numbers) == len(set(numbers)) == 6 and before <= set(numbers)
    assert any(row["resumed_from_epoch"] for row in rows)  # the interrupted cohort continued from its checkpoint
    assert not list((out / "checkpoints").glob("group-*"))
    study = optuna.load_study(study_name=asktell.DriverState.load(out).study_name, storage=asktell.journal_storage(out))
    finished = [t for t in own_trials(study) if t.state.is_finished()]
    assert sorted(t.number for t in finished) == sorted(numbers)


def test_import_makes_a_sweep_folder_with_the_same_rows_front_and_runs(asktell_dir, imported):
    source = pd.DataFrame(read_ledger(asktell_dir / "results.jsonl")).set_index("trial_number").sort_index()
    table = from_sweep_dir(imported).set_index("trial_number").sort_index()
    assert list(table.index) == list(source.index)
    for column in ("val_accuracy", "nonzero_frac", "test_accuracy", "param.strength", "param.reg"):
        name = column.removeprefix("param.")
        assert table[name].tolist() == source[column].tolist()

    table = from_sweep_dir(imported)
    feasible = table[feasible_mask(table, sweep_constraints([str(imported)]))]
    front = pareto_front(feasible, DEFAULT_OBJECTIVES)
    pareto = pd.read_csv(imported / "pareto.csv")
    assert sorted(pareto["trial_number"]) == sorted(front["trial_number"])

    state = json.loads((imported / "state.json").read_text())
    client = MlflowClient(f"sqlite:///{imported / 'mlflow.db'}")
    parent = client.get_run(state["parent_run_id"])
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert parent.info.status == "FINISHED"
    assert sorted(int(r.data.tags[TRIAL_TAG]) for r in children) == list(source.index)
    assert {r.info.status for r in children} == {"FINISHED"}
    assert all(client.get_metric_history(r.info.run_id, "val_accuracy") for r in children)  # curves came along
    ledger = {row["trial_number"]: row for row in read_ledger(imported / "results.jsonl")}
    assert {row["mlflow_run_id"] for row in ledger.values()} == {r.info.run_id for r in children}
    assert all(Path(row["model_file"]).parent == imported / "models" for row in ledger.values())
    study = optuna.load_study(study_name=state["study_name"], storage=f"sqlite:///{imported / 'optuna.db'}")
    assert {t.number: t.user_attrs["mlflow_run_id"] for t in own_trials(study)} == {
        n: row["mlflow_run_id"] for n, row in ledger.items()
    }


def test_importing_again_changes_nothing(asktell_dir, imported, capsys):
    ledger = (imported / "results.jsonl").read_bytes()
    assert hoyersweep(["import", str(asktell_dir), "--storage", str(imported.parent)]) == 0
    assert "nothing to import" in capsys.readouterr().out
    assert (imported / "results.jsonl").read_bytes() == ledger
    assert len(list(imported.parent.glob("*/state.json"))) == 1


def test_registering_the_knee_again_keeps_its_version(imported):
    """A resumed sweep or a second import registers the knee again: the same run keeps its one version."""
    from sweeps.tracking import SweepTracker

    state = json.loads((imported / "state.json").read_text())
    tracker = SweepTracker(f"sqlite:///{imported / 'mlflow.db'}", state["name"])
    knee = tracker.client.get_model_version_by_alias(state["name"], "knee")
    before = tracker.client.search_model_versions(f"name = '{state['name']}'")
    assert tracker.register(state["name"], knee.run_id, "knee") == f"models:/{state['name']}@knee"
    after = tracker.client.search_model_versions(f"name = '{state['name']}'")
    assert sorted(v.version for v in after) == sorted(v.version for v in before)
    assert tracker.client.get_model_version_by_alias(state["name"], "knee").version == knee.version


def refused(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        hoyersweep(argv)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0]
    return lines[0]


def test_a_bad_folder_is_refused_in_one_line_and_changes_nothing(asktell_dir, imported, tmp_path, capsys):
    storage = str(imported.parent)
    recorded = (imported / "results.jsonl").read_bytes()
    bad = tmp_path / "bad"
    shutil.copytree(asktell_dir, bad)
    (bad / "results.jsonl").unlink()
    assert "results.jsonl: missing" in refused(["import", str(bad), "--storage", storage], capsys)

    shutil.copyfile(asktell_dir / "results.jsonl", bad / "results.jsonl")
    with (bad / "results.jsonl").open("a") as handle:
        handle.write('{"sweep": "digits_quick", "trial_nu')
    assert "results.jsonl: the last line is torn" in refused(["import", str(bad), "--storage", storage], capsys)

    shutil.copyfile(asktell_dir / "results.jsonl", bad / "results.jsonl")
    spec = (bad / "spec.yaml").read_text()
    (bad / "spec.yaml").write_text(spec.replace("epochs: 2", "epochs: 3", 1))
    assert "spec.yaml: trial.epochs differs" in refused(["import", str(bad), "--storage", storage], capsys)
    assert (imported / "results.jsonl").read_bytes() == recorded
    assert len(list(imported.parent.glob("*/state.json"))) == 1


def test_branching_cohorts_choose_their_branches_and_count_every_branch(tmp_path):
    """budget.thresholds_per_run > 1: each run of the stack branches (proxy mode), every branch a result."""
    out = tmp_path / "branching"
    flags = ["--set", "budget.thresholds_per_run=3", "--cohort-size", "2", "--num-samples", "6"]
    assert asktell.main(driver(out, *flags)) == 0
    rows = read_ledger(out / "results.jsonl")
    assert sorted(row["trial_number"] for row in rows) == list(range(6))
    runs = {}
    for row in rows:
        runs.setdefault(row["shared_run"], set()).add(row["param.threshold"])
    assert sorted(len(thresholds) for thresholds in runs.values()) == [3, 3]  # two runs, three thresholds each
    assert all(Path(row["model_file"]).name.startswith(f"run-{row['shared_run']:04d}-branch-") for row in rows)


def test_lambda_zero_runs_branch_where_the_run_before_did_not(tmp_path, capsys):
    """Only the threshold searched (λ = 0, one seed): both runs train one model, yet no chosen branch
    repeats the other run's, so two runs fill the budget (a repeat would be refused and cost a third)."""
    out = tmp_path / "magnitude"
    search = "search={threshold: {type: float, low: 1.0e-3, high: 0.2, log: true}}"
    flags = ["--set", "trial.reg=none", "trial.strength=0", search, "budget.thresholds_per_run=4"]
    assert asktell.main(driver(out, *flags, "--num-samples", "8")) == 0
    rows = read_ledger(out / "results.jsonl")
    assert len(rows) == 8 and len({row["param.threshold"] for row in rows}) == 8
    assert len({row["shared_run"] for row in rows}) == 2
    assert "repeated" not in capsys.readouterr().out


def test_moasha_ranks_a_member_out_in_process_while_its_cohort_mates_go_on(tmp_path):
    """``scheduler: moasha`` without Ray: the rung state lives in the driver, in ``scheduler.json``."""
    spec_file = tmp_path / "cohort_moasha.yaml"
    spec_file.write_text(yaml.safe_dump(IDLE_MEMBERS_MOASHA_SPEC))
    out = tmp_path / "run"
    out.mkdir()
    (out / SCHEDULER_FILE).write_text(json.dumps(SEEDED_RUNG))
    assert asktell.main([str(spec_file), "--out", str(out), "--quiet"]) == 0
    rows = {row["trial_number"]: row for row in read_ledger(out / "results.jsonl")}
    pruned = check_idle_members_pruned(rows)
    study = optuna.load_study(
        study_name=json.loads((out / "asktell.json").read_text())["study_name"], storage=asktell.journal_storage(out)
    )
    assert {t.number for t in own_trials(study, [optuna.trial.TrialState.PRUNED])} == pruned
    assert set(json.loads((out / SCHEDULER_FILE).read_text())["1"]) == {"1000000", *(str(n) for n in rows)}


def test_a_driver_run_on_with_more_samples_imports_only_its_new_results(asktell_dir, imported, capsys):
    """Last in this file: it grows the shared folder.  The earlier import gains the new result and its budget."""
    assert asktell.main(driver(asktell_dir, "--cohort-size", "3", "--num-samples", "6")) == 0
    assert hoyersweep(["import", str(asktell_dir), "--storage", str(imported.parent), "--quiet"]) == 0
    assert sorted(from_sweep_dir(imported)["trial_number"]) == list(range(6))
    assert verify_records(imported).budget.num_samples == 6  # spec.yaml and state.json agree: resumable records
    # each import registered the knee; a knee registered before kept its version (no duplicates)
    name = json.loads((imported / "state.json").read_text())["name"]
    versions = MlflowClient(f"sqlite:///{imported / 'mlflow.db'}").search_model_versions(f"name = '{name}'")
    assert versions and len({v.run_id for v in versions}) == len(versions)
