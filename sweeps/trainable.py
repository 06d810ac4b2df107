"""The one function trainable: a DeepHoyer trial under Ray Tune.

It wraps ``trainables.run_trial``: reports every epoch through ``ray.tune.report`` (both
objectives are in every report), checkpoints at most every ``checkpoint_interval_s`` seconds
with ``tune.Checkpoint``, resumes from ``tune.get_checkpoint()`` when Ray retries the trial and
from the checkpoint a resumed sweep hands it (``resume_checkpoint``), and ends with one report
holding the final metrics, ``status`` and the per-layer table as JSON.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune

from sweeps.search import RESUME_KEY, TRIAL_NUMBER_KEY
from trainables.config import TrialConfig
from trainables.deephoyer import TrialState, run_trial

CHECKPOINT_FILE = "state.pt"
IDENTITY_FILE = "trial.json"  # beside the state: whose checkpoint this is, for a resumed sweep


def _scalars(result: dict[str, Any]) -> dict[str, Any]:
    """The flat part of a result (Ray results stay flat; the layer list travels as JSON)."""
    return {k: v for k, v in result.items() if isinstance(v, (int, float, str, bool)) or v is None}


def _local_copy_of_checkpoint(workdir: Path, resume_path: str | None) -> Path | None:
    """A local copy of the checkpoint to resume from: Ray's own first, else the sweep's hand-over."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            source = Path(directory) / CHECKPOINT_FILE
            if source.exists():
                return Path(shutil.copy(source, workdir / CHECKPOINT_FILE))
    if resume_path and Path(resume_path).exists():
        return Path(shutil.copy(resume_path, workdir / CHECKPOINT_FILE))
    return None


def deephoyer_trainable(config: dict[str, Any], fixed: dict[str, Any], checkpoint_interval_s: float = 30.0) -> None:
    """Run one trial: ``fixed`` settings plus the sampled ``config`` (with its trial number)."""
    config = dict(config)
    trial_number = config.pop(TRIAL_NUMBER_KEY, None)
    resume_path = config.pop(RESUME_KEY, None)
    trial_config = TrialConfig.from_dict({**fixed, **config})
    last_checkpoint = time.monotonic()
    waited = 0.0  # seconds this trial spent inside tune.report: Ray's share of the trial's time

    def report(metrics: dict[str, Any], state: TrialState) -> None:
        nonlocal last_checkpoint, waited
        began = time.perf_counter()
        metrics = {**metrics, TRIAL_NUMBER_KEY: trial_number}
        if checkpoint_interval_s and time.monotonic() - last_checkpoint >= checkpoint_interval_s:
            with tempfile.TemporaryDirectory() as directory:
                state.save(Path(directory) / CHECKPOINT_FILE)
                (Path(directory) / IDENTITY_FILE).write_text(
                    json.dumps({TRIAL_NUMBER_KEY: trial_number, "epoch": state.epoch})
                )
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
            last_checkpoint = time.monotonic()
        else:
            tune.report(metrics)
        waited += time.perf_counter() - began

    with tempfile.TemporaryDirectory() as workdir:
        resume_from = _local_copy_of_checkpoint(Path(workdir), resume_path)
        result = run_trial(trial_config, report, resume_from=resume_from)
    final = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in _scalars(result).items()}
    history = json.dumps(
        [{k: v for k, v in epoch.items() if isinstance(v, (int, float, str))} for epoch in result["history"]]
    )
    node_id = ray.get_runtime_context().get_node_id()
    tune.report(
        {
            **final,
            TRIAL_NUMBER_KEY: trial_number,
            "final": True,
            "report_wait_s": waited,
            "node_id": node_id,
            "layers_json": json.dumps(result["layers"]),
            "history_json": history,
        }
    )
