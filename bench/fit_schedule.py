"""Size a sweep's schedule to the device time at hand, from a short probe run of the same cohort.

A lent GPU gives a session minutes, not hours, and how fast a stacked cohort trains there is
known only once it runs. So ``bench/gpu_lease_asktell.sh`` first trains the spec's cohort for a
few epochs (the probe), then calls this to read the probe's per-epoch times from its results
(every result's ``history`` holds the cohort's elapsed ``time_s`` at each epoch) and to pick the
longest schedule that fits what is left: the spec's own epochs when they fit, else regularized
and fine-tune epochs cut in the spec's proportion (the dense pretraining is kept; it is cheap).

Torch-free: it reads JSON. Prints ``PRETRAIN_EPOCHS=… EPOCHS=… FINETUNE_EPOCHS=…`` for the shell
and, with ``--json-out``, what it measured and assumed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PHASES = ("pretrain", "train", "finetune")


def epoch_seconds(histories: Iterable[list[dict[str, Any]]]) -> dict[str, float]:
    """Median seconds between consecutive epochs of one phase, per phase, over every history.

    A branch's history repeats its run's shared epochs, so the same differences appear many
    times; the median is unaffected.  A phase with a single epoch in the probe has no entry.
    """
    gaps: dict[str, list[float]] = {phase: [] for phase in PHASES}
    for history in histories:
        for before, after in zip(history, history[1:]):
            phase = after.get("phase")
            if (
                phase in gaps
                and before.get("phase") == phase
                and after.get("phase_epoch") == before.get("phase_epoch", -1) + 1
            ):
                gaps[phase].append(float(after["time_s"]) - float(before["time_s"]))
    return {phase: statistics.median(values) for phase, values in gaps.items() if values}


def probe_histories(folder: Path) -> list[list[dict[str, Any]]]:
    """The histories of the probe's results (``trials/trial-NNNN.json`` of an ask/tell folder)."""
    histories = []
    for path in sorted((folder / "trials").glob("trial-*.json")):
        history = json.loads(path.read_text()).get("history") or []
        if history:
            histories.append(history)
    return histories


@dataclass(frozen=True)
class Schedule:
    """Epochs per phase and the seconds they are expected to take (overhead included)."""

    pretrain_epochs: int
    epochs: int
    finetune_epochs: int
    expected_s: float


def expected_seconds(
    pretrain: int, epochs: int, finetune: int, per_epoch: dict[str, float], overhead_s: float
) -> float:
    """Seconds a run of these epochs takes at the probe's per-epoch times (pretrain at ``train``'s when unmeasured)."""
    pretrain_s = per_epoch.get("pretrain", per_epoch["train"])
    return overhead_s + pretrain * pretrain_s + epochs * per_epoch["train"] + finetune * per_epoch["finetune"]


def fit(
    seconds: float, per_epoch: dict[str, float], overhead_s: float, pretrain: int, epochs: int, finetune: int
) -> Schedule | None:
    """The longest schedule, the spec's at most, that fits ``seconds``: regularized and fine-tune epochs
    shrink together in the spec's proportion (at least one of each); None when even that does not fit."""
    ratio = finetune / epochs if epochs else 0.0
    for length in range(epochs, 0, -1):
        tuned = max(1, round(length * ratio)) if finetune else 0
        total = expected_seconds(pretrain, length, tuned, per_epoch, overhead_s)
        if total <= seconds:
            return Schedule(pretrain, length, tuned, total)
    return None


def probe_overhead(wall_s: float, per_epoch: dict[str, float], pretrain: int, epochs: int, finetune: int) -> float:
    """The probe's seconds outside its epochs: start-up, data loading, writing results (never below 0)."""
    return max(0.0, wall_s - expected_seconds(pretrain, epochs, finetune, per_epoch, 0.0))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("probe", type=Path, help="the probe's ask/tell folder")
    parser.add_argument("--probe-wall-s", type=float, required=True, help="the probe's wall time, start-up included")
    parser.add_argument(
        "--probe-epochs", required=True, help="the probe's pretrain,regularized,fine-tune epochs, e.g. 1,3,2"
    )
    parser.add_argument("--target-epochs", required=True, help="the spec's pretrain,regularized,fine-tune epochs")
    parser.add_argument("--seconds", type=float, required=True, help="seconds the run may take")
    parser.add_argument("--margin", type=float, default=1.15, help="per-epoch times are multiplied by this")
    parser.add_argument("--json-out", type=Path, help="write what was measured and chosen here")
    return parser


def triple(text: str) -> tuple[int, int, int]:
    """``"10,250,50"`` → (10, 250, 50)."""
    parts = [int(part) for part in text.split(",")]
    if len(parts) != 3 or min(parts) < 0:
        raise ValueError(f"expected three non-negative integers, got {text!r}")
    return parts[0], parts[1], parts[2]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        probe_epochs, target = triple(args.probe_epochs), triple(args.target_epochs)
    except ValueError as error:
        print(f"fit_schedule: {error}", file=sys.stderr)
        return 2
    measured = epoch_seconds(probe_histories(args.probe))
    if "train" not in measured or "finetune" not in measured:
        print(
            f"fit_schedule: {args.probe}: the probe's results hold no regularized or fine-tune epoch times "
            "(the probe needs at least 2 of each)",
            file=sys.stderr,
        )
        return 2
    overhead = probe_overhead(args.probe_wall_s, measured, *probe_epochs)
    planned = {phase: seconds * args.margin for phase, seconds in measured.items()}
    schedule = fit(args.seconds, planned, overhead * args.margin, *target)
    record = {
        "per_epoch_s": measured,
        "overhead_s": overhead,
        "margin": args.margin,
        "seconds": args.seconds,
        "target_epochs": target,
        "schedule": asdict(schedule) if schedule else None,
    }
    if args.json_out:
        args.json_out.write_text(json.dumps(record, indent=2))
    if schedule is None:
        print(f"fit_schedule: not even 1 regularized epoch fits {args.seconds:.0f} s ({record})", file=sys.stderr)
        return 1
    chosen = (schedule.pretrain_epochs, schedule.epochs, schedule.finetune_epochs)
    print("PRETRAIN_EPOCHS={} EPOCHS={} FINETUNE_EPOCHS={}".format(*chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
