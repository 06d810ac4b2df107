"""bench/fit_schedule.py: a lease's schedule sized from its probe's per-epoch times."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import bench_module


@pytest.fixture(scope="module")
def fit_schedule():
    return bench_module("fit_schedule")


def history(pretrain_s: float, train_s: float, finetune_s: float, start_s: float = 5.0) -> list[dict]:
    """A branch's history as the cohort writes it: 1 pretrain, 3 regularized, 2 fine-tune epochs (elapsed time_s)."""
    entries, now = [], start_s
    for phase, count, seconds in (("pretrain", 1, pretrain_s), ("train", 3, train_s), ("finetune", 2, finetune_s)):
        if phase == "finetune":
            now += 7.0  # the prune and the branches' expansion happen between the phases
        for epoch in range(1, count + 1):
            now += seconds
            entries.append({"phase": phase, "phase_epoch": epoch, "time_s": now})
    return entries


def probe_folder(tmp_path: Path, histories: list[list[dict]]) -> Path:
    (tmp_path / "trials").mkdir(parents=True)
    for number, entries in enumerate(histories):
        (tmp_path / "trials" / f"trial-{number:04d}.json").write_text(json.dumps({"history": entries}))
    return tmp_path


def test_epoch_seconds_are_medians_within_a_phase_never_across_the_prune(fit_schedule):
    slow_branch = history(9.0, 3.0, 12.0)
    measured = fit_schedule.epoch_seconds([history(9.0, 2.0, 10.0), history(9.0, 2.0, 10.0), slow_branch])
    assert measured == pytest.approx({"train": 2.0, "finetune": 10.0})  # one pretrain epoch: no gap; 7 s prune left out


def test_the_spec_schedule_is_kept_when_it_fits_and_cut_in_proportion_when_not(fit_schedule):
    per_epoch = {"train": 2.0, "finetune": 10.0}
    full = fit_schedule.fit(10_000, per_epoch, 20.0, 10, 250, 50)
    assert (full.pretrain_epochs, full.epochs, full.finetune_epochs) == (10, 250, 50)
    assert full.expected_s == pytest.approx(20 + 10 * 2 + 250 * 2 + 50 * 10)
    cut = fit_schedule.fit(500, per_epoch, 20.0, 10, 250, 50)
    assert (
        cut.expected_s
        <= 500
        < fit_schedule.expected_seconds(10, cut.epochs + 1, cut.finetune_epochs + 1, per_epoch, 20.0)
    )
    assert cut.finetune_epochs == round(cut.epochs / 5) and cut.epochs == 115
    assert fit_schedule.fit(30, per_epoch, 20.0, 10, 250, 50) is None


def test_main_prints_the_shell_assignments_and_records_what_it_measured(fit_schedule, tmp_path, capsys):
    folder = probe_folder(tmp_path / "probe", [history(2.0, 2.0, 10.0)] * 3)
    record = tmp_path / "fit.json"
    # the probe: 1 + 3 + 2 epochs = 2 + 6 + 20 s of epochs; 48 s of wall leaves 20 s of overhead
    argv = [
        str(folder),
        "--probe-wall-s",
        "48",
        "--probe-epochs",
        "1,3,2",
        "--target-epochs",
        "10,250,50",
        "--seconds",
        "500",
        "--margin",
        "1",
        "--json-out",
        str(record),
    ]
    assert fit_schedule.main(argv) == 0
    assert capsys.readouterr().out.strip() == "PRETRAIN_EPOCHS=10 EPOCHS=115 FINETUNE_EPOCHS=23"
    written = json.loads(record.read_text())
    assert written["overhead_s"] == pytest.approx(20.0) and written["schedule"]["epochs"] == 115
    assert fit_schedule.main([*argv[:-2], "--seconds", "30"]) == 1  # nothing fits: said, not guessed
    empty = probe_folder(tmp_path / "empty", [])
    assert fit_schedule.main([str(empty), *argv[1:]]) == 2
    assert "no regularized or fine-tune epoch times" in capsys.readouterr().err
