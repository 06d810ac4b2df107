"""One results table from stored sweeps: a sweep folder, an MLflow store, or several at once.

Schema (``COLUMNS``; one row per trial, the same dtypes whatever the source):

- identity: ``sweep``, ``trial_number``, ``status`` (``ok``, ``diverged``, ``error``,
  ``stopped``), ``message``, ``mlflow_run_id``, ``searched`` (comma-separated names of the
  settings Optuna sampled in that sweep);
- every trial setting of ``trainables.config.TrialConfig`` under its own name (``reg``,
  ``strength``, ``threshold``, ``threshold_mode``, ``model``, ``dataset``, ``epochs``, …) —
  the sampled ones and the fixed ones alike;
- final metrics: ``val_accuracy``, ``test_accuracy``, ``nonzero_frac``, ``flops_frac``,
  ``loss``, ``val_loss``, ``val_accuracy_before_prune``, ``val_accuracy_after_prune``,
  ``epochs_run``, ``wall_time_s``.

Failed, diverged and stopped trials are kept with their status (their metrics NaN); the
front functions in ``analysis.pareto`` keep them off every front.  Per-layer sparsity is a
separate long table (``load_layers``).  This module only reads what sweeps stored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sweeps.records import RESULTS_FILE, read_ledger
from trainables.config import TrialConfig

METRIC_COLUMNS: tuple[str, ...] = (
    "val_accuracy",
    "test_accuracy",
    "nonzero_frac",
    "flops_frac",
    "loss",
    "val_loss",
    "val_accuracy_before_prune",
    "val_accuracy_after_prune",
    "wall_time_s",
)
_SETTING_DTYPES = {"float": "float64", "int": "Int64", "bool": "boolean", "str": "string"}


def _setting_dtype(annotation: str) -> str:
    base = annotation.replace(" | None", "").strip()
    return _SETTING_DTYPES.get(base, "string")


SETTING_COLUMNS: dict[str, str] = {f.name: _setting_dtype(str(f.type)) for f in fields(TrialConfig)}
COLUMNS: dict[str, str] = {
    "sweep": "string",
    "trial_number": "Int64",
    "status": "string",
    "message": "string",
    **SETTING_COLUMNS,
    **{name: "float64" for name in METRIC_COLUMNS},
    "epochs_run": "Int64",
    "mlflow_run_id": "string",
    "searched": "string",
}


class ResultsError(ValueError):
    """A source holds no sweep results; the message names it."""


def _typed(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows to a frame with exactly ``COLUMNS`` in order and dtypes (missing values as NA)."""
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    for column, dtype in COLUMNS.items():
        if dtype == "boolean":
            frame[column] = frame[column].map(_parse_bool).astype(dtype)
        elif dtype in ("float64", "Int64"):
            frame[column] = pd.to_numeric(frame[column].replace({"None": None}), errors="coerce").astype(dtype)
        else:
            frame[column] = (
                frame[column]
                .map(lambda v: None if v is None or v == "None" or (isinstance(v, float) and v != v) else str(v))
                .astype(dtype)
            )
    return frame.sort_values(["sweep", "trial_number"], kind="stable").reset_index(drop=True)


def _parse_bool(value: Any) -> bool | None:
    if value is None or value == "None" or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, str):
        return value.lower() == "true"
    return bool(value)


def sweep_meta(sweep_dir: Path) -> tuple[str, str]:
    """(sweep name, comma-joined searched names) from the sweep folder's state and spec."""
    import yaml

    state = json.loads((sweep_dir / "state.json").read_text())
    spec = yaml.safe_load((sweep_dir / "spec.yaml").read_text())
    return state["name"], ",".join(sorted(spec.get("search", {})))


def from_sweep_dir(sweep_dir: str | os.PathLike) -> pd.DataFrame:
    """The table of one sweep folder, from its results ledger (``results.jsonl``)."""
    sweep_dir = Path(sweep_dir)
    ledger = sweep_dir / RESULTS_FILE
    if not (sweep_dir / "state.json").exists():
        raise ResultsError(f"{sweep_dir}: not a sweep folder (no state.json)")
    name, searched = sweep_meta(sweep_dir)
    rows = [
        {
            **row.get("config", {}),
            **{k: row.get(k) for k in METRIC_COLUMNS},
            "sweep": name,
            "trial_number": row["trial_number"],
            "status": row["status"],
            "message": row.get("message"),
            "epochs_run": row.get("epochs"),
            "mlflow_run_id": row.get("mlflow_run_id"),
            "searched": searched,
        }
        for row in read_ledger(ledger)
    ]
    return _typed(rows)


def load_layers(sweep_dir: str | os.PathLike) -> pd.DataFrame:
    """Per-layer sparsity of every trial of a sweep folder: one row per (trial, layer)."""
    sweep_dir = Path(sweep_dir)
    name, _ = sweep_meta(sweep_dir)
    rows = [
        {"sweep": name, "trial_number": row["trial_number"], **layer, "shape": "x".join(map(str, layer["shape"]))}
        for row in read_ledger(sweep_dir / RESULTS_FILE)
        for layer in row.get("layers") or []
    ]
    return pd.DataFrame(rows)


def sweep_dirs(source: str) -> list[Path]:
    """The sweep folders a source names (none for an MLflow URI or a parquet file)."""
    path = Path(source)
    if "://" in source or path.suffix == ".parquet":
        return []
    if (path / "state.json").exists():
        return [path]
    return sorted(p.parent for p in path.glob("*/state.json"))


def sweep_constraints(sources: Sequence[str]) -> list[dict]:
    """The constraints of the sweep folders' specs, each tagged with its sweep's name (the table's ``sweep``)."""
    import yaml

    found = []
    for source in sources:
        for sweep in sweep_dirs(str(source)):
            spec = yaml.safe_load((sweep / "spec.yaml").read_text()) if (sweep / "spec.yaml").exists() else {}
            name = sweep_meta(sweep)[0]
            found += [
                {"sweep": name, **c}
                for c in (spec or {}).get("constraints") or []
                if isinstance(c, dict) and "metric" in c
            ]
    return found


def feasible_mask(table: pd.DataFrame, constraints: Sequence[dict]) -> np.ndarray:
    """True where a row satisfies every constraint of its own sweep (a NaN metric does not); as each sweep's pareto.csv."""
    feasible = np.ones(len(table), dtype=bool)
    sweeps = table["sweep"].astype(object).to_numpy()
    for c in constraints:
        if c["metric"] not in table.columns:
            continue
        values = table[c["metric"]].to_numpy(dtype=float, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            ok = values >= c["min"] if c.get("min") is not None else values <= c["max"]
        feasible &= ~(sweeps == c["sweep"]) | ok
    return feasible


def from_mlflow(tracking_uri: str, experiment: str | None = None, parent_run_id: str | None = None) -> pd.DataFrame:
    """The table from an MLflow store: the child runs of one parent run, or of every sweep in an experiment."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    if parent_run_id:
        parents = [client.get_run(parent_run_id)]
        experiment_ids = [parents[0].info.experiment_id]
    else:
        experiments = [client.get_experiment_by_name(experiment)] if experiment else client.search_experiments()
        experiments = [e for e in experiments if e is not None]
        if not experiments:
            raise ResultsError(f"{tracking_uri}: no experiment named {experiment!r}")
        experiment_ids = [e.experiment_id for e in experiments]
        parents = client.search_runs(experiment_ids, filter_string="tags.`hoyersweep.sweep` != ''", max_results=50000)
        parents = [run for run in parents if "mlflow.parentRunId" not in run.data.tags]
    rows = []
    for parent in parents:
        searched = ",".join(sorted(k.removeprefix("search.") for k in parent.data.params if k.startswith("search.")))
        children = client.search_runs(
            experiment_ids, filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=50000
        )
        for run in children:
            metrics, tags = run.data.metrics, run.data.tags
            rows.append(
                {
                    **run.data.params,
                    **{name: metrics.get(f"final_{name}") for name in METRIC_COLUMNS},
                    "sweep": tags.get("hoyersweep.sweep"),
                    "trial_number": int(tags["hoyersweep.trial_number"]),
                    "status": tags.get("hoyersweep.status", "running"),
                    "message": tags.get("hoyersweep.message", ""),
                    "epochs_run": metrics.get("final_epochs"),
                    "mlflow_run_id": run.info.run_id,
                    "searched": searched,
                }
            )
    return _typed(rows)


def load_results(sources: str | os.PathLike | Iterable[str | os.PathLike]) -> pd.DataFrame:
    """One table from several sources: sweep folders, folders of sweeps, parquet files, or MLflow URIs.

    A folder holding sweep folders (e.g. ``results/``) loads every sweep in it.  A string with
    ``://`` is an MLflow tracking URI (every sweep in every experiment of that store).
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    frames = []
    for source in sources:
        text = str(source)
        if text.startswith("file://") and (Path(text.removeprefix("file://")) / "state.json").exists():
            text = text.removeprefix("file://")  # a file URI to a sweep folder, not an MLflow store
        path = Path(text)
        if "://" in text:
            frames.append(from_mlflow(text))
        elif path.suffix == ".parquet":
            frames.append(read_parquet(path))
        elif (path / "state.json").exists():
            frames.append(from_sweep_dir(path))
        elif path.is_dir() and (sweeps := sorted(p.parent for p in path.glob("*/state.json"))):
            frames.extend(from_sweep_dir(sweep) for sweep in sweeps)
        else:
            raise ResultsError(
                f"{text}: no sweep results here (expected a sweep folder, a folder of sweeps, a .parquet file or an MLflow URI)"
            )
    return _typed([]) if not frames else pd.concat(frames, ignore_index=True).pipe(lambda f: f.astype(COLUMNS))


def write_parquet(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Save a results table as parquet (pyarrow), dtypes kept."""
    table.to_parquet(path, engine="pyarrow", index=False)


def read_parquet(path: str | os.PathLike) -> pd.DataFrame:
    """Load a table saved by ``write_parquet`` with the schema's dtypes."""
    return pd.read_parquet(path, engine="pyarrow").astype(COLUMNS)
