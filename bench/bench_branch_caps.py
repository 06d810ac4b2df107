"""Proxy branches within the sweep's region: what it buys when the same regularized run branches twice.

A sweep's ``max`` constraints on ``nonzero_frac`` / ``flops_frac`` and its ``hypervolume:`` region
tell the prune-now proxy where results can count (``trainables.branching.select_thresholds``:
``caps``, the most a result may keep, and ``floor``, the nonzero fraction below which sparser counts
no more).  This measures that rule alone: each regularized run (digits' LeNet-300-100 by default,
HS at each ``--strengths`` and ``--seeds``) is trained once; its branch point (``run_branches(...,
branch_point=...)``) is then branched into ``--k`` thresholds picked by the proxy over 32
log-spaced thresholds of ``--grid`` twice, ``uncapped`` (the proxy without a region) and
``capped`` (``--cap`` and ``--floor``), each branch pruned and fine-tuned.  The shared phase is
bit-identical between the two, so every difference is the choice of thresholds.  Per run and rule:

- ``within``: branches whose (exact) sparsity meets the cap, of ``k``;
- ``best val``: the best validation accuracy among them (what a sweep would choose under the cap),
  test accuracy beside it; ``—`` when no branch met the cap.

Printed: a markdown table and one JSON line.  Torch only (no Ray, Optuna or MLflow).

Usage: ``python bench/bench_branch_caps.py --quick`` (9 + 3 epochs, 2 strengths, 1 seed, ~30 s) or
``python bench/bench_branch_caps.py`` (30 + 10 epochs, 3 strengths × 3 seeds, a few minutes).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_proxy import TRIAL as PROXY_TRIAL  # noqa: E402
from trainables.branching import ProxyChoice, run_branches, threshold_grid  # noqa: E402
from trainables.contract import FLOPS_FRAC, NONZERO_FRAC, SPARSITY_FRACTIONS  # noqa: E402

TRIAL = dict(PROXY_TRIAL, reg="hs")  # bench_proxy's digits trial settings, HS only


def branch_twice(
    config: dict[str, Any], k: int, caps: dict[str, float], floor: float | None, grid: tuple[float, ...], folder: Path
) -> dict[str, list[dict]]:
    """The run's ``k`` proxy branches without and with the region (``caps``, ``floor``), from one shared phase."""
    point = folder / f"point-{config['seed']}-{config['strength']:g}.pt"
    rows: dict[str, list[dict]] = {}
    for rule, choice in (
        ("uncapped", ProxyChoice(k=k, grid=grid)),
        ("capped", ProxyChoice(k=k, grid=grid, caps=caps, floor=floor)),
    ):
        chosen: list[float] = []

        def chooser(run: Any, choice: ProxyChoice = choice, chosen: list[float] = chosen) -> list[dict[str, Any]]:
            branches = choice(run)
            chosen.extend(branch["threshold"] for branch in branches)
            return branches

        chooser.track = choice.track  # type: ignore[attr-defined]
        results = run_branches(config, chooser, branch_point=point)
        rows[rule] = [
            {
                "threshold": threshold,
                "status": result.status.value,
                "val_accuracy": result.val_accuracy,
                "test_accuracy": result.test_accuracy,
                NONZERO_FRAC: result.nonzero_frac,
                FLOPS_FRAC: result.flops_frac,
                "val_accuracy_after_prune": result.val_accuracy_after_prune,
            }
            for threshold, result in zip(chosen, results)
        ]
    return rows


def within(rows: list[dict], caps: dict[str, float]) -> list[dict]:
    return [r for r in rows if all(r[m] <= cap for m, cap in caps.items()) and math.isfinite(r["val_accuracy"])]


def best(rows: list[dict]) -> dict | None:
    return max(rows, key=lambda r: r["val_accuracy"], default=None)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f} %"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="9 + 3 epochs, strengths 3e-4 and 3e-3, seed 0")
    parser.add_argument("--strengths", type=float, nargs="+", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--finetune-epochs", type=int, default=None)
    parser.add_argument("--k", type=int, default=4, help="branches per run (the sweep's thresholds_per_run)")
    parser.add_argument("--cap-metric", choices=SPARSITY_FRACTIONS, default=NONZERO_FRAC)
    parser.add_argument("--cap", type=float, default=0.05, help="the most --cap-metric a result may keep")
    parser.add_argument(
        "--floor", type=float, default=1e-3, help="nonzero fraction below which sparser counts no more (the region's)"
    )
    parser.add_argument(
        "--grid",
        type=float,
        nargs=2,
        default=(1e-3, 0.2),
        metavar=("LOW", "HIGH"),
        help="the searched threshold range whose 32 log-spaced points the proxy evaluates (digits_quick.yaml's)",
    )
    args = parser.parse_args(argv)
    strengths = args.strengths or ([3e-4, 3e-3] if args.quick else [3e-4, 1e-3, 3e-3])
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    epochs = args.epochs or (9 if args.quick else 30)
    finetune = args.finetune_epochs if args.finetune_epochs is not None else (3 if args.quick else 10)
    caps = {args.cap_metric: args.cap}
    grid = tuple(threshold_grid(args.grid[0], args.grid[1], 32))
    runs = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for seed in seeds:
            for strength in strengths:
                config = dict(TRIAL, seed=seed, strength=strength, threshold=grid[0])
                config.update(epochs=epochs, finetune_epochs=finetune)
                rows = branch_twice(config, args.k, caps, args.floor, grid, Path(folder))
                runs.append({"seed": seed, "strength": strength, **rows})
    elapsed = time.perf_counter() - started

    print(
        f"{args.k} proxy branches per run over thresholds {args.grid[0]:g}…{args.grid[1]:g}; capped: "
        f"{args.cap_metric} ≤ {args.cap:g}, nonzero floor {args.floor:g}; {epochs} + {finetune} epochs\n"
    )
    print(
        "| seed | strength | within the cap, uncapped | within, capped | best val under the cap, uncapped (test) "
        "| capped (test) |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    gains = []
    for run in runs:
        picks = {rule: best(within(run[rule], caps)) for rule in ("uncapped", "capped")}
        cells = [f"{_pct(p['val_accuracy'])} ({_pct(p['test_accuracy'])})" if p else "—" for p in picks.values()]
        counts = [f"{len(within(run[rule], caps))} / {len(run[rule])}" for rule in ("uncapped", "capped")]
        print(f"| {run['seed']} | {run['strength']:g} | {counts[0]} | {counts[1]} | {cells[0]} | {cells[1]} |")
        if picks["capped"] is not None:
            gains.append(picks["capped"]["val_accuracy"] - (picks["uncapped"] or {"val_accuracy": 0.0})["val_accuracy"])
    total = {rule: sum(len(within(run[rule], caps)) for run in runs) for rule in ("uncapped", "capped")}
    branches = sum(len(run["uncapped"]) for run in runs)
    better, worse = sum(g > 0 for g in gains), sum(g < 0 for g in gains)
    print(
        f"\nwithin the cap: {total['uncapped']} / {branches} uncapped, {total['capped']} / {branches} capped; "
        f"best validation accuracy under the cap: higher in {better}, equal in {len(gains) - better - worse}, "
        f"lower in {worse} of {len(gains)} runs, mean {100 * statistics.mean(gains):+.2f} points; {elapsed:.0f} s"
    )
    record = {
        "bench": "branch_caps",
        "caps": caps,
        "floor": args.floor,
        "k": args.k,
        "grid": list(args.grid),
        "epochs": epochs,
        "finetune_epochs": finetune,
        "elapsed_s": round(elapsed, 1),
        "runs": runs,
    }
    print(json.dumps(record, default=lambda v: None if isinstance(v, float) and not math.isfinite(v) else v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
