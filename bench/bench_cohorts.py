"""Benchmark fused cohorts: K trials as one stacked model against the same K trials one per process.

Usage (from the repository root; needs torch and this repository only — no Ray, Optuna or MLflow)::

    # CPU, this machine: digits, the cohort on 2 threads against 2 single-thread processes
    python bench/bench_cohorts.py [--quick] [--dataset digits] [--sizes 1,4,16,64]
    python bench/bench_cohorts.py --dataset mnist --data-dir ../shared/data/mnist --sizes 1,4,16
    # one GPU: the cohort against the better of 1 and 8 trial processes sharing the GPU
    python bench/bench_cohorts.py --device cuda --dataset mnist --data-dir data/mnist \\
        --models lenet300_100,lenet5 --processes 1,8 --sizes 4,16,64 --threads 4

For every model and K, the K trials differ as a sweep's would (strength, threshold, learning
rate; one seed, so the members share each batch).  *Cohort*: ``run_cohort`` in one worker
process with ``--threads`` torch threads.  *Separate*: ``run_trial`` per trial in a pool of P
worker processes (P from ``--processes``; on CPU each gets ``threads / P`` threads, on a GPU
every process shares the one device), trials handed out as workers free up.  Every worker has
loaded torch and run each code path once (a short digits run) before the clock starts; each trial
then loads its data as a sweep's trial does (a cohort once for all its members).  The two
alternate within each repeat and the table shows medians: wall time, trials per hour, training
samples per second (samples × epochs of all phases / wall), the cohort's speed-up over the best
separate run, and the
largest difference in final validation accuracy between a trial trained in the cohort and
alone (equal up to float rounding: see tests/test_cohort.py).

Goals (issue 15): CPU digits ≥ 1.5× the trials per hour of 2 single-thread processes; one GPU
≥ 10× the better of 1 and 8 processes, same final metrics.  Prints a markdown table and one
JSON line (``--json-out`` also writes it to a file).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# --- worker processes -------------------------------------------------------------------------


def _init_worker(threads: int, warmup: dict[str, Any]) -> None:
    """Set the worker's threads and load torch and the training code (one short digits run of each kind,
    on the benchmark's device and model) before any timing; the benchmark's data loads in the first trial."""
    import torch

    torch.set_num_threads(threads)
    from trainables.cohort import run_cohort
    from trainables.pipeline import run_trial

    short = {**warmup, "dataset": "digits", "data_dir": None, "epochs": 1, "finetune_epochs": 0}  # code paths, not data
    run_trial(short)
    run_cohort([short, {**short, "strength": 2 * short.get("strength", 1e-4)}])  # torch.func's first call is slow


def _one_trial(config: dict[str, Any]) -> float:
    from trainables.pipeline import run_trial

    result = run_trial(config)
    return result.val_accuracy


def _cohort(configs: list[dict[str, Any]]) -> list[float]:
    import torch

    from trainables.cohort import run_cohort

    results = run_cohort(configs)
    if configs[0]["device"].startswith("cuda"):
        torch.cuda.synchronize()
    return [r.val_accuracy for r in results]


def _pool(processes: int, threads: int, warmup: dict[str, Any]) -> ProcessPoolExecutor:
    pool = ProcessPoolExecutor(
        processes, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(threads, warmup)
    )
    list(pool.map(_noop, range(processes)))  # every worker started and warmed up
    return pool


def _noop(_: int) -> None:
    return None


# --- the measurement --------------------------------------------------------------------------


def trial_configs(base: dict[str, Any], k: int) -> list[dict[str, Any]]:
    """K trials as a sweep would propose them: λ, threshold and learning rate spread on log scales."""
    configs = []
    for i in range(k):
        u = (i + 0.5) / k
        configs.append(
            {
                **base,
                "strength": 10 ** (-4.5 + 2.0 * u),
                "threshold": 10 ** (-2.3 + 1.0 * ((i * 7919 % k + 0.5) / k)),
                "lr": 10 ** (-3.3 + 0.6 * ((i * 104729 % k + 0.5) / k)),
            }
        )
    return configs


def measure(
    base: dict[str, Any],
    k: int,
    threads: int,
    processes: list[int],
    repeats: int,
    train_size: int,
    separate_trials: int | None = None,
) -> dict[str, Any]:
    """Cohort of ``k`` against separate runs of the same trials (the first ``separate_trials`` of them: a rate)."""
    configs = trial_configs(base, k)
    sample = configs[: separate_trials or k]
    cuda = base["device"].startswith("cuda")
    cohort_pool = _pool(1, threads, base)
    separate_pools = {p: _pool(p, threads if cuda else max(1, threads // p), base) for p in processes}
    times: dict[str, list[float]] = {"cohort": [], **{f"separate-{p}": [] for p in processes}}
    accuracies: dict[str, list[float]] = {}
    try:
        for _ in range(repeats):
            began = time.perf_counter()
            accuracies["cohort"] = cohort_pool.submit(_cohort, configs).result()
            times["cohort"].append(time.perf_counter() - began)
            for p, pool in separate_pools.items():
                began = time.perf_counter()
                accuracies[f"separate-{p}"] = list(pool.map(_one_trial, sample))
                times[f"separate-{p}"].append(time.perf_counter() - began)
    finally:
        cohort_pool.shutdown()
        for pool in separate_pools.values():
            pool.shutdown()
    wall = {name: statistics.median(values) for name, values in times.items()}
    trials = {name: (k if name == "cohort" else len(sample)) for name in wall}
    rate = {name: trials[name] * 3600 / t for name, t in wall.items()}
    best = max((name for name in wall if name != "cohort"), key=rate.get)
    epochs = base["epochs"] + base["finetune_epochs"] + base.get("pretrain_epochs", 0)
    diffs = [abs(a - b) for a, b in zip(accuracies["cohort"], accuracies[best])]
    return {
        "k": k,
        "separate_trials": len(sample),
        "wall_s": wall,
        "trials_per_hour": rate,
        "samples_per_s": {name: trials[name] * epochs * train_size / t for name, t in wall.items()},
        "best_separate": best,
        "speedup": rate["cohort"] / rate[best],
        "max_val_accuracy_diff": max(diffs),
        "repeats": repeats,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits, K = 1 and 4, one repeat: a smoke run")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--models", default="lenet300_100")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="1,4,16,64")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the cohort (CPU: shared by P)")
    parser.add_argument("--processes", default="2", help="separate runs: comma-separated pool sizes, best one counts")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--separate-trials",
        type=int,
        default=None,
        help="run only this many of the K trials separately (their rate is what counts; spares a GPU hours)",
    )
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args(argv)
    sizes = [1, 4] if args.quick else [int(k) for k in args.sizes.split(",")]
    repeats = 1 if args.quick else args.repeats
    processes = [int(p) for p in args.processes.split(",")]

    import torch

    from trainables.data import load_dataset

    data = load_dataset(args.dataset, args.data_dir, device=torch.device("cpu"))
    rows = []
    for model in args.models.split(","):
        base = {
            "dataset": args.dataset,
            "data_dir": args.data_dir,
            "model": model,
            "reg": "hs",
            "epochs": 1 if args.quick else args.epochs,
            "finetune_epochs": 1 if args.quick else args.finetune_epochs,
            "batch_size": args.batch_size,
            "device": args.device,
            "seed": 0,
        }
        for k in sizes:
            row = measure(base, k, args.threads, processes, repeats, len(data.train_y), args.separate_trials)
            row["model"] = model
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"cpu, {args.threads} threads"
    print(
        f"\n{args.dataset}, {device}; epochs {base['epochs']}+{base['finetune_epochs']}, batch {args.batch_size}, "
        f"medians of {repeats}\n"
    )
    print(
        "| model | K | cohort s | best separate (P, trials) s | cohort trials/h | separate trials/h | "
        "cohort samples/s | speed-up | max Δ val acc |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        best = row["best_separate"]
        wall, rate = row["wall_s"], row["trials_per_hour"]
        print(
            f"| {row['model']} | {row['k']} | {wall['cohort']:.2f} | {wall[best]:.2f} "
            f"({best.split('-')[1]}, {row['separate_trials']}) | {rate['cohort']:.0f} | {rate[best]:.0f} | "
            f"{row['samples_per_s']['cohort']:.0f} | {row['speedup']:.2f}× | {row['max_val_accuracy_diff']:.4f} |"
        )
    summary = {"bench": "cohorts", "dataset": args.dataset, "device": device, "rows": rows}
    print(json.dumps(summary))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
