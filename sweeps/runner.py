"""The sweep driver: run and resume sweeps — Ray Tune executes, Optuna searches, the recorder records.

The Optuna study (sqlite, in the sweep folder) is the ledger of what has been tried.  A resumed
sweep does not use ``Tuner.restore`` (which re-runs trials that finished after its last
experiment checkpoint): it counts the study's results, repairs the records a kill may have cut
short (MLflow runs left RUNNING, ledger lines missing), hands the trials the kill interrupted
out again — same Optuna trial, same parameters, continuing from their last checkpoint — and
starts a new Tuner that asks ``sweeps.searcher.OptunaSearcher`` for exactly the results still
owed.  The pieces: ``sweeps.searcher`` (what to train), ``sweeps.trainable`` (training under
Ray), ``sweeps.recorder`` (ledger, MLflow, live front), ``sweeps.progress`` (what is printed).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import ray
import yaml
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE
from ray import tune
from ray.tune.logger import JsonLoggerCallback

from analysis.pareto import Objective, knee_point
from sweeps import processes
from sweeps import study as study_module
from sweeps.folder import (
    absolute_tracking_uri,
    optuna_url,
    relocate_tracking_store,
    resolve_sweep_dir,
    verify_records,
)
from sweeps.interrupt import Interrupt
from sweeps.plan import branch_settings, clear_branch_points, fixed_settings, models_dir
from sweeps.progress import Progress, SweepOutcome, failure_counts, print_summary
from sweeps.recorder import (
    ProcessRecorder,
    RecorderCallback,
    SweepRecorder,
    current_front,
    repair_records,
    sweep_progress,
)
from sweeps.records import ResultsLedger, SweepState, now_iso
from sweeps.rungs import Rungs, rungs_settings
from sweeps.scheduler import MOASHA, RungChannel, start_rung_channel
from sweeps.searcher import (
    FINISHED_STATES,
    OptunaSearcher,
    own_trials,
    search_settings,
)
from sweeps.spec import SpecError, SweepSpec, load_spec
from sweeps.tracking import SweepTracker
from sweeps.trainable import CHECKPOINT_FILE, IDENTITY_FILE, deephoyer_trainable
from trainables.contract import (
    FLOPS_FRAC,
    KNEE_ALIAS,
    LOGS_DIR,
    MLFLOW_ARTIFACTS_DIR,
    MODEL_FILE_KEY,
    NONZERO_FRAC,
    PARETO_FILE,
    RAY_DIR,
    RAY_PROCESSES_FILE,
    RESULTS_FILE,
    SPEC_FILE,
    STATE_FILE,
    STOPPED_AT_KEY,
    TEST_ACCURACY,
    TRIAL_NUMBER_KEY,
    VAL_ACCURACY,
    WARM_START_ATTR,
    Status,
    TrialResult,
    own_tracking_uri,
)

logger = logging.getLogger(__name__)
PARETO_COLUMNS: tuple[str, ...] = (VAL_ACCURACY, TEST_ACCURACY, NONZERO_FRAC, FLOPS_FRAC, "mlflow_run_id")

TUNE_ENVIRONMENT: dict[str, str] = {
    # The legacy console reporter honours verbose=0 (the new one prints a table regardless): our lines only.
    "RAY_AIR_NEW_OUTPUT": "0",
    # No CSV/TensorBoard logger per report (Tune has no option for its automatic loggers); JSON is kept.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # A resume uses our records, not Tune's experiment snapshots: no warning about their sync time.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}
TUNE_SIGINT_HANDLER = "TUNE_DISABLE_SIGINT_HANDLER"  # Ctrl-C is ours (sweeps.interrupt): set to 1, always


def configure_tune_environment() -> None:
    """The one place the driver sets environment variables: Tune settings that have no explicit option.

    ``setdefault``: a user's own setting wins, except Tune's SIGINT handler, which must be off for
    ``sweeps.interrupt`` to see Ctrl-C.
    """
    for name, value in TUNE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    os.environ[TUNE_SIGINT_HANDLER] = "1"  # Tune's handler would leave MLflow runs RUNNING and advise Tuner.restore


def optuna_storage(sweep_dir: Path) -> optuna.storages.RDBStorage:
    """The folder's own ``optuna.db`` (absolute: wherever the folder is now)."""
    return optuna.storages.RDBStorage(optuna_url(sweep_dir), engine_kwargs={"connect_args": {"timeout": 60}})


def default_tracking_uri(sweep_dir: Path) -> str:
    """The folder's own ``mlflow.db`` (``state.json`` records it as ``null``: see ``sweeps.folder``)."""
    return own_tracking_uri(sweep_dir)


def new_sweep_dir(storage: Path, name: str) -> Path:
    """``storage/name``, or ``storage/name-2``, ``-3``… when that folder already holds a sweep."""
    candidate, index = storage / name, 1
    while candidate.exists() and any(candidate.iterdir()):
        index += 1
        candidate = storage / f"{name}-{index}"
    return candidate


def find_sweep_dir(name_or_path: str, storage: str = "results") -> Path:
    """A sweep folder from a path, or a sweep name under ``storage``; always absolute.

    Absolute before anything uses it: Ray workers do not share the driver's working directory,
    so a relative path would hide every checkpoint from them.
    """
    for candidate in (Path(name_or_path), Path(storage) / name_or_path):
        if (candidate / STATE_FILE).exists():
            return resolve_sweep_dir(candidate)
    looked = f"{name_or_path} and {Path(storage) / name_or_path}"
    raise SpecError(f"{name_or_path}: no sweep found (looked for {STATE_FILE} in {looked})")


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


def warm_start(study: optuna.Study, spec: SweepSpec, sweep_dir: Path) -> int:
    """Copy the results of earlier sweeps of the same problem into a new study, as finished trials.

    They inform the sampler and are never trained again (``study.add_trial``, not an enqueue);
    returns how many were copied.
    """
    copied = 0
    for state_file in sorted(sweep_dir.parent.glob(f"*/{STATE_FILE}")):
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
        for trial in own_trials(source, FINISHED_STATES):
            copy = optuna.trial.create_trial(
                state=trial.state,
                values=trial.values,
                params=trial.params,
                distributions=trial.distributions,
                user_attrs={**trial.user_attrs, WARM_START_ATTR: other.name},
                system_attrs=trial.system_attrs,
            )
            study.add_trial(copy)
            copied += 1
    return copied


def resume_checkpoints(sweep_dir: Path) -> dict[int, str]:
    """The most advanced Ray checkpoint of each trial number in the sweep's earlier Ray runs."""
    best: dict[int, tuple[int, str]] = {}
    for identity in (sweep_dir / RAY_DIR).glob(f"*/*/checkpoint_*/{IDENTITY_FILE}"):
        state = identity.with_name(CHECKPOINT_FILE)
        try:
            marker = json.loads(identity.read_text())
            numbers = [int(n) for n in marker.get("trial_numbers") or [marker[TRIAL_NUMBER_KEY]]]
            epoch = int(marker["epoch"])
        except (ValueError, KeyError, TypeError, json.JSONDecodeError, OSError):
            continue
        for number in numbers if state.exists() else []:  # a branching run's checkpoint serves all its branches
            if number not in best or epoch > best[number][0]:
                best[number] = (epoch, str(state))
    return {number: path for number, (_, path) in best.items()}


def open_study(
    spec: SweepSpec, state: SweepState, storage: optuna.storages.BaseStorage, sweep_dir: Path, progress: Progress
) -> optuna.Study:
    """The sweep's study, created (and warm-started) on first use, with a sampler that continues its sequence."""

    def warm(study: optuna.Study) -> None:
        if spec.warm_start and (copied := warm_start(study, spec, sweep_dir)):
            progress.say(f"warm start: {copied} finished trials from earlier sweeps of the same problem")

    return study_module.open_study(storage, state.study_name, spec, state.name, warm)


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
    """Create a new sweep folder (absolute path) with its spec copy and state.

    ``state.json`` keeps the spec as it starts (a resume refuses an edited ``spec.yaml``) and no
    path of the folder: its own ``mlflow.db`` is ``null``; a ``tracking_uri`` given here is kept
    (a relative sqlite path made absolute).
    """
    sweep_dir = resolve_sweep_dir(new_sweep_dir(Path(storage or spec.storage), spec.name))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    dumped = spec.model_dump(mode="json")
    (sweep_dir / SPEC_FILE).write_text(yaml.safe_dump(dumped, sort_keys=False))
    uri = absolute_tracking_uri(tracking_uri) or default_tracking_uri(sweep_dir)
    state = SweepState.new(sweep_dir.name, spec.problem_hash(), uri, spec=dumped)
    state.save(sweep_dir)
    return sweep_dir, state


def load_sweep(sweep_dir: Path) -> tuple[SweepSpec, SweepState]:
    """The spec and state of a sweep folder (read-only; ``resume_sweep`` verifies the records first)."""
    spec, _ = load_spec(sweep_dir / SPEC_FILE)
    return spec, SweepState.load(sweep_dir)


def start_tracking(spec: SweepSpec, sweep_dir: Path, state: SweepState) -> SweepTracker:
    """The sweep's MLflow experiment and parent run (re-opened on resume)."""
    tracker = SweepTracker(state.tracking_uri, state.name, sweep_dir / MLFLOW_ARTIFACTS_DIR)
    params = {
        "spec_hash": spec.problem_hash(),
        "sampler": spec.sampler.type,
        "num_samples": spec.budget.num_samples,
        **{f"search.{k}": v.model_dump_json() for k, v in spec.search.items()},
    }
    commit = git_commit()
    tracker.source_tags = {MLFLOW_SOURCE_NAME: "hoyersweep", MLFLOW_SOURCE_TYPE: "LOCAL"}
    if commit:
        tracker.source_tags[MLFLOW_GIT_COMMIT] = commit
    tags = {
        "spec_hash": spec.problem_hash(),
        "git_commit": commit or "unknown",
        "sweep_dir": str(sweep_dir.resolve()),
        **package_versions(),
        **tracker.source_tags,
    }
    spec_text = (sweep_dir / SPEC_FILE).read_text()
    state.parent_run_id = tracker.start_parent(state.parent_run_id, state.name, params, tags, spec_text)
    return tracker


def build_scheduler(
    spec: SweepSpec, sweep_dir: Path, searcher: OptunaSearcher, recorder: SweepRecorder
) -> MOASHA | None:
    """The spec's early-stopping Tune scheduler (None: every trial trains to the end, or cohorts decide).

    A stop is a pruned result (its rung and proxies) for every member of the stopped Ray trial,
    told to the searcher (PRUNED, proxies kept) and the recorder (status ``pruned``, the rung on
    its run) before Tune ends it — what a cohort member ranked out reports itself.  With
    ``cohort_size`` > 1 Tune gets none: a scheduler stops whole Ray trials, so cohort members
    consult the rung channel instead (``rung_channel``).
    """
    if spec.scheduler.type != "moasha" or spec.budget.cohort_size > 1:
        return None

    def stopped(trial_id: str, rung: int, proxies: dict[str, float]) -> None:
        result = TrialResult(
            Status.PRUNED, f"stopped by moasha at regularized epoch {rung}", extra={STOPPED_AT_KEY: rung, **proxies}
        )
        for member in searcher.members(trial_id):
            searcher.tell_result(member.number, result)
            recorder.submit(recorder.finished, member, result, trial_id)

    return MOASHA(Rungs(**rungs_settings(spec, sweep_dir)), on_stop=stopped)


def rung_channel(spec: SweepSpec, sweep_dir: Path) -> RungChannel | None:
    """MO-ASHA for cohorts (``cohort_size`` > 1 and ``scheduler: moasha``): the rung state as a Ray actor
    on the driver's node, which every cohort member consults at its rungs; None otherwise.  Needs Ray."""
    if spec.scheduler.type != "moasha" or spec.budget.cohort_size <= 1:
        return None
    return start_rung_channel(rungs_settings(spec, sweep_dir))


def build_tuner(
    spec: SweepSpec,
    sweep_dir: Path,
    run_index: int,
    searcher: OptunaSearcher,
    fixed: dict[str, Any],
    recorder: SweepRecorder,
    interrupt: Interrupt,
    own_ray: bool = False,
    channel: RungChannel | None = None,
) -> tune.Tuner:
    """One declarative Tuner: our searcher owns the budget (Tune's num_samples is unbounded).

    ``interrupt`` stops the experiment on Ctrl-C; with ``own_ray`` (a local Ray this driver
    started) the Ray processes are recorded as trials start, so a resume after a SIGKILL can stop them.
    ``channel``: the rung channel cohort members consult (``rung_channel``).
    """
    callbacks: list[tune.Callback] = [JsonLoggerCallback(), RecorderCallback(recorder, directory=searcher)]
    if own_ray:
        callbacks.append(ProcessRecorder(sweep_dir / RAY_PROCESSES_FILE))
    trainable = tune.with_resources(
        tune.with_parameters(
            deephoyer_trainable,
            fixed=fixed,
            checkpoint_interval_s=spec.checkpoint_interval_s,
            branching=branch_settings(spec, sweep_dir),
            models_dir=models_dir(spec, sweep_dir),
            cohorts=spec.budget.cohort_size > 1,
            stop=channel,
        ),
        {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus},
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=build_scheduler(spec, sweep_dir, searcher, recorder),
            num_samples=-1,
            max_concurrent_trials=spec.budget.max_concurrent_trials,
            time_budget_s=spec.budget.time_budget_s,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"run-{run_index}",
            storage_path=str((sweep_dir / RAY_DIR).resolve()),
            callbacks=callbacks,
            stop=interrupt,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=0,
        ),
    )


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
    """Run the results this sweep still owes, then tag the front and print where things are.

    One Ray trial trains one trial, or a cohort of up to ``budget.cohort_size`` (the searcher
    hands out that many members per Ray trial).
    """
    configure_tune_environment()
    started = time.time()
    progress = Progress(state.name, spec.budget.num_samples, started, quiet)
    if stale := processes.stop_recorded(sweep_dir / RAY_PROCESSES_FILE):
        progress.say(f"stopped {stale} Ray process(es) left running by the driver that was killed")
    storage = optuna_storage(sweep_dir)
    study = open_study(spec, state, storage, sweep_dir, progress)
    tracker = start_tracking(spec, sweep_dir, state)
    state.status = "running"
    state.runs.append({"started": now_iso()})
    state.save(sweep_dir)

    fixed = fixed_settings(spec, sweep_dir)
    ledger = ResultsLedger(sweep_dir / RESULTS_FILE)
    recorder = SweepRecorder(
        spec,
        state.name,
        fixed,
        tracker,
        ledger,
        progress,
        driver_run=len(state.runs),
        logs_dir=sweep_dir / LOGS_DIR,
    )
    if repaired := repair_records(study, recorder):
        progress.say(f"repaired the records of {repaired} trial(s) finished before the interruption")

    searcher = OptunaSearcher(
        study,
        storage,
        **search_settings(spec),
        resume_checkpoints=resume_checkpoints(sweep_dir),
        on_member=recorder.open_run,
    )
    interrupt = Interrupt()
    if searcher.remaining > 0 and not state.exhausted:
        progress.say("starting Ray" if not (address or os.environ.get("RAY_ADDRESS")) else "connecting to Ray")
        started_ray = _init_ray(address, num_cpus, num_gpus)
        ray_processes = sweep_dir / RAY_PROCESSES_FILE
        if started_ray:
            processes.record(ray_processes, processes.descendants(os.getpid()))
        channel = None
        try:
            channel = rung_channel(spec, sweep_dir)
            tuner = build_tuner(
                spec, sweep_dir, len(state.runs), searcher, fixed, recorder, interrupt, started_ray, channel
            )
            with interrupt.handling():
                tuner.fit()
        finally:
            if channel is not None:
                ray.kill(channel.keeper)
            recorder.close()
            recorder.interrupt_running()
            progress.close()
            if started_ray:
                ray.shutdown()
                processes.forget(ray_processes)
    state.exhausted = state.exhausted or searcher.exhausted_reason
    if searcher.duplicates:
        progress.say(f"{searcher.duplicates} proposal(s) repeated a known configuration and were not trained")
    return finalize_sweep(spec, sweep_dir, state, study, recorder, started, quiet, interrupted=interrupt.requested)


def publish_models(spec: SweepSpec, state: SweepState, tracker: SweepTracker, front: pd.DataFrame) -> str | None:
    """Log the front's models (``models: front``; ``all`` logged them as trials finished) and register the knee.

    Called when the sweep completes, when the front is final, so no model of a trial that left
    the front is ever in MLflow.  Returns ``models:/<sweep>@knee``, or None without models.
    """
    if spec.models == "none" or front.empty or MODEL_FILE_KEY not in front.columns:
        return None
    for row in front.itertuples():
        model_file = getattr(row, MODEL_FILE_KEY)
        if isinstance(model_file, str) and Path(model_file).exists() and not tracker.has_model(row.mlflow_run_id):
            tracker.log_model(row.mlflow_run_id, model_file)
    knee = knee_point(front, [Objective(m, mode) for m, mode in zip(spec.metric_names, spec.modes)])
    if knee is None or not tracker.has_model(knee["mlflow_run_id"]):
        return None
    return tracker.register(state.name, knee["mlflow_run_id"], KNEE_ALIAS)


def attach_report(sweep_dir: Path, tracker: SweepTracker) -> None:
    """The front table and the HTML report (with its figures) as artifacts of the parent run."""
    from analysis.report import build_report

    with tempfile.TemporaryDirectory() as directory:
        shutil.copy(sweep_dir / PARETO_FILE, Path(directory) / PARETO_FILE)
        try:
            build_report([str(sweep_dir)], Path(directory) / "report.html")
        except (ValueError, OSError) as error:  # a sweep with nothing to show: the table still goes
            logger.warning("report not attached to the parent run: %s", error)
        tracker.log_parent_artifacts(directory)


def finalize_sweep(
    spec: SweepSpec,
    sweep_dir: Path,
    state: SweepState,
    study: optuna.Study,
    recorder: SweepRecorder,
    started: float,
    quiet: bool,
    interrupted: bool = False,
) -> SweepOutcome:
    """Tag the Pareto trials in MLflow, write pareto.csv, close the parent run and say where things are."""
    ledger, tracker = recorder.ledger, recorder.tracker
    rows = list(ledger.rows.values())
    front = current_front(spec, rows)
    front_numbers = set(front["trial_number"]) if not front.empty else set()
    tracker.tag_pareto(front_numbers, ledger.rows)
    params = [c for c in front.columns if c.startswith("param.")]
    columns = ["trial_number", *params, *PARETO_COLUMNS]
    (front[columns] if not front.empty else pd.DataFrame(columns=columns)).to_csv(sweep_dir / PARETO_FILE, index=False)
    ok = sum(row["status"] == Status.OK for row in rows)
    complete = bool(state.exhausted) or len(own_trials(study, FINISHED_STATES)) >= spec.budget.num_samples
    tracker.log_parent(sweep_progress(spec, front), step=len(rows))
    knee_uri = publish_models(spec, state, tracker, front) if complete else None
    if complete:
        clear_branch_points(spec, sweep_dir)
    attach_report(sweep_dir, tracker)
    if knee_uri and not quiet:
        print(f"[{state.name}] knee model registered: {knee_uri}", flush=True)
    tracker.end_parent("FINISHED" if complete else "KILLED", {"trials": len(rows), "trials_ok": ok})
    state.status = "finished" if complete else "incomplete"
    state.save(sweep_dir)
    outcome = SweepOutcome(
        sweep_dir,
        state.study_name,
        state.tracking_uri,
        len(rows),
        ok,
        len(rows) - ok,
        front,
        state.exhausted,
        interrupted=interrupted and not complete,
        failures=failure_counts(rows),
    )
    if not quiet:
        print_summary(outcome, spec, time.time() - started)
    return outcome


def run_sweep(
    spec: SweepSpec, *, storage: str | None = None, tracking_uri: str | None = None, **kwargs: Any
) -> SweepOutcome:
    """Start a new sweep of ``spec`` and run it to the end."""
    sweep_dir, state = prepare_sweep(spec, storage, tracking_uri)
    if not kwargs.get("quiet"):
        print(f"[{spec.name}] sweep folder {sweep_dir}", flush=True)
    return execute_sweep(spec, sweep_dir, state, **kwargs)


def load_resumable(sweep_dir: str | Path, data_dir: str | Path | None = None) -> tuple[Path, SweepSpec, SweepState]:
    """A sweep folder ready to resume, read-only: (absolute folder, spec as it will run, state).

    The folder's records are verified first (``sweeps.folder.verify_records``: damaged or missing
    records are a one-line ``SpecError``).  ``data_dir`` (else an earlier resume's override,
    recorded in ``state.json``) replaces the spec's data folder; ``spec.yaml`` is never rewritten.
    """
    sweep_dir = resolve_sweep_dir(sweep_dir)
    verify_records(sweep_dir)
    spec, state = load_sweep(sweep_dir)
    if data_dir is None:  # an earlier resume's override still holds
        data_dir = next((run["data_dir"] for run in reversed(state.runs) if run.get("data_dir")), None)
    if data_dir is not None:
        resolved = str(resolve_sweep_dir(data_dir))
        spec = spec.model_copy(update={"data_dir": resolved})
        state.note_run(data_dir=resolved)
    return sweep_dir, spec, state


def resume_sweep(sweep_dir: str | Path, *, data_dir: str | Path | None = None, **kwargs: Any) -> SweepOutcome:
    """Continue an interrupted sweep from its folder, wherever the folder is now.

    Nothing is written before ``load_resumable`` has verified the records.  Then a copied or
    moved folder's MLflow store is pointed at the folder's own ``mlartifacts``
    (``relocate_tracking_store``), and the sweep runs what it still owes.
    """
    sweep_dir, spec, state = load_resumable(sweep_dir, data_dir)
    relocate_tracking_store(sweep_dir, state.name, state.tracking_uri)
    return execute_sweep(spec, sweep_dir, state, **kwargs)
