"""Plot region hypervolume against trained epochs and wall time from a benchmark's JSON line.

``bench_branching.py`` and ``bench_early_stopping.py`` end with one JSON line holding every sweep's
curve (results, epochs, hypervolume, wall seconds).  This draws both views side by side, one line per
sweep, coloured by configuration:

    python bench/bench_early_stopping.py --seeds 0 1 2 | tail -1 > es.json
    python bench/plot_curves.py es.json -o docs/early_stopping_digits.png --title "MO-ASHA vs none, digits"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def label(run: dict) -> str:
    if "scheduler" in run:
        return run["scheduler"]
    return "K = 1" if run["k"] == 1 else f"K = {run['k']} {run['mode']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="a file holding the benchmark's JSON line")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--title", default="region hypervolume of the validation front")
    parser.add_argument("--quick", action="store_true", help="accepted for symmetry with the benches; no effect")
    args = parser.parse_args()
    body = json.loads(args.data.read_text().strip().splitlines()[-1])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    labels = sorted({label(run) for run in body["runs"]})
    colors = {name: f"C{i}" for i, name in enumerate(labels)}
    for run in body["runs"]:
        curve, name = run["curve"], label(run)
        for ax, x in zip(axes, ("epochs", "wall_s")):
            ax.step(curve[x], curve["hypervolume"], where="post", color=colors[name], alpha=0.8, label=name)
    for ax, xlabel in zip(axes, ("trained epochs (cumulative)", "wall time (s)")):
        handles, names = ax.get_legend_handles_labels()
        unique = dict(zip(names, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("region hypervolume")
        ax.grid(alpha=0.3)
    if "common_epochs" in body:
        axes[0].axvline(body["common_epochs"], color="grey", linestyle=":", linewidth=1)
    fig.suptitle(args.title)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
