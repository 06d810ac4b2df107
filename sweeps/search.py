"""Optuna as Ray Tune's searcher: multi-objective, constrained, persistent, resumable.

``SweepSearch`` subclasses Ray's ``OptunaSearch`` for three things it lacks:

- every suggested config carries its Optuna trial number, the trial's stable identity across
  driver restarts (Ray trial ids are not stable);
- a finished trial is told to Optuna with its constraint values (``trial.set_constraint``) and
  its final metrics as user attributes; a failed or diverged one is told ``FAIL``;
- trials left RUNNING in the study by a killed driver are *adopted*: handed out again, with the
  same Optuna trial and parameters, before anything new is asked, so a resumed sweep neither
  loses nor duplicates them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState
from ray.tune.search.optuna import OptunaSearch

from sweeps.spec import CategoricalParam, ConstraintSpec, FloatParam, SamplerSpec, SweepSpec

logger = logging.getLogger(__name__)

TRIAL_NUMBER_KEY = "trial_number"
RESUME_KEY = "resume_checkpoint"
WARM_START_ATTR = "warm_start_from"
FINISHED_STATES = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)


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


def build_sampler(spec: SamplerSpec) -> optuna.samplers.BaseSampler:
    """The Optuna sampler named by the spec, seeded."""
    if spec.type == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    if spec.type == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=spec.seed, population_size=spec.population_size or 10)
    if spec.type == "gp":
        return optuna.samplers.GPSampler(seed=spec.seed, n_startup_trials=spec.n_startup_trials or 10)
    return optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=spec.n_startup_trials or 10, multivariate=True)


def own_trials(study: optuna.Study, states: Sequence[TrialState] | None = None) -> list[FrozenTrial]:
    """The study's trials of this sweep, warm-start copies excluded."""
    return [t for t in study.get_trials(deepcopy=False, states=states) if WARM_START_ATTR not in t.user_attrs]


def objective_values(result: dict[str, Any] | None, metrics: Sequence[str]) -> list[float] | None:
    """The objectives of an ``ok`` final result, or None when the trial failed or diverged."""
    if not result or result.get("status") != "ok":
        return None
    values = [result.get(metric) for metric in metrics]
    if any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
        return None
    return [float(v) for v in values]


def final_attrs(result: dict[str, Any]) -> dict[str, Any]:
    """The scalar final metrics worth keeping on the Optuna trial."""
    keep = (
        "status",
        "message",
        "val_accuracy",
        "test_accuracy",
        "nonzero_frac",
        "flops_frac",
        "loss",
        "val_loss",
        "epochs",
        "wall_time_s",
    )
    return {
        k: result[k] for k in keep if k in result and (not isinstance(result[k], float) or math.isfinite(result[k]))
    }


class SweepSearch(OptunaSearch):
    """Ray's OptunaSearch with stable trial numbers, constraints, failure handling and adoption."""

    def __init__(
        self,
        spec: SweepSpec,
        storage: optuna.storages.BaseStorage,
        study_name: str,
        resume_checkpoints: dict[int, str] | None = None,
    ) -> None:
        super().__init__(
            space=distributions(spec),
            metric=spec.metric_names,
            mode=spec.modes,
            sampler=build_sampler(spec.sampler),
            study_name=study_name,
            storage=storage,
        )
        self._constraints: list[ConstraintSpec] = list(spec.constraints)
        self._resume_checkpoints = dict(resume_checkpoints or {})
        self._adoptable = own_trials(self._ot_study, (TrialState.RUNNING, TrialState.WAITING))

    @property
    def study(self) -> optuna.Study:
        return self._ot_study

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if trial_id not in self._ot_trials and self._adoptable:
            frozen = self._adoptable.pop(0)
            self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, frozen._trial_id)
            params = dict(frozen.params)
            logger.info("re-running interrupted trial %d", frozen.number)
        else:
            params = super().suggest(trial_id)
            if params is None:
                return None
        number = self._ot_trials[trial_id].number
        config = {**params, TRIAL_NUMBER_KEY: number}
        if number in self._resume_checkpoints:
            config[RESUME_KEY] = self._resume_checkpoints[number]
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Tell Optuna how a trial ended; a trial stopped before its final report stays RUNNING.

        Tune stops unfinished trials when the sweep is interrupted (Ctrl-C, time budget): such a
        trial is neither a result nor a failure, so it is left RUNNING in the study and a resumed
        sweep adopts it.
        """
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        self._completed_trials.add(trial_id)
        ot_trial = self._ot_trials[trial_id]
        if not error and not (result or {}).get("final"):
            logger.info("trial %d stopped before it finished; a resumed sweep runs it again", ot_trial.number)
            return
        values = objective_values(result, self.metric)
        try:
            if result:
                for key, value in final_attrs(result).items():
                    ot_trial.set_user_attr(key, value)
            if values is None:
                ot_trial.set_user_attr("status", (result or {}).get("status") or "error")
                self._ot_study.tell(ot_trial, state=TrialState.FAIL)
            else:
                for constraint in self._constraints:
                    ot_trial.set_constraint(
                        f"{constraint.metric}_{'min' if constraint.min is not None else 'max'}",
                        constraint.violation(result[constraint.metric]),
                    )
                self._ot_study.tell(ot_trial, values, state=TrialState.COMPLETE)
        except Exception as exc:  # noqa: BLE001 - Optuna refusing one trial must not stop the sweep
            logger.warning("could not record trial %d in Optuna: %s", ot_trial.number, exc)
