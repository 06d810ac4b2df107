"""What a sweep prints when its output is piped: a heartbeat of the running trials between finished ones."""

from __future__ import annotations

import time

from sweeps.progress import Progress


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
