"""``hoyersweep check`` (and the same check before ``run``/``resume``): every bad input is one line, exit 2.

The bad-input table runs in-process through ``sweeps.cli.main``; a few cases run as real
subprocesses.  Each bad input must give exit status 2 and exactly one line on stderr that names
the file and the field (or flag), with no traceback.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from sweeps.cli import main
from sweeps.spec import load_spec, parse_spec, yaml_load

ROOT = Path(__file__).resolve().parents[1]
BASE = {
    "name": "t",
    "trial": {"epochs": 1, "finetune_epochs": 1},
    "search": {
        "strength": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
        "reg": {"type": "categorical", "choices": ["hs", "group_hs"]},
    },
    "budget": {"num_samples": 2, "max_concurrent_trials": 1},
}
USER_MODELS = """
import torch
from torch import nn


def fixed784(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(784, num_classes))


def three_classes(input_shape, num_classes):
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 3))


def not_a_module(input_shape, num_classes):
    return "a string"


def wrong_signature():
    return nn.Linear(1, 1)


class _NoLayers(nn.Module):
    def __init__(self, features, classes):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(features, classes))

    def forward(self, x):
        return x.flatten(1) @ self.w


def no_layers(input_shape, num_classes):
    c, h, w = input_shape
    return _NoLayers(c * h * w, num_classes)
"""


def idx_bytes(array: np.ndarray) -> bytes:
    array = np.asarray(array, dtype=np.uint8)
    return np.array([0x0800 | array.ndim, *array.shape], dtype=">u4").tobytes() + array.tobytes()


def make_idx_dir(directory: Path, n_train: int = 40, n_test: int = 10) -> Path:
    """A tiny MNIST-style folder (5×4 images), as tests/test_data.py writes them."""
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 5, 4)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 5, 4)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in files.items():
        (directory / name).write_bytes(idx_bytes(array))
    return directory


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def env(tmp_path, monkeypatch):
    """tmp_path as the working folder, with a user-model module importable and a few data folders."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "usermodels_check.py").write_text(USER_MODELS)
    (tmp_path / "brokenmodel_check.py").write_text("def build(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    make_idx_dir(tmp_path / "good")
    truncated = make_idx_dir(tmp_path / "truncated")
    (truncated / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((40, 5, 4)))[:100])
    garbage = make_idx_dir(tmp_path / "garbage")
    (garbage / "train-labels-idx1-ubyte").write_bytes(b"not an idx file at all")
    missing = make_idx_dir(tmp_path / "missing")
    (missing / "t10k-labels-idx1-ubyte").unlink()
    (tmp_path / "a_file").write_text("x")
    return tmp_path


def with_(change: dict, *, trial: dict | None = None) -> dict:
    spec = {**BASE, **change}
    if trial is not None:
        spec["trial"] = {**BASE["trial"], **trial}
    return spec


PORT = free_port()

# (id, spec mapping or raw text or None for "no file", extra argv, substrings the one line must hold)
BAD = [
    ("unknown-model", with_({"model": "lenet7"}), [], ["model: unknown model 'lenet7'", "lenet300_100"]),
    ("model-module-missing", with_({"model": "nosuchmod_xyz:build"}), [], ["model:", "cannot be imported"]),
    ("model-function-missing", with_({"model": "usermodels_check:nope"}), [], ["model:", "cannot be imported"]),
    ("model-syntax-error", with_({"model": "brokenmodel_check:build"}), [], ["model:", "SyntaxError"]),
    ("model-wrong-input-shape", with_({"model": "usermodels_check:fixed784"}), [], ["model:", "input 1x8x8"]),
    ("model-wrong-classes", with_({"model": "usermodels_check:three_classes"}), [], ["model:", "(2, 3)"]),
    ("model-not-a-module", with_({"model": "usermodels_check:not_a_module"}), [], ["model:", "not a torch.nn.Module"]),
    ("model-wrong-signature", with_({"model": "usermodels_check:wrong_signature"}), [], ["model:", "TypeError"]),
    ("model-nothing-to-prune", with_({"model": "usermodels_check:no_layers"}), [], ["model:", "no Linear or Conv"]),
    ("unknown-dataset", with_({"dataset": "imagenet"}), [], ["dataset: unknown dataset 'imagenet'", "mnist"]),
    ("no-data-dir", with_({"dataset": "mnist"}), [], ["data_dir:", "needs data_dir"]),
    ("data-dir-absent", with_({"dataset": "mnist", "data_dir": "nowhere"}), [], ["data_dir:", "does not exist"]),
    ("data-dir-is-file", with_({"dataset": "mnist", "data_dir": "a_file"}), [], ["data_dir:", "not a directory"]),
    ("data-truncated", with_({"dataset": "mnist", "data_dir": "truncated"}), [], ["data_dir:", "train-images"]),
    ("data-garbage", with_({"dataset": "mnist", "data_dir": "garbage"}), [], ["data_dir:", "train-labels"]),
    ("data-file-missing", with_({"dataset": "mnist", "data_dir": "missing"}), [], ["data_dir:", "t10k-labels"]),
    ("data-dir-flag-absent", with_({"dataset": "mnist"}), ["--data-dir", "gone"], ["data_dir:", "gone"]),
    (
        "cuda-without-gpus",
        with_({}, trial={"device": "cuda"}),
        [],
        ["trial.device: cuda needs resources.gpus > 0"],
    ),
    ("device-unknown", with_({}, trial={"device": "tpu"}), [], ["trial.device: device must be auto, cpu, cuda"]),
    ("gpus-locally", with_({"resources": {"gpus": 1}}), ["--num-gpus", "0"], ["resources.gpus:", "never start"]),
    ("gpus-too-many", with_({"resources": {"gpus": 99}}), [], ["resources.gpus: 99 GPU per trial"]),
    ("cpus-too-many", with_({"resources": {"cpus": 99}}), [], ["resources.cpus: 99 CPU per trial"]),
    (
        "bad-second-choice",
        with_({"search": {"reg": {"type": "categorical", "choices": ["hs", "hoyer_sq"]}}}),
        [],
        ["search.reg.choices[1]: reg must be one of", "hoyer_sq"],
    ),
    (
        "bad-range-high",
        with_({"search": {"val_fraction": {"type": "float", "low": 0.1, "high": 1.5}}}),
        [],
        ["search.val_fraction.high: val_fraction must be in (0, 1)"],
    ),
    (
        "range-high-empties-split",
        with_({"search": {"val_fraction": {"type": "float", "low": 0.1, "high": 0.9999}}}),
        [],
        ["search.val_fraction.high:", "empty train or val split"],
    ),
    (
        "bad-int-choice",
        with_({"search": {"batch_size": {"type": "categorical", "choices": [32, 0]}}}),
        [],
        ["search.batch_size.choices[1]: batch_size must be an integer ≥ 1"],
    ),
    ("unknown-objective", with_({"objectives": [{"metric": "accuracy"}]}), [], ["objectives", "unknown metric"]),
    (
        "test-accuracy-objective",
        with_({"objectives": [{"metric": "test_accuracy"}]}),
        [],
        ["objectives", "test data is reported"],
    ),
    (
        "constraint-unknown-metric",
        with_({"constraints": [{"metric": "sparsity", "min": 0.5}]}),
        [],
        ["constraints.0.metric: unknown metric 'sparsity'", "val_accuracy"],
    ),
    (
        "constraint-min-and-max",
        with_({"constraints": [{"metric": "val_accuracy", "min": 0.5, "max": 0.9}]}),
        [],
        ["constraints.0: give exactly one of min or max"],
    ),
    ("unknown-key", with_({"budgett": {"num_samples": 3}}), [], ["budgett: unknown key"]),
    ("trial-not-mapping", with_({"trial": 5}), [], ["trial: Input should be a valid dictionary"]),
    ("num-samples-text", with_({"budget": {"num_samples": "many"}}), [], ["budget.num_samples:"]),
    ("num-samples-fraction", with_({"budget": {"num_samples": 2.5}}), [], ["budget.num_samples:", "fractional"]),
    ("negative-epochs", with_({}, trial={"epochs": -2}), [], ["trial.epochs: epochs must be an integer ≥ 0"]),
    ("fractional-epochs", with_({}, trial={"epochs": 2.5}), [], ["epochs must be an integer ≥ 0, got 2.5"]),
    ("lr-text", with_({}, trial={"lr": "fast"}), [], ["trial.lr: lr must be a finite number"]),
    ("unknown-trial-setting", with_({}, trial={"epochz": 1}), [], ["trial: unknown trial setting(s): epochz"]),
    ("dataset-in-trial", with_({}, trial={"dataset": "mnist"}), [], ["trial.dataset: set dataset at the top level"]),
    ("missing-checkpoint", with_({}, trial={"init_checkpoint": "none.pt"}), [], ["trial.init_checkpoint: none.pt"]),
    ("search-empty", with_({"search": {}}), [], ["search: needs at least one searched parameter"]),
    ("search-unsearchable", with_({"search": {"model": {"type": "categorical", "choices": ["a"]}}}), [], ["search:"]),
    (
        "range-low-above-high",
        with_({"search": {"strength": {"type": "float", "low": 1, "high": 0.5}}}),
        [],
        ["search.strength", "needs finite low < high"],
    ),
    (
        "sampler-setting-unused",
        with_({"sampler": {"type": "tpe", "population_size": 8}}),
        [],
        ["sampler: population_size is an nsga2 setting"],
    ),
    ("sampler-unknown", with_({"sampler": {"type": "cmaes"}}), [], ["sampler.type:"]),
    ("bad-name", with_({"name": "a b/c"}), [], ["name: String should match pattern"]),
    ("yaml-syntax", "name: [unclosed\n", [], ["line 2 not valid YAML"]),
    ("spec-not-mapping", "- a\n- b\n", [], ["a spec must be a YAML mapping, got list"]),
    ("spec-empty", "", [], ["the spec is empty"]),
    ("spec-not-utf8", b"name: \xff\xfe\n", [], ["cannot read"]),
    ("spec-missing", None, [], ["nope.yaml: spec file not found"]),
    ("set-without-equals", with_({}), ["--set", "trial.epochs"], ["--set expects key=value"]),
    ("set-unknown-key", with_({}), ["--set", "budgett.num_samples=3"], ["budgett: unknown key"]),
    ("set-into-scalar", with_({}), ["--set", "trial.epochs.x=1"], ["trial.epochs.x: trial.epochs is int"]),
    ("set-bad-yaml", with_({}), ["--set", "trial.lr=[1"], ["--set value '[1' is not valid YAML"]),
    ("num-samples-flag-zero", with_({}), ["--num-samples", "0"], ["budget.num_samples:"]),
    ("storage-is-file", with_({"storage": "a_file/results"}), [], ["storage: a_file/results", "is a file"]),
    ("storage-flag-is-file", with_({}), ["--storage", "a_file"], ["storage: a_file", "is a file"]),
    (
        "tracking-nothing-listening",
        with_({}),
        ["--tracking-uri", f"http://127.0.0.1:{PORT}"],
        [f"--tracking-uri: http://127.0.0.1:{PORT}: no MLflow server answers"],
    ),
    (
        "tracking-sqlite-under-file",
        with_({}),
        ["--tracking-uri", "sqlite:///a_file/m.db"],
        ["--tracking-uri sqlite:///a_file/m.db: a_file", "is a file"],
    ),
    ("tracking-no-host", with_({}), ["--tracking-uri", "http://"], ["--tracking-uri: http://: no host"]),
]


def write_spec(folder: Path, content) -> Path:
    path = folder / "spec.yaml"
    if content is None:
        return folder / "nope.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def assert_one_line_error(err: str, must_hold: list[str], file_name: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("hoyersweep "), lines[0]
    if not any(text.startswith("--set") for text in must_hold):  # a malformed flag names the flag
        assert file_name in lines[0], lines[0]
    for text in must_hold:
        assert text in lines[0], lines[0]


@pytest.mark.parametrize("content, argv, must_hold", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_input_is_one_line_naming_the_field(env, capsys, content, argv, must_hold):
    spec = write_spec(env, content)
    started = time.monotonic()
    with pytest.raises(SystemExit) as raised:
        main(["check", str(spec), *argv])
    assert raised.value.code == 2
    assert_one_line_error(capsys.readouterr().err, must_hold, spec.name)
    assert time.monotonic() - started < 15
    leftovers = sorted(p.name for p in env.iterdir() if p.name.startswith((".hoyersweep", "results")))
    assert leftovers == []  # the check creates nothing


def test_bad_input_table_is_large():
    assert len(BAD) >= 30


def test_unreachable_tracking_server_fails_within_seconds(env, capsys):
    started = time.monotonic()
    with pytest.raises(SystemExit):
        main(["check", str(write_spec(env, BASE)), "--tracking-uri", f"http://127.0.0.1:{free_port()}/"])
    assert time.monotonic() - started < 10
    assert "no MLflow server answers" in capsys.readouterr().err


def test_unwritable_storage(env, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    locked = env / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(SystemExit):
        main(["check", str(write_spec(env, BASE)), "--storage", str(locked / "results")])
    assert "storage:" in capsys.readouterr().err and not (locked / "results").exists()


def test_run_checks_before_ray(env, capsys):
    """``run`` refuses a bad spec in seconds, before a sweep folder or Ray exists."""
    spec = write_spec(env, with_({"model": "lenet7"}))
    with pytest.raises(SystemExit) as raised:
        main(["run", str(spec), "--storage", str(env / "out")])
    assert raised.value.code == 2
    assert_one_line_error(capsys.readouterr().err, ["model: unknown model"], "spec.yaml")
    assert not (env / "out").exists()


def test_resume_checks_the_folders_spec(env, capsys):
    sweep = env / "old"
    sweep.mkdir()
    state = {"name": "old", "sweep_id": "1", "study_name": "old-1", "problem_hash": "x", "tracking_uri": None}
    (sweep / "state.json").write_text(json.dumps(state))
    (sweep / "spec.yaml").write_text(yaml.safe_dump(with_({"dataset": "mnist", "data_dir": "moved"})))
    with pytest.raises(SystemExit) as raised:
        main(["resume", str(sweep), "--quiet"])
    assert raised.value.code == 2
    assert_one_line_error(capsys.readouterr().err, ["old/spec.yaml: data_dir:", "moved"], "spec.yaml")
    with pytest.raises(SystemExit):
        main(["resume", str(sweep), "--quiet", "--data-dir", str(env / "gone")])
    assert "gone" in capsys.readouterr().err
    # an earlier resume's --data-dir (recorded in state.json) holds, as in resume_sweep
    (sweep / "state.json").write_text(json.dumps({**state, "runs": [{"data_dir": "elsewhere"}]}))
    import optuna  # a sweep that has run holds its study

    optuna.create_study(storage=f"sqlite:///{sweep / 'optuna.db'}", study_name="old-1")
    with pytest.raises(SystemExit):
        main(["resume", str(sweep), "--quiet"])
    assert "elsewhere for dataset 'mnist' does not exist" in capsys.readouterr().err


# --- accepted inputs ------------------------------------------------------------------------------


def test_yaml_numbers_as_in_yaml_1_2():
    assert yaml_load("[1e6, 1.0e-3, -2e-4, +1E5, 1.0e+6, 1, 0x10, .5, 1e, e1]") == [
        1e6,
        1e-3,
        -2e-4,
        1e5,
        1e6,
        1,
        16,
        0.5,
        "1e",
        "e1",
    ]
    assert yaml.safe_load("1e6") == "1e6"  # PyYAML's own loader is untouched


def test_exponent_numbers_and_integral_floats_are_accepted(env, capsys):
    text = textwrap.dedent(
        """\
        name: t
        trial: {epochs: 1e1, finetune_epochs: 1, lr: 1e-3, weight_decay: 5e-4}
        search:
          strength: {type: float, low: 1e-5, high: 1e-2, log: true}
          batch_size: {type: categorical, choices: [32, 6.4e1]}
        budget: {num_samples: 1e1}
        """
    )
    spec, _ = load_spec(write_spec(env, text))
    assert spec.trial == {"epochs": 10, "finetune_epochs": 1, "lr": 1e-3, "weight_decay": 5e-4}
    assert isinstance(spec.trial["epochs"], int) and spec.search["batch_size"].choices == [32, 64]
    assert spec.budget.num_samples == 10 and spec.search["strength"].low == 1e-5
    assert main(["check", str(env / "spec.yaml"), "--set", "trial.lr=2e-3", "--set", "search.strength.high=1e-1"]) == 0
    out = capsys.readouterr().out
    assert "lr=0.002" in out and "strength float [1e-05, 0.1] log" in out and "10 trials" in out


def test_summary_of_a_good_spec(env, capsys):
    make_idx_dir(env / "data")
    spec = write_spec(env, with_({"dataset": "mnist", "data_dir": "data"}))
    assert main(["check", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "spec.yaml: OK" in out and "mnist from data: train 36, val 4, test 10; input 1x5x4, 10 classes" in out
    assert "4 search points built" in out and "device      cpu" in out
    assert sorted(p.name for p in env.iterdir() if p.name.startswith((".hoyersweep", "results"))) == []
    assert main(["check", str(spec), "--quiet"]) == 0 and capsys.readouterr().out == ""
    branching = ["--set", "budget.thresholds_per_run=4", "--set", "constraints=[{metric: flops_frac, max: 0.2}]"]
    branching += ["--set", "search.threshold={type: float, low: 0.01, high: 0.1}"]
    assert main(["check", str(spec), "--set", "budget.num_samples=10", *branching]) == 0
    assert "as 3 regularized runs × 4 thresholds (proxy, within flops_frac ≤ 0.2)" in capsys.readouterr().out
    assert main(["check", str(spec), *branching, "--set", "budget.branch_under=[0.05, 0.01]"]) == 0
    assert "(proxy, within flops_frac ≤ 0.2, one under nonzero_frac 0.05, 0.01)" in capsys.readouterr().out


def test_parse_spec_integral_floats_only_for_integer_settings():
    spec = parse_spec(with_({}, trial={"lr": 1.0, "epochs": 3.0}), "x.yaml")
    assert spec.trial["lr"] == 1.0 and isinstance(spec.trial["lr"], float) and spec.trial["epochs"] == 3


# --- real subprocesses ----------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sweeps.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_shipped_spec_checks_ok_as_a_command(tmp_path):
    done = run_cli("check", "sweeps/digits_quick.yaml", "--storage", str(tmp_path / "results"))
    assert done.returncode == 0, done.stderr
    assert "digits_quick.yaml: OK" in done.stdout and "digits: train" in done.stdout
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "change, must_hold",
    [
        ({"model": "lenet7"}, "model: unknown model"),
        ({"resources": {"gpus": 99}}, "resources.gpus:"),
        ({"search": {"lr": {"type": "categorical", "choices": [1e-3, -1]}}}, "search.lr.choices[1]: lr must be > 0"),
    ],
)
def test_bad_input_as_a_command(tmp_path, change, must_hold):
    spec = write_spec(tmp_path, with_(change))
    done = run_cli("check", str(spec), "--storage", str(tmp_path / "results"))
    assert done.returncode == 2
    assert_one_line_error(done.stderr, [must_hold], "spec.yaml")


def write_sweep(folder: Path, trials: int) -> Path:
    """A sweep folder as the engine leaves it (state, spec, ledger), with ``trials`` ok trials all on one front."""
    import json

    folder.mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps({"name": "s", "tracking_uri": "", "study_name": "s"}))
    (folder / "spec.yaml").write_text(yaml.safe_dump({"name": "s", "search": {"strength": {}, "threshold": {}}}))
    rows = [
        {
            "sweep": "s",
            "trial_number": i,
            "status": "ok",
            "message": "",
            "config": {"reg": "hs"},
            "layers": [],
            "val_accuracy": 0.5 + i / (2 * trials),
            "nonzero_frac": 0.01 + i / trials,
        }
        for i in range(trials)
    ]
    (folder / "results.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return folder


@pytest.mark.parametrize("module", ["sweeps.cli", "analysis.cli"])
def test_output_into_a_closed_pipe_ends_quietly(tmp_path, module):
    """``hoyersweep pareto … | head -1``: the reader stops early; no BrokenPipeError traceback."""
    sweep = write_sweep(tmp_path / "s", 3000)
    process = subprocess.Popen(
        [sys.executable, "-m", module, "pareto", str(sweep), "--format", "csv"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    first = process.stdout.readline()
    process.stdout.close()  # as head -1 does
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) in (0, 141)
    assert first.startswith(b"trial_number") or first.startswith(b"sweep")
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err


def test_head_in_a_shell_pipeline(tmp_path):
    sweep = write_sweep(tmp_path / "s", 3000)
    done = subprocess.run(
        f"{sys.executable} -m sweeps.cli pareto {sweep} --format csv | head -1",
        shell=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 1
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


def test_unknown_by_and_objectives_list_the_valid_names(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "s", 5)
    with pytest.raises(SystemExit):
        main(["pareto", str(sweep), "--by", "param.reg"])
    err = capsys.readouterr().err.strip()
    assert "unknown --by column 'param.reg' (did you mean 'reg'?); columns: sweep, trial_number" in err
    assert len(err.splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["report", str(sweep), "-o", str(tmp_path / "r.html"), "--by", "param.reg"])
    assert "(did you mean 'reg'?); columns: sweep" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["report", str(sweep), "-o", str(tmp_path / "r.html"), "--objectives", "accuracy:max"])
    err = capsys.readouterr().err
    assert "unknown objective column(s): accuracy" in err and "val_accuracy, test_accuracy" in err
    assert not (tmp_path / "r.html").exists()
