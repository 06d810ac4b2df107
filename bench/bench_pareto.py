"""Benchmark analysis.pareto on synthetic sweep results.

Usage: python bench/bench_pareto.py [--rows 100000] [--rows-3d 5000] [--repeats 5] [--seed 0] [--quick]

Prints a markdown table of median wall times and one JSON line.  Goal: the
2-objective front of 100 000 rows in well under 1 s.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.pareto import (  # noqa: E402
    DEFAULT_OBJECTIVES,
    hypervolume,
    hypervolume_history,
    nondominated_mask,
    pareto_front,
    parse_objectives,
)
from trainables.contract import RESULT_STATUSES  # noqa: E402


def synthetic_trials(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Sweep-like trials: accuracy falls as the model gets sparser; some failures and NaNs."""
    nonzero = rng.uniform(0.005, 1.0, n)
    acc = 0.95 - 0.25 * np.exp(-8 * nonzero) - rng.gamma(2.0, 0.01, n)
    acc = np.round(acc, 4)  # metric resolution -> many ties
    acc[rng.random(n) < 0.01] = np.nan
    status = rng.choice(
        [s.value for s in RESULT_STATUSES], n, p=[0.9, 0.04, 0.03, 0.03]
    )  # ok, failed, diverged, pruned
    return pd.DataFrame(
        {
            "trial_number": np.arange(n),
            "regularizer": rng.choice(["hoyer", "hoyer_square", "l1"], n),
            "val_accuracy": acc,
            "nonzero_frac": np.round(nonzero, 4),
            "train_seconds": rng.lognormal(5.0, 0.5, n),
            "status": status,
        }
    )


def simplex_points(n: int, rng: np.random.Generator) -> np.ndarray:
    """Worst case for the k >= 3 path: every point is non-dominated (x + y + z = 1)."""
    return rng.dirichlet(np.ones(3), n)


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000, help="rows for the 2-objective benchmarks")
    ap.add_argument("--rows-3d", type=int, default=5_000, help="rows for the 3-objective benchmarks")
    ap.add_argument("--history-rows", type=int, default=2_000, help="trials for hypervolume_history")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="3 repeats, 1 000 3-objective rows (a few seconds; same 100 000-row 2-D case)",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.rows_3d = 3, min(args.rows_3d, 1_000)

    rng = np.random.default_rng(args.seed)
    df2 = synthetic_trials(args.rows, rng)
    df3 = synthetic_trials(args.rows_3d, rng)
    obj3 = parse_objectives("val_accuracy:max,nonzero_frac:min,train_seconds:min")
    values2 = df2[["val_accuracy", "nonzero_frac"]].to_numpy()
    simplex = simplex_points(args.rows_3d, rng)
    front2 = pareto_front(df2)
    front3 = pareto_front(df3, obj3)
    front3_vals = front3[[o.name for o in obj3]].to_numpy()
    ref3 = [0.0, 1.0, float(df3["train_seconds"].max())]
    hist_df = df2.iloc[: args.history_rows]

    cases: list[tuple[str, int, Callable[[], object]]] = [
        ("pareto_front, 2 obj (DataFrame, status filter)", args.rows, lambda: pareto_front(df2)),
        ("nondominated_mask, 2 obj (ndarray)", args.rows, lambda: nondominated_mask(values2, ["max", "min"])),
        ("pareto_front, 2 obj, by=regularizer", args.rows, lambda: pareto_front(df2, by="regularizer")),
        ("pareto_front, 3 obj", args.rows_3d, lambda: pareto_front(df3, obj3)),
        ("nondominated_mask, 3 obj, all on front", args.rows_3d, lambda: nondominated_mask(simplex)),
        (
            f"hypervolume 2-D ({len(front2)} front pts)",
            len(front2),
            lambda: hypervolume(front2[["val_accuracy", "nonzero_frac"]].to_numpy(), [0.0, 1.0], ["max", "min"]),
        ),
        (
            f"hypervolume 3-D ({len(front3)} front pts)",
            len(front3),
            lambda: hypervolume(front3_vals, ref3, ["max", "min", "min"]),
        ),
        (
            "hypervolume_history, 2 obj",
            len(hist_df),
            lambda: hypervolume_history(hist_df, DEFAULT_OBJECTIVES, [0.0, 1.0]),
        ),
    ]

    results = []
    for name, n, fn in cases:
        results.append({"case": name, "rows": n, "median_s": median_seconds(fn, args.repeats)})

    print(
        f"python {platform.python_version()}, numpy {np.__version__}, pandas {pd.__version__}, "
        f"repeats={args.repeats}, front sizes: 2-obj {len(front2)}, 3-obj {len(front3)}"
    )
    print()
    print("| case | rows | median ms |")
    print("|---|---:|---:|")
    for r in results:
        print(f"| {r['case']} | {r['rows']} | {r['median_s'] * 1e3:.1f} |")
    print()
    goal = results[0]["median_s"] < 1.0
    print(
        json.dumps(
            {
                "bench": "pareto",
                "rows": args.rows,
                "rows_3d": args.rows_3d,
                "repeats": args.repeats,
                "front2_size": len(front2),
                "front3_size": len(front3),
                "median_ms": {r["case"]: round(r["median_s"] * 1e3, 3) for r in results},
                "goal_2obj_under_1s": goal,
            }
        )
    )
    return 0 if goal else 1


if __name__ == "__main__":
    raise SystemExit(main())
