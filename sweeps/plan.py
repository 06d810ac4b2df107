"""What a sweep's trials are, without Ray: shared settings, member configs, model files, branch settings.

The Ray trainable (``sweeps.trainable``), the Ray driver (``sweeps.runner``) and the Ray-free
driver (``sweeps.asktell``) all turn a member (an Optuna trial's sampled params) into a
``TrialConfig`` here, so both routes train exactly the same configurations.  Imports torch
(through ``DETERMINISTIC_ERRORS``) but neither Ray nor Optuna nor MLflow.
"""

from __future__ import annotations

import hashlib
import json
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sweeps.spec import FloatParam, SweepSpec
from sweeps.study import Member
from trainables.branching import ProxyPoint, more_thresholds, prune_now_proxy, refine_under, threshold_grid
from trainables.config import BRANCH_SETTINGS, ConfigError, TrialConfig, split_branch_settings
from trainables.contract import BRANCH_POINTS_DIR, MODELS_DIR, NONZERO_FRAC, PRETRAIN_CACHE_DIR, Status, TrialResult
from trainables.data import DataError
from trainables.pipeline import TrialRun

PROXY_GRID_SIZE = 32  # thresholds a proxy-branching run evaluates at its branch point (one validation pass each)
DETERMINISTIC_ERRORS: tuple[type[BaseException], ...] = (ConfigError, DataError, torch.OutOfMemoryError)
"""Errors that would happen again for the same configuration: a ``failed`` result, never a Ray retry.

Anything else (a worker or node that died, a lost connection) is left to Ray's ``max_failures``.
"""


def failed_result(error: BaseException) -> TrialResult:
    """A ``failed`` result carrying the error's one-line reason and its full traceback."""
    message = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".rstrip(": ")
    return TrialResult(Status.FAILED, message, extra={"traceback": traceback.format_exc()})


def fixed_settings(spec: SweepSpec, sweep_dir: Path, pretrain_cache: Path | None = None) -> dict[str, Any]:
    """Trial settings every trial shares: the spec's, with threads from the CPU share and a shared pretrain cache.

    The pretrain cache sits in the storage folder, beside the sweep folders (or at
    ``pretrain_cache``), so every sweep there (another method, sampler or seed of the same model
    and data) reuses one dense pretraining; entries are keyed by every setting pretraining depends on.
    """
    settings = {"dataset": spec.dataset, "data_dir": spec.data_dir, "model": spec.model, **spec.trial}
    if spec.data_dir:
        settings["data_dir"] = str(Path(spec.data_dir).expanduser().resolve())
    settings.setdefault("num_threads", max(1, int(spec.resources.cpus)))
    if settings.get("pretrain_epochs"):
        cache = pretrain_cache if pretrain_cache is not None else sweep_dir.parent / PRETRAIN_CACHE_DIR
        settings.setdefault("pretrain_cache_dir", str(cache.resolve()))
    return settings


def member_config(member: Member, fixed: Mapping[str, Any]) -> TrialConfig:
    """A member's full configuration: the shared settings with its sampled params on top (may raise ``ConfigError``)."""
    return TrialConfig.from_dict({**fixed, **member.params})


def valid_configs(
    members: list[Member], fixed: Mapping[str, Any]
) -> tuple[dict[int, TrialConfig], dict[int, TrialResult]]:
    """Each member's config by trial number, and the ``failed`` result of each member whose configuration is bad."""
    configs: dict[int, TrialConfig] = {}
    failed: dict[int, TrialResult] = {}
    for member in members:
        try:
            configs[member.number] = member_config(member, fixed)
        except DETERMINISTIC_ERRORS as error:
            failed[member.number] = failed_result(error)
    return configs, failed


def cohort_in_checkpoint(
    members: list[Member], configs: Mapping[int, TrialConfig], fixed: Mapping[str, Any], identity: Mapping[str, Any]
) -> list[tuple[int, TrialConfig]] | None:
    """The cohort a checkpoint holds (its identity: ``trial_numbers`` and their ``params``), in stack order.

    None when the checkpoint does not hold every member handed out (start afresh rather than mix
    two stacks).  Members of that cohort not handed out (recorded before the interruption) are
    in the list too: the stack must be whole to continue; they ride along as passengers.
    """
    numbers, params = identity.get("trial_numbers") or [], identity.get("params") or []
    if len(numbers) != len(params) or not {m.number for m in members} <= set(numbers):
        return None
    try:
        return [(n, configs.get(n) or TrialConfig.from_dict({**fixed, **p})) for n, p in zip(numbers, params)]
    except DETERMINISTIC_ERRORS:
        return None


def branch_runs(members: list[Member], configs: Mapping[int, TrialConfig]) -> list[list[Member]]:
    """Members grouped into regularized runs: equal in everything but the branch settings, first asked first."""
    runs: dict[str, list[Member]] = {}
    for member in members:
        shared, _ = split_branch_settings(configs[member.number].to_dict())
        runs.setdefault(json.dumps(shared, sort_keys=True, default=str), []).append(member)
    return list(runs.values())


def models_dir(spec: SweepSpec, sweep_dir: Path) -> str | None:
    """Where trials save their final models (``<sweep>/models``), or None with ``models: none``."""
    return None if spec.models == "none" else str(sweep_dir / MODELS_DIR)


def model_file(models_dir: str | None, name: str) -> str | None:
    """Where a trial's final model goes (``<sweep>/models/<name>.pt``), or None when models are not kept.

    Written by the worker into the sweep folder (shared storage on a cluster); the driver logs it
    to MLflow and ``hoyersweep export`` reads it.
    """
    if not models_dir:
        return None
    Path(models_dir).mkdir(parents=True, exist_ok=True)
    return str(Path(models_dir) / f"{name}.pt")


@dataclass(frozen=True)
class BranchSettings:
    """How a Ray trial branches: the proxy grid (proxy mode) and where branch points are kept."""

    branch_dir: str  # <sweep>/branch_points: one file per regularized run, until all its branches finished
    grid: tuple[float, ...] = ()  # proxy mode: thresholds to evaluate at the branch point (inside the search range)
    keep: bool = False  # keep branch points after every branch finished
    caps: Mapping[str, float] = field(default_factory=dict)  # proxy mode: branch within these (spec.sparsity_caps)
    floor: float | None = None  # proxy mode: sparser than this counts no more (spec.nonzero_floor)
    models_dir: str | None = None  # <sweep>/models, when trials keep their models
    repeatable: bool = False  # runs may share their shared settings: see ``shared_phase_repeats``
    under: tuple[float, ...] = ()  # proxy mode: a branch at the best point under each (spec.budget.branch_under)

    def proxy_points(self, run: TrialRun, threshold_mode: str) -> list[ProxyPoint]:
        """The prune-now proxy over the grid, plus a point refined between grid points right under each
        wanted nonzero fraction (``under`` and a nonzero cap; ``trainables.branching.refine_under``)."""
        points = prune_now_proxy(run, self.grid, threshold_mode)
        return points + refine_under(run, points, self.refine_fractions, threshold_mode)

    def cohort_options(
        self, slots: Mapping[int, tuple[int, int]], choose: Callable[[int, list[ProxyPoint]], list[dict[str, Any]]]
    ) -> dict[str, Any]:
        """``trainables.cohort.run_cohort_branches``'s branching keywords for runs with these ``slots``
        (first trial number → (branches to choose, picks to skip)): ``choose`` only when some run chooses."""
        counts = [count for count, _ in slots.values()]
        return {
            "choose": choose if any(counts) else None,
            "grid": self.grid,
            "refine_under": self.refine_fractions,
            "chosen_per_member": max(counts, default=0),
        }

    @property
    def refine_fractions(self) -> list[float]:
        """The nonzero fractions a proxy point is refined under: ``under`` and the spec's nonzero cap."""
        return [*self.under, *([self.caps[NONZERO_FRAC]] if NONZERO_FRAC in self.caps else [])]

    def more_thresholds(self, points: Sequence[ProxyPoint], own: float, count: int, skip: int = 0) -> list[float]:
        """``count`` more thresholds for a run whose own is ``own``, by this sweep's caps, floor and
        ``under`` (``trainables.branching.more_thresholds``)."""
        return more_thresholds(points, own, count, self.caps, self.floor, skip, self.under)


def shared_phase_repeats(spec: SweepSpec) -> bool:
    """Whether regularized runs of ``spec`` can share their shared settings (those before the prune).

    So when no continuous setting outside ``BRANCH_SETTINGS`` is searched (λ = 0 with one seed, or a
    choice of regularizers): then a run's branch point may serve a later run, so it stays in
    ``<sweep>/branch_points`` until the sweep completes, not only until that run's branches finished.
    A searched float (λ, lr) makes equal shared settings a chance that never comes.
    """
    return not any(isinstance(param, FloatParam) and name not in BRANCH_SETTINGS for name, param in spec.search.items())


def clear_branch_points(spec: SweepSpec, sweep_dir: Path) -> None:
    """At a sweep's completion: remove the branch points kept for later runs (``shared_phase_repeats``),
    unless ``keep_branch_points``."""
    folder = sweep_dir / BRANCH_POINTS_DIR
    if spec.keep_branch_points or not folder.is_dir():
        return
    for path in [*folder.glob("*.pt"), *folder.glob("*.lock")]:
        path.unlink(missing_ok=True)


def branch_point_path(settings: BranchSettings, shared: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps(shared, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(settings.branch_dir) / f"{key}.pt"


def branch_settings(spec: SweepSpec, sweep_dir: Path) -> BranchSettings | None:
    """What a branching run needs (None when runs do not branch): where branch points live, the proxy grid."""
    if spec.budget.thresholds_per_run <= 1:
        return None
    grid: tuple[float, ...] = ()
    threshold = spec.search.get("threshold")
    if spec.budget.branch_mode == "proxy" and isinstance(threshold, FloatParam):
        grid = tuple(threshold_grid(threshold.low, threshold.high, PROXY_GRID_SIZE, log=threshold.log))
    return BranchSettings(
        str(sweep_dir / BRANCH_POINTS_DIR),
        grid,
        keep=spec.keep_branch_points,
        models_dir=models_dir(spec, sweep_dir),
        caps=spec.sparsity_caps(),
        floor=spec.nonzero_floor(),
        repeatable=shared_phase_repeats(spec),
        under=tuple(spec.budget.branch_under),
    )
