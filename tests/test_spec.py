"""Sweep specs: shipped specs validate, bad specs give one-line errors naming file and field."""

from pathlib import Path

import pytest
from conftest import bench_module

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
        (
            {"search": {"strength": {"type": "float", "low": 1, "high": 0.5}}},
            "search.strength: needs finite low < high",
        ),
        ({"search": {"strength": {"type": "float", "low": 0, "high": 1, "log": True}}}, "a log scale needs low > 0"),
        ({"search": {"colour": {"type": "categorical", "choices": ["red"]}}}, "search: cannot search colour"),
        ({"trial": {"strength": 0.1}}, "strength both fixed in trial and searched"),
        ({"trial": {"epochs": -2}}, "trial.epochs: epochs must be an integer ≥ 0"),
        ({"trial": {"epochz": 2}}, "trial: unknown trial setting(s): epochz"),
        ({"sampler": {"type": "cmaes"}}, "sampler.type: Input should be 'tpe', 'nsga2', 'gp' or 'random'"),
        ({"objectives": [{"metric": "val_accuracy", "mode": "up"}]}, "objectives.0.mode"),
        ({"constraints": [{"metric": "val_accuracy"}]}, "give exactly one of min or max"),
        ({"name": "bad name/.."}, "name: String should match pattern"),
        (
            {"sampler": {"type": "nsga2", "n_startup_trials": 4}},
            "sampler: n_startup_trials is a tpe/gp setting; nsga2 does not use it",
        ),
        (
            {"sampler": {"type": "tpe", "population_size": 8}},
            "sampler: population_size is an nsga2 setting; tpe does not use it",
        ),
        ({"budget": {"branch_under": [0.01]}}, "budget.branch_under: only the proxy places branches"),
        ({"budget": {"thresholds_per_run": 4, "branch_under": [1.5]}}, "budget.branch_under.0: Input should be less"),
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
    bad.write_text(
        "name: x\nsearch:\n  strength: {type: float, low: 1.0e-5, high: 1.0e-2}\nbudget: {num_samples: -1}\n"
    )
    with pytest.raises(SystemExit) as raised:
        cli_main(["run", str(bad), "--storage", str(tmp_path / "out")])
    assert raised.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.yaml: budget.num_samples" in err[0]
    assert not (tmp_path / "out").exists()


def test_reproduction_baselines_share_everything_but_the_method():
    bench = bench_module("bench_reproduction")
    base, _ = load_spec("sweeps/mnist_lenet300.yaml")
    shifts = {"l1": 1.0, "hoyer": 2.9}
    hs, hoyer, l1, magnitude = (
        bench.method_spec(base, m, shifts, magnitude_range=(0.1, 4.0)) for m in ("hs", "hoyer", "l1", "magnitude")
    )
    assert [s.name for s in (hs, hoyer, l1, magnitude)] == [
        "mnist_lenet300-hs",
        "mnist_lenet300-hoyer",
        "mnist_lenet300-l1",
        "mnist_lenet300-magnitude",
    ]
    assert hs.trial == base.trial and hs.search == base.search and not hs.warm_start
    assert l1.trial["reg"] == "l1" and l1.search["strength"].low == pytest.approx(10 * base.search["strength"].low)
    assert hoyer.trial["reg"] == "hoyer"
    assert hoyer.search["strength"].high == pytest.approx(10**2.9 * base.search["strength"].high)
    assert (
        magnitude.trial["reg"] == "none"
        and set(magnitude.search) == {"threshold"}
        and magnitude.trial["threshold_mode"] == "std"
    )
    for other in (hoyer, l1, magnitude):  # same schedule, data, objectives and budget
        assert {k: v for k, v in other.trial.items() if k not in ("reg", "strength", "threshold_mode")} == {
            k: v for k, v in base.trial.items() if k not in ("reg", "strength", "threshold_mode")
        }
        assert (other.objectives, other.budget, other.dataset, other.model) == (
            base.objectives,
            base.budget,
            base.dataset,
            base.model,
        )
    seeded = bench.method_spec(base, "l1", shifts, (0.1, 4.0), seed=2)  # a seed sets the trial's and the sampler's
    assert (seeded.name, seeded.trial["seed"], seeded.sampler.seed) == ("mnist_lenet300-l1-s2", 2, 2)
    searched_reg, _ = load_spec("sweeps/digits_quick.yaml")  # searches reg: each method fixes it
    assert "reg" not in bench.method_spec(searched_reg, "hs", shifts, (0.1, 4.0)).search
    group, _ = load_spec("sweeps/fashion_lenet5_group_paper.yaml")  # Group-HS as shipped against Group-Lasso
    lasso = bench.method_spec(group, "group_lasso", {"group_lasso": -0.8}, (0.1, 4.0))
    assert bench.method_spec(group, "hs", shifts, (0.1, 4.0)).trial["reg"] == "group_hs"
    assert lasso.trial["reg"] == "group_lasso"
    assert lasso.search["strength"].low == pytest.approx(10**-0.8 * group.search["strength"].low)
    with pytest.raises(ValueError, match="method must be one of"):
        bench.method_spec(base, "l0", shifts, (0.1, 4.0))


def test_sparsity_caps_come_from_max_constraints_and_the_region():
    spec, _ = load_spec("sweeps/fashion_lenet5_group_paper.yaml")
    assert spec.sparsity_caps() == {"flops_frac": 0.2, "nonzero_frac": 0.015}  # its FLOPs constraint and its region
    assert load_spec("sweeps/digits_quick.yaml")[0].sparsity_caps() == {}  # the default region bounds nothing
    region = {"hypervolume.nonzero_frac": {"worst": 0.05, "best": 1e-3, "log": True}}
    assert load_spec("sweeps/digits_quick.yaml", region)[0].sparsity_caps() == {"nonzero_frac": 0.05}
    constraints = [{"metric": "val_accuracy", "min": 0.8}, {"metric": "nonzero_frac", "max": 0.02}]
    both = load_spec("sweeps/digits_quick.yaml", {**region, "constraints": constraints})[0]
    assert both.sparsity_caps() == {"nonzero_frac": 0.02}  # the lower bound wins
    loose = [{"metric": "nonzero_frac", "max": 1.5}, {"metric": "flops_frac", "max": 0.3}]
    assert load_spec("sweeps/digits_quick.yaml", {"constraints": loose})[0].sparsity_caps() == {"flops_frac": 0.3}


def test_the_nonzero_floor_is_the_best_end_of_the_region():
    assert load_spec("sweeps/digits_quick.yaml")[0].nonzero_floor() == 1e-3  # the default axis: 1 → 1e-3
    region = {"hypervolume.nonzero_frac": {"worst": 0.05, "best": 2e-3, "log": True}}
    assert load_spec("sweeps/digits_quick.yaml", region)[0].nonzero_floor() == 2e-3
    flops = {"objectives": [{"metric": "val_accuracy", "mode": "max"}, {"metric": "flops_frac", "mode": "min"}]}
    assert load_spec("sweeps/digits_quick.yaml", flops)[0].nonzero_floor() is None
