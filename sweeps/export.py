"""``hoyersweep export``: a sweep's chosen model as a physically smaller, self-checked file.

Which trial: ``--trial N``, ``--knee`` (the knee of the sweep's own front, as ``pareto.csv``), or
``--min-accuracy X`` (the sparsest trial whose *validation* accuracy is at least X — test accuracy
is reported, never used to choose).  The trial's saved model (``<sweep>/models``) is compacted,
written as pt2 or ONNX, reloaded and checked against the masked dense model on the test split by
``trainables.export.export``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from trainables.contract import MODEL_FILE_KEY, MODELS_DIR, NONZERO_FRAC, TRIAL_NUMBER_KEY, VAL_ACCURACY, Status


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", help="sweep folder")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", type=int, help="the trial number to export")
    which.add_argument("--knee", action="store_true", help="the knee of the sweep's front")
    which.add_argument("--min-accuracy", type=float, help="the sparsest trial with val_accuracy ≥ X")
    parser.add_argument("-o", "--output", required=True, help="file to write (.pt2 or .onnx)")
    parser.add_argument(
        "--format", choices=["pt2", "onnx"], default=None, help="default: from the output suffix, else pt2"
    )
    parser.add_argument("--data-dir", help="where the sweep's data is now (default: as the sweep recorded it)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def choose_trial(sweep_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The ledger row of the trial to export; a one-line ValueError naming what is missing."""
    from analysis.pareto import knee_point, sparsest_with_accuracy
    from trainables.contract import RESULTS_FILE, read_ledger

    rows = {int(r[TRIAL_NUMBER_KEY]): r for r in read_ledger(sweep_dir / RESULTS_FILE)}
    ok = {n: r for n, r in rows.items() if r["status"] == Status.OK}
    if args.trial is not None:
        if args.trial not in rows:
            known = ", ".join(map(str, sorted(rows))) or "none"
            raise ValueError(f"--trial {args.trial}: no such trial in {sweep_dir} (trials: {known})")
        if args.trial not in ok:
            raise ValueError(f"--trial {args.trial}: it ended {rows[args.trial]['status']}, so it has no model")
        return ok[args.trial]
    import pandas as pd

    from sweeps.recorder import current_front
    from sweeps.runner import load_sweep

    spec, _ = load_sweep(sweep_dir)
    front = current_front(spec, ok.values())
    if front.empty:
        raise ValueError(f"{sweep_dir}: the front is empty (no ok trial meets the constraints): nothing to export")
    if args.knee:
        from analysis.pareto import Objective

        row = knee_point(front, [Objective(m, mode) for m, mode in zip(spec.metric_names, spec.modes)])
    else:
        table = pd.DataFrame(list(ok.values()))
        row = sparsest_with_accuracy(table, args.min_accuracy, accuracy=VAL_ACCURACY, sparsity=NONZERO_FRAC)
        if row is None:
            raise ValueError(f"--min-accuracy {args.min_accuracy}: no ok trial reaches that validation accuracy")
    return ok[int(row[TRIAL_NUMBER_KEY])]


def model_path(sweep_dir: Path, row: dict[str, Any]) -> Path:
    """The trial's saved model: its recorded file, looked up in this folder's ``models`` (moved folders too)."""
    recorded = row.get(MODEL_FILE_KEY)
    if not recorded:
        raise ValueError(
            f"{sweep_dir}: trial {row[TRIAL_NUMBER_KEY]} has no saved model (a sweep run with `models: none`, "
            "or by an older version): re-run it with `hoyersweep train ... --save`"
        )
    path = sweep_dir / MODELS_DIR / Path(recorded).name
    if not path.exists():
        raise ValueError(f"{path}: the model of trial {row[TRIAL_NUMBER_KEY]} is missing")
    return path


def export_command(args: argparse.Namespace) -> int:
    from sweeps.runner import find_sweep_dir
    from trainables.data import load_dataset
    from trainables.export import export
    from trainables.pipeline import load_model

    sweep_dir = find_sweep_dir(args.sweep)
    row = choose_trial(sweep_dir, args)
    model, payload = load_model(model_path(sweep_dir, row))
    config = payload["config"]
    data_dir = args.data_dir or config.get("data_dir")
    data = load_dataset(
        config["dataset"], data_dir, val_fraction=config["val_fraction"], split_seed=config["split_seed"], device="cpu"
    )
    fmt = args.format or ("onnx" if str(args.output).endswith(".onnx") else "pt2")
    report = export(model, data.test_x, data.test_y, args.output, fmt, trial=int(row[TRIAL_NUMBER_KEY]))
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print("\n".join(report.lines()))
    return 0 if report.ok else 1
