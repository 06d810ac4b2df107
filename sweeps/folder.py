"""A sweep folder as one self-contained, location-independent unit.

A sweep folder holds everything a sweep needs to resume: ``state.json``, ``spec.yaml``,
``results.jsonl``, ``optuna.db``, ``mlflow.db`` + ``mlartifacts/`` and ``ray/``.  Copy or move
it anywhere and ``hoyersweep resume <folder>`` continues it *there*, in its own stores:

- every folder argument is made absolute (``resolve_sweep_dir``) before anything uses it, so
  no relative path reaches a Ray worker (whose working directory is not the driver's);
- ``state.json`` holds no path of the folder itself.  ``"tracking_uri": null`` means "this
  folder's own ``mlflow.db``" (``OWN_STORE``); only a store the user chose (``run
  --tracking-uri``) is written out, as given (a relative sqlite path made absolute).  The
  Optuna storage is always the folder's ``optuna.db``.  A legacy ``state.json`` (an absolute
  ``sqlite:///…/mlflow.db``) whose database is not in this folder, while this folder has its
  own ``mlflow.db``, was copied or moved: the folder's own store is used;
- MLflow's sqlite store records *absolute* artifact locations (``experiments.artifact_location``,
  ``runs.artifact_uri``); ``relocate_tracking_store`` points them at the folder's new place.

``verify_records`` checks a folder before a resume changes anything and refuses damaged or
missing records with a one-line ``SpecError`` naming the file (and line or field).

This module imports only the standard library and ``trainables.contract`` at import time
(``sweeps.spec`` is imported where an error is raised or a spec read), so torch-free readers
can use ``resolve_tracking_uri`` / ``tracking_uri_of`` cheaply.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from trainables.contract import (
    MLFLOW_ARTIFACTS_DIR,
    MLFLOW_FILE,
    OPTUNA_FILE,
    RESULTS_FILE,
    SPEC_FILE,
    STATE_FILE,
    TRIAL_NUMBER_KEY,
    parse_status,
    resolve_tracking_uri,
    sqlite_path,
)

OWN_STORE = None
"""The ``tracking_uri`` that ``state.json`` stores for the folder's own ``mlflow.db`` (JSON ``null``)."""

REQUIRED_STATE_KEYS: tuple[str, ...] = ("name", "sweep_id", "study_name", "problem_hash")

# (table, column) pairs where MLflow's SQL store keeps absolute artifact URIs; tables missing
# from an older schema are skipped.
ARTIFACT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
)


def _error(message: str) -> ValueError:
    """A ``sweeps.spec.SpecError`` (a ValueError the CLI prints as one line, exit status 2)."""
    from sweeps.spec import SpecError

    return SpecError(" ".join(message.split()))


# --- paths and URIs ------------------------------------------------------------------------


def resolve_sweep_dir(path: str | os.PathLike) -> Path:
    """The absolute, symlink-free path of a sweep folder argument (``~`` expanded)."""
    return Path(path).expanduser().resolve()


def optuna_url(sweep_dir: str | os.PathLike) -> str:
    """The absolute sqlite URL of the folder's Optuna storage (always the folder's own ``optuna.db``)."""
    return f"sqlite:///{resolve_sweep_dir(sweep_dir) / OPTUNA_FILE}"


def artifact_root_uri(sweep_dir: str | os.PathLike) -> str:
    """The file URI of the folder's ``mlartifacts`` (where the sweep's MLflow artifacts belong)."""
    return (resolve_sweep_dir(sweep_dir) / MLFLOW_ARTIFACTS_DIR).as_uri()


def absolute_tracking_uri(uri: str | None) -> str | None:
    """A user's tracking URI with a relative sqlite path made absolute (MLflow reads it relative to the cwd)."""
    path = sqlite_path(uri) if uri else None
    if path is None or path.is_absolute():
        return uri
    query = uri.partition("?")[2]
    return f"sqlite:///{path.expanduser().resolve()}" + (f"?{query}" if query else "")


def stored_tracking_uri(tracking_uri: str | None, sweep_dir: str | os.PathLike) -> str | None:
    """What ``state.json`` records: ``OWN_STORE`` (null) for the folder's own ``mlflow.db``, else the URI."""
    if tracking_uri is None:
        return OWN_STORE
    path = sqlite_path(tracking_uri)
    if path is not None and path.expanduser().resolve() == resolve_sweep_dir(sweep_dir) / MLFLOW_FILE:
        return OWN_STORE
    return tracking_uri


def is_own_store(tracking_uri: str, sweep_dir: str | os.PathLike) -> bool:
    return stored_tracking_uri(tracking_uri, sweep_dir) is OWN_STORE


# --- state.json ----------------------------------------------------------------------------


def read_state(sweep_dir: str | os.PathLike) -> dict[str, Any]:
    """The raw ``state.json`` of a folder; a one-line ``SpecError`` when it is missing or unreadable."""
    path = Path(sweep_dir) / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise _error(f"{path}: no sweep here (state file missing)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise _error(f"{path}: unreadable sweep state ({error})") from None
    except json.JSONDecodeError as error:
        raise _error(f"{path}: unreadable sweep state (not JSON: {error})") from None
    if not isinstance(state, dict):
        raise _error(f"{path}: unreadable sweep state (a JSON {type(state).__name__}, not an object)")
    missing = [key for key in REQUIRED_STATE_KEYS if not isinstance(state.get(key), str) or not state[key]]
    if missing:
        raise _error(f"{path}: unreadable sweep state (no {', '.join(missing)})")
    return state


# --- the spec ------------------------------------------------------------------------------


def spec_difference(started: Any, now: Any, where: str = "") -> str | None:
    """The first field (dotted, ``[i]`` for list items) where ``now`` differs from ``started``, else None.

    Keys ``started`` does not have are skipped: a field a later version added with its default
    is not an edit.
    """
    if isinstance(started, Mapping) and isinstance(now, Mapping):
        for key, value in started.items():
            if key not in now:
                if value is None:
                    continue
                return f"{where}.{key}" if where else str(key)
            if found := spec_difference(value, now[key], f"{where}.{key}" if where else str(key)):
                return found
        return None
    if isinstance(started, list) and isinstance(now, list):
        for index, (old, new) in enumerate(zip(started, now)):
            if found := spec_difference(old, new, f"{where}[{index}]"):
                return found
        return where if len(started) != len(now) else None
    same = started == now and isinstance(started, bool) == isinstance(now, bool)
    return None if same else (where or "spec")


def _field(values: Any, dotted: str) -> Any:
    for part in dotted.replace("[", ".[").split("."):
        if part.startswith("["):
            index = int(part[1:-1])
            values = values[index] if isinstance(values, list) and index < len(values) else None
        elif part:
            values = values.get(part) if isinstance(values, Mapping) else None
    return values


def verify_spec(sweep_dir: Path, state: Mapping[str, Any]) -> Any:
    """The folder's spec, parsed; a ``SpecError`` naming the first field edited since the sweep started.

    ``state.json`` keeps the spec as it was at creation (``spec``); legacy states without it
    skip the comparison.
    """
    from sweeps.spec import load_spec

    path = sweep_dir / SPEC_FILE
    if not path.exists():
        raise _error(f"{path}: spec file missing (the sweep's spec is part of its records)")
    spec, _ = load_spec(path)
    started = state.get("spec")
    if isinstance(started, Mapping):
        now = spec.model_dump(mode="json")
        if field := spec_difference(started, now):
            raise _error(
                f"{path}: {field} edited since the sweep started (was {_field(started, field)!r}, now "
                f"{_field(now, field)!r}); restore it to resume, or start a new sweep from the edited spec: "
                f"`hoyersweep run {path} --storage {sweep_dir.parent}`"
            )
    return spec


# --- records -------------------------------------------------------------------------------


def _record_problem(line: str) -> str | None:
    """Why a results.jsonl line is not a valid record, or None when it is one."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return "not JSON"
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object"
    number = row.get(TRIAL_NUMBER_KEY)
    if TRIAL_NUMBER_KEY not in row:
        return f"no {TRIAL_NUMBER_KEY}"
    if isinstance(number, bool) or not isinstance(number, int) or number < 0:
        return f"{TRIAL_NUMBER_KEY} {number!r} is not a trial number"
    if "status" not in row:
        return "no status"
    try:
        parse_status(row["status"])
    except ValueError:
        return f"unknown status {row['status']!r}"
    return None


def is_torn(text: str) -> bool:
    """Whether a ledger's text ends in a torn line: no final newline and the last line is not a valid record."""
    if not text or text.endswith("\n"):
        return False
    return _record_problem(text.rpartition("\n")[2]) is not None


def ledger_trial_numbers(path: Path) -> dict[int, int]:
    """Trial number → line number of every record in ``results.jsonl``; a ``SpecError`` naming a bad line.

    A torn last line (no final newline: a kill cut the write short) is not an error: the study
    still has that trial and the resume re-records it.  Blank lines carry nothing and are skipped.
    """
    if not path.exists():
        return {}
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise _error(f"{path}: unreadable ({error})") from None
    lines = text.split("\n")
    numbers: dict[int, int] = {}
    for index, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        problem = _record_problem(line)
        if problem is None:
            numbers.setdefault(int(json.loads(line)[TRIAL_NUMBER_KEY]), index)
            continue
        if index == len(lines):  # the last line has no newline after it: torn by a kill mid-write
            continue
        raise _error(
            f"{path}:{index}: not a valid record ({problem}); if that trial finished, {OPTUNA_FILE} still has it: "
            f"delete the line (`sed -i '{index}d' {path}`) and resume re-records it"
        )
    return numbers


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=60)


def _study_trials(path: Path, study_name: str) -> set[int] | None:
    """The trial numbers of ``study_name`` in an Optuna sqlite file (None: no such study); read-only."""
    with _read_only(path) as connection:
        found = connection.execute("SELECT study_id FROM studies WHERE study_name = ?", (study_name,)).fetchone()
        if found is None:
            return None
        rows = connection.execute("SELECT number FROM trials WHERE study_id = ?", (found[0],)).fetchall()
    return {int(number) for (number,) in rows}


def _has_run(path: Path, run_id: str) -> bool:
    with _read_only(path) as connection:
        return connection.execute("SELECT 1 FROM runs WHERE run_uuid = ?", (run_id,)).fetchone() is not None


def _damaged(error: sqlite3.DatabaseError) -> bool:
    """A definite sign of a damaged database (not a lock or a hot journal a read-only open cannot replay)."""
    text = str(error).lower()
    return "not a database" in text or "malformed" in text or "no such table" in text


def verify_records(sweep_dir: str | os.PathLike) -> Any:
    """Check a sweep folder's records before a resume changes anything; returns the folder's spec.

    Read-only (sqlite files are opened with ``mode=ro``).  Raises a one-line ``SpecError`` for:
    a missing or unreadable ``state.json``; a missing, invalid or edited ``spec.yaml`` (naming
    the first edited field); a ``results.jsonl`` line that is not a valid record (naming the
    line; a torn last line is recoverable and passes); a missing ``optuna.db`` (or one without
    the sweep's study) once the sweep has run or has results; a results line whose trial the
    study does not have; the folder's own ``mlflow.db`` missing, or without the sweep's parent
    run, once the sweep has one.
    """
    folder = resolve_sweep_dir(sweep_dir)
    state = read_state(folder)
    spec = verify_spec(folder, state)
    results = folder / RESULTS_FILE
    recorded = ledger_trial_numbers(results)
    has_run = bool(state.get("runs")) or bool(recorded)
    fresh = f"start afresh with `hoyersweep run {folder / SPEC_FILE} --storage {folder.parent}`"

    optuna_db = folder / OPTUNA_FILE
    if not optuna_db.exists():
        if has_run:
            what = f"{len(recorded)} result(s) in {RESULTS_FILE}" if recorded else "the sweep has run"
            raise _error(
                f"{optuna_db}: missing while {what}: the study (every configuration tried) is lost and "
                f"cannot be rebuilt from the records; resuming would train everything again, so nothing was done; "
                f"restore the file, or {fresh}"
            )
    elif has_run:
        try:
            trials = _study_trials(optuna_db, state["study_name"])
        except sqlite3.DatabaseError as error:
            if _damaged(error):
                raise _error(f"{optuna_db}: damaged ({error}); restore the file, or {fresh}") from None
            trials = set(recorded)  # unreadable right now (locked, a hot journal): not a verdict
        if trials is None:
            raise _error(
                f"{optuna_db}: has no study {state['study_name']!r} (not this sweep's study); "
                f"restore the file, or {fresh}"
            )
        if unknown := sorted(set(recorded) - trials):
            line = recorded[unknown[0]]
            raise _error(
                f"{results}:{line}: trial {unknown[0]} is not in {optuna_db.name}'s study "
                f"({len(unknown)} such line(s): the study is older than the results); restore {optuna_db.name}, "
                f"or {fresh}"
            )

    tracking_uri = resolve_tracking_uri(state.get("tracking_uri"), folder)
    parent = state.get("parent_run_id")
    mlflow_db = folder / MLFLOW_FILE
    if parent and is_own_store(tracking_uri, folder):
        if not mlflow_db.exists():
            raise _error(f"{mlflow_db}: missing while the sweep has MLflow runs (parent run {parent}); restore it")
        try:
            known = _has_run(mlflow_db, parent)
        except sqlite3.DatabaseError as error:
            if _damaged(error):
                raise _error(f"{mlflow_db}: damaged ({error}); restore the file") from None
            known = True
        if not known:
            raise _error(f"{mlflow_db}: has no parent run {parent} of this sweep; restore the file")
    return spec


# --- relocation ----------------------------------------------------------------------------


def _file_uri_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        return None
    return Path(unquote(parsed.path))


def relocate_tracking_store(sweep_dir: str | os.PathLike, experiment_name: str, tracking_uri: str) -> int:
    """Point a copied or moved folder's own MLflow store at the folder's ``mlartifacts``; returns rows changed.

    MLflow's sqlite store records absolute artifact locations: the experiment's
    ``artifact_location`` and every run's ``artifact_uri`` (and ``logged_models``).  After a copy
    they still name the original folder, so every artifact of the copy would land in the
    original.  MLflow has no public API to move them, so this is a hand-written fix: when the
    sweep's experiment location is a ``file:`` URI other than this folder's ``mlartifacts``, the
    old prefix is replaced by the new one in those columns, with ``sqlite3``, in one transaction,
    before any MLflow client opens the store.  Nothing is copied and nothing outside this folder
    is touched; a store the user chose (not the folder's own ``mlflow.db``) is left alone.
    """
    folder = resolve_sweep_dir(sweep_dir)
    database = folder / MLFLOW_FILE
    if not is_own_store(tracking_uri, folder) or not database.exists():
        return 0
    target = artifact_root_uri(folder)
    connection = sqlite3.connect(database, timeout=60)
    try:
        with connection:
            found = connection.execute(
                "SELECT artifact_location FROM experiments WHERE name = ?", (experiment_name,)
            ).fetchone()
            old = found[0] if found else None
            old_path = _file_uri_path(old) if old else None
            if old_path is None or old_path == folder / MLFLOW_ARTIFACTS_DIR:
                return 0
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            changed = 0
            for table, column in ARTIFACT_COLUMNS:
                if table not in tables:
                    continue
                cursor = connection.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) "  # noqa: S608 - fixed names
                    f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                    (target, len(old) + 1, old, len(old) + 1, old + "/"),
                )
                changed += cursor.rowcount
            return changed
    finally:
        connection.close()
