"""Replay a sweep's regularized run and fine-tune other branches from its branch point.

What limits a result at a given sparsity: the threshold (how dense a mask the cap allows), or the
fine-tune (its length, its learning rate)?  A sweep answers with one branch per threshold; this asks
the same regularized run again.  It takes one trial's configuration from a committed results table
(``hoyersweep pareto <sweep> --save <table>.parquet``), trains its shared phase once (or adopts the
branch point saved by an earlier call: ``--branch-point``), and fine-tunes each ``--branch``:
``threshold=…`` and optionally ``finetune_epochs=…``, ``finetune_lr=…``, ``prune_ramp_epochs=…``
(``BRANCH_SETTINGS``).
``--densest-under CAP`` adds a branch at the smallest threshold of ``--grid`` whose mask keeps at most
CAP (a nonzero fraction), found by the prune-now proxy at the branch point.

Same seed, same code: a branch with the trial's own settings gives the trial's result again, bit for
bit on one machine (the first check to make).  Each branch prints one JSON line when it finishes;
``--save`` writes them all, with the command and the machine, as one JSON file.  Torch only.

Usage: ``python bench/replay_branches.py --quick`` (a 4-epoch digits run, 3 branches, ~20 s), or e.g.
``python bench/replay_branches.py --table docs/reproduction/data/mnist_lenet300_paper_sparse.parquet
--trial 6 --data-dir ../shared/data/mnist --branch-point /tmp/bp.pt --branch threshold=0.127873
--branch threshold=0.127873,finetune_epochs=150 --densest-under 0.01 --grid 0.09 0.128``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from trainables.branching import load_branch_point, prune_now_proxy, run_branches, threshold_grid  # noqa: E402
from trainables.config import BRANCH_SETTINGS, TrialConfig  # noqa: E402
from trainables.pipeline import start_run  # noqa: E402

KEPT = ("status", "val_accuracy", "test_accuracy", "nonzero_frac", "flops_frac", "val_accuracy_after_prune")
QUICK_TRIAL = dict(dataset="digits", model="lenet300_100", reg="hs", strength=3e-4, epochs=4, finetune_epochs=2)


def trial_config(table: Path, trial: int, data_dir: str | None) -> dict[str, Any]:
    """Trial ``trial``'s configuration from a results table (its config columns), ``data_dir`` replaced."""
    rows = pd.read_parquet(table)
    row = rows[rows["trial_number"] == trial]
    if row.empty:
        raise SystemExit(f"{table}: no trial {trial}")
    fields = TrialConfig.__dataclass_fields__
    config = {key: _plain(value, str(fields[key].type)) for key, value in row.iloc[0].items() if key in fields}
    cache = config.get("pretrain_cache_dir")
    if cache and not Path(cache).is_dir():
        config["pretrain_cache_dir"] = None  # the sweep's cache is not here: pretrain again (same seed, same weights)
    if data_dir is not None:
        config["data_dir"] = data_dir
    return TrialConfig.from_dict(config).to_dict()


def _plain(value: Any, kind: str) -> Any:
    """A table cell as the value a config field of type ``kind`` holds (NaN → None, numpy → Python)."""
    if pd.isna(value) is True:  # None, NaN, pd.NA
        return None
    value = value.item() if hasattr(value, "item") else value
    return int(value) if kind.startswith("int") and isinstance(value, float) else value


def parse_branch(text: str) -> dict[str, Any]:
    """``threshold=0.1,finetune_epochs=150`` → a branch's settings."""
    branch: dict[str, Any] = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key not in BRANCH_SETTINGS or not value:
            raise SystemExit(f"--branch {text}: each part is KEY=VALUE with KEY in {', '.join(BRANCH_SETTINGS)}")
        kind = str(TrialConfig.__dataclass_fields__[key].type)
        branch[key] = value if key == "threshold_mode" else (int(value) if kind == "int" else float(value))
    return branch


def densest_under(config: dict[str, Any], point_path: Path, cap: float, grid: list[float]) -> dict[str, Any]:
    """The smallest grid threshold whose mask keeps at most ``cap`` of the weights, at the branch point."""
    point = load_branch_point(point_path)
    run = start_run(config)
    run.model.load_state_dict(point.model)
    points = [p for p in prune_now_proxy(run, grid, config["threshold_mode"]) if p.nonzero_frac <= cap]
    if not points:
        raise SystemExit(f"--densest-under {cap}: no threshold of the grid keeps that little; raise --grid's high end")
    best = min(points, key=lambda p: p.threshold)
    return {"threshold": best.threshold, "prune_now_val_accuracy": best.val_accuracy, "nonzero_frac": best.nonzero_frac}


def replay(
    config: dict[str, Any], branches: list[dict[str, Any]], point_path: Path, cap: float | None, grid: list[float]
) -> list[dict[str, Any]]:
    """Train (or adopt) the branch point, then fine-tune every branch; one record per branch, printed as it ends."""
    if not point_path.exists():
        run_branches(config, [], branch_point=point_path)  # the shared phase only: saved for every call after
    if cap is not None:
        found = {"densest_under": cap, **densest_under(config, point_path, cap, grid)}
        print(json.dumps(found), flush=True)
        branches = [*branches, {"threshold": found["threshold"]}]
    records: list[dict[str, Any]] = [found] if cap is not None else []
    start = time.time()

    def ended(index: int, result: Any) -> None:
        body = result.to_dict()
        record = {
            "branch": branches[index],
            **{key: body.get(key) for key in KEPT},
            "wall_s": round(time.time() - start),
        }
        records.append(record)
        print(json.dumps(record), flush=True)

    run_branches(config, branches, branch_point=point_path, on_end=ended)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 4-epoch digits run with 3 branches")
    parser.add_argument("--table", type=Path, help="a results table (parquet) holding the trial")
    parser.add_argument("--trial", type=int, help="its trial_number")
    parser.add_argument("--data-dir", help="where the data is here (the table names the sweep's)")
    parser.add_argument("--branch-point", type=Path, help="saved here on the first call, adopted after")
    parser.add_argument("--branch", action="append", default=[], type=parse_branch, help="threshold=…[,finetune_…=…]")
    parser.add_argument("--densest-under", type=float, help="add the densest grid threshold keeping ≤ this fraction")
    parser.add_argument("--grid", type=float, nargs=2, default=(0.01, 0.3), help="low high (32 log-spaced)")
    parser.add_argument("--save", type=Path, help="write the records, command and machine as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        if args.quick:
            config = TrialConfig.from_dict(QUICK_TRIAL).to_dict()
            branches = [{"threshold": 0.05}, {"threshold": 0.05, "finetune_epochs": 4}]
            point, cap = Path(scratch) / "point.pt", 0.3
        else:
            if args.table is None or args.trial is None or not args.branch and args.densest_under is None:
                parser.error("--table and --trial, and at least one --branch or --densest-under (or --quick)")
            config = trial_config(args.table, args.trial, args.data_dir)
            branches, cap = args.branch, args.densest_under
            point = args.branch_point or Path(scratch) / "point.pt"
        records = replay(config, branches, point, cap, threshold_grid(*args.grid, 32))
    if args.save:
        machine = (
            f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"
        )
        body = {"command": "python bench/replay_branches.py " + " ".join(sys.argv[1:] if argv is None else argv)}
        body.update(config={k: config[k] for k in ("strength", "reg", "epochs", "seed")}, machine=machine)
        args.save.write_text(json.dumps({**body, "results": records}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
