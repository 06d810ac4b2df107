"""The DeepHoyer trial pipeline as explicit phases: dense → regularize → prune → finetune.

``run_trial(config, report, resume_from)`` is the one entry point and returns a
``trainables.contract.TrialResult``.  It knows nothing of Ray: ``report`` is a plain callback
called once per epoch with that epoch's metrics (``EPOCH_METRICS`` plus ``phase``, ``epoch``,
``phase_epoch`` and ``time_s``) and a ``TrialState`` whose ``save(path)`` writes a checkpoint
that ``run_trial(..., resume_from=path)`` continues from exactly (each epoch's shuffling is
seeded from (seed, phase, epoch), so nothing else is needed).

The phases are functions over one ``TrialRun`` (the run state):

- ``dense(run)``: the dense start — weights from ``init_checkpoint``, from the pretrain cache,
  or ``pretrain_epochs`` of training without the regularizer (then cached);
- ``regularize(run)``: ``epochs`` of training with ``strength`` × ``reg``.  Its end is the
  *branch point*: the last state that does not depend on ``BRANCH_FIELDS`` (threshold, threshold
  mode, fine-tuning), so prune + finetune may run several times from a checkpoint taken there;
- ``prune(run)``: the masks at ``threshold`` (``threshold_mode``), held from then on;
- ``finetune(run)``: ``finetune_epochs`` with the masks held and no regularizer.

``dense``, ``regularize`` and ``finetune`` return False when the loss diverged.  Where a run
stands is its ``cursor`` (phase, epochs done in it); the global epoch number of a phase epoch
is computed in one place (``Phase.epoch``: the phase's offset + its epoch), and so are the
checkpoint (``TrialRun.checkpoint`` / ``TrialRun.restore``) and the masks (``TrialRun.set_masks``).

The result's ``history`` holds every epoch's report, also those before a resume.  Before the
prune, ``nonzero_frac`` / ``flops_frac`` are *projected*: what pruning at the trial's threshold
would leave right now (``measure_epoch``).  Each regularized (``train``) epoch also reports the
*prune-now proxy* (``contract.PROXY_METRICS``): ``proxy_val_accuracy`` of a copy pruned at the
trial's own threshold (one extra validation pass, no RNG drawn, the run untouched), with its
``proxy_nonzero_frac`` / ``proxy_flops_frac`` — what the trial would be if pruned now, before
fine-tuning; ``val_accuracy`` stays the unpruned model's.  Test accuracy is computed once, at
the end, and never used to choose.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import math
import os
import platform
import resource
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainables.config import BRANCH_SETTINGS, ConfigError, TrialConfig
from trainables.contract import (
    FLOPS_FRAC,
    NONZERO_FRAC,
    PROXY_FLOPS_FRAC,
    PROXY_NONZERO_FRAC,
    PROXY_VAL_ACCURACY,
    VAL_ACCURACY,
    Status,
    TrialResult,
)
from trainables.data import DatasetSplits, iterate_batches, load_dataset, random_crop_flip, random_shift
from trainables.models import build_model
from trainables.pruning import (
    PROBE_SAMPLES,
    Masks,
    SparsityReport,
    apply_masks,
    compute_masks,
    cut_off,
    kept_counts,
    largest_magnitude_masks,
    make_pruning_permanent,
    output_positions,
    ramp_counts,
    sparsity_report,
)
from trainables.regularizers import model_regularization, prunable_weights

PRETRAIN = "pretrain"
TRAIN = "train"  # the regularized phase (the stored name, in checkpoints and reports)
FINETUNE = "finetune"
PHASES: tuple[str, ...] = (PRETRAIN, TRAIN, FINETUNE)
"""The training phases in order; pruning happens between ``train`` and ``finetune``."""

BRANCH_FIELDS: tuple[str, ...] = BRANCH_SETTINGS
"""The settings only prune + finetune depend on (``trainables.config.BRANCH_SETTINGS``, the one definition)."""

CHECKPOINT_FORMAT = 1

ReportFn = Callable[[dict[str, Any], "TrialState"], None]
Augment = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]


# --- the plan: phases, epoch numbering, learning rates ---------------------------------------


@dataclass(frozen=True)
class Phase:
    """One training phase of a trial: its epochs, base learning rate and global epoch offset."""

    name: str
    epochs: int
    lr: float
    offset: int

    def epoch(self, phase_epoch: int) -> int:
        """The global epoch number of the phase's ``phase_epoch``-th epoch (counted from 1)."""
        return self.offset + phase_epoch

    def lr_at(self, phase_epoch: int, schedule: str) -> float:
        """The learning rate of the 0-based ``phase_epoch``: constant, or cosine over the phase."""
        if schedule == "constant" or self.epochs <= 1:
            return self.lr
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * phase_epoch / self.epochs))


def plan_phases(config: TrialConfig) -> dict[str, Phase]:
    """The phases of ``config``, in order; the one place epoch offsets are computed."""
    lengths = {PRETRAIN: config.pretrain_epochs, TRAIN: config.epochs, FINETUNE: config.finetune_epochs}
    rates = {PRETRAIN: config.lr, TRAIN: config.lr, FINETUNE: config.finetune_lr or config.lr}
    plan, offset = {}, 0
    for name in PHASES:
        plan[name] = Phase(name, lengths[name], rates[name], offset)
        offset += lengths[name]
    return plan


@dataclass(frozen=True)
class Cursor:
    """Where a run stands: ``phase_epoch`` epochs of ``phase`` done (phases before it all done)."""

    phase: str
    phase_epoch: int = 0

    def before(self, phase: str) -> bool:
        return PHASES.index(self.phase) < PHASES.index(phase)

    def after(self, phase: str) -> bool:
        return PHASES.index(self.phase) > PHASES.index(phase)


def _epoch_seed(seed: int, phase: str, epoch: int) -> int:
    return (seed * 1_000_003 + PHASES.index(phase) * 10_007 + epoch) % (2**63)


def _make_optimizer(config: TrialConfig, params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=config.weight_decay)


# --- devices, augmentation -------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; otherwise the named device, checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available")
    return device


AUGMENTERS: dict[str, Augment | None] = {"none": None, "crop_flip": random_crop_flip, "shift": random_shift}


def augmenter(config: TrialConfig, data: DatasetSplits) -> Augment | None:
    """The batch augmentation of a trial: as configured, else crop + flip for colour images of 32×32 and up."""
    choice = config.augment
    if choice is None:
        channels, height, _ = data.input_shape
        choice = channels == 3 and height >= 32
    if isinstance(choice, bool):
        choice = "crop_flip" if choice else "none"
    return AUGMENTERS[choice]


# --- checkpoints -----------------------------------------------------------------------------


class TrialState:
    """A trial between two epochs: ``save(path)`` snapshots what resuming needs."""

    def __init__(self, run: TrialRun, phase: str, phase_epoch: int, epoch: int) -> None:
        self._run = run
        self.phase = phase
        self.phase_epoch = phase_epoch
        self.epoch = epoch

    def save(self, path: str | os.PathLike) -> None:
        """Write the checkpoint atomically (temporary file, then rename)."""
        _atomic_save(self._run.checkpoint(self), Path(path))


def _atomic_save(payload: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by ``TrialState.save`` (tensors and plain data only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as error:
        raise ConfigError(f"cannot read checkpoint {path}: {str(error).splitlines()[0]}") from None


# --- the run state ---------------------------------------------------------------------------


class TrialRun:
    """The state of one running trial, which the phase functions advance.

    ``cursor`` says how far training got; ``marks`` holds the scalars the result reports beside
    the final metrics (``val_accuracy_before_prune``, ``val_accuracy_after_prune``,
    ``diverged_epoch``, ``resumed_from_epoch``).  ``optimizer_state`` is a restored optimizer
    state waiting for its phase to begin.
    """

    def __init__(self, config: TrialConfig, data: DatasetSplits, model: nn.Module, report: ReportFn | None) -> None:
        self.config = config
        self.data = data
        self.model = model
        self.report = report
        self.phases = plan_phases(config)
        self.positions = output_positions(model, data.input_shape)
        self.augment = augmenter(config, data)
        self.cursor = Cursor(PRETRAIN)
        self.optimizer: torch.optim.Optimizer | None = None
        self.optimizer_state: dict[str, Any] | None = None
        self.masks: Masks | None = None
        self.ramp_final: dict[str, int] | None = None  # a gradual prune's end: the threshold's count per layer
        self.history: list[dict[str, Any]] = []
        self.marks: dict[str, Any] = {}
        self.message = ""
        self.started = time.perf_counter()
        self.elapsed_before = 0.0

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    @property
    def resumed(self) -> bool:
        return "resumed_from_epoch" in self.marks

    @property
    def at_branch_point(self) -> bool:
        """Regularized training done, not yet pruned: where threshold branches would start."""
        return self.cursor == Cursor(TRAIN, self.phases[TRAIN].epochs) and self.masks is None

    def state(self) -> TrialState:
        """The run where its cursor stands, to ``save`` (e.g. at the branch point)."""
        phase = self.phases[self.cursor.phase]
        return TrialState(self, phase.name, self.cursor.phase_epoch, phase.epoch(self.cursor.phase_epoch))

    # checkpoints and masks: the one place each is handled

    def checkpoint(self, state: TrialState) -> dict[str, Any]:
        """The checkpoint payload at ``state`` (format 1: weights, optimizer, masks, history, marks)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "phase": state.phase,
            "phase_epoch": state.phase_epoch,
            "epoch": state.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "masks": self.masks,
            "ramp_final": self.ramp_final,
            "history": self.history,
            "marks": self.marks,
            "elapsed_s": self.elapsed(),
        }

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Continue from a checkpoint: masks first (they reshape the state dict), weights, the rest."""
        if checkpoint.get("format") != CHECKPOINT_FORMAT:
            kind = checkpoint.get("kind")
            hint = "; resume it with trainables.branching.run_branches" if kind else ""
            raise ConfigError(f"not a trial checkpoint (format {checkpoint.get('format')!r}, kind {kind!r}){hint}")
        if checkpoint["masks"] is not None:
            self.set_masks(checkpoint["masks"])
        self.model.load_state_dict(checkpoint["model"])
        self.ramp_final = checkpoint.get("ramp_final")
        self.optimizer_state = checkpoint["optimizer"]
        self.history = list(checkpoint["history"])
        self.marks = dict(checkpoint["marks"])
        self.marks["resumed_from_epoch"] = int(checkpoint["epoch"])
        self.elapsed_before = float(checkpoint["elapsed_s"])
        self.cursor = Cursor(checkpoint["phase"], int(checkpoint["phase_epoch"]))

    def set_masks(self, masks: Masks) -> None:
        """Hold ``masks`` from now on (pruned weights stay zero whatever the optimizer does)."""
        device = self.data.train_x.device
        self.masks = {name: mask.to(device) for name, mask in masks.items()}
        apply_masks(self.model, self.masks)

    def projected_masks(self) -> Masks:
        """The masks pruning at the trial's threshold would give right now."""
        config = self.config
        return compute_masks(self.model, config.threshold, config.threshold_mode, include_bias=config.include_bias)

    def ramp_masks(self, step: int) -> Masks:
        """The masks of the gradual prune's step ``step`` (fine-tune epoch ``step``, from 0): each layer's
        largest-magnitude weights, as many as ``ramp_counts`` says at progress (step + 1) / R."""
        assert self.ramp_final is not None
        include_bias = self.config.include_bias
        dense = {
            f"{m}.{n}": getattr(module, n).numel()
            for m, module, n in prunable_weights(self.model, include_bias=include_bias)
        }
        counts = ramp_counts(dense, self.ramp_final, (step + 1) / self.config.prune_ramp_epochs)
        return largest_magnitude_masks(self.model, counts, include_bias=include_bias)

    def sparsity(self) -> SparsityReport:
        """The sparsity of the held masks, or, before the prune, the projected one."""
        masks = self.projected_masks() if self.masks is None else None
        return sparsity_report(self.model, self.positions, masks, include_bias=self.config.include_bias)

    # training and evaluation

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, model: nn.Module | None = None) -> tuple[float, float]:
        """(accuracy, mean cross-entropy) over a whole split, in eval mode.

        ``model`` evaluates another model (e.g. a pruned copy, for the prune-now proxy) the same way.
        """
        model = self.model if model is None else model
        model.eval()
        correct = torch.zeros((), device=x.device)
        loss_sum = torch.zeros((), device=x.device)
        for xb, yb in iterate_batches(x, y, self.config.eval_batch_size, shuffle=False):
            logits = model(xb)
            loss_sum += F.cross_entropy(logits, yb, reduction="sum")
            correct += (logits.argmax(dim=1) == yb).sum()
        n = max(len(y), 1)
        return float(correct) / n, float(loss_sum) / n

    def validate(self) -> tuple[float, float]:
        return self.evaluate(self.data.val_x, self.data.val_y)

    def _pruned_copies(self, masks: Iterable[Masks]) -> Iterator[nn.Module]:
        """One copy of the (unpruned) model, its prunable weights × each of ``masks`` in turn; the run is untouched."""
        if self.masks is not None:
            raise ValueError("the prune-now proxy needs an unpruned run (before the prune)")
        model = copy.deepcopy(self.model)
        weights = prunable_weights(model, include_bias=self.config.include_bias)
        tensors = {f"{m}.{n}": getattr(module, n) for m, module, n in weights}
        originals = {key: tensor.detach().clone() for key, tensor in tensors.items()}
        for mask in masks:
            for key, tensor in tensors.items():
                tensor.copy_(originals[key] * mask[key])
            yield model

    @torch.no_grad()
    def pruned_accuracies(self, masks: Iterable[Masks]) -> list[float]:
        """Validation accuracy of a copy of the (unpruned) model pruned by each of ``masks``; one pass each.

        The run is left as it is (weights, mode, RNG): the core of the prune-now proxy, shared by
        ``measure_epoch`` and ``trainables.branching.prune_now_proxy``.
        """
        return [self.evaluate(self.data.val_x, self.data.val_y, model=model)[0] for model in self._pruned_copies(masks)]

    @torch.no_grad()
    def pruned_outcomes(self, masks: Iterable[Masks]) -> list[tuple[float, bool]]:
        """``pruned_accuracies`` and, in the same pass, whether each mask cuts the input off from the
        output (``pruning.cut_off`` on a few validation inputs): what ``prune_now_proxy`` needs."""
        probe = self.data.val_x[:PROBE_SAMPLES]
        outcomes = []
        for model in self._pruned_copies(masks):
            accuracy = self.evaluate(self.data.val_x, self.data.val_y, model=model)[0]  # leaves it in eval mode
            outcomes.append((accuracy, bool(cut_off(model(probe)))))
        return outcomes

    def begin_phase(self, phase: Phase) -> int:
        """A fresh optimizer for ``phase`` (with the restored state when resuming inside it); its first epoch."""
        self.optimizer = _make_optimizer(self.config, self.model.parameters(), phase.lr)
        if self.cursor.phase != phase.name:
            self.cursor = Cursor(phase.name)
        elif self.optimizer_state is not None:
            self.optimizer.load_state_dict(self.optimizer_state)
        self.optimizer_state = None
        return self.cursor.phase_epoch

    def train_epoch(self, phase: str, phase_epoch: int, lr: float) -> dict[str, float]:
        """One pass over the training split; returns the epoch's mean losses."""
        config = self.config
        regularize = phase == TRAIN and config.reg != "none" and config.strength > 0
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        generator = torch.Generator().manual_seed(_epoch_seed(config.seed, phase, phase_epoch))
        self.model.train()
        device = self.data.train_x.device
        task_sum = torch.zeros((), device=device)
        reg_sum = torch.zeros((), device=device)
        batches = 0
        for xb, yb in iterate_batches(
            self.data.train_x, self.data.train_y, config.batch_size, generator=generator, augment=self.augment
        ):
            task = F.cross_entropy(self.model(xb), yb)
            loss = task
            if regularize:
                reg = model_regularization(self.model, config.reg, include_bias=config.include_bias)
                loss = task + config.strength * reg
                reg_sum += reg.detach()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            task_sum += task.detach()
            batches += 1
        task_mean = float(task_sum) / max(batches, 1)
        reg_mean = float(reg_sum) / max(batches, 1)
        return {
            "task_loss": task_mean,
            "reg_loss": reg_mean,
            "loss": task_mean + config.strength * reg_mean * regularize,
        }

    # the result

    def result(self, status: Status) -> TrialResult:
        """The final record; NaN where a diverged run has nothing meaningful to say."""
        ok = status is Status.OK
        val_accuracy, val_loss = self.validate() if ok else (math.nan, math.nan)
        test_accuracy = self.evaluate(self.data.test_x, self.data.test_y)[0] if ok else math.nan
        return build_result(
            status,
            self.message,
            (val_accuracy, val_loss, test_accuracy),
            self.sparsity(),
            self.history,
            self.marks,
            self.elapsed(),
            self.resources(),
        )

    def resources(self) -> dict[str, Any]:
        return resource_usage(self.data, self.elapsed(), len(self.history))


def build_result(
    status: Status,
    message: str,
    accuracies: tuple[float, float, float],
    sparsity: SparsityReport,
    history: list[dict[str, Any]],
    marks: dict[str, Any],
    elapsed_s: float,
    resources: dict[str, Any],
) -> TrialResult:
    """A trial's final ``TrialResult`` from what it measured: (val accuracy, val loss, test accuracy),
    the sparsity of its final model, its epoch history and marks (one construction for trials and cohorts).

    Anything but ``ok`` reports NaN metrics (and an infinite loss).
    """
    ok = status is Status.OK
    val_accuracy, val_loss, test_accuracy = accuracies
    last = history[-1] if history else {}
    known = set(TrialResult.__dataclass_fields__)
    return TrialResult(
        status=status,
        message=message,
        val_accuracy=val_accuracy if ok else math.nan,
        test_accuracy=test_accuracy if ok else math.nan,
        nonzero_frac=sparsity.nonzero_frac if ok else math.nan,
        flops_frac=sparsity.flops_frac if ok else math.nan,
        loss=last.get("loss", math.nan) if ok else math.inf,
        val_loss=val_loss if ok else math.nan,
        nonzero=sparsity.nonzero,
        num_weights=sparsity.numel,
        epochs=len(history),
        wall_time_s=elapsed_s,
        **{k: v for k, v in marks.items() if k in known},
        layers=[layer.as_dict() for layer in sparsity.layers],
        history=[dict(epoch) for epoch in history],
        extra={**{k: v for k, v in marks.items() if k not in known}, **resources},
    )


def resource_usage(data: DatasetSplits, elapsed_s: float, epochs: int) -> dict[str, Any]:
    """What a run used: the device it actually ran on (``auto`` resolved), its name, peak memory
    (the GPU's allocator peak on CUDA, the process's peak resident size on CPU), time per epoch
    and the split sizes."""
    device = data.train_x.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "device": str(device),
        "device_name": name,
        "peak_memory_mb": peak_mb,
        "epoch_time_s": elapsed_s / max(epochs, 1),
        "train_size": len(data.train_y),
        "val_size": len(data.val_y),
        "test_size": len(data.test_y),
    }


def start_run(
    config: TrialConfig | dict[str, Any], report: ReportFn | None = None, resume_from: str | os.PathLike | None = None
) -> TrialRun:
    """Validate ``config``, load the data, build the model (seeded) and, if given, restore a checkpoint."""
    config = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config)
    config.validate()
    device = resolve_device(config.device)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    data = load_dataset(
        config.dataset, config.data_dir, val_fraction=config.val_fraction, split_seed=config.split_seed, device=device
    )
    torch.manual_seed(config.seed)
    try:
        model = build_model(config.model, data.input_shape, data.num_classes).to(device)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    run = TrialRun(config, data, model, report)
    if resume_from:
        run.restore(load_checkpoint(resume_from))
    return run


# --- one epoch, one phase --------------------------------------------------------------------


def measure_epoch(run: TrialRun, phase: Phase, phase_epoch: int, lr: float, losses: dict[str, float]) -> dict[str, Any]:
    """The report of an epoch just trained (``phase_epoch`` counted from 1).

    Before the prune the sparsity is projected (what pruning now would leave).  A regularized
    epoch also reports the prune-now proxy (``PROXY_METRICS``): validation accuracy of a copy
    pruned at the trial's own threshold, and that copy's sparsity.
    """
    val_accuracy, val_loss = run.validate()
    proxies: dict[str, float] = {}
    if phase.name == TRAIN and run.masks is None:
        masks = run.projected_masks()
        sparsity = sparsity_report(run.model, run.positions, masks, include_bias=run.config.include_bias)
        (accuracy,) = run.pruned_accuracies([masks])
        proxies = {
            PROXY_VAL_ACCURACY: accuracy,
            PROXY_NONZERO_FRAC: sparsity.nonzero_frac,
            PROXY_FLOPS_FRAC: sparsity.flops_frac,
        }
    else:
        sparsity = run.sparsity()
    return {
        "phase": phase.name,
        "epoch": phase.epoch(phase_epoch),
        "phase_epoch": phase_epoch,
        "lr": lr,
        **losses,
        VAL_ACCURACY: val_accuracy,
        "val_loss": val_loss,
        NONZERO_FRAC: sparsity.nonzero_frac,
        FLOPS_FRAC: sparsity.flops_frac,
        **proxies,
        "time_s": run.elapsed(),
    }


def train_phase(run: TrialRun, name: str) -> bool:
    """The epochs of phase ``name`` still to do (none if the run is past it); False when the loss diverged."""
    if run.cursor.after(name):
        return True
    phase = run.phases[name]
    for index in range(run.begin_phase(phase), phase.epochs):
        if name == FINETUNE:
            ramp_step(run, index)
        lr = phase.lr_at(index, run.config.lr_schedule)
        losses = run.train_epoch(name, index, lr)
        if not math.isfinite(losses["loss"]):
            run.marks["diverged_epoch"] = phase.epoch(index + 1)
            run.message = f"loss became non-finite in {name} epoch {run.marks['diverged_epoch']}"
            return False
        run.cursor = Cursor(name, index + 1)
        metrics = measure_epoch(run, phase, index + 1, lr, losses)
        run.history.append(metrics)
        if run.report is not None:
            run.report(dict(metrics), run.state())
    return True


# --- the phases ------------------------------------------------------------------------------


def dense(run: TrialRun) -> bool:
    """The dense start: ``init_checkpoint``, the pretrain cache, or pretraining (then cached).

    A run resumed inside pretraining finishes it (and fills the cache); one resumed later has
    nothing to do here.  False when the loss diverged.
    """
    if run.cursor.after(PRETRAIN):
        return True
    if run.resumed:
        if not train_phase(run, PRETRAIN):
            return False
        _save_pretrain_cache(run)
        return True
    with _pretrain_lock(run.config):
        if _load_dense_weights(run):
            run.cursor = Cursor(TRAIN)
            return True
        if run.phases[PRETRAIN].epochs:
            if not train_phase(run, PRETRAIN):
                return False
            _save_pretrain_cache(run)
    return True


def regularize(run: TrialRun) -> bool:
    """Regularized training; at its end the run is at the branch point.  False when the loss diverged."""
    return train_phase(run, TRAIN)


def prune(run: TrialRun) -> None:
    """Prune at the trial's threshold, recording validation accuracy before and after (once: a no-op if pruned).

    With a gradual prune (``prune_ramp_epochs`` > 1) this is its first step, and the threshold's
    per-layer counts become the ramp's end; "after" is then after that first step.
    """
    if run.masks is not None:
        return
    run.marks["val_accuracy_before_prune"] = run.validate()[0]
    masks = run.projected_masks()
    if run.config.prune_ramp_epochs > 1:
        run.ramp_final = kept_counts(masks)
        masks = run.ramp_masks(0)
    run.set_masks(masks)
    run.marks["val_accuracy_after_prune"] = run.validate()[0]


def ramp_step(run: TrialRun, index: int) -> None:
    """Before fine-tune epoch ``index``: tighten the masks to the gradual prune's step ``index`` (the
    prune took step 0; nothing past the ramp, or without one)."""
    if run.ramp_final is not None and 0 < index < run.config.prune_ramp_epochs:
        run.set_masks(run.ramp_masks(index))


def finetune(run: TrialRun) -> bool:
    """Fine-tuning with the masks held and no regularizer.  False when the loss diverged."""
    return train_phase(run, FINETUNE)


def finish(run: TrialRun, model_path: str | os.PathLike | None = None) -> TrialResult:
    """Prune + finetune from wherever ``run`` stands after regularizing, then the final result.

    The part a threshold branch repeats: a run restored from a branch-point checkpoint with a
    config that differs only in ``BRANCH_FIELDS`` continues here.  ``model_path``: where the
    final pruned, fine-tuned model of an ok run is saved (``save_model``).
    """
    prune(run)
    if not finetune(run):
        return run.result(Status.DIVERGED)
    result = run.result(Status.OK)
    if model_path is not None:
        save_model(run, model_path)
    return result


MODEL_FORMAT = "hoyersweep-model-1"


def save_model(run: TrialRun, path: str | os.PathLike) -> None:
    """Save the run's model as a trial keeps it: weights (pruned ones exactly zero), masks, and how to rebuild it.

    ``load_model(path)`` rebuilds the module; ``torch.load(path, weights_only=True)`` reads it
    without running code (tensors and plain data only).
    """
    write_model_file(permanent(run.model), run.masks or {}, run.config, run.data, path)


def write_model_file(
    model: nn.Module, masks: Masks, config: TrialConfig, data: DatasetSplits, path: str | os.PathLike
) -> None:
    """Write a plain (mask-free) ``model`` with its ``masks`` in the ``MODEL_FORMAT`` file ``load_model`` reads."""
    payload = {
        "format": MODEL_FORMAT,
        "model": config.model,
        "input_shape": list(data.input_shape),
        "num_classes": int(data.num_classes),
        "state_dict": {k: _own_storage(v) for k, v in model.state_dict().items()},
        "masks": {k: _own_storage(v) for k, v in masks.items()},
        "config": config.to_dict(),
    }
    _atomic_save(payload, Path(path))


def _own_storage(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` on the CPU with a storage of its own: ``torch.save`` writes a view's whole storage, so a
    cohort row's mask (a view into the stack's) would otherwise carry every row's mask into each file."""
    tensor = tensor.detach().cpu()
    return tensor if tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size() else tensor.clone()


def permanent(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its pruning masks folded into plain weights (pruned entries exactly zero)."""
    copy_ = copy.deepcopy(model)
    make_pruning_permanent(copy_)
    return copy_


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """The module ``save_model`` wrote (on CPU, eval mode) and the file's payload."""
    payload = load_checkpoint(path)
    if payload.get("format") != MODEL_FORMAT:
        raise ConfigError(f"{path}: not a hoyersweep model file (save_model writes those)")
    model = build_model(payload["model"], tuple(payload["input_shape"]), payload["num_classes"])
    model.load_state_dict(payload["state_dict"])
    return model.eval(), payload


def run_trial(
    config: TrialConfig | dict[str, Any],
    report: ReportFn | None = None,
    resume_from: str | os.PathLike | None = None,
    model_path: str | os.PathLike | None = None,
) -> TrialResult:
    """Run one DeepHoyer trial (or continue one from a checkpoint) and return its ``TrialResult``.

    A run whose loss turns NaN/inf stops at that epoch and returns ``Status.DIVERGED`` (with
    ``diverged_epoch`` and a message) instead of raising.  Bad settings raise ``ConfigError``;
    bad data raises ``DataError``.
    """
    run = start_run(config, report, resume_from)
    if not (dense(run) and regularize(run)):
        return run.result(Status.DIVERGED)
    return finish(run, model_path)


# --- the pretrain cache ----------------------------------------------------------------------


def pretrain_cache_key(config: TrialConfig) -> str:
    """Hash of every setting that dense pretraining depends on (not λ, threshold or regularizer)."""
    relevant = {
        name: getattr(config, name)
        for name in (
            "dataset",
            "data_dir",
            "model",
            "pretrain_epochs",
            "optimizer",
            "lr",
            "lr_schedule",
            "momentum",
            "weight_decay",
            "batch_size",
            "seed",
            "val_fraction",
            "split_seed",
            "augment",
        )
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _pretrain_cache_path(config: TrialConfig) -> Path | None:
    if config.pretrain_cache_dir and config.pretrain_epochs:
        return Path(config.pretrain_cache_dir) / f"dense-{pretrain_cache_key(config)}.pt"
    return None


def _save_pretrain_cache(run: TrialRun) -> None:
    path = _pretrain_cache_path(run.config)
    if path is not None:
        _atomic_save({"model": run.model.state_dict()}, path)


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on the file ``<path>.lock`` (created with its folder): across processes
    and threads, one holder at a time, so concurrent trials compute a shared file once."""
    lock = Path(path).with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _pretrain_lock(config: TrialConfig) -> Iterator[None]:
    """Hold the lock of the pretrain cache entry, so concurrent trials pretrain once."""
    path = _pretrain_cache_path(config)
    if path is None:
        yield
        return
    with exclusive_lock(path):
        yield


def _load_dense_weights(run: TrialRun) -> bool:
    """Load dense weights from ``init_checkpoint`` or the pretrain cache; True if loaded."""
    config = run.config
    if config.init_checkpoint:
        state = load_checkpoint(config.init_checkpoint)
        run.model.load_state_dict(state.get("model", state))
        return True
    path = _pretrain_cache_path(config)
    if path is not None and path.exists():
        run.model.load_state_dict(load_checkpoint(path)["model"])
        return True
    return False
