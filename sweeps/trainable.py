"""The one function trainable: DeepHoyer trials under Ray Tune.

A Ray trial trains the members the searcher handed it (``sweeps.searcher.Member``): one with
``trainables.run_trial``, the branches of one regularized run (``train_branches``), or a cohort
trained as one stacked model (``train_cohort``).  Every report names its member (``trial_number``):
each epoch's metrics, with a ``tune.Checkpoint`` at most every ``checkpoint_interval_s``
seconds, and one final report per member (``final: True``) holding its ``TrialResult`` scalars
and its per-layer table and history as JSON text (``TrialResult.from_dict`` decodes them).  A
member resumes from ``tune.get_checkpoint()`` when Ray retries the trial, else from the
checkpoint a resumed sweep hands it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray import tune

from sweeps.plan import (
    DETERMINISTIC_ERRORS,
    BranchSettings,
    branch_point_path,
    branch_runs,
    cohort_in_checkpoint,
    failed_result,
    member_config,
    model_file,
    valid_configs,
)
from sweeps.scheduler import RungChannel
from sweeps.searcher import (
    BRANCH_INDEX_KEY,
    BRANCH_PLAN_KEY,
    Member,
    branch_slots,
    members_of,
)
from trainables import TrialConfig, run_trial
from trainables.branching import run_branches
from trainables.cohort import run_cohort, run_cohort_branches
from trainables.config import split_branch_settings
from trainables.contract import MODEL_FILE_KEY, SHARED_RUN_KEY, TRIAL_NUMBER_KEY, TrialResult

CHECKPOINT_FILE = "state.pt"
IDENTITY_FILE = "trial.json"  # beside the state: whose checkpoint this is, for a resumed sweep
SHARED_STAGE = "shared"


def _flat(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scalars of a report (Ray results stay flat; per-branch lists stay in the trial)."""
    return {k: v for k, v in metrics.items() if v is None or isinstance(v, (int, float, str, bool))}


class Reporter:
    """Forwards a trial's epoch reports to ``tune.report``, with a checkpoint at most every ``interval_s``.

    ``identity(state)`` says whose checkpoint it is (written beside it, read by a resumed sweep);
    the time spent inside ``tune.report`` is Ray's share of the trial's time (``waited``).
    """

    def __init__(self, interval_s: float, identity: Callable[[Any], dict[str, Any]]) -> None:
        self.interval_s = interval_s
        self.identity = identity
        self.last_checkpoint = time.monotonic()
        self.waited = 0.0

    def __call__(self, metrics: dict[str, Any], state: Any) -> None:
        began = time.perf_counter()
        if self.interval_s and time.monotonic() - self.last_checkpoint >= self.interval_s:
            with tempfile.TemporaryDirectory() as directory:
                state.save(Path(directory) / CHECKPOINT_FILE)
                (Path(directory) / IDENTITY_FILE).write_text(json.dumps(self.identity(state)))
                tune.report(_flat(metrics), checkpoint=tune.Checkpoint.from_directory(directory))
            self.last_checkpoint = time.monotonic()
        else:
            tune.report(_flat(metrics))
        self.waited += time.perf_counter() - began

    def extra(self) -> dict[str, Any]:
        return {"report_wait_s": self.waited, "node_id": ray.get_runtime_context().get_node_id()}


def _checkpoint_to_resume(workdir: Path, number: int, handed_over: str | None, stage: str | None = None) -> Path | None:
    """A local copy of the checkpoint to continue ``number`` from: Ray's own (a retry) first, else the sweep's.

    With ``stage``, only a checkpoint taken in that stage counts (a branching run resumes inside
    its shared phase from a checkpoint, and after it from its branch point).  Its identity file is
    copied beside it (``workdir / IDENTITY_FILE``: a cohort reads its members there).
    """

    def usable(identity: Path, source: Path) -> bool:
        if not (identity.exists() and source.exists()):
            return False
        marker = json.loads(identity.read_text())
        numbers = marker.get("trial_numbers") or [marker.get(TRIAL_NUMBER_KEY)]
        return number in numbers and (stage is None or marker.get("stage") == stage)

    def copy(source: Path) -> Path:
        shutil.copy(source.with_name(IDENTITY_FILE), workdir / IDENTITY_FILE)  # read by train_cohort
        return Path(shutil.copy(source, workdir / CHECKPOINT_FILE))

    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            source = Path(directory) / CHECKPOINT_FILE
            if usable(Path(directory) / IDENTITY_FILE, source):
                return copy(source)
    if handed_over and usable(Path(handed_over).with_name(IDENTITY_FILE), Path(handed_over)):
        return copy(Path(handed_over))
    return None


def final_report(member: Member | None, result: TrialResult, extra: dict[str, Any]) -> dict[str, Any]:
    """The flat final report of one member (Ray results stay flat: the lists travel as JSON)."""
    return {
        **{k: v for k, v in result.extra.items() if isinstance(v, (int, float, str, bool))},
        **result.scalars(),
        **extra,
        TRIAL_NUMBER_KEY: member.number if member is not None else None,
        "final": True,
        "layers": json.dumps(result.layers),
        "history": json.dumps([_flat(epoch) for epoch in result.history]),
    }


def report_branch_end(
    number: int | None, run: int, branch: int, result: TrialResult, path: str | None, extra: dict[str, Any]
) -> None:
    """One branch's final report: its trial (None for a branch the searcher numbers from its plan),
    the regularized run it shares (``run``: that run's first trial), its place there, and its model."""
    extra = {**extra, SHARED_RUN_KEY: run, BRANCH_INDEX_KEY: branch}
    if path and result.ok:
        extra[MODEL_FILE_KEY] = path
    tune.report(final_report(Member(number, {}) if number is not None else None, result, extra))


def train_member(
    member: Member, fixed: dict[str, Any], checkpoint_interval_s: float, models_dir: str | None = None
) -> None:
    """Train one member to its final report; a bad configuration or bad data is a ``failed`` result."""
    try:
        config = member_config(member, fixed)
    except DETERMINISTIC_ERRORS as error:
        tune.report(final_report(member, failed_result(error), {}))
        return
    reporter = Reporter(checkpoint_interval_s, lambda state: {TRIAL_NUMBER_KEY: member.number, "epoch": state.epoch})

    def report(metrics: dict[str, Any], state: Any) -> None:
        reporter({**metrics, TRIAL_NUMBER_KEY: member.number}, state)

    with tempfile.TemporaryDirectory() as workdir:
        resume_from = _checkpoint_to_resume(Path(workdir), member.number, member.resume_checkpoint)
        try:
            path = model_file(models_dir, f"trial-{member.number:04d}")
            result = run_trial(config, report, resume_from=resume_from, model_path=path)
            if path and result.ok:
                result.extra[MODEL_FILE_KEY] = path
        except DETERMINISTIC_ERRORS as error:
            result = failed_result(error)
    tune.report(final_report(member, result, reporter.extra()))


def train_branches(
    members: list[Member],
    slots: int,
    fixed: dict[str, Any],
    checkpoint_interval_s: float,
    settings: BranchSettings,
    skip: int = 0,
) -> None:
    """Train one regularized run and its branches: the members, plus ``slots`` more chosen by the proxy.

    ``skip``: the proxy's ranked picks that earlier runs with equal shared settings took (``more_thresholds``).

    Every branch ends with its own final report (``branch_index`` = its place: members first, then
    the chosen ones in the order of the ``branch_plan`` report), sent as soon as that branch
    finished, so the ledger, MLflow and Optuna hear of it while the next branch fine-tunes.  The
    branch point is kept in ``settings.branch_dir`` until every branch finished, so an interrupted
    run never retrains its shared phase.
    """
    first = members[0]
    try:
        config = member_config(first, fixed)
        branch_configs = [member_config(m, fixed) for m in members]
    except DETERMINISTIC_ERRORS as error:
        for index, member in enumerate(members):
            tune.report({**final_report(member, failed_result(error), {}), BRANCH_INDEX_KEY: index})
        return
    shared, _ = split_branch_settings(config.to_dict())
    branches = [split_branch_settings(c.to_dict())[1] for c in branch_configs]
    numbers = [m.number for m in members]
    reporter = Reporter(
        checkpoint_interval_s,
        lambda state: {
            "trial_numbers": numbers,
            TRIAL_NUMBER_KEY: first.number,
            "epoch": state.epoch,
            "stage": str(getattr(state, "branch", SHARED_STAGE)),
        },
    )

    def report(metrics: dict[str, Any], state: Any) -> None:
        branch = metrics.get("branch", SHARED_STAGE)
        index = None if branch == SHARED_STAGE else int(branch)
        number = first.number if index is None else (numbers[index] if index < len(numbers) else None)
        reporter({**metrics, TRIAL_NUMBER_KEY: number, BRANCH_INDEX_KEY: index}, state)

    chooser: Any = branches
    if slots:

        def chooser(run: Any) -> list[dict[str, Any]]:
            """At the branch point: ``slots`` more thresholds spanning the prune-now front, reported as the plan."""
            points = settings.proxy_points(run, config.threshold_mode)
            chosen = settings.more_thresholds(points, config.threshold, slots, skip)
            plan = [{"threshold": t} for t in chosen]
            tune.report({TRIAL_NUMBER_KEY: first.number, BRANCH_PLAN_KEY: json.dumps(plan)})
            return [*branches, *({**branches[0], **entry} for entry in plan)]

        chooser.track = [(t, config.threshold_mode) for t in settings.grid]  # type: ignore[attr-defined]

    def model_path(index: int) -> str | None:
        return model_file(settings.models_dir, f"run-{first.number:04d}-branch-{index}")

    reported: set[int] = set()

    def ended(index: int, result: TrialResult) -> None:
        """Branch ``index``'s final report, sent once, as soon as the branch finished."""
        if index in reported:
            return
        number = numbers[index] if index < len(numbers) else None
        report_branch_end(number, first.number, index, result, model_path(index), reporter.extra())
        reported.add(index)

    point = branch_point_path(settings, shared)
    with tempfile.TemporaryDirectory() as workdir:
        resume_from = _checkpoint_to_resume(Path(workdir), first.number, first.resume_checkpoint, SHARED_STAGE)
        try:
            results = run_branches(
                config,
                chooser,
                report,
                resume_from=resume_from,
                branch_point=point,
                track=[(config.threshold, config.threshold_mode)],
                model_path=model_path,
                on_end=ended,
            )
        except DETERMINISTIC_ERRORS as error:
            results = [failed_result(error)] * max(len(members), 1)
    for index, result in enumerate(results):  # after an error: the branches that had not finished
        ended(index, result)
    if not (settings.keep or settings.repeatable):  # a repeatable point waits for the sweep's end (runner)
        point.unlink(missing_ok=True)
        point.with_suffix(".lock").unlink(missing_ok=True)


COHORT_STAGE = "cohort"  # the stage of a cohort's checkpoints (their identity also lists every member's params)
BRANCHING_COHORT_STAGE = "branching-cohort"  # the stage of a branching cohort's checkpoints


def cohort_reporter(interval_s: float, numbers: list[int], stage: str, **identity: Any) -> Reporter:
    """The ``Reporter`` of a cohort: its checkpoints name every member (and ``identity``'s extras)."""
    return Reporter(
        interval_s,
        lambda state: {
            "trial_numbers": numbers,
            TRIAL_NUMBER_KEY: numbers[0],
            "epoch": state.epoch,
            "stage": stage,
            **identity,
        },
    )


def _cohort_of(
    members: list[Member], configs: dict[int, TrialConfig], fixed: dict[str, Any], workdir: Path
) -> tuple[Path | None, list[tuple[int, TrialConfig]]]:
    """The checkpoint to continue ``members`` from (or None) and the cohort it holds, in stack order.

    Without a checkpoint the cohort is the members themselves.  A checkpoint lists its cohort's
    members (``trial_numbers`` and their ``params``); it is used when it holds every member
    handed out.  Members of that cohort not handed out (recorded before the interruption) ride
    along as passengers: the stack must be whole to continue, their results are not reported.
    """
    first = members[0]
    mine = [(m.number, configs[m.number]) for m in members]
    resume_from = _checkpoint_to_resume(workdir, first.number, first.resume_checkpoint, COHORT_STAGE)
    if resume_from is None:
        return None, mine
    cohort = cohort_in_checkpoint(members, configs, fixed, json.loads((workdir / IDENTITY_FILE).read_text()))
    return (None, mine) if cohort is None else (resume_from, cohort)


def train_cohort(
    members: list[Member],
    fixed: dict[str, Any],
    checkpoint_interval_s: float,
    models_dir: str | None = None,
    stop: RungChannel | None = None,
) -> None:
    """Train ``members`` as one cohort (``trainables.cohort.run_cohort``); one final report each.

    A member whose configuration is bad gets its ``failed`` result at once and the others train
    without it.  Every epoch of every member goes to ``tune.report`` under its own
    ``trial_number``, with a checkpoint of the whole cohort at most every ``checkpoint_interval_s``
    (its identity lists every member and its params).  A cohort resumes from Ray's checkpoint (a
    retry) or from the one the sweep handed over.  ``stop``: the rung channel of early stopping
    (each member asks at its rungs; one ranked out ends ``pruned`` while the others go on).  An
    error of the whole cohort (out of memory, a bad shared setting, bad data) is a ``failed``
    result for every member.
    """
    configs = _valid_configs(members, fixed)
    members = [m for m in members if m.number in configs]
    if not members:
        return
    mine = {m.number for m in members}
    with tempfile.TemporaryDirectory() as workdir:
        resume_from, cohort = _cohort_of(members, configs, fixed, Path(workdir))
        numbers = [number for number, _ in cohort]
        params = [{k: v for k, v in config.to_dict().items() if k not in fixed} for _, config in cohort]
        reporter = cohort_reporter(checkpoint_interval_s, numbers, COHORT_STAGE, params=params)

        def report(index: int, metrics: dict[str, Any], state: Any) -> None:
            if numbers[index] in mine:
                reporter({**metrics, TRIAL_NUMBER_KEY: numbers[index]}, state)

        def ranked_out(index: int, metrics: dict[str, Any]) -> bool:
            """A passenger leaves the stack at once; a member asks the rung channel at its rungs."""
            if numbers[index] not in mine:
                return True
            return stop is not None and stop.stops(numbers[index], metrics)

        paths = [model_file(models_dir, f"trial-{n:04d}") if n in mine else None for n in numbers]
        reported: set[int] = set()

        def ended(index: int, result: TrialResult) -> None:
            """A member's final report as soon as it leaves the stack (its Optuna trial told at once)."""
            member = next((m for m in members if m.number == numbers[index]), None)
            if member is None or member.number in reported:
                return
            if paths[index] and result.ok:
                result.extra[MODEL_FILE_KEY] = paths[index]
            tune.report(final_report(member, result, reporter.extra()))
            reported.add(member.number)

        try:
            results = run_cohort(
                [config for _, config in cohort],
                report,
                resume_from=resume_from,
                model_paths=paths,
                stop=ranked_out if stop is not None or len(cohort) > len(mine) else None,
                on_end=ended,
            )
        except DETERMINISTIC_ERRORS as error:
            results = [failed_result(error)] * len(cohort)
    for index, result in enumerate(results):  # those a resumed checkpoint held finished, or all after an error
        ended(index, result)


def _valid_configs(members: list[Member], fixed: dict[str, Any]) -> dict[int, TrialConfig]:
    """Each member's config; a member whose configuration is bad gets its ``failed`` final report now."""
    configs, failed = valid_configs(members, fixed)
    for member in members:
        if member.number in failed:
            tune.report(final_report(member, failed[member.number], {}))
    return configs


def train_branching_cohort(
    members: list[Member],
    slots: dict[int, tuple[int, int]],
    fixed: dict[str, Any],
    checkpoint_interval_s: float,
    settings: BranchSettings,
    stop: RungChannel | None = None,
) -> None:
    """A branching cohort: several regularized runs as one stack, each branching at its branch point.

    Members that agree on everything but the branch settings are one run (``trainables.config.
    split_branch_settings``), its first member first; ``slots`` (``branch_slots``) gives each run's
    first member the branches it chooses itself and the proxy picks it passes over (proxy mode:
    from its prune-now front over ``settings.grid``, reported as its ``branch_plan``, which the
    searcher turns into trials).
    Reports and final results name their run (``shared_run``) and branch (``branch_index``), as
    ``train_branches``' do; the rung channel ranks whole runs.  A checkpoint is used to resume
    only when it holds exactly the members handed out (otherwise the cohort starts afresh: a
    resumed sweep hands chosen branches out as members of their own).
    """
    configs = _valid_configs(members, fixed)
    members = [m for m in members if m.number in configs]
    if not members:
        return
    groups = branch_runs(members, configs)
    numbers = [m.number for m in members]
    reporter = cohort_reporter(checkpoint_interval_s, numbers, BRANCHING_COHORT_STAGE)

    def number_of(run: int, branch: int) -> int | None:
        group = groups[run]
        return group[branch].number if branch < len(group) else None  # a chosen branch: the searcher knows it

    def report(run: int, metrics: dict[str, Any], state: Any) -> None:
        branch = metrics.get("branch")
        index = None if branch == SHARED_STAGE else int(branch)
        number = groups[run][0].number if index is None else number_of(run, index)
        reporter(
            {**metrics, TRIAL_NUMBER_KEY: number, BRANCH_INDEX_KEY: index, SHARED_RUN_KEY: groups[run][0].number}, state
        )

    def choose(run: int, points: list[Any]) -> list[dict[str, Any]]:
        first = groups[run][0]
        count, skip = slots.get(first.number, (0, 0))
        if not count:
            return []
        own = configs[first.number].threshold
        plan = [{"threshold": t} for t in settings.more_thresholds(points, own, count, skip)]
        tune.report({TRIAL_NUMBER_KEY: first.number, BRANCH_PLAN_KEY: json.dumps(plan)})
        return plan

    def model_path(run: int, branch: int) -> str | None:
        return model_file(settings.models_dir, f"run-{groups[run][0].number:04d}-branch-{branch}")

    reported: set[tuple[int, int]] = set()

    def ended(run: int, branch: int, result: TrialResult) -> None:
        if (run, branch) in reported:
            return
        report_branch_end(
            number_of(run, branch), groups[run][0].number, branch, result, model_path(run, branch), reporter.extra()
        )
        reported.add((run, branch))

    with tempfile.TemporaryDirectory() as workdir:
        first = members[0]
        resume_from = _checkpoint_to_resume(
            Path(workdir), first.number, first.resume_checkpoint, BRANCHING_COHORT_STAGE
        )
        if resume_from is not None:
            identity = json.loads((Path(workdir) / IDENTITY_FILE).read_text())
            resume_from = resume_from if sorted(identity.get("trial_numbers") or []) == sorted(numbers) else None
        try:
            results = run_cohort_branches(
                [configs[group[0].number] for group in groups],
                [[split_branch_settings(configs[m.number].to_dict())[1] for m in group] for group in groups],
                report,
                resume_from=resume_from,
                model_path=model_path,
                stop=(lambda run, metrics: stop.stops(groups[run][0].number, metrics)) if stop is not None else None,
                on_end=ended,
                **settings.cohort_options(slots, choose),
            )
        except DETERMINISTIC_ERRORS as error:
            results = [[failed_result(error)] * len(group) for group in groups]
    for run, run_results in enumerate(results):  # those a resumed checkpoint held finished, or all after an error
        for branch, result in enumerate(run_results):
            ended(run, branch, result)


def deephoyer_trainable(
    config: dict[str, Any],
    fixed: dict[str, Any],
    checkpoint_interval_s: float = 30.0,
    branching: BranchSettings | None = None,
    models_dir: str | None = None,
    cohorts: bool = False,
    stop: RungChannel | None = None,
) -> None:
    """Run the members of one Ray trial: ``fixed`` settings plus each member's sampled params.

    With ``branching``, the members are branches of one regularized run (``train_branches``);
    with ``cohorts`` (``budget.cohort_size`` > 1) or several members, they train as one cohort
    (``train_cohort``, consulting the rung channel ``stop`` when early stopping is on); a single
    member otherwise trains on its own (``train_member``).
    """
    members = members_of(config)
    slots = branch_slots(config)
    if branching is not None and cohorts:
        train_branching_cohort(members, slots, fixed, checkpoint_interval_s, branching, stop)
    elif branching is not None:
        count, skip = slots.get(members[0].number, (0, 0)) if members else (0, 0)
        train_branches(members, count, fixed, checkpoint_interval_s, branching, skip)
    elif cohorts or len(members) > 1:
        train_cohort(members, fixed, checkpoint_interval_s, models_dir, stop)
    else:
        for member in members:
            train_member(member, fixed, checkpoint_interval_s, models_dir)
