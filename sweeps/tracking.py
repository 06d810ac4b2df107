"""MLflow records of a sweep: one parent run per sweep, one nested child run per trial.

Idempotent by design, so a resumed sweep never duplicates a run: a child run is found again by
its tags (parent run id + Optuna trial number) before one is created, epochs already logged are
not logged again, and finishing a finished run changes nothing.

Names are stable across sweeps so runs compare in the MLflow UI: params are every
``TrialConfig`` field (the same keys in every sweep) plus ``trial_number``; per-epoch curves are
``val_accuracy``, ``nonzero_frac``, ``flops_frac``, ``loss``, ``task_loss``, ``reg_loss``,
``val_loss`` and ``lr`` at step = epoch; final values are ``final_<name>``; the per-layer
sparsity table is the artifact ``layers.csv``; Pareto-optimal trials carry the tag ``pareto=true``.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.store.artifact.artifact_repo import ArtifactRepository
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from trainables.contract import (
    COHORT_INDEX_KEY,
    COHORT_SIZE_KEY,
    EPOCH_METRICS,
    FINAL_PREFIX,
    MESSAGE_TAG,
    METRICS,
    MODEL_ARTIFACT,
    PARETO_TAG,
    SHARED_RUN_KEY,
    SHARED_RUN_TAG,
    STATUS_TAG,
    STOPPED_AT_KEY,
    SWEEP_TAG,
    TRIAL_TAG,
    VAL_ACCURACY,
    Status,
    TrialResult,
)

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # MLflow 3's UI opens an experiment in the view its kind names
EXPERIMENT_KIND = "custom_model_development"  # the ML (runs, metrics, models) view, not the GenAI one
RESOURCE_TAGS: tuple[str, ...] = ("device", "device_name")  # what a trial actually ran on (``auto`` resolved)
RESOURCE_METRICS: tuple[str, ...] = ("peak_memory_mb", "epoch_time_s")  # per trial, not the driver's machine
MLFLOW_STATUS: dict[Status, str] = {
    Status.OK: "FINISHED",
    Status.PRUNED: "FINISHED",  # a result: stopped early on purpose, with its own status tag
    Status.DIVERGED: "FAILED",
    Status.FAILED: "FAILED",
    Status.INTERRUPTED: "KILLED",  # a resumed sweep re-opens it
}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class SweepTracker:
    """MLflow client wrapper bound to one sweep's experiment and parent run."""

    def __init__(self, tracking_uri: str, experiment_name: str, artifact_root: Path | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        experiment = self.client.get_experiment_by_name(experiment_name)
        if experiment is None:
            location = artifact_root.resolve().as_uri() if artifact_root else None
            tags = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            self.experiment_id = self.client.create_experiment(experiment_name, artifact_location=location, tags=tags)
        else:
            self.experiment_id = experiment.experiment_id
            if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # sweeps made before this tag existed
                self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        self.parent_run_id: str | None = None
        self._children: dict[int, str] = {}
        self._logged_steps: dict[str, set[int]] = {}
        self._pending: dict[str, list[dict[str, Any]]] = {}
        self.source_tags: dict[str, str] = {}  # MLflow's standard source tags (git commit, entry point), every run

    def start_parent(
        self, run_id: str | None, name: str, params: dict[str, Any], tags: dict[str, str], spec_text: str
    ) -> str:
        """Create the sweep's parent run, or re-open the one a resumed sweep already has."""
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
            self.parent_run_id = run_id
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags={SWEEP_TAG: name, **tags})
        self.parent_run_id = run.info.run_id
        self.client.log_batch(self.parent_run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        self.log_text(self.parent_run_id, spec_text, "spec.yaml")
        return self.parent_run_id

    def log_parent(self, metrics: dict[str, float], step: int) -> None:
        """The sweep's progress on its parent run (e.g. region hypervolume, front size; step = results so far)."""
        batch = [Metric(k, float(v), _now(), step) for k, v in metrics.items() if _finite(v)]
        if batch:
            self.client.log_batch(self.parent_run_id, metrics=batch)

    def artifacts(self, run_id: str) -> ArtifactRepository:
        """The artifact store of a run, from the run's *current* artifact URI.

        ``MlflowClient``'s artifact calls cache one repository per run id for the whole process,
        whatever the tracking store: a process that wrote a sweep and then resumes a copy of it
        (same run ids, relocated store) would write the copy's artifacts into the original.
        """
        return get_artifact_repository(self.client.get_run(run_id).info.artifact_uri)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / Path(artifact_file).name
            path.write_text(text)
            parent = str(Path(artifact_file).parent)
            self.artifacts(run_id).log_artifact(str(path), None if parent == "." else parent)

    def log_parent_artifacts(self, directory: str | Path) -> None:
        """Attach files (the front table, the HTML report) to the sweep's parent run."""
        self.artifacts(self.parent_run_id).log_artifacts(str(directory))

    def end_parent(self, status: str = "FINISHED", metrics: dict[str, float] | None = None) -> None:
        if metrics:
            self.client.log_batch(
                self.parent_run_id, metrics=[Metric(k, float(v), _now(), 0) for k, v in metrics.items() if _finite(v)]
            )
        self.client.set_terminated(self.parent_run_id, status=status)

    def find_child(self, trial_number: int) -> str | None:
        """The child run of ``trial_number`` under this parent, if one exists."""
        if trial_number in self._children:
            return self._children[trial_number]
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{self.parent_run_id}' and tags.`{TRIAL_TAG}` = '{trial_number}'"
            ),
            max_results=2,
        )
        if runs:
            self._children[trial_number] = runs[0].info.run_id
            return runs[0].info.run_id
        return None

    def child(self, trial_number: int, sweep: str, params: dict[str, Any]) -> str:
        """The child run of a trial: found again if it exists, created (with its params) if not."""
        existing = self.find_child(trial_number)
        if existing is not None:
            self.client.update_run(existing, status="RUNNING")
            return existing
        tags = {
            MLFLOW_PARENT_RUN_ID: self.parent_run_id,
            TRIAL_TAG: str(trial_number),
            SWEEP_TAG: sweep,
            MLFLOW_RUN_NAME: f"{sweep}-trial-{trial_number:04d}",
            **self.source_tags,
        }
        run = self.client.create_run(self.experiment_id, tags=tags)
        run_id = run.info.run_id
        self.client.log_batch(
            run_id, params=[Param(k, str(v)) for k, v in {**params, "trial_number": trial_number}.items()]
        )
        self._children[trial_number] = run_id
        return run_id

    def _logged(self, run_id: str) -> set[int]:
        """The epochs a run already holds (read once from MLflow, e.g. after a resume)."""
        if run_id not in self._logged_steps:
            self._logged_steps[run_id] = {m.step for m in self.client.get_metric_history(run_id, VAL_ACCURACY)}
        return self._logged_steps[run_id]

    def buffer_epoch(self, run_id: str, metrics: dict[str, Any]) -> None:
        """Queue one epoch's curves (step = epoch) for the next ``flush``."""
        self._pending.setdefault(run_id, []).append(metrics)

    def flush(self, run_ids: Iterable[str] | None = None) -> None:
        """Write buffered epochs, one batch per run, skipping epochs already logged (a resume)."""
        for run_id in list(run_ids if run_ids is not None else self._pending):
            epochs = self._pending.pop(run_id, [])
            if epochs:
                self.log_epochs(run_id, epochs)

    def log_epochs(self, run_id: str, epochs: Iterable[dict[str, Any]]) -> None:
        """Log epochs not logged yet, in batches of at most 900 values.

        By epoch number, not "after the last one": a branch's live fine-tune epochs can arrive
        before the shared epochs its history carries.
        """
        done = self._logged(run_id)
        fresh = {int(e["epoch"]): e for e in epochs if int(e.get("epoch") or 0) > 0 and int(e["epoch"]) not in done}
        fresh = [fresh[epoch] for epoch in sorted(fresh)]
        if not fresh:
            return
        timestamp = _now()
        batch = [
            Metric(k, float(e[k]), timestamp, int(e["epoch"]))
            for e in fresh
            for k in EPOCH_METRICS
            if _finite(e.get(k))
        ]
        for start in range(0, len(batch), 900):
            self.client.log_batch(run_id, metrics=batch[start : start + 900])
        if int(fresh[-1]["epoch"]) >= max(done, default=0):
            self.client.set_tag(run_id, "phase", str(fresh[-1].get("phase", "")))
        done.update(int(e["epoch"]) for e in fresh)

    def finish(self, run_id: str, result: TrialResult, error_text: str | None = None) -> None:
        """Log final metrics, missing epochs and the per-layer table, tag the status, terminate the run."""
        run = self.client.get_run(run_id)
        if run.info.status != "RUNNING":
            return
        self.flush([run_id])
        if result.history:
            self.log_epochs(run_id, result.history)
        timestamp = _now()
        values = {name: result.metric(name) for name in METRICS} | {"epochs": result.epochs}
        metrics = [Metric(f"{FINAL_PREFIX}{k}", float(v), timestamp, 0) for k, v in values.items() if _finite(v)]
        tags = [RunTag(STATUS_TAG, result.status.value)]
        tags += [RunTag(f"hoyersweep.{k}", str(result.extra[k])) for k in RESOURCE_TAGS if result.extra.get(k)]
        metrics += [
            Metric(k, float(result.extra[k]), timestamp, 0) for k in RESOURCE_METRICS if _finite(result.extra.get(k))
        ]
        for key in (STOPPED_AT_KEY, COHORT_SIZE_KEY, COHORT_INDEX_KEY):  # stopped early at a rung; trained in a cohort
            if result.extra.get(key) is not None:
                tags.append(RunTag(f"hoyersweep.{key}", str(result.extra[key])))
        if result.extra.get(SHARED_RUN_KEY) is not None:  # a branch: the regularized run it shares
            tags.append(RunTag(SHARED_RUN_TAG, str(result.extra[SHARED_RUN_KEY])))
        if result.message:
            tags.append(RunTag(MESSAGE_TAG, result.message[:5000]))
        self.client.log_batch(run_id, metrics=metrics, tags=tags)
        if result.layers:
            buffer = io.StringIO()
            pd.DataFrame(result.layers).to_csv(buffer, index=False)
            self.log_text(run_id, buffer.getvalue(), "layers.csv")
        if error_text:
            self.log_text(run_id, error_text, "error.txt")
        self.client.set_terminated(run_id, status=MLFLOW_STATUS[result.status])

    def log_model(self, run_id: str, model_file: str | Path) -> str:
        """Log a trial's saved model to its run as ``model`` (MLflow's pt2 format); returns ``runs:/<id>/model``.

        pt2 (``torch.export``) rather than pickle: loading runs no pickled code and needs no
        hoyersweep, and the batch dimension stays dynamic.  ``mlflow.pytorch.load_model`` gives a
        ``GraphModule`` holding the pruned weights (zeros included).  ``pip_requirements`` are
        given explicitly: inferring them took 7–10 s per model.  Saved locally, then uploaded with
        the client, so no global MLflow state (tracking URI, active run) is touched.
        """
        import numpy as np
        import torch
        from mlflow.models import infer_signature
        from mlflow.pytorch import save_model

        from trainables.pipeline import load_model

        model, payload = load_model(model_file)
        example = np.zeros((2, *payload["input_shape"]), dtype=np.float32)
        with torch.no_grad():
            signature = infer_signature(example, model(torch.from_numpy(example)).numpy())
        with tempfile.TemporaryDirectory() as directory:
            local = Path(directory) / MODEL_ARTIFACT
            save_model(
                model,
                str(local),
                signature=signature,
                input_example=example,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                serialization_format="pt2",
            )
            self.artifacts(run_id).log_artifacts(str(local), MODEL_ARTIFACT)
        return f"runs:/{run_id}/{MODEL_ARTIFACT}"

    def log_dataset(self, run_id: str, name: str, source: str, digest: str, sizes: dict[str, int]) -> None:
        """Log the trial's data as MLflow inputs: one per split (context train / validation / test), once."""
        if self.client.get_run(run_id).inputs.dataset_inputs:
            return
        inputs = []
        for context, size in sizes.items():
            profile = json.dumps({"num_rows": size, "split": context})
            dataset = Dataset(
                name=f"{name}-{context}", digest=digest, source_type="local", source=source, profile=profile
            )
            inputs.append(DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
        self.client.log_inputs(run_id, datasets=inputs)

    def has_model(self, run_id: str) -> bool:
        return any(f.path == MODEL_ARTIFACT for f in self.artifacts(run_id).list_artifacts())

    def register(self, name: str, run_id: str, alias: str) -> str:
        """Register a run's model under ``name`` and point ``alias`` at it (``models:/<name>@<alias>``).

        Idempotent: a run registered before under ``name`` (a resumed sweep, a second import whose
        knee did not change) keeps its version; only a new run gets a new one."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException:  # registered already (a resumed or re-run sweep)
            pass
        known = [v for v in self.client.search_model_versions(f"run_id = '{run_id}'") if v.name == name]
        if known:
            version = min(known, key=lambda v: int(v.version)).version
        else:
            version = self.client.create_model_version(name, f"runs:/{run_id}/{MODEL_ARTIFACT}", run_id=run_id).version
        self.client.set_registered_model_alias(name, alias, version)
        return f"models:/{name}@{alias}"

    def tag_pareto(self, front: set[int], trial_numbers: Iterable[int]) -> None:
        """Tag every trial's run ``pareto=true`` or ``pareto=false``."""
        for number in trial_numbers:
            run_id = self.find_child(number)
            if run_id is not None:
                self.client.set_tag(run_id, PARETO_TAG, "true" if number in front else "false")


def _now() -> int:
    return int(time.time() * 1000)
