"""The ``hoyersweep`` command: ``train`` one trial, ``check``/``run``/``resume`` sweeps, and look at results.

Heavy imports (Ray, Optuna, MLflow) happen inside the sub-commands that need them, so
``hoyersweep train`` starts as fast as plain torch.  ``check`` (and ``run``/``resume``, before
Ray starts) validates everything a sweep needs; a user error is one line on stderr and exit
status 2 (``HOYERSWEEP_DEBUG=1`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from typing import Any

import yaml

from trainables.cli import add_train_arguments, train_command


def _override_value(text: str) -> Any:
    """``--set key=value`` values are YAML (numbers as in YAML 1.2: ``1e-3`` is a float), booleans, null, strings."""
    from sweeps.spec import yaml_load

    try:
        return yaml_load(text)
    except yaml.YAMLError as error:
        raise argparse.ArgumentTypeError(
            f"--set value {text!r} is not valid YAML: {getattr(error, 'problem', None) or error}"
        ) from None


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
        if not separator or not key.strip():
            raise argparse.ArgumentTypeError(f"--set expects key=value, got {item!r}")
        overrides[key.strip()] = _override_value(value)
    return overrides


def _add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    """The spec and the flags that override it (``run`` and ``check`` share them)."""
    parser.add_argument("spec", nargs="?", default=None, help="sweep spec YAML (default sweeps/digits_quick.yaml)")
    parser.add_argument("--num-samples", type=int, help="override budget.num_samples")
    parser.add_argument("--max-concurrent-trials", type=int, help="override budget.max_concurrent_trials")
    parser.add_argument("--time-budget-s", type=float, help="override budget.time_budget_s")
    parser.add_argument("--storage", help="results folder (override storage)")
    parser.add_argument("--name", help="sweep name (override name)")
    parser.add_argument("--sampler", choices=["tpe", "nsga2", "gp", "random"], help="override sampler.type")
    parser.add_argument("--seed", type=int, help="override sampler.seed")
    parser.add_argument("--data-dir", help="override data_dir")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite in the sweep folder)")
    parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override any spec field, e.g. --set trial.epochs=5"
    )


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


def _checked_spec(args: argparse.Namespace) -> tuple[Any, Any]:
    """Load the spec with the flags' overrides and check everything a sweep of it needs (no Ray yet)."""
    from sweeps.check import check_spec
    from sweeps.spec import load_spec

    spec, resolved = load_spec(args.spec, spec_overrides(args))
    summary = check_spec(
        spec,
        str(resolved),
        tracking_uri=args.tracking_uri,
        storage=args.storage,
        address=args.address,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
    )
    return spec, summary


def check_command(args: argparse.Namespace) -> int:
    """Validate a spec and everything a sweep of it needs; print a short summary. Starts nothing."""
    if not args.quiet:
        print(f"checking {args.spec or 'the default spec'}…", flush=True)
    _, summary = _checked_spec(args)
    if not args.quiet:
        print("\n".join(summary.lines()))
    return 0


def run_command(args: argparse.Namespace) -> int:
    if not args.quiet:
        print(f"checking {args.spec or 'the default spec'}…", flush=True)
    spec, summary = _checked_spec(args)  # before Ray starts: a bad spec costs seconds, not a sweep of tracebacks
    if not args.quiet:
        print(summary.one_line(), flush=True)

    from sweeps.runner import run_sweep

    configure_logging()
    outcome = run_sweep(
        spec,
        storage=args.storage,
        tracking_uri=args.tracking_uri,
        address=args.address,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        quiet=args.quiet,
    )
    return exit_code(outcome)


def resume_command(args: argparse.Namespace) -> int:
    from sweeps.check import check_spec
    from sweeps.runner import find_sweep_dir, load_resumable, resume_sweep
    from trainables.contract import SPEC_FILE, STATE_FILE

    sweep_dir = find_sweep_dir(args.sweep, args.storage or "results")
    if not args.quiet:
        print(f"checking {sweep_dir}…", flush=True)
    sweep_dir, spec, state = load_resumable(sweep_dir, args.data_dir)  # damaged records: one line, nothing changed
    summary = check_spec(
        spec,
        str(sweep_dir / SPEC_FILE),
        tracking_uri=state.tracking_uri,
        tracking_field=f"{STATE_FILE} tracking_uri",
        sweep_dir=sweep_dir,
        address=args.address,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
    )
    if not args.quiet:
        print(summary.one_line(), flush=True)

    configure_logging()
    outcome = resume_sweep(
        sweep_dir,
        data_dir=args.data_dir,
        address=args.address,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        quiet=args.quiet,
    )
    return exit_code(outcome)


def import_command(args: argparse.Namespace) -> int:
    """Record an ask/tell folder (``python -m sweeps.asktell``) as a sweep; a second import adds only what is new."""
    from sweeps.importer import import_folder

    configure_logging()
    imported = import_folder(args.folder, args.storage, args.tracking_uri, quiet=args.quiet)
    if imported.added == 0:
        print(f"nothing to import: {imported.sweep_dir} already holds all {imported.total} results of {args.folder}")
    elif not args.quiet:
        print(f"imported {imported.added} result(s) into {imported.sweep_dir} ({imported.total} in all)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hoyersweep", description="DeepHoyer sparse-training sweeps: Ray Tune + Optuna + MLflow."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="run one DeepHoyer trial without Ray")
    add_train_arguments(train)
    train.set_defaults(handler=train_command)

    check = commands.add_parser("check", help="check a sweep spec and everything it needs; starts nothing")
    _add_spec_arguments(check)
    _add_ray_arguments(check)
    check.set_defaults(handler=check_command)

    run = commands.add_parser("run", help="run a sweep (default spec: sweeps/digits_quick.yaml)")
    _add_spec_arguments(run)
    _add_ray_arguments(run)
    run.set_defaults(handler=run_command)

    resume = commands.add_parser("resume", help="continue an interrupted sweep")
    resume.add_argument("sweep", help="sweep folder, or sweep name under --storage")
    resume.add_argument("--storage", help="results folder to look for the name in (default results)")
    resume.add_argument("--data-dir", help="the dataset's folder, when it moved since the sweep started")
    _add_ray_arguments(resume)
    resume.set_defaults(handler=resume_command)

    imports = commands.add_parser("import", help="record a folder of `python -m sweeps.asktell` as a sweep")
    imports.add_argument("folder", help="the folder the ask/tell driver wrote (--out)")
    imports.add_argument("--storage", help="results folder to put the sweep in (default: the spec's storage)")
    imports.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite in the sweep folder)")
    imports.add_argument("--quiet", action="store_true", help="no summary")
    imports.set_defaults(handler=import_command)

    from analysis.cli import add_analysis_commands

    add_analysis_commands(commands)

    from sweeps.export import add_export_arguments, export_command

    export = commands.add_parser("export", help="a sweep's chosen model, compacted and self-checked (pt2 or ONNX)")
    add_export_arguments(export)
    export.set_defaults(handler=export_command)
    return parser


def exit_code(outcome: Any) -> int:
    """130 for a sweep stopped by Ctrl-C (as a shell reports it), 0 when a trial succeeded, else 1."""
    from sweeps.interrupt import EXIT_INTERRUPTED

    if outcome.interrupted:
        return EXIT_INTERRUPTED
    return 0 if outcome.ok else 1


def main(argv: list[str] | None = None) -> int:
    from analysis.cli import run_command_line

    return run_command_line(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
