"""The DeepHoyer trial pipeline: (pretrain) → regularized training → prune → fine-tune → metrics.

``run_trial(config, report)`` is the one entry point.  It knows nothing of Ray: ``report`` is a
plain callback called once per epoch with the metrics so far and a ``TrialState`` whose
``save(path)`` writes a checkpoint that ``run_trial(..., resume_from=path)`` continues from
exactly (each epoch's shuffling is seeded from (seed, phase, epoch), so nothing else is needed).

The result's ``history`` holds every epoch's report, also those before a resume.
Every report carries ``val_accuracy``, ``nonzero_frac``, ``flops_frac`` and ``loss``.  Before the
prune, ``nonzero_frac`` / ``flops_frac`` are *projected*: what pruning at the trial's threshold
would leave right now.  Test accuracy is computed once, at the end, and never used to choose.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainables.config import ConfigError, TrialConfig
from trainables.data import DatasetSplits, iterate_batches, load_dataset, random_crop_flip, random_shift
from trainables.models import build_model
from trainables.pruning import Masks, apply_masks, compute_masks, output_positions, sparsity_report
from trainables.regularizers import model_regularization

PHASES: tuple[str, ...] = ("pretrain", "train", "finetune")
FINAL_METRICS: tuple[str, ...] = ("val_accuracy", "test_accuracy", "nonzero_frac", "flops_frac", "loss")


class TrialState:
    """A trial between two epochs: ``save(path)`` snapshots what resuming needs."""

    def __init__(self, run: _TrialRun, phase: str, phase_epoch: int, epoch: int) -> None:
        self._run = run
        self.phase = phase
        self.phase_epoch = phase_epoch
        self.epoch = epoch

    def save(self, path: str | os.PathLike) -> None:
        """Write the checkpoint atomically (temporary file, then rename)."""
        run = self._run
        payload = {
            "format": 1,
            "phase": self.phase,
            "phase_epoch": self.phase_epoch,
            "epoch": self.epoch,
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict() if run.optimizer is not None else None,
            "masks": run.masks,
            "history": run.history,
            "marks": run.marks,
            "elapsed_s": run.elapsed(),
        }
        _atomic_save(payload, Path(path))


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


ReportFn = Callable[[dict[str, Any], TrialState], None]
Augment = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; otherwise the named device, checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available")
    return device


def _epoch_seed(seed: int, phase: str, epoch: int) -> int:
    return (seed * 1_000_003 + PHASES.index(phase) * 10_007 + epoch) % (2**63)


def _cosine_lr(base: float, epoch: int, epochs: int, schedule: str) -> float:
    if schedule == "constant" or epochs <= 1:
        return base
    return base * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def _make_optimizer(config: TrialConfig, params, lr: float) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=config.weight_decay)


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


AUGMENTERS: dict[str, Augment | None] = {"none": None, "crop_flip": random_crop_flip, "shift": random_shift}


def augmenter(config: TrialConfig, data: DatasetSplits) -> Augment | None:
    """The batch augmentation of a trial: as configured, else crop + flip for colour images of 32×32 and up (CIFAR)."""
    choice = config.augment
    if choice is None:
        channels, height, _ = data.input_shape
        choice = channels == 3 and height >= 32
    if isinstance(choice, bool):
        choice = "crop_flip" if choice else "none"
    return AUGMENTERS[choice]


class _TrialRun:
    """State of one running trial; the phases are methods so resuming can enter any of them."""

    def __init__(self, config: TrialConfig, data: DatasetSplits, model: nn.Module, report: ReportFn | None) -> None:
        self.config = config
        self.data = data
        self.model = model
        self.report = report
        self.positions = output_positions(model, data.input_shape)
        self.optimizer: torch.optim.Optimizer | None = None
        self.masks: Masks | None = None
        self.history: list[dict[str, Any]] = []
        self.marks: dict[str, float] = {}
        self.started = time.perf_counter()
        self.elapsed_before = 0.0
        self.augment = augmenter(config, data)

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """(accuracy, mean cross-entropy) over a whole split, in eval mode."""
        self.model.eval()
        correct = torch.zeros((), device=x.device)
        loss_sum = torch.zeros((), device=x.device)
        for xb, yb in iterate_batches(x, y, self.config.eval_batch_size, shuffle=False):
            logits = self.model(xb)
            loss_sum += F.cross_entropy(logits, yb, reduction="sum")
            correct += (logits.argmax(dim=1) == yb).sum()
        n = max(len(y), 1)
        return float(correct) / n, float(loss_sum) / n

    def train_epoch(self, phase: str, epoch: int, lr: float) -> dict[str, float]:
        """One pass over the training split; returns the epoch's mean losses."""
        config = self.config
        regularize = phase == "train" and config.reg != "none" and config.strength > 0
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        generator = torch.Generator().manual_seed(_epoch_seed(config.seed, phase, epoch))
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

    def sparsity(self, projected: bool):
        masks = (
            compute_masks(
                self.model, self.config.threshold, self.config.threshold_mode, include_bias=self.config.include_bias
            )
            if projected
            else None
        )
        return sparsity_report(self.model, self.positions, masks, include_bias=self.config.include_bias)

    def run_phase(self, phase: str, epochs: int, start: int, epoch_offset: int, base_lr: float) -> bool:
        """Epochs ``start..epochs-1`` of ``phase``; False when the loss diverged."""
        for phase_epoch in range(start, epochs):
            lr = _cosine_lr(base_lr, phase_epoch, epochs, self.config.lr_schedule)
            losses = self.train_epoch(phase, phase_epoch, lr)
            if not math.isfinite(losses["loss"]):
                self.marks["diverged_epoch"] = epoch_offset + phase_epoch + 1
                return False
            val_accuracy, val_loss = self.evaluate(self.data.val_x, self.data.val_y)
            sparsity = self.sparsity(projected=phase != "finetune")
            metrics = {
                "phase": phase,
                "epoch": epoch_offset + phase_epoch + 1,
                "phase_epoch": phase_epoch + 1,
                "lr": lr,
                **losses,
                "val_accuracy": val_accuracy,
                "val_loss": val_loss,
                "nonzero_frac": sparsity.nonzero_frac,
                "flops_frac": sparsity.flops_frac,
                "time_s": self.elapsed(),
            }
            self.history.append(metrics)
            if self.report is not None:
                self.report(dict(metrics), TrialState(self, phase, phase_epoch + 1, epoch_offset + phase_epoch + 1))
        return True

    def start_phase(self, lr: float) -> None:
        self.optimizer = _make_optimizer(self.config, self.model.parameters(), lr)

    def prune(self) -> None:
        self.marks["val_accuracy_before_prune"] = self.evaluate(self.data.val_x, self.data.val_y)[0]
        self.masks = compute_masks(
            self.model, self.config.threshold, self.config.threshold_mode, include_bias=self.config.include_bias
        )
        apply_masks(self.model, self.masks)
        self.marks["val_accuracy_after_prune"] = self.evaluate(self.data.val_x, self.data.val_y)[0]

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Load a checkpoint's weights, masks, optimizer state and history (masks first)."""
        self.masks = checkpoint["masks"]
        if self.masks is not None:
            apply_masks(self.model, {k: v.to(self.data.train_x.device) for k, v in self.masks.items()})
        self.model.load_state_dict(checkpoint["model"])
        self.history = list(checkpoint["history"])
        self.marks = dict(checkpoint["marks"])
        self.elapsed_before = float(checkpoint["elapsed_s"])

    def result(self, status: str, message: str) -> dict[str, Any]:
        """The final metrics; NaN where a diverged run has nothing meaningful to say."""
        ok = status == "ok"
        sparsity = self.sparsity(projected=self.masks is None)
        val_accuracy, val_loss = self.evaluate(self.data.val_x, self.data.val_y) if ok else (math.nan, math.nan)
        test_accuracy = self.evaluate(self.data.test_x, self.data.test_y)[0] if ok else math.nan
        last = self.history[-1] if self.history else {}
        return {
            "status": status,
            "message": message,
            "val_accuracy": val_accuracy,
            "test_accuracy": test_accuracy,
            "nonzero_frac": sparsity.nonzero_frac if ok else math.nan,
            "flops_frac": sparsity.flops_frac if ok else math.nan,
            "loss": last.get("loss", math.nan) if ok else math.inf,
            "val_loss": val_loss,
            "nonzero": sparsity.nonzero,
            "num_weights": sparsity.numel,
            "epochs": len(self.history),
            "wall_time_s": self.elapsed(),
            **self.marks,
            "layers": [layer.as_dict() for layer in sparsity.layers],
            "history": [dict(epoch) for epoch in self.history],
        }


def _save_pretrain_cache(run: _TrialRun) -> None:
    path = _pretrain_cache_path(run.config)
    if path is not None:
        _atomic_save({"model": run.model.state_dict()}, path)


def _pretrain_cache_path(config: TrialConfig) -> Path | None:
    if config.pretrain_cache_dir and config.pretrain_epochs:
        return Path(config.pretrain_cache_dir) / f"dense-{pretrain_cache_key(config)}.pt"
    return None


@contextlib.contextmanager
def _pretrain_lock(config: TrialConfig) -> Iterator[None]:
    """Hold an exclusive file lock on the pretrain cache entry, so concurrent trials pretrain once."""
    path = _pretrain_cache_path(config)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _load_dense_weights(run: _TrialRun) -> bool:
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


def run_trial(
    config: TrialConfig | dict[str, Any],
    report: ReportFn | None = None,
    resume_from: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Run one DeepHoyer trial and return its final metrics (see ``FINAL_METRICS`` and ``layers``).

    A run whose loss turns NaN/inf stops at that epoch and returns ``status: "diverged"``
    instead of raising.  Bad settings raise ``ConfigError``; bad data raises ``DataError``.
    """
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
    run = _TrialRun(config, data, model, report)
    plan = {
        "pretrain": (config.pretrain_epochs, config.lr),
        "train": (config.epochs, config.lr),
        "finetune": (config.finetune_epochs, config.finetune_lr or config.lr),
    }
    offsets = {"pretrain": 0, "train": config.pretrain_epochs, "finetune": config.pretrain_epochs + config.epochs}

    def phase(name: str, start: int = 0, optimizer_state: dict | None = None) -> bool:
        epochs, lr = plan[name]
        if name == "finetune" and run.masks is None:
            run.prune()
        run.start_phase(lr)
        if optimizer_state is not None:
            run.optimizer.load_state_dict(optimizer_state)
        return run.run_phase(name, epochs, start, offsets[name], lr)

    if resume_from:
        checkpoint = load_checkpoint(resume_from)
        run.restore(checkpoint)
        run.marks["resumed_from_epoch"] = int(checkpoint["epoch"])
        current, start, optimizer_state = checkpoint["phase"], checkpoint["phase_epoch"], checkpoint["optimizer"]
    else:
        with _pretrain_lock(config):
            if not _load_dense_weights(run) and config.pretrain_epochs:
                if not phase("pretrain"):
                    return run.result(
                        "diverged", f"loss became non-finite in pretrain epoch {run.marks['diverged_epoch']}"
                    )
                _save_pretrain_cache(run)
        current, start, optimizer_state = "train", 0, None
    for name in PHASES[PHASES.index(current) :]:
        if not phase(name, start if name == current else 0, optimizer_state if name == current else None):
            return run.result("diverged", f"loss became non-finite in {name} epoch {run.marks['diverged_epoch']}")
        if name == "pretrain":
            _save_pretrain_cache(run)
    if run.masks is None:
        run.prune()
    return run.result("ok", "")
