"""The sweep folder's own records: ``state.json`` (identity, MLflow parent) and ``results.jsonl``.

``state.json`` holds no path of the folder itself (``sweeps.folder``): ``"tracking_uri": null``
is the folder's own ``mlflow.db`` (in memory, ``SweepState.tracking_uri`` is always the absolute
URI of the store in use, resolved against wherever the folder is now); ``spec`` is the spec as
it was when the sweep started, so a resume can tell an edited ``spec.yaml``.

``results.jsonl`` is the sweep's result ledger: one JSON line per finished trial of this sweep,
appended by the driver when Ray reports the trial finished and never rewritten (only a torn last
line a kill left is cut off when the ledger is reopened: the study still has that trial), keyed by the
Optuna trial number so a resumed sweep cannot write a trial twice.  ``analysis/`` reads it.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sweeps.folder import is_torn, read_state, stored_tracking_uri
from trainables.config import TrialConfig
from trainables.contract import (
    COHORT_INDEX_KEY,
    COHORT_SIZE_KEY,
    METRICS,
    MODEL_FILE_KEY,
    SHARED_RUN_KEY,
    STATE_FILE,
    STOPPED_AT_KEY,
    TrialResult,
    read_ledger,
    resolve_tracking_uri,
)

LEDGER_METRICS: tuple[str, ...] = (*METRICS, "epochs", "resumed_from_epoch")
# shared_run: a branch's regularized run; model_file: its saved model; stopped_at_rung: where moasha stopped it;
# cohort_size / cohort_index: the cohort a trial trained in (budget.cohort_size > 1) and its place there
LEDGER_EXTRAS: tuple[str, ...] = (
    "report_wait_s",
    "node_id",
    SHARED_RUN_KEY,
    MODEL_FILE_KEY,
    STOPPED_AT_KEY,
    COHORT_SIZE_KEY,
    COHORT_INDEX_KEY,
)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def trial_params(fixed: Mapping[str, Any], searched: Mapping[str, Any], sampled: Mapping[str, Any]) -> dict[str, Any]:
    """Every TrialConfig setting of a member as it ran: defaults, fixed settings, sampled values of ``searched``."""
    return {**TrialConfig().to_dict(), **fixed, **{k: v for k, v in sampled.items() if k in searched}}


def ledger_row(
    sweep: str,
    number: int,
    params: Mapping[str, Any],
    result: TrialResult,
    *,
    searched: Mapping[str, Any],
    config: dict[str, Any],
    driver_run: int,
    mlflow_run_id: str | None = None,
    ray_trial_id: str = "",
    finished_at: str | None = None,
) -> dict[str, Any]:
    """One ``results.jsonl`` line: a member's sampled params, its result's metrics and extras, where it is recorded.

    The one place the row's shape is decided: the Ray sweep's recorder and the Ray-free driver
    (``sweeps.asktell``) both write these rows, and ``analysis.results`` reads them.
    """
    values = result.to_dict()
    return {
        "sweep": sweep,
        "trial_number": number,
        "status": result.status.value,
        "message": result.message,
        **{f"param.{k}": v for k, v in params.items() if k in searched},
        **{k: values.get(k) for k in (*LEDGER_METRICS, *LEDGER_EXTRAS)},
        "driver_run": driver_run,
        "config": config,
        "mlflow_run_id": mlflow_run_id,
        "ray_trial_id": ray_trial_id,
        "finished_at": finished_at or now_iso(),
        "layers": result.layers,
    }


@dataclass
class SweepState:
    """What identifies a sweep and lets ``resume`` pick it up again."""

    name: str
    sweep_id: str
    study_name: str
    problem_hash: str
    tracking_uri: str
    parent_run_id: str | None = None
    created: str = field(default_factory=now_iso)
    status: str = "running"
    runs: list[dict[str, Any]] = field(default_factory=list)
    exhausted: str = ""  # why the search space ran out, once it has: nothing is left to propose
    spec: dict[str, Any] | None = None  # the spec when the sweep started (None in states written before it)

    def __post_init__(self) -> None:
        self._run_notes: dict[str, Any] = {}
        self._runs_before = len(self.runs)  # runs appended after this are this driver's

    @classmethod
    def new(cls, name: str, problem_hash: str, tracking_uri: str, spec: dict[str, Any] | None = None) -> SweepState:
        sweep_id = uuid.uuid4().hex[:8]
        return cls(
            name=name,
            sweep_id=sweep_id,
            study_name=f"{name}-{sweep_id}",
            problem_hash=problem_hash,
            tracking_uri=tracking_uri,
            spec=spec,
        )

    @classmethod
    def load(cls, sweep_dir: Path) -> SweepState:
        """The state of the folder, its tracking URI resolved against where the folder is now.

        A one-line ``SpecError`` (a ValueError) when ``state.json`` is missing or unreadable.
        """
        values = read_state(sweep_dir)
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(values) - known):
            from sweeps.spec import SpecError

            raise SpecError(f"{sweep_dir / STATE_FILE}: unreadable sweep state (unknown field {unknown[0]!r})")
        values["tracking_uri"] = resolve_tracking_uri(values.get("tracking_uri"), sweep_dir)
        return cls(**values)

    def note_run(self, **notes: Any) -> None:
        """Facts about this driver's run (say a ``data_dir`` override), written into the run it appends."""
        self._run_notes.update(notes)

    def save(self, sweep_dir: Path) -> None:
        """Write ``state.json``; the folder's own MLflow store is recorded as ``null`` (no path of the folder)."""
        for run in self.runs[self._runs_before :]:
            run.update(self._run_notes)
        values = asdict(self)
        values["tracking_uri"] = stored_tracking_uri(self.tracking_uri, sweep_dir)
        write_atomic(sweep_dir / STATE_FILE, json.dumps(values, indent=2))


def write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class ResultsLedger:
    """Append-only JSON-lines file of finished trials, at most one line per trial number."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[int, dict[str, Any]] = {int(row["trial_number"]): row for row in read_ledger(path)}
        if path.exists() and (text := path.read_text()) and not text.endswith("\n"):
            if is_torn(text):  # a line a kill cut short: drop it (the study has that trial; it is re-recorded)
                data = path.read_bytes()
                with path.open("r+b") as handle:
                    handle.truncate(data.rfind(b"\n") + 1)
            else:  # a whole record without its newline: end it, so appends stay separate
                with path.open("a") as handle:
                    handle.write("\n")

    def __contains__(self, trial_number: int) -> bool:
        return trial_number in self.rows

    def append(self, row: dict[str, Any]) -> None:
        number = int(row["trial_number"])
        if number in self.rows:
            return
        clean = {key: _json_value(value) for key, value in row.items()}
        with self.path.open("a") as handle:
            handle.write(json.dumps(clean, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.rows[number] = clean
