"""What a sweep prints: one progress line per finished trial, and the closing summary."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from sweeps.spec import SweepSpec
from trainables.contract import OPTUNA_FILE, PARETO_FILE, RESULTS_FILE, TEST_ACCURACY, Status


@dataclass
class Progress:
    """Progress lines of one sweep (``[name] 7/24 done (0 failed), 2 running, front 4, 41s``)."""

    name: str
    num_samples: int
    started: float
    quiet: bool = False

    def say(self, text: str) -> None:
        if not self.quiet:
            print(f"[{self.name}] {text}", flush=True)

    def trial_finished(self, statuses: list[str], running: int, front_size: int) -> None:
        failed = sum(status != Status.OK for status in statuses)
        elapsed = time.time() - self.started
        self.say(
            f"{len(statuses)}/{self.num_samples} done ({failed} failed), {running} running, "
            f"front {front_size}, {elapsed:.0f}s"
        )


@dataclass(frozen=True)
class SweepOutcome:
    """Where a finished sweep put things, and how it went."""

    sweep_dir: Path
    study_name: str
    tracking_uri: str
    total: int
    ok: int
    failed: int
    front: pd.DataFrame
    exhausted: str = ""  # why the search space ran out, when it did


def print_summary(outcome: SweepOutcome, spec: SweepSpec, elapsed: float) -> None:
    """The front (validation-chosen, test beside it) and where every record is."""
    directory = outcome.sweep_dir
    print(f"\nSweep {spec.name}: {outcome.total} trials ({outcome.ok} ok, {outcome.failed} failed) in {elapsed:.0f}s")
    if outcome.exhausted:
        print(f"Search space exhausted ({outcome.exhausted}): the sweep ended before its budget.")
    if not outcome.front.empty:
        shown = ["trial_number", *[c for c in outcome.front.columns if c.startswith("param.")]]
        shown = list(dict.fromkeys([*shown, *spec.metric_names, TEST_ACCURACY]))
        print(f"Pareto front ({len(outcome.front)} trials; chosen on validation, test shown beside):")
        print(outcome.front[shown].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    elif outcome.ok:
        rules = ", ".join(c.to_constraint().describe() for c in spec.constraints)
        why = f"no ok trial met the constraints ({rules})" if rules else "no ok trial has finite objective values"
        print(f"Pareto front empty: {why}; `hoyersweep pareto {directory} --ignore-constraints` shows the rest.")
    print(f"  results : {directory / RESULTS_FILE}")
    print(f"  front   : {directory / PARETO_FILE}")
    print(f"  mlflow  : {outcome.tracking_uri}   (hoyersweep ui {directory})")
    optuna_uri = f"sqlite:///{(directory / OPTUNA_FILE).resolve()}"
    print(f"  optuna  : optuna-dashboard {optuna_uri}   (study {outcome.study_name})")
    sys.stdout.flush()
