"""MO-ASHA decisions on synthetic result streams (no Ray runtime: the scheduler is called as Tune would)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ray.tune.schedulers import TrialScheduler

from sweeps.rungs import Rungs, rank_order, rung_epochs
from sweeps.scheduler import MOASHA
from trainables.contract import Constraint

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def scheduler(tmp_path=None, **kwargs) -> MOASHA:
    settings = {"grace_epochs": 1, "reduction_factor": 3, "max_epochs": 9, **kwargs}
    rungs = Rungs(
        ["val_accuracy", "nonzero_frac"],
        ["max", "min"],
        constraints=[Constraint("val_accuracy", min=0.8)],
        state_path=(tmp_path / "scheduler.json") if tmp_path else None,
        **settings,
    )
    return MOASHA(rungs)


def report(moasha: MOASHA, number: int, epoch: int, accuracy: float, nonzero: float, phase: str = "train") -> str:
    trial = SimpleNamespace(trial_id=f"ray-{number}")
    result = {"phase": phase, "phase_epoch": epoch, "trial_number": number}
    result |= {"proxy_val_accuracy": accuracy, "proxy_nonzero_frac": nonzero}
    return moasha.on_trial_result(None, trial, result)


def test_rungs_are_geometric_in_regularized_epochs():
    assert rung_epochs(1, 3, 30) == [1, 3, 9, 27] and rung_epochs(2, 2, 9) == [2, 4, 8]


def test_a_dominated_trial_stops_at_the_first_rung_and_a_front_trial_is_promoted():
    moasha = scheduler()
    assert report(moasha, 0, 1, 0.95, 0.10) == CONTINUE  # the first at a rung always continues
    assert report(moasha, 1, 1, 0.90, 0.20) == STOP  # dominated by trial 0
    assert report(moasha, 2, 1, 0.85, 0.02) == CONTINUE  # sparser: on the proxy front with trial 0
    assert moasha.stopped == {"ray-1": (1, {"proxy_val_accuracy": 0.90, "proxy_nonzero_frac": 0.20})}
    # Epochs that are not rungs, and other phases, never decide.
    assert report(moasha, 1, 2, 0.1, 0.9) == CONTINUE and report(moasha, 5, 1, 0.1, 0.9, phase="finetune") == CONTINUE


def test_ties_are_broken_deterministically_and_infeasible_proxies_rank_last():
    # Four points on one front: crowding keeps the ends, then the smaller trial number.
    values = [[-0.95, 0.3], [-0.9, 0.2], [-0.85, 0.1], [-0.8, 0.05]]
    assert rank_order(__import__("numpy").array(values), [7, 3, 5, 1], [False] * 4)[:2] in ([0, 3], [3, 0])
    same = __import__("numpy").array([[-0.9, 0.1], [-0.9, 0.1], [-0.9, 0.1]])
    assert rank_order(same, [4, 2, 9], [False] * 3) == [1, 0, 2]  # identical points: by trial number
    moasha = scheduler(margin=0.05)
    assert report(moasha, 0, 1, 0.60, 0.001) == CONTINUE  # far below the 0.8 floor, but alone
    assert report(moasha, 1, 1, 0.81, 0.50) == CONTINUE  # feasible beats infeasible, whatever its sparsity
    assert report(moasha, 2, 1, 0.70, 0.01) == STOP  # 0.70 < 0.8 − margin: infeasible, ranks last


def test_rung_records_survive_a_restart_and_a_trial_is_never_counted_twice(tmp_path):
    first = scheduler(tmp_path)
    for number, (accuracy, nonzero) in enumerate([(0.95, 0.1), (0.9, 0.3), (0.85, 0.05)]):
        report(first, number, 1, accuracy, nonzero)
    resumed = scheduler(tmp_path)  # a new driver reads the rung records back
    assert sorted(resumed.recorded[1]) == [0, 1, 2]
    assert report(resumed, 1, 1, 0.9, 0.3) == STOP  # recorded again at the same rung: its entry replaced
    assert len(resumed.recorded[1]) == 3
    assert report(resumed, 3, 1, 0.97, 0.01) == CONTINUE  # dominates everything recorded before the restart


def test_objectives_without_a_proxy_are_refused():
    with pytest.raises(ValueError, match="no prune-now proxy for loss"):
        Rungs(["loss"], ["min"], grace_epochs=1, reduction_factor=3, max_epochs=9)
