"""Prune-now proxy rungs: how well a rung's ranking predicts the final (fine-tuned) front.

Random configurations of the shipped digits sweep (``sweeps/digits_quick.yaml``'s trial settings
and search space: strength log-uniform 1e-5..1e-2, threshold log-uniform 1e-3..0.2, reg hs or
group_hs; sampled from ``--seed``) are run to the end with ``run_trial`` (a 2-process pool) and
every epoch's report is kept.  At each rung (regularized epochs 1, 3, 9, 27 that the trials reach,
plus the last regularized epoch, the branch point):

- ρ: Spearman rank correlation between each trial's non-dominated rank at the rung (the layer
  index of non-dominated sorting on ``proxy_val_accuracy`` max, ``proxy_nonzero_frac`` min) and
  its final non-dominated rank (``val_accuracy`` max, ``nonzero_frac`` min), with the p-value;
- survivors: of the final front's trials (Pareto front of ``val_accuracy`` / ``nonzero_frac``
  among trials with ``val_accuracy`` ≥ the floor, 0.8), how many a rung keeping the top third
  (⌈n/3⌉ trials) would have kept, by
  - ``nd``: non-dominated sorting on the proxies (whole layers first, then the largest crowding
    distance within the layer that is cut — NSGA-II's rule),
  - ``proxy_acc``: ``proxy_val_accuracy`` alone,
  - ``val_acc``: the unpruned ``val_accuracy`` alone (what single-metric ASHA does today),
  - ``nd_floor``: ``nd`` with the accuracy floor as a constraint (trials whose proxy accuracy
    meets the floor first, by ``nd``; the rest after them, by proxy accuracy).

  Keeping a random third keeps a third of the front on average.

Printed: a markdown table per sampler seed, with several seeds (``--seeds 0 1 2 3 4``) also the
pooled one (survivors summed over seeds, the median ρ), and one JSON line (the numbers and the
per-trial final metrics).

Usage: ``python bench/bench_proxy.py`` (24 configurations, 30 + 10 epochs, ~15 s on 2 cores),
``python bench/bench_proxy.py --seeds 0 1 2 3 4`` (five such samples, ~1 min) or
``python bench/bench_proxy.py --quick`` (12 configurations, 9 + 3 epochs, ~5 s).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainables.contract import (  # noqa: E402
    NONZERO_FRAC,
    PROXY_NONZERO_FRAC,
    PROXY_VAL_ACCURACY,
    VAL_ACCURACY,
)

RUNGS = (1, 3, 9, 27)
FLOOR = 0.8  # digits_quick's constraint: val_accuracy ≥ 0.8
TRIAL = dict(
    dataset="digits",
    model="lenet300_100",
    optimizer="adam",
    lr=1e-3,
    batch_size=64,
    seed=0,
    val_fraction=0.2,
    threshold_mode="abs",
    num_threads=1,
    device="cpu",
)
RULES = ("nd", "proxy_acc", "val_acc", "nd_floor")


# --- configurations and trials -----------------------------------------------------------------


def sample_configs(n: int, seed: int, epochs: int, finetune_epochs: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    configs = []
    for _ in range(n):
        configs.append(
            dict(
                TRIAL,
                epochs=epochs,
                finetune_epochs=finetune_epochs,
                strength=float(10 ** rng.uniform(-5, -2)),
                threshold=float(10 ** rng.uniform(-3, math.log10(0.2))),
                reg=str(rng.choice(["hs", "group_hs"])),
            )
        )
    return configs


def run_one(config: dict[str, Any]) -> dict[str, Any]:
    from trainables.pipeline import run_trial

    result = run_trial(config)
    return {
        "status": result.status.value,
        VAL_ACCURACY: result.val_accuracy,
        NONZERO_FRAC: result.nonzero_frac,
        "history": [epoch for epoch in result.history if epoch["phase"] == "train"],
        "wall_time_s": result.wall_time_s,
    }


# --- non-dominated sorting ---------------------------------------------------------------------


def _points(acc: np.ndarray, nz: np.ndarray) -> np.ndarray:
    """(n, 2) points to minimise: -accuracy, nonzero fraction (NaN → +inf: worst)."""
    points = np.stack([-acc, nz], axis=1).astype(float)
    return np.where(np.isfinite(points), points, np.inf)


def nd_layers(acc: np.ndarray, nz: np.ndarray) -> list[list[int]]:
    """Indices by non-dominated layer (accuracy max, nonzero min), the front first."""
    points = _points(acc, nz)
    rest = list(range(len(points)))
    layers = []
    while rest:
        front = [
            i
            for i in rest
            if not any(np.all(points[j] <= points[i]) and np.any(points[j] < points[i]) for j in rest if j != i)
        ]
        layers.append(front)
        rest = [i for i in rest if i not in front]
    return layers


def nd_rank(acc: np.ndarray, nz: np.ndarray) -> np.ndarray:
    rank = np.empty(len(acc))
    for index, layer in enumerate(nd_layers(acc, nz)):
        rank[layer] = index
    return rank


def crowding(points: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of the points of one layer (boundary points: inf)."""
    n = len(points)
    distance = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for m in range(points.shape[1]):
        order = np.argsort(points[:, m], kind="stable")
        values = points[order, m]
        distance[order[0]] = distance[order[-1]] = np.inf
        span = values[-1] - values[0]
        if span > 0 and np.isfinite(span):
            distance[order[1:-1]] += (values[2:] - values[:-2]) / span
    return distance


def keep_nd(acc: np.ndarray, nz: np.ndarray, k: int) -> set[int]:
    """The ``k`` best by non-dominated sorting: whole layers, then the most crowded-apart of the cut layer."""
    kept: list[int] = []
    points = _points(acc, nz)
    for layer in nd_layers(acc, nz):
        if len(kept) + len(layer) <= k:
            kept += layer
            continue
        distance = crowding(points[layer])
        order = sorted(range(len(layer)), key=lambda i: (-distance[i], layer[i]))
        kept += [layer[i] for i in order[: k - len(kept)]]
        break
    return set(kept)


def keep_nd_floor(acc: np.ndarray, nz: np.ndarray, k: int) -> set[int]:
    """``keep_nd`` among the trials at or above the floor, then the others by accuracy."""
    above = np.where(acc >= FLOOR)[0]
    if len(above) >= k:
        return {int(above[i]) for i in keep_nd(acc[above], nz[above], k)}
    rest = np.where(~(acc >= FLOOR))[0]
    return {int(i) for i in above} | {int(rest[i]) for i in keep_top(acc[rest], k - len(above))}


def keep_top(values: np.ndarray, k: int) -> set[int]:
    """The ``k`` largest values (ties: the lower index; NaN last)."""
    score = np.where(np.isfinite(values), values, -np.inf)
    order = sorted(range(len(values)), key=lambda i: (-score[i], i))
    return set(order[:k])


def spearman(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    try:
        from scipy.stats import spearmanr
    except ImportError:  # average ranks, Pearson on them; no p-value
        import pandas as pd

        ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
        return float(np.corrcoef(ra, rb)[0, 1]), math.nan
    if np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan, math.nan
    rho, p = spearmanr(a, b)
    return float(rho), float(p)


# --- the measurement ---------------------------------------------------------------------------


def at_rung(trial: dict[str, Any], rung: int, key: str) -> float:
    for epoch in trial["history"]:
        if epoch["phase_epoch"] == rung:
            return float(epoch.get(key, math.nan))
    return math.nan  # diverged before the rung


def analyse(trials: list[dict[str, Any]], epochs: int) -> dict[str, Any]:
    n = len(trials)
    k = math.ceil(n / 3)
    final_acc = np.array([t[VAL_ACCURACY] if t["status"] == "ok" else math.nan for t in trials], dtype=float)
    final_nz = np.array([t[NONZERO_FRAC] if t["status"] == "ok" else math.nan for t in trials], dtype=float)
    final_rank = nd_rank(final_acc, final_nz)
    feasible = np.where(final_acc >= FLOOR)[0]
    front = set()
    if len(feasible):
        front = {int(feasible[i]) for i in nd_layers(final_acc[feasible], final_nz[feasible])[0]}
    rungs = sorted({r for r in RUNGS if r <= epochs} | {epochs})
    rows = []
    for rung in rungs:
        acc = np.array([at_rung(t, rung, PROXY_VAL_ACCURACY) for t in trials])
        nz = np.array([at_rung(t, rung, PROXY_NONZERO_FRAC) for t in trials])
        unpruned = np.array([at_rung(t, rung, VAL_ACCURACY) for t in trials])
        rho, p = spearman(nd_rank(acc, nz), final_rank)
        kept = {
            "nd": keep_nd(acc, nz, k),
            "proxy_acc": keep_top(acc, k),
            "val_acc": keep_top(unpruned, k),
            "nd_floor": keep_nd_floor(acc, nz, k),
        }
        rows.append(
            {
                "rung": rung,
                "branch_point": rung == epochs,
                "spearman": rho,
                "p": p,
                **{f"survive_{rule}": len(front & kept[rule]) for rule in RULES},
            }
        )
    return {"n": n, "keep": k, "front": sorted(front), "feasible": int(len(feasible)), "rungs": rows}


def table(summary: dict[str, Any]) -> str:
    f = len(summary["front"])
    lines = [
        f"{summary['n']} trials, keep top {summary['keep']} per rung; final front (val_accuracy ≥ {FLOOR}): "
        f"{f} trials of {summary['feasible']} feasible (a random third keeps {f / 3:.1f} on average)",
        "",
        "| rung (reg. epoch) | Spearman ρ (p) | front kept: nd proxy | front kept: proxy acc | front kept: val acc "
        "| front kept: nd proxy, floor first |",
        "|---|---|---|---|---|---|",
    ]
    for row in summary["rungs"]:
        rung = f"{row['rung']}" + (" (branch point)" if row["branch_point"] else "")
        cells = [f"{row[f'survive_{rule}']}/{f}" for rule in RULES]
        p = f" ({row['p']:.2g})" if math.isfinite(row["p"]) else ""
        lines.append(f"| {rung} | {row['spearman']:.2f}{p} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pooled(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Survivors summed over samples, the median ρ, per rung (rungs all samples share)."""
    rows = []
    for index, row in enumerate(summaries[0]["rungs"]):
        rows.append(
            {
                "rung": row["rung"],
                "branch_point": row["branch_point"],
                "spearman": float(np.median([s["rungs"][index]["spearman"] for s in summaries])),
                "p": math.nan,
                **{f"survive_{r}": sum(s["rungs"][index][f"survive_{r}"] for s in summaries) for r in RULES},
            }
        )
    return {
        "n": sum(s["n"] for s in summaries),
        "keep": sum(s["keep"] for s in summaries),
        "front": [i for s in summaries for i in s["front"]],
        "feasible": sum(s["feasible"] for s in summaries),
        "rungs": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12 configurations, 9 + 3 epochs")
    parser.add_argument("--configs", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--finetune-epochs", type=int, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the configuration sampler")
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    n = args.configs or (12 if args.quick else 24)
    epochs = args.epochs or (9 if args.quick else 30)
    finetune = args.finetune_epochs if args.finetune_epochs is not None else (3 if args.quick else 10)
    samples = []
    with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
        for seed in args.seeds:
            configs = sample_configs(n, seed, epochs, finetune)
            started = time.perf_counter()
            trials = pool.map(run_one, configs, chunksize=1)
            elapsed = time.perf_counter() - started
            summary = analyse(trials, epochs)
            print(f"### sampler seed {seed}\n\n{table(summary)}\n")
            print(f"{n} trials × ({epochs} + {finetune}) epochs in {elapsed:.0f} s with {args.processes} processes\n")
            trials_out = [
                {
                    **{key: c[key] for key in ("strength", "threshold", "reg")},
                    "status": t["status"],
                    VAL_ACCURACY: t[VAL_ACCURACY],
                    NONZERO_FRAC: t[NONZERO_FRAC],
                }
                for c, t in zip(configs, trials)
            ]
            samples.append({"seed": seed, "elapsed_s": round(elapsed, 1), **summary, "trials": trials_out})
    record: dict[str, Any] = {"bench": "proxy", "configs": n, "epochs": epochs, "finetune_epochs": finetune}
    if len(samples) > 1:
        record["pooled"] = pooled(samples)
        print(f"### pooled over seeds {', '.join(map(str, args.seeds))} (median ρ)\n\n{table(record['pooled'])}\n")
    record["samples"] = samples
    print(json.dumps(record, default=lambda v: None if isinstance(v, float) and not math.isfinite(v) else v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
