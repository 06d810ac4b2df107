"""``hoyersweep import DIR``: an ask/tell folder (``python -m sweeps.asktell``) recorded as a normal sweep folder.

The folder's results go through the sweep's own recording path — ``sweeps.recorder.SweepRecorder``
(ledger row, MLflow child run with curves, per-layer table, data inputs, error log) and
``sweeps.runner.finalize_sweep`` (Pareto tags, ``pareto.csv``, front models and the knee, the
report on the parent run) — so ``hoyersweep pareto``, ``report`` and ``export`` work on the result
exactly as on a ``hoyersweep run`` sweep.  Models are copied into the sweep folder; the Optuna
study is copied into its ``optuna.db`` trial by trial (same numbers, each linked to its MLflow
run).

The import keeps the ask/tell folder's sweep id, so importing the same folder again finds the
earlier import under ``--storage`` and adds only results it does not hold yet (none: one line,
nothing changed; a driver rerun with a larger ``--num-samples`` updates the sweep's budget).
Everything is verified before anything is written: a missing or torn ledger, a result file
missing, a spec edited since the driver ran or differing from the earlier import's is refused in
one line naming the file (a ``SpecError``).  The study is copied first, so an import cut short
is completed by importing again.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from sweeps.asktell import DRIVER_FILE, TRIALS_DIR, DriverState, journal_storage, spec_change
from sweeps.folder import is_torn, ledger_trial_numbers, read_state, resolve_sweep_dir, spec_difference, verify_records
from sweeps.spec import SpecError, SweepSpec, load_spec
from sweeps.study import Member
from trainables.contract import (
    LOGS_DIR,
    MLFLOW_RUN_ATTR,
    MODEL_FILE_KEY,
    MODELS_DIR,
    RESULTS_FILE,
    SPEC_FILE,
    STATE_FILE,
    TrialResult,
    read_ledger,
)


@dataclass(frozen=True)
class Source:
    """A verified ask/tell folder: its state, spec, ledger rows (by trial number) and full results."""

    folder: Path
    state: DriverState
    spec: SweepSpec
    rows: dict[int, dict[str, Any]]

    def result(self, number: int) -> TrialResult:
        return TrialResult.from_dict(json.loads(result_file(self.folder, number).read_text()))


def result_file(folder: Path, number: int) -> Path:
    return folder / TRIALS_DIR / f"trial-{number:04d}.json"


def read_source(folder: str | Path) -> Source:
    """Verify an ask/tell folder, read-only; a one-line ``SpecError`` naming the first bad file."""
    folder = resolve_sweep_dir(folder)
    state = DriverState.load(folder)
    spec_path = folder / SPEC_FILE
    if not spec_path.exists():
        raise SpecError(f"{spec_path}: missing (the spec the driver ran)")
    spec, _ = load_spec(spec_path)
    if changed := spec_difference(state.spec, spec.model_dump(mode="json")):
        raise SpecError(f"{spec_path}: {changed} differs from the spec in {DRIVER_FILE} (edited since the driver ran)")
    ledger = folder / RESULTS_FILE
    if not ledger.exists():
        raise SpecError(f"{ledger}: missing (no results to import)")
    numbers = ledger_trial_numbers(ledger)  # a bad line: one line naming it
    if is_torn(ledger.read_text()):
        raise SpecError(
            f"{ledger}: the last line is torn (the driver was killed mid-write); rerun the driver's command to "
            f"repair it, then import"
        )
    if not numbers:
        raise SpecError(f"{ledger}: no results to import")
    rows = {int(row["trial_number"]): row for row in read_ledger(ledger)}
    for number in sorted(rows):
        path = result_file(folder, number)
        try:
            TrialResult.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as error:
            raise SpecError(f"{path}: unreadable result of trial {number} ({' '.join(str(error).split())})") from None
    study = load_source_study(folder, state)
    missing = sorted(set(rows) - {t.number for t in study.get_trials(deepcopy=False)})
    if missing:
        raise SpecError(f"{ledger}: trial {missing[0]} is not in the Optuna journal ({len(missing)} such result(s))")
    return Source(folder, state, spec, rows)


def load_source_study(folder: Path, state: DriverState) -> optuna.Study:
    journal = folder / "optuna.journal"
    if not journal.exists():
        raise SpecError(f"{journal}: missing (the Optuna study of the folder)")
    try:
        return optuna.load_study(study_name=state.study_name, storage=journal_storage(folder))
    except KeyError:
        raise SpecError(f"{journal}: has no study {state.study_name!r}") from None


def earlier_import(storage: Path, source: Source) -> Path | None:
    """The sweep folder under ``storage`` that an earlier import of this ask/tell folder made, if any."""
    for state_file in sorted(storage.glob(f"*/{STATE_FILE}")):
        try:
            if read_state(state_file.parent).get("sweep_id") == source.state.sweep_id:
                return state_file.parent
        except ValueError:
            continue
    return None


def check_earlier(target: Path, source: Source) -> None:
    """An earlier import must be of the same spec (but for a grown ``budget.num_samples``: the driver ran on),
    with records a resume would accept (read-only checks)."""
    verify_records(target)
    started = read_state(target).get("spec") or {}
    now = source.spec.model_dump(mode="json")
    if changed := spec_change(started, now) or spec_change(now, started):
        raise SpecError(
            f"{source.folder / SPEC_FILE}: {changed} differs from the spec of the earlier import {target} "
            f"(import into another --storage)"
        )


def copy_models(source: Source, target: Path, result: TrialResult) -> TrialResult:
    """The result with its model copied into the sweep folder's ``models/`` (the path the ledger records)."""
    path = result.extra.get(MODEL_FILE_KEY)
    if not path:
        return result
    local = source.folder / MODELS_DIR / Path(path).name  # the folder may have moved since the driver ran
    if not local.exists():
        result.extra.pop(MODEL_FILE_KEY)
        return result
    destination = target / MODELS_DIR / local.name
    destination.parent.mkdir(parents=True, exist_ok=True)
    if not destination.exists():
        shutil.copy2(local, destination)
    result.extra[MODEL_FILE_KEY] = str(destination)
    return result


def copy_study(source: optuna.Study, storage: optuna.storages.BaseStorage, name: str, runs: Mapping[int, str]) -> None:
    """Rebuild the sweep's study from the ask/tell study: every trial under its own number, linked to its run.

    Rebuilt whole on every import (the ask/tell study is the truth; finished trials cannot be
    edited), so trial numbers always match the ledger's.
    """
    try:
        optuna.delete_study(study_name=name, storage=storage)
    except KeyError:
        pass
    study = optuna.create_study(storage=storage, study_name=name, directions=source.directions)
    study.set_metric_names(source.metric_names)
    for key, value in source.user_attrs.items():
        study.set_user_attr(key, value)
    for trial in sorted(source.get_trials(deepcopy=False), key=lambda t: t.number):
        attrs = {**trial.user_attrs, **({MLFLOW_RUN_ATTR: runs[trial.number]} if runs.get(trial.number) else {})}
        study.add_trial(
            optuna.trial.create_trial(
                state=trial.state,
                values=trial.values,
                params=trial.params,
                distributions=trial.distributions,
                user_attrs=attrs,
                system_attrs=trial.system_attrs,
            )
        )


@dataclass(frozen=True)
class Imported:
    """What an import did: the sweep folder and how many results it added (0: it held them all already)."""

    sweep_dir: Path
    added: int
    total: int


def import_folder(
    folder: str | Path, storage: str | None = None, tracking_uri: str | None = None, quiet: bool = False
) -> Imported:
    """Record an ask/tell folder as a sweep under ``storage`` (default: the spec's), or add to an earlier import."""
    from sweeps.progress import Progress
    from sweeps.recorder import SweepRecorder
    from sweeps.records import ResultsLedger, SweepState, now_iso
    from sweeps.runner import finalize_sweep, optuna_storage, prepare_sweep, start_tracking

    source = read_source(folder)
    spec = source.spec
    root = Path(storage or spec.storage)
    target = earlier_import(root, source)
    if target is not None:
        check_earlier(target, source)
        held = ledger_trial_numbers(target / RESULTS_FILE)
        fresh = sorted(set(source.rows) - set(held))
        if not fresh:
            return Imported(target, 0, len(held))
        state = SweepState.load(target)
        state.spec = source.spec.model_dump(mode="json")  # the budget the driver ran to, in both records
        (target / SPEC_FILE).write_text(yaml.safe_dump(state.spec, sort_keys=False))
    else:
        fresh = sorted(source.rows)
        target, state = prepare_sweep(spec, str(root), tracking_uri)
        state.sweep_id, state.study_name = source.state.sweep_id, source.state.study_name
    started = time.time()
    study_storage = optuna_storage(target)
    source_study = load_source_study(source.folder, source.state)
    held_runs = {n: row["mlflow_run_id"] for n, row in ResultsLedger(target / RESULTS_FILE).rows.items()}
    copy_study(source_study, study_storage, state.study_name, held_runs)  # first: a cut-short import stays resumable
    state.runs.append({"started": now_iso(), "imported_from": str(source.folder)})
    tracker = start_tracking(spec, target, state)
    state.status = "running"
    state.save(target)
    first = source.rows[min(source.rows)]
    fixed = {k: v for k, v in (first.get("config") or {}).items() if k not in spec.search}
    progress = Progress(state.name, spec.budget.num_samples, started, quiet=True)
    ledger = ResultsLedger(target / RESULTS_FILE)
    recorder = SweepRecorder(
        spec, state.name, fixed, tracker, ledger, progress, driver_run=len(state.runs), logs_dir=target / LOGS_DIR
    )
    for number in fresh:
        row = source.rows[number]
        params = {k.removeprefix("param."): v for k, v in row.items() if k.startswith("param.")}
        result = copy_models(source, target, source.result(number))
        recorder.finished(Member(number, params), result, str(row.get("ray_trial_id") or ""), kept=row)
    recorder.close()
    runs = {number: row["mlflow_run_id"] for number, row in ledger.rows.items() if row.get("mlflow_run_id")}
    copy_study(source_study, study_storage, state.study_name, runs)
    study = optuna.load_study(study_name=state.study_name, storage=study_storage)
    finalize_sweep(spec, target, state, study, recorder, started, quiet)
    return Imported(target, len(fresh), len(ledger.rows))
