"""The one writer of a sweep's records: the results ledger, the MLflow runs and the live front.

Ray Tune's callbacks run on the driver loop, and a trial's ``tune.report`` waits until the
driver has handled the report, so slow sqlite writes there would slow every trial.
``RecorderCallback`` therefore only queues events; one writer thread in ``SweepRecorder`` does
them in order, writing buffered epochs one batch per run whenever the queue runs dry.  The same
methods, called directly, repair records when a sweep resumes (``repair_records``).

Every event names a *member* (an Optuna trial number), not a Ray trial: one Ray trial may train
several members, each recorded exactly as if it had been trained alone.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, Protocol

import optuna
import pandas as pd
from ray import tune

from analysis.pareto import nondominated_mask, region_hypervolume
from sweeps import processes
from sweeps.progress import Progress
from sweeps.records import ResultsLedger, ledger_row, trial_params
from sweeps.searcher import FINISHED_STATES, Member, members_of, own_trials, result_from_attrs
from sweeps.spec import SweepSpec
from sweeps.tracking import SweepTracker
from trainables.contract import (
    MLFLOW_RUN_ATTR,
    MODEL_FILE_KEY,
    RESULT_STATUSES,
    TRIAL_NUMBER_KEY,
    Status,
    TrialResult,
    feasible,
)

logger = logging.getLogger(__name__)
EPOCH_FLUSH_S = 2.0  # live epoch curves reach MLflow at most this late; fewer sqlite commits on the driver


def current_front(spec: SweepSpec, rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """The Pareto front of the ok ledger rows that meet the spec's constraints (``contract.feasible``)."""
    constraints = spec.constraint_rules
    eligible = [row for row in rows if row["status"] == Status.OK and feasible(row, constraints)]
    if not eligible:
        return pd.DataFrame()
    table = pd.DataFrame(eligible)
    mask = nondominated_mask(table[spec.metric_names].to_numpy(dtype=float), spec.modes)
    front = table[mask].sort_values(spec.metric_names[0], ascending=spec.modes[0] == "min")
    return front.reset_index(drop=True)


SPLITS: dict[str, str] = {"train": "train", "validation": "val", "test": "test"}  # MLflow context → result key


def data_identity(dataset: str, data_dir: str | None) -> tuple[str, str]:
    """Where the data comes from and a digest of it (MD5 over the files of ``data_dir``, in name order).

    The embedded digits: scikit-learn's loader and version.  A folder that cannot be read has the
    digest ``unreadable`` (the trial that used it succeeded, so this is only a record).
    """
    if dataset == "digits" or not data_dir:
        return "sklearn.datasets.load_digits", f"scikit-learn-{package_version('scikit-learn')}"
    digest = hashlib.md5(usedforsecurity=False)
    try:
        for path in sorted(p for p in Path(data_dir).iterdir() if p.is_file()):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    except OSError:
        return str(data_dir), "unreadable"
    return str(data_dir), digest.hexdigest()[:16]


def sweep_progress(spec: SweepSpec, front: pd.DataFrame) -> dict[str, float]:
    """What the parent run records after each result: the front's size and its region hypervolume."""
    region = spec.region()
    metrics = {"front_size": float(len(front))}
    if region is not None:
        metrics["region_hypervolume"] = region_hypervolume(front, region, status_col=None) if len(front) else 0.0
    return metrics


class SweepRecorder:
    """Records each member of this sweep in MLflow and the results ledger, and reports progress."""

    def __init__(
        self,
        spec: SweepSpec,
        name: str,
        fixed: dict[str, Any],
        tracker: SweepTracker,
        ledger: ResultsLedger,
        progress: Progress,
        driver_run: int = 1,
        logs_dir: Path | None = None,
    ) -> None:
        self.spec = spec
        self.name = name
        self.fixed = fixed
        self.tracker = tracker
        self.ledger = ledger
        self.progress = progress
        self.driver_run = driver_run  # 1 for the first run of the sweep, 2 after one resume, …
        self.logs_dir = logs_dir  # logs/trial-NNNN.log: the full error of each failed trial
        self.running: set[int] = set()
        self.members: dict[int, Member] = {}  # members whose trial started (written on the writer thread)
        self.handed_out: dict[int, Member] = {}  # members the searcher handed out (written on the driver loop)
        self._data_identity: tuple[str, str] | None = None
        self.ray_trial: dict[int, str] = {}  # member number → the Ray trial training it
        self._queue: queue.Queue = queue.Queue()
        self._writer: threading.Thread | None = None

    def trial_params(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """Every TrialConfig setting of a member as it ran: defaults, fixed settings, sampled values."""
        return trial_params(self.fixed, self.spec.search, sampled)

    # --- events (called on the writer thread, or directly when repairing) -----------------

    def started(self, member: Member, ray_trial_id: str = "") -> None:
        self.tracker.child(member.number, self.name, self.trial_params(member.params))
        self.running.add(member.number)
        self.members[member.number] = member
        self.ray_trial[member.number] = ray_trial_id

    def open_run(self, member: Member) -> dict[str, Any]:
        """Create (or find) a member's MLflow run as it is handed out; the Optuna user attrs that link to it.

        Called by the searcher on the driver loop, while the Optuna trial is still running (Optuna
        refuses attributes on finished trials).
        """
        self.handed_out[member.number] = member
        return {MLFLOW_RUN_ATTR: self.tracker.child(member.number, self.name, self.trial_params(member.params))}

    def epoch(self, number: int, metrics: dict[str, Any]) -> None:
        """One epoch's metrics: buffered for the member's MLflow run, and heard by the progress heartbeat."""
        run_id = self.tracker.find_child(number)
        if run_id is not None:
            self.tracker.buffer_epoch(run_id, metrics)
        self.progress.trial_epoch(number, metrics.get("phase"), metrics.get("phase_epoch"))

    def finished(
        self, member: Member, result: TrialResult, ray_trial_id: str = "", kept: Mapping[str, Any] | None = None
    ) -> None:
        """Record one member's end everywhere it belongs (each step skips what is already there).

        An interrupted member closes its MLflow run (KILLED, re-opened by a resume) and gets no
        ledger row; every other status is a result and gets one.  ``kept``: ledger fields kept from
        where the result was first recorded (``driver_run``, ``finished_at``: an imported result).
        """
        run_id = self.tracker.child(member.number, self.name, self.trial_params(member.params))
        error = self.error_log(member.number, result)
        self.tracker.finish(run_id, result, error_text=error.read_text() if error else None)
        self.running.discard(member.number)
        if result.status not in RESULT_STATUSES:
            return
        if result.status in (Status.FAILED, Status.DIVERGED):
            self.progress.trial_failed(member.number, result.status, result.message, error)
        if result.extra.get("train_size") is not None:
            sizes = {
                c: int(result.extra[f"{k}_size"])
                for c, k in SPLITS.items()
                if result.extra.get(f"{k}_size") is not None
            }
            self.tracker.log_dataset(run_id, self.spec.dataset, *self.data_identity(), sizes)
        if self.spec.models == "all" and result.extra.get(MODEL_FILE_KEY):
            self.tracker.log_model(run_id, result.extra[MODEL_FILE_KEY])
        kept = kept or {}
        row = ledger_row(
            self.name,
            member.number,
            member.params,
            result,
            searched=self.spec.search,
            config=self.trial_params(member.params),
            driver_run=int(kept.get("driver_run") or self.driver_run),
            mlflow_run_id=run_id,
            ray_trial_id=ray_trial_id,
            finished_at=kept.get("finished_at"),
        )
        self.ledger.append(row)
        rows = list(self.ledger.rows.values())
        front = current_front(self.spec, rows)
        self.tracker.log_parent(sweep_progress(self.spec, front), step=len(rows))
        self.progress.trial_finished([row["status"] for row in rows], len(self.running), len(front))

    def data_identity(self) -> tuple[str, str]:
        """(source, digest) of the sweep's data, computed once: the files' MD5 for a data folder, the
        scikit-learn version for the embedded digits."""
        if self._data_identity is None:
            self._data_identity = data_identity(self.spec.dataset, self.fixed.get("data_dir"))
        return self._data_identity

    def error_log(self, number: int, result: TrialResult) -> Path | None:
        """Write a failed member's full error (traceback) to ``logs/trial-NNNN.log``; its path, or None."""
        text = result.extra.get("traceback")
        if not text or self.logs_dir is None:
            return None
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        path = self.logs_dir / f"trial-{number:04d}.log"
        path.write_text(f"trial {number}: {result.status.value}: {result.message}\n\n{text}")
        return path

    def interrupt_running(self) -> None:
        """Close the records of members still running when Tune returned (Ctrl-C, time budget): interrupted.

        That includes members handed out whose Ray trial never started (Ctrl-C between the
        searcher's suggestion and the trial's start): their MLflow run was opened with the
        suggestion and would otherwise stay RUNNING.  Called after ``close()``.
        """
        interrupted = TrialResult(Status.INTERRUPTED, "stopped before it finished; `hoyersweep resume` continues it")
        never_started = {n: m for n, m in self.handed_out.items() if n not in self.members and n not in self.ledger}
        open_members = {**never_started, **{n: self.members[n] for n in self.running}}
        for number in sorted(open_members):
            self.finished(open_members[number], interrupted)

    def ended(self, ray_trial_id: str, result: TrialResult) -> None:
        """A Ray trial ended: its members still running end with ``result`` (interrupted or failed)."""
        for number in sorted(self.running):
            if self.ray_trial.get(number) == ray_trial_id:
                self.finished(self.members[number], result, ray_trial_id)

    # --- the writer thread -----------------------------------------------------------------

    def submit(self, method: Callable[..., None], *args: Any) -> None:
        """Queue a record-keeping call for the writer thread (started on first use)."""
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="hoyersweep-recorder", daemon=True)
            self._writer.start()
        self._queue.put((method, args))

    def _write_loop(self) -> None:
        last_flush = time.monotonic()
        while True:
            try:
                item = self._queue.get(timeout=EPOCH_FLUSH_S)
            except queue.Empty:
                item = ()
            if item is None:
                break
            if item:
                method, args = item
                try:
                    method(*args)
                except Exception:  # noqa: BLE001 - a failed write must not kill the sweep; resume repairs records
                    logger.exception("recording %s failed", method.__name__)
            if time.monotonic() - last_flush >= EPOCH_FLUSH_S:
                self.tracker.flush()
                last_flush = time.monotonic()

    def close(self) -> None:
        """Finish every queued write (called before the sweep is finalized)."""
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None
        self.tracker.flush()


class MemberDirectory(Protocol):
    """Who a Ray trial's reports are about (the searcher knows the branches a trial chose itself)."""

    def members(self, trial_id: str) -> list[Member]: ...

    def member_number(self, trial_id: str, result: Mapping[str, Any]) -> int | None: ...


class RecorderCallback(tune.Callback):
    """Ray Tune callback that queues member events for a ``SweepRecorder``'s writer thread.

    Tune pickles its callbacks with the experiment; the recorder (threads, database clients)
    and the directory are left out of that, since a sweep resumes from its own records, not
    from Tune's pickle.  Tune tells the searcher of a result before its callbacks, so the
    directory already knows a branch its trial has just chosen.
    """

    def __init__(self, recorder: SweepRecorder, directory: MemberDirectory | None = None) -> None:
        self.recorder = recorder
        self.directory = directory
        self._seen: set[int] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {"recorder": None, "directory": None, "_seen": set()}

    def _member(self, trial: Any, result: Mapping[str, Any]) -> Member | None:
        if self.directory is None:
            number, members = result.get(TRIAL_NUMBER_KEY), members_of(trial.config)
        else:
            number, members = (
                self.directory.member_number(trial.trial_id, result),
                self.directory.members(trial.trial_id),
            )
        return next((m for m in members if m.number == number), None) if number is not None else None

    def _start(self, member: Member, trial: Any) -> None:
        if member.number not in self._seen:
            self._seen.add(member.number)
            self.recorder.submit(self.recorder.started, member, trial.trial_id)

    def on_trial_start(self, iteration, trials, trial, **info):
        for member in members_of(trial.config):
            self._start(member, trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        member = self._member(trial, result)
        if member is None:
            return
        self._start(member, trial)  # a branch the trial chose itself starts with its first report
        if result.get("final"):
            self.recorder.submit(self.recorder.finished, member, TrialResult.from_dict(result), trial.trial_id)
        elif "epoch" in result:
            self.recorder.submit(self.recorder.epoch, member.number, dict(result))
            if result.get("phase") == "pretrain" and result.get("phase_epoch") == 1:
                message = f"trial {member.number}: pretraining the shared dense model"
                self.recorder.submit(self.recorder.progress.say, message)

    def on_trial_complete(self, iteration, trials, trial, **info):
        interrupted = TrialResult(Status.INTERRUPTED, "stopped before it finished; `hoyersweep resume` continues it")
        self.recorder.submit(self.recorder.ended, trial.trial_id, interrupted)

    def on_trial_error(self, iteration, trials, trial, **info):
        failed = TrialResult(Status.FAILED, error_summary(trial), extra={"traceback": error_text(trial)})
        self.recorder.submit(self.recorder.ended, trial.trial_id, failed)


def error_text(trial: Any) -> str:
    """The whole error Ray recorded for a trial (its traceback), or an empty string."""
    error_file = getattr(trial, "error_file", None)
    try:
        return Path(error_file).read_text() if error_file else ""
    except OSError:
        return ""


def error_summary(trial: Any) -> str:
    """The last line of a Ray trial's error (the exception), for the ledger and MLflow."""
    lines = [line for line in error_text(trial).splitlines() if line.strip()]
    return lines[-1][:500] if lines else "trial raised an error"


class ProcessRecorder(tune.Callback):
    """Keeps the record of the local Ray's processes current as trials start (see ``sweeps.processes``)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_trial_start(self, iteration, trials, trial, **info):
        processes.record(self.path, processes.descendants(os.getpid()))


def repair_records(study: optuna.Study, recorder: SweepRecorder) -> int:
    """Record finished trials whose MLflow run or ledger line a kill cut short; returns how many."""
    repaired = 0
    for trial in own_trials(study, FINISHED_STATES):
        run_id = recorder.tracker.find_child(trial.number)
        run_open = run_id is not None and recorder.tracker.client.get_run(run_id).info.status == "RUNNING"
        if trial.number in recorder.ledger and not run_open:
            continue
        recorder.finished(Member(trial.number, dict(trial.params)), result_from_attrs(trial))
        repaired += 1
    return repaired
