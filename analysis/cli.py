"""``hoyersweep pareto`` and ``hoyersweep ui``: look at stored sweeps without training anything."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import pandas as pd

from analysis.pareto import pareto_front, parse_objectives
from analysis.results import feasible_mask, load_results, sweep_constraints

FRONT_COLUMNS = ("sweep", "trial_number", "reg", "strength", "threshold", "threshold_mode")


def add_pareto_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sweeps", nargs="+", metavar="SWEEP", help="sweep folder, folder of sweeps, .parquet table or MLflow URI"
    )
    parser.add_argument(
        "--objectives", default="val_accuracy:max,nonzero_frac:min", help="name:max|min, comma-separated"
    )
    parser.add_argument("--by", help="one front per value of this column (e.g. reg, sweep, model)")
    parser.add_argument("--format", choices=["table", "csv", "json"], default="table")
    parser.add_argument("--save", metavar="PARQUET", help="also save the whole results table as parquet")
    parser.add_argument(
        "--ignore-constraints",
        action="store_true",
        help="let trials that break their sweep's constraints onto the front",
    )


def pareto_command(args: argparse.Namespace) -> int:
    """Print the Pareto front(s) of the given sweeps; selection on validation, test shown beside."""
    objectives = parse_objectives(args.objectives)
    table = load_results(args.sweeps)
    if args.save:
        from analysis.results import write_parquet

        write_parquet(table, args.save)
    missing = [o.name for o in objectives if o.name not in table.columns] + (
        [args.by] if args.by and args.by not in table.columns else []
    )
    if missing:
        raise ValueError(f"unknown column(s): {', '.join(missing)}")
    constraints = [] if args.ignore_constraints else sweep_constraints(args.sweeps)
    feasible = table[feasible_mask(table, constraints)]  # as each sweep's own pareto.csv: constraint breakers stay off
    front = pareto_front(feasible, objectives, by=args.by)
    columns = list(
        dict.fromkeys(
            [
                *([args.by] if args.by else []),
                *FRONT_COLUMNS,
                *(o.name for o in objectives),
                "test_accuracy",
                "flops_frac",
                "mlflow_run_id",
            ]
        )
    )
    front = front[columns]
    if args.format == "csv":
        front.to_csv(sys.stdout, index=False)
    elif args.format == "json":
        print(json.dumps(json.loads(front.to_json(orient="records")), indent=None))
    else:
        ok = int((table["status"] == "ok").sum())
        broken = (
            f", {len(table) - len(feasible)} breaking their sweep's constraints" if len(feasible) < len(table) else ""
        )
        print(
            f"{len(table)} trials ({ok} ok{broken}) in {table['sweep'].nunique()} sweep(s); front of {len(front)} on {', '.join(f'{o.name} ({o.direction})' for o in objectives)}:"
        )
        with pd.option_context("display.width", 200, "display.max_columns", 30):
            print(
                front.to_string(index=False, float_format=lambda v: f"{v:.4g}")
                if len(front)
                else "(empty: no ok trial)"
            )
    return 0


def add_ui_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sweep", nargs="?", default="results", help="sweep folder (default: the most recent under results/)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--dry-run", action="store_true", help="print the command and URL, start nothing")


def _sweep_folder(path: Path) -> Path:
    """The sweep folder itself, or the most recently changed sweep folder under ``path``."""
    if (path / "state.json").exists():
        return path
    sweeps = sorted((p.parent for p in path.glob("*/state.json")), key=lambda p: p.stat().st_mtime)
    if not sweeps:
        raise ValueError(f"{path}: no sweep folder here (no state.json)")
    return sweeps[-1]


def ui_command(args: argparse.Namespace) -> int:
    """Start the MLflow UI on the sweep's tracking store, bound to 127.0.0.1 unless told otherwise."""
    sweep = _sweep_folder(Path(args.sweep))
    state = json.loads((sweep / "state.json").read_text())
    tracking_uri = state["tracking_uri"]
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        tracking_uri,
        "--host",
        args.host,
        "--port",
        str(args.port),
    ]
    if (sweep / "mlartifacts").exists():
        command += ["--default-artifact-root", (sweep / "mlartifacts").resolve().as_uri()]
    from mlflow.tracking import MlflowClient

    experiment = MlflowClient(tracking_uri).get_experiment_by_name(state["name"])
    page = f"/#/experiments/{experiment.experiment_id}/runs" if experiment else ""
    print(
        f"MLflow UI for sweep {state['name']}: http://{args.host}:{args.port}{page}  (expand the parent run {state.get('parent_run_id')}; filter tags.pareto = 'true')"
    )
    dashboard = (
        "optuna-dashboard" if shutil.which("optuna-dashboard") else "pip install optuna-dashboard && optuna-dashboard"
    )
    print(f"Optuna study {state['study_name']}: {dashboard} sqlite:///{(sweep / 'optuna.db').resolve()}")
    print("  " + " ".join(command), flush=True)
    if args.dry_run:
        return 0
    sys.stdout.flush()
    # Become the MLflow server, so Ctrl-C or a kill by PID reaches it and its workers directly.
    os.execve(sys.executable, command, {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri})
