"""The results table: the same from a sweep folder and its MLflow store; parquet keeps dtypes."""

import json

import pandas as pd
import pytest

from analysis.results import (
    COLUMNS,
    ResultsError,
    from_mlflow,
    from_sweep_dir,
    load_layers,
    load_results,
    read_parquet,
    write_parquet,
)
from sweeps.cli import main as cli_main


def test_same_table_from_sweep_folder_and_mlflow(digits_sweep):
    folder = from_sweep_dir(digits_sweep.sweep_dir)
    state = json.loads((digits_sweep.sweep_dir / "state.json").read_text())
    by_parent = from_mlflow(state["tracking_uri"], parent_run_id=state["parent_run_id"])
    by_experiment = from_mlflow(state["tracking_uri"], experiment=state["name"])
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
    assert len(table) == 12  # the sweep itself, then every sweep in its storage folder (the same one)
    write_parquet(table, tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(read_parquet(tmp_path / "t.parquet"), table)
    assert len(load_results(tmp_path / "t.parquet")) == 12


def test_layers_table(digits_sweep):
    layers = load_layers(digits_sweep.sweep_dir)
    assert set(layers["name"]) == {"fc1.weight", "fc2.weight", "fc3.weight"} and len(layers) == 18
    assert (layers["nonzero"] <= layers["numel"]).all()


def test_failed_trials_are_kept_but_never_on_the_front(tmp_path):
    from analysis.pareto import pareto_front

    rows = [
        {"sweep": "s", "trial_number": 0, "status": "ok", "val_accuracy": 0.9, "nonzero_frac": 0.2},
        {"sweep": "s", "trial_number": 1, "status": "diverged", "val_accuracy": None, "nonzero_frac": None},
        {"sweep": "s", "trial_number": 2, "status": "error", "val_accuracy": 0.99, "nonzero_frac": 0.01},
    ]
    from analysis.results import _typed

    table = _typed(rows)
    assert table["status"].tolist() == ["ok", "diverged", "error"]
    assert pareto_front(table)["trial_number"].tolist() == [0]


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
