"""The plain configuration of one DeepHoyer trial, with one-line errors naming the bad field.

A dataclass rather than a pydantic model so that the trainable core needs torch alone (the
GPU image and bare workers may lack the sweep stack); ``sweeps/`` validates user specs with
pydantic and converts them to this.  Torch-free (``analysis`` reads the fields without torch),
so the choice lists (``REG_NAMES``, ``THRESHOLD_MODES``, ...) are defined here and the torch
modules import them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

REG_NAMES: tuple[str, ...] = ("none", "l1", "hoyer", "hs", "group_lasso", "group_hs")
"""The regularizers (``trainables.regularizers.get_regularizer``); defined here so config needs no torch."""
THRESHOLD_MODES: tuple[str, ...] = ("abs", "std")
"""How ``threshold`` is read (``trainables.pruning.threshold_mask``): absolute, or × the tensor's std."""
DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion_mnist", "cifar10")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")
AUGMENTATIONS: tuple[str, ...] = ("none", "crop_flip", "shift")

BRANCH_SETTINGS: tuple[str, ...] = (
    "threshold",
    "threshold_mode",
    "finetune_epochs",
    "finetune_lr",
    "prune_ramp_epochs",
)
"""The settings only prune + finetune depend on: the one rule for what threshold branches may differ in.

Nothing before the prune reads them (the threshold only decides the masks), so trials that agree
on everything else share their dense + regularized phase exactly (``trainables.branching``).
"""


class ConfigError(ValueError):
    """A trial setting is invalid; the message is one line and names the field."""


@dataclass
class TrialConfig:
    """Everything one trial needs; every field has a sensible default for the digits data.

    Phases: ``pretrain_epochs`` of dense training without the regularizer (or weights from
    ``init_checkpoint``), then ``epochs`` of training with ``strength`` × ``reg``, then pruning
    at ``threshold`` (``threshold_mode``), then ``finetune_epochs`` with the mask held and no
    regularizer.  ``prune_ramp_epochs`` R > 1 prunes gradually instead: the masks tighten at the
    start of each of the first R fine-tune epochs, on a cubic schedule, and from epoch R on hold
    exactly as many weights per layer as the threshold kept at the prune (R ≤ 1: at once, as the
    paper does).  ``pretrain_cache_dir`` shares the dense pretraining between trials that
    agree on everything it depends on.  ``augment``: ``None`` picks by the data (crop + flip
    for colour images of 32×32 and up, else none), ``"shift"`` moves digits by up to 2 pixels,
    ``"crop_flip"`` (or ``True``) and ``"none"`` (or ``False``) force one.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    model: str = "lenet300_100"
    reg: str = "hs"
    strength: float = 2e-4
    threshold: float = 0.02
    threshold_mode: str = "abs"
    pretrain_epochs: int = 0
    init_checkpoint: str | None = None
    pretrain_cache_dir: str | None = None
    epochs: int = 20
    finetune_epochs: int = 5
    optimizer: str = "adam"
    lr: float = 1e-3
    finetune_lr: float | None = None
    prune_ramp_epochs: int = 0
    lr_schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 64
    eval_batch_size: int = 2048
    seed: int = 0
    device: str = "auto"
    num_threads: int | None = None
    val_fraction: float = 0.1
    split_seed: int = 0
    include_bias: bool = False
    augment: bool | str | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrialConfig:
        """Build and validate a config; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown trial setting(s): {', '.join(unknown)}")
        config = cls(**values)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        _check_choice("reg", self.reg, REG_NAMES)
        _check_choice("threshold_mode", self.threshold_mode, THRESHOLD_MODES)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if self.augment is not None and not isinstance(self.augment, bool):
            _check_choice("augment", self.augment, AUGMENTATIONS)
        for name in ("strength", "threshold", "weight_decay", "momentum"):
            _check_number(name, getattr(self, name), minimum=0.0)
        for name in ("lr",):
            _check_number(name, getattr(self, name), minimum=0.0, strict=True)
        if self.finetune_lr is not None:
            _check_number("finetune_lr", self.finetune_lr, minimum=0.0, strict=True)
        for name in ("pretrain_epochs", "epochs", "finetune_epochs", "prune_ramp_epochs"):
            _check_int(name, getattr(self, name), minimum=0)
        if self.prune_ramp_epochs > self.finetune_epochs:
            raise ConfigError(
                f"prune_ramp_epochs must be ≤ finetune_epochs ({self.finetune_epochs}), got {self.prune_ramp_epochs}"
            )
        for name in ("batch_size", "eval_batch_size"):
            _check_int(name, getattr(self, name), minimum=1)
        if self.num_threads is not None:
            _check_int("num_threads", self.num_threads, minimum=1)
        _check_int("seed", self.seed, minimum=0)
        _check_int("split_seed", self.split_seed, minimum=0)
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.pretrain_epochs and self.init_checkpoint:
            raise ConfigError("pretrain_epochs and init_checkpoint are exclusive: pretrain or load, not both")
        if not (self.device == "auto" or self.device == "cpu" or self.device.startswith(("cuda", "mps"))):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _check_number(name: str, value: float, minimum: float, strict: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        relation = ">" if strict else "≥"
        raise ConfigError(f"{name} must be {relation} {minimum}, got {value}")


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer ≥ {minimum}, got {value!r}")


def split_branch_settings(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split trial settings into (shared part, branch part) by ``BRANCH_SETTINGS``.

    Trials whose shared parts are equal can be trained as branches of one regularized run; the
    branch part is what ``trainables.branching.run_branches`` applies to each branch.
    """
    shared = {key: value for key, value in values.items() if key not in BRANCH_SETTINGS}
    branch = {key: value for key, value in values.items() if key in BRANCH_SETTINGS}
    return shared, branch


def check_branchable(searched_names: Iterable[str]) -> None:
    """Raise ConfigError unless at least one of ``BRANCH_SETTINGS`` is searched.

    Branching K > 1 trials from one regularized run only pays when the trials can differ in a
    branch setting; with none of them searched every branch would be the same trial.
    """
    searched = set(searched_names)
    if not searched & set(BRANCH_SETTINGS):
        named = ", ".join(sorted(searched)) or "nothing"
        raise ConfigError(
            f"branching needs one of {', '.join(BRANCH_SETTINGS)} to be searched; the search space has {named}"
        )


PLACE_SETTINGS: tuple[str, ...] = ("data_dir", "pretrain_cache_dir", "init_checkpoint", "device", "num_threads")
"""Where and on what a trial runs, not what it computes: a checkpoint resumes under other values
(a moved sweep folder, another data path or device)."""


def same_computation(a: TrialConfig, b: TrialConfig) -> bool:
    """Whether two configs compute the same trial (equal but for ``PLACE_SETTINGS``)."""
    return _computation(a) == _computation(b)


def _computation(config: TrialConfig) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k not in PLACE_SETTINGS}


COHORT_SETTINGS: tuple[str, ...] = (
    "reg",
    "strength",
    "threshold",
    "threshold_mode",
    "lr",
    "finetune_lr",
    "prune_ramp_epochs",
    "weight_decay",
    "momentum",
    "seed",
)
"""The settings the members of one cohort (``trainables.cohort``) may differ in: the one rule.

Every other setting — dataset and data, model, epochs of each phase, batch sizes, optimizer and
schedule, device, split, augmentation, pretraining source — is what stacking K models into one
needs them to share: the same layers, the same number of steps, the same data on one device.
``seed`` may differ: each member is initialised and shuffled from its own seed, exactly as
``run_trial`` would (members that share a seed also share each batch).
"""


def check_cohort(configs: Iterable[TrialConfig]) -> None:
    """Raise ConfigError unless the configs agree on every setting outside ``COHORT_SETTINGS``.

    The message names each differing setting and the values seen, e.g.
    ``cohort members must share batch_size (differs: 64, 128); they may differ only in reg, ...``.
    """
    configs = list(configs)
    if not configs:
        raise ConfigError("a cohort needs at least one member")
    first = configs[0].to_dict()
    differing = []
    for name in first:
        if name in COHORT_SETTINGS:
            continue
        values = []
        for config in configs:
            value = getattr(config, name)
            if value not in values:
                values.append(value)
        if len(values) > 1:
            differing.append(f"{name} (differs: {', '.join(repr(v) for v in values)})")
    if differing:
        raise ConfigError(
            f"cohort members must share {'; '.join(differing)}; they may differ only in {', '.join(COHORT_SETTINGS)}"
        )
