"""Tests for analysis.pareto: property tests against brute force plus hand-computed cases."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.pareto import (
    DEFAULT_OBJECTIVES,
    Objective,
    _nondominated_2d,
    _nondominated_nd,
    default_reference,
    hypervolume,
    hypervolume_history,
    knee_point,
    most_accurate_with_sparsity,
    nondominated_mask,
    pareto_front,
    parse_objectives,
    sparsest_with_accuracy,
    to_minimisation,
)

PROPS = settings(max_examples=150, deadline=None, database=None)
NAN, INF = float("nan"), float("inf")

# --------------------------------------------------------------------------- brute-force references


def bf_dominates(a, b, dirs) -> bool:
    """Pure-Python domination test in original units."""
    a = [-x if d == "max" else x for x, d in zip(a, dirs)]
    b = [-x if d == "max" else x for x, d in zip(b, dirs)]
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def bf_eligible(row) -> bool:
    return all(math.isfinite(x) for x in row)


def bf_front_mask(rows, dirs) -> list[bool]:
    """O(n^2) pure-Python Pareto mask: finite and not dominated by any finite row."""
    elig = [bf_eligible(r) for r in rows]
    return [
        elig[i] and not any(elig[j] and bf_dominates(rows[j], rows[i], dirs) for j in range(len(rows)))
        for i in range(len(rows))
    ]


def lattice_hv(points_min: np.ndarray, ref_min: np.ndarray) -> int:
    """Count unit cells of the integer lattice covered by the union of boxes [p, ref] (minimisation)."""
    k = len(ref_min)
    lo = int(min(points_min.min(), ref_min.min())) if len(points_min) else 0
    axes = [np.arange(lo, int(ref_min[j])) for j in range(k)]
    if any(len(a) == 0 for a in axes) or len(points_min) == 0:
        return 0
    cells = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, k)
    covered = (points_min[None, :, :] <= cells[:, None, :]).all(axis=2).any(axis=1)
    return int(covered.sum())


# --------------------------------------------------------------------------- strategies

GRID = [0.0, 1.0, 2.0, 3.0, 4.0]
CELL = st.sampled_from(GRID * 6 + [NAN, NAN, INF, -INF])


@st.composite
def objective_tables(draw, ks=(2, 3), max_rows=40):
    """(rows, directions) on a small integer grid: many ties, some NaN/inf, mixed directions."""
    k = draw(st.sampled_from(ks))
    n = draw(st.integers(0, max_rows))
    rows = draw(st.lists(st.lists(CELL, min_size=k, max_size=k), min_size=n, max_size=n))
    dirs = draw(st.lists(st.sampled_from(["min", "max"]), min_size=k, max_size=k))
    return rows, dirs


def as_array(rows, k) -> np.ndarray:
    return np.asarray(rows, dtype=float).reshape(len(rows), k)


# --------------------------------------------------------------------------- domination / fronts


@PROPS
@given(objective_tables(ks=(1, 2, 3)))
def test_mask_equals_bruteforce(table):
    rows, dirs = table
    mask = nondominated_mask(as_array(rows, len(dirs)), dirs)
    assert mask.dtype == bool
    assert mask.tolist() == bf_front_mask(rows, dirs)


@PROPS
@given(objective_tables(ks=(2,), max_rows=60))
def test_fast_2d_path_equals_bruteforce_and_general_path(table):
    rows, dirs = table
    finite = [r for r in rows if bf_eligible(r)]
    if not finite:
        return
    v = to_minimisation(as_array(finite, 2), dirs)
    fast = _nondominated_2d(v)
    assert fast.tolist() == bf_front_mask(finite, dirs)
    assert fast.tolist() == _nondominated_nd(v).tolist()


@PROPS
@given(objective_tables(), st.data())
def test_front_properties_with_status(table, data):
    rows, dirs = table
    k = len(dirs)
    names = [f"m{j}" for j in range(k)]
    status = data.draw(
        st.lists(
            st.sampled_from(["ok", "ok", "ok", "failed", "diverged", "running"]), min_size=len(rows), max_size=len(rows)
        )
    )
    df = pd.DataFrame(as_array(rows, k), columns=names)
    df["status"] = status
    df.index = [f"t{i}" for i in range(len(df))]
    before = df.copy()
    objectives = [Objective(n, d) for n, d in zip(names, dirs)]

    front = pareto_front(df, objectives)

    pd.testing.assert_frame_equal(df, before)
    eligible = [i for i, r in enumerate(rows) if bf_eligible(r) and status[i] == "ok"]
    members = [df.index.get_loc(label) for label in front.index]
    assert len(set(members)) == len(members)
    assert set(members) <= set(eligible)
    for i in members:  # no eligible row dominates a member
        assert not any(bf_dominates(rows[j], rows[i], dirs) for j in eligible)
    for i in set(eligible) - set(members):  # every eligible non-member is dominated by a member
        assert any(bf_dominates(rows[j], rows[i], dirs) for j in members)
    first = front[names[0]].to_numpy()
    key = -first if dirs[0] == "max" else first
    assert (np.diff(key) >= 0).all()  # sorted by the first objective, best first


@PROPS
@given(objective_tables(ks=(1, 2, 3, 4), max_rows=50), st.sampled_from([1, 9, 40, 1 << 22]))
def test_general_path_block_sizes_equal_bruteforce(table, block_cells):
    rows, dirs = table
    finite = [r for r in rows if bf_eligible(r)]
    if not finite:
        return
    v = to_minimisation(as_array(finite, len(dirs)), dirs)
    assert _nondominated_nd(v, block_cells=block_cells).tolist() == bf_front_mask(finite, dirs)


def test_duplicates_stay_on_front_and_ties_in_first_objective():
    v = np.array([[1, 1], [1, 1], [1, 2], [2, 0], [2, 0], [3, 0], [0, 5]], dtype=float)
    assert nondominated_mask(v).tolist() == [True, True, False, True, True, False, True]
    v3 = np.column_stack([v, np.zeros(len(v))])
    assert nondominated_mask(v3).tolist() == nondominated_mask(v).tolist()


def test_k1_front_is_all_rows_attaining_best():
    v = np.array([[3.0], [1.0], [NAN], [1.0], [2.0]])
    assert nondominated_mask(v).tolist() == [False, True, False, True, False]
    assert nondominated_mask(v, ["max"]).tolist() == [True, False, False, False, False]


def test_nonfinite_rows_are_never_on_front():
    v = np.array([[NAN, 0.0], [INF, -INF], [-INF, 0.0], [5.0, 5.0]])
    assert nondominated_mask(v).tolist() == [False, False, False, True]
    assert nondominated_mask(np.empty((0, 2))).tolist() == []


def test_input_validation():
    with pytest.raises(ValueError, match="shape"):
        nondominated_mask(np.zeros(3))
    with pytest.raises(ValueError, match="directions"):
        nondominated_mask(np.zeros((3, 2)), ["min"])
    with pytest.raises(ValueError, match="'up'"):
        to_minimisation(np.zeros((1, 1)), ["up"])
    with pytest.raises(ValueError, match="nope"):
        pareto_front(pd.DataFrame({"a": [1.0]}), "nope:min")
    np.testing.assert_array_equal(to_minimisation(np.array([[1.0, 2.0]]), ["max", "min"]), [[-1.0, 2.0]])


def sweep_df() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "trial_number": [0, 1, 2, 3, 4, 5, 6, 7, 8],
            "reg": ["hoyer", "hoyer", "l1", "l1", "hoyer", "l1", "hoyer", "l1", "hoyer"],
            "val_accuracy": [0.90, 0.80, 0.85, 0.99, 0.95, 0.70, NAN, 0.85, 0.60],
            "test_accuracy": [0.89, 0.79, 0.84, 0.98, 0.96, 0.69, 0.5, 0.84, 0.99],
            "nonzero_frac": [0.50, 0.30, 0.20, 0.01, 0.60, 0.30, 0.05, 0.20, 0.05],
            "status": ["ok", "ok", "ok", "failed", "ok", "ok", "ok", "ok", "diverged"],
        }
    )


def test_status_filtering_keeps_input_untouched():
    df = sweep_df()
    before = df.copy()
    front = pareto_front(df)
    pd.testing.assert_frame_equal(df, before)
    # trial 3 (failed) and 8 (diverged) would dominate everything; trial 6 has NaN accuracy
    assert front["trial_number"].tolist() == [4, 0, 2, 7]
    assert list(front.columns) == list(df.columns)
    # without a status column every row counts as ok
    no_status = pareto_front(df.drop(columns="status"))
    assert no_status["trial_number"].tolist() == [3]
    assert pareto_front(df, status_col=None)["trial_number"].tolist() == [3]
    assert pareto_front(df, ok_status=("ok", "failed"))["trial_number"].tolist() == [3]
    assert pareto_front(df.iloc[:0]).empty


def test_by_grouping():
    df = sweep_df()
    front = pareto_front(df, by="reg")
    assert "reg" in front.columns
    assert front[["reg", "trial_number"]].values.tolist() == [
        ["hoyer", 4],
        ["hoyer", 0],
        ["hoyer", 1],
        ["l1", 2],
        ["l1", 7],
    ]
    for reg, grp in df.groupby("reg"):
        expected = pareto_front(grp)
        pd.testing.assert_frame_equal(front[front["reg"] == reg], expected)
    two_keys = pareto_front(df.assign(sweep="s1"), by=["sweep", "reg"])
    assert two_keys["trial_number"].tolist() == front["trial_number"].tolist()


# --------------------------------------------------------------------------- hypervolume


def test_hypervolume_hand_computed_2d_mixed_directions():
    # (accuracy max, nonzero min) with reference (0, 10): boxes 9x5 and 8x8 overlap 8x5 -> 45 + 64 - 40
    pts = np.array([[9.0, 5.0], [8.0, 2.0]])
    assert hypervolume(pts, [0.0, 10.0], ["max", "min"]) == 69.0
    # float version with the default reference of the default objectives
    hv = hypervolume(np.array([[0.9, 0.5], [0.8, 0.2]]), default_reference(), ["max", "min"])
    assert hv == pytest.approx(0.69)
    assert hypervolume([[3.0], [1.0]], [5.0]) == 4.0
    assert hypervolume(np.empty((0, 2)), [1.0, 1.0]) == 0.0
    # points not strictly better than the reference in every objective add nothing
    assert hypervolume([[1.0, 10.0], [10.0, 1.0], [NAN, 0.0]], [10.0, 10.0]) == 0.0


def test_hypervolume_hand_computed_3d():
    assert hypervolume([[1, 1, 1], [0, 2, 2]], [2, 3, 4]) == 8.0  # 6 + 4 - 2
    pts = [[1, 2, 3], [2, 1, 3], [3, 3, 1]]
    assert hypervolume(pts, [4, 4, 4]) == 10.0  # 15 - (4 + 1 + 1) + 1
    # same geometry with the second objective maximised
    mixed = [[1, -2, 3], [2, -1, 3], [3, -3, 1]]
    assert hypervolume(mixed, [4, -4, 4], ["min", "max", "min"]) == 10.0
    # 4-D: a single box
    assert hypervolume([[0, 0, 0, 0], [1, 1, 1, 1]], [2, 2, 2, 2]) == 16.0


@PROPS
@given(st.sampled_from([2, 3]), st.data())
def test_hypervolume_equals_lattice_count(k, data):
    n = data.draw(st.integers(0, 12))
    pts_min = np.array(
        data.draw(st.lists(st.lists(st.integers(0, 5), min_size=k, max_size=k), min_size=n, max_size=n)), dtype=float
    ).reshape(n, k)
    ref_min = np.array(data.draw(st.lists(st.integers(1, 6), min_size=k, max_size=k)), dtype=float)
    dirs = data.draw(st.lists(st.sampled_from(["min", "max"]), min_size=k, max_size=k))
    sign = np.array([-1.0 if d == "max" else 1.0 for d in dirs])
    expected = lattice_hv(pts_min, ref_min)
    assert hypervolume(pts_min * sign, ref_min * sign, dirs) == expected


@PROPS
@given(st.sampled_from([2, 3]), st.data())
def test_hypervolume_invariant_to_dominated_points(k, data):
    n = data.draw(st.integers(1, 10))
    base = np.array(
        data.draw(st.lists(st.lists(st.integers(0, 8), min_size=k, max_size=k), min_size=n, max_size=n)), dtype=float
    )
    parents = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=15)))
    delta = np.array(
        data.draw(
            st.lists(st.lists(st.integers(0, 3), min_size=k, max_size=k), min_size=len(parents), max_size=len(parents))
        ),
        dtype=float,
    )
    ref = np.full(k, 10.0)
    dirs = ["max"] + ["min"] * (k - 1)
    sign = np.array([-1.0] + [1.0] * (k - 1))
    extra = base[parents] + delta  # weakly dominated by (or equal to) their parents
    hv_base = hypervolume(base * sign, ref * sign, dirs)
    hv_all = hypervolume(np.vstack([base, extra]) * sign, ref * sign, dirs)
    assert hv_all == hv_base


def test_hypervolume_history():
    df = sweep_df()
    hist = hypervolume_history(df, DEFAULT_OBJECTIVES, [0.0, 1.0])
    assert list(hist.columns[:2]) == ["n_trials", "hypervolume"]
    # eligible trials in order: 0, 1, 2, 4, 5, 7
    assert hist["trial_number"].tolist() == [0, 1, 2, 4, 5, 7]
    assert hist["n_trials"].tolist() == [1, 2, 3, 4, 5, 6]
    expected = [0.45, 0.45 + 0.8 * 0.2, 0.45 + 0.85 * 0.8 - 0.85 * 0.5, None, None, None]
    expected[3] = expected[2] + 0.05 * 0.4  # (0.95, 0.6) adds a 0.05 x 0.4 strip
    expected[4] = expected[5] = expected[3]
    np.testing.assert_allclose(hist["hypervolume"], expected)
    front = pareto_front(df)
    assert hist["hypervolume"].iloc[-1] == pytest.approx(
        hypervolume(front[["val_accuracy", "nonzero_frac"]].to_numpy(), [0.0, 1.0], ["max", "min"])
    )
    # shuffled rows: order_col decides, and the default reference is (0, 1)
    shuffled = hypervolume_history(df.sample(frac=1.0, random_state=0))
    pd.testing.assert_frame_equal(shuffled, hist)


@PROPS
@given(objective_tables(ks=(2, 3), max_rows=25))
def test_hypervolume_history_monotone_and_final(table):
    rows, dirs = table
    k = len(dirs)
    names = [f"m{j}" for j in range(k)]
    df = pd.DataFrame(as_array(rows, k), columns=names)
    objectives = [Objective(n, d) for n, d in zip(names, dirs)]
    ref = np.array([-1.0 if d == "max" else 5.0 for d in dirs])
    hist = hypervolume_history(df, objectives, ref, order_col=None)
    hv = hist["hypervolume"].to_numpy()
    assert (np.diff(hv) >= 0).all()
    assert len(hist) == sum(bf_eligible(r) for r in rows)
    if len(hist):
        assert hv[-1] == hypervolume(df[names].to_numpy(), ref, dirs)


def test_default_reference():
    np.testing.assert_array_equal(default_reference(), [0.0, 1.0])
    df = pd.DataFrame(
        {"loss": [1.0, 3.0, NAN, 9.0], "acc": [0.5, 0.7, 0.9, 0.1], "status": ["ok", "ok", "ok", "failed"]}
    )
    objs = parse_objectives("loss:min,acc:max")
    np.testing.assert_array_equal(default_reference(df, objs), [3.0, 0.5])  # worst eligible observed
    np.testing.assert_allclose(default_reference(df, objs, margin=0.5), [4.0, 0.4])
    with pytest.raises(ValueError, match="loss"):
        default_reference(None, objs)


# --------------------------------------------------------------------------- knee and selection


def test_knee_point_on_convex_front():
    front = pd.DataFrame(
        {
            "val_accuracy": [0.95, 0.94, 0.93, 0.91, 0.85],
            "nonzero_frac": [1.00, 0.40, 0.20, 0.10, 0.00],
        },
        index=list("abcde"),
    )
    knee = knee_point(front, DEFAULT_OBJECTIVES)
    assert knee.name == "c"
    # extra dominated / ineligible rows do not change the answer
    noisy = pd.concat([front, pd.DataFrame({"val_accuracy": [0.5, NAN], "nonzero_frac": [0.9, 0.0]}, index=["x", "y"])])
    assert knee_point(noisy).name == "c"


def test_knee_point_small_and_degenerate_fronts():
    one = pd.DataFrame({"val_accuracy": [0.9], "nonzero_frac": [0.3]})
    assert knee_point(one).name == 0
    two = pd.DataFrame({"val_accuracy": [0.8, 0.9], "nonzero_frac": [0.1, 0.3]})
    assert knee_point(two).name == 1  # equidistant from the ideal: better first objective wins
    assert knee_point(pd.DataFrame({"val_accuracy": [NAN], "nonzero_frac": [0.1]})) is None
    three_d = pd.DataFrame({"a": [0.0, 10.0, 3.0, 10.0], "b": [10.0, 0.0, 3.0, 10.0], "c": [5.0, 5.0, 5.0, 0.0]})
    assert knee_point(three_d, "a:min,b:min,c:min").name == 2


def test_sparsest_with_accuracy():
    df = sweep_df()
    before = df.copy()
    best = sparsest_with_accuracy(df, 0.85)
    assert best["trial_number"] == 2  # tie with trial 7 (same values): earlier row
    assert sparsest_with_accuracy(df, 0.9)["trial_number"] == 0
    # trial 3 (failed) and 8 (diverged) are better but not eligible; trial 6 has NaN accuracy
    assert sparsest_with_accuracy(df, 0.5)["trial_number"] == 2
    assert sparsest_with_accuracy(df, 0.999) is None
    pd.testing.assert_frame_equal(df, before)
    ties = pd.DataFrame({"val_accuracy": [0.9, 0.95], "nonzero_frac": [0.2, 0.2]})
    assert sparsest_with_accuracy(ties, 0.8).name == 1  # tie on sparsity: more accurate wins


def test_most_accurate_with_sparsity():
    df = sweep_df()
    assert most_accurate_with_sparsity(df, 0.5)["trial_number"] == 0
    assert most_accurate_with_sparsity(df, 0.3)["trial_number"] == 2
    assert most_accurate_with_sparsity(df, 0.01) is None
    ties = pd.DataFrame({"val_accuracy": [0.9, 0.9], "nonzero_frac": [0.3, 0.2], "status": ["ok", "ok"]})
    assert most_accurate_with_sparsity(ties, 0.5).name == 1  # tie on accuracy: sparser wins
    with pytest.warns(UserWarning, match="validation"):
        most_accurate_with_sparsity(df, 0.5, accuracy="test_accuracy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        most_accurate_with_sparsity(df, 0.5)


# --------------------------------------------------------------------------- parsing


def test_parse_objectives():
    assert parse_objectives("val_accuracy:max,nonzero_frac:min") == DEFAULT_OBJECTIVES
    assert parse_objectives([" val_accuracy : MAX ", "nonzero_frac:min"]) == DEFAULT_OBJECTIVES
    assert parse_objectives("metrics:loss:min") == [Objective("metrics:loss", "min")]
    assert pareto_front(sweep_df(), "val_accuracy:max,nonzero_frac:min").equals(pareto_front(sweep_df()))


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("val_accuracy", "'val_accuracy'"),
        ("val_accuracy:maximise", "'val_accuracy:maximise'"),
        (":min", "':min'"),
        ("a:min,,b:max", "empty item"),
        ("a:min,a:max", "duplicate"),
        ("", "no objectives"),
        (["a:min", 3], "3"),
    ],
)
def test_parse_objectives_errors(text, fragment):
    with pytest.raises(ValueError) as info:
        parse_objectives(text)
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_objective_validates_direction():
    with pytest.raises(ValueError, match="direction"):
        Objective("a", "up")  # type: ignore[arg-type]


def test_region_hypervolume_scores_accuracy_above_the_floor_and_sparsity_on_a_log_axis():
    from analysis.pareto import region_hypervolume, region_hypervolume_history
    from trainables.contract import Axis, Constraint, default_axis

    axes = {
        "val_accuracy": default_axis("val_accuracy", [Constraint("val_accuracy", min=0.9)]),
        "nonzero_frac": default_axis("nonzero_frac"),
    }
    assert axes["val_accuracy"] == Axis(0.9, 1.0) and axes["nonzero_frac"] == Axis(1.0, 1e-3, log=True)
    table = pd.DataFrame(
        {
            "trial_number": [0, 1, 2, 3, 4],
            "status": ["ok", "ok", "ok", "failed", "ok"],
            "val_accuracy": [0.95, 0.99, 0.5, 0.99, 1.0],  # trial 2: below the floor, adds nothing
            "nonzero_frac": [0.01, 0.5, 0.001, 0.0001, 1.0],  # trial 4: dense, adds nothing
        }
    )
    # trial 0: (0.95 − 0.9)/0.1 = 0.5 accuracy score × log(0.01)/log(1e-3) = 2/3 sparsity score.
    # trial 1 adds (0.9 − 0.5) × log(0.5)/log(1e-3).
    expected = 0.5 * 2 / 3 + 0.4 * math.log(0.5) / math.log(1e-3)
    assert region_hypervolume(table, axes) == pytest.approx(expected)
    history = region_hypervolume_history(table, axes)
    assert history["hypervolume"].tolist() == pytest.approx([1 / 3, expected, expected, expected])
    # Beyond the best bound counts as the best: the whole box.
    assert region_hypervolume(pd.DataFrame({"val_accuracy": [1.0], "nonzero_frac": [1e-5]}), axes, status_col=None) == 1
    with pytest.raises(ValueError, match="hypervolume"):
        default_axis("loss")
    with pytest.raises(ValueError, match="log axis"):
        Axis(0.0, 1.0, log=True)
