"""Masks from thresholds, masks held through fine-tuning, and sparsity/FLOPs accounting."""

import pytest
import torch
from torch import nn

from trainables.pruning import (
    apply_masks,
    compute_masks,
    cut_off,
    effective_tensor,
    kept_counts,
    largest_magnitude_masks,
    make_pruning_permanent,
    output_positions,
    ramp_counts,
    sparsity_report,
    threshold_mask,
)


def test_threshold_modes():
    w = torch.tensor([0.1, -0.5, 1.0, -2.0])
    assert threshold_mask(w, 0.5, "abs").tolist() == [False, True, True, True]
    cutoff = 0.5 * w.std().item()
    assert threshold_mask(w, 0.5, "std").tolist() == [abs(x) >= cutoff for x in w.tolist()]
    with pytest.raises(ValueError, match="threshold mode"):
        threshold_mask(w, 0.5, "rel")


@pytest.mark.parametrize("optimizer_name", ["sgd", "adam"])
def test_mask_holds_through_finetuning(optimizer_name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    masks = compute_masks(model, 0.1, "abs")
    pruned_before = sum(int((~m).sum()) for m in masks.values())
    assert pruned_before > 0
    apply_masks(model, masks)
    if optimizer_name == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05, weight_decay=1e-3)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 5, (16,))
    for _ in range(10):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model(x)  # the forward recomputes weight from weight_orig * mask
        for key, mask in masks.items():
            module_name, _, name = key.rpartition(".")
            module = dict(model.named_modules())[module_name]
            assert (getattr(module, name)[~mask] == 0).all()
            assert (effective_tensor(module, name)[~mask] == 0).all()
            assert (getattr(module, name + "_orig")[~mask] == 0).all()
    assert any((effective_tensor(m, "weight") != 0).any() for m in (model[0], model[3]))
    make_pruning_permanent(model)
    assert not hasattr(model[0], "weight_mask")
    assert sum(int((p == 0).sum()) for n, p in model.named_parameters() if n.endswith("weight")) >= pruned_before


def test_accounting_rows_columns_and_flops():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].weight[0, 1] = 1.0  # filter 0 alive through input channel 1 only: 9 weights
        model[2].weight.zero_()
        model[2].weight[1, :5] = 1.0  # row 1 alive, 5 columns
    positions = output_positions(model, (2, 6, 6))
    assert positions == {"0": 16, "2": 1}
    report = sparsity_report(model, positions)
    conv, fc = report.layers
    assert (conv.nonzero, conv.rows_live, conv.rows_total, conv.cols_live, conv.cols_total) == (9, 1, 3, 1, 2)
    assert (fc.nonzero, fc.rows_live, fc.cols_live, fc.cols_total) == (5, 1, 5, 48)
    assert conv.macs_dense == 54 * 16 and conv.macs_pruned == 9 * 16
    assert report.nonzero_frac == pytest.approx(14 / (54 + 96))
    assert report.flops_frac == pytest.approx((9 * 16 + 5) / (54 * 16 + 96))


def test_projected_sparsity_with_masks_does_not_touch_model():
    model = nn.Linear(4, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.01, 0.5, -0.02, 1.0], [0.3, 0.0, 0.04, -0.6]]))
    masks = compute_masks(model, 0.05)
    report = sparsity_report(model, {"": 1}, masks)
    assert report.nonzero == 4
    assert sparsity_report(model, {"": 1}).nonzero == 7


def test_cut_off_tells_a_constant_network_from_a_collapsed_one():
    """One output for every input is cut off; any spread beyond rounding is not, however small the network's."""
    same = torch.tensor([[2.0, -1.0, 0.5]]).repeat(5, 1)
    assert cut_off(same).item()
    barely = same.clone()
    barely[3, 1] += 1e-3  # a collapsed network still answers its input a little
    assert not cut_off(barely).item()
    rounding = same.clone()
    rounding[2, 0] = torch.nextafter(rounding[2, 0], torch.tensor(3.0))  # one float32 step: rounding between rows
    assert cut_off(rounding).item()
    assert cut_off(torch.stack([same, barely, rounding])).tolist() == [True, False, True]  # stacked rows
    assert not cut_off(same[:1]).item()  # one input shows nothing

    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not cut_off(model(x)).item()
        model[0].weight.zero_()  # no weight left in a layer every path crosses: the biases alone remain
        assert cut_off(model(x)).item()


def test_a_gradual_prune_cuts_most_early_and_ends_exactly_at_the_final_counts():
    start, final = {"a.weight": 1000, "b.weight": 10}, {"a.weight": 100, "b.weight": 10}
    steps = [ramp_counts(start, final, (k + 1) / 4)["a.weight"] for k in range(4)]
    assert steps == [100 + round(900 * 0.75**3), 100 + round(900 * 0.5**3), 100 + round(900 * 0.25**3), 100]
    cuts = [a - b for a, b in zip([1000, *steps], steps)]
    assert cuts == sorted(cuts, reverse=True)  # the large cuts first
    assert ramp_counts(start, final, 0.0) == start and ramp_counts(start, final, 2.0) == final


def test_largest_magnitude_masks_keep_the_largest_among_those_held():
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.arange(12.0).view(3, 4) - 5.5)  # |w|: 5.5 4.5 … 0.5 0.5 … 5.5
    model = nn.Sequential(layer)
    five = largest_magnitude_masks(model, {"0.weight": 5})
    assert kept_counts(five) == {"0.weight": 5}
    kept = effective_tensor(layer, "weight")[five["0.weight"]].abs()
    assert kept.min() >= effective_tensor(layer, "weight")[~five["0.weight"]].abs().max()
    held = torch.zeros(3, 4, dtype=torch.bool)
    held[0, 1:] = True  # |w| 4.5, 3.5, 2.5 held; the larger 5.5 at [0, 0] and [2, 3] pruned
    apply_masks(model, {"0.weight": held})
    two = largest_magnitude_masks(model, {"0.weight": 2})["0.weight"]
    assert two[0, 1] and two[0, 2] and int(two.sum()) == 2  # a pruned weight never comes back
    assert int(largest_magnitude_masks(model, {"0.weight": 7})["0.weight"].sum()) == 3  # no more than held
