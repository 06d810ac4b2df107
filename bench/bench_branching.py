"""Threshold branching: region hypervolume against trained epochs and wall time, K = 1 vs K > 1.

Each configuration is a real sweep of the shipped spec (local Ray, Optuna and MLflow sqlite),
with ``budget.thresholds_per_run`` K and ``budget.branch_mode`` (``proxy`` or ``optuna``), the
same number of results and the same sampler seeds.  From each sweep's ledger, in the order
trials finished:

- trained epochs: a regularized run's dense + regularized epochs count once (at its first
  branch), each branch adds its fine-tuning epochs;
- region hypervolume of the validation front (``spec.region()``: accuracy from the spec's floor
  to 1, nonzero fraction 1 → 1e-3 on a log scale) after each result.

Printed: per configuration and seed, results, epochs, wall time, results per epoch, the final
region hypervolume, and the region hypervolume at the epoch budget every configuration reached
(the smallest total), plus medians over seeds; and one JSON line with the curves.

Usage: ``python bench/bench_branching.py --quick`` (digits, K = 1, 4, 8, both modes, 1 seed, short
trials, ~3 min) or ``python bench/bench_branching.py --seeds 0 1 2`` (digits, the spec's trials),
``python bench/bench_branching.py --spec sweeps/mnist_lenet300.yaml --data-dir ../shared/data/mnist
--ks 1 8 --modes proxy --seeds 0 1 --num-samples 16 --set trial.epochs=8 ...``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.pareto import region_hypervolume  # noqa: E402
from sweeps.runner import run_sweep  # noqa: E402
from sweeps.spec import load_spec  # noqa: E402
from trainables.contract import RESULTS_FILE, read_ledger  # noqa: E402


def curve(sweep_dir: Path, spec, started: float) -> pd.DataFrame:
    """One row per result in finishing order: cumulative epochs, wall seconds, region hypervolume so far."""
    rows = read_ledger(sweep_dir / RESULTS_FILE)
    rows.sort(key=lambda r: r["finished_at"])
    seen_runs: set[str] = set()
    epochs, points = 0, []
    region = spec.region()
    table = pd.DataFrame(rows)
    for index, row in enumerate(rows):
        config = row["config"]
        stopped = row.get("stopped_at_rung")  # early-stopped: its regularized epochs up to the rung, no fine-tuning
        if row["ray_trial_id"] not in seen_runs:  # the shared phase, once per regularized run
            seen_runs.add(row["ray_trial_id"])
            epochs += int(config.get("pretrain_epochs") or 0) + int(stopped or config["epochs"])
        epochs += 0 if stopped else int(config["finetune_epochs"])
        done = table.iloc[: index + 1]
        hv = region_hypervolume(done, region) if region else float("nan")
        points.append({"results": index + 1, "epochs": epochs, "hypervolume": hv})
    frame = pd.DataFrame(points)
    frame["wall_s"] = (
        pd.to_datetime(table["finished_at"]) - pd.Timestamp(started, unit="s", tz="UTC")
    ).dt.total_seconds()
    return frame


def hv_at(frame: pd.DataFrame, epochs: int) -> float:
    """Region hypervolume reached within ``epochs`` trained epochs (0 before the first result)."""
    within = frame[frame["epochs"] <= epochs]
    return float(within["hypervolume"].iloc[-1]) if len(within) else 0.0


def bench_sweep(args: argparse.Namespace, name: str, seed: int, storage: Path, **overrides: object) -> dict:
    """One sweep of ``args.spec`` (``--set``, ``--data-dir``, ``--num-samples`` applied, no warm start):
    its wall time, curve (``curve``) and sweep folder.  Shared by bench_branching and bench_early_stopping."""
    overrides = {
        "budget.num_samples": args.num_samples,
        "sampler.seed": seed,
        "name": name,
        "warm_start": False,
        **({"data_dir": args.data_dir} if args.data_dir else {}),
        **{key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)},
        **overrides,
    }
    spec, _ = load_spec(args.spec, overrides)
    started = time.time()
    outcome = run_sweep(spec, storage=str(storage), quiet=True)
    wall = time.time() - started
    return {
        "seed": seed,
        "wall_s": wall,
        "frame": curve(outcome.sweep_dir, spec, started),
        "sweep_dir": outcome.sweep_dir,
    }


def one_sweep(args: argparse.Namespace, k: int, mode: str, seed: int, storage: Path) -> dict:
    overrides = {"budget.thresholds_per_run": k, "budget.branch_mode": mode}
    run = bench_sweep(args, f"k{k}-{mode}-s{seed}", seed, storage, **overrides)
    return {"k": k, "mode": mode, **{key: run[key] for key in ("seed", "wall_s", "frame")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="sweeps/digits_quick.yaml")
    parser.add_argument("--data-dir")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--modes", nargs="+", default=["proxy", "optuna"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num-samples", type=int, default=40)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="spec overrides")
    parser.add_argument("--quick", action="store_true", help="digits, 1 seed, 24 results of 10+3 epochs")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.num_samples = [0], 24
        args.set += ["trial.epochs=10", "trial.finetune_epochs=3", "trial.batch_size=128"]
    configs = [(1, "none")] + [(k, mode) for k in args.ks if k > 1 for mode in args.modes]
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    runs = []
    try:
        with tempfile.TemporaryDirectory() as storage:
            for seed in args.seeds:  # seeds outermost: every configuration sees the same machine load per seed
                for k, mode in configs:
                    runs.append(one_sweep(args, k, "proxy" if mode == "none" else mode, seed, Path(storage)))
                    runs[-1]["mode"] = mode
    finally:
        ray.shutdown()
    common = min(int(run["frame"]["epochs"].iloc[-1]) for run in runs)
    print(f"\n{args.spec}, {args.num_samples} results per sweep; equal-epoch budget = {common} epochs\n")
    print("| K | mode | seed | results | epochs | wall s | results / 100 epochs | final HV | HV at equal epochs |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    summary = {}
    for run in runs:
        frame = run["frame"]
        epochs = int(frame["epochs"].iloc[-1])
        row = (
            len(frame),
            epochs,
            run["wall_s"],
            100 * len(frame) / epochs,
            frame["hypervolume"].iloc[-1],
            hv_at(frame, common),
        )
        summary.setdefault((run["k"], run["mode"]), []).append(row)
        print(
            f"| {run['k']} | {run['mode']} | {run['seed']} | {row[0]} | {row[1]} | {row[2]:.0f} | {row[3]:.2f} | "
            f"{row[4]:.4f} | {row[5]:.4f} |"
        )
    print("\nmedians over seeds:\n")
    print("| K | mode | results / 100 epochs | × K=1 | final region HV | region HV at equal epochs | wall s |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    base_rate = statistics.median(r[3] for r in summary[(1, "none")])
    for (k, mode), rows in summary.items():
        rate = statistics.median(r[3] for r in rows)
        print(
            f"| {k} | {mode} | {rate:.2f} | {rate / base_rate:.2f} | {statistics.median(r[4] for r in rows):.4f} | "
            f"{statistics.median(r[5] for r in rows):.4f} | {statistics.median(r[2] for r in rows):.0f} |"
        )
    print(
        json.dumps(
            {
                "spec": args.spec,
                "num_samples": args.num_samples,
                "common_epochs": common,
                "runs": [
                    {k: v for k, v in run.items() if k != "frame"} | {"curve": run["frame"].to_dict("list")}
                    for run in runs
                ],
            }
        )
    )


if __name__ == "__main__":
    main()
