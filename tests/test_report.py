"""``hoyersweep report``: a real small sweep to a self-contained HTML page, edge cases, a headless screenshot."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.pareto import DEFAULT_OBJECTIVES, pareto_front
from analysis.report import (
    FIGURES,
    STATUS_ORDER,
    collect,
    default_by,
    feasible_mask,
    scatter_figure,
    sweep_constraints,
    write_report,
)
from analysis.results import COLUMNS, load_results, write_parquet
from sweeps.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class TableCells(HTMLParser):
    """The text of every cell of the table with a given id, row by row (header row first)."""

    def __init__(self, table_id: str) -> None:
        super().__init__()
        self.table_id, self.depth, self.rows, self.cell = table_id, 0, [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table" and (self.depth or dict(attrs).get("id") == self.table_id):
            self.depth += 1
        elif self.depth and tag == "tr":
            self.rows.append([])
        elif self.depth and tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        if tag == "table" and self.depth:
            self.depth -= 1
        elif self.depth and tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(self.cell)
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def table_column(page: str, table_id: str, column: str) -> list[str]:
    parser = TableCells(table_id)
    parser.feed(page)
    assert parser.rows, f"no table with id {table_id!r}"
    header, *rows = parser.rows
    return [row[header.index(column)] for row in rows]


def assert_self_contained(page: str) -> None:
    """Nothing the browser would fetch: no remote src, no <link>, no <script>, no CSS url()/@import."""
    lowered = page.lower()
    assert not re.search(r"""src\s*=\s*["']?\s*(https?:)?//""", lowered)
    assert "<link" not in lowered and "<script" not in lowered
    assert "url(" not in lowered and "@import" not in lowered


def assert_png(path: Path, min_bytes: int = 5000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > min_bytes, (path, len(data))


@pytest.fixture(scope="module")
def sweep_dir(request, local_ray, tmp_path_factory) -> Path:
    """A real digits sweep (6 trials, 2+1 epochs): the suite's shared one when conftest offers it, else our own."""
    try:
        return request.getfixturevalue("digits_sweep").sweep_dir
    except pytest.FixtureLookupError:
        from sweeps.runner import run_sweep
        from sweeps.spec import load_spec

        spec, _ = load_spec(
            "sweeps/digits_quick.yaml",
            {"budget.num_samples": 6, "trial.epochs": 2, "trial.finetune_epochs": 1, "trial.batch_size": 256},
        )
        return run_sweep(spec, storage=str(tmp_path_factory.mktemp("report_sweeps")), quiet=True).sweep_dir


@pytest.fixture(scope="module")
def report(sweep_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert main(["report", str(sweep_dir), "-o", str(out)]) == 0
    return out


def test_report_of_a_real_sweep(report, sweep_dir):
    page = report.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    for name in FIGURES:  # every figure inlined, and written beside the page as a real PNG
        assert f'id="fig-{name}" alt="' in page and re.search(
            rf'id="fig-{name}"[^>]*src="data:image/png;base64,[A-Za-z0-9+/=]{{1000,}}"', page
        )
        assert_png(report.with_name(f"report_{name}.png"))
    for section in ("header", "scatter", "front", "hypervolume", "layers", "coverage"):
        assert f'<section id="{section}">' in page
    assert_self_contained(page)

    table = load_results(sweep_dir)
    feasible = table[
        feasible_mask(table, sweep_constraints([str(sweep_dir)]))
    ]  # the spec's accuracy floor, as the sweep's pareto.csv
    assert len(feasible) < len(table) or (table["val_accuracy"] >= 0.8).all()
    front = pareto_front(feasible, DEFAULT_OBJECTIVES, by=default_by(table))
    assert not front.empty
    assert table_column(page, "front-table", "trial_number") == [str(n) for n in front["trial_number"]]
    pareto_csv = (sweep_dir / "pareto.csv").read_text().splitlines()[1:]  # one front per sweep everywhere
    assert sorted(table_column(page, "front-table", "trial_number")) == sorted(
        line.split(",")[0] for line in pareto_csv
    )
    assert set(table_column(page, "chosen-table", "trial_number")) <= {str(n) for n in table["trial_number"]}
    assert "never used to select" in page and "val_accuracy" in page
    assert "6 trial(s) in 1 sweep(s)" in page


def test_report_when_every_trial_failed(tmp_path):
    rows = [
        {
            "sweep": "broken",
            "trial_number": i,
            "status": status,
            "message": message,
            "reg": "hs",
            "strength": 1e-4 * (i + 1),
            "threshold": 0.01,
            "threshold_mode": "abs",
            "mlflow_run_id": f"run{i}",
        }
        for i, (status, message) in enumerate(
            [("failed", "ValueError: <script>alert(1)</script> & more"), ("diverged", "loss is nan"), ("pruned", None)]
        )
    ]
    table = pd.DataFrame(rows, columns=list(COLUMNS)).astype(COLUMNS)
    write_parquet(table, tmp_path / "broken.parquet")
    out = tmp_path / "out" / "r.html"
    assert main(["report", str(tmp_path / "broken.parquet"), "-o", str(out)]) == 0

    page = out.read_text(encoding="utf-8")
    assert 'id="no-ok-trial"' in page and "No trial finished ok" in page
    assert 'id="front-table"' not in page and "The front is empty" in page
    assert table_column(page, "excluded-table", "status") == ["failed", "diverged", "pruned"]
    assert table_column(page, "status-counts", "failed") == ["1"]  # counted under the contract's names
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page  # messages are escaped
    assert "is a parquet table: per-layer sparsity is only read from sweep folders" in page
    assert_self_contained(page)
    assert_png(out.with_name("r_coverage.png"))  # failed trials still show where the search went
    assert not out.with_name("r_scatter.png").exists() and not out.with_name("r_hypervolume.png").exists()


def test_report_of_one_trial_with_nans(tmp_path):
    rows = [
        {
            "sweep": "s",
            "trial_number": 0,
            "status": "ok",
            "reg": "hs",
            "strength": 1e-3,
            "threshold": 0.02,
            "threshold_mode": "abs",
            "val_accuracy": 0.9,
            "test_accuracy": np.nan,
            "nonzero_frac": 0.2,
            "flops_frac": np.nan,
        },
        {
            "sweep": "s",
            "trial_number": 1,
            "status": "ok",
            "reg": "hs",
            "strength": 2e-3,
            "threshold": 0.05,
            "threshold_mode": "std",
            "val_accuracy": 0.95,
            "nonzero_frac": np.nan,
        },  # NaN objective: never on the front, never chosen
    ]
    table = pd.DataFrame(rows, columns=list(COLUMNS)).astype(COLUMNS)
    written = write_report(collect(table, list(DEFAULT_OBJECTIVES)), tmp_path / "one.html")
    page = written["html"].read_text(encoding="utf-8")
    assert table_column(page, "front-table", "trial_number") == ["0"]
    assert set(table_column(page, "chosen-table", "trial_number")) == {"0"}
    assert "nothing qualifies" in page  # the default density cap (half the best trial's) admits no trial here
    assert "no sweep folder given" in page
    assert {"scatter", "hypervolume", "coverage"} <= set(written) and "layers" not in written


def test_scatter_zooms_on_trials_above_the_accuracy_floor():
    rng = np.random.default_rng(0)
    n = 30
    rows = {
        "sweep": "s",
        "trial_number": np.arange(n),
        "status": "ok",
        "reg": "hs",
        "strength": 1e-3,
        "threshold": 0.02,
        "threshold_mode": "abs",
        "val_accuracy": np.r_[rng.uniform(0.95, 0.99, n - 5), [0.1, 0.2, 0.5, 0.6, 0.3]],
        "nonzero_frac": rng.uniform(0.005, 0.5, n),
    }
    table = pd.DataFrame(rows, columns=list(COLUMNS)).astype(COLUMNS)
    collapsed = collect(table, list(DEFAULT_OBJECTIVES))  # no constraint: the zoom keeps the best 5 points of accuracy
    fig = scatter_figure(collapsed)
    assert len(fig.axes) == 2
    low, high = fig.axes[1].get_ylim()
    assert 0.93 < low < 0.95 and high >= table["val_accuracy"].max() and fig.axes[1].get_xscale() == "log"
    healthy = collect(
        table[table["val_accuracy"] > 0.9], list(DEFAULT_OBJECTIVES)
    )  # nothing below the floor: one panel
    assert len(scatter_figure(healthy).axes) == 1


def test_report_renders_in_headless_chromium(report, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    shot = tmp_path / "shot.png"
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        report.resolve().as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels.std() > 0.05 and pixels.min() < 0.5  # not blank, not all white: text and figures drawn
    assert (
        pixels.reshape(-1, 3).std(axis=1) > 0.1
    ).mean() > 1e-4  # some coloured pixels (the scatter's markers: a few hundred at least)


def test_fronts_respect_each_sweeps_constraints(tmp_path):
    import json

    import yaml

    rows = [
        ("a", 0, 0.95, 0.10),
        ("a", 1, 0.70, 0.01),
        ("a", 2, 0.90, 0.05),
        ("b", 0, 0.70, 0.01),
        ("b", 1, 0.96, 0.20),
    ]
    table = pd.DataFrame(
        [
            {"sweep": s, "trial_number": n, "status": "ok", "reg": "hs", "val_accuracy": acc, "nonzero_frac": nz}
            for s, n, acc, nz in rows
        ],
        columns=list(COLUMNS),
    ).astype(COLUMNS)
    for sweep, floor in (("a", 0.8), ("b", None)):  # only sweep a has an accuracy floor
        (tmp_path / sweep).mkdir()
        (tmp_path / sweep / "state.json").write_text(json.dumps({"name": sweep}))
        (tmp_path / sweep / "spec.yaml").write_text(
            yaml.safe_dump({"constraints": [{"metric": "val_accuracy", "min": floor}] if floor else []})
        )
    data = collect(table, list(DEFAULT_OBJECTIVES), by="sweep", sources=[str(tmp_path / "a"), str(tmp_path / "b")])
    on_front = set(zip(data.front["sweep"], data.front["trial_number"]))
    assert on_front == {
        ("a", 0),
        ("a", 2),
        ("b", 0),
        ("b", 1),
    }  # a's 0.70 trial breaks a's floor; b's identical one has none
    assert any("1 trial(s) violate" in note for note in data.notes["front"])


def test_report_counts_legacy_statuses_under_current_names(tmp_path):
    """A table saved before the contract (``error``, ``stopped``) is reported with ``failed`` and ``interrupted``."""
    statuses = ["stopped", "ok", "error", "ok", "running"]
    table = pd.DataFrame(
        [
            {"sweep": "old", "trial_number": i, "status": status, "reg": "hs", "val_accuracy": 0.9, "nonzero_frac": 0.1}
            for i, status in enumerate(statuses)
        ],
        columns=list(COLUMNS),
    ).astype(COLUMNS)
    table.to_parquet(tmp_path / "old.parquet", index=False)  # as an older write_parquet left it
    out = tmp_path / "r.html"
    assert main(["report", str(tmp_path / "old.parquet"), "-o", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    parser = TableCells("status-counts")
    parser.feed(page)
    assert parser.rows[0] == ["sweep", "ok", "failed", "interrupted", "running", "total"]  # STATUS_ORDER, then total
    assert parser.rows[1] == ["old", "2", "1", "1", "1", "5"]
    assert STATUS_ORDER == ("ok", "failed", "diverged", "pruned", "interrupted", "running")
    assert "error" not in table_column(page, "excluded-table", "status")


def test_run_ids_link_to_the_mlflow_ui(sweep_dir, tmp_path):
    out = tmp_path / "linked.html"
    assert main(["report", str(sweep_dir), "-o", str(out), "--mlflow-url", "http://127.0.0.1:5000/"]) == 0
    links = re.findall(r'<a href="http://127\.0\.0\.1:5000/#/experiments/(\d+)/runs/([0-9a-f]{32})">', out.read_text())
    front = table_column(out.read_text(), "front-table", "trial_number")
    assert links and len(links) >= len(front)
