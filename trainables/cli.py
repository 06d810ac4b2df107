"""``hoyersweep train``: one DeepHoyer trial from the command line, without Ray.

``--thresholds 0.01,0.02,0.05`` trains one configuration with threshold branching
(``trainables.branching.run_branches``): the regularized phase once, then one pruned and
fine-tuned result per threshold, each the same as ``--threshold`` with that value.
``--strengths 1e-4,3e-4,1e-3`` trains one cohort (``trainables.cohort.run_cohort``): one member
per strength, every other flag shared, all stacked into one model — one result per strength.
Both together: each member branches at its branch point (``run_cohort_branches``), one result
per (strength, threshold).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from trainables.config import (
    AUGMENTATIONS,
    DATASETS,
    OPTIMIZERS,
    REG_NAMES,
    THRESHOLD_MODES,
    ConfigError,
    TrialConfig,
)
from trainables.contract import FLOPS_FRAC, NONZERO_FRAC, TEST_ACCURACY, VAL_ACCURACY, TrialResult

SUMMARY_METRICS: tuple[str, ...] = (VAL_ACCURACY, TEST_ACCURACY, NONZERO_FRAC, FLOPS_FRAC, "loss", "wall_time_s")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``train``; defaults come from ``TrialConfig`` so there is one source."""
    d = TrialConfig()
    parser.add_argument("--dataset", default=d.dataset, choices=DATASETS)
    parser.add_argument("--data-dir", default=d.data_dir, help="folder of the dataset files (not needed for digits)")
    parser.add_argument("--model", default=d.model, help="lenet300_100, lenet5, resnet20/32/56 or module:function")
    parser.add_argument("--reg", default=d.reg, choices=REG_NAMES)
    parser.add_argument("--strength", type=float, default=d.strength, help="regularization strength λ")
    parser.add_argument("--threshold", type=float, default=d.threshold)
    parser.add_argument(
        "--thresholds",
        type=number_list,
        default=None,
        help="comma-separated thresholds, e.g. 0.01,0.02,0.05: regularize once, then prune + finetune once per "
        "threshold (exactly as separate runs); one result line each (--json: a JSON list). Overrides --threshold",
    )
    parser.add_argument(
        "--strengths",
        type=number_list,
        default=None,
        help="comma-separated strengths, e.g. 1e-4,3e-4,1e-3: train one cohort, one member per strength stacked "
        "into one model (every other flag shared); one result line each (--json: a JSON list). Overrides --strength",
    )
    parser.add_argument("--threshold-mode", default=d.threshold_mode, choices=THRESHOLD_MODES)
    parser.add_argument("--pretrain-epochs", type=int, default=d.pretrain_epochs)
    parser.add_argument("--init-checkpoint", default=d.init_checkpoint, help="dense weights to start from")
    parser.add_argument("--epochs", type=int, default=d.epochs, help="epochs of regularized training")
    parser.add_argument("--finetune-epochs", type=int, default=d.finetune_epochs)
    parser.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument(
        "--finetune-lr", type=float, default=d.finetune_lr, help="learning rate of fine-tuning (default: --lr)"
    )
    parser.add_argument(
        "--prune-ramp-epochs",
        type=int,
        default=d.prune_ramp_epochs,
        help="prune gradually over the first N fine-tune epochs (cubic schedule) to the threshold's count "
        "(default 0: at once)",
    )
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument(
        "--augment",
        default=d.augment,
        choices=AUGMENTATIONS,
        help="default: crop_flip for colour 32×32 images, else none",
    )
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--json", action="store_true", help="print only one JSON object with the final metrics")
    parser.add_argument(
        "--save",
        metavar="PATH",
        help="save the final pruned model there (with --thresholds or --strengths: PATH-0.pt, PATH-1.pt, … in their "
        "order); "
        "load it with trainables.pipeline.load_model, export it with hoyersweep export",
    )


def number_list(text: str) -> list[float]:
    """``0.01,0.02,0.05`` → [0.01, 0.02, 0.05]: distinct non-negative numbers (an argparse type)."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"need distinct finite numbers ≥ 0, got {text!r}")
    return values


def config_from_args(args: argparse.Namespace) -> TrialConfig:
    names = set(TrialConfig.__dataclass_fields__)
    return TrialConfig.from_dict({key: value for key, value in vars(args).items() if key in names})


def json_safe(value: Any) -> Any:
    """Replace NaN/inf by None, also inside lists and dicts (a history's epochs), so the output is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_safe(item) for item in value]
    return value


def _print_progress(metrics: dict[str, Any], _state: object) -> None:
    branch, member = metrics.get("branch"), metrics.get("member")
    tag = "" if branch is None else f"[{branch}] " if branch == "shared" else f"[branch {branch}] "
    tag += "" if member is None else f"[member {member}] "
    print(
        f"{tag}epoch {metrics['epoch']:3d} {metrics['phase']:<8} loss {metrics['loss']:.4f} "
        f"val_acc {metrics[VAL_ACCURACY]:.4f} nonzero {metrics[NONZERO_FRAC]:.4f} flops {metrics[FLOPS_FRAC]:.4f}",
        file=sys.stderr,
        flush=True,
    )


def train_command(args: argparse.Namespace) -> int:
    """Run one trial; the final ``TrialResult`` as JSON (``--json``, NaN as null) or a short table."""
    config = config_from_args(args)
    if getattr(args, "strengths", None):
        thresholds = getattr(args, "thresholds", None)
        return cohort_command(config, args.strengths, args.json, getattr(args, "save", None), thresholds)
    if getattr(args, "thresholds", None):
        return branches_command(config, args.thresholds, args.json, getattr(args, "save", None))
    from trainables.pipeline import run_trial  # torch loads here, not when the parser is built

    result = run_trial(config, report=None if args.json else _print_progress, model_path=getattr(args, "save", None))
    if args.json:
        print(json.dumps(json_safe(result.to_dict()), allow_nan=False))
        return 0 if result.ok else 1
    print(f"status        {result.status.value} {result.message}".rstrip())
    for key in SUMMARY_METRICS:
        print(f"{key:<13} {result.metric(key):.4f}")
    print(f"{'layer':<16} {'nonzero':>9} {'frac':>7} {'rows':>9} {'cols':>9}")
    for layer in result.layers:
        print(
            f"{layer['name']:<16} {layer['nonzero']:>9} {layer['nonzero_frac']:>7.4f} "
            f"{layer['rows_live']:>4}/{layer['rows_total']:<4} {layer['cols_live']:>4}/{layer['cols_total']:<4}"
        )
    return 0 if result.ok else 1


BRANCH_LINE_METRICS: tuple[str, ...] = (VAL_ACCURACY, TEST_ACCURACY, NONZERO_FRAC, FLOPS_FRAC, "wall_time_s")


def numbered_model_path(save: str | None, index: int) -> str | None:
    """``--save m.pt`` with several thresholds or strengths: ``m-0.pt``, ``m-1.pt``, … in their order."""
    if not save:
        return None
    path = Path(save)
    return str(path.with_name(f"{path.stem}-{index}{path.suffix or '.pt'}"))


def branches_command(config: TrialConfig, thresholds: list[float], as_json: bool, save: str | None = None) -> int:
    """``--thresholds``: one regularized run branched per threshold; one line (or JSON object) per threshold.

    Each result is that of ``train --threshold T`` with the same other flags (``run_branches``),
    for the price of one regularized phase.  A threshold's line is printed as soon as its branch
    finished; the JSON list comes at the end.
    """
    from trainables.branching import run_branches  # torch loads here

    def print_line(index: int, result: TrialResult) -> None:
        metrics = " ".join(f"{key} {result.metric(key):.4f}" for key in BRANCH_LINE_METRICS)
        print(f"threshold {thresholds[index]:g} status {result.status.value} {metrics}", flush=True)

    results = run_branches(
        config,
        [{"threshold": t} for t in thresholds],
        report=None if as_json else _print_progress,
        model_path=lambda index: numbered_model_path(save, index),
        on_end=None if as_json else print_line,
    )
    if as_json:
        rows = [{"threshold": t, **result.to_dict()} for t, result in zip(thresholds, results)]
        print(json.dumps(json_safe(rows), allow_nan=False))
    return 0 if all(result.ok for result in results) else 1


def cohort_command(
    config: TrialConfig,
    strengths: list[float],
    as_json: bool,
    save: str | None = None,
    thresholds: list[float] | None = None,
) -> int:
    """``--strengths``: one cohort, a member per strength; one line (or JSON object) per strength.

    Each member is ``train --strength S`` with the same other flags, trained stacked with the
    others (``run_cohort``; equal to a separate run up to float32 rounding).  With ``thresholds``
    each member branches (``run_cohort_branches``): one result per (strength, threshold), saved
    as ``PATH-i.pt`` in that order.
    """
    from trainables.cohort import run_cohort_branches  # torch loads here

    def progress(member: int, metrics: dict[str, Any], state: object) -> None:
        _print_progress({**metrics, "member": member}, state)

    configs = [replace(config, strength=strength) for strength in strengths]
    branches = [[{"threshold": t} for t in thresholds]] * len(configs) if thresholds else None
    per_member = len(thresholds) if thresholds else 1
    results = run_cohort_branches(
        configs,
        branches,
        report=None if as_json else progress,
        model_path=lambda member, branch: numbered_model_path(save, member * per_member + branch),
    )
    rows = [
        ({"strength": s, **({"threshold": thresholds[b]} if thresholds else {})}, result)
        for s, member_results in zip(strengths, results)
        for b, result in enumerate(member_results)
    ]
    if as_json:
        print(json.dumps(json_safe([{**key, **result.to_dict()} for key, result in rows]), allow_nan=False))
    else:
        for key, result in rows:
            metrics = " ".join(f"{name} {result.metric(name):.4f}" for name in BRANCH_LINE_METRICS)
            settings = " ".join(f"{name} {value:g}" for name, value in key.items())
            print(f"{settings} status {result.status.value} {metrics}")
    return 0 if all(result.ok for _, result in rows) else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m trainables.cli`` (the same as ``hoyersweep train``)."""
    parser = argparse.ArgumentParser(prog="hoyersweep train", description=__doc__)
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    from trainables.data import DataError

    try:
        return train_command(args)
    except (ConfigError, DataError) as error:
        parser.exit(2, f"hoyersweep train: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
