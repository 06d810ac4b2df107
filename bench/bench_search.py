"""Search efficiency: region hypervolume after 10/20/30/60 trials for Optuna TPE, NSGA-II, GP and random search.

Runs the same sweep spec with each sampler and several sampler seeds (real sweeps: Ray Tune,
Optuna, MLflow), then computes, from the stored results only, the *region* hypervolume of the
(val_accuracy max, nonzero_frac min) front of the first k trials — the spec's region
(``SweepSpec.region``: accuracy from the spec's floor to 1, nonzero fraction from 1 to 1e-3 on a
log scale), not the reference-(0, 1) hypervolume that accurate dense trials saturate.  The
question: how many trials each sampler needs to reach random search's final region hypervolume.

Usage: ``python bench/bench_search.py`` (digits, 60 trials, 3 seeds, ~10 min on 2 cores),
``--quick`` (30 trials, 2 seeds), or ``--spec sweeps/mnist_lenet300.yaml --data-dir ...``.
``--samplers tpe,tpe-uniform`` compares TPE's space-filling (Sobol) start-up, the default, with
Optuna's uniform one (``sampler.startup: random``); likewise ``gp-uniform``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import pandas as pd
import ray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.pareto import region_hypervolume_history  # noqa: E402
from analysis.results import from_sweep_dir  # noqa: E402
from sweeps.runner import run_sweep  # noqa: E402
from sweeps.spec import MODEL_BASED_SAMPLERS, load_spec  # noqa: E402

SAMPLERS = ("tpe", "nsga2", "gp", "random")
UNIFORM_START = "-uniform"  # a tpe/gp variant with Optuna's uniform start-up instead of the Sobol design


def sampler_settings(variant: str) -> dict[str, object]:
    """Spec overrides for one sampler variant: its type, and no setting another type would refuse."""
    sampler = variant.removesuffix(UNIFORM_START)
    if sampler not in SAMPLERS or (variant.endswith(UNIFORM_START) and sampler not in MODEL_BASED_SAMPLERS):
        known = ", ".join((*SAMPLERS, *(s + UNIFORM_START for s in MODEL_BASED_SAMPLERS)))
        raise SystemExit(f"--samplers: unknown sampler {variant!r} (one of {known})")
    settings: dict[str, object] = {"sampler.type": sampler}
    settings |= {"sampler.n_startup_trials": None} if sampler not in MODEL_BASED_SAMPLERS else {}
    settings |= {"sampler.population_size": None} if sampler != "nsga2" else {}
    settings |= {"sampler.startup": "random"} if variant.endswith(UNIFORM_START) else {}
    return settings


def hv_curve(sweep_dir: Path, budget: int, region: dict) -> list[float]:
    """Region hypervolume of the front of the first k trials, for k = 1..budget."""
    table = from_sweep_dir(sweep_dir).sort_values("trial_number").reset_index(drop=True)
    history = region_hypervolume_history(table, region, order_col="trial_number")
    reached = dict(zip(history["trial_number"], history["hypervolume"]))  # after each ok trial
    values, current = [], 0.0
    for number in table["trial_number"]:  # every result counts as a trial spent, ok or not
        current = reached.get(number, current)
        values.append(current)
    return (values + [current] * budget)[:budget]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="sweeps/digits_quick.yaml")
    parser.add_argument("--data-dir")
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--checkpoints", default="10,20,30,60")
    parser.add_argument("--storage", help="keep the sweeps here (default: a temporary folder)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="spec overrides, e.g. trial.epochs=10"
    )
    parser.add_argument("--samplers", default=",".join(SAMPLERS), help="comma-separated; random must be one")
    parser.add_argument("--quick", action="store_true", help="30 trials, 2 seeds")
    args = parser.parse_args()
    samplers = args.samplers.split(",")
    settings = {variant: sampler_settings(variant) for variant in samplers}
    if "random" not in samplers:
        parser.error("--samplers must include random (the baseline every other sampler is measured against)")
    if args.quick:
        args.trials, args.seeds = 30, 2
    checkpoints = [k for k in map(int, args.checkpoints.split(",")) if k <= args.trials]
    overrides = {
        key: json.loads(value) if value[:1] in "0123456789-[{tf" else value
        for key, _, value in (s.partition("=") for s in args.set)
    }
    if args.data_dir:
        overrides["data_dir"] = str(Path(args.data_dir).resolve())
    curves: dict[str, list[list[float]]] = {sampler: [] for sampler in samplers}
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            storage = Path(args.storage or scratch)
            for seed in range(args.seeds):
                for sampler in samplers:
                    spec, _ = load_spec(
                        args.spec,
                        {
                            **overrides,
                            "name": f"search_{sampler}_{seed}",
                            "sampler.seed": seed,
                            "budget.num_samples": args.trials,
                            "warm_start": False,
                            **settings[sampler],
                        },
                    )
                    outcome = run_sweep(spec, storage=str(storage), quiet=True)
                    curves[sampler].append(hv_curve(outcome.sweep_dir, args.trials, spec.region()))
                    print(f"{sampler:>6} seed {seed}: HV@{args.trials} = {curves[sampler][-1][-1]:.4f}", flush=True)
    finally:
        ray.shutdown()

    medians = {s: [statistics.median(c[k - 1] for c in curves[s]) for k in checkpoints] for s in samplers}
    random_final = statistics.median(c[-1] for c in curves["random"])
    print(f"\nRegion hypervolume (median over {args.seeds} seeds) of the val_accuracy/nonzero_frac front:\n")
    print("| sampler | " + " | ".join(f"{k} trials" for k in checkpoints) + " | trials to reach random's final HV |")
    print("|---|" + "---:|" * (len(checkpoints) + 1))
    reached = {}
    for sampler in samplers:
        median_curve = [statistics.median(c[i] for c in curves[sampler]) for i in range(args.trials)]
        first = next((i + 1 for i, v in enumerate(median_curve) if v >= random_final), None)
        reached[sampler] = first
        print(
            f"| {sampler} | "
            + " | ".join(f"{v:.4f}" for v in medians[sampler])
            + f" | {first if first else 'not within ' + str(args.trials)} |"
        )
    goal = any(reached.get(s) is not None and reached[s] <= 30 for s in ("tpe", "nsga2"))
    print(
        json.dumps(
            {
                "spec": args.spec,
                "trials": args.trials,
                "seeds": args.seeds,
                "medians": medians,
                "random_final": random_final,
                "trials_to_random_final": reached,
                "curves": curves,
                "goal_met": goal,
            }
        )
    )


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    main()
