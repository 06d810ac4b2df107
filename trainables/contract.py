"""The names every part of hoyersweep shares: metrics, statuses, the trial result, files and tags.

Torch-free and dependency-free (standard library only), so ``trainables`` (the torch side),
``sweeps`` (Ray, Optuna, MLflow) and ``analysis`` (pandas) all import it and nothing else
retypes these strings.  Data flows one way — spec → sweep → trial → records → analysis — and
this module is the vocabulary of every arrow:

- ``METRICS``: each metric a trial reports, with its direction (``max`` or ``min``); the ones a
  sweep may optimise or constrain are ``SELECTABLE_METRICS`` (never ``test_accuracy``: test
  data is reported, never used to choose);
- ``Status``: how a trial ended (``ok``, ``failed``, ``diverged``, ``pruned``, ``interrupted``),
  with ``parse_status`` mapping the names older versions wrote (``error`` → failed, ``stopped``
  → interrupted);
- ``TrialResult``: the final record of one trial, as ``run_trial`` returns it, Ray reports it,
  the ledger stores it and MLflow/Optuna receive it;
- ``Constraint`` and ``feasible``: the one feasibility rule (a missing or NaN metric is
  infeasible);
- the file names of a sweep folder, the MLflow tag names and the Optuna attribute names.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

Direction = Literal["max", "min"]

# --- metrics -------------------------------------------------------------------------------

VAL_ACCURACY = "val_accuracy"
TEST_ACCURACY = "test_accuracy"
NONZERO_FRAC = "nonzero_frac"
FLOPS_FRAC = "flops_frac"
SPARSITY_FRACTIONS = (NONZERO_FRAC, FLOPS_FRAC)  # fixed exactly by the prune: fine-tuning holds the mask

METRICS: dict[str, Direction] = {
    VAL_ACCURACY: "max",
    TEST_ACCURACY: "max",
    NONZERO_FRAC: "min",
    FLOPS_FRAC: "min",
    "loss": "min",
    "val_loss": "min",
    "val_accuracy_before_prune": "max",
    "val_accuracy_after_prune": "max",
    "wall_time_s": "min",
}
"""Every final scalar metric of a trial and the direction in which it is better."""

SELECTABLE_METRICS: tuple[str, ...] = tuple(name for name in METRICS if name != TEST_ACCURACY)
"""Metrics a sweep may use as objectives or constraints (test accuracy is reported only)."""

EPOCH_METRICS: tuple[str, ...] = (
    VAL_ACCURACY,
    NONZERO_FRAC,
    FLOPS_FRAC,
    "loss",
    "task_loss",
    "reg_loss",
    "val_loss",
    "lr",
)
"""Per-epoch curves of a trial (before the prune, the sparsity ones are what pruning now would leave)."""

PROXY_VAL_ACCURACY = "proxy_val_accuracy"
PROXY_NONZERO_FRAC = "proxy_nonzero_frac"
PROXY_FLOPS_FRAC = "proxy_flops_frac"

PROXY_METRICS: dict[str, str] = {
    PROXY_VAL_ACCURACY: VAL_ACCURACY,
    PROXY_NONZERO_FRAC: NONZERO_FRAC,
    PROXY_FLOPS_FRAC: FLOPS_FRAC,
}
"""Prune-now proxies in each regularized (``train``) epoch's report, each mapped to the final metric it stands for
(same direction): the trial pruned now at its own threshold, before fine-tuning.  Neither a bound nor unbiased."""


def direction(metric: str) -> Direction:
    """The direction of a known metric; a ValueError listing the known ones otherwise."""
    try:
        return METRICS[metric]
    except KeyError:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}") from None


# --- statuses ------------------------------------------------------------------------------


class Status(StrEnum):
    """How a trial ended.

    ``ok``: trained to the end, metrics valid.  ``failed``: raised an error (bad configuration,
    out of memory, a worker that died for good).  ``diverged``: its loss became NaN/inf.
    ``pruned``: stopped early by the sweep's scheduler (a result, not a failure).
    ``interrupted``: cut short by the user or a crash; not a result — a resumed sweep runs it on.
    """

    OK = "ok"
    FAILED = "failed"
    DIVERGED = "diverged"
    PRUNED = "pruned"
    INTERRUPTED = "interrupted"


RESULT_STATUSES: tuple[Status, ...] = (Status.OK, Status.FAILED, Status.DIVERGED, Status.PRUNED)
"""Statuses that end a trial with a result: these count toward ``budget.num_samples``."""

LEGACY_STATUSES: dict[str, Status] = {"error": Status.FAILED, "stopped": Status.INTERRUPTED}
"""Names written by versions before the contract existed."""


def parse_status(value: str | Status | None) -> Status:
    """A stored status as a ``Status``: current names, legacy names; a ValueError otherwise."""
    if isinstance(value, Status):
        return value
    if value in LEGACY_STATUSES:
        return LEGACY_STATUSES[value]
    try:
        return Status(value)
    except ValueError:
        known = ", ".join([*(s.value for s in Status), *LEGACY_STATUSES])
        raise ValueError(f"unknown trial status {value!r}; known: {known}") from None


# --- the trial result ----------------------------------------------------------------------


def _as_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


@dataclass
class TrialResult:
    """The final record of one trial.

    Metrics are floats (NaN where the trial has nothing meaningful to say, e.g. a diverged one);
    ``layers`` is the per-layer sparsity table (one dict per layer), ``history`` every epoch's
    report.  ``extra`` carries scalars beyond the contract (e.g. Ray's ``node_id``) so nothing a
    trial reported is dropped on the way to the records.
    """

    status: Status
    message: str = ""
    val_accuracy: float = math.nan
    test_accuracy: float = math.nan
    nonzero_frac: float = math.nan
    flops_frac: float = math.nan
    loss: float = math.nan
    val_loss: float = math.nan
    val_accuracy_before_prune: float = math.nan
    val_accuracy_after_prune: float = math.nan
    wall_time_s: float = math.nan
    epochs: int = 0
    nonzero: int | None = None
    num_weights: int | None = None
    resumed_from_epoch: int | None = None
    diverged_epoch: int | None = None
    layers: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.status = parse_status(self.status)
        for name in METRICS:
            setattr(self, name, _as_float(getattr(self, name)))

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def metric(self, name: str) -> float:
        """A metric by name (a contract metric, or a numeric scalar of ``extra``); NaN if absent."""
        if name in METRICS:
            return getattr(self, name)
        return _as_float(self.extra.get(name))

    def objective_values(self, metrics: Sequence[str]) -> list[float] | None:
        """The values of ``metrics`` of an ``ok`` result, or None when it is not ok or any is not finite."""
        if not self.ok:
            return None
        values = [self.metric(name) for name in metrics]
        return values if all(math.isfinite(v) for v in values) else None

    def scalars(self) -> dict[str, Any]:
        """Every scalar field (no layers, history or extra), NaN as None: JSON- and Ray-safe."""
        skip = {"layers", "history", "extra"}
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        out["status"] = self.status.value
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-safe (NaN → None), ``extra`` flattened beside the fields."""
        body = asdict(self)
        extra = body.pop("extra")
        body["status"] = self.status.value
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in body.items()}
        return {**{k: v for k, v in extra.items() if k not in clean}, **clean}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrialResult:
        """Build from a stored or reported mapping; unknown keys go to ``extra`` (scalars only)."""
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: values[k] for k in known if k in values and values[k] is not None}
        kwargs.setdefault("status", values.get("status") or Status.FAILED)
        for name in ("layers", "history"):
            if isinstance(kwargs.get(name), str):  # Ray results carry lists as JSON text
                kwargs[name] = json.loads(kwargs[name])
        extra = {
            k: v for k, v in values.items() if k not in known and (v is None or isinstance(v, (int, float, str, bool)))
        }
        return cls(**kwargs, extra={**dict(values.get("extra") or {}), **extra})


# --- constraints and feasibility -----------------------------------------------------------


@dataclass(frozen=True)
class Constraint:
    """A bound on a final metric: ``min`` (at least) or ``max`` (at most), exactly one of them."""

    metric: str
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        if (self.min is None) == (self.max is None):
            raise ValueError(f"constraint on {self.metric}: give exactly one of min or max")

    @property
    def key(self) -> str:
        """A stable name (``val_accuracy_min``), used for Optuna's constraint keys."""
        return f"{self.metric}_{'min' if self.min is not None else 'max'}"

    def violation(self, value: Any) -> float:
        """≤ 0 when satisfied (Optuna's convention), how far outside otherwise; +inf when missing or NaN."""
        number = _as_float(value)
        if math.isnan(number):
            return math.inf
        return (self.min - number) if self.min is not None else (number - self.max)

    def satisfied(self, value: Any) -> Any:
        """True where ``value`` meets the bound; NaN or missing never does.

        Works on a number or elementwise on a numpy array (NaN compares False either way).
        """
        if value is None or isinstance(value, (str, bool)):
            return False
        return (value >= self.min) if self.min is not None else (value <= self.max)

    def describe(self) -> str:
        return f"{self.metric} ≥ {self.min:g}" if self.min is not None else f"{self.metric} ≤ {self.max:g}"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Constraint:
        return cls(metric=values["metric"], min=values.get("min"), max=values.get("max"))


def feasible(metrics: Mapping[str, Any] | TrialResult, constraints: Iterable[Constraint]) -> bool:
    """Whether a trial's final metrics satisfy every constraint (a missing or NaN metric does not)."""
    get = metrics.metric if isinstance(metrics, TrialResult) else metrics.get
    return all(bool(c.satisfied(get(c.metric))) for c in constraints)


# --- the region a hypervolume measures -----------------------------------------------------


@dataclass(frozen=True)
class Axis:
    """One objective's range in a region hypervolume: from ``worst`` (counts 0) to ``best`` (counts 1).

    ``log``: measured on a log scale (sparsity: 1 % → 0.1 % nonzero is worth as much as 10 % → 1 %).
    Values beyond ``best`` count as ``best``; values at or beyond ``worst`` add nothing.
    """

    worst: float
    best: float
    log: bool = False

    def __post_init__(self) -> None:
        if self.worst == self.best or not (math.isfinite(self.worst) and math.isfinite(self.best)):
            raise ValueError(
                f"a hypervolume axis needs finite, different worst and best, got {self.worst}, {self.best}"
            )
        if self.log and min(self.worst, self.best) <= 0:
            raise ValueError(f"a log axis needs positive bounds, got {self.worst}, {self.best}")


DEFAULT_SPARSITY_AXIS = Axis(worst=1.0, best=1e-3, log=True)  # dense → 0.1 % nonzero, log scale


def default_axis(metric: str, constraints: Iterable[Constraint] = ()) -> Axis:
    """The region of a known objective: accuracies from the spec's floor (else 0) to 1; fractions 1 → 1e-3 (log).

    With reference (0, 1) every sampler's hypervolume on MNIST was within 0.002: saturated by the
    many trials that are accurate and dense.  This region measures what a user looks for: models
    above the accuracy floor, as sparse as possible on a log scale.
    """
    if metric in (NONZERO_FRAC, FLOPS_FRAC):
        return DEFAULT_SPARSITY_AXIS
    if METRICS.get(metric) == "max" and "accuracy" in metric:
        floors = [c.min for c in constraints if c.metric == metric and c.min is not None]
        return Axis(worst=max(floors, default=0.0), best=1.0)
    raise ValueError(f"no default hypervolume range for {metric!r}: give hypervolume.{metric}: {{worst, best}}")


def region_of(
    objectives: Sequence[str],
    constraints: Iterable[Constraint] = (),
    explicit: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Axis] | None:
    """A sweep's hypervolume region: the spec's ``hypervolume:`` axes, else ``default_axis`` for each objective.

    None when an objective has neither (e.g. ``loss`` without an explicit range).
    """
    constraints, explicit = list(constraints), dict(explicit or {})
    region = {}
    for metric in objectives:
        try:
            region[metric] = Axis(**explicit[metric]) if metric in explicit else default_axis(metric, constraints)
        except ValueError:
            return None
    return region


def sparsity_caps(constraints: Iterable[Constraint], region: Mapping[str, Axis] | None = None) -> dict[str, float]:
    """The most nonzero weights / FLOPs a result may keep and still count, per fraction that has a bound.

    A fraction's cap is the lowest of its ``max`` constraints and the worst end of its region axis
    (a result beyond either is infeasible or adds no hypervolume); caps of 1 or more bound nothing
    and are left out.  Threshold branching chooses its thresholds within them.
    """
    constraints, region = list(constraints), dict(region or {})
    caps = {}
    for metric in SPARSITY_FRACTIONS:
        bounds = [c.max for c in constraints if c.metric == metric and c.max is not None]
        axis = region.get(metric)
        if axis is not None and axis.worst > axis.best:
            bounds.append(axis.worst)
        bounds = [bound for bound in bounds if 0 < bound < 1]
        if bounds:
            caps[metric] = min(bounds)
    return caps


def nonzero_floor(region: Mapping[str, Axis] | None) -> float | None:
    """The nonzero fraction below which a sparser result counts for nothing more: the best end of the
    region's ``nonzero_frac`` axis (1e-3 by default); None without one.  Threshold branching ranks
    sparser thresholds as if at it."""
    axis = (region or {}).get(NONZERO_FRAC)
    return axis.best if axis is not None and 0 < axis.best < min(axis.worst, 1) else None


# --- a sweep folder ------------------------------------------------------------------------

STATE_FILE = "state.json"
RESULTS_FILE = "results.jsonl"
SPEC_FILE = "spec.yaml"
PARETO_FILE = "pareto.csv"
OPTUNA_FILE = "optuna.db"
MLFLOW_FILE = "mlflow.db"
MLFLOW_ARTIFACTS_DIR = "mlartifacts"
RAY_DIR = "ray"
RAY_PROCESSES_FILE = "ray/processes.json"  # the local Ray processes a running driver started (see sweeps.processes)
BRANCH_POINTS_DIR = "branch_points"  # the end of each branching run's regularized phase, until its branches finish
MODELS_DIR = "models"  # models/trial-0007.pt: each ok trial's final pruned model (trainables.pipeline.save_model)
SCHEDULER_FILE = "scheduler.json"  # the early-stopping scheduler's rung records (sweeps.scheduler)
LOGS_DIR = "logs"  # logs/trial-0007.log: the full error of a failed trial
PRETRAIN_CACHE_DIR = "pretrain_cache"  # beside the sweep folders, in the storage folder


def is_sweep_dir(path: str | Path) -> bool:
    return (Path(path) / STATE_FILE).exists()


def read_ledger(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a results ledger (``results.jsonl``), in file order, statuses mapped to ``Status`` names.

    A line cut short by a kill is skipped; the sweep re-records that trial from the Optuna
    study when it resumes.  Read-only.
    """
    path = Path(path)
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "status" in row:
            row["status"] = parse_status(row["status"]).value
        rows.append(row)
    return rows


def own_tracking_uri(sweep_dir: str | Path) -> str:
    """The absolute sqlite URI of the folder's own MLflow store."""
    return f"sqlite:///{Path(sweep_dir).expanduser().resolve() / MLFLOW_FILE}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for any other URI or an in-memory database)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def resolve_tracking_uri(stored: str | None, sweep_dir: str | Path) -> str:
    """The tracking URI to use now, from what ``state.json`` records.

    ``null`` (or empty): the folder's own ``mlflow.db``.  A legacy absolute sqlite URI whose
    database lies outside this folder while the folder has its own ``mlflow.db``: the folder was
    copied or moved, so its own store (never the original's).  Anything else: as recorded.
    """
    folder = Path(sweep_dir).expanduser().resolve()
    if not stored:
        return own_tracking_uri(folder)
    path = sqlite_path(stored)
    if path is not None:
        resolved = path.expanduser().resolve()
        if resolved == folder / MLFLOW_FILE:
            return own_tracking_uri(folder)
        if not resolved.is_relative_to(folder) and resolved.name == MLFLOW_FILE and (folder / MLFLOW_FILE).exists():
            return own_tracking_uri(folder)
    return stored


def tracking_uri_of(sweep_dir: str | Path) -> str:
    """The MLflow tracking URI of a sweep folder, wherever the folder is now (for readers of stored sweeps).

    ``state.json`` records ``tracking_uri: null`` for the folder's own ``mlflow.db``; a ValueError
    naming the file when the state cannot be read.
    """
    path = Path(sweep_dir) / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: unreadable sweep state ({error})") from None
    return resolve_tracking_uri(state.get("tracking_uri") if isinstance(state, dict) else None, sweep_dir)


# --- MLflow tags and Optuna attributes -----------------------------------------------------

TRIAL_TAG = "hoyersweep.trial_number"
SWEEP_TAG = "hoyersweep.sweep"
STATUS_TAG = "hoyersweep.status"
MESSAGE_TAG = "hoyersweep.message"
PARETO_TAG = "pareto"
MODEL_ARTIFACT = "model"  # a trial run's logged model (MLflow pt2 format)
KNEE_ALIAS = "knee"  # Model Registry alias of the sweep's knee model: models:/<sweep>@knee
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag
FINAL_PREFIX = "final_"  # a trial run's final metrics are logged as final_<metric>
SEARCH_PARAM_PREFIX = "search."  # the parent run's params describing the search space

TRIAL_NUMBER_KEY = "trial_number"  # a member's Optuna trial number in Ray results and ledger rows
STOPPED_AT_KEY = "stopped_at_rung"  # a pruned result: the regularized epoch whose rung stopped it
MODEL_FILE_KEY = "model_file"  # a result: where the trial's final model was saved (sweep folder's models/)
SHARED_RUN_KEY = "shared_run"  # a branch's result: the trial number of the first branch of its regularized run
SHARED_RUN_TAG = "hoyersweep.shared_run"  # MLflow tag of a branch's run: the same
COHORT_SIZE_KEY = "cohort_size"  # a cohort member's result: how many members its cohort trained (trainables.cohort)
COHORT_INDEX_KEY = "cohort_index"  # a cohort member's result: its place in the cohort
WARM_START_ATTR = "warm_start_from"  # Optuna user attr: a finished trial copied from an earlier sweep
MLFLOW_RUN_ATTR = "mlflow_run_id"  # Optuna user attr: the trial's MLflow run (optuna-dashboard shows it)
DUPLICATE_ATTR = "duplicate_of"  # Optuna user attr: a proposal that repeated a known configuration
STARTUP_POINT_ATTR = "startup_point"  # Optuna user attr: the index of a trial's space-filling start-up point
