"""``hoyersweep report``: one self-contained HTML page about stored sweeps, figures beside it.

``hoyersweep report SWEEP... -o report.html`` writes ``report.html`` (figures inlined as base64
PNG, CSS inline, no script, nothing fetched at view time) and the same figures as
``report_scatter.png``, ``report_hypervolume.png``, ``report_layers.png`` and
``report_coverage.png`` beside it.  The page holds: which sweeps and how their trials ended;
the Pareto scatter of every trial with the front(s) per group; the front as a table and the
chosen points (knee, sparsest above an accuracy floor, most accurate below a density cap);
hypervolume against trials run; the per-layer sparsity of the chosen points (sweep folders
only); and how the search covered strength × threshold.

Selection is on the objectives given (validation metrics by default); test accuracy is
shown beside the chosen points and never used to choose them.  Matplotlib is used through
``Figure`` objects on the Agg canvas only (no pyplot state, no display needed).
"""

from __future__ import annotations

import base64
import html
import io
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from analysis.pareto import (
    DEFAULT_OBJECTIVES_TEXT,
    Objective,
    default_reference,
    hypervolume_history,
    knee_point,
    most_accurate_with_sparsity,
    pareto_front,
    parse_objectives,
    region_hypervolume_history,
    sparsest_with_accuracy,
)
from analysis.results import (
    RUNNING,
    SweepConstraint,
    feasible_mask,
    load_layers,
    load_results,
    sweep_constraints,
    sweep_dirs,
    sweep_meta,
    sweep_region,
)
from trainables.contract import (
    FLOPS_FRAC,
    NONZERO_FRAC,
    RESULTS_FILE,
    TEST_ACCURACY,
    TRIAL_NUMBER_KEY,
    VAL_ACCURACY,
    Axis,
    Status,
    tracking_uri_of,
)

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn, so ``hoyersweep train`` starts fast
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FIGURES: tuple[str, ...] = ("scatter", "hypervolume", "layers", "coverage")
RUN_ID_COLUMN = "mlflow_run_id"
TABLE_COLUMNS: tuple[str, ...] = (
    "sweep",
    TRIAL_NUMBER_KEY,
    "reg",
    "strength",
    "threshold",
    "threshold_mode",
    VAL_ACCURACY,
    TEST_ACCURACY,
    NONZERO_FRAC,
    FLOPS_FRAC,
    RUN_ID_COLUMN,
)
STATUS_ORDER: tuple[str, ...] = (*(status.value for status in Status), RUNNING)
OK = Status.OK.value
NOT_OK = "not ok"
OUTCOME_COLORS: dict[str, str] = {"on front": "#d62728", OK: "#1f77b4", NOT_OK: "#7f7f7f"}
GROUP_COLORS: tuple[str, ...] = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
)
LAYER_BARS: tuple[tuple[str, str, str], ...] = (
    ("nonzero_frac", "nonzero weights", "#1f77b4"),
    ("rows_frac", "live rows (outputs)", "#ff7f0e"),
    ("cols_frac", "live cols (inputs)", "#2ca02c"),
)


# --------------------------------------------------------------------------- the data behind the page


@dataclass
class Choice:
    """One chosen point: a short label, the rule that chose it, and the row (None if nothing qualifies)."""

    label: str
    rule: str
    row: pd.Series | None


@dataclass
class ReportData:
    """Everything the page shows, computed once from the results table."""

    table: pd.DataFrame
    objectives: list[Objective]
    by: str
    accuracy: str
    sparsity: str
    front: pd.DataFrame  # per group of ``by``
    choices: list[Choice]
    history: pd.DataFrame  # sweep, trial_number, n_trials, hypervolume
    reference: np.ndarray | None
    layers: pd.DataFrame | None
    constraints: list[SweepConstraint] = field(default_factory=list)  # from the sweep folders' specs
    notes: dict[str, list[str]] = field(default_factory=dict)  # section -> messages
    region: dict[str, Axis] | None = None  # the region hypervolume's axes, when the history measures that
    run_links: dict[str, str] = field(default_factory=dict)  # MLflow run id -> its page in the MLflow UI

    def note(self, section: str, message: str) -> None:
        self.notes.setdefault(section, []).append(message)

    @property
    def ok(self) -> pd.DataFrame:
        return self.table[_is_ok(self.table)]


def _is_ok(table: pd.DataFrame) -> np.ndarray:
    """Rows whose status is ``ok`` (a missing status is not)."""
    return table["status"].eq(OK).fillna(False).to_numpy(dtype=bool)


def _axis_columns(objectives: Sequence[Objective]) -> tuple[str, str]:
    """(accuracy, sparsity) columns: the first maximised and first minimised objective, else the defaults."""
    accuracy = next((o.name for o in objectives if o.direction == "max"), VAL_ACCURACY)
    sparsity = next((o.name for o in objectives if o.direction == "min"), NONZERO_FRAC)
    return accuracy, sparsity


def default_by(table: pd.DataFrame) -> str:
    """``sweep``: the report's main front is each sweep's own front — the trials of its ``pareto.csv``
    and its MLflow ``pareto=true`` tags.  Fronts per another column (``--by reg``) are asked for, and
    labelled as such."""
    return "sweep"


def _finite(table: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """Rows finite in every column (NA counts as not finite)."""
    values = table[list(columns)].to_numpy(dtype=float, na_value=np.nan).reshape(len(table), len(columns))
    return np.isfinite(values).all(axis=1)


def _choices(
    table: pd.DataFrame,
    feasible: pd.DataFrame,
    objectives: list[Objective],
    accuracy: str,
    sparsity: str,
    min_accuracy: float | None,
    max_nonzero: float | None,
) -> list[Choice]:
    """Knee of the overall (feasible) front; over all trials, the sparsest above an accuracy floor and the most
    accurate below a density cap."""
    ok = table[_is_ok(table) & _finite(table, [accuracy, sparsity])]
    if ok.empty:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a test-metric warning is shown on the page instead
        knee = knee_point(pareto_front(feasible, objectives), objectives)
        if min_accuracy is None:
            min_accuracy = float(ok[accuracy].max()) - 0.01
        if max_nonzero is None:
            best = most_accurate_with_sparsity(
                table, float(ok[sparsity].max()), accuracy=accuracy, sparsity=sparsity
            )  # the most accurate trial
            max_nonzero = float(best[sparsity]) / 2 if best is not None else float(ok[sparsity].max())
        sparsest = sparsest_with_accuracy(table, min_accuracy, accuracy=accuracy, sparsity=sparsity)
        accurate = most_accurate_with_sparsity(table, max_nonzero, accuracy=accuracy, sparsity=sparsity)
    return [
        Choice("knee", "knee point of the overall front (largest distance from the line joining its extremes)", knee),
        Choice(
            f"sparsest {accuracy} ≥ {min_accuracy:.4g}",
            f"smallest {sparsity} among trials with {accuracy} ≥ {min_accuracy:.4g}",
            sparsest,
        ),
        Choice(
            f"most accurate {sparsity} ≤ {max_nonzero:.4g}",
            f"highest {accuracy} among trials with {sparsity} ≤ {max_nonzero:.4g}",
            accurate,
        ),
    ]


def _history(
    table: pd.DataFrame, objectives: list[Objective], reference: np.ndarray, region: dict[str, Axis] | None = None
) -> pd.DataFrame:
    """Hypervolume after each eligible trial, per sweep, in trial_number order: in ``region``, else at ``reference``."""
    frames = []
    for sweep, rows in table.groupby("sweep", sort=True, dropna=False):
        history = (
            region_hypervolume_history(rows, region) if region else hypervolume_history(rows, objectives, reference)
        )
        frames.append(history.assign(sweep=sweep))
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["sweep", "trial_number", "n_trials", "hypervolume"])
    )


def _layers(sources: Sequence[str], data: ReportData) -> pd.DataFrame | None:
    """Per-layer rows of every sweep folder among the sources; notes the sources that have none."""
    frames = []
    for source in sources:
        dirs = sweep_dirs(str(source))
        if not dirs:
            kind = (
                "an MLflow URI"
                if "://" in str(source)
                else "a parquet table"
                if str(source).endswith(".parquet")
                else "not a sweep folder"
            )
            data.note(
                "layers",
                f"{source} is {kind}: per-layer sparsity is only read from sweep folders ({RESULTS_FILE}), "
                "so its trials have none here.",
            )
        frames.extend(load_layers(d) for d in dirs)
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else None


def collect(
    table: pd.DataFrame,
    objectives: list[Objective],
    *,
    by: str | None = None,
    min_accuracy: float | None = None,
    max_nonzero: float | None = None,
    sources: Sequence[str] = (),
) -> ReportData:
    """Fronts, chosen points, hypervolume history and layers for a results table (``load_results`` schema)."""
    missing = [o.name for o in objectives if o.name not in table.columns] + (
        [by] if by and by not in table.columns else []
    )
    if missing:
        raise ValueError(f"unknown column(s): {', '.join(missing)}")
    by = by or default_by(table)
    accuracy, sparsity = _axis_columns(objectives)
    constraints = sweep_constraints(sources)
    feasible = table[feasible_mask(table, constraints)]  # fronts, knee and hypervolume as the sweeps' own pareto.csv
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        front = pareto_front(feasible, objectives, by=by)
    data = ReportData(
        table,
        objectives,
        by,
        accuracy,
        sparsity,
        front,
        _choices(table, feasible, objectives, accuracy, sparsity, min_accuracy, max_nonzero),
        pd.DataFrame(),
        None,
        None,
        constraints,
    )
    infeasible = len(table) - len(feasible)
    if infeasible:
        data.note(
            "front",
            f"{infeasible} trial(s) violate their sweep's constraints: plotted, but kept off the fronts, "
            "the knee and the hypervolume.",
        )
    region = sweep_region(sources) if sources else None
    if region is not None and sorted(region) == sorted(o.name for o in objectives):
        data.region = region
    try:
        data.reference = default_reference(table, objectives)
        data.history = _history(feasible, objectives, data.reference, data.region)
    except ValueError as error:  # an objective without a known worst value and no ok trial
        data.note("hypervolume", f"no reference point: {error}")
    data.layers = _layers(sources, data) if sources else None
    if not sources:
        data.note("layers", "no sweep folder given: per-layer sparsity is only read from sweep folders.")
    return data


# --------------------------------------------------------------------------- figures (one function each)


def _new_figure(panels: int, *, width: float = 9.0, height: float = 5.0, rows: int = 1) -> tuple[Figure, list[Axes]]:
    """A figure of ``panels`` axes on the Agg canvas, in the report's style."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = math.ceil(panels / rows)
    fig = Figure(figsize=(width * cols if rows == 1 else width, height * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
        ax.tick_params(labelsize=9)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    return fig, axes[:panels]


def _style(ax: Axes, title: str, xlabel: str, ylabel: str, *, legend: bool = True) -> None:
    """Title, labels and a small legend (when something is labelled)."""
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel, fontsize=10)
    ax.set_ylabel(ylabel, fontsize=10)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best", framealpha=0.85)


def _log_if_spans(ax: Axes, axis: str, values: np.ndarray, decades: float = 1.0) -> None:
    """Log scale on ``axis`` when the positive finite ``values`` span at least ``decades`` decades."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size and (v > 0).all() and math.log10(v.max() / v.min()) >= decades:
        from matplotlib.ticker import FuncFormatter, LogLocator

        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        target = ax.xaxis if axis == "x" else ax.yaxis
        target.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        if math.log10(v.max() / v.min()) < 2:  # few decades: label 2 and 5 between the powers of ten
            target.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
            target.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}"))


def _group_colors(keys: Sequence[object]) -> dict[object, str]:
    """A stable colour per group key."""
    return {key: GROUP_COLORS[i % len(GROUP_COLORS)] for i, key in enumerate(keys)}


def _label(value: object) -> str:
    return (
        "(none)" if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA else str(value)
    )


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _draw_trials(ax: Axes, data: ReportData, plotted: pd.DataFrame, ok: np.ndarray) -> None:
    """Every plotted trial, each group's front as a step line, the chosen points and the sweep constraints."""
    table, x, y = data.table, data.sparsity, data.accuracy
    groups = list(dict.fromkeys(_label(v) for v in table[data.by].tolist()))
    colors = _group_colors(sorted(groups))
    keys = plotted[data.by].map(_label)
    front_keys = data.front[data.by].map(_label) if not data.front.empty else pd.Series(dtype=object)
    for key in sorted(groups):
        rows = plotted[ok & (keys == key).to_numpy()]
        ax.scatter(rows[x], rows[y], s=18, color=colors[key], alpha=0.35, label=f"{data.by}={key}")
        front = data.front[(front_keys == key).to_numpy()] if not data.front.empty else data.front
        if front.empty:
            continue
        ax.scatter(
            front[x],
            front[y],
            s=55,
            color=colors[key],
            edgecolor="black",
            linewidth=0.8,
            zorder=3,
            label=f"front {data.by}={key}",
        )
        if len(data.objectives) == 2:
            signs = [-1.0 if o.direction == "max" else 1.0 for o in data.objectives]
            xi = [o.name for o in data.objectives].index(x)
            order = np.argsort(front[x].to_numpy(dtype=float) * signs[xi], kind="stable")
            ax.step(
                front[x].to_numpy(dtype=float)[order],
                front[y].to_numpy(dtype=float)[order],
                where="post",
                color=colors[key],
                linewidth=1.4,
                zorder=2,
            )
    failed = plotted[~ok]
    if len(failed):
        ax.scatter(
            failed[x],
            failed[y],
            marker="x",
            s=30,
            color=OUTCOME_COLORS[NOT_OK],
            label="not ok (excluded)",
        )
    for i, choice in enumerate(c for c in data.choices if c.row is not None):
        ax.scatter(
            [choice.row[x]],
            [choice.row[y]],
            marker="*",
            s=260,
            facecolor="none",
            edgecolor="black",
            linewidth=1.2,
            zorder=4,
        )
        ax.annotate(
            choice.label,
            (choice.row[x], choice.row[y]),
            xytext=(8, -14 - 11 * i),
            textcoords="offset points",
            fontsize=8,
            arrowprops=dict(arrowstyle="-", color="0.4", linewidth=0.6),
        )
    for c in dict.fromkeys(sc.constraint for sc in data.constraints):  # each distinct bound once, in spec order
        bound = c.min if c.min is not None else c.max
        if c.metric in (x, y):
            (ax.axhline if c.metric == y else ax.axvline)(
                bound,
                color="0.5",
                linestyle="--",
                linewidth=0.9,
                label=f"sweep constraint {c.describe()}",
            )


def _zoom_floor(data: ReportData, plotted: pd.DataFrame, ok: np.ndarray) -> float | None:
    """Lower accuracy bound of the zoomed panel: the sweep's accuracy floor, else 5 points below the best.

    None when no ok trial falls below it (the full view already is the useful part) or when
    accuracy is not maximised.
    """
    y = data.accuracy
    if not any(o.name == y and o.direction == "max" for o in data.objectives) or not ok.any():
        return None
    values = plotted.loc[ok, y].to_numpy(dtype=float)
    floors = [
        sc.constraint.min for sc in data.constraints if sc.constraint.metric == y and sc.constraint.min is not None
    ]
    floor = max(floors) if floors else float(values.max()) - 0.05
    return floor if (values < floor).any() and (values >= floor).sum() >= 2 else None


def scatter_figure(data: ReportData) -> Figure | None:
    """Every trial in (sparsity, accuracy), fronts highlighted; beside it, a zoom on those above the accuracy floor."""
    table, x, y = data.table, data.sparsity, data.accuracy
    plotted = table[_finite(table, [x, y])]
    if plotted.empty:
        return None
    ok = _is_ok(plotted)
    floor = _zoom_floor(data, plotted, ok)
    fig, axes = _new_figure(2 if floor is not None else 1, width=7.5 if floor is not None else 10, height=6)
    left_out = len(table) - len(plotted)
    labels = (f"{x} ({_direction(data, x)})", f"{y} ({_direction(data, y)})")
    _draw_trials(axes[0], data, plotted, ok)
    _log_if_spans(axes[0], "x", plotted[x].to_numpy(dtype=float))
    _style(
        axes[0], f"All {len(table)} trials" + (f" ({left_out} without metrics not shown)" if left_out else ""), *labels
    )
    if floor is not None:
        ax = axes[1]
        _draw_trials(ax, data, plotted, ok)
        inside = plotted[ok & (plotted[y].to_numpy(dtype=float) >= floor)]
        xs, ys = inside[x].to_numpy(dtype=float), inside[y].to_numpy(dtype=float)
        pad = max(float(ys.max() - floor), 1e-3) * 0.05
        ax.set_ylim(floor - pad, float(ys.max()) + pad)
        positive = xs[xs > 0]
        if positive.size:
            ax.set_xlim(float(positive.min()) / 1.3, float(xs.max()) * 1.3)
            _log_if_spans(ax, "x", positive, decades=0.5)
        _style(ax, f"Zoom: the {len(inside)} trials with {y} ≥ {floor:.4g}", *labels, legend=False)
    return fig


def _direction(data: ReportData, column: str) -> str:
    names = {o.name: o.direction for o in data.objectives}
    return {"max": "higher is better", "min": "lower is better"}.get(names.get(column, ""), "not an objective")


def hypervolume_figure(data: ReportData) -> Figure | None:
    """Hypervolume of each sweep's front against trials run (trial_number + 1), as a step line."""
    if data.history.empty:
        return None
    fig, (ax,) = _new_figure(1, width=9, height=4.5)
    colors = _group_colors(sorted(data.history["sweep"].unique()))
    for sweep, rows in data.history.groupby("sweep", sort=True):
        trials = rows["trial_number"].to_numpy(dtype=float) + 1
        ax.step(trials, rows["hypervolume"], where="post", color=colors[sweep], linewidth=1.6, label=str(sweep))
        ax.scatter(trials, rows["hypervolume"], s=10, color=colors[sweep])
    if data.region:
        axes = ", ".join(f"{name} {a.worst:g}→{a.best:g}{' (log)' if a.log else ''}" for name, a in data.region.items())
        title = f"Region hypervolume of the front so far ({axes})"
    else:
        reference = ", ".join(f"{o.name}={r:g}" for o, r in zip(data.objectives, data.reference))
        title = f"Hypervolume of the front so far (reference {reference})"
    _style(ax, title, "trials run (trial_number + 1)", "hypervolume")
    return fig


def _layer_rows(data: ReportData, row: pd.Series) -> pd.DataFrame:
    """The layers of one trial with live-row and live-column fractions."""
    layers = data.layers
    if layers is None or layers.empty:
        return pd.DataFrame()
    rows = layers[
        (layers["sweep"] == row["sweep"]).to_numpy(dtype=bool)
        & (layers["trial_number"] == row["trial_number"]).to_numpy(dtype=bool)
    ].copy()
    for part in ("rows", "cols"):
        total = rows[f"{part}_total"].astype(float)
        rows[f"{part}_frac"] = (rows[f"{part}_live"].astype(float) / total).where(total > 0)
    return rows


def _chosen_trials(data: ReportData) -> list[tuple[str, pd.Series]]:
    """Distinct chosen trials, each with the labels of every rule that chose it."""
    chosen: dict[tuple[str, int], tuple[list[str], pd.Series]] = {}
    for choice in data.choices:
        if choice.row is not None:
            key = (str(choice.row["sweep"]), int(choice.row["trial_number"]))
            chosen.setdefault(key, ([], choice.row))[0].append(choice.label)
    return [(" / ".join(labels), row) for labels, row in chosen.values()]


def layers_figure(data: ReportData) -> Figure | None:
    """Grouped bars per layer (nonzero fraction, live rows, live columns), one panel per chosen trial."""
    panels = [(label, row, _layer_rows(data, row)) for label, row in _chosen_trials(data)]
    panels = [p for p in panels if not p[2].empty]
    if not panels:
        return None
    n_layers = max(len(p[2]) for p in panels)
    fig, axes = _new_figure(len(panels), width=min(24.0, max(10.0, 0.5 * n_layers + 4)), height=3.4, rows=len(panels))
    width = 0.8 / len(LAYER_BARS)
    for ax, (label, row, layers) in zip(axes, panels):
        positions = np.arange(len(layers))
        for j, (column, name, color) in enumerate(LAYER_BARS):
            ax.bar(positions + (j - 1) * width, layers[column].to_numpy(dtype=float), width, color=color, label=name)
        ax.set_xticks(
            positions,
            layers["name"].tolist(),
            rotation=45 if len(layers) > 6 else 0,
            ha="right" if len(layers) > 6 else "center",
            fontsize=8,
        )
        ax.set_ylim(0, 1.05)
        values = f"{data.sparsity}={row[data.sparsity]:.4g}, {data.accuracy}={row[data.accuracy]:.4g}"
        title = f"{label}: {row['sweep']} trial {row['trial_number']} ({values})"
        _style(ax, title, "", "fraction kept", legend=False)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside upper center", ncols=len(LAYER_BARS), fontsize=9)
    return fig


def coverage_figure(data: ReportData) -> Figure | None:
    """strength × threshold of every trial, coloured by outcome, one panel per threshold_mode when both occur."""
    table = data.table
    if table.empty or not {"strength", "threshold"} <= set(table.columns):
        return None
    outcome = np.where(_is_ok(table), OK, NOT_OK).astype(object)
    outcome[table.index.get_indexer(data.front.index)] = "on front"
    modes = sorted(table["threshold_mode"].dropna().unique().tolist()) if "threshold_mode" in table.columns else []
    modes = modes if len(modes) > 1 else [None]
    fig, axes = _new_figure(len(modes), width=6.5, height=5)
    for ax, mode in zip(axes, modes):
        in_mode = (
            np.ones(len(table), dtype=bool)
            if mode is None
            else table["threshold_mode"].eq(mode).fillna(False).to_numpy(dtype=bool)
        )
        for name, color in OUTCOME_COLORS.items():
            rows = table[in_mode & (outcome == name)]
            marker = "x" if name == NOT_OK else "o"
            ax.scatter(
                rows["strength"],
                rows["threshold"],
                s=40 if name == "on front" else 22,
                marker=marker,
                color=color,
                label=f"{name} ({len(rows)})",
            )
        for axis, column in (("x", "strength"), ("y", "threshold")):
            _log_if_spans(ax, axis, table.loc[in_mode, column].to_numpy(dtype=float, na_value=np.nan), decades=0.0)
        _style(ax, "search coverage" + (f", threshold_mode={mode}" if mode else ""), "strength", "threshold")
    return fig


# --------------------------------------------------------------------------- HTML


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1150px;
  color: #222; line-height: 1.45; padding: 0 16px; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 1.8em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; } tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 6px 10px; margin: 8px 0; }
.muted { color: #666; font-size: 0.9em; } .scroll { overflow-x: auto; } td.text { white-space: nowrap; }
code { background: #f3f3f3; padding: 0 3px; }
"""
TEXT_COLUMNS = {
    "sweep",
    "reg",
    "threshold_mode",
    "mlflow_run_id",
    "status",
    "message",
    "rule",
    "chosen",
    "name",
    "shape",
    "model",
    "dataset",
}


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _cell(column: str, value: object, links: Mapping[str, str] | None = None) -> str:
    """One table cell, escaped and formatted (NaN/NA as an en dash); a run id links to its MLflow page."""
    if column == RUN_ID_COLUMN and links and isinstance(value, str) and value in links:
        return f'<td class="text"><a href="{_esc(links[value])}">{_esc(value)}</a></td>'
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        text = "–"
    elif isinstance(value, (float, np.floating)):
        text = f"{value:.4f}" if "accuracy" in column or column.endswith("_frac") else f"{value:.4g}"
    else:
        text = str(value)
    return f'<td class="text">{_esc(text)}</td>' if column in TEXT_COLUMNS else f"<td>{_esc(text)}</td>"


def table_html(
    frame: pd.DataFrame, columns: Sequence[str], css_id: str | None = None, links: Mapping[str, str] | None = None
) -> str:
    """An escaped HTML table of ``columns`` (those present) of ``frame``; ``links``: run id -> MLflow page."""
    columns = [c for c in dict.fromkeys(columns) if c in frame.columns]
    head = "".join(f'<th class="{"text" if c in TEXT_COLUMNS else ""}">{_esc(c)}</th>' for c in columns)
    body = "".join(
        "<tr>" + "".join(_cell(c, v, links) for c, v in zip(columns, row)) + "</tr>"
        for row in frame[columns].itertuples(index=False, name=None)
    )
    ident = f' id="{_esc(css_id)}"' if css_id else ""
    return f'<div class="scroll"><table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _img(name: str, png: bytes, alt: str) -> str:
    source = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return f'<img id="fig-{_esc(name)}" alt="{_esc(alt)}" src="{source}">'


def _notes(data: ReportData, section: str) -> str:
    return "".join(f'<p class="note">{_esc(message)}</p>' for message in data.notes.get(section, []))


def _section(ident: str, title: str, body: str) -> str:
    return f'<section id="{_esc(ident)}"><h2>{_esc(title)}</h2>{body}</section>'


def _header(data: ReportData, sources: Sequence[str]) -> str:
    """Sources, trial counts by status per sweep, objectives, grouping and the selection rule."""
    table = data.table
    labelled = table.assign(sweep=table["sweep"].fillna("(unnamed)"), status=table["status"].fillna("(unknown)"))
    counts = labelled.groupby(["sweep", "status"]).size().unstack(fill_value=0) if len(table) else pd.DataFrame()
    statuses = [s for s in STATUS_ORDER if s in counts.columns] + sorted(
        str(s) for s in counts.columns if s not in STATUS_ORDER
    )
    counts = counts.reindex(columns=statuses).reset_index() if len(counts) else pd.DataFrame(columns=["sweep"])
    counts["total"] = counts[statuses].sum(axis=1) if statuses else 0
    objectives = ", ".join(
        f"<code>{_esc(o.name)}</code> ({'maximise' if o.direction == 'max' else 'minimise'})" for o in data.objectives
    )
    parts = [
        "<p>Sources: " + ", ".join(f"<code>{_esc(s)}</code>" for s in sources) + "</p>",
        f"<p>{len(table)} trial(s) in {table['sweep'].nunique()} sweep(s); {len(data.ok)} ok.</p>",
        table_html(counts, ["sweep", *statuses, "total"], "status-counts") if len(table) else "",
        f"<p>Objectives: {objectives}. Fronts are computed per <code>{_esc(data.by)}</code>; "
        "chosen points over all trials.</p>",
        '<p class="muted">Selection uses validation metrics only (the objectives above). '
        "Test accuracy is shown beside each chosen point for reporting and is never used to select. "
        "Trials that did not finish ok (failed, diverged, pruned, interrupted) never enter a front.</p>",
    ]
    if any("test" in o.name.lower() for o in data.objectives):
        parts.append(
            '<p class="note">An objective is a test metric: choosing on it leaks the test set into model selection.</p>'
        )
    if data.constraints:
        parts.append(
            '<p class="muted">Sweep constraints (trials that violate them stay off the fronts, as in each sweep\'s own '
            "<code>pareto.csv</code>; the chosen points' rules apply to all trials): "
            + "; ".join(_esc(c.describe()) for c in data.constraints)
            + ".</p>"
        )
    if data.ok.empty:
        parts.append(
            '<p class="note" id="no-ok-trial">No trial finished ok: '
            "there is no Pareto front, no chosen point and no hypervolume. "
            "See the excluded trials below for what went wrong.</p>"
        )
    return "".join(parts)


def _front_section(data: ReportData) -> str:
    """The front table, the chosen points and the excluded trials."""
    columns = [data.by, *TABLE_COLUMNS, *(o.name for o in data.objectives)]
    parts = [
        f"<p>{len(data.front)} trial(s) on the front(s) per <code>{_esc(data.by)}</code>.</p>",
        table_html(data.front, columns, "front-table", data.run_links)
        if len(data.front)
        else '<p class="note">The front is empty: no ok trial with finite objectives.</p>',
    ]
    chosen = pd.DataFrame([{"chosen": c.label, **c.row.to_dict()} for c in data.choices if c.row is not None])
    if data.choices:
        rules = "".join(
            f"<li><b>{_esc(c.label)}</b>: {_esc(c.rule)}{'' if c.row is not None else ' — nothing qualifies'}.</li>"
            for c in data.choices
        )
        parts += [
            "<h3>Chosen points</h3>",
            table_html(chosen, ["chosen", *TABLE_COLUMNS], "chosen-table") if len(chosen) else "",
            f'<ul class="muted">{rules}</ul>',
        ]
    excluded = data.table[~_is_ok(data.table)]
    if len(excluded):
        body = table_html(
            excluded.assign(message=excluded["message"].fillna("").str.slice(0, 300)),
            ["sweep", TRIAL_NUMBER_KEY, "status", "reg", "strength", "threshold", "message"],
            "excluded-table",
        )
        summary = f"<summary>{len(excluded)} excluded trial(s) (not ok)</summary>"
        parts.append(f"<details{' open' if len(excluded) <= 20 else ''}>{summary}{body}</details>")
    return "".join(parts)


def _layers_tables(data: ReportData) -> str:
    """Collapsed per-layer tables of the chosen trials."""
    if data.layers is None or data.layers.empty:
        return ""
    parts = []
    for label, row in _chosen_trials(data):
        layers = _layer_rows(data, row)
        trial = f"{_esc(row['sweep'])} trial {_esc(row['trial_number'])}"
        if layers.empty:
            parts.append(f'<p class="note">{_esc(label)} ({trial}): no per-layer record.</p>')
            continue
        columns = [
            "name",
            "shape",
            "numel",
            "nonzero",
            "nonzero_frac",
            "rows_live",
            "rows_total",
            "cols_live",
            "cols_total",
        ]
        parts.append(
            f"<details><summary>{_esc(label)}: {trial}, {len(layers)} layers</summary>"
            f"{table_html(layers, columns)}</details>"
        )
    return "".join(parts)


def render_html(data: ReportData, images: dict[str, bytes], sources: Sequence[str]) -> str:
    """The whole page: header and five sections, every figure inlined."""

    def figure(name: str, alt: str, missing: str) -> str:
        return _img(name, images[name], alt) if name in images else f'<p class="note">{_esc(missing)}</p>'

    sections = [
        _section(
            "scatter",
            "Pareto scatter",
            figure(
                "scatter", "accuracy against sparsity of every trial", "No trial has finite objective values to plot."
            )
            + (
                '<p class="muted">Large outlined markers are each group\'s front, joined by the boundary of what '
                "it dominates; stars are the chosen points; "
                "crosses are trials that did not finish ok (never on a front).</p>"
                if "scatter" in images
                else ""
            ),
        ),
        _section("front", "Pareto front and chosen points", _notes(data, "front") + _front_section(data)),
        _section(
            "hypervolume",
            "Hypervolume against trials run",
            _notes(data, "hypervolume")
            + figure(
                "hypervolume",
                "hypervolume of the front against trials run",
                "No ok trial with finite objectives: no hypervolume to show.",
            )
            + '<p class="muted">One region (or reference point) for every sweep, so the curves compare: '
            "a curve that flattens early found its front early. The region hypervolume counts accuracy "
            "from the sweep's floor up and sparsity on a log scale, as a fraction of that box.</p>",
        ),
        _section(
            "layers",
            "Per-layer sparsity of the chosen points",
            _notes(data, "layers")
            + figure(
                "layers", "per-layer kept fractions of the chosen points", "No per-layer record for the chosen points."
            )
            + _layers_tables(data),
        ),
        _section(
            "coverage",
            "Search-space coverage",
            figure("coverage", "strength against threshold of every trial, by outcome", "No trial to show."),
        ),
    ]
    title = f"hoyersweep report: {', '.join(sorted(map(str, data.table['sweep'].dropna().unique()))) or 'no trials'}"
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>"
        f'<h1>{_esc(title)}</h1><p class="muted">generated {_esc(generated)}</p>'
        f'<section id="header">{_header(data, sources)}</section>' + "".join(sections) + "</body></html>\n"
    )


def write_report(data: ReportData, output: str | Path, sources: Sequence[str] = ()) -> dict[str, Path]:
    """Write the HTML page and ``<stem>_<figure>.png`` beside it; returns what was written (stale PNGs removed)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    makers = {
        "scatter": scatter_figure,
        "hypervolume": hypervolume_figure,
        "layers": layers_figure,
        "coverage": coverage_figure,
    }
    images, written = {}, {}
    for name in FIGURES:
        path = output.with_name(f"{output.stem}_{name}.png")
        fig = makers[name](data)
        if fig is None:
            path.unlink(missing_ok=True)
            continue
        images[name] = _png(fig)
        path.write_bytes(images[name])
        written[name] = path
    output.write_text(render_html(data, images, sources), encoding="utf-8")
    written["html"] = output
    return written


def mlflow_run_links(sources: Sequence[str], mlflow_url: str) -> dict[str, str]:
    """Run id -> ``<mlflow_url>/#/experiments/<id>/runs/<run id>`` for every trial run of the sweep folders."""
    from mlflow.tracking import MlflowClient

    links = {}
    for source in sources:
        for sweep in sweep_dirs(str(source)):
            name = sweep_meta(sweep)[0]
            client = MlflowClient(tracking_uri_of(sweep))
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                continue
            for run in client.search_runs([experiment.experiment_id], max_results=50000):
                page = f"#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}"
                links[run.info.run_id] = f"{mlflow_url.rstrip('/')}/{page}"
    return links


def build_report(
    sources: Sequence[str],
    output: str | Path,
    *,
    objectives: str = DEFAULT_OBJECTIVES_TEXT,
    by: str | None = None,
    min_accuracy: float | None = None,
    max_nonzero: float | None = None,
) -> dict[str, Path]:
    """Load ``sources`` (as ``load_results``) and write the report; returns the written paths."""
    sources = [str(s) for s in sources]
    data = collect(
        load_results(sources),
        parse_objectives(objectives),
        by=by,
        min_accuracy=min_accuracy,
        max_nonzero=max_nonzero,
        sources=sources,
    )
    return write_report(data, output, sources)


# --------------------------------------------------------------------------- command line
