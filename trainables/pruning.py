"""Threshold pruning with masks held by ``torch.nn.utils.prune``, and sparsity/FLOPs accounting.

Pruning keeps the masks as buffers (``weight_mask``) beside the trainable ``weight_orig``, and
torch recomputes ``weight = weight_orig * weight_mask`` before every forward, so a pruned
weight stays exactly zero in the model whatever the optimizer (momentum, weight decay) does to
``weight_orig``.  ``make_pruning_permanent`` folds the masks back into plain weights.

Threshold modes:
- ``abs``: prune |w| < t;
- ``std``: prune |w| < t · std(w), the standard deviation of that tensor (Han et al. 2015).

FLOPs convention: multiply–accumulates (MACs) of the prunable layers only — the ones the
regularizer targets (Linear and Conv weights by default).  A weight costs one MAC per output
position: 1 for a Linear layer, H_out·W_out for a Conv2d.  A pruned (zero) weight costs
nothing.  Biases, normalisation, activations and pooling are not counted, and neither is the
knock-on effect of a dead unit on the next layer.  ``flops_frac`` = pruned MACs / dense MACs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import prune

from trainables.config import THRESHOLD_MODES
from trainables.regularizers import DEFAULT_LAYER_TYPES, prunable_weights

ThresholdMode = Literal["abs", "std"]
Masks = dict[str, torch.Tensor]


def effective_tensor(module: nn.Module, name: str) -> torch.Tensor:
    """The tensor the module uses in its forward: ``name_orig * name_mask`` when pruned."""
    mask = getattr(module, name + "_mask", None)
    if mask is None:
        return getattr(module, name)
    return getattr(module, name + "_orig") * mask


def threshold_mask(tensor: torch.Tensor, threshold: float, mode: ThresholdMode = "abs") -> torch.Tensor:
    """Boolean mask of the entries kept: |w| ≥ t (``abs``) or |w| ≥ t·std(w) (``std``)."""
    if threshold < 0:
        raise ValueError(f"threshold must be ≥ 0, got {threshold}")
    if mode == "abs":
        cutoff = torch.as_tensor(threshold, dtype=tensor.dtype, device=tensor.device)
    elif mode == "std":
        cutoff = threshold * tensor.detach().float().std().to(tensor.dtype)
    else:
        raise ValueError(f"unknown threshold mode {mode!r}; choose one of {', '.join(THRESHOLD_MODES)}")
    return tensor.detach().abs() >= cutoff


def compute_masks(
    model: nn.Module,
    threshold: float,
    mode: ThresholdMode = "abs",
    layer_types: tuple[type[nn.Module], ...] = DEFAULT_LAYER_TYPES,
    include_bias: bool = False,
) -> Masks:
    """Masks (``{"module.param": bool tensor}``) keeping every prunable weight at or above the threshold."""
    return {
        f"{module_name}.{name}": threshold_mask(effective_tensor(module, name), threshold, mode)
        for module_name, module, name in prunable_weights(model, layer_types, include_bias)
    }


def kept_counts(masks: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """How many entries each mask keeps."""
    return {key: int(mask.sum()) for key, mask in masks.items()}


def ramp_counts(start: Mapping[str, int], final: Mapping[str, int], progress: float) -> dict[str, int]:
    """Kept counts a gradual prune holds at ``progress`` (0 → 1): from ``start`` to ``final`` on the
    cubic schedule of Zhu & Gupta (2017), so the large cuts come early, while the network can still
    adapt, and the last steps are small."""
    left = (1.0 - min(max(progress, 0.0), 1.0)) ** 3
    return {key: final[key] + round((start[key] - final[key]) * left) for key in final}


def largest_magnitude_masks(
    model: nn.Module,
    counts: Mapping[str, int],
    layer_types: tuple[type[nn.Module], ...] = DEFAULT_LAYER_TYPES,
    include_bias: bool = False,
) -> Masks:
    """Masks keeping the ``counts[key]`` largest-magnitude entries of each prunable tensor, among
    those its held mask keeps (a pruned entry never comes back; ties go by position)."""
    masks = {}
    for module_name, module, name in prunable_weights(model, layer_types, include_bias):
        key = f"{module_name}.{name}"
        scores = effective_tensor(module, name).detach().abs()
        held = getattr(module, name + "_mask", None)
        if held is not None:
            scores = scores.masked_fill(~held.bool(), -1.0)
        keep = min(max(int(counts[key]), 0), int((scores >= 0).sum()))
        order = scores.flatten().argsort(descending=True, stable=True)
        flat = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
        flat[order[:keep]] = True
        masks[key] = flat.view_as(scores)
    return masks


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Hold ``masks`` on ``model`` through training with ``torch.nn.utils.prune.custom_from_mask``.

    Pruned entries of the trainable tensor are zeroed too, so that folding the masks back later
    or reading ``weight_orig`` gives the same numbers as the masked forward.
    """
    modules = dict(model.named_modules())
    for key, mask in masks.items():
        module_name, _, name = key.rpartition(".")
        module = modules[module_name]
        if hasattr(module, name + "_mask"):
            prune.remove(module, name)
        prune.custom_from_mask(module, name, mask.to(dtype=torch.bool))
        with torch.no_grad():
            getattr(module, name + "_orig").mul_(mask)


def make_pruning_permanent(model: nn.Module) -> None:
    """Fold every mask into its weight and drop the reparametrisation (``prune.remove``)."""
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)


PROBE_SAMPLES = 64  # inputs a cut-off check sends through a pruned model
CUT_OFF_RTOL = 1e-6  # logits this close (relative) on every input count as one output


def cut_off(logits: torch.Tensor, rtol: float = CUT_OFF_RTOL) -> torch.Tensor:
    """Whether a network gave one output whatever its input: ``(..., N, C)`` logits to ``(...)`` bools.

    A mask that leaves no weight in a layer every path crosses (a LeNet's ``fc2``, a ResNet's
    stem) cuts the input off from the output.  The pruned network is then a constant function,
    and fine-tuning with the mask held cannot reconnect it: a masked weight gets no gradient.
    It is told from a merely collapsed network, which fine-tuning often revives, by its output
    alone (the largest spread over the ``N`` inputs, within ``rtol`` of the logits' scale), so
    it needs no knowledge of the architecture.  Fewer than two inputs show nothing: never cut off.
    """
    if logits.shape[-2] < 2:
        return torch.zeros(logits.shape[:-2], dtype=torch.bool, device=logits.device)
    spread = (logits - logits[..., :1, :]).abs().amax(dim=(-2, -1))
    scale = logits.abs().amax(dim=(-2, -1)).clamp(min=1.0)
    return spread <= rtol * scale


def output_positions(model: nn.Module, input_shape: tuple[int, ...], layer_types=DEFAULT_LAYER_TYPES) -> dict[str, int]:
    """Output positions per weight of every prunable layer: 1 for Linear, H_out·W_out for Conv2d.

    Found with forward hooks on one zero input of ``input_shape`` (C, H, W).
    """
    positions: dict[str, int] = {}
    handles = []
    for module_name, module in model.named_modules():
        if isinstance(module, layer_types):

            def hook(mod: nn.Module, _inputs, output: torch.Tensor, key: str = module_name) -> None:
                positions[key] = output[0].numel() // mod.weight.shape[0]

            handles.append(module.register_forward_hook(hook))
    parameter = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), dtype=parameter.dtype, device=parameter.device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return positions


@dataclass(frozen=True)
class LayerSparsity:
    """Sparsity of one prunable tensor; rows/filters are output units, columns/channels input units."""

    name: str
    shape: tuple[int, ...]
    numel: int
    nonzero: int
    nonzero_frac: float
    rows_total: int
    rows_live: int
    cols_total: int
    cols_live: int
    macs_dense: int
    macs_pruned: int

    def as_dict(self) -> dict:
        return {**asdict(self), "shape": list(self.shape)}


@dataclass(frozen=True)
class SparsityReport:
    """Per-layer and overall sparsity: nonzero fraction and FLOPs (MACs) fraction of dense."""

    layers: list[LayerSparsity]
    nonzero: int
    numel: int
    nonzero_frac: float
    flops_frac: float


def layer_sparsity(name: str, kept: torch.Tensor, positions: int) -> LayerSparsity:
    """Accounting for one tensor given the boolean map of its nonzero (kept) entries."""
    kept = kept.bool()
    nonzero = int(kept.sum())
    numel = kept.numel()
    if kept.dim() >= 2:
        dims = tuple(range(kept.dim()))
        rows = kept.any(dim=dims[1:])
        cols = kept.any(dim=(0,) + dims[2:])
    else:
        rows = cols = kept.reshape(-1)
    return LayerSparsity(
        name=name,
        shape=tuple(kept.shape),
        numel=numel,
        nonzero=nonzero,
        nonzero_frac=nonzero / numel if numel else 0.0,
        rows_total=rows.numel(),
        rows_live=int(rows.sum()),
        cols_total=cols.numel(),
        cols_live=int(cols.sum()),
        macs_dense=numel * positions,
        macs_pruned=nonzero * positions,
    )


def sparsity_report(
    model: nn.Module,
    positions: Mapping[str, int],
    masks: Mapping[str, torch.Tensor] | None = None,
    layer_types: tuple[type[nn.Module], ...] = DEFAULT_LAYER_TYPES,
    include_bias: bool = False,
) -> SparsityReport:
    """Count nonzeros of the prunable tensors — as they are, or as they would be under ``masks``.

    ``positions`` comes from ``output_positions``.  Passing the masks of a prospective
    threshold gives the sparsity the model would have if pruned now.
    """
    layers = []
    for module_name, module, name in prunable_weights(model, layer_types, include_bias):
        key = f"{module_name}.{name}"
        kept = effective_tensor(module, name).detach() != 0
        if masks is not None:
            kept = kept & masks[key].to(kept.device)
        layers.append(layer_sparsity(key, kept, positions.get(module_name, 1)))
    nonzero = sum(layer.nonzero for layer in layers)
    numel = sum(layer.numel for layer in layers)
    macs_dense = sum(layer.macs_dense for layer in layers)
    macs_pruned = sum(layer.macs_pruned for layer in layers)
    return SparsityReport(
        layers=layers,
        nonzero=nonzero,
        numel=numel,
        nonzero_frac=nonzero / numel if numel else 0.0,
        flops_frac=macs_pruned / macs_dense if macs_dense else 0.0,
    )
