"""Multi-objective Pareto-front utilities over trial DataFrames (one row per trial).

Conventions (shared by every function here):

* Directions are normalised once: maximised objectives are negated so that
  everything is *minimised* internally (cf. Optuna's ``_multi_objective``).
  Inputs and outputs are always in the original units.
* Domination, in minimisation form: ``a`` dominates ``b`` iff ``a <= b`` in every
  objective and ``a < b`` in at least one.  Exact duplicates (equal in every
  objective) therefore do *not* dominate each other: all copies of a
  non-dominated point stay on the front.
* Eligibility: a row with a non-finite value (NaN, +inf or -inf) in any
  objective is ineligible -- it never enters a front, never dominates anything
  and is ignored by the hypervolume.  Infinite metrics only arise from diverged
  or broken runs, so they are treated like missing values rather than as
  "infinitely good/bad".  For DataFrames, rows whose ``status_col`` value is not
  in ``ok_status`` (failed, diverged, pruned, interrupted, running, missing status) are
  ineligible too; if ``status_col`` is ``None`` or absent from the frame, every
  row counts as ok.  Ineligible rows are left untouched in the input frame;
  no function here mutates its input.
* Model selection must use validation metrics.  Nothing here looks at
  ``test_accuracy`` unless explicitly told to, and the selection helpers warn if
  asked to select on a column whose name contains ``"test"``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from trainables.contract import FLOPS_FRAC, METRICS, NONZERO_FRAC, VAL_ACCURACY, Axis, Direction, Status

__all__ = [
    "Direction",
    "Objective",
    "DEFAULT_OBJECTIVES",
    "DEFAULT_OBJECTIVES_TEXT",
    "parse_objectives",
    "to_minimisation",
    "nondominated_mask",
    "pareto_front",
    "hypervolume",
    "hypervolume_history",
    "region_scores",
    "region_hypervolume",
    "region_hypervolume_history",
    "default_reference",
    "knee_point",
    "sparsest_with_accuracy",
    "most_accurate_with_sparsity",
]

_DIRECTIONS: tuple[str, ...] = ("min", "max")
_OK: tuple[str, ...] = (Status.OK.value,)  # plain strings: pandas' isin hashes StrEnum members by name


@dataclass(frozen=True)
class Objective:
    """A DataFrame column to optimise and whether lower (``"min"``) or higher (``"max"``) is better."""

    name: str
    direction: Direction

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"objective name must be a non-empty string, got {self.name!r}")
        if self.direction not in _DIRECTIONS:
            raise ValueError(f"objective {self.name!r}: direction must be 'min' or 'max', got {self.direction!r}")


DEFAULT_OBJECTIVES: list[Objective] = [
    Objective(VAL_ACCURACY, METRICS[VAL_ACCURACY]),
    Objective(NONZERO_FRAC, METRICS[NONZERO_FRAC]),
]

DEFAULT_OBJECTIVES_TEXT = ",".join(f"{o.name}:{o.direction}" for o in DEFAULT_OBJECTIVES)
"""``DEFAULT_OBJECTIVES`` as ``parse_objectives`` reads them (the commands' ``--objectives`` default)."""

ObjectivesLike = str | Sequence[Objective | str]
OkStatus = str | Sequence[object]

# Known worst values used by ``default_reference`` (name, direction) -> bound: every maximised
# accuracy of the contract -> 0, the dense fractions -> 1, and two common derived columns.
_KNOWN_WORST: dict[tuple[str, str], float] = {
    **{(name, "max"): 0.0 for name, way in METRICS.items() if way == "max" and "accuracy" in name},
    (NONZERO_FRAC, "min"): 1.0,  # fully dense model
    (FLOPS_FRAC, "min"): 1.0,  # dense FLOPs
    ("train_accuracy", "max"): 0.0,
    ("sparsity", "max"): 0.0,  # 1 - nonzero_frac
}


# --------------------------------------------------------------------------- parsing


def _parse_item(item: str, known: Collection[str] | None = None) -> Objective:
    raw = item
    item = item.strip()
    if ":" not in item:
        raise ValueError(f"bad objective {raw!r}: expected 'name:min' or 'name:max'")
    name, direction = (part.strip() for part in item.rsplit(":", 1))
    if not name:
        raise ValueError(f"bad objective {raw!r}: empty column name")
    if direction.lower() not in _DIRECTIONS:
        raise ValueError(f"bad objective {raw!r}: direction must be 'min' or 'max', got {direction!r}")
    if known is not None and name not in known:
        raise ValueError(f"bad objective {raw!r}: unknown column {name!r}; known: {', '.join(known)}")
    return Objective(name, direction.lower())  # type: ignore[arg-type]


def parse_objectives(text: str | Sequence[str], known: Collection[str] | None = None) -> list[Objective]:
    """Parse ``"val_accuracy:max,nonzero_frac:min"`` (or a list of ``"name:dir"`` items).

    Names may contain colons (the direction is after the last one); directions
    are case-insensitive.  Raises a one-line ``ValueError`` naming the bad item
    for a missing/unknown direction, an empty name, a duplicate name or an
    empty specification; with ``known`` (e.g. ``trainables.contract.METRICS``
    or a table's columns), also for a name not in it, listing the known ones.
    """
    if isinstance(text, str) and not text.strip():
        raise ValueError(f"no objectives given in {text!r}")
    items = text.split(",") if isinstance(text, str) else list(text)
    objectives: list[Objective] = []
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"bad objective {item!r}: expected a 'name:min|max' string")
        if not item.strip():
            raise ValueError(f"bad objective {item!r}: empty item in {text!r}")
        obj = _parse_item(item, known)
        if obj.name in seen:
            raise ValueError(f"bad objective {item!r}: duplicate column {obj.name!r}")
        seen.add(obj.name)
        objectives.append(obj)
    if not objectives:
        raise ValueError(f"no objectives given in {text!r}")
    return objectives


def _coerce_objectives(objectives: ObjectivesLike) -> list[Objective]:
    """Accept a spec string, ``Objective`` instances or ``"name:dir"`` strings."""
    if isinstance(objectives, str):
        return parse_objectives(objectives)
    out = [o if isinstance(o, Objective) else parse_objectives([o])[0] for o in objectives]
    if not out:
        raise ValueError("no objectives given")
    names = [o.name for o in out]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate objective columns in {names}")
    return out


# --------------------------------------------------------------------------- core numpy


def _check_directions(directions: Sequence[str] | None, k: int) -> list[str]:
    if directions is None:
        return ["min"] * k
    if isinstance(directions, str):
        raise ValueError(f"directions must be a sequence like ['max', 'min'], got {directions!r}")
    dirs = list(directions)
    if len(dirs) != k:
        raise ValueError(f"got {len(dirs)} directions for {k} objective columns")
    bad = [d for d in dirs if d not in _DIRECTIONS]
    if bad:
        raise ValueError(f"directions must be 'min' or 'max', got {bad[0]!r}")
    return dirs


def _as_2d(values: np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"values must have shape (n, k), got shape {arr.shape}")
    return arr


def to_minimisation(values: np.ndarray, directions: Sequence[Direction]) -> np.ndarray:
    """Return a float copy of ``values`` (shape ``(n, k)``) with ``"max"`` columns negated.

    ``-0.0`` is normalised to ``0.0`` so equal values stay bitwise equal.
    """
    arr = _as_2d(values)
    dirs = _check_directions(directions, arr.shape[1])
    sign = np.array([-1.0 if d == "max" else 1.0 for d in dirs])
    return arr * sign + 0.0


def _nondominated_2d(v: np.ndarray) -> np.ndarray:
    """Non-dominated mask for finite minimisation values of shape ``(n, 2)``; O(n log n).

    Sort by (obj1, obj2) and sweep: a point is kept iff it has the smallest obj2
    among points with the same obj1 *and* its obj2 is strictly smaller than
    every obj2 seen at a strictly smaller obj1.  Duplicates share both
    properties, so all copies are kept.
    """
    n = len(v)
    x, y = v[:, 0], v[:, 1]
    order = np.lexsort((y, x))
    xs, ys = x[order], y[order]
    starts = np.empty(n, dtype=bool)
    starts[0] = True
    np.not_equal(xs[1:], xs[:-1], out=starts[1:])
    group_start = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    best_before = np.concatenate(([np.inf], np.minimum.accumulate(ys)))[group_start]
    keep = (ys == ys[group_start]) & (ys < best_before)
    mask = np.empty(n, dtype=bool)
    mask[order] = keep
    return mask


def _weakly_dominates(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``out[i, j] = all(a[i] <= b[j])``, built one objective at a time (faster than a 3-D broadcast)."""
    out = a[:, None, 0] <= b[None, :, 0]
    for j in range(1, a.shape[1]):
        out &= a[:, None, j] <= b[None, :, j]
    return out


def _nondominated_nd(v: np.ndarray, block_cells: int = 1 << 22) -> np.ndarray:
    """Non-dominated mask for finite minimisation values of shape ``(n, k)``, any ``k >= 1``.

    Rows are lexicographically sorted and de-duplicated, so a point can only be
    dominated by points before it.  The remaining points are processed in
    blocks of ``b`` from the head: block members not dominated inside the
    block are front members (anything earlier that dominated them was already
    removed together with them), and every later point weakly dominated by one
    of them is removed with a single broadcast comparison.  Time
    O(n * |front| * k) (O(n^2 k) when every point is on the front) with about
    n / b numpy passes (b <= 256); memory O(b * n) booleans, with ``b * n * k``
    kept near ``block_cells``.
    """
    n, k = v.shape
    order = np.lexsort(v.T[::-1])
    s = v[order]
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.any(s[1:] != s[:-1], axis=1, out=new[1:])
    unique_id = np.cumsum(new) - 1
    rest = s[new]
    idx = np.arange(len(rest))
    on_front = np.zeros(len(rest), dtype=bool)
    while idx.size:
        b = int(np.clip(block_cells // (idx.size * k), 1, 256))
        head, rest, head_idx, idx = rest[:b], rest[b:], idx[:b], idx[b:]
        covered = _weakly_dominates(head, head)  # [i, j]: head i <= head j
        np.fill_diagonal(covered, False)  # rows are unique: covered off-diagonal means dominated
        won = ~covered.any(axis=0)
        winners = head[won]
        on_front[head_idx[won]] = True
        if idx.size:
            keep = ~_weakly_dominates(winners, rest).any(axis=0)
            rest, idx = rest[keep], idx[keep]
    mask = np.empty(n, dtype=bool)
    mask[order] = on_front[unique_id]
    return mask


def nondominated_mask(values: np.ndarray, directions: Sequence[Direction] | None = None) -> np.ndarray:
    """Boolean mask over the rows of ``values`` (shape ``(n, k)``) marking the Pareto front.

    ``directions`` defaults to all ``"min"``.  A row is on the front iff it is
    finite in every column and no other finite row dominates it (``<=``
    everywhere, ``<`` somewhere, after normalising directions); duplicates do
    not dominate each other, so all copies of a front point are ``True``.  Rows
    with NaN/±inf are always ``False``.

    ``k == 2`` uses an O(n log n) sort-and-sweep; ``k == 1`` marks every row
    attaining the best value; ``k >= 3`` uses a blocked, vectorised elimination
    that is O(n * |front| * k) (O(n^2 k) worst case).
    """
    arr = _as_2d(values)
    n, k = arr.shape
    if k == 0:
        raise ValueError("values must have at least one objective column")
    v = to_minimisation(arr, _check_directions(directions, k))
    finite = np.isfinite(v).all(axis=1)
    mask = np.zeros(n, dtype=bool)
    if not finite.any():
        return mask
    w = v[finite]
    if k == 1:
        sub = w[:, 0] == w[:, 0].min()
    elif k == 2:
        sub = _nondominated_2d(w)
    else:
        sub = _nondominated_nd(w)
    mask[finite] = sub
    return mask


# --------------------------------------------------------------------------- DataFrame helpers


def _ok_status_tuple(ok_status: OkStatus) -> tuple[object, ...]:
    return (ok_status,) if isinstance(ok_status, str) else tuple(ok_status)


def _require_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} column(s) {missing} not in DataFrame (has {list(df.columns)})")


def _status_ok(df: pd.DataFrame, status_col: str | None, ok_status: OkStatus) -> np.ndarray:
    """Rows whose status is acceptable; all rows if ``status_col`` is None or missing."""
    if status_col is None or status_col not in df.columns:
        return np.ones(len(df), dtype=bool)
    return df[status_col].isin(_ok_status_tuple(ok_status)).to_numpy(dtype=bool)


def _objective_values(df: pd.DataFrame, objectives: Sequence[Objective]) -> np.ndarray:
    """Objective columns as a float array in minimisation form (missing values -> NaN)."""
    names = [o.name for o in objectives]
    _require_columns(df, names, "objective")
    raw = df[names].to_numpy(dtype=float, na_value=np.nan)
    return to_minimisation(raw.reshape(len(df), len(names)), [o.direction for o in objectives])


def _eligible(df: pd.DataFrame, v: np.ndarray, status_col: str | None, ok_status: OkStatus) -> np.ndarray:
    return _status_ok(df, status_col, ok_status) & np.isfinite(v).all(axis=1)


def pareto_front(
    df: pd.DataFrame,
    objectives: ObjectivesLike = DEFAULT_OBJECTIVES,
    *,
    by: str | Sequence[str] | None = None,
    status_col: str | None = "status",
    ok_status: OkStatus = _OK,
) -> pd.DataFrame:
    """Rows of ``df`` on the Pareto front of ``objectives`` (a copy; ``df`` is not modified).

    Only eligible rows compete: status in ``ok_status`` (every row if
    ``status_col`` is None or not a column) and finite in every objective.
    Duplicated front points are all returned.  With ``by`` (a column or list of
    columns, e.g. regulariser type or sweep id) a separate front is computed
    per group (NaN group keys form their own group) and the result keeps the
    group columns.  The original index is preserved.  Rows are sorted by group
    (if any), then by the first objective best first, then by the remaining
    objectives best first, then by original position.
    """
    objs = _coerce_objectives(objectives)
    v = _objective_values(df, objs)
    eligible = _eligible(df, v, status_col, ok_status)
    n = len(df)
    if by is None:
        groups = np.zeros(n, dtype=np.int64)
    else:
        by_cols = [by] if isinstance(by, str) else list(by)
        _require_columns(df, by_cols, "group")
        key = by_cols[0] if len(by_cols) == 1 else by_cols
        groups = df.groupby(key, dropna=False, sort=True).ngroup().to_numpy(dtype=np.int64)
    on_front = np.zeros(n, dtype=bool)
    if eligible.any():
        pos = np.flatnonzero(eligible)
        g = groups[pos]
        order = np.argsort(g, kind="stable")
        pos, g = pos[order], g[order]
        bounds = np.flatnonzero(np.diff(g)) + 1
        for chunk in np.split(pos, bounds):
            on_front[chunk] = nondominated_mask(v[chunk])
    front_pos = np.flatnonzero(on_front)
    keys = [front_pos] + [v[front_pos, j] for j in range(v.shape[1] - 1, -1, -1)] + [groups[front_pos]]
    front_pos = front_pos[np.lexsort(keys)]
    return df.iloc[front_pos].copy()


# --------------------------------------------------------------------------- hypervolume


def _hv_2d(p: np.ndarray, ref: np.ndarray) -> float:
    """Exact 2-D hypervolume; ``p`` must be finite and strictly better than ``ref``. O(n log n).

    Dominated points are harmless: the running minimum of obj2 absorbs them.
    """
    order = np.lexsort((p[:, 1], p[:, 0]))
    xs, ys = p[order, 0], p[order, 1]
    widths = np.append(xs[1:], ref[0]) - xs
    heights = ref[1] - np.minimum.accumulate(ys)
    return float(np.dot(widths, heights))


def _hv_rec(p: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume by slicing along the last objective (HSO-style recursion)."""
    k = p.shape[1]
    if len(p) == 0:
        return 0.0
    if k == 1:
        return float(ref[0] - p[:, 0].min())
    if k == 2:
        return _hv_2d(p, ref)
    p = p[nondominated_mask(p)]
    p = np.unique(p, axis=0)  # values are finite and -0.0 free (see to_minimisation)
    p = p[np.argsort(p[:, -1], kind="stable")]
    z_next = np.append(p[1:, -1], ref[-1])
    depth = z_next - p[:, -1]
    total = 0.0
    for i in np.flatnonzero(depth > 0):
        total += depth[i] * _hv_rec(p[: i + 1, :-1], ref[:-1])
    return float(total)


def hypervolume(
    points: np.ndarray,
    reference: np.ndarray | Sequence[float],
    directions: Sequence[Direction] | None = None,
) -> float:
    """Exact hypervolume dominated by ``points`` (shape ``(n, k)``) and bounded by ``reference``.

    Both are in original units; ``directions`` (default all ``"min"``) are
    normalised to minimisation first.  The volume is that of the union of boxes
    ``[p, reference]``.  Points that are non-finite, or not strictly better than
    the reference in every objective, contribute nothing; adding dominated
    points never changes the result.  Empty input gives ``0.0``.

    Complexity: k = 1 O(n); k = 2 O(n log n) (sort and sum rectangles); k >= 3
    recursive slicing along the last objective over the non-dominated points,
    O(m^(k-1) log m) for m front points (k = 3: O(m^2 log m), fine for fronts
    of a few thousand points; k >= 4 meant for small fronts).
    """
    pts = _as_2d(points)
    k = pts.shape[1]
    ref = np.asarray(reference, dtype=float).reshape(-1)
    if ref.shape != (k,):
        raise ValueError(f"reference has {ref.size} values for {k} objectives")
    if k == 0:
        raise ValueError("points must have at least one objective column")
    if not np.isfinite(ref).all():
        raise ValueError(f"reference must be finite, got {ref.tolist()}")
    dirs = _check_directions(directions, k)
    p = to_minimisation(pts, dirs)
    r = to_minimisation(ref[None, :], dirs)[0]
    p = p[np.isfinite(p).all(axis=1) & (p < r).all(axis=1)]
    if len(p) == 0:
        return 0.0
    return _hv_rec(p, r)


def default_reference(
    df: pd.DataFrame | None = None,
    objectives: ObjectivesLike = DEFAULT_OBJECTIVES,
    *,
    status_col: str | None = "status",
    ok_status: OkStatus = _OK,
    margin: float = 0.0,
) -> np.ndarray:
    """Reference point (original units) for :func:`hypervolume`.

    Known objectives use their natural worst value: accuracies (every maximised
    ``*accuracy*`` metric of ``trainables.contract.METRICS``, and ``train_accuracy``)
    -> 0, ``nonzero_frac`` and ``flops_frac`` (minimised) -> 1 (dense), ``sparsity``
    (maximised) -> 0.  Any other objective uses the worst value observed among the
    eligible rows of ``df`` (ok status and finite in every objective, i.e. the rows
    that can reach a front), pushed out by ``margin`` times the observed range; with
    the default ``margin=0`` the points attaining that worst value add no volume.
    Raises ``ValueError`` (listing the known objectives) if such an objective is
    given without ``df``, or ``df`` has no eligible rows.  With the default
    objectives, ``default_reference()`` is ``[0.0, 1.0]``.
    """
    objs = _coerce_objectives(objectives)
    if margin < 0 or not math.isfinite(margin):
        raise ValueError(f"margin must be finite and >= 0, got {margin!r}")
    ref = np.array([_KNOWN_WORST.get((o.name, o.direction), np.nan) for o in objs])
    unknown = [j for j in range(len(objs)) if np.isnan(ref[j])]
    if not unknown:
        return ref + 0.0
    if df is None:
        name = objs[unknown[0]].name
        raise ValueError(
            f"no known worst value for objective {name!r} ({objs[unknown[0]].direction}); pass df to use the "
            f"observed worst (known: {', '.join(f'{n}:{d}' for n, d in _KNOWN_WORST)})"
        )
    v = _objective_values(df, objs)
    v = v[_eligible(df, v, status_col, ok_status)]
    if len(v) == 0:
        raise ValueError(f"no eligible rows to derive a reference for {[objs[j].name for j in unknown]}")
    for j in unknown:
        worst = v[:, j].max() + margin * (v[:, j].max() - v[:, j].min())  # minimisation form
        ref[j] = -worst if objs[j].direction == "max" else worst
    return ref + 0.0


def hypervolume_history(
    df: pd.DataFrame,
    objectives: ObjectivesLike = DEFAULT_OBJECTIVES,
    reference: np.ndarray | Sequence[float] | None = None,
    *,
    order_col: str | None = "trial_number",
    status_col: str | None = "status",
    ok_status: OkStatus = _OK,
) -> pd.DataFrame:
    """Hypervolume of the front of the first ``i`` eligible trials, for every ``i``.

    Eligible rows (ok status, finite objectives) are ordered by ``order_col``
    (stable; ``None`` keeps the row order).  ``reference`` is in original units
    (default :func:`default_reference` of ``df``).  Returns one row per
    eligible trial with columns ``n_trials`` (1..m), ``hypervolume``
    (non-decreasing) and ``order_col`` (that trial's value, when given).
    The front is maintained incrementally, so a dominated trial costs one
    vectorised check.
    """
    objs = _coerce_objectives(objectives)
    if reference is None:
        reference = default_reference(df, objs, status_col=status_col, ok_status=ok_status)
    ref = np.asarray(reference, dtype=float).reshape(-1)
    if ref.shape != (len(objs),) or not np.isfinite(ref).all():
        raise ValueError(f"reference must be {len(objs)} finite values, got {ref.tolist()}")
    r = to_minimisation(ref[None, :], [o.direction for o in objs])[0]
    v = _objective_values(df, objs)
    pos = np.flatnonzero(_eligible(df, v, status_col, ok_status))
    if order_col is not None:
        _require_columns(df, [order_col], "order")
        keys = df[order_col].to_numpy()[pos]
        pos = pos[np.argsort(keys, kind="stable")]
    hv = np.empty(len(pos))
    front = np.empty((0, len(objs)))
    current = 0.0
    for i, p in enumerate(v[pos]):
        if (p < r).all() and not (front <= p).all(axis=1).any():
            front = np.vstack([front[~(p <= front).all(axis=1)], p])
            current = _hv_rec(front, r)
        hv[i] = current
    out = pd.DataFrame({"n_trials": np.arange(1, len(pos) + 1), "hypervolume": hv})
    if order_col is not None:
        out[order_col] = df[order_col].to_numpy()[pos]
    return out


def region_scores(df: pd.DataFrame, axes: Mapping[str, Axis]) -> pd.DataFrame:
    """Each objective of ``axes`` as a score in [0, 1] of its region (``contract.Axis``): 0 at worst, 1 at best.

    Linear or log between the axis' bounds, clipped; NaN stays NaN (ineligible).
    """
    _require_columns(df, list(axes), "objective")
    scores = {}
    for name, axis in axes.items():
        values = pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        if axis.log:
            with np.errstate(divide="ignore", invalid="ignore"):  # 0 → -inf: all pruned is the best sparsity
                values = np.log(values)
            worst, best = math.log(axis.worst), math.log(axis.best)
        else:
            worst, best = axis.worst, axis.best
        scores[name] = np.clip((values - worst) / (best - worst), 0.0, 1.0)
    return pd.DataFrame(scores, index=df.index)


def _scored(df: pd.DataFrame, axes: Mapping[str, Axis], status_col: str | None) -> tuple[pd.DataFrame, list[Objective]]:
    scored = region_scores(df, axes)
    for column in {status_col, "trial_number"} - {None}:
        if column in df.columns:
            scored[column] = df[column].to_numpy()
    return scored, [Objective(name, "max") for name in axes]


def region_hypervolume(
    df: pd.DataFrame,
    axes: Mapping[str, Axis],
    *,
    status_col: str | None = "status",
    ok_status: OkStatus = _OK,
) -> float:
    """Hypervolume of ``df``'s eligible trials inside a region (a fraction of the unit box, 0…1).

    Each objective is scored on its ``contract.Axis`` (e.g. accuracy from the spec's floor to 1,
    nonzero fraction from 1 to 1e-3 on a log scale), so trials below the floor or dense add
    nothing and the measure is not saturated by accurate dense models.
    """
    scored, objectives = _scored(df, axes, status_col)
    eligible = _eligible(scored, _objective_values(scored, objectives), status_col, ok_status)
    points = scored.loc[eligible, list(axes)].to_numpy(dtype=float)
    return hypervolume(points, np.zeros(len(axes)), ["max"] * len(axes))


def region_hypervolume_history(
    df: pd.DataFrame,
    axes: Mapping[str, Axis],
    *,
    order_col: str | None = "trial_number",
    status_col: str | None = "status",
    ok_status: OkStatus = _OK,
) -> pd.DataFrame:
    """:func:`region_hypervolume` of the first ``i`` eligible trials, for every ``i``.

    The same columns as :func:`hypervolume_history`.
    """
    scored, objectives = _scored(df, axes, status_col)
    if order_col is not None and order_col not in scored.columns:
        scored[order_col] = df[order_col].to_numpy()
    return hypervolume_history(
        scored, objectives, np.zeros(len(axes)), order_col=order_col, status_col=status_col, ok_status=ok_status
    )


# --------------------------------------------------------------------------- selection


def knee_point(front: pd.DataFrame, objectives: ObjectivesLike = DEFAULT_OBJECTIVES) -> pd.Series | None:
    """The "knee" row of a Pareto front, or ``None`` if it has no finite rows.

    ``front`` is normally the output of :func:`pareto_front`; it is re-reduced
    to its non-dominated finite rows (no status filtering here).  Each
    objective is min-max normalised to [0, 1] over the front, in minimisation
    form, so the ideal point is the origin.

    * 2 objectives, >= 3 distinct points: the extremes normalise to (0, 1) and
      (1, 0); pick the point with the largest signed distance
      ``(1 - x - y) / sqrt(2)`` from the line joining them, positive towards
      the ideal (on a concave front this falls back to an extreme).
    * 1-2 distinct points, or k != 2: the point closest (Euclidean) to the
      ideal point after normalisation.

    Ties (within 1e-12) go to the point closer to the ideal, then to the first
    row in front order (best first objective).  Returns a copy of the row.
    """
    objs = _coerce_objectives(objectives)
    v = _objective_values(front, objs)
    pos = np.flatnonzero(nondominated_mask(v))
    if pos.size == 0:
        return None
    w = v[pos]
    lo, hi = w.min(axis=0), w.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    z = (w - lo) / span
    to_ideal = np.sqrt((z**2).sum(axis=1))
    n_distinct = len(np.unique(w, axis=0))
    if len(objs) == 2 and n_distinct >= 3:
        score = (1.0 - z[:, 0] - z[:, 1]) / math.sqrt(2.0)
    else:
        score = -to_ideal
    tol = 1e-12
    cand = np.flatnonzero(score >= score.max() - tol)
    cand = cand[to_ideal[cand] <= to_ideal[cand].min() + tol]
    # front order: first objective best first, then the others, then position
    keys = [cand] + [w[cand, j] for j in range(w.shape[1] - 1, -1, -1)]
    best = cand[np.lexsort(keys)[0]]
    return front.iloc[pos[best]].copy()


def _warn_if_test_metric(column: str) -> None:
    if "test" in column.lower():
        warnings.warn(
            f"selecting on {column!r}: choose models on validation metrics, keep test metrics for reporting",
            UserWarning,
            stacklevel=3,
        )


def _select(
    df: pd.DataFrame,
    accuracy: str,
    sparsity: str,
    status_col: str | None,
    ok_status: OkStatus,
    *,
    qualifies: str,
    threshold: float,
) -> pd.Series | None:
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    _warn_if_test_metric(accuracy)
    _require_columns(df, [accuracy, sparsity], "metric")
    raw = df[[accuracy, sparsity]].to_numpy(dtype=float, na_value=np.nan).reshape(len(df), 2)
    acc, sp = raw[:, 0], raw[:, 1]
    ok = _eligible(df, raw, status_col, ok_status)
    ok &= (acc >= threshold) if qualifies == "accuracy" else (sp <= threshold)
    pos = np.flatnonzero(ok)
    if pos.size == 0:
        return None
    if qualifies == "accuracy":  # sparsest first, then most accurate, then row order
        order = np.lexsort((pos, -acc[pos], sp[pos]))
    else:  # most accurate first, then sparsest, then row order
        order = np.lexsort((pos, sp[pos], -acc[pos]))
    return df.iloc[pos[order[0]]].copy()


def sparsest_with_accuracy(
    df: pd.DataFrame,
    min_accuracy: float,
    *,
    accuracy: str = VAL_ACCURACY,
    sparsity: str = NONZERO_FRAC,
    status_col: str | None = "status",
    ok_status: OkStatus = _OK,
) -> pd.Series | None:
    """The row with the smallest ``sparsity`` (nonzero fraction) among rows with ``accuracy >= min_accuracy``.

    Only ok-status rows with finite accuracy and sparsity count.  Ties go to
    the higher accuracy, then to the earlier row.  ``None`` if nothing
    qualifies.  Selects on *validation* accuracy by default: never pass
    ``test_accuracy`` here (a ``UserWarning`` is raised if you do) -- the test
    set is for reporting the chosen model only.
    """
    return _select(df, accuracy, sparsity, status_col, ok_status, qualifies="accuracy", threshold=float(min_accuracy))


def most_accurate_with_sparsity(
    df: pd.DataFrame,
    max_sparsity: float,
    *,
    accuracy: str = VAL_ACCURACY,
    sparsity: str = NONZERO_FRAC,
    status_col: str | None = "status",
    ok_status: OkStatus = _OK,
) -> pd.Series | None:
    """The row with the highest ``accuracy`` among rows with ``sparsity <= max_sparsity`` (nonzero fraction).

    Only ok-status rows with finite accuracy and sparsity count.  Ties go to
    the lower sparsity, then to the earlier row.  ``None`` if nothing
    qualifies.  Selects on *validation* accuracy by default: never pass
    ``test_accuracy`` here (a ``UserWarning`` is raised if you do) -- the test
    set is for reporting the chosen model only.
    """
    return _select(df, accuracy, sparsity, status_col, ok_status, qualifies="sparsity", threshold=float(max_sparsity))
