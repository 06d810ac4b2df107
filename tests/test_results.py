"""The results table: the same from a sweep folder and its MLflow store; parquet keeps dtypes; legacy names load."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis.cli import main as analysis_main
from analysis.pareto import pareto_front
from analysis.results import (
    COLUMNS,
    RUNNING,
    ResultsError,
    SweepConstraint,
    _typed,
    feasible_mask,
    from_mlflow,
    from_sweep_dir,
    load_layers,
    load_results,
    read_parquet,
    status_name,
    sweep_constraints,
    write_parquet,
)
from sweeps.cli import main as cli_main
from trainables.contract import (
    FINAL_PREFIX,
    PARENT_RUN_TAG,
    RESULTS_FILE,
    SEARCH_PARAM_PREFIX,
    SPEC_FILE,
    STATE_FILE,
    STATUS_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    Constraint,
    Status,
    feasible,
    tracking_uri_of,
)


def test_same_table_from_sweep_folder_and_mlflow(digits_sweep):
    folder = from_sweep_dir(digits_sweep.sweep_dir)
    state = json.loads((digits_sweep.sweep_dir / "state.json").read_text())
    by_parent = from_mlflow(tracking_uri_of(digits_sweep.sweep_dir), parent_run_id=state["parent_run_id"])
    by_experiment = from_mlflow(tracking_uri_of(digits_sweep.sweep_dir), experiment=state["name"])
    assert list(folder.columns) == list(COLUMNS) and dict(folder.dtypes.astype(str)) == {
        k: str(pd.Series(dtype=v).dtype) for k, v in COLUMNS.items()
    }
    assert len(folder) == 6 and folder["trial_number"].tolist() == list(range(6))
    for other in (by_parent, by_experiment):
        pd.testing.assert_frame_equal(
            folder.drop(columns="message"), other.drop(columns="message"), check_exact=False, rtol=1e-12
        )
    assert folder["searched"].unique().tolist() == ["reg,strength,threshold"]
    assert folder["num_threads"].unique().tolist() == [1]  # the setting as it ran, not just the spec


def test_parquet_round_trip_keeps_dtypes(digits_sweep, tmp_path):
    table = load_results([digits_sweep.sweep_dir, digits_sweep.sweep_dir.parent])
    # the sweep itself, then every sweep in its storage folder (it, and any a later test added there)
    expected = 6 + len(load_results(digits_sweep.sweep_dir.parent))
    assert len(table) == expected
    write_parquet(table, tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(read_parquet(tmp_path / "t.parquet"), table)
    assert len(load_results(tmp_path / "t.parquet")) == expected
    # a table saved before a setting existed reads with the setting at its default (what its trials ran at)
    write_parquet(table.drop(columns=["prune_ramp_epochs"]), tmp_path / "older.parquet")
    older = read_parquet(tmp_path / "older.parquet")
    assert older["prune_ramp_epochs"].tolist() == [0] * expected and str(older["prune_ramp_epochs"].dtype) == "Int64"


def test_layers_table(digits_sweep):
    layers = load_layers(digits_sweep.sweep_dir)
    assert set(layers["name"]) == {"fc1.weight", "fc2.weight", "fc3.weight"} and len(layers) == 18
    assert (layers["nonzero"] <= layers["numel"]).all()


def test_failed_trials_are_kept_but_never_on_the_front():
    rows = [
        {"sweep": "s", "trial_number": 0, "status": "ok", "val_accuracy": 0.9, "nonzero_frac": 0.2},
        {"sweep": "s", "trial_number": 1, "status": "diverged", "val_accuracy": None, "nonzero_frac": None},
        {"sweep": "s", "trial_number": 2, "status": "failed", "val_accuracy": 0.99, "nonzero_frac": 0.01},
        {"sweep": "s", "trial_number": 3, "status": "pruned", "val_accuracy": 0.98, "nonzero_frac": 0.01},
    ]
    table = _typed(rows)
    assert table["status"].tolist() == ["ok", "diverged", "failed", "pruned"]
    assert pareto_front(table)["trial_number"].tolist() == [0]


def write_sweep(folder: Path, rows: list[dict], constraints: list[dict] | None = None, name: str = "old") -> Path:
    """A sweep folder as the sweep engine leaves it (state, spec, ledger), without running anything."""
    folder.mkdir(parents=True)
    (folder / STATE_FILE).write_text(json.dumps({"name": name, "tracking_uri": "", "study_name": name}))
    spec = {"name": name, "search": {"strength": {}, "threshold": {}}, "constraints": constraints or []}
    (folder / SPEC_FILE).write_text(yaml.safe_dump(spec))
    lines = [
        json.dumps({"sweep": name, "trial_number": i, "message": "", "config": {"reg": "hs"}, "layers": [], **row})
        for i, row in enumerate(rows)
    ]
    (folder / RESULTS_FILE).write_text("\n".join(lines) + "\n")
    return folder


LEGACY = [("ok", "ok"), ("error", "failed"), ("stopped", "interrupted"), ("diverged", "diverged")]


def test_legacy_status_names_load_mapped(tmp_path):
    """Results written before the contract (``error``, ``stopped``) load under today's names, from every source."""
    rows = [{"status": old, "val_accuracy": 0.9, "nonzero_frac": 0.5} for old, _ in LEGACY]
    sweep = write_sweep(tmp_path / "old", rows)
    expected = [new for _, new in LEGACY]
    assert from_sweep_dir(sweep)["status"].tolist() == expected

    legacy_table = _typed(rows).assign(status=[old for old, _ in LEGACY])  # a parquet file saved by an old version
    legacy_table.to_parquet(tmp_path / "old.parquet", index=False)
    assert read_parquet(tmp_path / "old.parquet")["status"].tolist() == expected
    assert load_results(tmp_path / "old.parquet")["status"].tolist() == expected

    assert status_name("error") == "failed" and status_name(Status.PRUNED) == "pruned" and status_name(None) is None
    assert status_name("running") == "running"  # not a contract status, kept as written


def test_legacy_status_tags_from_mlflow_load_mapped(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("old", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment, tags={SWEEP_TAG: "old"})
    client.log_param(parent.info.run_id, f"{SEARCH_PARAM_PREFIX}strength", "{}")
    for number, (old, _) in enumerate([*LEGACY, (None, None)]):
        tags = {PARENT_RUN_TAG: parent.info.run_id, SWEEP_TAG: "old", TRIAL_TAG: str(number)}
        run = client.create_run(experiment, tags=tags if old is None else {**tags, STATUS_TAG: old})
        client.log_metric(run.info.run_id, f"{FINAL_PREFIX}val_accuracy", 0.9)
    table = from_mlflow(uri, experiment="old")
    assert table["status"].tolist() == [*(new for _, new in LEGACY), RUNNING]
    assert table["val_accuracy"].tolist() == [0.9] * 5 and table["searched"].unique().tolist() == ["strength"]


def test_feasible_mask_is_the_contracts_rule():
    """One rule: ``Constraint.satisfied`` per row of the constraint's own sweep; NaN, NA or a missing metric fail."""
    rng = np.random.default_rng(0)
    accuracy = rng.uniform(0.5, 1.0, 200)
    accuracy[rng.random(200) < 0.1] = np.nan
    table = _typed(
        [
            {"sweep": sweep, "trial_number": i, "status": "ok", "val_accuracy": acc, "nonzero_frac": nz}
            for i, (sweep, acc, nz) in enumerate(zip(rng.choice(["a", "b"], 200), accuracy, rng.uniform(0, 1, 200)))
        ]
    )
    floor, cap = Constraint("val_accuracy", min=0.8), Constraint("nonzero_frac", max=0.3)
    constraints = [SweepConstraint("a", floor), SweepConstraint("b", cap)]
    expected = [
        feasible(row, [floor] if row["sweep"] == "a" else [cap])
        for row in table[["sweep", "val_accuracy", "nonzero_frac"]].astype(object).to_dict("records")
    ]
    mask = feasible_mask(table, constraints)
    assert mask.dtype == bool and mask.tolist() == expected and 0 < mask.sum() < len(table)
    as_dicts = [
        {"sweep": "a", "metric": "val_accuracy", "min": 0.8},
        {"sweep": "b", "metric": "nonzero_frac", "max": 0.3},
    ]
    assert feasible_mask(table, as_dicts).tolist() == expected  # spec-like mappings, parsed by Constraint.from_dict
    nan_in_a = (table["val_accuracy"].isna() & table["sweep"].eq("a")).to_numpy(dtype=bool)
    assert nan_in_a.any() and not mask[nan_in_a].any()  # NaN never satisfies a bound
    every_sweep = feasible_mask(table, [SweepConstraint(None, floor)])
    assert every_sweep.tolist() == [
        bool(floor.satisfied(v)) for v in table["val_accuracy"].to_numpy(float, na_value=np.nan)
    ]
    assert not feasible_mask(table, [SweepConstraint("a", Constraint("no_such_metric", min=0))])[
        table["sweep"].eq("a").to_numpy(bool)
    ].any()  # a metric nobody recorded is missing everywhere: infeasible, as contract.feasible
    assert feasible_mask(table, []).all()


def test_sweep_constraints_come_from_the_specs(tmp_path):
    rows = [{"status": "ok", "val_accuracy": 0.7, "nonzero_frac": 0.1}, {"status": "ok", "val_accuracy": 0.9}]
    sweep = write_sweep(tmp_path / "c", rows, constraints=[{"metric": "val_accuracy", "min": 0.8}], name="c")
    found = sweep_constraints([str(sweep)])
    assert found == [SweepConstraint("c", Constraint("val_accuracy", min=0.8))]
    assert found[0].describe() == "c: val_accuracy ≥ 0.8"
    assert feasible_mask(from_sweep_dir(sweep), found).tolist() == [False, True]
    bad = write_sweep(tmp_path / "bad", rows, constraints=[{"metric": "val_accuracy"}], name="bad")
    with pytest.raises(ResultsError, match="bad constraint"):
        sweep_constraints([str(bad)])


def test_pareto_command_without_the_sweep_engine(tmp_path, capsys):
    rows = [
        {"status": "ok", "val_accuracy": 0.95, "nonzero_frac": 0.5},
        {"status": "ok", "val_accuracy": 0.90, "nonzero_frac": 0.1},
        {"status": "ok", "val_accuracy": 0.70, "nonzero_frac": 0.01},  # below the spec's floor
        {"status": "error", "val_accuracy": None, "nonzero_frac": None},
    ]
    sweep = write_sweep(tmp_path / "s", rows, constraints=[{"metric": "val_accuracy", "min": 0.8}], name="s")
    assert analysis_main(["pareto", str(sweep), "--format", "json"]) == 0
    assert [r["trial_number"] for r in json.loads(capsys.readouterr().out)] == [0, 1]
    assert analysis_main(["pareto", str(sweep)]) == 0
    assert "4 trials (3 ok, 2 breaking their sweep's constraints) in 1 sweep(s); front of 2" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        analysis_main(["pareto", str(sweep), "--objectives", "val_acc:max"])
    err = capsys.readouterr().err
    assert "unknown objective column(s): val_acc" in err and "val_accuracy, test_accuracy, nonzero_frac" in err


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(ResultsError, match=str(tmp_path / "nothing")):
        load_results(tmp_path / "nothing")


def test_pareto_command_formats(digits_sweep, capsys):
    assert cli_main(["pareto", str(digits_sweep.sweep_dir), "--format", "json"]) == 0
    front = json.loads(capsys.readouterr().out)
    assert front and {"trial_number", "val_accuracy", "nonzero_frac", "test_accuracy"} <= set(front[0])
    # Like the sweep's own pareto.csv, the printed front keeps trials below the spec's accuracy floor off.
    assert {r["trial_number"] for r in front} == set(digits_sweep.front["trial_number"])
    assert cli_main(["pareto", str(digits_sweep.sweep_dir), "--format", "json", "--ignore-constraints"]) == 0
    unconstrained = {r["trial_number"] for r in json.loads(capsys.readouterr().out)}
    assert set(digits_sweep.front["trial_number"]) <= unconstrained
    assert cli_main(["pareto", str(digits_sweep.sweep_dir), "--by", "reg", "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("reg,sweep,trial_number")
    with pytest.raises(SystemExit):
        cli_main(["pareto", str(digits_sweep.sweep_dir), "--objectives", "val_accuracy:up"])
    assert "val_accuracy:up" in capsys.readouterr().err


def test_ui_binds_loopback_by_default(digits_sweep, capsys):
    assert cli_main(["ui", str(digits_sweep.sweep_dir), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "http://127.0.0.1:5000" in out and "--host 127.0.0.1" in out and "optuna-dashboard" in out
