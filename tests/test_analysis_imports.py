"""``analysis`` reads stored results with pandas alone: no torch, no sweep engine, no ``sweeps`` package.

Each check runs in a fresh interpreter so nothing another test imported can hide an import.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ray", "mlflow", "optuna")


def loaded_after(statement: str) -> dict[str, list[str]]:
    """The heavy, ``sweeps`` and ``trainables`` modules a fresh interpreter holds after ``statement``."""
    probe = (
        f"import json, sys\n{statement}\n"
        "names = sorted(sys.modules)\n"
        "print(json.dumps({"
        f"'heavy': [m for m in {HEAVY!r} if m in sys.modules], "
        "'sweeps': [m for m in names if m == 'sweeps' or m.startswith('sweeps.')], "
        "'trainables': [m for m in names if m.startswith('trainables.')]}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "statement",
    [
        "import analysis.results, analysis.pareto",
        "import analysis.report",
        "import analysis.cli",
    ],
)
def test_analysis_imports_no_torch_ray_or_sweeps(statement):
    loaded = loaded_after(statement)
    assert loaded["heavy"] == [], f"{statement} loaded {loaded['heavy']}"
    assert loaded["sweeps"] == [], f"{statement} loaded {loaded['sweeps']}"
    assert set(loaded["trainables"]) <= {"trainables.contract", "trainables.config"}, loaded["trainables"]


def test_report_does_not_load_matplotlib_until_it_draws():
    probe = "import sys, analysis.report, analysis.cli; print('matplotlib' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_analysis_source_never_imports_sweeps_or_torch_side_modules():
    """The static twin of the checks above: only ``trainables.contract`` and ``trainables.config`` from trainables."""
    import ast

    for path in sorted((ROOT / "analysis").glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top not in ("sweeps", "torch", "ray", "optuna"), f"{path.name} imports {name}"
                if top == "trainables":
                    assert name in ("trainables.contract", "trainables.config"), f"{path.name} imports {name}"


def test_cli_default_objectives_match_pareto():
    from analysis.cli import DEFAULT_OBJECTIVES_TEXT as cli_default
    from analysis.pareto import DEFAULT_OBJECTIVES, DEFAULT_OBJECTIVES_TEXT, parse_objectives

    assert cli_default == DEFAULT_OBJECTIVES_TEXT and parse_objectives(cli_default) == DEFAULT_OBJECTIVES
