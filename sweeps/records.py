"""The sweep folder's own records: ``state.json`` (identity, MLflow parent) and ``results.jsonl``.

``results.jsonl`` is the sweep's result ledger: one JSON line per finished trial of this sweep,
appended by the driver when Ray reports the trial finished and never rewritten, keyed by the
Optuna trial number so a resumed sweep cannot write a trial twice.  ``analysis/`` reads it.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trainables.contract import STATE_FILE, read_ledger


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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

    @classmethod
    def new(cls, name: str, problem_hash: str, tracking_uri: str) -> SweepState:
        sweep_id = uuid.uuid4().hex[:8]
        return cls(
            name=name,
            sweep_id=sweep_id,
            study_name=f"{name}-{sweep_id}",
            problem_hash=problem_hash,
            tracking_uri=tracking_uri,
        )

    @classmethod
    def load(cls, sweep_dir: Path) -> SweepState:
        path = sweep_dir / STATE_FILE
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no sweep here (state file missing)") from None
        except (json.JSONDecodeError, TypeError) as error:
            raise ValueError(f"{path}: unreadable sweep state: {error}") from None

    def save(self, sweep_dir: Path) -> None:
        write_atomic(sweep_dir / STATE_FILE, json.dumps(asdict(self), indent=2))


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
            with path.open("a") as handle:  # end a line cut short by a kill, so appends stay separate
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
