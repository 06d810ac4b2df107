"""The recorder closes every MLflow run it opened, whatever point a sweep was interrupted at."""

from __future__ import annotations

import time
from pathlib import Path

from sweeps.progress import Progress
from sweeps.recorder import SweepRecorder
from sweeps.records import ResultsLedger
from sweeps.searcher import Member
from sweeps.spec import load_spec
from sweeps.tracking import SweepTracker
from trainables.contract import Status, TrialResult

ROOT = Path(__file__).resolve().parents[1]


def _recorder(tmp_path: Path) -> SweepRecorder:
    spec, _ = load_spec(ROOT / "sweeps" / "digits_quick.yaml")
    tracker = SweepTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "recorder-test", tmp_path / "artifacts")
    tracker.start_parent(None, "recorder-test", {}, {}, "")
    progress = Progress("recorder-test", 4, time.time(), quiet=True)
    return SweepRecorder(spec, "recorder-test", {}, tracker, ResultsLedger(tmp_path / "results.jsonl"), progress)


def test_a_member_handed_out_but_never_started_is_closed_on_interruption(tmp_path):
    """Ctrl-C between the searcher's suggestion and the Ray trial's start left its run RUNNING (CI, once)."""
    recorder = _recorder(tmp_path)
    started, finished, never_started = Member(0, {"strength": 1e-3}), Member(1, {"strength": 2e-3}), Member(2, {})
    for member in (started, finished, never_started):
        recorder.open_run(member)
    recorder.started(started, "ray-a")
    recorder.started(finished, "ray-b")
    recorder.finished(finished, TrialResult(Status.FAILED, "boom"), "ray-b")
    recorder.close()
    recorder.interrupt_running()
    status = {n: recorder.tracker.client.get_run(recorder.tracker.find_child(n)).info.status for n in range(3)}
    assert status == {0: "KILLED", 1: "FAILED", 2: "KILLED"}
    assert [row["trial_number"] for row in recorder.ledger.rows.values()] == [1]
