"""What a sweep prints when its output is piped: a heartbeat of the running trials between finished ones."""

from __future__ import annotations

import time

import pandas as pd

from sweeps.progress import Progress, range_edge_notes
from sweeps.spec import load_spec


def test_piped_output_names_the_running_trials_at_most_once_per_heartbeat(capsys):
    progress = Progress("long", 8, time.time() - 1000, bar=False, heartbeat_s=600)
    progress.trial_epoch(0, "regularize", 136)  # 1000 s since the last line: say it
    progress.trial_epoch(1, "finetune", 12)  # within the heartbeat: quiet
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("[long] running: trial 0 regularize epoch 136; ")
    progress._last_line -= 601  # a heartbeat later
    progress.trial_epoch(0, "regularize", 200)
    assert "trial 0 regularize epoch 200, trial 1 finetune epoch 12" in capsys.readouterr().out


def test_a_finished_trials_line_restarts_the_heartbeat_and_quiet_or_a_bar_prints_none(capsys):
    progress = Progress("long", 8, time.time() - 1000, bar=False, heartbeat_s=600)
    progress.trial_finished(["ok"], running=1, front_size=1)
    progress.trial_epoch(1, "finetune", 3)
    assert capsys.readouterr().out.count("\n") == 1  # the finished line only
    for quiet, bar in ((True, False), (False, True)):
        Progress("q", 8, time.time() - 1000, quiet=quiet, bar=bar, heartbeat_s=0).trial_epoch(0, "pretrain", 1)
    assert capsys.readouterr().out == ""


def test_a_front_whose_sparse_end_sits_at_a_range_edge_gets_a_note():
    spec, _ = load_spec("sweeps/mnist_lenet5.yaml")  # strength 1.5e-4…2e-3, threshold 2e-3…0.1, both log
    front = pd.DataFrame(
        {
            "trial_number": [3, 7, 9],
            "param.strength": [3e-4, 5e-4, 1.9e-3],
            "param.threshold": [0.005, 0.02, 0.1],
            "val_accuracy": [0.992, 0.99, 0.985],
            "nonzero_frac": [0.02, 0.01, 0.004],
        }
    )
    notes = range_edge_notes(front, spec)
    assert len(notes) == 2 and "sparsest trial (9) has strength 0.0019, at the top of search.strength" in notes[0]
    assert "threshold 0.1, at the top of search.threshold [0.002, 0.1]" in notes[1]
    assert range_edge_notes(front.iloc[:2], spec) == []  # the sparse end inside both ranges
    low_end = front.assign(**{"param.threshold": [0.005, 0.02, 0.00201]})
    bottom_note = range_edge_notes(low_end.iloc[[0, 2]], spec)[-1]
    assert "at the bottom of search.threshold" in bottom_note  # beyond the bottom is denser, not sparser
    assert bottom_note.endswith("the front may go on below it; lower search.threshold.low")
    assert notes[1].endswith("the front may go on above it; raise search.threshold.high")
    assert range_edge_notes(front.iloc[:0], spec) == []
