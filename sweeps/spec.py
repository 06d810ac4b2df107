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
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainables.config import ConfigError, TrialConfig
from trainables.contract import METRICS, NONZERO_FRAC, SELECTABLE_METRICS, TEST_ACCURACY, VAL_ACCURACY, Constraint

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_SPEC = "sweeps/digits_quick.yaml"
SEARCHABLE = tuple(
    name
    for name in TrialConfig.__dataclass_fields__
    if name not in ("dataset", "data_dir", "model", "device", "pretrain_cache_dir", "init_checkpoint")
)


class SpecError(ValueError):
    """A spec file is missing, not YAML, or invalid; the message is one line naming file and field."""


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


class SamplerSpec(_Strict):
    type: Literal["tpe", "nsga2", "gp", "random"] = "tpe"
    seed: int | None = 0
    n_startup_trials: int | None = Field(default=None, ge=1)
    population_size: int | None = Field(default=None, ge=2)

    @model_validator(mode="after")
    def _settings_fit_the_sampler(self) -> SamplerSpec:
        """A setting the chosen sampler would silently ignore is an error, not a surprise later."""
        if self.n_startup_trials is not None and self.type not in ("tpe", "gp"):
            raise ValueError(f"n_startup_trials is a tpe/gp setting; {self.type} does not use it")
        if self.population_size is not None and self.type != "nsga2":
            raise ValueError(f"population_size is an nsga2 setting; {self.type} does not use it")
        return self


class BudgetSpec(_Strict):
    num_samples: int = Field(default=12, ge=1)
    max_concurrent_trials: int = Field(default=2, ge=1)
    time_budget_s: float | None = Field(default=None, gt=0)


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
            raise ValueError(f"trial settings: {error}") from None
        metrics = [objective.metric for objective in self.objectives]
        if len(set(metrics)) != len(metrics):
            raise ValueError("objectives: a metric is listed twice")
        return self

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
    location = ".".join(str(part) for part in first["loc"] if not str(part).startswith(("function-", "tagged-union")))
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    more = f" (and {len(error.errors()) - 1} more)" if len(error.errors()) > 1 else ""
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
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec must be a YAML mapping, got {type(data).__name__}")
    merged = json.loads(json.dumps(data, default=str))
    for dotted, value in (overrides or {}).items():
        node = merged
        *parents, leaf = dotted.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    try:
        return SweepSpec.model_validate(merged)
    except ValidationError as error:
        raise SpecError(f"{source}: {_format_validation_error(error)}") from None


def load_spec(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> tuple[SweepSpec, Path]:
    """Read and validate a spec file; returns the spec and the resolved path."""
    resolved = resolve_spec_path(path)
    try:
        data = yaml.safe_load(resolved.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{resolved}:{where} not valid YAML: {getattr(error, 'problem', error)}") from None
    return parse_spec(data, str(resolved), overrides), resolved
