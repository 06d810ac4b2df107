"""Compact export: exactly the dead units go, outputs stay, files load without this package."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from trainables.export import (
    AddMap,
    ExportError,
    Gather,
    compact,
    export,
    export_onnx,
    export_pt2,
    load_exported,
    load_state,
    main,
    verify,
)
from trainables.models import build_model
from trainables.pruning import apply_masks

DIGITS = (1, 8, 8)


def _layers(result) -> dict:
    return {layer.name: layer for layer in result.layers}


def _outputs_equal(dense: nn.Module, small: nn.Module, x: torch.Tensor, atol: float = 1e-5) -> None:
    dense.eval()
    with torch.no_grad():
        expected, got = dense(x), small(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=atol, rtol=1e-5)


@pytest.fixture
def lenet300() -> nn.Module:
    """LeNet-300-100 on 8×8 with known structure (every bias stays nonzero, to exercise folding).

    fc1: rows 0–99 zero (constant, read by fc2: folded), fc2 columns 250–299 zero (fc1 rows
    250–299 unused), input columns 0–7 zero (gathered away).  fc2: rows 0–39 zero (folded into
    fc3), fc3 columns 90–99 zero (fc2 rows 90–99 unused).
    """
    torch.manual_seed(0)
    model = build_model("lenet300_100", DIGITS, 10).eval()
    with torch.no_grad():
        model.fc1.weight[:100] = 0
        model.fc1.weight[:, :8] = 0
        model.fc2.weight[:, 250:] = 0
        model.fc2.weight[:40] = 0
        model.fc3.weight[:, 90:] = 0
    return model


def test_lenet300_removes_exactly_the_dead_units(lenet300):
    result = compact(lenet300, DIGITS)
    layers = _layers(result)
    assert layers["fc1"].shape_compact == (150, 56)
    assert (layers["fc1"].rows_folded, layers["fc1"].rows_unused, layers["fc1"].cols_removed) == (100, 50, 8)
    assert layers["fc2"].shape_compact == (50, 150)
    assert (layers["fc2"].rows_folded, layers["fc2"].rows_unused) == (40, 10)
    assert layers["fc3"].shape_compact == (10, 50)
    assert result.kept_not_exact == 0 and result.bias_maps == 0
    gather = result.module.steps[1]
    assert isinstance(gather, Gather) and gather.index.tolist() == list(range(8, 64))
    _outputs_equal(lenet300, result.module, torch.randn(32, *DIGITS))
    # the dense model is not touched
    assert lenet300.fc1.weight.shape == (300, 64)


@pytest.fixture
def lenet5_digits() -> nn.Module:
    """LeNet-5 on 8×8 (padding 2 on both convs) with known dead filters and channels.

    conv1: filters 0–9 zero (constant maps into a padded conv2: folded as a bias map), conv2
    input channels 15–19 zero (conv1 filters 15–19 unused).  conv2: filters 0–24 zero (constant
    through max-pool and flatten into fc1: folded into its bias), fc1 columns of channels 40–49
    zero (conv2 filters 40–49 unused).  fc1: rows 0–299 zero (folded into fc2).
    """
    torch.manual_seed(1)
    model = build_model("lenet5", DIGITS, 10).eval()
    with torch.no_grad():
        model.conv1.weight[:10] = 0
        model.conv2.weight[:, 15:20] = 0
        model.conv2.weight[:25] = 0
        model.fc1.weight.view(500, 50, 4)[:, 40:] = 0
        model.fc1.weight[:300] = 0
    return model


def test_lenet5_removes_filters_and_folds_exactly(lenet5_digits):
    result = compact(lenet5_digits, DIGITS)
    layers = _layers(result)
    assert layers["conv1"].shape_compact == (5, 1, 5, 5)
    assert (layers["conv1"].rows_folded, layers["conv1"].rows_unused) == (10, 5)
    assert layers["conv2"].shape_compact == (15, 5, 5, 5) and layers["conv2"].bias_map
    assert (layers["conv2"].rows_folded, layers["conv2"].rows_unused) == (25, 10)
    assert layers["fc1"].shape_compact == (200, 60)
    assert layers["fc2"].shape_compact == (10, 200)
    assert sum(isinstance(m, AddMap) for m in result.module.modules()) == 1
    x = torch.randn(16, *DIGITS)
    _outputs_equal(lenet5_digits, result.module, x)

    # without bias maps, the conv1 constants (seen by a zero-padded conv2) stay, and are counted
    strict = compact(lenet5_digits, DIGITS, bias_maps=False)
    assert _layers(strict)["conv1"].shape_compact == (15, 1, 5, 5)
    assert strict.kept_not_exact == 10 and strict.bias_maps == 0
    _outputs_equal(lenet5_digits, strict.module, x)


def test_lenet5_unpadded_folds_into_biases():
    torch.manual_seed(2)
    model = build_model("lenet5", (1, 28, 28), 10).eval()  # Caffe's: no padding
    with torch.no_grad():
        model.conv1.weight[:12] = 0
        model.conv2.weight[:30] = 0
    result = compact(model, (1, 28, 28), bias_maps=False)
    assert result.kept_not_exact == 0 and result.bias_maps == 0
    assert _layers(result)["conv1"].shape_compact == (8, 1, 5, 5)
    assert _layers(result)["conv2"].shape_compact == (20, 8, 5, 5)
    assert _layers(result)["fc1"].shape_compact == (500, 20 * 16)
    _outputs_equal(model, result.module, torch.randn(4, 1, 28, 28))


def test_resnet_with_pruned_channels_keeps_residual_shapes():
    torch.manual_seed(3)
    model = build_model("resnet20", (3, 32, 32), 10)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):  # non-trivial eval statistics and shifts
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.bias.uniform_(-0.5, 0.5)
        for index, block in enumerate(model.layers):
            block.conv1.weight[::2] = 0  # dead inner channels: relu(bn1 shift) folded through conv2 + bn2
            block.conv2.weight[:, 1::4] = 0  # unused inner channels
            if index == 4:
                block.conv1.weight[:] = 0  # a whole branch constant
    model.eval()
    result = compact(model, (3, 32, 32))
    small = result.module
    for block in small.layers:
        assert block.conv1.out_channels == block.bn1.num_features == block.conv2.in_channels
        assert block.conv2.out_channels == block.conv1.in_channels + block.extra_channels
    assert small.layers[0].conv1.out_channels == 4  # 16 - 8 dead - 4 unused
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(small(x), expected, atol=1e-4, rtol=1e-4)


def test_pt2_loads_without_this_package(lenet5_digits, tmp_path):
    result = compact(lenet5_digits, DIGITS)
    export_pt2(result.module, torch.randn(2, *DIGITS), tmp_path / "model.pt2")
    x = torch.randn(5, *DIGITS)
    with torch.no_grad():
        torch.save({"x": x, "y": lenet5_digits(x)}, tmp_path / "io.pt")
    script = textwrap.dedent(
        """
        import sys, torch
        m = torch.export.load("model.pt2").module()
        io = torch.load("io.pt", weights_only=True)
        assert not any(name.split(".")[0] in ("trainables", "sweeps") for name in sys.modules), "imported us"
        torch.testing.assert_close(m(io["x"]), io["y"], atol=1e-5, rtol=1e-5)
        assert m(io["x"][:1]).shape == (1, 10)  # dynamic batch
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


def test_onnx_runs_in_onnxruntime(lenet300, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'hoyersweep[export]')")
    result = compact(lenet300, DIGITS)
    path = export_onnx(result.module, torch.randn(2, *DIGITS), tmp_path / "model.onnx")
    assert not list(tmp_path.glob("*.data"))  # one self-contained file
    run = load_exported(path, "onnx")
    x = torch.randn(7, *DIGITS)
    check = verify(lenet300, run, x, torch.zeros(7, dtype=torch.long))
    assert check["max_abs_logit_diff"] < 1e-5 and check["same_predictions"] == 1.0


def test_export_report_and_cli(lenet300, tmp_path, capsys):
    from trainables.data import load_dataset

    data = load_dataset("digits")
    report = export(lenet300, data.test_x, data.test_y, tmp_path / "a.pt2", repeats=2, batches=(1, 8))
    assert report.ok and report.params_compact < report.params_dense
    assert set(report.latency_s["compact"]) == {"1", "8"}
    assert report.units["units_folded"] == 140

    # a TrialState-style checkpoint: weights under "model", masks held by torch.nn.utils.prune
    masks = {name: (module.weight != 0) for name, module in lenet300.named_modules() if isinstance(module, nn.Linear)}
    masks = {f"{name}.weight": mask for name, mask in masks.items()}
    apply_masks(lenet300, masks)
    torch.save({"model": lenet300.state_dict(), "masks": masks}, tmp_path / "state.pt")
    out = tmp_path / "b.pt2"
    argv = ["--checkpoint", str(tmp_path / "state.pt"), "--model", "lenet300_100", "-o", str(out), "--json"]
    assert main([*argv, "--repeats", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["ok"] and printed["output"] == str(out) and printed["check"]["same_predictions"] == 1.0
    assert printed["params_compact"] == report.params_compact

    reloaded = load_state(tmp_path / "state.pt", build_model("lenet300_100", DIGITS, 10))
    assert not hasattr(reloaded.fc1, "weight_orig") and torch.equal(reloaded.fc1.weight, lenet300.fc1.weight)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--checkpoint", "missing.pt", "--model", "lenet5", "-o", "x.pt2"], "does not exist"),
        (["--checkpoint", "state.pt", "--model", "lenet5", "-o", "x.pt2", "--format", "tflite"], "unknown format"),
        (["--checkpoint", "state.pt", "--model", "nope", "-o", "x.pt2"], "unknown model"),
        (["--checkpoint", "garbage.pt", "--model", "lenet5", "-o", "x.pt2"], "cannot read checkpoint"),
        (["--checkpoint", "state.pt", "--model", "lenet5", "--dataset", "mnist", "-o", "x.pt2"], "mnist"),
    ],
)
def test_cli_bad_input_is_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save(build_model("lenet5", DIGITS, 10).state_dict(), "state.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:") and message in err


def test_unsupported_model_is_an_export_error():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.a(x) + self.b(x)

    with pytest.raises(ExportError, match="not a chain"):
        compact(Branchy(), (4,))


def test_a_saved_trial_model_loads_for_export(tmp_path):
    """``save_model`` files hold folded weights plus the masks: export reads them as the trial left them."""
    from trainables.export import load_state
    from trainables.models import build_model
    from trainables.pipeline import load_model, run_trial

    path = tmp_path / "model.pt"
    config = {"epochs": 1, "finetune_epochs": 1, "batch_size": 256, "strength": 1e-3, "threshold": 0.05}
    assert run_trial(config, model_path=path).ok
    reference, payload = load_model(path)
    model = load_state(path, build_model(payload["model"], tuple(payload["input_shape"]), payload["num_classes"]))
    x = torch.randn(7, *payload["input_shape"])
    assert torch.equal(model(x), reference(x))
    assert sum(int((p == 0).sum()) for p in model.parameters()) > 0
