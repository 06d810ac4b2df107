"""A sweep folder is self-contained: copied or moved it resumes in place; damaged records are refused untouched.

Real local Ray, real sqlite stores.  The shared sweep ("2 of 3 results, then the driver
stopped") is made by running a spec of budget 3 with an in-memory budget of 2: its records are
those of a sweep stopped between trials, and ``resume`` owes exactly one more result.
"""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from sweeps.folder import artifact_root_uri, spec_difference, stored_tracking_uri
from sweeps.records import ResultsLedger
from sweeps.runner import execute_sweep, find_sweep_dir, prepare_sweep, resume_sweep
from sweeps.spec import SpecError, load_spec
from trainables.contract import own_tracking_uri, resolve_tracking_uri

RECORDS = ("results.jsonl", "optuna.db", "mlflow.db", "state.json", "spec.yaml")


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path → digest)."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def state_of(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "state.json").read_text())


@pytest.fixture(scope="module")
def stopped_sweep(local_ray, tmp_path_factory) -> Path:
    """A sweep of budget 3 (with a shared pretraining) whose driver stopped after 2 results."""
    spec, _ = load_spec(
        "sweeps/digits_quick.yaml",
        {
            "budget.num_samples": 3,
            "trial.epochs": 2,
            "trial.finetune_epochs": 1,
            "trial.batch_size": 256,
            "trial.pretrain_epochs": 1,
        },
    )
    sweep_dir, state = prepare_sweep(spec, str(tmp_path_factory.mktemp("origin")))
    stopped_early = spec.model_copy(update={"budget": spec.budget.model_copy(update={"num_samples": 2})})
    outcome = execute_sweep(stopped_early, sweep_dir, state, quiet=True)
    assert outcome.total == 2
    return sweep_dir


def children(sweep_dir: Path) -> list:
    state = state_of(sweep_dir)
    client = MlflowClient(own_tracking_uri(sweep_dir))
    experiment = client.get_experiment_by_name(state["name"])
    return client.search_runs([experiment.experiment_id], filter_string="tags.`hoyersweep.trial_number` != ''")


def test_state_json_holds_no_path_of_the_folder(stopped_sweep):
    state = state_of(stopped_sweep)
    assert state["tracking_uri"] is None
    assert str(stopped_sweep) not in json.dumps(state)
    assert state["spec"]["budget"]["num_samples"] == 3


def test_tracking_uris_resolve_against_where_the_folder_is(tmp_path):
    folder = tmp_path / "sweep"
    folder.mkdir()
    own = own_tracking_uri(folder)
    assert stored_tracking_uri(own, folder) is None and resolve_tracking_uri(None, folder) == own
    external = "http://mlflow.example:5000"
    assert stored_tracking_uri(external, folder) == external == resolve_tracking_uri(external, folder)
    legacy = f"sqlite:///{tmp_path / 'elsewhere' / 'sweep' / 'mlflow.db'}"
    assert resolve_tracking_uri(legacy, folder) == legacy  # no store of its own here: the one recorded
    (folder / "mlflow.db").touch()
    assert resolve_tracking_uri(legacy, folder) == own  # a copied/moved folder: its own store, never the original


def test_spec_difference_names_the_first_edited_field():
    started = {"trial": {"epochs": 2, "lr": 0.001}, "objectives": [{"metric": "val_accuracy", "mode": "max"}]}
    assert spec_difference(started, {**started, "warm_start": True}) is None  # a field added later, defaulted
    assert spec_difference(started, {**started, "trial": {"epochs": 3, "lr": 0.001}}) == "trial.epochs"
    edited = {**started, "objectives": [{"metric": "val_accuracy", "mode": "min"}]}
    assert spec_difference(started, edited) == "objectives[0].mode"


def test_a_copied_folder_resumes_into_its_own_stores_and_never_touches_the_original(stopped_sweep, tmp_path):
    origin_storage = stopped_sweep.parent
    before = snapshot(origin_storage)  # the original folder and its storage's shared pretrain cache
    copy = shutil.copytree(stopped_sweep, tmp_path / "elsewhere" / "copied")

    outcome = resume_sweep(copy, quiet=True)

    assert outcome.total == 3 and outcome.sweep_dir == copy.resolve()
    assert snapshot(origin_storage) == before
    assert state_of(copy)["status"] == "finished" and state_of(copy)["tracking_uri"] is None
    client = MlflowClient(own_tracking_uri(copy))
    experiment = client.get_experiment_by_name(state_of(copy)["name"])
    assert experiment.artifact_location == artifact_root_uri(copy)
    runs = children(copy)
    assert len(runs) == 3
    for run in runs:  # earlier runs point at the copy's artifacts too
        assert run.info.artifact_uri.startswith(artifact_root_uri(copy) + "/")
        assert (copy / "mlartifacts" / run.info.run_id / "artifacts" / "layers.csv").exists()
    new = ResultsLedger(copy / "results.jsonl").rows[2]
    assert new["driver_run"] == 2 and not (stopped_sweep / "mlartifacts" / new["mlflow_run_id"]).exists()
    # The pretrain cache beside the copy was missing: it was recomputed there.
    assert list((copy.parent / "pretrain_cache").glob("dense-*.pt"))


def test_a_moved_folder_resumes_from_a_relative_path_with_a_legacy_state(stopped_sweep, tmp_path, monkeypatch):
    old_place = tmp_path / "old" / "sweep"
    shutil.copytree(stopped_sweep, old_place)
    state = state_of(old_place)
    state["tracking_uri"] = f"sqlite:///{old_place / 'mlflow.db'}"  # as versions before this one wrote it
    del state["spec"]
    (old_place / "state.json").write_text(json.dumps(state))
    shutil.move(tmp_path / "old", tmp_path / "new")
    monkeypatch.chdir(tmp_path / "new")
    assert find_sweep_dir("sweep") == (tmp_path / "new" / "sweep").resolve()

    outcome = resume_sweep("sweep", data_dir="data", quiet=True)

    moved = (tmp_path / "new" / "sweep").resolve()
    assert outcome.total == 3 and outcome.sweep_dir == moved
    assert not (tmp_path / "old").exists()  # nothing was written where the folder used to be
    state = state_of(moved)
    assert state["tracking_uri"] is None and state["status"] == "finished"
    assert state["runs"][-1]["data_dir"] == str(moved.parent / "data")
    assert "data_dir" not in state["runs"][0]
    assert all(run.info.artifact_uri.startswith(artifact_root_uri(moved)) for run in children(moved))


def _rewrite_line(index: int, change):
    def damage(folder: Path) -> None:
        path = folder / "results.jsonl"
        lines = path.read_text().splitlines()
        lines[index] = change(lines[index])
        path.write_text("\n".join(lines) + "\n")

    return damage


def _edit_json(name: str, change):
    def damage(folder: Path) -> None:
        values = json.loads((folder / name).read_text())
        change(values)
        (folder / name).write_text(json.dumps(values))

    return damage


def _drop(key: str):
    return lambda row: json.dumps({k: v for k, v in json.loads(row).items() if k != key})


def _set(key: str, value):
    return lambda row: json.dumps({**json.loads(row), key: value})


def _append_row(folder: Path) -> None:
    row = json.loads((folder / "results.jsonl").read_text().splitlines()[0])
    with (folder / "results.jsonl").open("a") as handle:
        handle.write(json.dumps({**row, "trial_number": 7}) + "\n")


DAMAGES = {
    "missing optuna.db": (lambda f: (f / "optuna.db").unlink(), "optuna.db: missing while 2 result(s)"),
    "a middle line not JSON": (
        _rewrite_line(0, lambda row: row[:40]),
        "results.jsonl:1: not a valid record (not JSON)",
    ),
    "a line without trial_number": (
        _rewrite_line(1, _drop("trial_number")),
        "results.jsonl:2: not a valid record (no trial_number)",
    ),
    "a line with an unknown status": (
        _rewrite_line(0, _set("status", "done")),
        "results.jsonl:1: not a valid record (unknown status 'done')",
    ),
    "a result the study does not have": (_append_row, "results.jsonl:3: trial 7 is not in optuna.db"),
    "an edited spec field": (
        lambda f: (f / "spec.yaml").write_text((f / "spec.yaml").read_text().replace("epochs: 2", "epochs: 5", 1)),
        "spec.yaml: trial.epochs edited since the sweep started (was 2, now 5)",
    ),
    "unreadable state.json": (lambda f: (f / "state.json").write_text('{"name": "x",'), "state.json: unreadable"),
    "missing state.json": (lambda f: (f / "state.json").unlink(), "state.json: no sweep here"),
    "another sweep's study": (
        _edit_json("state.json", lambda s: s.update(study_name="other")),
        "optuna.db: has no study 'other'",
    ),
    "missing mlflow.db": (lambda f: (f / "mlflow.db").unlink(), "mlflow.db: missing"),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_damaged_records_are_refused_in_one_line_and_left_as_they_are(stopped_sweep, tmp_path, damage):
    folder = shutil.copytree(stopped_sweep, tmp_path / "sweep", ignore=shutil.ignore_patterns("ray"))
    make, expected = DAMAGES[damage]
    make(folder)
    before = snapshot(folder)

    with pytest.raises(SpecError) as refused:
        resume_sweep(folder, quiet=True)

    message = str(refused.value)
    assert "\n" not in message and expected in message, message
    assert snapshot(folder) == before  # every record byte-identical: nothing changed
    if damage == "missing optuna.db":
        assert "hoyersweep run" in message  # the command that starts afresh


def test_a_torn_last_line_is_recovered_from_the_study(stopped_sweep, tmp_path):
    folder = shutil.copytree(stopped_sweep, tmp_path / "sweep")
    path = folder / "results.jsonl"
    text = path.read_text()
    path.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])  # a kill mid-write: no newline

    outcome = resume_sweep(folder, quiet=True)

    assert outcome.total == 3
    lines = path.read_text().splitlines()
    assert path.read_text().endswith("\n") and sorted(json.loads(line)["trial_number"] for line in lines) == [0, 1, 2]
    resume_sweep(folder, quiet=True)  # a later resume finds valid records (the torn piece is gone)
    assert len(children(folder)) == 3
