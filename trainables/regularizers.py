"""DeepHoyer sparsity regularizers (Yang, Wen & Li, ICLR 2020).

Each regularizer is a pure function of one weight tensor that returns a scalar tensor,
differentiable almost everywhere:

- ``l1``: ‖w‖₁ (the classic, scale-dependent baseline);
- ``hoyer``: ‖w‖₁ / ‖w‖₂, scale invariant;
- ``hoyer_square`` (HS): ‖w‖₁² / ‖w‖₂², scale invariant, the paper's element-wise regularizer;
- ``group_lasso``: Σ of group L2 norms;
- ``group_hoyer_square`` (Group-HS): HS of the vector of group norms.

Groups, as in the paper: for a Linear weight (out, in) both the rows and the columns; for a
Conv weight (out, in, kh, kw) both the filters (norm over dims 1, 2, 3) and the input
channels (norm over dims 0, 2, 3).  Group regularizers sum the two groupings.  A tensor of
another rank (e.g. a 1-D bias) is treated element-wise: every entry is its own group.

An all-zero tensor gives 0 with a zero (finite) gradient, never NaN: the ratios use a safe
denominator and ``torch.where``, and ``torch.linalg.vector_norm``'s backward masks zero norms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Literal

import torch
from torch import nn

from trainables.config import REG_NAMES

Regularizer = Callable[[torch.Tensor], torch.Tensor]
RegName = Literal["none", "l1", "hoyer", "hs", "group_lasso", "group_hs"]
DEFAULT_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _safe_ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, and 0 (with zero gradient) where the denominator is 0."""
    nonzero = denominator > 0
    safe = torch.where(nonzero, denominator, torch.ones_like(denominator))
    return torch.where(nonzero, numerator / safe, torch.zeros_like(numerator))


def l1(w: torch.Tensor) -> torch.Tensor:
    """‖w‖₁."""
    return w.abs().sum()


def hoyer(w: torch.Tensor) -> torch.Tensor:
    """Hoyer regularizer ‖w‖₁ / ‖w‖₂ (scale invariant; 0 for an all-zero tensor)."""
    sum_sq = w.pow(2).sum()
    nonzero = sum_sq > 0
    l2 = torch.sqrt(torch.where(nonzero, sum_sq, torch.ones_like(sum_sq)))
    return torch.where(nonzero, w.abs().sum() / l2, torch.zeros_like(sum_sq))


def _hoyer_square_reference(w: torch.Tensor) -> torch.Tensor:
    """HS written with plain autograd ops: the definition, and the path for any dtype/layout."""
    return _safe_ratio(w.abs().sum().pow(2), w.pow(2).sum())


def _hs_fast_path_ok(tensors: tuple[torch.Tensor, ...]) -> bool:
    """Whether ``_HoyerSquareSum`` may take ``tensors``: contiguous fp32/fp64 on one device, same dtype."""
    first = tensors[0]
    return first.dtype in (torch.float32, torch.float64) and all(
        t.dtype == first.dtype and t.device == first.device and t.is_contiguous() for t in tensors
    )


class _HoyerSquareSum(torch.autograd.Function):
    """Σᵢ HS(wᵢ) over several tensors with a hand-written backward (same values, fewer passes).

    With L1 = Σ|w| and S = Σw², d HS / d w = (2·L1/S)·(sign(w) − (L1/S)·w).  Plain autograd
    spends about a dozen memory passes and temporaries per tensor on this (abs, pow, their
    backwards and the gradient accumulations between them); here the forward is one ``sign``
    pass and two dot products per tensor, the backward scales that sign tensor in place and adds
    −b·w to it (two passes), and the per-tensor scalars are computed for all tensors at once.
    On CPU the temporaries matter as much as the arithmetic: each one the size of a weight
    matrix costs page faults when the allocator hands it back to the OS.

    Double backward (``create_graph=True``) is supported by differentiating the reference
    formula again, so higher-order gradients equal those of the plain implementation.
    """

    @staticmethod
    def forward(ctx, *tensors: torch.Tensor) -> torch.Tensor:
        signs = torch._foreach_sign(tensors)
        flats = [t.view(-1) for t in tensors]
        l1 = torch.stack([torch.dot(f, s.view(-1)) for f, s in zip(flats, signs)])
        sum_sq = torch.stack([torch.dot(f, f) for f in flats])
        ctx.save_for_backward(l1, sum_sq, *tensors)
        ctx.signs = signs  # reused in place as the gradient buffers; recomputed if consumed
        return _safe_ratio(l1.square(), sum_sq).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        l1, sum_sq, *tensors = ctx.saved_tensors
        signs, ctx.signs = ctx.signs, None
        if torch.is_grad_enabled():  # create_graph=True: differentiable gradients via the reference
            with torch.enable_grad():
                detached = [t.detach().requires_grad_() if not t.requires_grad else t for t in tensors]
                total = sum(_hoyer_square_reference(t) for t in detached)
                grads = torch.autograd.grad(total, detached, grad, create_graph=True, allow_unused=True)
            return tuple(torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads))
        if signs is None:  # a second backward through a retained graph
            signs = torch._foreach_sign(tensors)
        nonzero = sum_sq > 0
        safe = torch.where(nonzero, sum_sq, torch.ones_like(sum_sq))
        ratio = l1 / safe
        scale = torch.where(nonzero, 2.0 * grad * ratio, torch.zeros_like(ratio))  # a = 2g·L1/S
        torch._foreach_mul_(signs, list(scale.unbind()))
        torch._foreach_addcmul_(signs, tensors, list((-scale * ratio).unbind()))  # − a·(L1/S)·w
        return tuple(signs)


def _hoyer_square_sum(tensors: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Σ HS over ``tensors`` (at least one): the fused Function where it applies, else the reference."""
    tensors = tuple(tensors)
    if _hs_fast_path_ok(tensors):
        return _HoyerSquareSum.apply(*tensors)
    return sum(_hoyer_square_reference(t) for t in tensors)


def hoyer_square(w: torch.Tensor) -> torch.Tensor:
    """Hoyer-Square ‖w‖₁² / ‖w‖₂² (scale invariant; 0 for an all-zero tensor)."""
    return _hoyer_square_sum((w,))


def group_norms(w: torch.Tensor) -> list[torch.Tensor]:
    """The vectors of group L2 norms of ``w``: [rows/filters, columns/input channels].

    Rank ≥ 2: output units (norm over every dim but 0) and input units (every dim but 1).
    Rank < 2: a single grouping in which each entry is its own group.
    """
    if w.dim() < 2:
        return [w.reshape(-1).abs()]
    dims = tuple(range(w.dim()))
    out_units = torch.linalg.vector_norm(w, ord=2, dim=dims[1:])
    in_units = torch.linalg.vector_norm(w, ord=2, dim=(0,) + dims[2:])
    return [out_units, in_units]


def group_lasso(w: torch.Tensor) -> torch.Tensor:
    """Σ of the L2 norms of the rows/filters plus Σ of those of the columns/input channels."""
    return sum(norms.sum() for norms in group_norms(w))


def group_hoyer_square(w: torch.Tensor) -> torch.Tensor:
    """Group-HS: HS(row/filter norms) + HS(column/input-channel norms)."""
    return _hoyer_square_sum(group_norms(w))


def _zero(w: torch.Tensor) -> torch.Tensor:
    return w.new_zeros(())


REGULARIZERS: dict[str, Regularizer] = {
    "none": _zero,
    "l1": l1,
    "hoyer": hoyer,
    "hs": hoyer_square,
    "group_lasso": group_lasso,
    "group_hs": group_hoyer_square,
}


class _StackedHoyerSquare(torch.autograd.Function):
    """Per-member Σᵢ HS(wᵢ) over tensors stacked on dim 0: a (K,) vector, with a hand-written backward.

    The member-stacked form of ``_HoyerSquareSum``: one ``sign`` pass and two reductions per
    tensor forward, two passes backward, d HS / d w = (2·L1/S)·(sign(w) − (L1/S)·w) with each
    member's own L1 and S (first-order only; the cohort trainer never differentiates twice).
    """

    @staticmethod
    def forward(ctx, *tensors: torch.Tensor) -> torch.Tensor:
        signs = [t.sign() for t in tensors]
        l1 = torch.stack([(t * s).flatten(1).sum(1) for t, s in zip(tensors, signs)])  # (tensors, K)
        sum_sq = torch.stack([t.flatten(1).pow(2).sum(1) for t in tensors])
        ctx.save_for_backward(l1, sum_sq, *tensors)
        ctx.signs = signs
        return _safe_ratio(l1.square(), sum_sq).sum(0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        l1, sum_sq, *tensors = ctx.saved_tensors
        signs, ctx.signs = ctx.signs, None
        if signs is None:
            signs = [t.sign() for t in tensors]
        nonzero = sum_sq > 0
        ratio = l1 / torch.where(nonzero, sum_sq, torch.ones_like(sum_sq))
        scale = torch.where(nonzero, 2.0 * grad * ratio, torch.zeros_like(ratio))  # a = 2g·L1/S, per member
        grads = []
        for k, (tensor, sign) in enumerate(zip(tensors, signs)):
            shape = (-1, *([1] * (tensor.dim() - 1)))
            grads.append(sign.mul_(scale[k].view(shape)).addcmul_(tensor, (-scale[k] * ratio[k]).view(shape)))
        return tuple(grads)


def stacked_group_norms(w: torch.Tensor) -> list[torch.Tensor]:
    """``group_norms`` of each member of ``w`` (members on dim 0): [(K, out units), (K, in units)]."""
    if w.dim() < 3:
        return [w.reshape(w.shape[0], -1).abs()]
    dims = tuple(range(1, w.dim()))
    out_units = torch.linalg.vector_norm(w, ord=2, dim=dims[1:])
    in_units = torch.linalg.vector_norm(w, ord=2, dim=(1,) + dims[2:])
    return [out_units, in_units]


def stacked_regularization(tensors: list[torch.Tensor], reg: str) -> torch.Tensor:
    """Per-member sum of regularizer ``reg`` over ``tensors`` stacked on dim 0: a vector of K values.

    Member k's value equals ``model_regularization`` of a model holding the k-th slices: HS and
    Group-HS through the member-stacked fused Function, the others with their plain formulas
    mapped over the members by ``torch.func.vmap`` (equal within float rounding).
    """
    if reg == "hs":
        return _StackedHoyerSquare.apply(*tensors)
    if reg == "group_hs":
        return _StackedHoyerSquare.apply(*(norms for w in tensors for norms in stacked_group_norms(w)))
    fn = get_regularizer(reg)

    def per_member(*slices: torch.Tensor) -> torch.Tensor:
        total = slices[0].new_zeros(())
        for tensor in slices:
            total = total + fn(tensor)
        return total

    return torch.func.vmap(per_member)(*tensors)


def get_regularizer(name: str) -> Regularizer:
    """The regularizer called ``name`` (one of ``REG_NAMES``); ValueError otherwise."""
    try:
        return REGULARIZERS[name]
    except KeyError:
        raise ValueError(f"unknown regularizer {name!r}; choose one of {', '.join(REG_NAMES)}") from None


def prunable_weights(
    model: nn.Module,
    layer_types: tuple[type[nn.Module], ...] = DEFAULT_LAYER_TYPES,
    include_bias: bool = False,
) -> Iterator[tuple[str, nn.Module, str]]:
    """Yield ``(module_name, module, param_name)`` for the parameters that are regularized and pruned.

    By default these are the ``weight`` of every Linear and Conv layer; biases and
    normalisation layers (BatchNorm, LayerNorm, …) are excluded because their scale is not a
    measure of connectivity.  Pass other ``layer_types`` or ``include_bias=True`` to change
    that; the same selection is used by the pruning code so both always agree.
    Works on modules already reparametrised by ``torch.nn.utils.prune`` (``weight_orig``).
    """
    names = ("weight", "bias") if include_bias else ("weight",)
    for module_name, module in model.named_modules():
        if not isinstance(module, layer_types):
            continue
        for name in names:
            if getattr(module, name, None) is not None:
                yield module_name, module, name


def _trainable_tensor(module: nn.Module, name: str) -> torch.Tensor:
    """The parameter behind ``module.name`` (``name_orig`` once torch's pruning reparametrised it)."""
    original = getattr(module, name + "_orig", None)
    return original if original is not None else getattr(module, name)


def model_regularization(
    model: nn.Module,
    reg: str,
    layer_types: tuple[type[nn.Module], ...] = DEFAULT_LAYER_TYPES,
    include_bias: bool = False,
) -> torch.Tensor:
    """Sum of regularizer ``reg`` over the prunable tensors of ``model`` (per layer, as in the paper).

    The selection of tensors is ``prunable_weights(model, layer_types, include_bias)``: by
    default Linear and Conv weights, with biases and normalisation layers excluded.
    """
    fn = get_regularizer(reg)
    tensors: Iterable[torch.Tensor] = (
        _trainable_tensor(module, name) for _, module, name in prunable_weights(model, layer_types, include_bias)
    )
    if fn is hoyer_square:  # one fused call for every tensor instead of one per tensor
        tensors = tuple(tensors)
        return _hoyer_square_sum(tensors) if tensors else torch.zeros(())
    total = None
    for tensor in tensors:
        value = fn(tensor)
        total = value if total is None else total + value
    if total is None:
        return torch.zeros(())
    return total
