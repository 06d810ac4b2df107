"""The one function trainable: DeepHoyer trials under Ray Tune.

A Ray trial trains the members the searcher handed it (``sweeps.searcher.Member``), one after
the other with ``trainables.run_trial``.  Every report names its member (``trial_number``):
each epoch's metrics, with a ``tune.Checkpoint`` at most every ``checkpoint_interval_s``
seconds, and one final report per member (``final: True``) holding its ``TrialResult`` scalars
and its per-layer table and history as JSON text (``TrialResult.from_dict`` decodes them).  A
member resumes from ``tune.get_checkpoint()`` when Ray retries the trial, else from the
checkpoint a resumed sweep hands it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from sweeps.searcher import Member, members_of
from trainables import ConfigError, TrialConfig, run_trial
from trainables.contract import TRIAL_NUMBER_KEY, Status, TrialResult
from trainables.data import DataError

DETERMINISTIC_ERRORS: tuple[type[BaseException], ...] = (ConfigError, DataError, torch.OutOfMemoryError)
"""Errors that would happen again for the same configuration: a ``failed`` result, never a Ray retry.

Anything else (a worker or node that died, a lost connection) is left to Ray's ``max_failures``.
"""


def failed_result(error: BaseException) -> TrialResult:
    """A ``failed`` result carrying the error's one-line reason and its full traceback."""
    message = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".rstrip(": ")
    return TrialResult(Status.FAILED, message, extra={"traceback": traceback.format_exc()})


CHECKPOINT_FILE = "state.pt"
IDENTITY_FILE = "trial.json"  # beside the state: whose checkpoint this is, for a resumed sweep


def _local_copy_of_checkpoint(workdir: Path, member: Member) -> Path | None:
    """A local copy of the member's checkpoint: Ray's own (a retry) first, else the sweep's hand-over."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            identity, source = Path(directory) / IDENTITY_FILE, Path(directory) / CHECKPOINT_FILE
            mine = identity.exists() and json.loads(identity.read_text()).get(TRIAL_NUMBER_KEY) == member.number
            if mine and source.exists():
                return Path(shutil.copy(source, workdir / CHECKPOINT_FILE))
    if member.resume_checkpoint and Path(member.resume_checkpoint).exists():
        return Path(shutil.copy(member.resume_checkpoint, workdir / CHECKPOINT_FILE))
    return None


def final_report(member: Member, result: TrialResult, extra: dict[str, Any]) -> dict[str, Any]:
    """The flat final report of one member (Ray results stay flat: the lists travel as JSON)."""
    return {
        **{k: v for k, v in result.extra.items() if isinstance(v, (int, float, str, bool))},
        **result.scalars(),
        **extra,
        TRIAL_NUMBER_KEY: member.number,
        "final": True,
        "layers": json.dumps(result.layers),
        "history": json.dumps(
            [{k: v for k, v in epoch.items() if isinstance(v, (int, float, str))} for epoch in result.history]
        ),
    }


def train_member(member: Member, fixed: dict[str, Any], checkpoint_interval_s: float) -> None:
    """Train one member to its final report; a bad configuration or bad data is a ``failed`` result."""
    try:
        config = TrialConfig.from_dict({**fixed, **member.params})
    except DETERMINISTIC_ERRORS as error:
        tune.report(final_report(member, failed_result(error), {}))
        return
    last_checkpoint = time.monotonic()
    waited = 0.0  # seconds this member spent inside tune.report: Ray's share of its time

    def report(metrics: dict[str, Any], state: Any) -> None:
        nonlocal last_checkpoint, waited
        began = time.perf_counter()
        metrics = {**metrics, TRIAL_NUMBER_KEY: member.number}
        if checkpoint_interval_s and time.monotonic() - last_checkpoint >= checkpoint_interval_s:
            with tempfile.TemporaryDirectory() as directory:
                state.save(Path(directory) / CHECKPOINT_FILE)
                identity = {TRIAL_NUMBER_KEY: member.number, "epoch": state.epoch}
                (Path(directory) / IDENTITY_FILE).write_text(json.dumps(identity))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
            last_checkpoint = time.monotonic()
        else:
            tune.report(metrics)
        waited += time.perf_counter() - began

    with tempfile.TemporaryDirectory() as workdir:
        resume_from = _local_copy_of_checkpoint(Path(workdir), member)
        try:
            result = run_trial(config, report, resume_from=resume_from)
        except DETERMINISTIC_ERRORS as error:
            result = failed_result(error)
    node_id = ray.get_runtime_context().get_node_id()
    tune.report(final_report(member, result, {"report_wait_s": waited, "node_id": node_id}))


def deephoyer_trainable(config: dict[str, Any], fixed: dict[str, Any], checkpoint_interval_s: float = 30.0) -> None:
    """Run the members of one Ray trial: ``fixed`` settings plus each member's sampled params."""
    for member in members_of(config):
        train_member(member, fixed, checkpoint_interval_s)
