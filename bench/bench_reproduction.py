"""Reproduction: a shipped sweep with Hoyer-Square against Hoyer, `l1` and plain magnitude pruning (λ = 0).

Runs the spec once per method (and per seed with ``--seeds``) through the product path
(``run_sweep``, as ``hoyersweep run`` does: Ray Tune + Optuna + MLflow), with the same epochs,
number of trials and threshold branching:

- ``hs``: the spec as shipped (with ``reg: hs`` fixed if the spec searches the regularizer);
- ``hoyer``: ``reg: hoyer``, its strength range shifted up ``--hoyer-shift`` decades;
- ``l1``: ``reg: l1``, its strength range shifted up ``--l1-shift`` decades;
- ``group_lasso``: ``reg: group_lasso``, its strength range shifted ``--group-lasso-shift`` decades
  (the structured baseline of a Group-HS spec: there ``hs`` means the spec as shipped, Group-HS);
- ``magnitude``: ``reg: none`` (λ = 0) and only the threshold searched, per layer in units of
  the weights' standard deviation (``threshold_mode: std``, range ``--magnitude-range``), the
  one-shot form of Han et al.'s pruning: dense training, prune, fine-tune.

The shifts keep each regularizer's pull comparable: on LeNet-300-100 the mean |∂HS/∂w| over the
prunable weights is 728× the mean |∂Hoyer/∂w| and 33× the mean |∂L1/∂w| (= 1) at
initialisation (18× L1's on the dense-trained model), so one range for all would starve Hoyer
and L1.  On LeNet-5 at initialisation the mean |∂Group-Lasso/∂w| is 6.0× the mean |∂Group-HS/∂w|
(hence the default shift of −0.8 decades).  Seed ``s`` sets both ``trial.seed`` (initialisation, data
order) and the sampler's seed.

The model of each sweep is chosen on **validation** accuracy among trials whose minimised
objective (``nonzero_frac``, or ``flops_frac`` for a FLOPs spec) is at most ``--cap``
(``most_accurate_with_sparsity``); its test accuracy is reported beside it, never used to choose.
Prints a markdown table and one JSON line, writes one HTML report with a front per sweep
(``--report``) and saves every sweep's results table in one parquet file (``--save``, the
table ``hoyersweep pareto <sweeps> --save`` writes), from which ``bench/reproduction_tables.py``
computes the mean ± spread over seeds.

Usage::

    python bench/bench_reproduction.py --spec sweeps/mnist_lenet300.yaml --data-dir ../shared/data/mnist \
        --num-samples 24 --seeds 3 --set trial.epochs=15 --set budget.thresholds_per_run=8 \
        --save docs/reproduction/data/methods_mnist_lenet300.parquet
    python bench/bench_reproduction.py --quick     # digits, 8 trials per method, 1-2 minutes
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import ray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.pareto import most_accurate_with_sparsity  # noqa: E402
from analysis.report import build_report  # noqa: E402
from analysis.results import from_sweep_dir, load_results, write_parquet  # noqa: E402
from sweeps.runner import run_sweep  # noqa: E402
from sweeps.spec import SweepSpec, load_spec, parse_spec  # noqa: E402
from trainables.contract import PARETO_FILE  # noqa: E402

METHODS = ("hs", "hoyer", "l1", "group_lasso", "magnitude")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; a VALUE that reads as JSON (numbers, lists, true/false) is parsed."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def method_spec(
    base: SweepSpec,
    method: str,
    shifts: dict[str, float],
    magnitude_range: tuple[float, float],
    seed: int | None = None,
) -> SweepSpec:
    """The spec of one method (and seed): same data, model, epochs, objectives, budget and sampler as ``base``.

    ``shifts`` maps a regularizer (``hoyer``, ``l1``, ``group_lasso``) to the decades its strength range moves up.
    """
    data = base.model_dump(mode="json", exclude_none=True)
    data["name"] = f"{base.name}-{method}" if seed is None else f"{base.name}-{method}-s{seed}"
    data["warm_start"] = False  # each method starts cold: no trials borrowed from earlier sweeps
    if seed is not None:
        data["trial"]["seed"] = seed
        data["sampler"]["seed"] = seed
    if data["search"].pop("reg", None) is not None:  # a spec that searches the regularizer: fix it per method
        data["trial"]["reg"] = "hs"
    if method in shifts:
        data["trial"]["reg"] = method
        strength = data["search"]["strength"]
        factor = 10 ** shifts[method]
        strength["low"], strength["high"] = strength["low"] * factor, strength["high"] * factor
    elif method == "magnitude":
        data["search"].pop("strength", None)
        data["search"].pop("threshold_mode", None)
        data["trial"].update(reg="none", strength=0.0, threshold_mode="std")
        data["search"]["threshold"] = {
            "type": "float",
            "low": magnitude_range[0],
            "high": magnitude_range[1],
            "log": True,
        }
    elif method != "hs":
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    return parse_spec(data, f"{base.name} ({method})")


def sparsity_metric(spec: SweepSpec) -> str:
    """The spec's minimised objective (what the selection caps): nonzero_frac unless the spec minimises another."""
    return next((o.metric for o in spec.objectives if o.mode == "min"), "nonzero_frac")


def chosen_row(table: pd.DataFrame, metric: str, cap: float) -> dict[str, Any]:
    """The validation-selected trial with ``metric`` ≤ ``cap``, as a flat dict (empty if none)."""
    row = most_accurate_with_sparsity(table, cap, sparsity=metric)
    if row is None:
        return {}
    keys = ("trial_number", "strength", "threshold", "val_accuracy", "test_accuracy", "nonzero_frac", "flops_frac")
    return {key: (row[key].item() if hasattr(row[key], "item") else row[key]) for key in keys if key in row.index}


def _fmt(value: Any, kind: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "—"
    return {
        "pct": f"{100 * value:.2f} %",
        "acc": f"{100 * value:.2f} %",
        "sci": f"{value:.2g}",
        "int": f"{int(value)}",
    }[kind]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spec", default="sweeps/digits_quick.yaml")
    parser.add_argument("--data-dir", help="dataset folder (overrides the spec's data_dir)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {', '.join(METHODS)}")
    parser.add_argument("--num-samples", type=int, help="trials per method (default: the spec's budget)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="spec override for every method, e.g. trial.epochs=15",
    )
    parser.add_argument(
        "--cap",
        type=float,
        help="selection cap on the spec's minimised objective, e.g. nonzero_frac (default 0.015; 0.25 with --quick)",
    )
    parser.add_argument(
        "--target", type=float, help="test accuracy the chosen model should reach (printed as met / missed by)"
    )
    parser.add_argument(
        "--l1-shift", type=float, default=1.0, help="decades to shift l1's strength range up (default 1)"
    )
    parser.add_argument(
        "--hoyer-shift", type=float, default=2.9, help="decades to shift hoyer's strength range up (default 2.9)"
    )
    parser.add_argument(
        "--group-lasso-shift",
        type=float,
        default=-0.8,
        help="decades to shift group_lasso's strength range up (default -0.8: down)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        help="run every method with trial and sampler seeds 0..N-1 (sweeps named <spec>-<method>-s<seed>)",
    )
    parser.add_argument("--save", metavar="PARQUET", help="save every sweep's results table in one parquet file")
    parser.add_argument(
        "--magnitude-range",
        default="0.1,4.0",
        help="std-multiple threshold range of the λ = 0 baseline (default 0.1,4.0)",
    )
    parser.add_argument("--storage", help="keep the sweeps here (default: a temporary folder)")
    parser.add_argument("--report", help="write the HTML report (and PNGs beside it) here")
    parser.add_argument(
        "--caps", help="also print the chosen model's test accuracy at each of these caps, e.g. 0.01,0.015,0.02,0.05"
    )
    parser.add_argument(
        "--from-storage",
        action="store_true",
        help="run nothing: summarise (and report) the sweeps already in --storage",
    )
    parser.add_argument("--quick", action="store_true", help="digits, 8 trials per method, short schedule (1-2 min)")
    args = parser.parse_args()

    overrides = parse_overrides(args.set)
    if args.quick:
        args.num_samples = args.num_samples or 8
        overrides = {"trial.epochs": 10, "trial.finetune_epochs": 3, **overrides}
    if args.cap is None:
        args.cap = 0.25 if args.quick else 0.015
    if args.data_dir:
        overrides["data_dir"] = str(Path(args.data_dir).resolve())
    if args.num_samples:
        overrides["budget.num_samples"] = args.num_samples
    base, _ = load_spec(args.spec, overrides)
    low, high = (float(v) for v in args.magnitude_range.split(","))
    shifts = {"l1": args.l1_shift, "hoyer": args.hoyer_shift, "group_lasso": args.group_lasso_shift}
    metric = sparsity_metric(base)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    seeds: list[int | None] = list(range(args.seeds)) if args.seeds else [None]
    specs = {
        (method if seed is None else f"{method}-s{seed}"): method_spec(base, method, shifts, (low, high), seed)
        for seed in seeds
        for method in methods
    }

    sweep_dirs: dict[str, Path] = {}
    walls: dict[str, float] = {}

    def report_and_summarise() -> list[dict[str, Any]]:
        """Read the stored sweeps (while they exist: a scratch storage goes away after the run)."""
        if args.report:
            write_report(base, list(sweep_dirs.values()), args.report, metric, args.cap)
        if args.save:
            write_parquet(load_results([str(d) for d in sweep_dirs.values()]), args.save)
            print(f"saved: {args.save}")
        return summarise(sweep_dirs, walls, metric, args.cap)

    if args.from_storage:
        if not args.storage:
            parser.error("--from-storage needs --storage")
        for label, spec in specs.items():
            sweep_dirs[label] = Path(args.storage) / spec.name
            if not (sweep_dirs[label] / "state.json").exists():
                parser.error(f"{sweep_dirs[label]}: no stored sweep {label}")
        rows = report_and_summarise()
    else:
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        try:
            with tempfile.TemporaryDirectory() as scratch:
                storage = Path(args.storage or scratch)
                for label, spec in specs.items():
                    started = time.perf_counter()
                    outcome = run_sweep(spec, storage=str(storage), quiet=True)
                    walls[label] = time.perf_counter() - started
                    sweep_dirs[label] = outcome.sweep_dir
                    print(
                        f"{label}: {outcome.ok}/{outcome.total} trials ok in {walls[label]:.0f} s; {outcome.sweep_dir}",
                        flush=True,
                    )
                rows = report_and_summarise()
        finally:
            ray.shutdown()
    print_tables(base, rows, metric, args)
    print(
        json.dumps(
            {"spec": args.spec, "overrides": overrides, "metric": metric, "cap": args.cap, "results": rows}, default=str
        )
    )


def write_report(base: SweepSpec, sweep_dirs: list[Path], output: str, metric: str, cap: float) -> None:
    """One HTML report (and PNGs beside it) with a front per method."""
    objectives = ",".join(f"{o.metric}:{o.mode}" for o in base.objectives)
    written = build_report(
        [str(d) for d in sweep_dirs],
        output,
        objectives=objectives,
        by="sweep",
        max_nonzero=cap if metric == "nonzero_frac" else None,
    )
    print(f"report: {written['html']}")


def summarise(sweep_dirs: dict[str, Path], walls: dict[str, float], metric: str, cap: float) -> list[dict[str, Any]]:
    """One row per sweep (method, or method-seed), read from the stored sweep only: trials, front, the chosen trial."""
    rows = []
    for method, sweep_dir in sweep_dirs.items():
        table = from_sweep_dir(sweep_dir)
        front = pd.read_csv(sweep_dir / PARETO_FILE) if (sweep_dir / PARETO_FILE).exists() else table.iloc[:0]
        rows.append(
            {
                "method": method,
                "trials": int((table["status"] == "ok").sum()),
                "wall_s": round(walls[method], 1) if method in walls else None,
                "front": len(front),
                "sweep_dir": str(sweep_dir),
                "table": table,
                **chosen_row(table, metric, cap),
            }
        )
    return rows


def print_tables(base: SweepSpec, rows: list[dict[str, Any]], metric: str, args: argparse.Namespace) -> None:
    """The chosen model per method at ``--cap``; with ``--caps``, its test accuracy at each cap."""
    print(
        f"\nChosen on validation accuracy among trials with {metric} ≤ {100 * args.cap:g} % "
        f"({base.name}, {base.model} on {base.dataset}; {base.budget.num_samples} trials per method):\n"
    )
    print("| method | trial | strength | threshold | val acc | test acc | nonzero | FLOPs | front | wall |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        wall = "—" if r["wall_s"] is None else f"{r['wall_s']:.0f} s"
        print(
            f"| {r['method']} | {_fmt(r.get('trial_number'), 'int')} | {_fmt(r.get('strength'), 'sci')} "
            f"| {_fmt(r.get('threshold'), 'sci')} | {_fmt(r.get('val_accuracy'), 'acc')} "
            f"| {_fmt(r.get('test_accuracy'), 'acc')} | {_fmt(r.get('nonzero_frac'), 'pct')} "
            f"| {_fmt(r.get('flops_frac'), 'pct')} | {r['front']} | {wall} |"
        )
    if args.target is not None:
        for r in rows:
            test = r.get("test_accuracy")
            verdict = (
                "no trial under the cap"
                if test is None
                else ("met" if test >= args.target else f"missed by {100 * (args.target - test):.2f} points")
            )
            print(f"{r['method']}: target {100 * args.target:.2f} % at {metric} ≤ {100 * args.cap:g} % — {verdict}")
    if args.caps:
        caps = [float(c) for c in args.caps.split(",")]
        print(f"\nTest accuracy (and {metric}) of the trial chosen on validation accuracy under each cap:\n")
        print("| method | " + " | ".join(f"≤ {100 * c:g} %" for c in caps) + " |")
        print("|---|" + "---:|" * len(caps))
        for r in rows:
            cells = []
            for c in caps:
                chosen = chosen_row(r["table"], metric, c)
                cells.append(
                    f"{_fmt(chosen.get('test_accuracy'), 'acc')} ({_fmt(chosen.get(metric), 'pct')})" if chosen else "—"
                )
            print(f"| {r['method']} | " + " | ".join(cells) + " |")
    for r in rows:
        r.pop("table")


if __name__ == "__main__":
    main()
