"""Sweep specs: shipped specs validate, bad specs give one-line errors naming file and field."""

from pathlib import Path

import pytest

from sweeps.cli import main as cli_main
from sweeps.spec import SpecError, load_spec, parse_spec

SPECS = sorted(Path(__file__).resolve().parents[1].joinpath("sweeps").glob("*.yaml"))
BASE = {"name": "t", "search": {"strength": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}}}


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_shipped_specs_validate(path):
    spec, resolved = load_spec(path)
    assert resolved == path and spec.search and spec.budget.max_concurrent_trials >= 1


def test_default_spec_is_found_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec, resolved = load_spec(None)
    assert spec.name == "digits_quick" and resolved.name == "digits_quick.yaml"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"budgett": {}}, "budgett: unknown key"),
        ({"budget": {"num_samples": 0}}, "budget.num_samples: Input should be greater than or equal to 1"),
        ({"search": {"strength": {"type": "float", "low": 1, "high": 0.5}}}, "search.strength.float: needs finite low < high"),
        ({"search": {"strength": {"type": "float", "low": 0, "high": 1, "log": True}}}, "a log scale needs low > 0"),
        ({"search": {"colour": {"type": "categorical", "choices": ["red"]}}}, "search: cannot search colour"),
        ({"trial": {"strength": 0.1}}, "strength both fixed in trial and searched"),
        ({"trial": {"epochs": -2}}, "trial settings: epochs must be an integer ≥ 0"),
        ({"trial": {"epochz": 2}}, "unknown trial setting(s): epochz"),
        ({"sampler": {"type": "cmaes"}}, "sampler.type: Input should be 'tpe', 'nsga2', 'gp' or 'random'"),
        ({"objectives": [{"metric": "val_accuracy", "mode": "up"}]}, "objectives.0.mode"),
        ({"constraints": [{"metric": "val_accuracy"}]}, "give exactly one of min or max"),
        ({"name": "bad name/.."}, "name: String should match pattern"),
    ],
)
def test_bad_specs_name_file_and_field(change, message):
    with pytest.raises(SpecError) as raised:
        parse_spec({**BASE, **change}, "my.yaml")
    text = str(raised.value)
    assert text.startswith("my.yaml: ") and message in text and "\n" not in text


def test_overrides_use_dotted_keys():
    spec = parse_spec(BASE, "x.yaml", {"budget.num_samples": 3, "trial.epochs": 1, "sampler.type": "random"})
    assert (spec.budget.num_samples, spec.trial["epochs"], spec.sampler.type) == (3, 1, "random")


def test_yaml_errors_and_missing_files(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match=r"broken.yaml: line \d+ not valid YAML"):
        load_spec(broken)
    with pytest.raises(SpecError, match="nope.yaml: spec file not found"):
        load_spec(tmp_path / "nope.yaml")


def test_cli_reports_a_malformed_spec_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsearch:\n  strength: {type: float, low: 1.0e-5, high: 1.0e-2}\nbudget: {num_samples: -1}\n")
    with pytest.raises(SystemExit) as raised:
        cli_main(["run", str(bad), "--storage", str(tmp_path / "out")])
    assert raised.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.yaml: budget.num_samples" in err[0]
    assert not (tmp_path / "out").exists()
