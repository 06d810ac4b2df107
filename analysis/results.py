"""One results table from stored sweeps: a sweep folder, an MLflow store, or several at once.

Schema (``COLUMNS``; one row per trial, the same dtypes whatever the source):

- identity: ``sweep``, ``trial_number``, ``status`` (a ``trainables.contract.Status`` name:
  ``ok``, ``failed``, ``diverged``, ``pruned``, ``interrupted``; ``running`` for an MLflow run
  that has no status yet), ``message``, ``mlflow_run_id``, ``searched`` (comma-separated names
  of the settings Optuna sampled in that sweep);
- every trial setting of ``trainables.config.TrialConfig`` under its own name (``reg``,
  ``strength``, ``threshold``, ``threshold_mode``, ``model``, ``dataset``, ``epochs``, …) —
  the sampled ones and the fixed ones alike;
- final metrics: every ``trainables.contract.METRICS`` name (``val_accuracy``,
  ``test_accuracy``, ``nonzero_frac``, ``flops_frac``, ``loss``, ``val_loss``,
  ``val_accuracy_before_prune``, ``val_accuracy_after_prune``, ``wall_time_s``) and
  ``epochs_run``.

Trials that did not finish ok are kept with their status (their metrics NaN); the front
functions in ``analysis.pareto`` keep them off every front.  Statuses written by older
versions load under their current names (``error`` → ``failed``, ``stopped`` →
``interrupted``), whichever the source.  Per-layer sparsity is a separate long table
(``load_layers``).  This module only reads what sweeps stored; it imports
``trainables.contract`` and ``trainables.config`` (both torch-free), never ``sweeps``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trainables.config import TrialConfig
from trainables.contract import (
    FINAL_PREFIX,
    MESSAGE_TAG,
    METRICS,
    PARENT_RUN_TAG,
    RESULTS_FILE,
    SEARCH_PARAM_PREFIX,
    SPEC_FILE,
    STATE_FILE,
    STATUS_TAG,
    SWEEP_TAG,
    TRIAL_NUMBER_KEY,
    TRIAL_TAG,
    Axis,
    Constraint,
    is_sweep_dir,
    parse_status,
    read_ledger,
    region_of,
)

METRIC_COLUMNS: tuple[str, ...] = tuple(METRICS)
RUNNING = "running"
"""The status of an MLflow trial run with no status tag yet (still running); not a contract status."""

_SETTING_DTYPES = {"float": "float64", "int": "Int64", "bool": "boolean", "str": "string"}


def _setting_dtype(annotation: str) -> str:
    base = annotation.replace(" | None", "").strip()
    return _SETTING_DTYPES.get(base, "string")


SETTING_COLUMNS: dict[str, str] = {f.name: _setting_dtype(str(f.type)) for f in fields(TrialConfig)}
SETTING_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(TrialConfig)}
COLUMNS: dict[str, str] = {
    "sweep": "string",
    TRIAL_NUMBER_KEY: "Int64",
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


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


def status_name(value: Any) -> str | None:
    """A stored status under its current name: ``Status`` names as they are, legacy ones mapped.

    ``error`` → ``failed``, ``stopped`` → ``interrupted``; a missing status stays missing and a
    name the contract does not know (``running``) is kept as written rather than dropped.
    """
    if _missing(value):
        return None
    try:
        return parse_status(str(value)).value
    except ValueError:
        return str(value)


def _statuses(column: pd.Series) -> pd.Series:
    """``status_name`` over a column, once per distinct value."""
    names = {value: status_name(value) for value in column.dropna().unique()}
    return column.map(names, na_action="ignore")


def _typed(rows: list[dict[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """Rows to a frame with exactly ``COLUMNS`` in order and dtypes (missing values as NA), statuses current."""
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["status"] = _statuses(frame["status"].astype(object))
    for column, dtype in COLUMNS.items():
        if dtype == "boolean":
            frame[column] = frame[column].map(_parse_bool).astype(dtype)
        elif dtype in ("float64", "Int64"):
            frame[column] = pd.to_numeric(frame[column].replace({"None": None}), errors="coerce").astype(dtype)
        else:
            frame[column] = frame[column].map(lambda v: None if _missing(v) or v == "None" else str(v)).astype(dtype)
    return frame.sort_values(["sweep", TRIAL_NUMBER_KEY], kind="stable").reset_index(drop=True)


def _parse_bool(value: Any) -> bool | None:
    if _missing(value) or value == "None":
        return None
    if isinstance(value, str):
        return value.lower() == "true"
    return bool(value)


def _read_spec(sweep_dir: Path) -> dict[str, Any]:
    import yaml

    path = sweep_dir / SPEC_FILE
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def sweep_meta(sweep_dir: Path) -> tuple[str, str]:
    """(sweep name, comma-joined searched names) from the sweep folder's state and spec."""
    state = json.loads((sweep_dir / STATE_FILE).read_text())
    return state["name"], ",".join(sorted(_read_spec(sweep_dir).get("search") or {}))


def from_sweep_dir(sweep_dir: str | os.PathLike) -> pd.DataFrame:
    """The table of one sweep folder, from its results ledger (``results.jsonl``)."""
    sweep_dir = Path(sweep_dir)
    if not is_sweep_dir(sweep_dir):
        raise ResultsError(f"{sweep_dir}: not a sweep folder (no {STATE_FILE})")
    name, searched = sweep_meta(sweep_dir)
    rows = [
        {
            **row.get("config", {}),
            **{k: row.get(k) for k in METRIC_COLUMNS},
            "sweep": name,
            TRIAL_NUMBER_KEY: row[TRIAL_NUMBER_KEY],
            "status": row["status"],
            "message": row.get("message"),
            "epochs_run": row.get("epochs"),
            "mlflow_run_id": row.get("mlflow_run_id"),
            "searched": searched,
        }
        for row in read_ledger(sweep_dir / RESULTS_FILE)
    ]
    return _typed(rows)


def load_layers(sweep_dir: str | os.PathLike) -> pd.DataFrame:
    """Per-layer sparsity of every trial of a sweep folder: one row per (trial, layer)."""
    sweep_dir = Path(sweep_dir)
    name, _ = sweep_meta(sweep_dir)
    rows = [
        {
            "sweep": name,
            TRIAL_NUMBER_KEY: row[TRIAL_NUMBER_KEY],
            **layer,
            "shape": "x".join(map(str, layer["shape"])),
        }
        for row in read_ledger(sweep_dir / RESULTS_FILE)
        for layer in row.get("layers") or []
    ]
    return pd.DataFrame(rows)


def sweep_dirs(source: str) -> list[Path]:
    """The sweep folders a source names (none for an MLflow URI or a parquet file)."""
    path = Path(source)
    if "://" in source or path.suffix == ".parquet":
        return []
    if is_sweep_dir(path):
        return [path]
    return sorted(p.parent for p in path.glob(f"*/{STATE_FILE}"))


# --------------------------------------------------------------------------- constraints


@dataclass(frozen=True)
class SweepConstraint:
    """A ``trainables.contract.Constraint`` of one sweep's spec (``sweep`` None: of every sweep)."""

    sweep: str | None
    constraint: Constraint

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SweepConstraint:
        """From ``{"sweep": ..., "metric": ..., "min"|"max": ...}`` (the constraint part as in a spec)."""
        return cls(values.get("sweep"), Constraint.from_dict(values))

    def describe(self) -> str:
        text = self.constraint.describe()
        return text if self.sweep is None else f"{self.sweep}: {text}"


def sweep_region(sources: Sequence[str]) -> dict[str, Axis] | None:
    """The hypervolume region of the first sweep folder among ``sources`` (``contract.region_of`` of its spec).

    None without a sweep folder or when its objectives have no known range.
    """
    for source in sources:
        for sweep in sweep_dirs(str(source)):
            spec = _read_spec(sweep)
            objectives = [o["metric"] for o in spec.get("objectives") or [] if isinstance(o, dict) and "metric" in o]
            constraints = [Constraint.from_dict(c) for c in spec.get("constraints") or [] if isinstance(c, dict)]
            return region_of(objectives, constraints, spec.get("hypervolume") or {})
    return None


def sweep_constraints(sources: Sequence[str]) -> list[SweepConstraint]:
    """The constraints of the sweep folders' specs, each tagged with its sweep's name (the table's ``sweep``)."""
    found = []
    for source in sources:
        for sweep in sweep_dirs(str(source)):
            name = sweep_meta(sweep)[0]
            for values in _read_spec(sweep).get("constraints") or []:
                try:
                    found.append(SweepConstraint(name, Constraint.from_dict(values)))
                except (KeyError, TypeError, ValueError) as error:
                    raise ResultsError(f"{sweep / SPEC_FILE}: bad constraint {values!r}: {error}") from None
    return found


def feasible_mask(table: pd.DataFrame, constraints: Iterable[SweepConstraint | Mapping[str, Any]]) -> np.ndarray:
    """True where a row satisfies every constraint of its own sweep, as each sweep's ``pareto.csv``.

    The rule is ``Constraint.satisfied``, applied to whole columns: a NaN or missing value (or
    a metric the table lacks) never satisfies a bound.  Each constraint is a ``SweepConstraint``
    or a mapping ``{"sweep", "metric", "min"|"max"}``.
    """
    feasible = np.ones(len(table), dtype=bool)
    for item in constraints:
        sc = item if isinstance(item, SweepConstraint) else SweepConstraint.from_dict(item)
        constraint = sc.constraint
        if sc.sweep is None:
            applies = np.ones(len(table), dtype=bool)
        else:
            applies = table["sweep"].eq(sc.sweep).fillna(False).to_numpy(dtype=bool)
        if constraint.metric in table.columns:
            values = pd.to_numeric(table[constraint.metric], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
            with np.errstate(invalid="ignore"):
                ok = np.asarray(constraint.satisfied(values), dtype=bool)
        else:
            ok = np.zeros(len(table), dtype=bool)
        feasible &= ~applies | ok
    return feasible


# --------------------------------------------------------------------------- sources


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
        parents = client.search_runs(experiment_ids, filter_string=f"tags.`{SWEEP_TAG}` != ''", max_results=50000)
        parents = [run for run in parents if PARENT_RUN_TAG not in run.data.tags]
    rows = []
    for parent in parents:
        searched = ",".join(
            sorted(k.removeprefix(SEARCH_PARAM_PREFIX) for k in parent.data.params if k.startswith(SEARCH_PARAM_PREFIX))
        )
        children = client.search_runs(
            experiment_ids,
            filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent.info.run_id}'",
            max_results=50000,
        )
        for run in children:
            metrics, tags = run.data.metrics, run.data.tags
            rows.append(
                {
                    **run.data.params,
                    **{name: metrics.get(f"{FINAL_PREFIX}{name}") for name in METRIC_COLUMNS},
                    "sweep": tags.get(SWEEP_TAG),
                    TRIAL_NUMBER_KEY: int(tags[TRIAL_TAG]),
                    "status": tags.get(STATUS_TAG, RUNNING),  # older sweeps' names are mapped in _typed
                    "message": tags.get(MESSAGE_TAG, ""),
                    "epochs_run": metrics.get(f"{FINAL_PREFIX}epochs"),
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
        if text.startswith("file://") and is_sweep_dir(text.removeprefix("file://")):
            text = text.removeprefix("file://")  # a file URI to a sweep folder, not an MLflow store
        path = Path(text)
        if "://" in text:
            frames.append(from_mlflow(text))
        elif path.suffix == ".parquet":
            frames.append(read_parquet(path))
        elif is_sweep_dir(path):
            frames.append(from_sweep_dir(path))
        elif path.is_dir() and (sweeps := sweep_dirs(text)):
            frames.extend(from_sweep_dir(sweep) for sweep in sweeps)
        else:
            raise ResultsError(
                f"{text}: no sweep results here "
                "(expected a sweep folder, a folder of sweeps, a .parquet file or an MLflow URI)"
            )
    return _typed([]) if not frames else pd.concat(frames, ignore_index=True).pipe(lambda f: f.astype(COLUMNS))


def write_parquet(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Save a results table as parquet (pyarrow), dtypes kept."""
    table.to_parquet(path, engine="pyarrow", index=False)


def read_parquet(path: str | os.PathLike) -> pd.DataFrame:
    """Load a table saved by ``write_parquet`` with the schema's dtypes (older status names mapped)."""
    table = pd.read_parquet(path, engine="pyarrow")
    if "status" in table.columns:
        table["status"] = _statuses(table["status"].astype(object))
    for column in COLUMNS:
        if column not in table.columns:  # saved before the column existed: a setting's trials ran at its default
            table[column] = SETTING_DEFAULTS.get(column)
    return table.astype(COLUMNS)
