"""Threshold branching: one dense + regularized run serves many thresholds, exactly.

Nothing before the prune reads ``BRANCH_SETTINGS`` (threshold, threshold mode, fine-tuning), so
trials differing only in them share their dense + regularized phase bit for bit.
``run_branches(config, branches)`` trains that shared phase once, keeps the *branch point* (the
unpruned run at the end of regularized training), and for each branch restores it, applies the
branch's settings, prunes, fine-tunes and returns an ordinary ``TrialResult`` — the one
``run_trial({**config, **branch})`` returns, field for field, except the timings (``wall_time_s``
and each epoch's ``time_s``) and ``resumed_from_epoch`` after a resume:

- the pre-prune history of a trial holds *projected* sparsity at its own threshold, and each
  regularized epoch the prune-now proxy there (``contract.PROXY_METRICS``), so the shared phase
  records, each epoch, the projection (and in regularized epochs the proxy accuracy: one
  validation pass per pair) at every branch's (threshold, mode) and each branch's history gets
  its own (``track`` adds pairs for branches chosen later);
- seeds, per-epoch shuffles (seeded from (seed, phase, epoch)), the global RNG state at the
  branch point and the optimizer (fresh per phase) are those of an independent run;
- ``wall_time_s`` of a branch = the shared phase's time + the branch's own, i.e. what an
  independent trial would have taken.

Reports and resume.  ``report(metrics, state)`` is called once per epoch, like ``run_trial``'s,
with ``metrics["branch"]`` = ``"shared"`` (pretrain/regularized epochs, reported once for all
branches, sparsity and prune-now proxy at ``config``'s own threshold plus ``branch_nonzero_frac`` /
``branch_flops_frac`` lists per branch) or the branch's index in ``branches``.  ``state`` is a
``BranchState`` (a ``TrialState``): ``state.save(path)`` writes a self-contained checkpoint
(the branch point, the finished branches' results, the run in progress), and
``run_branches(config, branches, resume_from=path)`` continues from it — inside the shared
phase, or inside branch i with branches < i already finished; their stored results are
returned again, so nothing is lost whatever the caller recorded.  ``skip`` names branch indices
the caller already holds results for: they are neither run nor returned (None in their place).
``branch_point=path`` saves the branch point there; a later call that finds it never retrains
the shared phase, and one that comes while another is training it (a run with equal shared
settings: the branch point's name should say so) waits for it (a lock on ``<path>.lock``) and
adopts it.  An adopted point brings the shared phase's projections at the pairs its writer
tracked; the adopter's other pairs read NaN there, except at the branch point itself.

Choosing thresholds by proxy.  ``prune_now_proxy(run, thresholds)`` prunes a copy of the
branch-point weights at each threshold and measures validation accuracy (one pass each) and
sparsity; ``select_thresholds(points, k)`` picks K thresholds spanning the proxy Pareto front
(an ε-net on log nonzero fraction; within ``caps`` on the sparsity, which the prune fixes
exactly, when the caller has them: a sweep's constraints and region); ``ProxyChoice`` puts both
together as a ``branches`` chooser, called once at the branch point.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from trainables.config import BRANCH_SETTINGS, ConfigError, TrialConfig, split_branch_settings
from trainables.contract import (
    FLOPS_FRAC,
    NONZERO_FRAC,
    PROXY_FLOPS_FRAC,
    PROXY_NONZERO_FRAC,
    PROXY_VAL_ACCURACY,
    SPARSITY_FRACTIONS,
    Status,
    TrialResult,
)
from trainables.pipeline import (
    TRAIN,
    Cursor,
    ReportFn,
    TrialRun,
    TrialState,
    _atomic_save,
    dense,
    exclusive_lock,
    finish,
    load_checkpoint,
    regularize,
    start_run,
)
from trainables.pruning import compute_masks, effective_tensor, sparsity_report, threshold_mask
from trainables.regularizers import prunable_weights

BRANCH_FORMAT = "branches-1"
"""The ``format`` of the checkpoints and branch-point files written here (``TrialState`` writes 1)."""

SHARED = "shared"
"""``metrics["branch"]`` of an epoch of the shared (dense + regularized) phase."""

BranchReport = ReportFn
"""``report(metrics, state)``: ``metrics["branch"]`` is ``SHARED`` or a branch index; ``state`` a ``BranchState``."""

Branches = Sequence[Mapping[str, Any]] | Callable[[TrialRun], Sequence[Mapping[str, Any]]]
"""The branches: each one's ``BRANCH_SETTINGS``, or a chooser called once at the branch point with the run."""

TrackKey = tuple[float, str]

# Settings that may differ between the run that wrote a branch point and the one that reads it.
_PLACEMENT = ("device", "num_threads", "data_dir", "pretrain_cache_dir", "eval_batch_size")


# --- the branch point ------------------------------------------------------------------------


def _key(threshold: float, mode: str) -> str:
    return f"{mode}:{float(threshold)!r}"


@dataclass
class BranchPoint:
    """The run at the end of regularized training, unpruned: what every branch starts from.

    ``projections[i]`` holds, for history epoch i, the projected (nonzero_frac, flops_frac) at
    each tracked (threshold, mode) (key ``"mode:threshold"``), followed in a regularized epoch by
    the prune-now proxy accuracy there (``proxy_val_accuracy``); ``rng`` is torch's global RNG
    state there, so anything random in fine-tuning draws what an independent run would.
    """

    config: dict[str, Any]
    model: dict[str, torch.Tensor]
    history: list[dict[str, Any]]
    projections: list[dict[str, list[float]]]
    marks: dict[str, Any]
    message: str
    cursor: tuple[str, int]
    elapsed_s: float
    rng: torch.Tensor
    diverged: bool = False

    def payload(self) -> dict[str, Any]:
        """Plain data and tensors (``torch.load(weights_only=True)`` reads it back)."""
        return {
            "format": BRANCH_FORMAT,
            "kind": "branch_point",
            "config": self.config,
            "model": self.model,
            "history": self.history,
            "projections": self.projections,
            "marks": self.marks,
            "message": self.message,
            "cursor": list(self.cursor),
            "elapsed_s": self.elapsed_s,
            "rng": self.rng,
            "diverged": self.diverged,
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> BranchPoint:
        return cls(
            config=dict(payload["config"]),
            model=payload["model"],
            history=list(payload["history"]),
            projections=list(payload["projections"]),
            marks=dict(payload["marks"]),
            message=payload["message"],
            cursor=(payload["cursor"][0], int(payload["cursor"][1])),
            elapsed_s=float(payload["elapsed_s"]),
            rng=payload["rng"],
            diverged=bool(payload["diverged"]),
        )

    @property
    def epoch(self) -> int:
        return self.history[-1]["epoch"] if self.history else 0


def load_branch_point(path: str | os.PathLike) -> BranchPoint:
    """Read a branch-point file written by ``run_branches(..., branch_point=path)``."""
    payload = load_checkpoint(path)
    if payload.get("format") != BRANCH_FORMAT or payload.get("kind") != "branch_point":
        raise ConfigError(f"{path} is not a branch-point file")
    return BranchPoint.from_payload(payload)


@torch.no_grad()
def projected_fractions(
    model: torch.nn.Module,
    positions: Mapping[str, int],
    pairs: Mapping[str, TrackKey],
    include_bias: bool = False,
) -> dict[str, list[float]]:
    """``{key: [nonzero_frac, flops_frac]}`` pruning at each (threshold, mode) of ``pairs`` would leave now.

    The numbers of ``sparsity_report(model, positions, compute_masks(...))`` (the same masks, the
    same integer counts) without building a report per threshold: tracking a 32-threshold grid
    every epoch would otherwise cost about half an epoch on digits.
    """
    layers = []
    for module_name, module, name in prunable_weights(model, include_bias=include_bias):
        tensor = effective_tensor(module, name).detach()
        layers.append((tensor, tensor != 0, positions.get(module_name, 1)))
    numel = sum(tensor.numel() for tensor, _, _ in layers)
    macs_dense = sum(tensor.numel() * position for tensor, _, position in layers)
    out = {}
    for key, (threshold, mode) in pairs.items():
        counts = [(int((threshold_mask(t, threshold, mode) & live).sum()), pos) for t, live, pos in layers]
        nonzero = sum(count for count, _ in counts)
        macs = sum(count * position for count, position in counts)
        out[key] = [nonzero / numel if numel else 0.0, macs / macs_dense if macs_dense else 0.0]
    return out


def _shared_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    shared, _ = split_branch_settings(config)
    return {key: value for key, value in shared.items() if key not in _PLACEMENT}


def _check_same_shared(stored: Mapping[str, Any], config: TrialConfig, what: str) -> None:
    ours, theirs = _shared_settings(config.to_dict()), _shared_settings(stored)
    differing = sorted(key for key in ours.keys() | theirs.keys() if ours.get(key) != theirs.get(key))
    if differing:
        raise ConfigError(f"{what} was trained with other shared settings: {', '.join(differing)}")


# --- checkpoints of a branching run ----------------------------------------------------------


class BranchState(TrialState):
    """A branching run between two epochs: ``branch`` is ``SHARED`` or the index of the branch running.

    ``save(path)`` writes everything ``run_branches(..., resume_from=path)`` needs: the run in
    progress, the branch point (once reached), the finished branches' results and the branches.
    """

    def __init__(self, driver: _Driver, run: TrialRun, branch: str | int, base: TrialState) -> None:
        super().__init__(run, base.phase, base.phase_epoch, base.epoch)
        self.branch = branch
        self._driver = driver

    def save(self, path: str | os.PathLike) -> None:
        """Write the checkpoint atomically (temporary file, then rename)."""
        _atomic_save(self._driver.payload(self), Path(path))


class _Driver:
    """One ``run_branches`` call: the shared run, the branch point, the branches and their results."""

    def __init__(self, config: TrialConfig, report: BranchReport | None, track: Iterable[TrackKey]) -> None:
        self.config = config
        self.user_report = report
        self.track = {_key(t, m): (float(t), m) for t, m in track}
        self.branches: list[dict[str, Any]] | None = None
        self.results: dict[int, TrialResult] = {}
        self.projections: list[dict[str, list[float]]] = []
        self.point: BranchPoint | None = None
        self.base: TrialRun | None = None

    # the shared phase

    def project(self, run: TrialRun, metrics: Mapping[str, Any]) -> dict[str, list[float]]:
        """Projected (nonzero_frac, flops_frac) at every tracked (threshold, mode), as ``TrialRun.sparsity`` would;
        in a regularized epoch followed by the prune-now proxy accuracy, as ``measure_epoch`` would measure it."""
        include_bias = run.config.include_bias
        projection = projected_fractions(run.model, run.positions, self.track, include_bias=include_bias)
        if metrics.get("phase") != TRAIN or PROXY_VAL_ACCURACY not in metrics:
            return projection
        own = _key(run.config.threshold, run.config.threshold_mode)
        # Proxy accuracy costs a validation pass per threshold: only for branches known before the branch
        # point.  Thresholds a chooser may pick later (a proxy grid) get sparsity only; their proxy accuracy
        # before the branch point is NaN in the branch's history (at the branch point it is exact).
        known = {_key(c.threshold, c.threshold_mode) for c in map(self.branch_config, self.branches or [])}
        others = [key for key in self.track if key != own and key in known]
        masks = (compute_masks(run.model, *self.track[key], include_bias=include_bias) for key in others)
        accuracies = dict(zip(others, run.pruned_accuracies(masks)))
        accuracies[own] = metrics[PROXY_VAL_ACCURACY]  # measured already, the same way
        return {key: [*values, accuracies.get(key, math.nan)] for key, values in projection.items()}

    def shared_report(self, metrics: dict[str, Any], state: TrialState) -> None:
        run = state._run
        projection = self.project(run, metrics)
        self.projections.append(projection)
        if self.user_report is None:
            return
        tagged = {**metrics, "branch": SHARED}
        if self.branches is not None:
            keys = [_key(c.threshold, c.threshold_mode) for c in map(self.branch_config, self.branches)]
            tagged["branch_nonzero_frac"] = [projection[k][0] for k in keys]
            tagged["branch_flops_frac"] = [projection[k][1] for k in keys]
        self.user_report(tagged, BranchState(self, run, SHARED, state))

    def branch_reporter(self, index: int) -> ReportFn:
        def report(metrics: dict[str, Any], state: TrialState) -> None:
            if self.user_report is not None:
                self.user_report({**metrics, "branch": index}, BranchState(self, state._run, index, state))

        return report

    def snapshot(self, run: TrialRun, diverged: bool) -> BranchPoint:
        return BranchPoint(
            config=self.config.to_dict(),
            model={name: tensor.detach().cpu().clone() for name, tensor in run.model.state_dict().items()},
            history=[dict(epoch) for epoch in run.history],
            projections=[dict(p) for p in self.projections],
            marks=dict(run.marks),
            message=run.message,
            cursor=(run.cursor.phase, run.cursor.phase_epoch),
            elapsed_s=run.elapsed(),
            rng=torch.get_rng_state(),
            diverged=diverged,
        )

    def adopt(self, point: BranchPoint) -> None:
        """Put the base run at a branch point read from disk (a resume: ``resumed_from_epoch`` is its epoch)."""
        base = self.base
        base.model.load_state_dict(point.model)
        base.history = list(point.history)
        base.marks = {**point.marks, "resumed_from_epoch": point.epoch}
        point.marks = dict(base.marks)
        base.message = point.message
        base.cursor = Cursor(*point.cursor)
        base.elapsed_before, base.started = point.elapsed_s, time.perf_counter()
        self.projections = list(point.projections)
        self.point = point

    # the branches

    def branch_config(self, branch: Mapping[str, Any]) -> TrialConfig:
        unknown = sorted(set(branch) - set(BRANCH_SETTINGS))
        if unknown:
            raise ConfigError(f"branches may only set {', '.join(BRANCH_SETTINGS)}; got {', '.join(unknown)}")
        return TrialConfig.from_dict({**self.config.to_dict(), **branch})

    def branch_history(self, config: TrialConfig) -> list[dict[str, Any]]:
        """The shared history with the pre-prune sparsity (and prune-now proxy) at this branch's threshold."""
        key = _key(config.threshold, config.threshold_mode)
        point = self.point
        history = []
        for index, (epoch, projection) in enumerate(zip(point.history, point.projections)):
            values = projection.get(key)
            proxied = PROXY_VAL_ACCURACY in epoch
            unmeasured = values is None or (proxied and (len(values) < 3 or math.isnan(values[2])))
            if unmeasured and index == len(point.history) - 1 and not point.diverged:
                values = self.project_base(config, proxied)  # exact at the branch point, unknown before it
            values = list(values) if values is not None else [math.nan, math.nan]
            nonzero, flops = values[:2]
            entry = {**epoch, NONZERO_FRAC: nonzero, FLOPS_FRAC: flops}
            if proxied:
                accuracy = values[2] if len(values) > 2 else math.nan
                entry.update({PROXY_VAL_ACCURACY: accuracy, PROXY_NONZERO_FRAC: nonzero, PROXY_FLOPS_FRAC: flops})
            history.append(entry)
        return history

    def project_base(self, config: TrialConfig, proxy: bool = False) -> list[float]:
        key = _key(config.threshold, config.threshold_mode)
        pairs = {key: (config.threshold, config.threshold_mode)}
        values = projected_fractions(self.base.model, self.base.positions, pairs, config.include_bias)[key]
        if proxy:
            masks = compute_masks(self.base.model, *pairs[key], include_bias=config.include_bias)
            values = [*values, *self.base.pruned_accuracies([masks])]
        return values

    def start_branch(self, index: int, saved_run: Mapping[str, Any] | None = None) -> TrialRun:
        """Branch ``index`` on a copy of the branch-point model: fresh there, or restored from ``saved_run``."""
        config = self.branch_config(self.branches[index])
        point = self.point
        run = TrialRun(config, self.base.data, copy.deepcopy(self.base.model), self.branch_reporter(index))
        if saved_run is not None:
            run.restore(dict(saved_run))
        else:
            run.history = self.branch_history(config)
            run.marks = dict(point.marks)
            run.message = point.message
            run.cursor = Cursor(*point.cursor)
            run.elapsed_before, run.started = point.elapsed_s, time.perf_counter()
        torch.set_rng_state(point.rng)
        return run

    def payload(self, state: BranchState) -> dict[str, Any]:
        return {
            "format": BRANCH_FORMAT,
            "kind": "branches",
            "config": self.config.to_dict(),
            "branches": [dict(b) for b in self.branches] if self.branches is not None else None,
            "stage": state.branch,
            "run": state._run.checkpoint(state),
            "projections": [dict(p) for p in self.projections] if state.branch == SHARED else None,
            "branch_point": self.point.payload() if self.point is not None else None,
            "results": {str(i): result.to_dict() for i, result in self.results.items()},
        }


# --- the entry point -------------------------------------------------------------------------


def run_branches(
    config: TrialConfig | Mapping[str, Any],
    branches: Branches,
    report: BranchReport | None = None,
    resume_from: str | os.PathLike | None = None,
    branch_point: str | os.PathLike | None = None,
    skip: Collection[int] = (),
    track: Iterable[TrackKey] = (),
    model_path: Callable[[int], str | os.PathLike | None] | None = None,
    on_end: Callable[[int, TrialResult], None] | None = None,
) -> list[TrialResult | None]:
    """Train ``config``'s dense + regularized phase once, then prune + finetune once per branch.

    ``branches``: each branch's settings (keys from ``BRANCH_SETTINGS`` only, over ``config``'s),
    or a chooser ``f(run) -> branches`` called once at the branch point with the unpruned run
    (e.g. ``ProxyChoice``; a chooser's ``track`` attribute, like ``track``, names the
    (threshold, mode) pairs whose projected sparsity the shared epochs record — a branch
    whose pair was not tracked gets NaN there, except at the branch point itself).

    Returns one result per branch, in order, each equal to ``run_trial({**config, **branch})``
    but for timings; None where the index is in ``skip`` (results the caller already holds).
    A shared phase that diverges makes every branch DIVERGED (as each independent run would
    be); a branch that diverges is DIVERGED alone.  ``model_path(i)``: where branch ``i``'s final
    model is saved (``pipeline.save_model``), or None.  ``report``/``resume_from``/``branch_point``:
    see the module docstring; ``resume_from`` takes a ``BranchState`` checkpoint only.
    ``on_end(i, result)`` hears of branch ``i``'s result as soon as it is final, before the next
    branch starts (a result a checkpoint held, when its turn comes): a caller records branch 0
    while branch 1 fine-tunes, instead of every branch at the end.
    """
    config = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(dict(config))
    config.validate()
    track = list(track) + list(getattr(branches, "track", ()))
    if not callable(branches):
        branches = [dict(b) for b in branches]
    driver = _Driver(config, report, track)
    if not callable(branches):
        driver.branches = branches
        configs = [driver.branch_config(branch) for branch in branches]  # bad settings fail before any training
        driver.track.update({_key(c.threshold, c.threshold_mode): (c.threshold, c.threshold_mode) for c in configs})

    saved = _load_branching_checkpoint(resume_from, config) if resume_from else None
    in_branch = saved is not None and saved["stage"] != SHARED
    base = start_run(config, report=driver.shared_report)
    driver.base = base
    if saved is not None:
        driver.results = {int(i): TrialResult.from_dict(r) for i, r in saved["results"].items()}
    if in_branch:
        driver.adopt(BranchPoint.from_payload(saved["branch_point"]))
        stored = saved["branches"]
        if driver.branches is not None and driver.branches != stored:
            raise ConfigError("resume_from was written for other branches; pass the same list (and skip finished ones)")
        driver.branches = [dict(b) for b in stored]
    elif branch_point is None:
        _train_shared(driver, base, saved)
    else:
        with exclusive_lock(branch_point):  # a run with equal shared settings that is at it now: wait, then adopt
            if Path(branch_point).exists():
                point = load_branch_point(branch_point)
                _check_same_shared(point.config, config, f"branch point {branch_point}")
                driver.adopt(point)
            elif _train_shared(driver, base, saved):
                _atomic_save(driver.point.payload(), Path(branch_point))
    if driver.branches is None:
        driver.branches = [dict(b) for b in branches(base)]

    results: list[TrialResult | None] = []
    for index in range(len(driver.branches)):
        if index in skip:
            results.append(None)
            continue
        if index not in driver.results:
            resuming = in_branch and index == int(saved["stage"])
            run = driver.start_branch(index, saved["run"] if resuming else None)
            path = model_path(index) if model_path is not None else None
            driver.results[index] = run.result(Status.DIVERGED) if driver.point.diverged else finish(run, path)
        results.append(driver.results[index])
        if on_end is not None:
            on_end(index, driver.results[index])
    return results


def _train_shared(driver: _Driver, base: TrialRun, saved: Mapping[str, Any] | None) -> bool:
    """Train the dense + regularized phase (from ``saved``'s run, if any) and keep the branch point;
    False when it diverged."""
    if saved is not None:
        base.restore(saved["run"])
        driver.projections = list(saved["projections"])
    diverged = not (dense(base) and regularize(base))
    driver.point = driver.snapshot(base, diverged)
    return not diverged


def _load_branching_checkpoint(path: str | os.PathLike, config: TrialConfig) -> dict[str, Any]:
    payload = load_checkpoint(path)
    if payload.get("format") != BRANCH_FORMAT or payload.get("kind") != "branches":
        raise ConfigError(f"{path} is not a branching checkpoint (BranchState.save writes those)")
    _check_same_shared(payload["config"], config, f"checkpoint {path}")
    return payload


# --- the prune-now proxy and choosing thresholds ---------------------------------------------


@dataclass(frozen=True)
class ProxyPoint:
    """What pruning at ``threshold`` right now gives, before any fine-tuning (validation data only).

    ``connected``: whether the pruned network's output still depends on its input
    (``pruning.cut_off``); a cut-off mask is worth no branch.
    """

    threshold: float
    val_accuracy: float
    nonzero_frac: float
    flops_frac: float
    connected: bool = True


@torch.no_grad()
def prune_now_proxy(run: TrialRun, thresholds: Sequence[float], threshold_mode: str = "abs") -> list[ProxyPoint]:
    """Prune a copy of ``run``'s (unpruned) weights at each threshold; one validation pass each.

    ``run`` is left as it is.  The accuracy at a threshold equals the ``val_accuracy_after_prune``
    of a branch pruned there, and the sparsity its projected sparsity at the branch point.
    """
    if run.masks is not None:
        raise ValueError("prune_now_proxy needs an unpruned run (e.g. at the branch point)")
    include_bias = run.config.include_bias
    masks = [compute_masks(run.model, threshold, threshold_mode, include_bias=include_bias) for threshold in thresholds]
    points = []
    for threshold, mask, (accuracy, dead) in zip(thresholds, masks, run.pruned_outcomes(masks)):
        sparsity = sparsity_report(run.model, run.positions, mask, include_bias=include_bias)
        points.append(ProxyPoint(float(threshold), accuracy, sparsity.nonzero_frac, sparsity.flops_frac, not dead))
    return points


@torch.no_grad()
def refine_thresholds(
    points: Sequence[ProxyPoint], fractions: Iterable[float], nonzero: Callable[[float], float], steps: int = 8
) -> list[float]:
    """The densest threshold found under each nonzero fraction, between the grid's ``points``.

    A grid's densest point under a wanted fraction may keep well below it (a 32-point grid over a
    decade steps by 7.7 % in threshold).  For each fraction with grid points on both sides (a denser
    one keeping more, a sparser one keeping at most it), the threshold is bisected in log ``steps``
    times on ``nonzero(threshold)`` alone (masks of one mode on one model are nested, so it falls as
    the threshold grows; no validation pass).  None where the grid has no bracket, already hits the
    fraction, or the bisection ends on a mask that keeps nothing.
    """
    found: list[float] = []
    for fraction in sorted(set(fractions)):
        denser = [p for p in points if p.nonzero_frac > fraction and p.threshold > 0]
        sparser = [p for p in points if p.nonzero_frac <= fraction]
        if not denser or not sparser:
            continue
        low = max(denser, key=lambda p: p.threshold).threshold
        start = min(sparser, key=lambda p: p.threshold)
        high, kept = start.threshold, start.nonzero_frac
        if low >= high or kept == fraction:
            continue
        for _ in range(steps):
            middle = math.sqrt(low * high)
            if (middle_kept := nonzero(middle)) > fraction:
                low = middle
            else:
                high, kept = middle, middle_kept
        if high != start.threshold and high not in found and kept > 0:  # a mask that keeps nothing is no branch
            found.append(high)
    return found


def refine_under(
    run: TrialRun, points: Sequence[ProxyPoint], fractions: Iterable[float], threshold_mode: str = "abs", steps: int = 8
) -> list[ProxyPoint]:
    """Proxy points at the densest threshold found under each nonzero fraction, between grid points
    (``refine_thresholds`` on ``run``'s model), each measured as a ``prune_now_proxy`` point."""
    include_bias = run.config.include_bias

    def nonzero(threshold: float) -> float:
        masks = compute_masks(run.model, threshold, threshold_mode, include_bias=include_bias)
        return sparsity_report(run.model, run.positions, masks, include_bias=include_bias).nonzero_frac

    found = refine_thresholds(points, fractions, nonzero, steps)
    return prune_now_proxy(run, found, threshold_mode) if found else []


def threshold_grid(low: float, high: float, n: int = 32, log: bool = True) -> list[float]:
    """``n`` thresholds from ``low`` to ``high`` inclusive, evenly spaced in log (default) or linearly."""
    if n < 1 or high < low or (log and low <= 0):
        need = "n ≥ 1, low ≤ high" + (" and low > 0 for a log grid" if log else "")
        raise ValueError(f"threshold_grid needs {need}; got low={low}, high={high}, n={n}")
    if n == 1:
        return [float(low)]
    if log:
        a, b = math.log(low), math.log(high)
        inner = [math.exp(a + (b - a) * i / (n - 1)) for i in range(1, n - 1)]
    else:
        inner = [low + (high - low) * i / (n - 1) for i in range(1, n - 1)]
    return [float(low), *inner, float(high)]  # the ends exactly as given


def _dominates(a: ProxyPoint, b: ProxyPoint) -> bool:
    return (
        a.val_accuracy >= b.val_accuracy
        and a.nonzero_frac <= b.nonzero_frac
        and (a.val_accuracy > b.val_accuracy or a.nonzero_frac < b.nonzero_frac)
    )


def pareto_layers(points: Iterable[ProxyPoint]) -> list[list[ProxyPoint]]:
    """Non-dominated sorting (accuracy max, nonzero min): the front first, then the front of the rest, ...

    Points with a non-finite accuracy or nonzero fraction form the last layer.
    """
    rest = [p for p in points if math.isfinite(p.val_accuracy) and math.isfinite(p.nonzero_frac)]
    bad = [p for p in points if p not in rest]
    layers = []
    while rest:
        front = [p for p in rest if not any(_dominates(q, p) for q in rest)]
        layers.append(front)
        rest = [p for p in rest if p not in front]
    return layers + ([bad] if bad else [])


def select_thresholds(
    points: Sequence[ProxyPoint],
    k: int,
    low: float | None = None,
    high: float | None = None,
    caps: Mapping[str, float] | None = None,
    floor: float | None = None,
    under: Sequence[float] = (),
) -> list[float]:
    """K thresholds spanning the proxy Pareto front, ascending; deterministic.

    Among the points with ``low ≤ threshold ≤ high``: the most accurate front point first, then
    greedily the front point farthest (in log nonzero fraction) from those chosen — an ε-net of
    the front in log sparsity, so the picks spread evenly from dense-and-accurate to sparse.  With
    fewer than ``k`` front points the next Pareto layers fill in the same way; with fewer than
    ``k`` points in all, all of them.  Ties go to the more accurate point, then the smaller threshold.
    Points that cannot make a result of their own are left out first: a mask that cuts the input
    off from the output (``ProxyPoint.connected`` false, or nothing kept), and all but the smallest
    threshold of each mask (an equal nonzero fraction), so a run may get fewer than ``k``.

    ``caps`` (``{"flops_frac": 0.2}``; keys from ``SPARSITY_FRACTIONS``): the most a result may
    keep.  A point's sparsity is its result's exactly (fine-tuning holds the mask), so the ε-net
    runs over the points within every cap; only when fewer than ``k`` are within do the others
    fill in, those nearest the caps (in log ratio) first.

    ``floor``: the nonzero fraction below which sparser counts for nothing more (the best end of
    the sweep's nonzero axis).  Points sparser than it rank as if at it, so of them only the most
    accurate can be on the front, and the ε-net does not stretch into the tail where a handful of
    weights is left.

    ``under`` (nonzero fractions, e.g. ``(0.015, 0.01)``: the sparsities a result is wanted at): right
    after the most accurate point, the most accurate point keeping at most each of them (sparser on
    ties), densest fraction first.  Without them the ε-net serves such a cap only with whatever
    falls under it; with them each gets the point a validation choice there would want.
    """
    return sorted(ranked_thresholds(points, k, low, high, caps, floor, under))


def ranked_thresholds(
    points: Sequence[ProxyPoint],
    k: int,
    low: float | None = None,
    high: float | None = None,
    caps: Mapping[str, float] | None = None,
    floor: float | None = None,
    under: Sequence[float] = (),
) -> list[float]:
    """``select_thresholds``' picks in the order they were picked, best first.

    The order does not depend on ``k``: the first ``k`` picks of ``k + n`` are the ``k`` picks.
    """
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    caps = dict(caps or {})
    unknown = sorted(set(caps) - set(SPARSITY_FRACTIONS))
    if unknown:
        raise ValueError(f"caps: {', '.join(unknown)} is not one of {', '.join(SPARSITY_FRACTIONS)}")
    if not all(0 < cap < math.inf for cap in caps.values()):
        raise ValueError(f"caps: each cap must be a positive fraction, got {caps}")
    seen: dict[float, ProxyPoint] = {}
    for point in points:
        if (low is None or point.threshold >= low) and (high is None or point.threshold <= high):
            seen.setdefault(point.threshold, point)
    seen = {p.threshold: p for p in _distinct_masks(seen.values())}
    if floor is not None:
        if not 0 < floor < 1:
            raise ValueError(f"floor: a nonzero fraction in (0, 1), got {floor}")
        seen = {t: replace(p, nonzero_frac=max(p.nonzero_frac, floor)) for t, p in seen.items()}

    if not all(0 < fraction < 1 for fraction in under):
        raise ValueError(f"under: nonzero fractions in (0, 1), got {list(under)}")
    beyond = {t: _cap_excess(p, caps) for t, p in seen.items()}
    within = [p for t, p in seen.items() if beyond[t] == 0.0]
    chosen = _spread_over_front(within, k, _most_accurate_under(within, under))
    outside = sorted((t for t in seen if beyond[t] > 0.0), key=lambda t: (beyond[t], t))
    chosen += [seen[t] for t in outside[: k - len(chosen)]]
    return [p.threshold for p in chosen]


def _cap_excess(point: ProxyPoint, caps: Mapping[str, float]) -> float:
    """How far ``point`` lies beyond ``caps``: the largest log ratio of its fraction to a cap, or 0 within."""
    ratios = [math.log(max(getattr(point, metric), 1e-12) / cap) for metric, cap in caps.items()]
    return max([0.0, *(r if math.isfinite(r) else math.inf for r in ratios)])


def _distinct_masks(points: Iterable[ProxyPoint]) -> list[ProxyPoint]:
    """The points worth a branch: one per mask, and none that cuts the input off from the output.

    Thresholds of one mode on one model keep nested sets of weights, so an equal nonzero fraction
    is the same mask and would fine-tune to the same result: the smallest threshold stands for it.
    A mask that keeps nothing, or no weight of a layer every path crosses, leaves a constant
    network, which fine-tuning (mask held) cannot revive: it would end at chance accuracy.
    """
    distinct: dict[float, ProxyPoint] = {}
    for point in sorted(points, key=lambda p: p.threshold):
        if point.connected and point.nonzero_frac != 0:
            distinct.setdefault(point.nonzero_frac, point)  # NaN fractions never compare equal: each is kept
    return list(distinct.values())


def _most_accurate_under(points: Sequence[ProxyPoint], under: Sequence[float]) -> list[ProxyPoint]:
    """For each fraction of ``under``, densest first: the most accurate point keeping at most it (ties:
    the sparser, then the smaller threshold), each once.  Each is on the front: a point dominating it
    would be under the fraction too, and more accurate or as accurate and sparser."""
    found: list[ProxyPoint] = []
    finite = [p for p in points if math.isfinite(p.val_accuracy) and math.isfinite(p.nonzero_frac)]
    for fraction in sorted(set(under), reverse=True):
        eligible = [p for p in finite if p.nonzero_frac <= fraction]
        if eligible:
            best = max(eligible, key=lambda p: (p.val_accuracy, -p.nonzero_frac, -p.threshold))
            if best not in found:
                found.append(best)
    return found


def _spread_over_front(points: Iterable[ProxyPoint], k: int, anchors: Sequence[ProxyPoint] = ()) -> list[ProxyPoint]:
    """Up to ``k`` points as ``select_thresholds`` documents: an ε-net of the front in log nonzero
    fraction, whose first picks after the most accurate point are ``anchors`` (front points)."""

    def log_nonzero(p: ProxyPoint) -> float:
        return math.log(max(p.nonzero_frac, 1e-12)) if math.isfinite(p.nonzero_frac) else math.inf

    chosen: list[ProxyPoint] = []
    pending = list(anchors)
    for layer in pareto_layers(points):
        candidates = sorted(layer, key=lambda p: (-_finite(p.val_accuracy), p.threshold))
        while candidates and len(chosen) < k:
            if not chosen:
                pick = candidates[0]  # the most accurate point (ties: the smaller threshold)
            elif pending:
                pick = pending.pop(0)
                if pick not in candidates:  # already chosen as the most accurate
                    continue
            else:

                def distance(p: ProxyPoint) -> float:
                    return min(abs(log_nonzero(p) - log_nonzero(c)) for c in chosen)

                pick = max(candidates, key=lambda p: (distance(p), _finite(p.val_accuracy), -p.threshold))
            chosen.append(pick)
            candidates.remove(pick)
    return chosen


def more_thresholds(
    points: Sequence[ProxyPoint],
    own: float,
    count: int,
    caps: Mapping[str, float] | None = None,
    floor: float | None = None,
    skip: int = 0,
    under: Sequence[float] = (),
) -> list[float]:
    """``count`` thresholds for a run whose own (asked) threshold is ``own``: ``count + 1`` picks of the
    proxy, less the one that adds least beside ``own``; ascending.

    ``skip``: how many of the proxy's ranked picks (``ranked_thresholds``) to pass over first.
    Runs with equal shared settings train the same model, so their proxies rank the same points:
    the n-th such run passes over the picks of the n before it (``skip`` = n × its picks per run)
    and branches where none of them did.

    The pick that gives way, in this order: one certain to keep ``own``'s mask (``own`` itself, or
    a pick that grid points of one nonzero fraction bracket together with ``own``), which would
    repeat the run's own result; else the pick farthest beyond the caps, which the ε-net only took
    for want of points within; else, when ``own`` surely lies beyond the caps, the last-ranked
    pick (``own``'s result adds nothing within them, so the pick nearest it is no repeat); else
    the pick nearest ``own`` (log distance), which would nearly repeat it — but not the most
    accurate pick under a fraction of ``under`` (``select_thresholds``) that ``own`` does not surely
    keep within.  A pick with ``own``'s mask gives way even when the proxy had no more to offer.
    """
    caps = caps or {}
    picks = ranked_thresholds(points, skip + count + 1, caps=caps, floor=floor, under=under)[skip:]
    at: dict[float, ProxyPoint] = {}
    for point in points:
        at.setdefault(point.threshold, point)  # the point a pick stands for, as ``ranked_thresholds`` took it
    excess = {t: _cap_excess(at[t], caps) for t in picks}
    repeats = [t for t in picks if _same_mask(points, own, t)]
    if repeats:
        picks.remove(repeats[0])
    elif len(picks) > count:
        if any(excess[t] > 0.0 for t in picks):
            picks.remove(max(picks, key=lambda t: (excess[t], t)))
        elif _surely_beyond(points, own, caps):
            picks.pop()  # the run's own result adds nothing within the caps: the last-ranked pick gives way
        else:
            # the most accurate pick under each wanted fraction that ``own`` does not surely keep within
            # (no grid point at or below ``own``, whose mask contains ``own``'s, keeps at most it) stays
            unmet = [f for f in under if not any(p.threshold <= own and p.nonzero_frac <= f for p in points)]
            served = {p.threshold for p in _most_accurate_under([at[t] for t in picks], unmet)}
            removable = [t for t in picks if t not in served] or picks
            picks.remove(min(removable, key=lambda t: _log_distance(t, own)))
    return sorted(picks[:count])


def _surely_beyond(points: Sequence[ProxyPoint], own: float, caps: Mapping[str, float]) -> bool:
    """Whether threshold ``own`` keeps more than ``caps`` allow: a grid point at or past it (a mask
    it contains, since masks of one mode on one model are nested) already does."""
    sparser = [p for p in points if p.threshold >= own]
    return bool(caps and sparser) and _cap_excess(min(sparser, key=lambda p: p.threshold), caps) > 0.0


def _log_distance(a: float, b: float) -> float:
    return abs(math.log(a / b)) if a > 0 and b > 0 else abs(a - b)


def _same_mask(points: Sequence[ProxyPoint], a: float, b: float) -> bool:
    """Whether thresholds ``a`` and ``b`` surely keep the same weights: grid points at or outside both
    keep one nonzero fraction, and masks of one mode on one model are nested."""
    below = [p for p in points if p.threshold <= min(a, b)]
    above = [p for p in points if p.threshold >= max(a, b)]
    if not below or not above:
        return False
    inner = max(below, key=lambda p: p.threshold)
    outer = min(above, key=lambda p: p.threshold)
    return inner.nonzero_frac == outer.nonzero_frac


def _finite(value: float) -> float:
    return value if math.isfinite(value) else -math.inf


@dataclass(frozen=True)
class ProxyChoice:
    """A ``branches`` chooser: at the branch point, K thresholds from ``grid`` by the prune-now proxy.

    ``settings`` (other ``BRANCH_SETTINGS``, e.g. ``finetune_epochs``) go to every branch;
    ``track`` makes the shared epochs record the projected sparsity of every grid threshold, so
    the chosen branches' histories are exact.  ``points`` of the last call are kept for the record.
    """

    k: int
    grid: tuple[float, ...]
    threshold_mode: str = "abs"
    settings: Mapping[str, Any] = field(default_factory=dict)
    caps: Mapping[str, float] = field(default_factory=dict)  # see ``select_thresholds``
    floor: float | None = None  # see ``select_thresholds``
    under: tuple[float, ...] = ()  # see ``select_thresholds``
    points: list[ProxyPoint] = field(default_factory=list, compare=False)

    @property
    def track(self) -> list[TrackKey]:
        return [(t, self.threshold_mode) for t in self.grid]

    def __call__(self, run: TrialRun) -> list[dict[str, Any]]:
        points = prune_now_proxy(run, self.grid, self.threshold_mode)
        self.points[:] = points
        chosen = select_thresholds(points, self.k, caps=self.caps, floor=self.floor, under=self.under)
        return [{**self.settings, "threshold": t, "threshold_mode": self.threshold_mode} for t in chosen]
