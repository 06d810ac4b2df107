"""Run and resume sweeps: Ray Tune executes trials, Optuna searches, MLflow and the ledger record.

The Optuna study (sqlite, in the sweep folder) is the ledger of what has been tried.  A resumed
sweep does not use ``Tuner.restore`` (which re-runs trials that finished after its last
experiment checkpoint): it counts the study's finished trials, repairs the records a kill may
have cut short (MLflow runs left RUNNING, ledger lines missing), adopts trials the kill
interrupted — same Optuna trial, same parameters, continuing from their last checkpoint — and
starts a new Tuner for exactly the trials still owed.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import ray
import yaml
from optuna.trial import TrialState
from ray import tune
from ray.tune.logger import JsonLoggerCallback

from analysis.pareto import nondominated_mask
from sweeps.records import (
    MLFLOW_FILE,
    OPTUNA_FILE,
    PARETO_FILE,
    RESULTS_FILE,
    SPEC_FILE,
    ResultsLedger,
    SweepState,
    now_iso,
)
from sweeps.search import FINISHED_STATES, TRIAL_NUMBER_KEY, WARM_START_ATTR, SweepSearch, own_trials
from sweeps.spec import SpecError, SweepSpec, parse_spec
from sweeps.tracking import SweepTracker
from sweeps.trainable import CHECKPOINT_FILE, IDENTITY_FILE, deephoyer_trainable
from trainables.config import TrialConfig

logger = logging.getLogger(__name__)
EPOCH_FLUSH_S = 2.0  # live epoch curves reach MLflow at most this late; fewer sqlite commits on the driver
OPTUNA_STATUS = {TrialState.COMPLETE: "ok", TrialState.FAIL: "error", TrialState.PRUNED: "stopped"}


@dataclass(frozen=True)
class SweepOutcome:
    """Where a finished sweep put things, and how it went."""

    sweep_dir: Path
    study_name: str
    tracking_uri: str
    total: int
    ok: int
    failed: int
    front: pd.DataFrame


def optuna_storage(sweep_dir: Path) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(
        f"sqlite:///{(sweep_dir / OPTUNA_FILE).resolve()}", engine_kwargs={"connect_args": {"timeout": 60}}
    )


def default_tracking_uri(sweep_dir: Path) -> str:
    return f"sqlite:///{(sweep_dir / MLFLOW_FILE).resolve()}"


def new_sweep_dir(storage: Path, name: str) -> Path:
    """``storage/name``, or ``storage/name-2``, ``-3``… when that folder already holds a sweep."""
    candidate, index = storage / name, 1
    while candidate.exists() and any(candidate.iterdir()):
        index += 1
        candidate = storage / f"{name}-{index}"
    return candidate


def find_sweep_dir(name_or_path: str, storage: str = "results") -> Path:
    """A sweep folder from a path, or a sweep name under ``storage``."""
    for candidate in (Path(name_or_path), Path(storage) / name_or_path):
        if (candidate / "state.json").exists():
            return candidate
    raise SpecError(
        f"{name_or_path}: no sweep found (looked for state.json in {name_or_path} and {Path(storage) / name_or_path})"
    )


def package_versions() -> dict[str, str]:
    versions = {}
    for package in ("hoyersweep", "torch", "ray", "optuna", "mlflow", "pandas"):
        try:
            versions[f"version.{package}"] = version(package)
        except PackageNotFoundError:
            versions[f"version.{package}"] = "not installed"
    return versions


def git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def fixed_settings(spec: SweepSpec, sweep_dir: Path) -> dict[str, Any]:
    """Trial settings every trial shares: the spec's, with threads from the CPU share and a shared pretrain cache.

    The pretrain cache sits in the storage folder, beside the sweep folders, so every sweep
    there (another method, sampler or seed of the same model and data) reuses one dense
    pretraining; entries are keyed by every setting pretraining depends on.
    """
    settings = {"dataset": spec.dataset, "data_dir": spec.data_dir, "model": spec.model, **spec.trial}
    if spec.data_dir:
        settings["data_dir"] = str(Path(spec.data_dir).expanduser().resolve())
    settings.setdefault("num_threads", max(1, int(spec.resources.cpus)))
    if settings.get("pretrain_epochs"):
        settings.setdefault("pretrain_cache_dir", str((sweep_dir.parent / "pretrain_cache").resolve()))
    return settings


def warm_start(study: optuna.Study, spec: SweepSpec, sweep_dir: Path) -> int:
    """Copy finished trials of earlier sweeps of the same problem into a new study; returns how many."""
    copied = 0
    for state_file in sorted(sweep_dir.parent.glob("*/state.json")):
        other_dir = state_file.parent
        if other_dir.resolve() == sweep_dir.resolve():
            continue
        try:
            other = SweepState.load(other_dir)
            if other.problem_hash != spec.problem_hash():
                continue
            source = optuna.load_study(study_name=other.study_name, storage=optuna_storage(other_dir))
        except Exception as error:  # noqa: BLE001 - a broken neighbour must not stop this sweep
            logger.warning("warm start: skipping %s (%s)", other_dir, error)
            continue
        for trial in own_trials(source, (TrialState.COMPLETE, TrialState.FAIL)):
            study.add_trial(
                optuna.trial.create_trial(
                    state=trial.state,
                    values=trial.values,
                    params=trial.params,
                    distributions=trial.distributions,
                    user_attrs={**trial.user_attrs, WARM_START_ATTR: other.name},
                    system_attrs=trial.system_attrs,
                )
            )
            copied += 1
    return copied


def resume_checkpoints(sweep_dir: Path) -> dict[int, str]:
    """The most advanced Ray checkpoint of each trial number in the sweep's earlier Ray runs."""
    best: dict[int, tuple[int, str]] = {}
    for identity in (sweep_dir / "ray").glob(f"*/*/checkpoint_*/{IDENTITY_FILE}"):
        state = identity.with_name(CHECKPOINT_FILE)
        try:
            marker = json.loads(identity.read_text())
            number, epoch = int(marker[TRIAL_NUMBER_KEY]), int(marker["epoch"])
        except (ValueError, KeyError, TypeError, json.JSONDecodeError, OSError):
            continue
        if state.exists() and (number not in best or epoch > best[number][0]):
            best[number] = (epoch, str(state))
    return {number: path for number, (_, path) in best.items()}


class SweepRecorder:
    """Records each trial of this sweep in MLflow and the results ledger, and prints progress.

    Ray Tune's callbacks run on the driver loop, and a trial's ``tune.report`` waits until the
    driver has handled the report, so slow sqlite writes there would slow every trial.  The
    callback (``make_tune_callback``) therefore only queues work; one writer thread here does
    it in order, writing buffered epochs one batch per run whenever the queue runs dry.  The
    same methods, called directly, repair records when a sweep resumes.
    """

    def __init__(
        self,
        spec: SweepSpec,
        name: str,
        fixed: dict[str, Any],
        tracker: SweepTracker,
        ledger: ResultsLedger,
        started: float,
        quiet: bool = False,
    ) -> None:
        self.spec = spec
        self.name = name
        self.fixed = fixed
        self.driver_run = 1
        self.tracker = tracker
        self.ledger = ledger
        self.started = started
        self.quiet = quiet
        self.running: set[int] = set()
        self._queue: queue.Queue = queue.Queue()
        self._writer: threading.Thread | None = None

    def trial_params(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """Every TrialConfig setting of a trial as it ran: defaults, fixed settings, sampled values."""
        return {**TrialConfig().to_dict(), **self.fixed, **{k: v for k, v in sampled.items() if k in self.spec.search}}

    def started_trial(self, number: int, sampled: dict[str, Any]) -> None:
        self.tracker.child(number, self.name, self.trial_params(sampled))
        self.running.add(number)

    def epoch(self, number: int, result: dict[str, Any]) -> None:
        run_id = self.tracker.find_child(number)
        if run_id is not None:
            self.tracker.buffer_epoch(run_id, result)

    def finished(
        self,
        number: int,
        sampled: dict[str, Any],
        result: dict[str, Any] | None,
        status: str,
        message: str = "",
        ray_trial_id: str = "",
    ) -> None:
        """Record one finished trial everywhere it belongs (each step skips what is already there)."""
        result = dict(result or {})
        layers = json.loads(result.pop("layers_json", "[]") or "[]")
        history = json.loads(result.pop("history_json", "[]") or "[]")
        result.setdefault("message", message)
        run_id = self.tracker.child(number, self.name, self.trial_params(sampled))
        self.tracker.finish(run_id, result, status, layers, history)
        self.running.discard(number)
        if status == "stopped":  # interrupted, not finished: a resumed sweep runs it again
            return
        row = {
            "sweep": self.name,
            "trial_number": number,
            "status": status,
            "message": result.get("message") or message,
            **{f"param.{k}": v for k, v in sampled.items() if k in self.spec.search},
            **{
                k: result.get(k)
                for k in (
                    "val_accuracy",
                    "test_accuracy",
                    "nonzero_frac",
                    "flops_frac",
                    "loss",
                    "val_loss",
                    "epochs",
                    "wall_time_s",
                    "report_wait_s",
                    "val_accuracy_before_prune",
                    "val_accuracy_after_prune",
                    "resumed_from_epoch",
                    "node_id",
                )
            },
            "driver_run": self.driver_run,
            "config": self.trial_params(sampled),
            "mlflow_run_id": run_id,
            "ray_trial_id": ray_trial_id,
            "finished_at": now_iso(),
            "layers": layers,
        }
        self.ledger.append(row)
        self.print_progress()

    def print_progress(self) -> None:
        if self.quiet:
            return
        statuses = [row["status"] for row in self.ledger.rows.values()]
        done, failed = len(statuses), sum(status != "ok" for status in statuses)
        front = len(current_front(self.spec, self.ledger))
        elapsed = time.time() - self.started
        print(
            f"[{self.name}] {done}/{self.spec.budget.num_samples} done ({failed} failed), "
            f"{len(self.running)} running, front {front}, {elapsed:.0f}s",
            flush=True,
        )

    def submit(self, method: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Queue a record-keeping call for the writer thread (started on first use)."""
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="hoyersweep-recorder", daemon=True)
            self._writer.start()
        self._queue.put((method, args, kwargs))

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
                method, args, kwargs = item
                try:
                    method(*args, **kwargs)
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


class RecorderCallback(tune.Callback):
    """Ray Tune callback that queues trial events for a ``SweepRecorder``'s writer thread.

    Tune pickles its callbacks with the experiment; the recorder (threads, database clients)
    is left out of that, since a sweep resumes from its own records, not from Tune's pickle.
    """

    def __init__(self, recorder: SweepRecorder) -> None:
        self.recorder = recorder

    def __getstate__(self) -> dict[str, Any]:
        return {"recorder": None}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.recorder.submit(self.recorder.started_trial, trial.config[TRIAL_NUMBER_KEY], dict(trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not result.get("final") and "epoch" in result:
            self.recorder.submit(self.recorder.epoch, trial.config[TRIAL_NUMBER_KEY], dict(result))

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        final = dict(result) if result.get("final") else None
        status = result.get("status", "stopped") if final else "stopped"
        self.recorder.submit(
            self.recorder.finished,
            trial.config[TRIAL_NUMBER_KEY],
            dict(trial.config),
            final,
            status,
            ray_trial_id=trial.trial_id,
        )

    def on_trial_error(self, iteration, trials, trial, **info):
        self.recorder.submit(
            self.recorder.finished,
            trial.config[TRIAL_NUMBER_KEY],
            dict(trial.config),
            None,
            "error",
            _error_summary(trial),
            ray_trial_id=trial.trial_id,
        )


def _error_summary(trial) -> str:
    """The last line of the trial's error (the exception), for the ledger and MLflow."""
    error_file = getattr(trial, "error_file", None)
    try:
        lines = [line for line in Path(error_file).read_text().splitlines() if line.strip()] if error_file else []
    except OSError:
        lines = []
    return lines[-1][:500] if lines else "trial raised an error"


def current_front(spec: SweepSpec, ledger: ResultsLedger) -> pd.DataFrame:
    """The Pareto front of this sweep's ok trials that satisfy the constraints."""
    rows = [row for row in ledger.rows.values() if row["status"] == "ok"]
    rows = [
        row
        for row in rows
        if all(c.violation(row[c.metric]) <= 0 for c in spec.constraints if row.get(c.metric) is not None)
    ]
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows)
    mask = nondominated_mask(table[spec.metric_names].to_numpy(dtype=float), spec.modes)
    return table[mask].sort_values(spec.metric_names[0], ascending=spec.modes[0] == "min").reset_index(drop=True)


def repair_records(study: optuna.Study, recorder: SweepRecorder) -> int:
    """Record finished trials whose MLflow run or ledger line a kill cut short; returns how many."""
    repaired = 0
    for trial in own_trials(study, FINISHED_STATES):
        run_id = recorder.tracker.find_child(trial.number)
        run_open = run_id is not None and recorder.tracker.client.get_run(run_id).info.status == "RUNNING"
        if trial.number in recorder.ledger and not run_open:
            continue
        attrs = dict(trial.user_attrs)
        status = attrs.get("status") or OPTUNA_STATUS.get(trial.state, "error")
        recorder.finished(
            trial.number,
            dict(trial.params),
            attrs,
            status,
            attrs.get("message", "recorded from the Optuna study after a restart"),
        )
        repaired += 1
    return repaired


def _init_ray(address: str | None, num_cpus: int | None, num_gpus: int | None) -> bool:
    """Connect to ``address`` (or RAY_ADDRESS), else start a local Ray; True if we started it."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    quiet = dict(log_to_driver=False, configure_logging=True, logging_level=logging.WARNING)
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, **quiet)
    return True


def prepare_sweep(
    spec: SweepSpec, storage: str | None = None, tracking_uri: str | None = None
) -> tuple[Path, SweepState]:
    """Create a new sweep folder with its spec copy and state."""
    sweep_dir = new_sweep_dir(Path(storage or spec.storage), spec.name)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / SPEC_FILE).write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    state = SweepState.new(sweep_dir.name, spec.problem_hash(), tracking_uri or default_tracking_uri(sweep_dir))
    state.save(sweep_dir)
    return sweep_dir, state


def load_sweep(sweep_dir: Path) -> tuple[SweepSpec, SweepState]:
    spec_path = sweep_dir / SPEC_FILE
    spec = parse_spec(yaml.safe_load(spec_path.read_text()), str(spec_path))
    return spec, SweepState.load(sweep_dir)


def execute_sweep(
    spec: SweepSpec,
    sweep_dir: Path,
    state: SweepState,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    quiet: bool = False,
) -> SweepOutcome:
    """Run the trials this sweep still owes, then tag the front and print where things are."""

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter honours verbose=0: our progress lines only
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no CSV/TensorBoard per report; JSON kept below
    os.environ.setdefault(
        "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0"
    )  # resume uses our records, not Tune's snapshots
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.time()
    storage = optuna_storage(sweep_dir)
    study = optuna.create_study(
        storage=storage,
        study_name=state.study_name,
        directions=["maximize" if m == "max" else "minimize" for m in spec.modes],
        load_if_exists=True,
    )
    if not study.user_attrs:
        study.set_user_attr("problem_hash", spec.problem_hash())
        study.set_user_attr("sweep", state.name)
        if spec.warm_start and (copied := warm_start(study, spec, sweep_dir)) and not quiet:
            print(f"[{state.name}] warm start: {copied} trials from earlier sweeps of the same problem", flush=True)

    tracker = SweepTracker(state.tracking_uri, state.name, sweep_dir / "mlartifacts")
    parent_params = {
        "spec_hash": spec.problem_hash(),
        "sampler": spec.sampler.type,
        "num_samples": spec.budget.num_samples,
        **{f"search.{k}": v.model_dump_json() for k, v in spec.search.items()},
    }
    tags = {
        "spec_hash": spec.problem_hash(),
        "git_commit": git_commit() or "unknown",
        "sweep_dir": str(sweep_dir.resolve()),
        **package_versions(),
    }
    state.parent_run_id = tracker.start_parent(
        state.parent_run_id, state.name, parent_params, tags, (sweep_dir / SPEC_FILE).read_text()
    )
    state.status = "running"
    state.runs.append({"started": now_iso()})
    state.save(sweep_dir)

    ledger = ResultsLedger(sweep_dir / RESULTS_FILE)
    fixed = fixed_settings(spec, sweep_dir)
    recorder = SweepRecorder(spec, state.name, fixed, tracker, ledger, started, quiet)
    recorder.driver_run = len(state.runs)  # 1 for the first run of the sweep, 2 after one resume, …
    repaired = repair_records(study, recorder)
    if repaired and not quiet:
        print(
            f"[{state.name}] repaired the records of {repaired} trial(s) finished before the interruption", flush=True
        )

    finished = len(own_trials(study, FINISHED_STATES))
    remaining = spec.budget.num_samples - finished
    if remaining > 0:
        started_ray = _init_ray(address, num_cpus, num_gpus)
        try:
            search = SweepSearch(spec, storage, state.study_name, resume_checkpoints(sweep_dir))
            trainable = tune.with_resources(
                tune.with_parameters(
                    deephoyer_trainable, fixed=fixed, checkpoint_interval_s=spec.checkpoint_interval_s
                ),
                {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus},
            )
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=search,
                    num_samples=remaining,
                    max_concurrent_trials=spec.budget.max_concurrent_trials,
                    time_budget_s=spec.budget.time_budget_s,
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=f"run-{len(state.runs)}",
                    storage_path=str((sweep_dir / "ray").resolve()),
                    callbacks=[JsonLoggerCallback(), RecorderCallback(recorder)],
                    failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    verbose=0,
                ),
            )
            tuner.fit()
        finally:
            recorder.close()
            if started_ray:
                ray.shutdown()
    return finalize_sweep(spec, sweep_dir, state, study, recorder, started, quiet)


def finalize_sweep(
    spec: SweepSpec,
    sweep_dir: Path,
    state: SweepState,
    study: optuna.Study,
    recorder: SweepRecorder,
    started: float,
    quiet: bool,
) -> SweepOutcome:
    """Tag the Pareto trials in MLflow, write pareto.csv, close the parent run and say where things are."""
    ledger, tracker = recorder.ledger, recorder.tracker
    front = current_front(spec, ledger)
    front_numbers = set(front["trial_number"]) if not front.empty else set()
    tracker.tag_pareto(front_numbers, ledger.rows)
    columns = [
        "trial_number",
        *[c for c in front.columns if c.startswith("param.")],
        "val_accuracy",
        "test_accuracy",
        "nonzero_frac",
        "flops_frac",
        "mlflow_run_id",
    ]
    (front[columns] if not front.empty else pd.DataFrame(columns=columns)).to_csv(sweep_dir / PARETO_FILE, index=False)
    rows = list(ledger.rows.values())
    ok = sum(row["status"] == "ok" for row in rows)
    complete = len(own_trials(study, FINISHED_STATES)) >= spec.budget.num_samples
    tracker.end_parent(
        "FINISHED" if complete else "KILLED", {"trials": len(rows), "trials_ok": ok, "front_size": len(front_numbers)}
    )
    state.status = "finished" if complete else "incomplete"
    state.save(sweep_dir)
    outcome = SweepOutcome(sweep_dir, state.study_name, state.tracking_uri, len(rows), ok, len(rows) - ok, front)
    if not quiet:
        print_summary(outcome, spec, time.time() - started)
    return outcome


def print_summary(outcome: SweepOutcome, spec: SweepSpec, elapsed: float) -> None:
    directory = outcome.sweep_dir
    print(f"\nSweep {spec.name}: {outcome.total} trials ({outcome.ok} ok, {outcome.failed} failed) in {elapsed:.0f}s")
    if not outcome.front.empty:
        shown = [
            "trial_number",
            *[c for c in outcome.front.columns if c.startswith("param.")],
            *spec.metric_names,
            "test_accuracy",
        ]
        shown = list(dict.fromkeys(shown))
        print(f"Pareto front ({len(outcome.front)} trials; chosen on validation, test shown beside):")
        print(outcome.front[shown].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    elif outcome.ok:
        rules = ", ".join(
            f"{c.metric} {'≥ ' + format(c.min, 'g') if c.min is not None else '≤ ' + format(c.max, 'g')}"
            for c in spec.constraints
        )
        why = f"no ok trial met the constraints ({rules})" if rules else "no ok trial has finite objective values"
        print(f"Pareto front empty: {why}; `hoyersweep pareto {directory} --ignore-constraints` shows the rest.")
    print(f"  results : {directory / RESULTS_FILE}")
    print(f"  front   : {directory / PARETO_FILE}")
    print(f"  mlflow  : {outcome.tracking_uri}   (hoyersweep ui {directory})")
    print(
        f"  optuna  : optuna-dashboard sqlite:///{(directory / OPTUNA_FILE).resolve()}   (study {outcome.study_name})"
    )
    sys.stdout.flush()


def run_sweep(
    spec: SweepSpec, *, storage: str | None = None, tracking_uri: str | None = None, **kwargs: Any
) -> SweepOutcome:
    """Start a new sweep of ``spec`` and run it to the end."""
    sweep_dir, state = prepare_sweep(spec, storage, tracking_uri)
    if not kwargs.get("quiet"):
        print(f"[{spec.name}] sweep folder {sweep_dir}", flush=True)
    return execute_sweep(spec, sweep_dir, state, **kwargs)


def resume_sweep(sweep_dir: Path, **kwargs: Any) -> SweepOutcome:
    """Continue an interrupted sweep from its folder."""
    spec, state = load_sweep(sweep_dir)
    return execute_sweep(spec, sweep_dir, state, **kwargs)
