"""Sweep overhead: an N-trial sweep vs the same trials back to back in a plain loop, vs the ideal.

The sweep runs first (random sampler, fixed seed); its trials' exact settings are then run
again in-process, one after another, with the same threads per trial.  Reported:

- ``loop_s``: Σ trial wall time in the plain loop; ``ideal_s`` = loop_s / concurrency;
- ``pool_s``: the same trials in a plain process pool of ``concurrency`` workers, no Ray: what
  this machine really gives for that concurrency (trials slow each other down on 2 cores);
- ``sweep_s``: the sweep's wall time from ``Tuner.fit``'s start to its end (Ray start-up
  excluded, reported apart as ``ray_start_s``);
- overhead per trial = (sweep_s − ideal_s) / N, and the ratio sweep_s / ideal_s;
- ``in_trial_s``: Σ trial wall time measured inside the sweep's trials, and
  ``report_wait_per_trial_s``: time a trial spent blocked in ``tune.report``.

Usage: ``python bench/bench_sweep.py --quick`` (digits, ~1 min) or
``python bench/bench_sweep.py --dataset mnist --data-dir ../shared/data/mnist``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import ray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sweeps.runner import run_sweep  # noqa: E402
from sweeps.spec import parse_spec  # noqa: E402
from trainables import run_trial  # noqa: E402


def sweep_spec(args: argparse.Namespace, seed: int):
    trial = {"epochs": args.epochs, "finetune_epochs": args.finetune_epochs, "batch_size": args.batch_size, "reg": "hs"}
    return parse_spec(
        {
            "name": f"bench_{args.dataset}",
            "model": args.model,
            "dataset": args.dataset,
            "data_dir": args.data_dir,
            "trial": trial,
            "search": {
                "strength": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
                "threshold": {"type": "float", "low": 1e-3, "high": 0.05, "log": True},
            },
            "sampler": {"type": "random", "seed": seed},
            "budget": {"num_samples": args.trials, "max_concurrent_trials": args.concurrency},
            "resources": {"cpus": 1},
            "warm_start": False,
            "checkpoint_interval_s": 0,
        },
        "bench",
    )


def one_repeat(args: argparse.Namespace, seed: int, workdir: Path) -> dict[str, float]:
    spec = sweep_spec(args, seed)
    started = time.perf_counter()
    ray.init(address="local", num_cpus=args.concurrency, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - started
    try:
        began = time.perf_counter()
        outcome = run_sweep(spec, storage=str(workdir / f"rep{seed}"), quiet=True)
        sweep_s = time.perf_counter() - began
    finally:
        ray.shutdown()
    rows = [json.loads(line) for line in (outcome.sweep_dir / "results.jsonl").read_text().splitlines()]
    configs = [row["config"] for row in rows]
    loop_started = time.perf_counter()
    for config in configs:
        run_trial(config)
    loop_s = time.perf_counter() - loop_started
    ideal_s = loop_s / args.concurrency
    pool_started = time.perf_counter()
    with ProcessPoolExecutor(args.concurrency, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(run_trial, configs))
    pool_s = time.perf_counter() - pool_started
    return {
        "ray_start_s": ray_start,
        "sweep_s": sweep_s,
        "loop_s": loop_s,
        "ideal_s": ideal_s,
        "overhead_per_trial_s": (sweep_s - ideal_s) / len(configs),
        "in_trial_s": sum(row["wall_time_s"] for row in rows),
        "report_wait_per_trial_s": sum(row.get("report_wait_s") or 0.0 for row in rows) / len(rows),
        "sweep_over_ideal": sweep_s / ideal_s,
        "sweep_over_loop": sweep_s / loop_s,
        "pool_s": pool_s,
        "sweep_over_pool": sweep_s / pool_s,
        "ray_overhead_per_trial_s": (sweep_s - pool_s) / len(configs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--model", default="lenet300_100")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="8 trials, 2 repeats")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.repeats = 8, 2
    if args.data_dir:
        args.data_dir = str(Path(args.data_dir).resolve())
    with tempfile.TemporaryDirectory() as workdir:
        runs = [one_repeat(args, seed, Path(workdir)) for seed in range(args.repeats)]
    medians = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    print(
        f"\n{args.trials} trials of {args.model} on {args.dataset}, "
        f"{args.concurrency} concurrent, {args.repeats} repeats (medians)\n"
    )
    print("| measure | median |\n| --- | --- |")
    for key, value in medians.items():
        print(f"| {key} | {value:.3f} |")
    print(
        json.dumps(
            {
                "dataset": args.dataset,
                "trials": args.trials,
                "concurrency": args.concurrency,
                "repeats": args.repeats,
                **{k: round(v, 4) for k, v in medians.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
