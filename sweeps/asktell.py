"""A sweep without Ray or MLflow: the cohort trainer driven by Optuna's ask/tell, results in a folder.

``python -m sweeps.asktell SPEC --out DIR [--set key=value …] [--data-dir D] [--device cuda]
[--cohort-size K] [--num-samples N]`` asks Optuna for K trials at a time through the very rules
the Ray sweep uses (``sweeps.study.StudyProposer``: same sampler and seed, same search space,
interrupted trials first, no configuration trained twice, constraints told through
``trial.set_constraint``), turns each into a ``TrialConfig`` as the Ray trainable does
(``sweeps.plan``), trains each group as one stack (``trainables.cohort.run_cohort``; with
``budget.thresholds_per_run`` > 1 ``run_cohort_branches``, each run branching at its branch
point, proxy-chosen branches becoming trials of their own) and records every result:

- ``DIR/results.jsonl``: the sweep ledger, rows exactly as the Ray sweep writes them
  (``sweeps.records.ledger_row``; ``mlflow_run_id`` is null until ``hoyersweep import``);
- ``DIR/trials/trial-NNNN.json``: each result in full (curves, per-layer table, extras), so an
  import gives the MLflow runs everything a Ray sweep's runs hold;
- ``DIR/models/``: each ok trial's final model, named as a sweep names them;
- ``DIR/optuna.journal``: the Optuna study (a journal file: no database engine needed);
- ``DIR/checkpoints/``: the running group's checkpoint (``CohortState``), at most every
  ``checkpoint_interval_s``; ``DIR/asktell.json`` and ``DIR/spec.yaml``: what the folder runs.

Resumable: rerunning the command after a kill continues the interrupted group from its last
checkpoint under the same trial numbers; a result already in the ledger is never trained or
written again.  Needs torch, Optuna and pydantic; imports neither Ray nor MLflow.
``hoyersweep import DIR`` turns the folder into a normal sweep folder (MLflow runs, ``pareto.csv``).
Early stopping (``scheduler: moasha``) asks the sweep's rung state in-process (``sweeps.rungs.Rungs``,
kept in ``DIR/scheduler.json`` as a Ray sweep keeps it): a member ranked out at a rung leaves its
stack as ``pruned`` while the others go on, as in a Ray sweep's cohort.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Container, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from sweeps.folder import spec_difference
from sweeps.plan import (
    DETERMINISTIC_ERRORS,
    branch_runs,
    branch_settings,
    cohort_in_checkpoint,
    failed_result,
    fixed_settings,
    model_file,
    models_dir,
    valid_configs,
)
from sweeps.records import ResultsLedger, ledger_row, now_iso, trial_params, write_atomic
from sweeps.rungs import Rungs, rungs_settings
from sweeps.spec import SpecError, SweepSpec, load_spec
from sweeps.study import (
    BRANCH_INDEX_KEY,
    BRANCH_PLAN_KEY,
    Member,
    StudyProposer,
    branch_slots,
    is_own,
    members_of,
    open_study,
    search_settings,
    tell,
)
from trainables.config import ConfigError, TrialConfig, split_branch_settings
from trainables.contract import (
    MODEL_FILE_KEY,
    PRETRAIN_CACHE_DIR,
    RESULTS_FILE,
    SHARED_RUN_KEY,
    SPEC_FILE,
    TRIAL_NUMBER_KEY,
    Status,
    TrialResult,
)
from trainables.data import DataError

logger = logging.getLogger(__name__)

DRIVER_FILE = "asktell.json"  # the folder's identity: sweep id, study name, the spec it runs, its runs
JOURNAL_FILE = "optuna.journal"  # the Optuna study (JournalStorage over a file)
TRIALS_DIR = "trials"  # trial-NNNN.json: every result in full
CHECKPOINTS_DIR = "checkpoints"  # group-NNNN.pt + group-NNNN.json: the running group's checkpoint and identity
COHORT_STAGE = "cohort"
BRANCHING_STAGE = "branching-cohort"
RESUMABLE_FIELDS: tuple[str, ...] = ("budget.num_samples",)  # may change between reruns: more results asked


# --- the folder ------------------------------------------------------------------------------


@dataclass
class DriverState:
    """``DIR/asktell.json``: what identifies an ask/tell folder (the import keeps its sweep id and study name)."""

    name: str
    sweep_id: str
    study_name: str
    problem_hash: str
    spec: dict[str, Any]
    created: str = field(default_factory=now_iso)
    runs: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, out: Path) -> DriverState:
        """The folder's state; a one-line ``SpecError`` naming the file when it is unreadable."""
        path = out / DRIVER_FILE
        try:
            values = json.loads(path.read_text())
            return cls(**values)
        except FileNotFoundError:
            raise SpecError(f"{path}: missing (not a folder written by `python -m sweeps.asktell`)") from None
        except (OSError, ValueError, TypeError) as error:
            raise SpecError(f"{path}: unreadable ({' '.join(str(error).split())})") from None

    def save(self, out: Path) -> None:
        write_atomic(out / DRIVER_FILE, json.dumps(asdict(self), indent=2))


def journal_storage(out: Path) -> JournalStorage:
    """The folder's Optuna storage: a journal file, safe against a kill mid-write and needing no database."""
    return JournalStorage(JournalFileBackend(str(out / JOURNAL_FILE)))


def spec_change(started: Mapping[str, Any], now: Mapping[str, Any]) -> str | None:
    """The first spec field that differs between two dumps, fields a rerun may change left out."""
    strip = {**now, "budget": {**now.get("budget", {}), "num_samples": started.get("budget", {}).get("num_samples")}}
    return spec_difference(started, strip)


def open_folder(spec: SweepSpec, out: Path) -> DriverState:
    """Create ``out`` for ``spec``, or reopen it: a folder started with another spec is refused in one line."""
    dumped = spec.model_dump(mode="json")
    if (out / DRIVER_FILE).exists():
        state = DriverState.load(out)
        if changed := spec_change(state.spec, dumped):
            raise SpecError(
                f"{out / DRIVER_FILE}: this folder runs another spec ({changed} differs); rerun with the same "
                f"spec and flags, or use another --out"
            )
        state.spec = dumped
    else:
        out.mkdir(parents=True, exist_ok=True)
        sweep_id = uuid.uuid4().hex[:8]
        state = DriverState(spec.name, sweep_id, f"{spec.name}-{sweep_id}", spec.problem_hash(), dumped)
    (out / SPEC_FILE).write_text(yaml.safe_dump(dumped, sort_keys=False))
    state.runs.append({"started": now_iso()})
    state.save(out)
    return state


def resume_checkpoints(out: Path, recorded: Container[int]) -> dict[int, str]:
    """Trial number → the checkpoint of the group it was training when the driver stopped.

    A checkpoint whose members are all ``recorded`` (the driver was killed after the group's last
    result, before it removed the file) is of no further use and is deleted.
    """
    found: dict[int, str] = {}
    for identity in sorted((out / CHECKPOINTS_DIR).glob("group-*.json")):
        state = identity.with_suffix(".pt")
        try:
            numbers = [int(n) for n in json.loads(identity.read_text())["trial_numbers"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if all(number in recorded for number in numbers):
            state.unlink(missing_ok=True)
            identity.unlink()
        elif state.exists():
            found.update({number: str(state) for number in numbers})
    return found


# --- recording -------------------------------------------------------------------------------


@dataclass
class Recorder:
    """Writes each result once — full result file, then ledger row — and tells it to Optuna."""

    spec: SweepSpec
    out: Path
    fixed: dict[str, Any]
    proposer: StudyProposer
    ledger: ResultsLedger
    driver_run: int
    quiet: bool = False
    rungs: Rungs | None = None  # early stopping (scheduler: moasha): the sweep's rung state
    started: float = field(default_factory=time.time)

    def record(self, member: Member, result: TrialResult) -> None:
        """One member's result: ``trials/trial-NNNN.json``, a ledger row (the Ray sweep's shape), Optuna told."""
        if member.number not in self.ledger:
            trials = self.out / TRIALS_DIR
            trials.mkdir(exist_ok=True)
            write_atomic(trials / f"trial-{member.number:04d}.json", json.dumps(result.to_dict(), default=str))
            self.ledger.append(
                ledger_row(
                    self.spec.name,
                    member.number,
                    member.params,
                    result,
                    searched=self.spec.search,
                    config=trial_params(self.fixed, self.spec.search, member.params),
                    driver_run=self.driver_run,
                )
            )
            self.say(member.number, result)
        self.proposer.tell_result(member.number, result)

    def say(self, number: int, result: TrialResult) -> None:
        if self.quiet:
            return
        shown = ", ".join(f"{m} {result.metric(m):.4g}" for m in self.spec.metric_names)
        what = f"{result.status.value}: {shown}" if result.ok else f"{result.status.value}: {result.message[:200]}"
        done = f"{len(self.ledger.rows)}/{self.spec.budget.num_samples}"
        print(
            f"[{self.spec.name}] trial {number} {what} ({done} results, {time.time() - self.started:.0f}s)", flush=True
        )


def tell_recorded(
    study: optuna.Study, storage: JournalStorage, spec: SweepSpec, out: Path, ledger: ResultsLedger
) -> int:
    """Trials a kill left RUNNING although their result is in the ledger: tell Optuna now, never train again."""
    study_id = storage.get_study_id_from_name(study.study_name)
    told = 0
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_own(frozen) or frozen.number not in ledger:
            continue
        full = out / TRIALS_DIR / f"trial-{frozen.number:04d}.json"
        result = TrialResult.from_dict(json.loads(full.read_text()) if full.exists() else ledger.rows[frozen.number])
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        tell(study, optuna.Trial(study, trial_id), result, spec.metric_names, spec.constraint_rules)
        told += 1
    return told


# --- training one group ----------------------------------------------------------------------


class Checkpointer:
    """Saves the group's ``CohortState`` at most every ``interval_s`` as ``checkpoints/group-NNNN.pt`` (atomic)."""

    def __init__(self, out: Path, first: int, identity: dict[str, Any], interval_s: float) -> None:
        self.path = out / CHECKPOINTS_DIR / f"group-{first:04d}.pt"
        self.identity = identity
        self.interval_s = interval_s
        self.last = time.monotonic()

    def __call__(self, state: Any) -> None:
        if not self.interval_s or time.monotonic() - self.last < self.interval_s:
            return
        self.path.parent.mkdir(exist_ok=True)
        write_atomic(self.path.with_suffix(".json"), json.dumps({**self.identity, "epoch": state.epoch}))
        partial = self.path.with_name(f".{self.path.name}.tmp")
        state.save(partial)
        os.replace(partial, self.path)
        self.last = time.monotonic()

    def discard(self) -> None:
        """The group finished: every member is recorded, its checkpoint is of no further use."""
        self.path.unlink(missing_ok=True)
        self.path.with_suffix(".json").unlink(missing_ok=True)


def usable_checkpoint(member: Member, stage: str) -> tuple[str, dict[str, Any]] | None:
    """The checkpoint a member was handed (and its identity) when it was written in ``stage``."""
    if not member.resume_checkpoint or not Path(member.resume_checkpoint).exists():
        return None
    try:
        identity = json.loads(Path(member.resume_checkpoint).with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    return (member.resume_checkpoint, identity) if identity.get("stage") == stage else None


def configured(members: list[Member], recorder: Recorder) -> tuple[list[Member], dict[int, TrialConfig]]:
    """The members whose configuration is valid and their configs; the others are recorded ``failed`` now."""
    configs, failed = valid_configs(members, recorder.fixed)
    for member in members:
        if member.number in failed:
            recorder.record(member, failed[member.number])
    return [m for m in members if m.number in configs], configs


def train_cohort(members: list[Member], recorder: Recorder) -> None:
    """Train ``members`` as one cohort (``run_cohort``), recording each as it leaves the stack.

    Continues from the group's checkpoint when it holds every member handed out; members of that
    checkpoint already recorded ride along and leave the stack at once (as the Ray trainable does).
    """
    from trainables.cohort import run_cohort

    spec, fixed = recorder.spec, recorder.fixed
    members, configs = configured(members, recorder)
    if not members:
        return
    mine = {m.number: m for m in members}
    cohort: list[tuple[int, TrialConfig]] = [(m.number, configs[m.number]) for m in members]
    resume_from = None
    if found := usable_checkpoint(members[0], COHORT_STAGE):
        if (held := cohort_in_checkpoint(members, configs, fixed, found[1])) is not None:
            resume_from, cohort = found[0], held
    numbers = [number for number, _ in cohort]
    params = [{k: v for k, v in config.to_dict().items() if k not in fixed} for _, config in cohort]
    identity = {"trial_numbers": numbers, TRIAL_NUMBER_KEY: numbers[0], "stage": COHORT_STAGE, "params": params}
    checkpoint = Checkpointer(recorder.out, numbers[0], identity, spec.checkpoint_interval_s)
    where = models_dir(spec, recorder.out)
    paths = [model_file(where, f"trial-{n:04d}") if n in mine else None for n in numbers]

    def ended(index: int, result: TrialResult) -> None:
        member = mine.get(numbers[index])
        if member is None or member.number in recorder.ledger:
            return
        if paths[index] and result.ok:
            result.extra[MODEL_FILE_KEY] = paths[index]
        recorder.record(member, result)

    def ranked_out(index: int, metrics: Mapping[str, Any]) -> bool:
        """A passenger leaves the stack at once; a member asks the rung state at its rungs."""
        if numbers[index] not in mine:
            return True
        return recorder.rungs is not None and recorder.rungs.stops(numbers[index], metrics)

    try:
        results = run_cohort(
            [config for _, config in cohort],
            lambda index, metrics, state: checkpoint(state),
            resume_from=resume_from,
            model_paths=paths,
            stop=ranked_out if recorder.rungs is not None or len(cohort) > len(mine) else None,
            on_end=ended,
        )
    except DETERMINISTIC_ERRORS as error:
        results = [failed_result(error)] * len(cohort)
    for index, result in enumerate(results):
        ended(index, result)
    checkpoint.discard()


def train_branching(
    members: list[Member], slots: Mapping[int, tuple[int, int]], recorder: Recorder, group: str
) -> None:
    """Several regularized runs as one stack, each branching at its branch point (``run_cohort_branches``).

    As ``sweeps.trainable.train_branching_cohort``: members equal but for the branch settings are
    one run; in proxy mode each run chooses its other thresholds from its prune-now front, and the
    proposer turns them into trials (``on_report`` with the plan).  A checkpoint is used only when
    it holds exactly the members handed out.
    """
    from trainables.cohort import run_cohort_branches

    spec, proposer, rungs = recorder.spec, recorder.proposer, recorder.rungs
    members, configs = configured(members, recorder)
    if not members:
        return
    runs = branch_runs(members, configs)
    numbers = [m.number for m in members]
    settings = branch_settings(spec, recorder.out)
    identity = {"trial_numbers": numbers, TRIAL_NUMBER_KEY: numbers[0], "stage": BRANCHING_STAGE}
    checkpoint = Checkpointer(recorder.out, numbers[0], identity, spec.checkpoint_interval_s)
    resume_from = None
    if (found := usable_checkpoint(members[0], BRANCHING_STAGE)) and sorted(found[1]["trial_numbers"]) == sorted(
        numbers
    ):
        resume_from = found[0]

    def choose(run: int, points: list[Any]) -> list[dict[str, Any]]:
        first = runs[run][0]
        count, skip = slots.get(first.number, (0, 0))
        if not count:
            return []
        own = configs[first.number].threshold
        plan = [{"threshold": t} for t in settings.more_thresholds(points, own, count, skip)]
        proposer.on_report(group, {TRIAL_NUMBER_KEY: first.number, BRANCH_PLAN_KEY: json.dumps(plan)})
        return plan

    def model_path(run: int, branch: int) -> str | None:
        return model_file(settings.models_dir, f"run-{runs[run][0].number:04d}-branch-{branch}")

    def ended(run: int, branch: int, result: TrialResult) -> None:
        first = runs[run][0].number
        number = proposer.member_number(group, {BRANCH_INDEX_KEY: branch, SHARED_RUN_KEY: first})
        member = next((m for m in proposer.members(group) if m.number == number), None)
        if member is None or member.number in recorder.ledger:
            return  # a chosen branch repeating a known configuration: not recorded
        result.extra.update({SHARED_RUN_KEY: first, BRANCH_INDEX_KEY: branch})
        if (path := model_path(run, branch)) and result.ok:
            result.extra[MODEL_FILE_KEY] = path
        recorder.record(member, result)

    try:
        results = run_cohort_branches(
            [configs[run[0].number] for run in runs],
            [[split_branch_settings(configs[m.number].to_dict())[1] for m in run] for run in runs],
            lambda run, metrics, state: checkpoint(state),
            resume_from=resume_from,
            model_path=model_path,
            stop=(lambda run, metrics: rungs.stops(runs[run][0].number, metrics)) if rungs is not None else None,
            on_end=ended,
            **settings.cohort_options(slots, choose),
        )
    except DETERMINISTIC_ERRORS as error:
        results = [[failed_result(error)] * len(run) for run in runs]
    for run, run_results in enumerate(results):
        for branch, result in enumerate(run_results):
            ended(run, branch, result)
    checkpoint.discard()


def train_group(config: Mapping[str, Any], recorder: Recorder, group: str) -> None:
    """Train one handed-out group: the branching runs of a branching spec, else one cohort."""
    members = members_of(config)
    if recorder.spec.budget.thresholds_per_run > 1:
        train_branching(members, branch_slots(config), recorder, group)
    else:
        train_cohort(members, recorder)


# --- the driver ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one driver run left: results in the ledger, ok ones, duplicates refused, why the space ran out."""

    out: Path
    results: int
    ok: int
    duplicates: int
    exhausted: str


def check_runnable(spec: SweepSpec, source: str) -> None:
    """Refuse in one line, before anything is written, what would fail every trial alike.

    The device must exist and the data load (``sweeps.check``'s checks: a missing MNIST folder is
    one line, not ``num_samples`` failed results).
    """
    from sweeps.check import build_configs, check_data
    from trainables.pipeline import resolve_device

    configs = build_configs(spec, source)
    resolve_device(configs[0][1].device)
    check_data(spec, source, configs)


def run_asktell(spec: SweepSpec, out: Path, quiet: bool = False, source: str = "<spec>") -> Outcome:
    """Ask, train and tell until the folder holds ``budget.num_samples`` results (or the space runs out)."""
    check_runnable(spec, source)
    out = out.expanduser().resolve()
    state = open_folder(spec, out)
    storage = journal_storage(out)
    study = open_study(storage, state.study_name, spec, spec.name)
    ledger = ResultsLedger(out / RESULTS_FILE)
    if (told := tell_recorded(study, storage, spec, out, ledger)) and not quiet:
        print(f"[{spec.name}] told Optuna {told} result(s) recorded just before the interruption", flush=True)
    proposer = StudyProposer(
        study, storage, **search_settings(spec), resume_checkpoints=resume_checkpoints(out, ledger)
    )
    fixed = fixed_settings(spec, out, pretrain_cache=out / PRETRAIN_CACHE_DIR)
    rungs = Rungs(**rungs_settings(spec, out)) if spec.scheduler.type == "moasha" else None
    recorder = Recorder(spec, out, fixed, proposer, ledger, driver_run=len(state.runs), quiet=quiet, rungs=rungs)
    index = 0
    while (config := proposer.hand_out(group := f"group-{len(state.runs)}-{index}")) is not None:
        train_group(config, recorder, group)
        proposer.release(group)
        index += 1
    rows = list(ledger.rows.values())
    ok = sum(row["status"] == Status.OK for row in rows)
    return Outcome(out, len(rows), ok, proposer.duplicates, proposer.exhausted_reason)


# --- the command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sweeps.asktell",
        description="Run a sweep spec without Ray or MLflow: cohorts trained under Optuna's ask/tell, "
        "results in --out (import them with `hoyersweep import DIR`).",
    )
    parser.add_argument("spec", help="sweep spec YAML")
    parser.add_argument("--out", required=True, help="results folder (rerun the same command to continue it)")
    parser.add_argument(
        "--set",
        action="extend",
        nargs="+",
        metavar="KEY=VALUE",
        help="override spec fields, e.g. --set trial.epochs=5 trial.finetune_epochs=2",
    )
    parser.add_argument("--data-dir", help="override data_dir")
    parser.add_argument("--device", help="override trial.device (cpu, cuda, cuda:1, auto)")
    parser.add_argument("--cohort-size", type=int, help="override budget.cohort_size (trials trained as one stack)")
    parser.add_argument("--num-samples", type=int, help="override budget.num_samples (results)")
    parser.add_argument("--quiet", action="store_true", help="no line per result")
    return parser


def overrides_of(args: argparse.Namespace) -> dict[str, Any]:
    """The flags as dotted spec overrides (``--set`` values parsed as YAML, as ``hoyersweep run`` does)."""
    from sweeps.cli import spec_overrides

    overrides = spec_overrides(args)
    for flag, dotted in (("device", "trial.device"), ("cohort_size", "budget.cohort_size")):
        if getattr(args, flag) is not None:
            overrides[dotted] = getattr(args, flag)
    return overrides


def main(argv: list[str] | None = None) -> int:
    """The command: 0 when a result is ok, 1 when none is, 2 for a bad spec, flag or folder (one line)."""
    from sweeps.cli import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        spec, source = load_spec(args.spec, overrides_of(args))
        outcome = run_asktell(spec, Path(args.out), quiet=args.quiet, source=str(source))
    except (SpecError, ConfigError, DataError, argparse.ArgumentTypeError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    if not args.quiet:
        more = f"; {outcome.duplicates} repeated proposal(s) not trained" if outcome.duplicates else ""
        ended = f"; search space exhausted: {outcome.exhausted}" if outcome.exhausted else ""
        print(
            f"[{spec.name}] {outcome.results} results ({outcome.ok} ok) in {outcome.out}{more}{ended}; "
            f"record them as a sweep with `hoyersweep import {outcome.out}`",
            flush=True,
        )
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
