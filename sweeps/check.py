"""Check everything a sweep needs before Ray starts: one line ``FILE: field: reason`` on the first problem.

``check_spec`` goes beyond the spec's own validation (``sweeps.spec``): every searched choice
and both ends of every range are built into a full trial configuration; the data is loaded
(files present, readable, well-formed) to learn the input shape; the model is imported, built
for that shape and run on two samples; the device and the resources of one trial are
satisfiable on a local Ray; an http(s) MLflow tracking server answers within a few seconds; the
storage folder is writable.  It creates nothing (a test file is written and removed at once).

Torch loads here (the model must be built), Ray and Optuna do not: ``hoyersweep check`` and the
check that ``run``/``resume`` make answer in a few seconds.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sweeps.spec import CategoricalParam, FloatParam, IntParam, SpecError, SweepSpec
from trainables.config import ConfigError, TrialConfig

TRACKING_TIMEOUT_S = 3.0
"""How long an http(s) MLflow tracking server has to answer the check."""


@dataclass
class CheckSummary:
    """What ``check_spec`` found: enough to say in a few lines what the sweep will do and where."""

    source: str
    spec: SweepSpec
    points: int  # search points built into trial configurations
    space_size: int | None  # configurations in the space when finite (categorical/int only)
    data: str  # e.g. "digits: train 1293, val 324, test 180; input 1x8x8, 10 classes"
    model: str  # e.g. "lenet300_100: 26,110 parameters (26,000 prunable)"
    device: str
    resources: str
    tracking: str
    storage: str
    notes: list[str] = field(default_factory=list)

    def search_text(self) -> str:
        parts = []
        for name, param in self.spec.search.items():
            if isinstance(param, CategoricalParam):
                parts.append(f"{name} in [{', '.join(str(c) for c in param.choices)}]")
            else:
                scale = " log" if param.log else ""
                parts.append(f"{name} {param.type} [{param.low:g}, {param.high:g}]{scale}")
        return "; ".join(parts)

    def branching_text(self) -> str:
        """How trials share regularized runs, e.g. ``, as 16 regularized runs × 8 thresholds (proxy, within
        nonzero_frac ≤ 0.02, one under nonzero_frac 0.008, 0.0036)``; empty when runs do not branch."""
        budget = self.spec.budget
        if budget.thresholds_per_run <= 1:
            return ""
        runs = -(-budget.num_samples // budget.thresholds_per_run)
        caps = self.spec.sparsity_caps() if budget.branch_mode == "proxy" else {}
        within = ", within " + ", ".join(f"{metric} ≤ {cap:g}" for metric, cap in caps.items()) if caps else ""
        under = (
            ", one under nonzero_frac " + ", ".join(f"{u:g}" for u in budget.branch_under)
            if budget.branch_under
            else ""
        )
        how = f"{budget.branch_mode}{within}{under}"
        return f", as {runs} regularized runs × {budget.thresholds_per_run} thresholds ({how})"

    def lines(self) -> list[str]:
        """The summary ``hoyersweep check`` prints."""
        spec = self.spec
        fixed = " ".join(f"{k}={v}" for k, v in spec.trial.items()) or "(defaults)"
        objectives = ", ".join(f"{o.metric} ({o.mode})" for o in spec.objectives)
        constraints = ", ".join(c.to_constraint().describe() for c in spec.constraints) or "none"
        space = f"; the space holds {self.space_size} configurations" if self.space_size is not None else ""
        budget = spec.budget
        trials = (
            f"{budget.num_samples} trials, {budget.max_concurrent_trials} at a time"
            + (f" in cohorts of {budget.cohort_size}" if budget.cohort_size > 1 else "")
            + self.branching_text()
            + (f", at most {budget.time_budget_s:g} s" if budget.time_budget_s else "")
        )
        lines = [
            f"{self.source}: OK",
            f"  sweep       {spec.name}: {spec.model} on {spec.dataset}, {trials}; sampler {spec.sampler.type}"
            f" (seed {spec.sampler.seed})",
            f"  trial       {fixed}",
            f"  search      {self.search_text()} ({self.points} search points built{space})",
            f"  objectives  {objectives}; constraints: {constraints}",
            f"  data        {self.data}",
            f"  model       {self.model}",
            f"  device      {self.device}",
            f"  resources   {self.resources}",
            f"  tracking    {self.tracking}",
            f"  storage     {self.storage}",
        ]
        return lines + [f"  note        {note}" for note in self.notes]

    def one_line(self) -> str:
        """The line ``run``/``resume`` print after their check."""
        data, device = self.data.split(";")[0], self.device.split(" ")[0]
        cohorts = self.spec.budget.cohort_size
        return (
            f"checked {self.source}: {self.spec.model} on {data}, device {device}, "
            f"{self.spec.budget.num_samples} trials{f' in cohorts of {cohorts}' if cohorts > 1 else ''}, "
            f"{self.points} search points OK"
        )


def _fail(source: str, where: str, reason: Any) -> SpecError:
    return SpecError(f"{source}: {where}: {' '.join(str(reason).split())}")


# --- the search space ------------------------------------------------------------------------


def search_points(spec: SweepSpec) -> list[tuple[str, dict[str, Any]]]:
    """Every categorical choice and both ends of every range, the other parameters at their example values.

    Each comes with the field that names it (``search.lr.choices[1]``, ``search.strength.high``).
    """
    base = spec.example_params()
    points: list[tuple[str, dict[str, Any]]] = []
    for name, param in spec.search.items():
        if isinstance(param, CategoricalParam):
            for index, choice in enumerate(param.choices):
                points.append((f"search.{name}.choices[{index}]", {**base, name: choice}))
        else:
            points.append((f"search.{name}.low", {**base, name: param.low}))
            points.append((f"search.{name}.high", {**base, name: param.high}))
    return points


def space_size(spec: SweepSpec) -> int | None:
    """How many configurations the space holds, or None when a float range makes it unbounded."""
    size = 1
    for param in spec.search.values():
        if isinstance(param, FloatParam):
            return None
        size *= len(param.choices) if isinstance(param, CategoricalParam) else _int_range_size(param)
    return size


def _int_range_size(param: IntParam) -> int:
    return param.high - param.low + 1


def build_configs(spec: SweepSpec, source: str) -> list[tuple[str, TrialConfig]]:
    """The trial configuration of every search point; a SpecError naming the point's field otherwise."""
    configs = []
    for where, params in search_points(spec):
        try:
            configs.append((where, spec.trial_config(params)))
        except ConfigError as error:
            raise _fail(source, where, error) from None
    return configs


# --- data and model --------------------------------------------------------------------------


def check_data(spec: SweepSpec, source: str, configs: list[tuple[str, TrialConfig]]) -> tuple[Any, str]:
    """Load the data once per distinct split (val_fraction, split_seed); returns the first splits and a summary."""
    from trainables.data import load_dataset

    loaded: dict[tuple[float, int], Any] = {}
    for where, config in configs:
        key = (config.val_fraction, config.split_seed)
        if key in loaded:
            continue
        field_name = "data_dir" if spec.dataset != "digits" else "dataset"
        try:
            loaded[key] = load_dataset(
                spec.dataset, spec.data_dir, val_fraction=config.val_fraction, split_seed=config.split_seed
            )
        except ValueError as error:  # DataError (files) or an empty split (val_fraction)
            if "val_fraction" in str(error) and "val_fraction" not in where:
                where = "trial.val_fraction"
            raise _fail(source, where if "val_fraction" in str(error) else field_name, error) from None
        except OSError as error:
            raise _fail(source, field_name, error) from None
    data = next(iter(loaded.values()))
    sizes = ", ".join(f"{part} {count}" for part, count in data.sizes.items())
    shape = "x".join(str(d) for d in data.input_shape)
    folder = f" from {spec.data_dir}" if spec.data_dir and spec.dataset != "digits" else ""
    return data, f"{spec.dataset}{folder}: {sizes}; input {shape}, {data.num_classes} classes"


def check_model(spec: SweepSpec, source: str, data: Any, configs: list[tuple[str, TrialConfig]]) -> str:
    """Import and build the model for the data, run two samples through it and each searched regularizer."""
    import torch

    from trainables.models import build_model
    from trainables.pruning import output_positions
    from trainables.regularizers import model_regularization, prunable_weights

    shape, classes = tuple(data.input_shape), data.num_classes
    what = f"{spec.model!r} for input {'x'.join(map(str, shape))} and {classes} classes"
    try:
        torch.manual_seed(0)
        model = build_model(spec.model, shape, classes)
        model.eval()
        with torch.no_grad():
            output_positions(model, shape)
            out = model(data.val_x[:2])
    except Exception as error:  # noqa: BLE001 - a user's model may fail in any way; say how, in one line
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        if isinstance(error, ValueError) and spec.model in message:  # build_model's own: unknown, not importable
            raise _fail(source, "model", message) from None
        raise _fail(source, "model", f"{what}: {type(error).__name__}: {message}") from None
    out_shape = tuple(getattr(out, "shape", ()))
    if out_shape != (min(2, len(data.val_x)), classes):
        shown = out_shape if out_shape else type(out).__name__
        raise _fail(source, "model", f"{what} returns {shown}, need outputs of shape (batch, {classes})")
    prunable = sum(getattr(module_, name).numel() for _, module_, name in prunable_weights(model))
    if not prunable:
        raise _fail(source, "model", f"{what} has no Linear or Conv layer to regularize and prune")
    buffers = [name for name, _ in model.named_buffers()]
    if buffers and spec.budget.cohort_size > 1:
        raise _fail(
            source,
            "budget.cohort_size",
            f"{spec.model!r} keeps buffers ({', '.join(buffers[:2])}, …: batch norm); cohorts train models "
            "without them (cohort_size: 1 trains it)",
        )
    seen = set()
    for where, config in configs:
        key = (config.reg, config.include_bias)
        if key in seen:
            continue
        seen.add(key)
        try:
            with torch.no_grad():
                value = float(model_regularization(model, config.reg, include_bias=config.include_bias))
        except Exception as error:  # noqa: BLE001
            raise _fail(source, where, f"regularizer {config.reg!r} on {spec.model!r}: {error}") from None
        if not math.isfinite(value):
            raise _fail(source, where, f"regularizer {config.reg!r} on {spec.model!r} is {value}")
    total = sum(p.numel() for p in model.parameters())
    text = f"{spec.model}: {total:,} parameters ({prunable:,} prunable)"
    if spec.budget.cohort_size > 1:
        from trainables.cohort import member_memory

        rows = spec.budget.cohort_size * spec.budget.thresholds_per_run
        need = member_memory(configs[0][1], data) * rows
        text += (
            f"; a cohort of {spec.budget.cohort_size} ({rows} rows after the branch point) needs about "
            f"{need / 2**20:,.0f} MiB on its device (one that has less trains it in chunks)"
        )
    return text


def check_checkpoint(configs: list[tuple[str, TrialConfig]], source: str) -> None:
    for _, config in configs[:1]:
        if config.init_checkpoint and not Path(config.init_checkpoint).expanduser().is_file():
            raise _fail(source, "trial.init_checkpoint", f"{config.init_checkpoint}: no such file")


# --- device and resources ----------------------------------------------------------------------


def _ray_resources() -> dict[str, float] | None:
    """The resources of an already initialised Ray (this process), or None when Ray is not running here."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    return {
        "CPU": max((node.get("CPU", 0.0) for node in nodes), default=0.0),
        "GPU": max((node.get("GPU", 0.0) for node in nodes), default=0.0),
    }


def check_device_and_resources(
    spec: SweepSpec,
    source: str,
    config: TrialConfig,
    *,
    address: str | None,
    num_cpus: int | None,
    num_gpus: int | None,
) -> tuple[str, str, list[str]]:
    """The device a trial will use and the Ray resources it asks for; a SpecError when they cannot be met."""
    import torch

    from trainables.pipeline import resolve_device

    notes: list[str] = []
    cpus, gpus = spec.resources.cpus, spec.resources.gpus
    device = config.device
    cluster = address or os.environ.get("RAY_ADDRESS")
    if device.startswith("cuda") and gpus == 0:
        raise _fail(
            source, "trial.device", f"{device} needs resources.gpus > 0 (Ray gives a GPU only to trials that ask)"
        )
    if device.startswith("cuda:") and gpus > 0:
        index = int(device.partition(":")[2] or 0)
        if index >= math.ceil(gpus):
            raise _fail(
                source,
                "trial.device",
                f"{device}: a trial sees only the {math.ceil(gpus)} GPU(s) Ray gives it (cuda:0..); use cuda or auto",
            )
    running = _ray_resources()
    if cluster and running is None:
        resolved = f"{device} (on the cluster's workers; not checked here)"
        notes.append(f"cluster {cluster}: resources are checked when the sweep connects")
        return resolved, f"{cpus:g} CPU, {gpus:g} GPU per trial", notes
    if not cluster:
        try:
            resolved_device = resolve_device(device)
        except ConfigError as error:
            raise _fail(source, "trial.device", error) from None
        if resolved_device.type == "mps" and not torch.backends.mps.is_available():
            raise _fail(source, "trial.device", f"device {device!r} asked for but MPS is not available")
        if resolved_device.type == "cuda" and resolved_device.index is not None:
            if resolved_device.index >= torch.cuda.device_count():
                raise _fail(source, "trial.device", f"{device}: this machine has {torch.cuda.device_count()} GPU(s)")
        resolved = f"{resolved_device}" + (" (auto)" if device == "auto" else "")
    else:
        resolved = f"{device} (on the cluster's workers)"
    if running is not None:
        have_cpus, have_gpus, where = running["CPU"], running["GPU"], "the running Ray's largest node"
    else:
        have_cpus = float(num_cpus if num_cpus is not None else os.cpu_count() or 1)
        have_gpus = float(num_gpus if num_gpus is not None else torch.cuda.device_count())
        where = "the local Ray (no --address)"
    for setting, unit, need, have in (
        ("resources.gpus", "GPU", gpus, have_gpus),
        ("resources.cpus", "CPU", cpus, have_cpus),
    ):
        if need <= have:
            continue
        reason = f"{need:g} {unit} per trial, but {where} has {have:g}"
        if not cluster:
            raise _fail(source, setting, f"{reason}; a trial would never start")
        notes.append(f"trials wait for the autoscaler to add a node with {need:g} {unit} ({reason})")
    if device == "cpu" and gpus > 0:
        notes.append(f"device cpu with resources.gpus {gpus:g}: trials hold a GPU they do not use")
    unit = f"cohort of {spec.budget.cohort_size}" if spec.budget.cohort_size > 1 else "trial"
    resources = f"{cpus:g} CPU, {gpus:g} GPU per {unit}; {where}: {have_cpus:g} CPU, {have_gpus:g} GPU"
    return resolved, resources, notes


# --- tracking and storage ----------------------------------------------------------------------


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_folder(path: Path, source: str, where: str) -> str:
    """``path`` is a writable folder, or one that can be created; creates nothing (a test file is removed)."""
    existing = _nearest_existing(path.expanduser().absolute())
    if not existing.is_dir():
        raise _fail(source, where, f"{path}: {existing} is a file, not a folder")
    try:
        handle, name = tempfile.mkstemp(dir=existing, prefix=".hoyersweep-check-")
        os.close(handle)
        os.unlink(name)
    except OSError as error:
        raise _fail(source, where, f"{path}: cannot write in {existing}: {error.strerror or error}") from None
    return f"{path} (writable)" if existing == path.expanduser().absolute() else f"{path} (will be created)"


def check_tracking_uri(uri: str | None, source: str, where: str = "--tracking-uri") -> str:
    """An http(s) server answers within ``TRACKING_TIMEOUT_S``; a sqlite or file store's folder is writable."""
    if not uri:
        return "sqlite in the sweep folder"
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        if not parsed.hostname:
            raise _fail(source, where, f"{uri}: no host in the URI")
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=TRACKING_TIMEOUT_S):
                pass
        except urllib.error.HTTPError:
            pass  # something answered: the server is there (MLflow's client will say more)
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            raise _fail(
                source, where, f"{uri}: no MLflow server answers within {TRACKING_TIMEOUT_S:g} s ({reason})"
            ) from None
        return f"{uri} (answers)"
    if parsed.scheme == "sqlite":
        database = uri.split(":///", 1)[1] if ":///" in uri else ""
        if not database or database == ":memory:":
            return f"{uri} (not checked)"
        check_writable_folder(Path(database).parent, source, f"{where} {uri}")
        return f"{uri} (folder writable)"
    if parsed.scheme in ("", "file"):
        folder = Path(parsed.path if parsed.scheme == "file" else uri)
        check_writable_folder(folder, source, f"{where} {uri}")
        return f"{uri} (folder writable)"
    return f"{uri} (not checked)"


# --- all of it -----------------------------------------------------------------------------------


def check_spec(
    spec: SweepSpec,
    source: str,
    *,
    tracking_uri: str | None = None,
    tracking_field: str = "--tracking-uri",
    storage: str | None = None,
    sweep_dir: Path | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
) -> CheckSummary:
    """Check everything a sweep of ``spec`` needs; a one-line ``SpecError`` (``source: field: reason``) otherwise.

    ``storage``: the results folder a new sweep goes in (default the spec's); ``sweep_dir``: the
    folder of a sweep being resumed (checked instead of ``storage``).  ``address``: a Ray cluster
    (then the local device is not checked, and cluster resources only when Ray is already connected).
    """
    configs = build_configs(spec, source)
    check_checkpoint(configs, source)
    device, resources, notes = check_device_and_resources(
        spec, source, configs[0][1], address=address, num_cpus=num_cpus, num_gpus=num_gpus
    )
    if sweep_dir is not None:
        storage_text = check_writable_folder(Path(sweep_dir), source, "sweep folder")
    else:
        storage_text = check_writable_folder(Path(storage or spec.storage), source, "storage")
    tracking = check_tracking_uri(tracking_uri, source, tracking_field)
    data, data_text = check_data(spec, source, configs)
    model_text = check_model(spec, source, data, configs)
    size = space_size(spec)
    if size is not None and size < spec.budget.num_samples:
        notes.append(f"the space holds {size} configurations: the sweep ends early, before {spec.budget.num_samples}")
    if spec.dataset == "digits" and spec.data_dir:
        notes.append("digits is embedded: data_dir is not used")
    return CheckSummary(
        source=source,
        spec=spec,
        points=len(configs),
        space_size=size,
        data=data_text,
        model=model_text,
        device=device,
        resources=resources,
        tracking=tracking,
        storage=storage_text,
        notes=notes,
    )
