"""Early stopping: MO-ASHA against no scheduler, region hypervolume vs trained epochs and wall time.

Each configuration is a real sweep of the shipped spec (local Ray, Optuna, MLflow) with
``scheduler.type`` ``moasha`` or ``none``, the same number of results and the same sampler
seeds.  Trained epochs count a stopped trial's regularized epochs up to its rung (no fine-tuning).
What single-metric ASHA would have killed is measured offline on full curves by
``bench/bench_proxy.py`` (it needs no sweep).

Usage: ``python bench/bench_early_stopping.py --quick`` (digits, 1 seed, short trials) or
``python bench/bench_early_stopping.py --seeds 0 1 2`` (digits, the spec's trials).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import ray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_branching import bench_sweep, hv_at  # noqa: E402

from trainables.contract import RESULTS_FILE, Status, read_ledger  # noqa: E402


def one_sweep(args: argparse.Namespace, scheduler: str, seed: int, storage: Path) -> dict:
    run = bench_sweep(args, f"{scheduler}-s{seed}", seed, storage, **{"scheduler.type": scheduler})
    stopped = sum(row["status"] == Status.PRUNED for row in read_ledger(run.pop("sweep_dir") / RESULTS_FILE))
    return {"scheduler": scheduler, "stopped": stopped, **run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="sweeps/digits_quick.yaml")
    parser.add_argument("--data-dir")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num-samples", type=int, default=40)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="spec overrides")
    parser.add_argument("--quick", action="store_true", help="1 seed, 24 results of 9+3 epochs")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.num_samples = [0], 24
        args.set += ["trial.epochs=9", "trial.finetune_epochs=3", "trial.batch_size=128"]
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    runs = []
    try:
        with tempfile.TemporaryDirectory() as storage:
            for seed in args.seeds:
                for scheduler in ("none", "moasha"):
                    runs.append(one_sweep(args, scheduler, seed, Path(storage)))
    finally:
        ray.shutdown()
    common = min(int(run["frame"]["epochs"].iloc[-1]) for run in runs)
    print(f"\n{args.spec}, {args.num_samples} results per sweep; equal-epoch budget = {common} epochs\n")
    print("| scheduler | seed | stopped | epochs | wall s | final region HV | HV at equal epochs |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for run in runs:
        frame = run["frame"]
        print(
            f"| {run['scheduler']} | {run['seed']} | {run['stopped']} | {int(frame['epochs'].iloc[-1])} | "
            f"{run['wall_s']:.0f} | {frame['hypervolume'].iloc[-1]:.4f} | {hv_at(frame, common):.4f} |"
        )
    for scheduler in ("none", "moasha"):
        mine = [r for r in runs if r["scheduler"] == scheduler]
        print(
            f"median {scheduler}: epochs {statistics.median(int(r['frame']['epochs'].iloc[-1]) for r in mine)}, "
            f"final HV {statistics.median(r['frame']['hypervolume'].iloc[-1] for r in mine):.4f}, "
            f"HV at equal epochs {statistics.median(hv_at(r['frame'], common) for r in mine):.4f}"
        )
    body = [{k: v for k, v in r.items() if k != "frame"} | {"curve": r["frame"].to_dict("list")} for r in runs]
    print(json.dumps({"spec": args.spec, "common_epochs": common, "runs": body}))


if __name__ == "__main__":
    main()
