"""Sweep specs: a YAML file validated with pydantic, with one-line errors naming file and field.

A spec says what to train (model, dataset, fixed trial settings), what Optuna searches (any
trial setting: a float/int range, optionally log-scaled, or a categorical choice), the
objectives with their directions, optional constraints (e.g. an accuracy floor), the sampler,
the budget, the resources of one trial and where results go.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainables.config import COHORT_SETTINGS, DATASETS, ConfigError, TrialConfig, check_branchable
from trainables.contract import (
    METRICS,
    NONZERO_FRAC,
    PROXY_METRICS,
    SELECTABLE_METRICS,
    TEST_ACCURACY,
    VAL_ACCURACY,
    Axis,
    Constraint,
    nonzero_floor,
    region_of,
    sparsity_caps,
)

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_SPEC = "sweeps/digits_quick.yaml"
SEARCHABLE = tuple(
    name
    for name in TrialConfig.__dataclass_fields__
    if name not in ("dataset", "data_dir", "model", "device", "pretrain_cache_dir", "init_checkpoint")
)


INT_SETTINGS = frozenset(f.name for f in fields(TrialConfig) if f.type in ("int", "int | None"))
"""Integer trial settings: an integral number written as a float (``1e3``) is read as that integer."""


class SpecError(ValueError):
    """A spec file is missing, not YAML, or invalid; the message is one line naming file and field."""


# --- YAML with YAML 1.2 numbers ------------------------------------------------------------

FLOAT_TAG = "tag:yaml.org,2002:float"
_FLOAT_PATTERN = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class NumberLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but ``1e6``, ``1.0e-3``, ``-2e-4`` and ``+1E5`` are floats (as in YAML 1.2).

    YAML 1.1 (PyYAML) needs a dot and a signed exponent (``1.0e+6``) and reads ``1e6`` as a string.
    """


# A copy of every resolver list (PyYAML's add_implicit_resolver would append to SafeLoader's own lists).
NumberLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != FLOAT_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
NumberLoader.add_implicit_resolver(FLOAT_TAG, _FLOAT_PATTERN, list("-+0123456789."))


def yaml_load(text: str) -> Any:
    """Parse YAML text as ``yaml.safe_load`` does, with YAML 1.2 numbers (``1e6`` is a float, not a string)."""
    return yaml.load(text, Loader=NumberLoader)  # noqa: S506 - NumberLoader is a SafeLoader


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FloatParam(_Strict):
    """A float searched in [low, high], uniformly or on a log scale."""

    type: Literal["float"] = "float"
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _check_range(self) -> FloatParam:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(f"needs finite low < high, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log scale needs low > 0, got low={self.low}")
        return self


class IntParam(_Strict):
    """An integer searched in [low, high] (inclusive), optionally on a log scale."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False

    @model_validator(mode="after")
    def _check_range(self) -> IntParam:
        if self.low >= self.high or (self.log and self.low <= 0):
            raise ValueError(f"needs low < high (and low > 0 on a log scale), got low={self.low}, high={self.high}")
        return self


class CategoricalParam(_Strict):
    """One of a list of choices."""

    type: Literal["categorical"]
    choices: list[str | int | float | bool] = Field(min_length=1)


SearchParam = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


def _selectable(metric: str) -> str:
    if metric not in SELECTABLE_METRICS:
        hint = " (test data is reported, never used to choose)" if metric == TEST_ACCURACY else ""
        raise ValueError(f"unknown metric {metric!r}{hint}; choose from {', '.join(SELECTABLE_METRICS)}")
    return metric


class ObjectiveSpec(_Strict):
    """A metric to optimise; ``mode`` defaults to the metric's own direction (``contract.METRICS``)."""

    metric: str
    mode: Literal["max", "min"]

    @model_validator(mode="before")
    @classmethod
    def _known_metric_default_mode(cls, data: Any) -> Any:
        if isinstance(data, dict) and "metric" in data:
            _selectable(data["metric"])
            if data.get("mode") is None:
                data = {**data, "mode": METRICS[data["metric"]]}
        return data


class ConstraintSpec(_Strict):
    """A feasibility bound on a final metric, e.g. ``{metric: val_accuracy, min: 0.9}``."""

    metric: str
    min: float | None = None
    max: float | None = None

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        return _selectable(metric)

    @model_validator(mode="after")
    def _one_bound(self) -> ConstraintSpec:
        if (self.min is None) == (self.max is None):
            raise ValueError("give exactly one of min or max")
        return self

    def to_constraint(self) -> Constraint:
        """The contract's constraint (one feasibility rule everywhere: NaN or missing is infeasible)."""
        return Constraint(self.metric, self.min, self.max)


DEFAULT_STARTUP_TRIALS = 10
MODEL_BASED_SAMPLERS = ("tpe", "gp")  # the samplers with a model-free start-up (n_startup_trials, startup)


class SamplerSpec(_Strict):
    """The Optuna sampler.  TPE and GP start with ``n_startup_trials`` (default 10) non-model draws:
    ``startup: sobol`` (their default) takes them from a scrambled Sobol sequence, so a small sweep's
    first runs spread over the range; ``random`` is Optuna's own uniform draws."""

    type: Literal["tpe", "nsga2", "gp", "random"] = "tpe"
    seed: int | None = 0
    n_startup_trials: int | None = Field(default=None, ge=1)
    startup: Literal["sobol", "random"] | None = None
    population_size: int | None = Field(default=None, ge=2)

    @property
    def start_up_trials(self) -> int | None:
        """How many finished trials TPE or GP waits for before modelling; None for the others."""
        if self.type not in MODEL_BASED_SAMPLERS:
            return None
        return self.n_startup_trials or DEFAULT_STARTUP_TRIALS

    @model_validator(mode="after")
    def _settings_fit_the_sampler(self) -> SamplerSpec:
        """A setting the chosen sampler would silently ignore is an error, not a surprise later."""
        if self.n_startup_trials is not None and self.type not in MODEL_BASED_SAMPLERS:
            raise ValueError(f"n_startup_trials is a tpe/gp setting; {self.type} does not use it")
        if self.startup is not None and self.type not in MODEL_BASED_SAMPLERS:
            raise ValueError(f"startup is a tpe/gp setting; {self.type} does not use it")
        if self.population_size is not None and self.type != "nsga2":
            raise ValueError(f"population_size is an nsga2 setting; {self.type} does not use it")
        return self


class BudgetSpec(_Strict):
    """What a sweep may spend.

    ``num_samples`` counts results (trials that end ok, failed, diverged or pruned), however many
    of them one Ray trial trains; ``max_concurrent_trials`` counts Ray trials running at once.
    ``thresholds_per_run`` K > 1: one regularized run serves K trials that differ only in the
    branch settings (threshold, threshold_mode, finetune_epochs, finetune_lr, prune_ramp_epochs) — K results per
    run; ``branch_mode`` says how the K are chosen (``proxy``: by the run, spanning the front of
    prune-now accuracy and sparsity over a grid of thresholds; ``optuna``: by the sampler, with
    the shared settings fixed).

    ``cohort_size`` K > 1: one Ray trial trains up to K trials at once as one stacked model
    (``trainables.cohort``), with the resources of one trial — K results per Ray trial, each its
    own Optuna trial, results row and MLflow run.  The members of a cohort may differ only in
    ``trainables.config.COHORT_SETTINGS`` (reg, strength, threshold, threshold_mode, lr,
    finetune_lr, prune_ramp_epochs, weight_decay, momentum, seed), so a spec that *searches* any other setting
    (batch_size, epochs, optimizer, …) with K > 1 is refused here, naming the setting — our
    choice: every cohort is then one stack, rather than grouping proposals that happen to agree.
    K = 1 (the default) trains each trial on its own, as before.  With ``thresholds_per_run`` > 1
    too, a Ray trial trains up to K regularized runs as one stack, each branching into its
    ``thresholds_per_run`` trials (``sweeps.trainable.train_branching_cohort``).

    ``branch_under`` (proxy mode): nonzero fractions a result is wanted at, e.g. ``[0.015, 0.01]``
    for a floor and a stretch target.  Each run then branches at the most accurate proxy point
    keeping at most each of them (right after its most accurate point), instead of leaving each cap
    to whatever its spread of thresholds puts under it.
    """

    num_samples: int = Field(default=12, ge=1)
    max_concurrent_trials: int = Field(default=2, ge=1)
    time_budget_s: float | None = Field(default=None, gt=0)
    thresholds_per_run: int = Field(default=1, ge=1)
    branch_mode: Literal["proxy", "optuna"] = "proxy"
    cohort_size: int = Field(default=1, ge=1)
    branch_under: list[Annotated[float, Field(gt=0, lt=1)]] = Field(default_factory=list)


MOASHA_OBJECTIVES: tuple[str, ...] = tuple(PROXY_METRICS.values())  # the objectives with a prune-now proxy


class SchedulerSpec(_Strict):
    """Early stopping: ``none``, or ``moasha`` (``sweeps.scheduler``): successive halving at regularized
    epochs ``grace_epochs · reduction_factor^k`` up to ``max_epochs`` (default: the trial's ``epochs``),
    ranked by Pareto rank of the prune-now proxies; a proxy below an accuracy floor by more than
    ``margin`` ranks last.

    Defaults from docs/benchmarks.md: rungs from epoch 3 (at epoch 1 the proxies rank the final front
    barely better than chance) and no floor on proxies (``margin`` 1: pruning before fine-tuning costs
    sparse front trials their accuracy early, so a floor would stop them)."""

    type: Literal["none", "moasha"] = "none"
    grace_epochs: int = Field(default=3, ge=1)
    reduction_factor: int = Field(default=3, ge=2)
    max_epochs: int | None = Field(default=None, ge=1)
    margin: float = Field(default=1.0, ge=0)


class AxisSpec(_Strict):
    """One objective's range for the region hypervolume (``trainables.contract.Axis``)."""

    worst: float
    best: float
    log: bool = False

    def to_axis(self) -> Axis:
        return Axis(self.worst, self.best, self.log)

    @model_validator(mode="after")
    def _valid(self) -> AxisSpec:
        self.to_axis()
        return self


class ResourcesSpec(_Strict):
    cpus: float = Field(default=1, gt=0)
    gpus: float = Field(default=0, ge=0)


class SweepSpec(_Strict):
    """A whole sweep. ``trial`` holds fixed trial settings; ``search`` the searched ones."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    model: str = "lenet300_100"
    dataset: str = "digits"
    data_dir: str | None = None
    trial: dict[str, Any] = Field(default_factory=dict)
    search: dict[str, SearchParam] = Field(default_factory=dict)
    objectives: list[ObjectiveSpec] = Field(
        default_factory=lambda: [
            ObjectiveSpec(metric=VAL_ACCURACY, mode=METRICS[VAL_ACCURACY]),
            ObjectiveSpec(metric=NONZERO_FRAC, mode=METRICS[NONZERO_FRAC]),
        ],
        min_length=1,
    )
    constraints: list[ConstraintSpec] = Field(default_factory=list)
    sampler: SamplerSpec = SamplerSpec()
    budget: BudgetSpec = BudgetSpec()
    resources: ResourcesSpec = ResourcesSpec()
    storage: str = "results"
    max_failures: int = Field(default=1, ge=0)
    checkpoint_interval_s: float = Field(default=30.0, ge=0)
    warm_start: bool = True
    models: Literal["all", "front", "none"] = "front"  # which trials' models reach MLflow (all are kept on disk)
    keep_branch_points: bool = False  # keep each branching run's regularized checkpoint after its branches finish
    hypervolume: dict[str, AxisSpec] = Field(default_factory=dict)
    scheduler: SchedulerSpec = SchedulerSpec()

    @model_validator(mode="before")
    @classmethod
    def _integral_floats_as_ints(cls, data: Any) -> Any:
        """``epochs: 1e1`` is 10: integral floats of integer trial settings (fixed or choices) become ints."""
        if not isinstance(data, dict):
            return data

        def as_int(value: Any) -> Any:
            return int(value) if isinstance(value, float) and value.is_integer() else value

        data = dict(data)
        if isinstance(data.get("trial"), dict):
            data["trial"] = {k: as_int(v) if k in INT_SETTINGS else v for k, v in data["trial"].items()}
        if isinstance(data.get("search"), dict):
            search = dict(data["search"])
            for name, param in search.items():
                if name in INT_SETTINGS and isinstance(param, dict) and isinstance(param.get("choices"), list):
                    search[name] = {**param, "choices": [as_int(choice) for choice in param["choices"]]}
            data["search"] = search
        return data

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, dataset: str) -> str:
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; known datasets: {', '.join(DATASETS)}")
        return dataset

    @field_validator("search")
    @classmethod
    def _searchable(cls, search: dict[str, Any]) -> dict[str, Any]:
        if not search:
            raise ValueError("needs at least one searched parameter")
        unknown = sorted(set(search) - set(SEARCHABLE))
        if unknown:
            raise ValueError(f"cannot search {', '.join(unknown)}; searchable: {', '.join(SEARCHABLE)}")
        return search

    @model_validator(mode="after")
    def _trial_settings_are_valid(self) -> SweepSpec:
        overlap = sorted(set(self.trial) & set(self.search))
        if overlap:
            raise ValueError(f"{', '.join(overlap)} both fixed in trial and searched")
        for field in ("dataset", "data_dir", "model"):
            if field in self.trial:
                raise ValueError(f"trial.{field}: set {field} at the top level of the spec")
        try:
            self.trial_config(self.example_params())
        except ConfigError as error:
            raise ValueError(f"{self._setting_location(str(error))}: {error}") from None
        metrics = [objective.metric for objective in self.objectives]
        if len(set(metrics)) != len(metrics):
            raise ValueError("objectives: a metric is listed twice")
        if self.budget.cohort_size > 1:
            unshared = [name for name in self.search if name not in COHORT_SETTINGS]
            if unshared:
                raise ValueError(
                    f"budget.cohort_size: the members of a cohort may differ only in {', '.join(COHORT_SETTINGS)}; "
                    f"search.{unshared[0]} is searched (set it in trial, or use cohort_size: 1)"
                )
        if self.budget.thresholds_per_run > 1:
            try:
                check_branchable(self.search)
            except ConfigError as error:
                raise ValueError(f"budget.thresholds_per_run: {error}") from None
            if self.budget.branch_mode == "proxy" and not isinstance(self.search.get("threshold"), FloatParam):
                raise ValueError(
                    "budget.branch_mode: proxy chooses thresholds from a grid inside a searched float range "
                    "(search.threshold: {type: float, ...}); use branch_mode: optuna for other branch settings"
                )
        if self.budget.branch_under and (self.budget.thresholds_per_run < 2 or self.budget.branch_mode != "proxy"):
            raise ValueError(
                "budget.branch_under: only the proxy places branches (thresholds_per_run > 1, branch_mode: proxy)"
            )
        if self.scheduler.type == "moasha":
            unranked = [m for m in metrics if m not in MOASHA_OBJECTIVES]
            if unranked:
                raise ValueError(
                    f"scheduler.type: moasha ranks prune-now proxies of {', '.join(MOASHA_OBJECTIVES)}; "
                    f"objective {', '.join(unranked)} has none"
                )
        unknown = sorted(set(self.hypervolume) - set(metrics))
        if unknown:
            raise ValueError(f"hypervolume: {', '.join(unknown)} is not an objective ({', '.join(metrics)})")
        return self

    def region(self) -> dict[str, Axis] | None:
        """The region of the region hypervolume (``contract.region_of``): ``hypervolume:`` axes, else defaults.

        Defaults: accuracies from the spec's floor (a ``min`` constraint) to 1, nonzero and FLOPs
        fractions from 1 down to 1e-3 on a log scale.  None when an objective has neither (e.g.
        ``loss``): such a sweep reports no region hypervolume until ``hypervolume:`` names its range.
        """
        explicit = {metric: axis.model_dump() for metric, axis in self.hypervolume.items()}
        return region_of(self.metric_names, self.constraint_rules, explicit)

    def sparsity_caps(self) -> dict[str, float]:
        """The nonzero / FLOPs fractions a result may keep at most (``contract.sparsity_caps``): from
        ``max`` constraints and the ``hypervolume:`` region; the proxy branches within them."""
        return sparsity_caps(self.constraint_rules, self.region())

    def nonzero_floor(self) -> float | None:
        """Below this nonzero fraction a sparser result counts no more (``contract.nonzero_floor``)."""
        return nonzero_floor(self.region())

    def _setting_location(self, message: str) -> str:
        """The field a trial-settings error is about: ``trial.epochs``, or ``search.lr.low`` for a searched one."""
        name = message.split(" ", 1)[0]
        if name not in TrialConfig.__dataclass_fields__:
            return "trial"
        if name in self.search:
            return f"search.{name}." + ("choices[0]" if isinstance(self.search[name], CategoricalParam) else "low")
        return f"trial.{name}"

    def example_params(self) -> dict[str, Any]:
        """One point of the search space (lower bounds, first choices), to validate settings."""
        return {name: p.choices[0] if isinstance(p, CategoricalParam) else p.low for name, p in self.search.items()}

    def trial_config(self, params: dict[str, Any]) -> TrialConfig:
        """The validated TrialConfig of one trial: fixed settings plus the sampled ``params``."""
        return TrialConfig.from_dict(
            {"dataset": self.dataset, "data_dir": self.data_dir, "model": self.model, **self.trial, **params}
        )

    def problem_hash(self) -> str:
        """Hash of what defines the optimisation problem (not budget, sampler, name or storage).

        Sweeps with the same problem hash can warm-start from one another.
        """
        problem = self.model_dump(
            include={"model", "dataset", "data_dir", "trial", "search", "objectives", "constraints"}
        )
        return hashlib.sha256(json.dumps(problem, sort_keys=True, default=str).encode()).hexdigest()[:12]

    @property
    def metric_names(self) -> list[str]:
        return [objective.metric for objective in self.objectives]

    @property
    def modes(self) -> list[str]:
        return [objective.mode for objective in self.objectives]

    @property
    def constraint_rules(self) -> list[Constraint]:
        return [constraint.to_constraint() for constraint in self.constraints]


def _format_validation_error(error: ValidationError) -> str:
    first = error.errors()[0]
    parts = [str(part) for part in first["loc"] if not str(part).startswith(("function-", "tagged-union"))]
    if len(parts) >= 3 and parts[0] == "search" and parts[2] in ("float", "int", "categorical"):
        del parts[2]  # the union's tag: search.strength.low, not search.strength.float.low
    location = ".".join(parts)
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    more = f" (and {len(error.errors()) - 1} more)" if len(error.errors()) > 1 else ""
    if not location and re.match(r"^[a-z_]+(\.[A-Za-z0-9_\[\]]+)*: ", message):
        return f"{message}{more}"  # a spec-wide check that names its own field
    return f"{location or 'spec'}: {message}{more}"


def resolve_spec_path(path: str | Path | None) -> Path:
    """The spec file: as given, else relative to the package (so ``sweeps/x.yaml`` works anywhere)."""
    candidate = Path(path or DEFAULT_SPEC).expanduser()
    if candidate.exists():
        return candidate
    packaged = PACKAGE_DIR / candidate.name
    if not candidate.is_absolute() and packaged.exists():
        return packaged
    raise SpecError(f"{candidate}: spec file not found")


def parse_spec(data: Any, source: str = "<spec>", overrides: dict[str, Any] | None = None) -> SweepSpec:
    """Validate a spec mapping (plus dotted-key ``overrides``) into a SweepSpec."""
    if data is None:
        raise SpecError(f"{source}: the spec is empty; it must be a YAML mapping (name:, search:, ...)")
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec must be a YAML mapping, got {type(data).__name__}")
    merged = json.loads(json.dumps(data, default=str))
    for dotted, value in (overrides or {}).items():
        node = merged
        *parents, leaf = dotted.split(".")
        for depth, parent in enumerate(parents):
            node = node.setdefault(parent, {})
            if not isinstance(node, dict):
                where = ".".join(parents[: depth + 1])
                raise SpecError(f"{source}: {dotted}: {where} is {type(node).__name__} {node!r}, not a mapping")
        if not leaf or not all(parents):
            raise SpecError(f"{source}: {dotted}: not a dotted field name")
        node[leaf] = value
    try:
        return SweepSpec.model_validate(merged)
    except ValidationError as error:
        raise SpecError(f"{source}: {_format_validation_error(error)}") from None


def load_spec(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> tuple[SweepSpec, Path]:
    """Read and validate a spec file; returns the spec and the resolved path."""
    resolved = resolve_spec_path(path)
    try:
        data = yaml_load(resolved.read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(f"{resolved}: cannot read: {getattr(error, 'strerror', None) or error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{resolved}:{where} not valid YAML: {getattr(error, 'problem', error)}") from None
    return parse_spec(data, str(resolved), overrides), resolved
