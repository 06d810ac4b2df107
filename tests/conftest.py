"""Shared fixtures: one real local Ray for the in-process sweep tests."""

import os
import subprocess
import sys
from pathlib import Path

import pytest


def bench_module(name: str):
    """A bench/ script as a module (bench/ is scripts, not a package); registered in ``sys.modules``,
    where dataclasses look their module up."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def local_ray():
    """A real local Ray of 2 CPUs (always address="local": an address-less init may join another cluster)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def digits_sweep(local_ray, tmp_path_factory):
    """One small real digits sweep (6 trials, 2+1 epochs), shared by the tests that only read it."""
    from sweeps.runner import run_sweep
    from sweeps.spec import load_spec

    spec, _ = load_spec(
        "sweeps/digits_quick.yaml",
        {"budget.num_samples": 6, "trial.epochs": 2, "trial.finetune_epochs": 1, "trial.batch_size": 256},
    )
    return run_sweep(spec, storage=str(tmp_path_factory.mktemp("sweeps")), quiet=True)


def session_pids(sid: int) -> list[int]:
    """The live (not zombie) processes of session ``sid`` (an interrupted or killed driver started its own)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            text = Path(f"/proc/{entry}/stat").read_text() if entry.isdigit() else ""
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split() if text else []
        if fields and int(fields[3]) == sid and fields[0] not in "ZXx":
            pids.append(int(entry))
    return pids


def resume_in_subprocess(sweep_dir: Path) -> subprocess.CompletedProcess:
    """``hoyersweep resume <sweep_dir>`` as a user runs it: a fresh interpreter, 2 CPUs, from the project root."""
    return subprocess.run(
        [sys.executable, "-m", "sweeps.cli", "resume", str(sweep_dir), "--num-cpus", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )


# A cohort in which members that do not learn (lr 1e-9: proxy accuracy near chance) are dominated at
# rung 1 by a recorded point (accuracy 0.5, nothing left), so MO-ASHA must stop them there; the first
# member that learns is on the proxy front whatever the order, so it goes on to the end.
IDLE_MEMBERS_MOASHA_SPEC = {
    "name": "cohort_moasha",
    "trial": {"epochs": 2, "finetune_epochs": 1, "batch_size": 64, "threshold": 0.02, "val_fraction": 0.2},
    "search": {
        "lr": {"type": "categorical", "choices": [0.01, 1.0e-9]},
        "seed": {"type": "categorical", "choices": [0, 1]},
    },
    "sampler": {"type": "random", "seed": 0},
    "budget": {"num_samples": 4, "max_concurrent_trials": 1, "cohort_size": 4},
    "scheduler": {"type": "moasha", "grace_epochs": 1, "reduction_factor": 10},
}
SEEDED_RUNG = {"1": {"1000000": [[-0.5, 0.0], False]}}  # (proxy accuracy, proxy nonzero), minimisation form


def check_idle_members_pruned(rows: dict[int, dict]) -> set[int]:
    """The pruned trials of an ``IDLE_MEMBERS_MOASHA_SPEC`` sweep, after checking what its ledger must hold."""
    pruned = {n for n, row in rows.items() if row["status"] == "pruned"}
    idle = {n for n, row in rows.items() if row["param.lr"] < 1e-6}
    assert len(rows) == 4 and idle and idle <= pruned and len(pruned) < 4, rows  # ranked out, a cohort-mate went on
    for number, row in rows.items():
        if number in pruned:
            assert row["stopped_at_rung"] == 1 and row["epochs"] == 1
        else:
            assert row["status"] == "ok" and row["epochs"] == 3 and row["stopped_at_rung"] is None
    return pruned
