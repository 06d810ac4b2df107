"""What a sweep prints: start-up stages, a progress bar (or one line per trial), failures, the summary.

On a terminal the progress is a bar with an ETA (tqdm); piped or redirected, it is one plain line
per finished trial (``[name] 7/24 done (0 failed), 2 running, front 4, 41s``) and, at most every
``heartbeat_s``, one line with the running trials' phase and epoch — a sweep of long trials
(hundreds of epochs) would otherwise print nothing for half an hour.  Every failed or
diverged trial gets one line with its reason (the full error is in ``logs/trial-NNNN.log`` and in
its MLflow run), and the closing summary counts failures by reason.
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sweeps.spec import CategoricalParam, SweepSpec
from trainables.contract import (
    OPTUNA_FILE,
    PARETO_FILE,
    RESULTS_FILE,
    SPARSITY_FRACTIONS,
    TEST_ACCURACY,
    Status,
)


@dataclass
class Progress:
    """Progress of one sweep, as a bar on a terminal or as plain lines."""

    name: str
    num_samples: int
    started: float
    quiet: bool = False
    bar: bool | None = None  # None: a bar when stdout is a terminal
    heartbeat_s: float = 300.0  # piped output: at most one line of running trials' epochs this often
    _bar: Any = field(default=None, init=False, repr=False)
    _epochs: dict[int, tuple[str, int, float]] = field(default_factory=dict, init=False, repr=False)
    _last_line: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.bar is None:
            self.bar = not self.quiet and sys.stdout.isatty()
        self._last_line = self.started

    def say(self, text: str) -> None:
        """One line (above the bar, when there is one)."""
        if self.quiet:
            return
        line = f"[{self.name}] {text}"
        self._last_line = time.time()
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, flush=True)

    def trial_finished(self, statuses: list[str], running: int, front_size: int) -> None:
        failed = sum(status in (Status.FAILED, Status.DIVERGED) for status in statuses)
        pruned = sum(status == Status.PRUNED for status in statuses)
        if self.quiet:
            return
        if self.bar:
            self._update_bar(len(statuses), failed, running, front_size)
            return
        elapsed = time.time() - self.started
        stopped = f", {pruned} stopped early" if pruned else ""
        self.say(
            f"{len(statuses)}/{self.num_samples} done ({failed} failed{stopped}), {running} running, "
            f"front {front_size}, {elapsed:.0f}s"
        )

    def trial_epoch(self, number: int, phase: str | None, phase_epoch: int | None) -> None:
        """A running trial reached ``phase_epoch`` of ``phase``; piped output hears of the running trials
        at most every ``heartbeat_s`` (a trial silent for longer than that is left out: it has finished)."""
        if self.quiet or self.bar or phase is None or phase_epoch is None:
            return
        now = time.time()
        self._epochs[number] = (str(phase), int(phase_epoch), now)
        if now - self._last_line < self.heartbeat_s:
            return
        recent = sorted((n, p, e) for n, (p, e, seen) in self._epochs.items() if now - seen <= self.heartbeat_s)
        running = ", ".join(f"trial {n} {p} epoch {e}" for n, p, e in recent)
        self.say(f"running: {running}; {now - self.started:.0f}s")

    def trial_failed(self, number: int, status: Status, message: str, log: Path | None) -> None:
        where = f" (full error: {log})" if log else ""
        first = (message or status.value).splitlines()[0][:300]
        self.say(f"trial {number} {status.value}: {first}{where}")

    def _update_bar(self, done: int, failed: int, running: int, front_size: int) -> None:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=self.num_samples, desc=self.name, unit="trial", dynamic_ncols=True)
        self._bar.n = done
        self._bar.set_postfix_str(f"{failed} failed, {running} running, front {front_size}", refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def failure_counts(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    """How many trials ended how, by status and reason (the message's first line), for every non-ok trial."""
    counts: Counter[str] = Counter()
    for row in rows:
        if row["status"] != Status.OK:
            reason = (row.get("message") or "").splitlines()[0][:160] if row.get("message") else "no message"
            counts[f"{row['status']}: {reason}"] += 1
    return dict(counts.most_common())


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
    interrupted: bool = False  # stopped by Ctrl-C before its budget: `hoyersweep resume` continues it
    failures: dict[str, int] = field(default_factory=dict)  # "status: reason" → how many trials


EDGE_FRACTION = 0.02  # within 2 % of a range's length from its end (on its log scale when log): at the edge


def range_edge_notes(front: pd.DataFrame, spec: SweepSpec) -> list[str]:
    """One note per searched number whose value at the front's sparsest trial sits at an end of its range.

    The front's sparse end is what a pruning sweep is for; when it lies at the edge of a range
    (an ``abs`` threshold range tuned at a shorter schedule, say), the front may go on past that edge.
    Which way is sparser is not assumed: at the top of a threshold range the results beyond are
    sparser, at its bottom they are denser (and may be more accurate), so the note names the edge
    and the bound to move.
    """
    sparsity = next((o.metric for o in spec.objectives if o.metric in SPARSITY_FRACTIONS and o.mode == "min"), None)
    if front.empty or sparsity is None or sparsity not in front:
        return []
    sparsest = front.loc[front[sparsity].idxmin()]
    notes = []
    for name, param in spec.search.items():
        value = sparsest.get(f"param.{name}")
        if isinstance(param, CategoricalParam) or value is None or pd.isna(value):
            continue
        scale = math.log if param.log else float
        low, high = scale(param.low), scale(param.high)
        position = (scale(float(value)) - low) / (high - low)
        if EDGE_FRACTION < position < 1 - EDGE_FRACTION:
            continue
        at_top = position > 0.5
        end, beyond, move, bound = ("top", "above", "raise", "high") if at_top else ("bottom", "below", "lower", "low")
        notes.append(
            f"the front's sparsest trial ({int(sparsest['trial_number'])}) has {name} {float(value):.4g}, at the "
            f"{end} of search.{name} [{param.low:g}, {param.high:g}]: the front may go on {beyond} it; "
            f"{move} search.{name}.{bound}"
        )
    return notes


def print_summary(outcome: SweepOutcome, spec: SweepSpec, elapsed: float) -> None:
    """The front (validation-chosen, test beside it), failures by reason and where every record is."""
    directory = outcome.sweep_dir
    pruned = sum(count for reason, count in outcome.failures.items() if reason.startswith(f"{Status.PRUNED.value}:"))
    stopped = f", {pruned} stopped early" if pruned else ""
    failed = outcome.failed - pruned
    print(f"\nSweep {spec.name}: {outcome.total} trials ({outcome.ok} ok, {failed} failed{stopped}) in {elapsed:.0f}s")
    for reason, count in outcome.failures.items():
        print(f"  {count} × {reason}")
    if outcome.exhausted:
        print(f"Search space exhausted ({outcome.exhausted}): the sweep ended before its budget.")
    if not outcome.front.empty:
        shown = ["trial_number", *[c for c in outcome.front.columns if c.startswith("param.")]]
        shown = list(dict.fromkeys([*shown, *spec.metric_names, TEST_ACCURACY]))
        print(f"Pareto front ({len(outcome.front)} trials; chosen on validation, test shown beside):")
        print(outcome.front[shown].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        for note in range_edge_notes(outcome.front, spec):
            print(f"Note: {note}")
    elif outcome.ok:
        rules = ", ".join(c.to_constraint().describe() for c in spec.constraints)
        why = f"no ok trial met the constraints ({rules})" if rules else "no ok trial has finite objective values"
        print(f"Pareto front empty: {why}; `hoyersweep pareto {directory} --ignore-constraints` shows the rest.")
    print(f"  results : {directory / RESULTS_FILE}")
    print(f"  front   : {directory / PARETO_FILE}")
    print(f"  mlflow  : {outcome.tracking_uri}   (hoyersweep ui {directory})")
    optuna_uri = f"sqlite:///{(directory / OPTUNA_FILE).resolve()}"
    print(f"  optuna  : optuna-dashboard {optuna_uri}   (study {outcome.study_name})")
    if outcome.interrupted:
        print(f"Interrupted: continue with `hoyersweep resume {directory}`")
    sys.stdout.flush()
