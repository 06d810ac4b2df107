"""The Optuna side of a sweep, without Ray: the search space, the sampler, and the rules of asking and telling.

``StudyProposer`` owns the search loop over Optuna's public ask/tell API; the Optuna study is the
truth.  ``sweeps.searcher.OptunaSearcher`` adapts it to Ray Tune's ``Searcher``; the Ray-free
driver ``sweeps.asktell`` drives it directly.  A *group* (``trial_id``) is what one Ray trial
trains — one trial, the branches of one regularized run, or a cohort:

- **Members.** One Ray trial trains one or more configurations ("members"), each its own Optuna
  trial: ``hand_out`` (Ray's ``suggest``) hands out
  ``{"members": [{"trial_number", "params", "resume_checkpoint"}, …]}`` and every member's final
  report (``final: True`` with its ``trial_number``) is told to Optuna on its own — so threshold
  branches and cohort members are ordinary trials.
- **Budget.** ``budget`` counts *results*: Optuna trials that end with a status of
  ``contract.RESULT_STATUSES`` (ok, failed, diverged, pruned), however many one Ray trial yields.
  Interrupted trials and rejected duplicates do not count.  Ray's ``max_concurrent_trials``
  counts Ray trials running at once.
- **No replays.** Trials a killed driver left RUNNING are handed out again first, under their own
  number and with their last checkpoint.  A new proposal that repeats a configuration the study
  already holds — finished, running, or copied from a warm-start source — is never trained: the
  searcher tells it at once (the known objective values and constraints if the original is
  complete, so the sampler learns the point is known; FAIL otherwise), marks it
  ``duplicate_of=<number>`` and asks again.  Such trials get no ledger row, MLflow run or front
  point and do not count toward the budget.  A finite space (categorical and integer parameters
  only) ends the sweep once every configuration is known; any space ends it after
  ``max_duplicate_asks`` duplicates in a row (``exhausted``).
- **Branching.** With ``Branching`` (``budget.thresholds_per_run`` K > 1), the members of one Ray
  trial are K branches of one regularized run: equal in everything but the branch settings
  (``trainables.config.BRANCH_SETTINGS``: threshold, fine-tuning, prune ramp).  ``optuna`` mode asks them all up
  front (the others with the shared part fixed); ``proxy`` mode asks one and reserves K − 1
  budget slots that the run fills itself after its regularized phase (``branch_plan``).  Runs
  whose shared parts are equal (λ = 0 with one seed, say) train the same model and would choose
  the same thresholds, which the searcher then refuses as repeats: each gets its place among
  such runs (``run_repeat``), and its proxy passes over the picks of the runs before it
  (``branch_skip``), so every one of them branches where no earlier one did.
- **Cohorts.** With ``members_per_trial`` K > 1 (``budget.cohort_size``) the K members of a Ray
  trial are asked together and train as one stacked model (``sweeps.trainable.train_cohort``).
  Interrupted members that share a checkpoint (one cohort's) are handed out together and alone,
  so the cohort continues from it; interrupted members without a checkpoint start a new cohort
  with fresh asks.
- **Stopped early.** A PRUNED result (a scheduler or a cohort's rung channel stopped the member)
  is told PRUNED with its prune-now proxies (``proxy_*`` in the result) as user attributes
  (Optuna keeps no intermediate values for multi-objective studies); ``tell_pruned(number,
  proxies)`` builds such a result for a member Tune stopped before it could report.

- **Space-filling start-up.** With ``StartupDesign`` (TPE and GP, unless the spec says
  ``sampler.startup: random``), the asks a model-based sampler would draw at random — while the
  study holds fewer finished trials than its ``n_startup_trials`` — take the next point of one
  scrambled Sobol sequence instead (enqueued, then asked, and marked ``startup_point=<index>``).
  A small sweep's first runs then spread over the range instead of landing where a seed's
  first uniform draws happen to fall; with threshold branching a start-up of 8 trials is only 2
  regularized runs, so this is where it matters.

The sampler is built by the driver with a seed derived from the spec's seed and the number of
trials already in the study (``derive_seed``): a resumed or warm-started sweep continues the
sampler's sequence instead of replaying it, and an uninterrupted sweep with the same spec, seed
and storage proposes the same configurations (exactly so with ``max_concurrent_trials: 1``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState
from scipy.stats import qmc

from sweeps.spec import CategoricalParam, FloatParam, SamplerSpec, SweepSpec
from trainables.contract import (
    COHORT_INDEX_KEY,
    COHORT_SIZE_KEY,
    DUPLICATE_ATTR,
    METRICS,
    SHARED_RUN_KEY,
    STARTUP_POINT_ATTR,
    STOPPED_AT_KEY,
    TRIAL_NUMBER_KEY,
    WARM_START_ATTR,
    Constraint,
    Status,
    TrialResult,
)

logger = logging.getLogger(__name__)

MEMBERS_KEY = "members"
RESUME_KEY = "resume_checkpoint"
BRANCH_SLOTS_KEY = "branch_slots"  # proxy branching: how many more branches the Ray trial chooses itself
BRANCH_PLAN_KEY = "branch_plan"  # a Ray trial's report of the branch settings it chose (JSON list of dicts)
BRANCH_INDEX_KEY = "branch_index"  # which branch of its Ray trial a report belongs to (0 = the asked member)
BRANCH_SKIP_KEY = "branch_skip"  # proxy branching: how many of the proxy's ranked picks earlier equal runs took
GROUP_SLOTS_KEY = "group_slots"  # a branching cohort: [first member's number, branch slots, skip] of each run
RUN_REPEAT_ATTR = "run_repeat"  # a proxy run's first trial: how many runs with equal shared settings came before
CONDITIONED_ASKS = 20  # tries for a branch that repeats no known configuration, before giving up on it
PROXY_ATTR_PREFIX = "proxy_"
MAX_DUPLICATE_ASKS = 200
FINISHED_STATES: tuple[TrialState, ...] = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
RESULT_ATTRS: tuple[str, ...] = ("status", "message", *METRICS, "epochs", "diverged_epoch", "resumed_from_epoch")
EXTRA_ATTRS: tuple[str, ...] = (STOPPED_AT_KEY, COHORT_SIZE_KEY, COHORT_INDEX_KEY)
"""Scalars of a result's ``extra`` kept as user attributes too, so records repaired from the study keep them."""


@dataclass(frozen=True)
class Member:
    """One configuration a Ray trial trains: its Optuna trial number, sampled params, resume checkpoint."""

    number: int
    params: dict[str, Any]
    resume_checkpoint: str | None = None

    def to_config(self) -> dict[str, Any]:
        return {TRIAL_NUMBER_KEY: self.number, "params": dict(self.params), RESUME_KEY: self.resume_checkpoint}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Member:
        return cls(int(config[TRIAL_NUMBER_KEY]), dict(config["params"]), config.get(RESUME_KEY))


def members_of(config: Mapping[str, Any]) -> list[Member]:
    """The members a Ray trial's config holds (branches a trial chooses itself are added by the searcher)."""
    return [Member.from_config(item) for item in config.get(MEMBERS_KEY, [])]


def branch_slots(config: Mapping[str, Any]) -> dict[int, tuple[int, int]]:
    """Each regularized run's (branch slots, skip) by its first member's number, from a handed-out config.

    ``skip``: how many of its proxy's ranked picks earlier runs with equal shared settings took
    (``trainables.branching.more_thresholds``); 0 for configs from before it was handed out.
    """
    members = members_of(config)
    entries = config.get(GROUP_SLOTS_KEY) or (
        [[members[0].number, config.get(BRANCH_SLOTS_KEY, 0), config.get(BRANCH_SKIP_KEY, 0)]] if members else []
    )
    return {int(entry[0]): (int(entry[1]), int(entry[2]) if len(entry) > 2 else 0) for entry in entries}


SplitFn = Callable[[Mapping[str, Any]], tuple[dict[str, Any], dict[str, Any]]]


@dataclass(frozen=True)
class Branching:
    """K configurations per Ray trial that share everything but the branch settings (threshold branching).

    ``split`` cuts a parameter set into (shared, branch) parts (``trainables.config``'s rule).
    ``optuna``: the first branch is asked normally, the others are asked with the shared part
    fixed (``PartialFixedSampler`` around the study's sampler).  ``proxy``: the first branch is
    asked; the Ray trial chooses the other ``per_run − 1`` itself after the regularized phase and
    reports them (``branch_plan``); the searcher then enqueues and asks each with its full
    parameters, so the sampler learns from every branch.
    """

    per_run: int
    mode: Literal["optuna", "proxy"]
    split: SplitFn

    def shared_key(self, params: Mapping[str, Any]) -> str:
        return config_key(self.split(params)[0])


def distributions(spec: SweepSpec) -> dict[str, BaseDistribution]:
    """The spec's search space as Optuna distributions."""
    space: dict[str, BaseDistribution] = {}
    for name, param in spec.search.items():
        if isinstance(param, CategoricalParam):
            space[name] = CategoricalDistribution(param.choices)
        elif isinstance(param, FloatParam):
            space[name] = FloatDistribution(param.low, param.high, log=param.log)
        else:
            space[name] = IntDistribution(param.low, param.high, log=param.log)
    return space


def space_size(space: Mapping[str, BaseDistribution]) -> int | None:
    """How many distinct configurations a space holds, or None when a parameter is continuous."""
    size = 1
    for distribution in space.values():
        if isinstance(distribution, CategoricalDistribution):
            size *= len(distribution.choices)
        elif isinstance(distribution, IntDistribution):
            size *= (distribution.high - distribution.low) // distribution.step + 1
        else:
            return None
    return size


def derive_seed(seed: int | None, trials_in_study: int) -> int | None:
    """The sampler seed of a driver run: the spec's seed on a fresh study, a derived one after that.

    A resumed or warm-started sweep must not restart the sampler's random sequence (it would
    propose the configurations it proposed before); deriving the seed from the number of trials
    already in the study keeps runs reproducible for the same storage.
    """
    if seed is None or trials_in_study == 0:
        return seed
    digest = hashlib.sha256(f"{seed}:{trials_in_study}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def build_sampler(spec: SamplerSpec, seed: int | None) -> optuna.samplers.BaseSampler:
    """The Optuna sampler the spec names, with ``seed``.

    Several asks in a row before any is told (a cohort's K members, concurrent Ray trials) must
    not propose one point K times.  TPE: ``constant_liar=True`` — already Optuna 5's default,
    passed explicitly so that it holds — counts running trials as bad points, pushing the next
    asks away from them.  Optuna 5's GP sampler conditions on running trials by itself; random and
    NSGA-II (a generation's children) draw independently.  An exact repeat is refused by the
    searcher in any case (``StudyProposer._ask_new``).
    """
    if spec.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.type == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=spec.population_size or 10)
    if spec.type == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=spec.start_up_trials)
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=spec.start_up_trials, multivariate=True, constant_liar=True
    )


@dataclass(frozen=True)
class StartupDesign:
    """A space-filling start-up: the first asks of a model-based sampler from a scrambled Sobol sequence.

    ``trials`` is the sampler's start-up length (its ``n_startup_trials``, counted like TPE counts
    them: finished COMPLETE or PRUNED trials, warm-start copies included); ``seed`` scrambles the
    sequence.  The seed is the spec's, not the derived one: a resumed sweep continues the same
    sequence at the next index, so its start-up stays one design (``startup_design`` draws one
    for a spec without a seed; a resume of such a sweep continues the index, not the scramble).
    """

    trials: int
    seed: int

    def point(self, space: Mapping[str, BaseDistribution], index: int) -> dict[str, Any]:
        """The ``index``-th design point, one value per parameter (dimensions in name order)."""
        names = sorted(space)
        sobol = qmc.Sobol(d=len(names), scramble=True, rng=self.seed)
        unit = sobol.random_base2(m=index.bit_length())[index]  # a power of two keeps Sobol's balance
        return {name: value_at(space[name], float(u)) for name, u in zip(names, unit, strict=True)}


def value_at(distribution: BaseDistribution, u: float) -> Any:
    """The value at quantile ``u`` ∈ [0, 1) of a uniform (or log-uniform) prior over ``distribution``.

    Hand-written: Optuna's own mapping (``optuna._transform``) is private.
    """
    if isinstance(distribution, CategoricalDistribution):
        choices = distribution.choices
        return choices[min(int(u * len(choices)), len(choices) - 1)]
    if not isinstance(distribution, FloatDistribution | IntDistribution):
        raise TypeError(f"no start-up design for {type(distribution).__name__}")
    low, high = distribution.low, distribution.high
    if distribution.log:
        value = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    else:
        value = low + u * (high - low)
    if distribution.step is not None:  # always set for an int distribution (1 by default)
        value = low + round((value - low) / distribution.step) * distribution.step
    value = min(high, max(low, value))
    return int(value) if isinstance(distribution, IntDistribution) else float(value)


def config_key(params: Mapping[str, Any]) -> str:
    """A configuration's identity: equal exactly when every parameter value is equal."""
    return json.dumps({name: [type(value).__name__, value] for name, value in params.items()}, sort_keys=True)


def is_own(trial: FrozenTrial) -> bool:
    """A trial of this sweep: not a warm-start copy, not a rejected duplicate proposal."""
    return WARM_START_ATTR not in trial.user_attrs and DUPLICATE_ATTR not in trial.user_attrs


def own_trials(study: optuna.Study, states: Sequence[TrialState] | None = None) -> list[FrozenTrial]:
    """The study's trials of this sweep (warm-start copies and rejected duplicates left out)."""
    return [t for t in study.get_trials(deepcopy=False, states=states) if is_own(t)]


def result_from_attrs(trial: FrozenTrial) -> TrialResult:
    """A finished trial's result as told to Optuna (its user attributes), for repairing records."""
    attrs = {k: v for k, v in trial.user_attrs.items() if k in RESULT_ATTRS or k in EXTRA_ATTRS}
    if "status" not in attrs:
        attrs["status"] = {TrialState.COMPLETE: Status.OK, TrialState.PRUNED: Status.PRUNED}.get(
            trial.state, Status.FAILED
        )
    attrs.setdefault("message", "recorded from the Optuna study after a restart")
    return TrialResult.from_dict(attrs)


def tell(
    study: optuna.Study,
    trial: optuna.Trial,
    result: TrialResult,
    objectives: Sequence[str],
    constraints: Sequence[Constraint] = (),
) -> FrozenTrial:
    """Tell Optuna how ``trial`` ended: COMPLETE with objectives and constraints, FAIL or PRUNED.

    The result's scalars (and ``EXTRA_ATTRS``) become user attributes, so ``result_from_attrs``
    can rebuild the records from the study; a PRUNED result keeps its finite prune-now proxies.
    Constraints go through ``trial.set_constraint`` (Optuna 5), read by the sampler's constraints.
    """
    for key, value in result.scalars().items():
        if key in RESULT_ATTRS and value is not None:
            trial.set_user_attr(key, value)
    for key in EXTRA_ATTRS:
        if isinstance(result.extra.get(key), (int, float, str)):
            trial.set_user_attr(key, result.extra[key])
    values = result.objective_values(objectives)
    if result.status is Status.PRUNED:
        for key, value in result.extra.items():
            if key.startswith(PROXY_ATTR_PREFIX) and isinstance(value, (int, float)) and math.isfinite(value):
                trial.set_user_attr(key, float(value))
        return study.tell(trial, state=TrialState.PRUNED)
    if values is None:
        return study.tell(trial, state=TrialState.FAIL)
    for constraint in constraints:
        trial.set_constraint(constraint.key, constraint.violation(result.metric(constraint.metric)))
    return study.tell(trial, values)


class StudyProposer:
    """The ask/tell rules over one Optuna study (see the module docstring); groups are named by ``trial_id``."""

    def __init__(
        self,
        study: optuna.Study,
        storage: optuna.storages.BaseStorage,
        space: Mapping[str, BaseDistribution],
        objectives: Sequence[str],
        constraints: Sequence[Constraint] = (),
        *,
        budget: int,
        members_per_trial: int = 1,
        branching: Branching | None = None,
        resume_checkpoints: Mapping[int, str] | None = None,
        max_duplicate_asks: int = MAX_DUPLICATE_ASKS,
        on_member: Callable[[Member], Mapping[str, Any]] | None = None,
        startup: StartupDesign | None = None,
    ) -> None:
        if members_per_trial < 1:
            raise ValueError(f"members_per_trial must be ≥ 1, got {members_per_trial}")
        self.study = study
        self._storage = storage
        self._study_id = storage.get_study_id_from_name(study.study_name)
        self._space = dict(space)
        self._size = space_size(self._space)
        self._objectives = list(objectives)
        self._constraints = list(constraints)
        self._members_per_trial = members_per_trial
        self._branching = branching if branching is not None and branching.per_run > 1 else None
        self._slots: dict[str, int] = {}  # Ray trial id → budget reserved for branches it will choose
        self._branch_numbers: dict[str, list[int | None]] = {}  # Ray trial id → trial number of each branch index
        self._group_slots: dict[str, dict[int, int]] = {}  # branching cohort: Ray trial id → run's first → slots
        self._group_numbers: dict[str, dict[int, list[int | None]]] = {}  # … → run's first → numbers by branch
        self._resume = dict(resume_checkpoints or {})
        self._max_duplicate_asks = max_duplicate_asks
        self._on_member = on_member  # called as each member is handed out; returns user attrs for its trial
        self._startup = startup
        self._skips: dict[int, int] = {}  # a proxy run's first member → the proxy picks it passes over

        trials = self._claim_waiting(study.get_trials(deepcopy=False))
        self._known: dict[str, FrozenTrial | optuna.Trial] = {}  # config key → the trial that holds it
        for trial in trials:
            if DUPLICATE_ATTR not in trial.user_attrs and trial.params:
                self._known.setdefault(config_key(trial.params), trial)
        own = [t for t in trials if is_own(t)]
        self._results_before = sum(t.state in FINISHED_STATES for t in own)
        self._adoptable = [t for t in own if t.state == TrialState.RUNNING]
        self._repeats: dict[str, int] = {}  # shared key → proxy runs with those shared settings so far
        if self._branching is not None:
            for trial in own:
                if RUN_REPEAT_ATTR in trial.user_attrs:
                    key = self._branching.shared_key(trial.params)
                    self._repeats[key] = max(self._repeats.get(key, 0), int(trial.user_attrs[RUN_REPEAT_ATTR]) + 1)
        self._startup_points = sum(STARTUP_POINT_ATTR in t.user_attrs for t in trials)  # design points used
        self._budget = budget
        self._issued = 0
        self._pending: dict[int, optuna.Trial] = {}  # member number → its live Optuna trial
        self._live: dict[str, list[Member]] = {}  # Ray trial id → its members
        self.duplicates = 0  # proposals rejected as repeats in this run
        self.exhausted = False
        self.exhausted_reason = ""

    def _claim_waiting(self, trials: list[FrozenTrial]) -> list[FrozenTrial]:
        """Ask every trial a killed driver enqueued but never asked; the study's trials afterwards.

        A kill that falls between ``enqueue_trial`` and ``ask`` (a start-up design point, a chosen
        branch) leaves a WAITING trial with no parameters yet, which Optuna cannot be told about.
        ``ask`` takes waiting trials oldest first and gives each its enqueued parameters, so after
        this they are RUNNING and a resume continues them like any other interrupted trial.
        """
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        if not waiting:
            return trials
        for _ in range(waiting):
            claimed = self.study.ask(self._space)
            logger.info("trial %d was enqueued but never asked before the interruption: asked now", claimed.number)
        return self.study.get_trials(deepcopy=False)

    # --- budget ----------------------------------------------------------------------------

    @property
    def remaining(self) -> int:
        """Results still owed: the budget less those recorded before this run and those handed out since."""
        return max(0, self._budget - self._results_before - self._issued)

    # --- groups: handed out, reported on, released ------------------------------------------

    def hand_out(self, trial_id: str) -> dict[str, Any] | None:
        """The next group's config (``{"members": […]}``, with its branch slots), or None when the sweep is done."""
        if self.exhausted or self.remaining == 0:
            return None
        slots = 0
        groups: list[tuple[list[Member], int]] = []
        if self._branching is not None and self._members_per_trial > 1:
            groups = self.propose_branch_groups(self._members_per_trial)
            members = [member for group, _ in groups for member in group]
            slots = sum(group_slots for _, group_slots in groups)
        elif self._branching is not None:
            members, slots = self.propose_branches(min(self._branching.per_run, self.remaining))
        else:
            members = self.propose(min(self._members_per_trial, self.remaining))
        if not members:
            return None
        self._issued += len(members) + slots
        self._live[trial_id] = members
        self._handed_out(members)
        config: dict[str, Any] = {MEMBERS_KEY: [member.to_config() for member in members]}
        if slots:
            self._slots[trial_id] = slots
            config[BRANCH_SLOTS_KEY] = slots
        if groups:
            self._group_slots[trial_id] = {group[0].number: group_slots for group, group_slots in groups}
            config[GROUP_SLOTS_KEY] = [
                [group[0].number, group_slots, self._skips.pop(group[0].number, 0)] for group, group_slots in groups
            ]
        elif slots:
            config[BRANCH_SKIP_KEY] = self._skips.pop(members[0].number, 0)
        return config

    def on_report(self, trial_id: str, result: Mapping[str, Any]) -> None:
        """A group's report: a branch plan becomes trials; a member's final report is told to Optuna."""
        if result.get(BRANCH_PLAN_KEY) is not None:
            self.add_branches(trial_id, json.loads(result[BRANCH_PLAN_KEY]), result.get(TRIAL_NUMBER_KEY))
        number = self.member_number(trial_id, result)
        if result.get("final") and number is not None:
            self.tell_result(number, TrialResult.from_dict(result))

    # --- members of a Ray trial (the recorder asks here too) -------------------------------

    def members(self, trial_id: str) -> list[Member]:
        """The members of a live Ray trial, branches it chose itself included."""
        return list(self._live.get(trial_id, []))

    def member_number(self, trial_id: str, result: Mapping[str, Any]) -> int | None:
        """The Optuna trial number a report belongs to: named outright, or by its branch index (of its
        regularized run, ``shared_run``, in a branching cohort)."""
        if result.get(TRIAL_NUMBER_KEY) is not None:
            return int(result[TRIAL_NUMBER_KEY])
        index = result.get(BRANCH_INDEX_KEY)
        numbers = self._branch_numbers.get(trial_id) or [m.number for m in self._live.get(trial_id, [])]
        if result.get(SHARED_RUN_KEY) is not None and trial_id in self._group_numbers:
            numbers = self._group_numbers[trial_id].get(int(result[SHARED_RUN_KEY]), [])
        if index is None or not 0 <= int(index) < len(numbers):
            return None
        return numbers[int(index)]

    def release(self, trial_id: str, result: Mapping[str, Any] | None = None, error: bool = False) -> None:
        """A group ended: members it did not report are failed (on error) or left RUNNING to resume."""
        if result and result.get("final") and result.get(TRIAL_NUMBER_KEY) is not None:
            self.tell_result(int(result[TRIAL_NUMBER_KEY]), TrialResult.from_dict(result))
        self._issued -= self._slots.pop(trial_id, 0)  # branches it never chose return to the budget
        self._branch_numbers.pop(trial_id, None)
        self._group_slots.pop(trial_id, None)
        self._group_numbers.pop(trial_id, None)
        for member in self._live.pop(trial_id, []):
            if member.number not in self._pending:
                continue
            if error:
                self.tell_result(member.number, TrialResult(Status.FAILED, "the Ray trial raised an error"))
            else:  # stopped before its final report (Ctrl-C, time budget): RUNNING, a resume adopts it
                logger.info("trial %d stopped before it finished; a resumed sweep continues it", member.number)

    # --- proposing -------------------------------------------------------------------------

    def _handed_out(self, members: Sequence[Member]) -> None:
        """Let ``on_member`` see each member while its trial runs, and keep the attributes it returns."""
        if self._on_member is None:
            return
        for member in members:
            trial = self._pending.get(member.number)
            for key, value in (self._on_member(member) or {}).items():
                if trial is not None and trial.user_attrs.get(key) != value:
                    trial.set_user_attr(key, value)

    def propose(self, count: int) -> list[Member]:
        """Up to ``count`` members for one Ray trial: interrupted trials first, then new asks.

        With ``count`` > 1 (a cohort) the members of one interrupted cohort — those that share a
        resume checkpoint — come together and alone; interrupted members without one are topped
        up with new asks.  Fewer (possibly none) when the space is exhausted.
        """
        members: list[Member] = []
        if count > 1 and self._adoptable:
            checkpoint = self._resume.get(self._adoptable[0].number)
            group = [t for t in self._adoptable if self._resume.get(t.number) == checkpoint][:count]
            taken = {t.number for t in group}
            self._adoptable = [t for t in self._adoptable if t.number not in taken]
            members = [self._adopt(t) for t in group]
            if checkpoint is not None:
                return members
        elif self._adoptable:
            members.append(self._adopt(self._adoptable.pop(0)))
        while len(members) < count:
            trial = self._ask_new()
            if trial is None:
                break
            members.append(Member(trial.number, dict(trial.params), self._resume.get(trial.number)))
        return members

    def propose_branches(self, count: int) -> tuple[list[Member], int]:
        """The members of one branching run and the branch slots it fills itself (proxy mode).

        Interrupted branches of one regularized run (equal shared part) are handed out together;
        otherwise the first branch is asked, and the others asked conditioned on its shared part
        (``optuna``) or left to the run (``proxy``).
        """
        branching = self._branching
        if self._adoptable:
            key = branching.shared_key(self._adoptable[0].params)
            group = [t for t in self._adoptable if branching.shared_key(t.params) == key]
            self._adoptable = [t for t in self._adoptable if branching.shared_key(t.params) != key]
            return [self._adopt(t) for t in group], 0
        first = self._ask_new()
        if first is None:
            return [], 0
        members = [Member(first.number, dict(first.params))]
        if branching.mode == "proxy":
            self._skips[first.number] = self._repeat(first) * branching.per_run
            return members, count - 1
        shared = branching.split(first.params)[0]
        while len(members) < count:
            trial = self._ask_new(fixed=shared)
            if trial is None:
                break
            members.append(Member(trial.number, dict(trial.params)))
        return members, 0

    def _repeat(self, first: optuna.Trial) -> int:
        """How many proxy runs with ``first``'s shared settings came before it (kept on its trial)."""
        assert self._branching is not None
        key = self._branching.shared_key(first.params)
        repeat = self._repeats.get(key, 0)
        self._repeats[key] = repeat + 1
        first.set_user_attr(RUN_REPEAT_ATTR, repeat)
        return repeat

    def propose_branch_groups(self, count: int) -> list[tuple[list[Member], int]]:
        """A branching cohort: up to ``count`` regularized runs (``propose_branches`` each) and their slots.

        Each run takes its members and slots from what the budget has left; the runs share one
        Ray trial and one stack (``sweeps.trainable.train_cohort``).
        """
        groups: list[tuple[list[Member], int]] = []
        left = self.remaining
        while len(groups) < count and left > 0:
            members, slots = self.propose_branches(min(self._branching.per_run, left))
            if not members:
                break
            groups.append((members, slots))
            left -= len(members) + slots
        return groups

    def add_branches(self, trial_id: str, plan: list[dict[str, Any]], first: int | None = None) -> list[Member]:
        """Record the branches a Ray trial chose (proxy mode): each its own Optuna trial, full parameters.

        The first member's parameters with each plan entry's branch settings are enqueued and asked,
        so the sampler sees every branch; a branch repeating a known configuration is dropped and
        its budget slot returned.  In a branching cohort ``first`` (the run's first member) says
        which of the trial's regularized runs chose them.
        """
        live = self._live.get(trial_id, [])
        if trial_id in self._group_slots and first is not None:
            key = self._branching.shared_key(next(m.params for m in live if m.number == first))
            members = [m for m in live if self._branching.shared_key(m.params) == key]
            slots = self._group_slots[trial_id].pop(first, 0)
            self._slots[trial_id] = self._slots.get(trial_id, 0) - slots
        else:
            members, slots = live, self._slots.pop(trial_id, 0)
        added: list[Member] = []
        numbers: list[int | None] = [m.number for m in members]
        for branch in plan[:slots]:
            params = {**members[0].params, **branch}
            if config_key(params) in self._known:
                numbers.append(None)  # its result is not recorded: the configuration is known already
                continue
            self.study.enqueue_trial(params)
            trial = self.study.ask(self._space)
            self._known[config_key(trial.params)] = trial
            self._pending[trial.number] = trial
            added.append(Member(trial.number, dict(trial.params)))
            numbers.append(trial.number)
        if trial_id in self._group_slots and first is not None:
            self._group_numbers.setdefault(trial_id, {})[first] = numbers
        else:
            self._branch_numbers[trial_id] = numbers
        self._issued -= slots - len(added)
        self._live[trial_id] = [*live, *added]
        self._handed_out(added)
        return added

    def _adopt(self, frozen: FrozenTrial) -> Member:
        """A trial a killed driver left RUNNING, handed out again under its own number."""
        trial_id = self._storage.get_trial_id_from_study_id_trial_number(self._study_id, frozen.number)
        self._pending[frozen.number] = optuna.Trial(self.study, trial_id)
        logger.info("continuing interrupted trial %d", frozen.number)
        return Member(frozen.number, dict(frozen.params), self._resume.get(frozen.number))

    def _ask_new(self, fixed: Mapping[str, Any] | None = None) -> optuna.Trial | None:
        """A trial whose configuration the study does not hold yet, or None when none was found.

        Without ``fixed``, None means the space is exhausted.  With ``fixed`` (the shared part of a
        branching run), the other parameters are sampled around it; a few repeats in a row give
        up on this branch only.
        """
        in_a_row, limit = 0, self._max_duplicate_asks if fixed is None else CONDITIONED_ASKS
        while True:
            if fixed is None and self._size is not None and len(self._known) >= self._size:
                self._exhaust(f"all {self._size} configurations of the search space are known")
                return None
            trial = self._ask(fixed)
            key = config_key(trial.params)
            original = self._known.get(key)
            if original is None:
                self._known[key] = trial
                self._pending[trial.number] = trial
                return trial
            self._tell_duplicate(trial, original)
            in_a_row += 1
            if in_a_row >= limit:
                if fixed is None:
                    self._exhaust(f"{in_a_row} proposals in a row repeated known configurations")
                return None

    def _ask(self, fixed: Mapping[str, Any] | None) -> optuna.Trial:
        """``study.ask``; the next start-up design point while the sampler is in its start-up; with
        ``fixed`` parameters through a ``PartialFixedSampler`` around the study's sampler."""
        if not fixed:
            return self._ask_design_point() if self._in_startup() else self.study.ask(self._space)
        base = self.study.sampler
        self.study.sampler = optuna.samplers.PartialFixedSampler(dict(fixed), base)
        try:
            return self.study.ask(self._space)
        finally:
            self.study.sampler = base

    def _in_startup(self) -> bool:
        """Whether the sampler would draw this ask at random: fewer finished trials than its start-up.

        Finished trials only grow, so once the start-up is over the design is dropped and later
        asks read no trials for it.
        """
        if self._startup is None:
            return False
        finished = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if len(finished) >= self._startup.trials:
            self._startup = None
        return self._startup is not None

    def _ask_design_point(self) -> optuna.Trial:
        """Ask for the next start-up design point (enqueued first) and mark the trial with its index."""
        assert self._startup is not None
        index = self._startup_points
        self._startup_points += 1
        self.study.enqueue_trial(self._startup.point(self._space, index))
        trial = self.study.ask(self._space)
        trial.set_user_attr(STARTUP_POINT_ATTR, index)
        return trial

    def _tell_duplicate(self, trial: optuna.Trial, original: FrozenTrial | optuna.Trial) -> None:
        self.duplicates += 1
        trial.set_user_attr(DUPLICATE_ATTR, original.number)
        frozen = original if isinstance(original, FrozenTrial) else None
        if frozen is not None and frozen.state == TrialState.COMPLETE and frozen.values:
            for key, value in frozen.constraints.items():
                trial.set_constraint(key, value)
            self.study.tell(trial, list(frozen.values))
        else:
            self.study.tell(trial, state=TrialState.FAIL)
        logger.debug("proposal %d repeats trial %d: not trained", trial.number, original.number)

    def _exhaust(self, why: str) -> None:
        if not self.exhausted:
            logger.warning("search space exhausted: %s; the sweep ends early", why)
        self.exhausted = True
        self.exhausted_reason = why

    # --- telling ---------------------------------------------------------------------------

    def tell_result(self, number: int, result: TrialResult) -> None:
        """Tell Optuna how member ``number`` ended (``tell``); a member not pending here is ignored."""
        trial = self._pending.pop(number, None)
        if trial is None:
            return
        frozen = tell(self.study, trial, result, self._objectives, self._constraints)
        self._known[config_key(frozen.params)] = frozen

    def tell_pruned(self, number: int, proxies: Mapping[str, float], message: str = "") -> None:
        """A scheduler stopped member ``number``: PRUNED, its last proxy values kept as user attributes."""
        extra = {
            name if name.startswith(PROXY_ATTR_PREFIX) else f"{PROXY_ATTR_PREFIX}{name}": v
            for name, v in proxies.items()
        }
        self.tell_result(number, TrialResult(Status.PRUNED, message or "stopped early by the scheduler", extra=extra))


def search_settings(spec: SweepSpec) -> dict[str, Any]:
    """``StudyProposer``'s arguments that come from the spec: space, objectives, constraints, budget, grouping."""
    from trainables.config import split_branch_settings

    return {
        "space": distributions(spec),
        "objectives": spec.metric_names,
        "constraints": spec.constraint_rules,
        "budget": spec.budget.num_samples,
        "members_per_trial": spec.budget.cohort_size,
        "branching": Branching(spec.budget.thresholds_per_run, spec.budget.branch_mode, split_branch_settings),
        "startup": startup_design(spec.sampler),
    }


def startup_design(spec: SamplerSpec) -> StartupDesign | None:
    """The spec's space-filling start-up, or None (random and NSGA-II samplers, or ``startup: random``)."""
    if spec.start_up_trials is None or spec.startup == "random":
        return None
    return StartupDesign(spec.start_up_trials, spec.seed if spec.seed is not None else secrets.randbits(32))


def open_study(
    storage: optuna.storages.BaseStorage,
    study_name: str,
    spec: SweepSpec,
    sweep_name: str,
    warm: Callable[[optuna.Study], None] | None = None,
) -> optuna.Study:
    """The sweep's study, created on first use (objectives named, ``warm`` run once), with a sampler that
    continues its sequence (``derive_seed`` over the trials already in the study)."""
    directions = ["maximize" if mode == "max" else "minimize" for mode in spec.modes]
    study = optuna.create_study(storage=storage, study_name=study_name, directions=directions, load_if_exists=True)
    if not study.user_attrs:
        study.set_metric_names(spec.metric_names)
        study.set_user_attr("problem_hash", spec.problem_hash())
        study.set_user_attr("sweep", sweep_name)
        if warm is not None:
            warm(study)
    seed = derive_seed(spec.sampler.seed, len(study.get_trials(deepcopy=False)))
    return optuna.load_study(study_name=study_name, storage=storage, sampler=build_sampler(spec.sampler, seed))
