"""Wall time of ``hoyersweep pareto <sweep-folder>`` on a 40-trial sweep, and whether it imports torch.

Writes a realistic sweep folder into a temporary directory (``state.json``, ``spec.yaml`` as the
engine stores it, and ``results.jsonl`` with one ledger row per trial in the recorder's layout:
sampled params, final metrics, the full trial config, per-layer sparsity; a few failed, diverged
and pruned trials, and some below the spec's accuracy floor), then runs the command in fresh
interpreters, two ways:

- ``analysis``: ``python -m analysis.cli pareto DIR`` (the analysis package on its own);
- ``hoyersweep``: ``python -m sweeps.cli pareto DIR`` (what the ``hoyersweep`` script runs).

Each is run once to warm the file cache, then ``--repeats`` times; the median wall time is
reported with the heavy modules (torch, ray, mlflow, optuna) the process held when it ended, and
with ``--importtime`` the slowest top-level imports of one run (``python -X importtime``).
Goal: under 1.5 s on 2 cores, without torch.

Usage: ``python bench/bench_pareto_cli.py [--trials 40] [--repeats 7] [--importtime] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainables.config import TrialConfig  # noqa: E402  (torch-free)
from trainables.contract import RESULTS_FILE, SPEC_FILE, STATE_FILE, Status  # noqa: E402

HEAVY = ("torch", "ray", "mlflow", "optuna", "matplotlib")
GOAL_S = 1.5
COMMANDS = {"analysis": "analysis.cli", "hoyersweep": "sweeps.cli"}
LAYERS = (("fc1.weight", (300, 64)), ("fc2.weight", (100, 300)), ("fc3.weight", (10, 100)))

# Runs a module as ``python -m`` would, then records the heavy modules it left loaded (atexit runs after sys.exit).
PROBE = """
import atexit, json, os, runpy, sys
def _record():
    with open(os.environ["BENCH_PROBE_OUT"], "w") as out:
        json.dump([m for m in {heavy!r} if m in sys.modules], out)
atexit.register(_record)
sys.argv = [{module!r}, *sys.argv[1:]]
runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
"""

SPEC = {
    "name": "bench_cli",
    "model": "lenet300_100",
    "dataset": "digits",
    "data_dir": None,
    "trial": {"epochs": 30, "finetune_epochs": 10, "optimizer": "adam", "lr": 0.001, "batch_size": 64, "seed": 0},
    "search": {
        "strength": {"type": "float", "low": 1.0e-5, "high": 1.0e-2, "log": True},
        "threshold": {"type": "float", "low": 1.0e-3, "high": 0.2, "log": True},
        "reg": {"type": "categorical", "choices": ["hs", "group_hs"]},
    },
    "objectives": [{"metric": "val_accuracy", "mode": "max"}, {"metric": "nonzero_frac", "mode": "min"}],
    "constraints": [{"metric": "val_accuracy", "min": 0.8, "max": None}],
    "sampler": {"type": "tpe", "seed": 0, "n_startup_trials": 8, "population_size": None},
    "budget": {"num_samples": 40, "max_concurrent_trials": 2, "time_budget_s": None},
    "resources": {"cpus": 1.0, "gpus": 0.0},
    "storage": "results",
    "max_failures": 1,
    "checkpoint_interval_s": 30.0,
    "warm_start": True,
}


def _layers(rng: np.random.Generator, keep: float) -> list[dict]:
    rows = []
    for name, (out_features, in_features) in LAYERS:
        numel = out_features * in_features
        nonzero = int(numel * min(1.0, keep * rng.uniform(0.5, 1.5)))
        rows_live = min(out_features, int(out_features * min(1.0, 3 * keep)) + 1)
        cols_live = min(in_features, int(in_features * min(1.0, 3 * keep)) + 1)
        rows.append(
            {
                "name": name,
                "shape": [out_features, in_features],
                "numel": numel,
                "nonzero": nonzero,
                "nonzero_frac": nonzero / numel,
                "rows_total": out_features,
                "rows_live": rows_live,
                "cols_total": in_features,
                "cols_live": cols_live,
                "macs_dense": numel,
                "macs_pruned": nonzero,
            }
        )
    return rows


def ledger_row(number: int, rng: np.random.Generator, name: str) -> dict:
    """One ``results.jsonl`` row as the sweep's recorder writes it."""
    sampled = {
        "strength": float(10 ** rng.uniform(-5, -2)),
        "threshold": float(10 ** rng.uniform(-3, np.log10(0.2))),
        "reg": str(rng.choice(["hs", "group_hs"])),
    }
    statuses = (Status.OK, Status.FAILED, Status.DIVERGED, Status.PRUNED)
    status = statuses[rng.choice(len(statuses), p=[0.85, 0.05, 0.05, 0.05])]
    keep = float(np.clip(0.6 * (sampled["strength"] / 1e-5) ** -0.5 * rng.lognormal(0, 0.3), 0.005, 1.0))
    accuracy = float(np.clip(0.97 - 0.3 * np.exp(-keep / 0.03) - rng.gamma(2.0, 0.004), 0.1, 1.0))
    ok = status in (Status.OK, Status.PRUNED)
    metrics = {
        "val_accuracy": accuracy if ok else None,
        "test_accuracy": accuracy - float(rng.normal(0.005, 0.01)) if ok else None,
        "nonzero_frac": keep if ok else None,
        "flops_frac": keep * 0.98 if ok else None,
        "loss": float(rng.uniform(0.05, 0.5)) if ok else None,
        "val_loss": float(rng.uniform(0.05, 0.5)) if ok else None,
        "epochs": 40 if status is Status.OK else int(rng.integers(1, 40)),
        "wall_time_s": float(rng.uniform(20, 60)),
        "val_accuracy_before_prune": accuracy + 0.01 if ok else None,
        "val_accuracy_after_prune": accuracy - 0.05 if ok else None,
        "resumed_from_epoch": None,
    }
    message = {Status.FAILED: "RuntimeError: worker died", Status.DIVERGED: "loss is nan at epoch 3"}.get(status, "")
    return {
        "sweep": name,
        "trial_number": number,
        "status": status.value,
        "message": message,
        **{f"param.{k}": v for k, v in sampled.items()},
        **metrics,
        "report_wait_s": float(rng.uniform(0, 0.05)),
        "node_id": "f" * 56,
        "driver_run": 1,
        "config": {**TrialConfig().to_dict(), **SPEC["trial"], "val_fraction": 0.2, **sampled},
        "mlflow_run_id": f"{number:032x}",
        "ray_trial_id": f"{number:08x}",
        "finished_at": "2026-01-01T00:00:00+00:00",
        "layers": _layers(rng, keep) if ok else [],
    }


def write_sweep(folder: Path, trials: int, seed: int = 0) -> Path:
    """A finished sweep folder of ``trials`` ledger rows (no MLflow or Optuna store: ``pareto`` reads neither)."""
    rng = np.random.default_rng(seed)
    name = SPEC["name"]
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "name": name,
        "sweep_id": "0badcafe",
        "study_name": f"{name}-0badcafe",
        "problem_hash": "000000000000",
        "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}",
        "parent_run_id": "0" * 32,
        "created": "2026-01-01T00:00:00+00:00",
        "status": "finished",
        "runs": [{"started": "2026-01-01T00:00:00+00:00"}],
        "exhausted": "",
    }
    (folder / STATE_FILE).write_text(json.dumps(state, indent=2))
    (folder / SPEC_FILE).write_text(yaml.safe_dump({**SPEC, "budget": {**SPEC["budget"], "num_samples": trials}}))
    rows = [ledger_row(number, rng, name) for number in range(trials)]
    (folder / RESULTS_FILE).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def run_once(module: str, args: list[str], workdir: Path) -> tuple[float, list[str], str]:
    """(wall seconds, heavy modules loaded, stdout) of one fresh interpreter running ``module args``."""
    probe_out = workdir / "probe.json"
    probe_out.unlink(missing_ok=True)
    env = {**os.environ, "BENCH_PROBE_OUT": str(probe_out), "PYTHONPATH": str(ROOT)}
    code = PROBE.format(heavy=HEAVY, module=module)
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return seconds, json.loads(probe_out.read_text()), done.stdout


def slowest_imports(module: str, args: list[str], top: int = 8) -> list[tuple[str, float]]:
    """The top-level packages with the largest cumulative import time (``-X importtime``), seconds."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", module, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    totals: dict[str, float] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        if cumulative.isdigit() and not name.startswith(" ") and "." not in name:
            totals[name] = totals.get(name, 0.0) + int(cumulative) / 1e6
    return sorted(totals.items(), key=lambda item: -item[1])[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--importtime", action="store_true", help="also list the slowest top-level imports")
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 3
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        sweep = write_sweep(Path(workdir) / SPEC["name"], args.trials)
        cli_args = ["pareto", str(sweep)]
        for label, module in COMMANDS.items():
            try:
                _, _, out = run_once(module, cli_args, Path(workdir))  # warm the file cache
            except RuntimeError as error:
                results[label] = {"module": module, "error": str(error).splitlines()[0]}
                continue
            runs = [run_once(module, cli_args, Path(workdir)) for _ in range(args.repeats)]
            seconds = [s for s, _, _ in runs]
            heavy = sorted({m for _, loaded, _ in runs for m in loaded})
            results[label] = {
                "module": module,
                "median_s": round(statistics.median(seconds), 3),
                "min_s": round(min(seconds), 3),
                "max_s": round(max(seconds), 3),
                "heavy_modules": heavy,
                "torch": "torch" in heavy,
                "front_line": out.splitlines()[0] if out else "",
                "goal_met": statistics.median(seconds) < GOAL_S and "torch" not in heavy,
            }
            if args.importtime:
                results[label]["slowest_imports_s"] = [
                    [name, round(s, 3)] for name, s in slowest_imports(module, cli_args)
                ]
    summary = {
        "bench": "pareto_cli",
        "trials": args.trials,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "goal_s": GOAL_S,
        **results,
    }
    print(f"`pareto` on a {args.trials}-trial sweep folder, {os.cpu_count()} CPUs, median of {args.repeats} runs\n")
    print("| command | median s | min–max s | torch imported | heavy modules loaded |\n|---|---:|---:|---|---|")
    for result in results.values():
        command = f"python -m {result['module']} pareto DIR"
        if "error" in result:
            print(f"| `{command}` | failed: {result['error']} | | | |")
            continue
        span = f"{result['min_s']}–{result['max_s']}"
        heavy = ", ".join(result["heavy_modules"]) or "none"
        print(f"| `{command}` | {result['median_s']} | {span} | {result['torch']} | {heavy} |")
    for label, result in results.items():
        if "slowest_imports_s" in result:
            print(f"\nslowest imports ({label}): " + ", ".join(f"{n} {s}s" for n, s in result["slowest_imports_s"]))
    print()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
