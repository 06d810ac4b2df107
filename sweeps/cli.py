"""The ``hoyersweep`` command: ``train`` one trial, ``run``/``resume`` sweeps, and look at results.

Heavy imports (Ray, Optuna, MLflow) happen inside the sub-commands that need them, so
``hoyersweep train`` starts as fast as plain torch.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import Any

import yaml

from trainables.cli import add_train_arguments, train_command


def _override_value(text: str) -> Any:
    """``--set key=value`` values are YAML scalars (numbers, booleans, null, strings)."""
    return yaml.safe_load(text)


def spec_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Command-line flags that override spec fields, as dotted keys."""
    overrides: dict[str, Any] = {}
    flags = {
        "num_samples": "budget.num_samples",
        "max_concurrent_trials": "budget.max_concurrent_trials",
        "time_budget_s": "budget.time_budget_s",
        "storage": "storage",
        "name": "name",
        "sampler": "sampler.type",
        "seed": "sampler.seed",
        "data_dir": "data_dir",
    }
    for attribute, dotted in flags.items():
        value = getattr(args, attribute, None)
        if value is not None:
            overrides[dotted] = value
    for item in args.set or []:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise argparse.ArgumentTypeError(f"--set expects key=value, got {item!r}")
        overrides[key] = _override_value(value)
    return overrides


def _add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--num-gpus", type=int, help="GPUs of the local Ray (default: all)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hoyersweep")
    except PackageNotFoundError:
        return "(not installed)"


def configure_logging() -> None:
    """The CLI's logging: warnings and up from our libraries; Optuna's and MLflow's chatter off.

    Library code configures no logging; this runs only for the ``hoyersweep`` command.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("sweeps").setLevel(logging.WARNING)
    try:
        import optuna
    except ImportError:  # optuna is only needed by the commands that sweep
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def run_command(args: argparse.Namespace) -> int:
    from sweeps.runner import run_sweep
    from sweeps.spec import load_spec

    configure_logging()

    spec, _ = load_spec(args.spec, spec_overrides(args))
    outcome = run_sweep(
        spec,
        storage=args.storage,
        tracking_uri=args.tracking_uri,
        address=args.address,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        quiet=args.quiet,
    )
    return 0 if outcome.ok else 1


def resume_command(args: argparse.Namespace) -> int:
    from sweeps.runner import find_sweep_dir, resume_sweep

    configure_logging()

    outcome = resume_sweep(
        find_sweep_dir(args.sweep, args.storage or "results"),
        address=args.address,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        quiet=args.quiet,
    )
    return 0 if outcome.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hoyersweep", description="DeepHoyer sparse-training sweeps: Ray Tune + Optuna + MLflow."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="run one DeepHoyer trial without Ray")
    add_train_arguments(train)
    train.set_defaults(handler=train_command)

    run = commands.add_parser("run", help="run a sweep (default spec: sweeps/digits_quick.yaml)")
    run.add_argument("spec", nargs="?", default=None, help="sweep spec YAML (default sweeps/digits_quick.yaml)")
    run.add_argument("--num-samples", type=int, help="override budget.num_samples")
    run.add_argument("--max-concurrent-trials", type=int, help="override budget.max_concurrent_trials")
    run.add_argument("--time-budget-s", type=float, help="override budget.time_budget_s")
    run.add_argument("--storage", help="results folder (override storage)")
    run.add_argument("--name", help="sweep name (override name)")
    run.add_argument("--sampler", choices=["tpe", "nsga2", "gp", "random"], help="override sampler.type")
    run.add_argument("--seed", type=int, help="override sampler.seed")
    run.add_argument("--data-dir", help="override data_dir")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite in the sweep folder)")
    run.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override any spec field, e.g. --set trial.epochs=5"
    )
    _add_ray_arguments(run)
    run.set_defaults(handler=run_command)

    resume = commands.add_parser("resume", help="continue an interrupted sweep")
    resume.add_argument("sweep", help="sweep folder, or sweep name under --storage")
    resume.add_argument("--storage", help="results folder to look for the name in (default results)")
    _add_ray_arguments(resume)
    resume.set_defaults(handler=resume_command)

    from analysis.cli import add_analysis_commands

    add_analysis_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, argparse.ArgumentTypeError, FileNotFoundError) as error:  # user errors: one line
        if os.environ.get("HOYERSWEEP_DEBUG"):
            raise
        parser.exit(2, f"hoyersweep {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
