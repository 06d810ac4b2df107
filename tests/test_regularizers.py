"""Regularizers against their closed forms, scale invariance, and the zero-tensor edge case."""

import math

import pytest
import torch
from torch import nn

from trainables.regularizers import (
    REG_NAMES,
    get_regularizer,
    group_hoyer_square,
    group_lasso,
    group_norms,
    hoyer,
    hoyer_square,
    l1,
    model_regularization,
    prunable_weights,
)

W = torch.tensor([[3.0, -4.0, 0.0], [0.0, 0.0, 12.0]])  # rows: norms 5, 12; cols: 3, 4, 12


def test_elementwise_closed_forms():
    # |w|_1 = 19, |w|_2 = sqrt(9 + 16 + 144) = 13
    assert l1(W).item() == pytest.approx(19.0)
    assert hoyer(W).item() == pytest.approx(19.0 / 13.0)
    assert hoyer_square(W).item() == pytest.approx(19.0**2 / 169.0)


def test_group_norms_of_linear_are_rows_then_columns():
    rows, cols = group_norms(W)
    assert rows.tolist() == pytest.approx([5.0, 12.0])
    assert cols.tolist() == pytest.approx([3.0, 4.0, 12.0])
    assert group_lasso(W).item() == pytest.approx(17.0 + 19.0)


def test_group_hs_is_hs_over_group_norms():
    expected = (5 + 12) ** 2 / (25 + 144) + (3 + 4 + 12) ** 2 / (9 + 16 + 144)
    assert group_hoyer_square(W).item() == pytest.approx(expected)
    assert group_hoyer_square(W).item() == pytest.approx(
        hoyer_square(torch.tensor([5.0, 12.0])).item() + hoyer_square(torch.tensor([3.0, 4.0, 12.0])).item()
    )


def test_conv_groups_are_filters_and_input_channels():
    torch.manual_seed(0)
    w = torch.randn(4, 3, 2, 2)
    filters, channels = group_norms(w)
    assert filters.shape == (4,) and channels.shape == (3,)
    assert filters[1].item() == pytest.approx(w[1].norm().item(), rel=1e-6)
    assert channels[2].item() == pytest.approx(w[:, 2].norm().item(), rel=1e-6)
    expected = hoyer_square(filters) + hoyer_square(channels)
    assert group_hoyer_square(w).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("fn", [hoyer, hoyer_square, group_hoyer_square])
@pytest.mark.parametrize("alpha", [1e-3, 0.5, 7.0, 1e4])
def test_scale_invariance(fn, alpha):
    torch.manual_seed(1)
    w = torch.randn(6, 5, 3, 3, dtype=torch.float64)
    assert fn(alpha * w).item() == pytest.approx(fn(w).item(), rel=1e-9)


@pytest.mark.parametrize("name", [n for n in REG_NAMES if n != "none"])
@pytest.mark.parametrize("shape", [(5,), (4, 3), (4, 3, 2, 2)])
def test_zero_tensor_gives_zero_and_finite_zero_gradient(name, shape):
    w = torch.zeros(shape, requires_grad=True)
    value = get_regularizer(name)(w)
    value.backward()
    assert value.item() == 0.0
    assert torch.isfinite(w.grad).all()
    assert (w.grad == 0).all()


def test_partly_zero_groups_have_finite_gradients():
    w = torch.tensor([[0.0, 0.0], [1.0, 2.0]], requires_grad=True)
    group_hoyer_square(w).backward()
    assert torch.isfinite(w.grad).all()


def test_hs_gradient_matches_closed_form():
    w = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64, requires_grad=True)
    hoyer_square(w).backward()
    s1, s2 = 6.0, 14.0
    expected = [2 * s1 * math.copysign(1, x) / s2 - 2 * s1**2 * x / s2**2 for x in (1.0, -2.0, 3.0)]
    assert w.grad.tolist() == pytest.approx(expected)


def test_model_regularization_sums_prunable_weights_only():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))
    selected = [f"{m}.{p}" for m, _, p in prunable_weights(model)]
    assert selected == ["0.weight", "3.weight"]
    expected = hoyer_square(model[0].weight) + hoyer_square(model[3].weight)
    assert model_regularization(model, "hs").item() == pytest.approx(expected.item())
    with_bias = model_regularization(model, "l1", include_bias=True).item()
    assert with_bias == pytest.approx(
        sum(p.abs().sum().item() for n, p in model.named_parameters() if not n.startswith("1."))
    )
    assert model_regularization(model, "none").item() == 0.0


def test_unknown_regularizer_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown regularizer 'hoyre'"):
        get_regularizer("hoyre")
