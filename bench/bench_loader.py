"""Results-table loader time for a large MLflow store (default 1 000 trials), and from parquet.

Builds a synthetic sweep in a fresh sqlite MLflow store with the same records a real sweep
writes (``SweepTracker``: a parent run, one child per trial with every TrialConfig param,
final metrics and status tags), then times ``analysis.results.from_mlflow`` and the parquet
round trip.  Usage: ``python bench/bench_loader.py [--trials 1000] [--repeats 3] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.results import from_mlflow, read_parquet, write_parquet  # noqa: E402
from sweeps.tracking import SweepTracker  # noqa: E402
from trainables.config import TrialConfig  # noqa: E402
from trainables.contract import SEARCH_PARAM_PREFIX, Status, TrialResult  # noqa: E402


def build_store(directory: Path, trials: int, seed: int = 0) -> str:
    """A store holding one synthetic sweep of ``trials`` finished trials; returns its URI."""
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    tracker = SweepTracker(uri, "bench", directory / "artifacts")
    search = {f"{SEARCH_PARAM_PREFIX}strength": "{}", f"{SEARCH_PARAM_PREFIX}threshold": "{}"}
    tracker.start_parent(None, "bench", search, {}, "name: bench\n")
    rng = np.random.default_rng(seed)
    for number in range(trials):
        params = {
            **TrialConfig().to_dict(),
            "strength": float(10 ** rng.uniform(-6, -2)),
            "threshold": float(10 ** rng.uniform(-3, -1)),
        }
        run_id = tracker.child(number, "bench", params)
        result = TrialResult(
            Status.OK,
            val_accuracy=float(rng.uniform(0.8, 1)),
            test_accuracy=float(rng.uniform(0.8, 1)),
            nonzero_frac=float(rng.uniform(0, 1)),
            flops_frac=float(rng.uniform(0, 1)),
            loss=0.1,
            val_loss=0.1,
            wall_time_s=1.0,
            epochs=40,
        )
        tracker.finish(run_id, result)
    tracker.end_parent()
    return uri


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="200 trials")
    args = parser.parse_args()
    if args.quick:
        args.trials = 200
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as workdir:
        directory = Path(workdir)
        started = time.perf_counter()
        uri = build_store(directory, args.trials)
        build_s = time.perf_counter() - started
        mlflow_times, parquet_times = [], []
        for _ in range(args.repeats):
            began = time.perf_counter()
            table = from_mlflow(uri, experiment="bench")
            mlflow_times.append(time.perf_counter() - began)
            began = time.perf_counter()
            write_parquet(table, directory / "t.parquet")
            read_parquet(directory / "t.parquet")
            parquet_times.append(time.perf_counter() - began)
        assert len(table) == args.trials
    summary = {
        "trials": args.trials,
        "build_store_s": round(build_s, 2),
        "from_mlflow_s": round(statistics.median(mlflow_times), 3),
        "parquet_round_trip_s": round(statistics.median(parquet_times), 3),
        "repeats": args.repeats,
    }
    print("| measure | median |\n| --- | --- |")
    for key in ("from_mlflow_s", "parquet_round_trip_s", "build_store_s"):
        print(f"| {key} ({args.trials} trials) | {summary[key]} |")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
