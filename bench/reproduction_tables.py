"""The reproduction tables of docs/reproduction.md, regenerated from the committed results (no training).

Usage (from the repository root; needs pandas/pyarrow only — no torch, Ray or MLflow)::

    python bench/reproduction_tables.py                       # every table under docs/reproduction/data/
    python bench/reproduction_tables.py docs/reproduction/data/mnist_lenet300_long.parquet
    python bench/reproduction_tables.py --figures docs/reproduction   # + figures: fronts per model, each comparison
    python bench/reproduction_tables.py --write docs/reproduction.md     # refresh the doc's generated blocks
    python bench/reproduction_tables.py --check docs/reproduction.md     # exit 1 if the doc drifted from the data

In a doc, ``<!-- generated: STEM -->`` … ``<!-- end generated -->`` holds the block of
``docs/reproduction/data/STEM.parquet`` (``summary``: every target's verdict for every sweep
file; ``search_*_region``: ``docs/benchmarks_data/STEM.json`` of ``bench/bench_search.py``);
``--write`` rewrites every such block and a test runs
``--check``, so a number in those blocks cannot disagree with the committed results.

Each ``*.parquet`` there is one reproduction sweep's whole results table, saved with
``hoyersweep pareto <sweep folder> --save <file>.parquet``.  For each file: the sweep's budget
(results, regularized runs, epochs), then, at every nonzero cap, the trial chosen on
**validation** accuracy among the ok trials under the cap (``analysis.pareto.
most_accurate_with_sparsity``) with its test accuracy beside it — test accuracy is never used
to choose — and the published anchors of the same model drawn from ``ANCHORS``.

A ``methods_*.parquet`` file holds a method comparison (``bench/bench_reproduction.py --seeds N
--save``): several sweeps, one per regularizer and seed.  For it the table is, at every cap, the
mean ± standard deviation over seeds of the test accuracy of each seed's validation-chosen
trial (and the mean nonzero fraction), and its figure draws every seed's front per method.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path
from typing import NamedTuple

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.pareto import most_accurate_with_sparsity, pareto_front  # noqa: E402
from analysis.results import load_results  # noqa: E402

DATA = ROOT / "docs" / "reproduction" / "data"
SEARCH_DATA = ROOT / "docs" / "benchmarks_data"  # search_*_region.json: bench/bench_search.py's JSON line
CAPS = (0.0036, 0.008, 0.01, 0.015, 0.02, 0.05, 0.083)


class Anchor(NamedTuple):
    """A published point (or a target): test ``accuracy`` at ``nonzero`` weights, and at most ``flops``
    of the dense FLOPs where it caps those too."""

    name: str
    accuracy: float
    nonzero: float
    flops: float | None = None

    def caps(self) -> str:
        """The caps as text: "1.50 %", or "1.50 % with ≤ 20 % FLOPs" where the anchor caps FLOPs too."""
        return f"{_pct(self.nonzero)}" + (f" with ≤ {100 * self.flops:g} % FLOPs" if self.flops is not None else "")


ANCHORS: dict[str, list[Anchor]] = {
    "lenet300_100/mnist": [
        Anchor("Han et al. 2015 (pruning)", 0.9841, 0.083),
        Anchor("Sparse VD (Molchanov 2017)", 0.9808, 0.0147),
        Anchor("independent DeepHoyer reproduction", 0.9799, 0.0372),
        Anchor("target (floor)", 0.984, 0.015),
        Anchor("target (stretch)", 0.984, 0.010),
    ],
    "lenet5/mnist": [
        Anchor("Han et al. 2015", 0.9923, 0.083),
        Anchor("Sparse VD", 0.9925, 0.0036),
        Anchor("independent DeepHoyer reproduction", 0.9917, 0.0141),
        Anchor("target (floor)", 0.992, 0.008),
        Anchor("target (stretch)", 0.9925, 0.0036),
    ],
    "lenet5/fashion_mnist": [
        Anchor("DeepHoyer reproduction, Group-HS", 0.9082, 0.019),
        Anchor("target", 0.91, 0.015, flops=0.2),
    ],
}


def _pct(value: float) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f} %"


def budget_line(table: pd.DataFrame) -> str:
    """Results, regularized runs (threshold branches of one run share every other setting) and epochs."""
    ok = table[table["status"] == "ok"]
    shared = [c for c in ("reg", "strength", "lr", "weight_decay", "seed") if c in table.columns]
    runs = len(table.drop_duplicates(shared)) if shared else len(table)
    first = table.iloc[0]
    return (
        f"{len(table)} results ({len(ok)} ok) from {runs} regularized runs; {int(first['pretrain_epochs'])} dense + "
        f"{int(first['epochs'])} regularized + {int(first['finetune_epochs'])} fine-tune epochs per trial, "
        f"batch {int(first['batch_size'])}, augment {first['augment']}"
    )


def caps_table(table: pd.DataFrame) -> list[str]:
    lines = [
        "| nonzero cap | trial | strength | threshold | val acc | **test acc** | nonzero | FLOPs |",
        "|---|" + "---:|" * 7,
    ]
    for cap in CAPS:
        row = most_accurate_with_sparsity(table, cap)
        if row is None:
            lines.append(f"| ≤ {100 * cap:g} % | — | | | | | | |")
            continue
        lines.append(
            f"| ≤ {100 * cap:g} % | {int(row['trial_number'])} | {row['strength']:.2e} | "
            f"{row['threshold']:.3g} | {_pct(row['val_accuracy'])} | "
            f"**{_pct(row['test_accuracy'])}** | {_pct(row['nonzero_frac'])} | {_pct(row['flops_frac'])} |"
        )
    return lines


def _key(table: pd.DataFrame) -> str:
    """``model/dataset`` of a results table (the key of ``ANCHORS``)."""
    return f"{table['model'].iloc[0]}/{table['dataset'].iloc[0]}" if {"model", "dataset"} <= set(table.columns) else ""


def anchor_verdict(table: pd.DataFrame, anchor: Anchor) -> tuple[str, str]:
    """The validation-chosen trial under the anchor's caps ("test at nonzero") and the verdict."""
    if anchor.flops is not None:
        table = table[table["flops_frac"] <= anchor.flops]
    row = most_accurate_with_sparsity(table, anchor.nonzero)
    if row is None:
        return "nothing under the cap", "missed"
    mine = f"{_pct(row['test_accuracy'])} at {_pct(row['nonzero_frac'])}"
    if anchor.flops is not None:
        mine += f" ({_pct(row['flops_frac'])} FLOPs)"
    if row["test_accuracy"] >= anchor.accuracy:
        return mine, "matched or beaten (at least its accuracy, at most its nonzero)"
    return mine, f"missed by {100 * (anchor.accuracy - row['test_accuracy']):.2f} points"


def anchors_lines(table: pd.DataFrame) -> list[str]:
    """Each anchor: does a validation-chosen trial at its nonzero fraction reach its accuracy (on test)?"""
    lines = []
    for anchor in ANCHORS.get(_key(table), []):
        mine, verdict = anchor_verdict(table, anchor)
        lines.append(f"- {anchor.name}: {_pct(anchor.accuracy)} at {anchor.caps()}; here {mine} — {verdict}")
    return lines


def summary_table(tables: dict[str, pd.DataFrame]) -> list[str]:
    """Every target of every sweep's model: the sweep's validation-chosen trial under it, and the verdict."""
    lines = ["| results | target | chosen on validation: test at nonzero | verdict |", "|---|---|---|---|"]
    for stem, table in tables.items():
        for anchor in ANCHORS.get(_key(table), []):
            if anchor.name.startswith("target"):
                mine, verdict = anchor_verdict(table, anchor)
                target = f"{anchor.name}: ≥ {_pct(anchor.accuracy)} at ≤ {anchor.caps()}"
                verdict = "reached" if verdict.startswith("matched") else verdict
                lines.append(f"| {stem} ({_key(table)}) | {target} | {mine} | **{verdict}** |")
    return lines


def method_name(reg: str) -> str:
    """The comparison's name of a regularizer (λ = 0 is one-shot magnitude pruning)."""
    return "λ = 0 (magnitude)" if reg == "none" else reg


def _method_order(reg: str) -> tuple[int, str]:
    """HS first, then the other regularizers of the paper, the baselines last."""
    order = ("hs", "group_hs", "hoyer", "l1", "group_lasso", "none")
    return (order.index(reg) if reg in order else len(order), reg)


def chosen_per_seed(table: pd.DataFrame, cap: float) -> dict[str, list[pd.Series]]:
    """Per method, the validation-chosen trial under ``cap`` of each seed's sweep (seeds with none left out)."""
    chosen: dict[str, list[pd.Series]] = {}
    for (reg, _seed), sweep in table.groupby(["reg", "seed"], sort=True):
        row = most_accurate_with_sparsity(sweep, cap)
        chosen.setdefault(method_name(str(reg)), [])
        if row is not None:
            chosen[method_name(str(reg))].append(row)
    return chosen


def _mean_spread(values: list[float]) -> str:
    if not values:
        return "—"
    spread = f" ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{100 * statistics.fmean(values):.2f}{spread} %"


def methods_table(table: pd.DataFrame) -> list[str]:
    """Mean ± std over seeds of each method's validation-chosen test accuracy, at every cap (mean nonzero)."""
    seeds = table.groupby("reg")["seed"].nunique()
    seeds = seeds.reindex(sorted(seeds.index, key=_method_order))
    methods = [method_name(str(reg)) for reg in seeds.index]
    cells: dict[str, list[str]] = {method: [] for method in methods}
    for cap in CAPS:
        chosen = chosen_per_seed(table, cap)
        for method in methods:
            rows = chosen.get(method, [])
            accuracy = _mean_spread([float(r["test_accuracy"]) for r in rows])
            nonzero = _pct(statistics.fmean(float(r["nonzero_frac"]) for r in rows)) if rows else ""
            count = "" if len(rows) == seeds.max() else f", {len(rows)} of {seeds.max()} seeds"
            cells[method].append(f"{accuracy} ({nonzero}{count})" if rows else "—")
    lines = [
        "| method | seeds | " + " | ".join(f"≤ {100 * cap:g} %" for cap in CAPS) + " |",
        "|---|---:|" + "---:|" * len(CAPS),
    ]
    for reg, method in zip(seeds.index, methods):
        lines.append(f"| {method} | {seeds[reg]} | " + " | ".join(cells[method]) + " |")
    return lines


def _draw_anchors(axes, key: str) -> None:
    """The published anchors (diamonds) and targets (stars) of ``key`` ("model/dataset"), labelled."""
    for label, accuracy, nonzero, _flops in ANCHORS.get(key, []):
        marker = "*" if label.startswith("target") else "D"
        axes.plot(100 * nonzero, 100 * accuracy, marker, color="black", ms=8 if marker == "*" else 5)
        left = label == "target (stretch)"  # the two targets sit side by side: label one to the left
        axes.annotate(
            label,
            (100 * nonzero, 100 * accuracy),
            textcoords="offset points",
            xytext=(-5, 6) if left else (5, 4),
            ha="right" if left else "left",
            fontsize=7,
        )


def _figure(path: Path, key: str, draw, bottom: float | None = None) -> None:
    """One log-nonzero × test-accuracy figure: ``draw(axes)`` plots the fronts, then the anchors of ``key``;
    ``bottom`` cuts the accuracy axis there (a collapsed baseline would squeeze every front into a line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    draw(axes)
    _draw_anchors(axes, key)
    axes.set_xscale("log")
    axes.set_xlabel("nonzero weights (%), log scale")
    axes.set_ylabel("test accuracy (%) of the validation front")
    if bottom is not None:  # room above the highest anchor for its label
        axes.set_ylim(bottom=bottom, top=100 * max(a.accuracy for a in ANCHORS.get(key, [])) + 1.2)
        axes.set_ylabel(f"test accuracy (%) of the validation front (from {bottom:g} %)")
    axes.set_title(f"{key}: fronts chosen on validation, published anchors")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def fronts_figure_name(key: str) -> str:
    """The file name of the fronts figure of ``key`` ("model/dataset"): ``fronts_<model>_<dataset>.png``."""
    return f"fronts_{key.replace('/', '_')}.png"


def fronts_figures(tables: dict[str, pd.DataFrame], folder: Path) -> None:
    """One fronts figure per model and dataset (``fronts_figure_name``), each with the sweeps of that pair."""
    keys = sorted({_key(table) for table in tables.values()})
    for key in keys:
        fronts_figure({name: t for name, t in tables.items() if _key(t) == key}, folder / fronts_figure_name(key))


def fronts_figure(tables: dict[str, pd.DataFrame], path: Path) -> None:
    """Each sweep's validation front (chosen on val accuracy and nonzero), drawn at its test accuracy,
    with the published anchors of the (one) model as labelled points."""

    def draw(axes) -> None:
        for name, table in tables.items():
            front = pareto_front(table).sort_values("nonzero_frac")
            axes.plot(100 * front["nonzero_frac"], 100 * front["test_accuracy"], "o-", ms=4, label=f"{name} (front)")

    _figure(path, _key(next(iter(tables.values()))), draw)


def _seeds(count: int) -> str:
    return f"{count} seed" if count == 1 else f"{count} seeds"


def methods_figure(table: pd.DataFrame, path: Path) -> None:
    """Every seed's validation front of every method (one colour per method), at test accuracy, and the anchors."""

    def draw(axes) -> None:
        regs = sorted(table["reg"].unique(), key=_method_order)
        for index, reg in enumerate(regs):
            sweeps = table[table["reg"] == reg]
            colour = f"C{index}"
            for number, (_seed, sweep) in enumerate(sweeps.groupby("seed", sort=True)):
                front = pareto_front(sweep).sort_values("nonzero_frac")
                axes.plot(
                    100 * front["nonzero_frac"],
                    100 * front["test_accuracy"],
                    "o-",
                    color=colour,
                    ms=3,
                    lw=1,
                    alpha=0.8,
                    label=f"{method_name(str(reg))} ({_seeds(sweeps['seed'].nunique())})" if number == 0 else None,
                )

    anchors = ANCHORS.get(_key(table), [])  # 8 points under the lowest anchor (90 % for LeNet-300-100)
    bottom = math.floor(100 * min(a.accuracy for a in anchors)) - 8.0 if anchors else None
    _figure(path, _key(table), draw, bottom=bottom)


def search_table(data: dict) -> list[str]:
    """Search efficiency from ``bench_search.py``'s JSON: median region hypervolume over seeds at a quarter,
    half, three quarters and all of the budget, and the results each sampler needs to reach random's final value
    (on its median curve)."""
    budget = int(data["trials"])
    marks = sorted({max(1, round(budget * q)) for q in (0.25, 0.5, 0.75, 1.0)})
    medians = {
        sampler: [statistics.median(curve[i] for curve in curves) for i in range(budget)]
        for sampler, curves in data["curves"].items()
    }
    random_final = medians["random"][-1]
    lines = [
        f"{data['spec']}, {budget} results per sweep, sampler seeds 0–{int(data['seeds']) - 1}; "
        "median region hypervolume over seeds:",
        "",
        "| sampler | "
        + " | ".join(f"{k} results" for k in marks)
        + f" | results to reach random's final ({random_final:.4f}) |",
        "|---|" + "---:|" * (len(marks) + 1),
    ]
    for sampler, curve in medians.items():
        reached = next((i + 1 for i, value in enumerate(curve) if value >= random_final), None)
        cells = " | ".join(f"{curve[k - 1]:.4f}" for k in marks)
        lines.append(f"| {sampler} | {cells} | {reached if reached else f'not within {budget}'} |")
    return lines


def is_comparison(path: Path) -> bool:
    """A method comparison's file (several sweeps, one per regularizer and seed) rather than one sweep's."""
    return path.stem.startswith("methods_")


def section(path: Path, table: pd.DataFrame) -> list[str]:
    """The markdown a results file contributes: its budget and, at every cap, the validation-chosen trials."""
    if is_comparison(path):
        return [
            f"{budget_line(table)}, in all: one sweep per method and seed.",
            "",
            "Test accuracy of each seed's validation-chosen trial, mean ± std over seeds (mean nonzero):",
            "",
            *methods_table(table),
        ]
    anchors = anchors_lines(table)
    return [f"{budget_line(table)}.", "", *caps_table(table), *([""] + anchors if anchors else [])]


MARKER = re.compile(r"(<!-- generated: (?P<stem>[\w.-]+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S)


def fill(doc: str, sections: dict[str, list[str]]) -> tuple[str, list[str]]:
    """``doc`` with the text between each ``<!-- generated: STEM -->`` and ``<!-- end generated -->``
    replaced by the section of results file STEM; also the stems whose text changed.

    A marker naming no results file raises ``KeyError`` (a doc must not quote a table it cannot regenerate)."""
    changed: list[str] = []

    def replace(match: re.Match[str]) -> str:
        stem = match["stem"]
        if stem not in sections:
            raise KeyError(f"{stem}: no docs/reproduction/data/{stem}.parquet for this generated block")
        body = "\n".join(sections[stem]) + "\n"
        if body != match["body"]:
            changed.append(stem)
        return match.group(1) + body + match.group(4)

    return MARKER.sub(replace, doc), changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="parquet tables (default: every one under docs/reproduction/data/)")
    parser.add_argument(
        "--figures",
        type=Path,
        metavar="DIR",
        help="also draw the sweeps' fronts with the anchors, one figure per model and dataset "
        "(DIR/fronts_<model>_<dataset>.png), and each method comparison (DIR/<file stem>.png)",
    )
    parser.add_argument(
        "--write", type=Path, metavar="DOC", help="rewrite DOC's generated blocks from the tables (printing nothing)"
    )
    parser.add_argument(
        "--check", type=Path, metavar="DOC", help="exit 1 if any generated block of DOC differs from the tables"
    )
    args = parser.parse_args(argv)
    files = [Path(f) for f in args.files] or sorted(DATA.glob("*.parquet"))
    if not files:
        print(f"no parquet tables under {DATA}", file=sys.stderr)
        return 1
    tables = {path.stem: load_results(path) for path in files}
    sections = {path.stem: section(path, tables[path.stem]) for path in files}
    sweeps = {path.stem: tables[path.stem] for path in files if not is_comparison(path)}
    for path in sorted(SEARCH_DATA.glob("search_*_region.json")):
        sections[path.stem] = search_table(json.loads(path.read_text(encoding="utf-8")))
    if sweeps:  # the doc's block "summary": every target of every sweep
        sections["summary"] = summary_table(sweeps)
    if args.figures:
        fronts_figures(sweeps, args.figures)
        for path in filter(is_comparison, files):
            methods_figure(tables[path.stem], args.figures / f"{path.stem}.png")
    for doc in filter(None, (args.write, args.check)):
        try:
            text, changed = fill(doc.read_text(encoding="utf-8"), sections)
        except (OSError, KeyError) as error:
            print(f"{doc}: {error}", file=sys.stderr)
            return 1
        if doc == args.check and changed:
            print(f"{doc}: generated blocks out of date: {', '.join(changed)} (rerun with --write)", file=sys.stderr)
            return 1
        if doc == args.write:
            doc.write_text(text, encoding="utf-8")
    if args.write or args.check:
        return 0
    for stem, lines in sections.items():
        print(f"### {stem}\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
