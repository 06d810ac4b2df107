"""``hoyersweep pareto``, ``ui`` and ``report``: look at stored sweeps without training anything.

``hoyersweep`` (``sweeps.cli``) dispatches them; ``python -m analysis.cli pareto|ui|report ...`` runs them
without the sweep engine.  Importing this module loads neither pandas nor the sweep stack (the
commands import what they need), so building the ``hoyersweep`` parser stays cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from trainables.contract import (
    FLOPS_FRAC,
    METRICS,
    MLFLOW_ARTIFACTS_DIR,
    NONZERO_FRAC,
    OPTUNA_FILE,
    PARETO_TAG,
    STATE_FILE,
    TEST_ACCURACY,
    TRIAL_NUMBER_KEY,
    VAL_ACCURACY,
    Status,
    is_sweep_dir,
    tracking_uri_of,
)

FRONT_COLUMNS = ("sweep", TRIAL_NUMBER_KEY, "reg", "strength", "threshold", "threshold_mode")
DEFAULT_OBJECTIVES_TEXT = f"{VAL_ACCURACY}:{METRICS[VAL_ACCURACY]},{NONZERO_FRAC}:{METRICS[NONZERO_FRAC]}"
"""As ``analysis.pareto.DEFAULT_OBJECTIVES_TEXT``, without importing pandas to build the parser."""


@contextlib.contextmanager
def quiet_broken_pipe() -> Iterator[None]:
    """Output piped into a reader that stops early (``| head``) ends quietly: exit 141, no traceback.

    stdout is pointed at /dev/null so the interpreter's final flush has nowhere to fail.
    """
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(141) from None


def check_columns(columns: Sequence[Any], objectives: Sequence[Any], by: str | None) -> None:
    """Objectives and ``--by`` name columns of the results table; a one-line error listing the valid ones otherwise."""
    names = [str(c) for c in columns]
    unknown = [o.name for o in objectives if o.name not in names]
    if unknown:
        raise ValueError(
            f"unknown objective column(s): {', '.join(unknown)}{_did_you_mean(unknown[0], names)}; "
            f"the metrics are {', '.join(METRICS)} (any numeric column of the results table also works)"
        )
    if by and by not in names:
        raise ValueError(f"unknown --by column {by!r}{_did_you_mean(by, names)}; columns: {', '.join(names)}")


def _did_you_mean(name: str, names: Sequence[str]) -> str:
    bare = name.split(".", 1)[-1]  # param.reg → reg
    close = [bare] if bare in names else difflib.get_close_matches(name, names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def add_pareto_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sweeps", nargs="+", metavar="SWEEP", help="sweep folder, folder of sweeps, .parquet table or MLflow URI"
    )
    parser.add_argument("--objectives", default=DEFAULT_OBJECTIVES_TEXT, help="name:max|min, comma-separated")
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
    import pandas as pd

    from analysis.pareto import pareto_front, parse_objectives
    from analysis.results import feasible_mask, load_results, sweep_constraints, write_parquet

    objectives = parse_objectives(args.objectives)  # a malformed one fails before anything is read
    for o in objectives:
        if METRICS.get(o.name, o.direction) != o.direction:
            print(f"note: {o.name} is better when {METRICS[o.name]}; using {o.direction} as asked", file=sys.stderr)
    table = load_results(args.sweeps)
    if args.save:
        write_parquet(table, args.save)
    check_columns(table.columns, objectives, args.by)
    constraints = [] if args.ignore_constraints else sweep_constraints(args.sweeps)
    feasible = table[feasible_mask(table, constraints)]  # as each sweep's own pareto.csv: constraint breakers stay off
    front = pareto_front(feasible, objectives, by=args.by)
    columns = list(
        dict.fromkeys(
            [
                *([args.by] if args.by else []),
                *FRONT_COLUMNS,
                *(o.name for o in objectives),
                TEST_ACCURACY,
                FLOPS_FRAC,
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
        ok = int((table["status"] == Status.OK.value).sum())
        broken = len(table) - len(feasible)
        broken_text = f", {broken} breaking their sweep's constraints" if broken else ""
        on = ", ".join(f"{o.name} ({o.direction})" for o in objectives)
        print(
            f"{len(table)} trials ({ok} ok{broken_text}) in {table['sweep'].nunique()} sweep(s); "
            f"front of {len(front)} on {on}:"
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
    if is_sweep_dir(path):
        return path
    sweeps = sorted((p.parent for p in path.glob(f"*/{STATE_FILE}")), key=lambda p: p.stat().st_mtime)
    if not sweeps:
        raise ValueError(f"{path}: no sweep folder here (no {STATE_FILE})")
    return sweeps[-1]


def ui_command(args: argparse.Namespace) -> int:
    """Start the MLflow UI on the sweep's tracking store, bound to 127.0.0.1 unless told otherwise."""
    sweep = _sweep_folder(Path(args.sweep))
    state = json.loads((sweep / STATE_FILE).read_text())
    tracking_uri = tracking_uri_of(sweep)
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
    if (sweep / MLFLOW_ARTIFACTS_DIR).exists():
        command += ["--default-artifact-root", (sweep / MLFLOW_ARTIFACTS_DIR).resolve().as_uri()]
    from mlflow.tracking import MlflowClient

    experiment = MlflowClient(tracking_uri).get_experiment_by_name(state["name"])
    page = f"/#/experiments/{experiment.experiment_id}/runs" if experiment else ""
    print(
        f"MLflow UI for sweep {state['name']}: http://{args.host}:{args.port}{page}  "
        f"(expand the parent run {state.get('parent_run_id')}; filter tags.{PARETO_TAG} = 'true')"
    )
    dashboard = (
        "optuna-dashboard" if shutil.which("optuna-dashboard") else "pip install optuna-dashboard && optuna-dashboard"
    )
    print(f"Optuna study {state['study_name']}: {dashboard} sqlite:///{(sweep / OPTUNA_FILE).resolve()}")
    print("  " + " ".join(command), flush=True)
    if args.dry_run:
        return 0
    sys.stdout.flush()
    # Become the MLflow server, so Ctrl-C or a kill by PID reaches it and its workers directly.
    # MLflow 3's server also starts job-runner processes (huey consumers, for GenAI scorers) that a sweep never
    # uses: they took most of an 11 s start and outlived a killed server.  Off unless the user turned them on.
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.execve(sys.executable, command, env)


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sweeps", nargs="+", metavar="SWEEP", help="sweep folder, folder of sweeps, .parquet table or MLflow URI"
    )
    parser.add_argument(
        "-o",
        "--output",
        default="report.html",
        help="HTML file to write; figures go beside it as <stem>_<figure>.png (default report.html)",
    )
    parser.add_argument("--objectives", default=DEFAULT_OBJECTIVES_TEXT, help="name:max|min, comma-separated")
    parser.add_argument("--by", help="one front per value of this column (default: reg when several, else sweep)")
    parser.add_argument(
        "--min-accuracy", type=float, help="accuracy floor of 'sparsest with accuracy >= X' (default: best minus 0.01)"
    )
    parser.add_argument(
        "--max-nonzero",
        type=float,
        help="cap of 'most accurate with nonzero_frac <= Y' (default: half that of the most accurate trial)",
    )
    parser.add_argument(
        "--mlflow-url", help="link each run id to its page in the MLflow UI at this URL (e.g. http://127.0.0.1:5000)"
    )


def report_command(args: argparse.Namespace) -> int:
    """Write the HTML report and its PNG figures; print where they are."""
    from analysis.pareto import parse_objectives
    from analysis.report import collect, mlflow_run_links, write_report  # pandas, matplotlib load here
    from analysis.results import load_results

    # build_report's steps, with the columns checked first: an unknown name lists the valid ones.
    objectives = parse_objectives(args.objectives)
    sources = [str(source) for source in args.sweeps]
    table = load_results(sources)
    check_columns(table.columns, objectives, args.by)
    data = collect(
        table, objectives, by=args.by, min_accuracy=args.min_accuracy, max_nonzero=args.max_nonzero, sources=sources
    )
    if args.mlflow_url:
        data.run_links = mlflow_run_links(sources, args.mlflow_url)
    written = write_report(data, args.output, sources)
    print(f"report: {written.pop('html')}")
    for name, path in written.items():
        print(f"  {name}: {path}")
    return 0


def add_analysis_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``pareto``, ``ui`` and ``report`` (``hoyersweep`` and ``python -m analysis.cli`` share them)."""
    pareto = commands.add_parser("pareto", help="print the Pareto front(s) of stored sweeps")
    add_pareto_arguments(pareto)
    pareto.set_defaults(handler=pareto_command)
    ui = commands.add_parser("ui", help="start the MLflow UI (127.0.0.1) on a sweep's tracking store")
    add_ui_arguments(ui)
    ui.set_defaults(handler=ui_command)
    report = commands.add_parser("report", help="write a self-contained HTML report (and PNG figures) of stored sweeps")
    add_report_arguments(report)
    report.set_defaults(handler=report_command)


def build_parser() -> argparse.ArgumentParser:
    """``pareto``, ``ui`` and ``report`` as in ``hoyersweep``, without the sweep engine's commands."""
    parser = argparse.ArgumentParser(prog="python -m analysis.cli", description=__doc__.splitlines()[0])
    add_analysis_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def run_command_line(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse and run one command: a user error (ValueError, OSError) is one line on stderr and exit 2,
    Ctrl-C exit 130, output piped into ``head`` ends quietly.  ``HOYERSWEEP_DEBUG=1`` re-raises.

    Shared by ``hoyersweep`` and ``python -m analysis.cli``.
    """
    args = parser.parse_args(argv)
    try:
        with quiet_broken_pipe():
            return args.handler(args)
    except (ValueError, argparse.ArgumentTypeError, OSError) as error:
        if os.environ.get("HOYERSWEEP_DEBUG"):
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        parser.exit(2, f"{parser.prog} {args.command}: error: {message}\n")
    except KeyboardInterrupt:  # records are append-only or transactional: a later command finds them usable
        parser.exit(130, f"\n{parser.prog} {args.command}: interrupted\n")


def main(argv: list[str] | None = None) -> int:
    """``python -m analysis.cli``: the analysis commands alone."""
    return run_command_line(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
