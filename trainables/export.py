"""Compact export: a physically smaller model that computes what the masked dense model computes.

Pruning leaves a dense model whose pruned weights are zero: it is as large and as slow as
before.  ``compact(model, input_shape)`` builds a new module without the units whose weights
are all zero, ``verify`` checks it on real inputs, and ``export_pt2`` / ``export_onnx`` write
it as a file that loads without this package (``torch.export.load(path).module()``, or
onnxruntime).  Everything here is torch only; ``python -m trainables.export`` is the CLI.

What is removed, and why it is exact (the compact model is an inference model: eval mode,
BatchNorm with its running statistics):

- **unused units**: an output row/filter whose column in every (kept) row of the next
  Linear/Conv is zero: nothing reads it, so it goes whatever its bias is;
- **dead input features**: input features/channels whose column in the first layer is zero are
  dropped by a fixed index gather at the input, so the exported model takes the original input
  shape; the same gather drops dead columns after a ``flatten`` (LeNet-5's FC input);
- **constant units**: a row/filter whose weights on the live inputs are all zero outputs a fixed
  value (its bias, plus whatever constant inputs add).  It is removed and the value, passed
  through the channel-wise ops in between (activations, pooling, flatten: a fixed map stays a
  fixed map), is folded into the next layer: into its bias when the contribution is the same at
  every output position (Linear layers; convolutions without zero padding), otherwise — a
  convolution with zero padding sees the constant map and the padding's zeros at the border —
  into a fixed *bias map* added after that layer (``bias_maps=True``, the default; the sum is
  the same, only the rounding order differs).  With ``bias_maps=False`` those units stay
  (zero weights, their bias) and are counted in ``kept_not_exact``;
- the last layer keeps all its outputs: the output shape is the dense model's.

Supported architectures:

- **chains** (LeNet-300-100, LeNet-5 and any model that ``torch.fx`` traces to a straight line
  of ``Linear`` / ``Conv2d`` (groups 1, zero padding mode) / ``flatten`` / channel-wise ops:
  activations, pooling, dropout): handled completely;
- **residual networks** made of ``trainables.models.BasicBlock`` (the CIFAR ResNets): each
  block's inner channels (conv1 → bn1 → relu → conv2) are compacted — they are coupled to
  nothing else — with a dead channel's constant ``relu(bn1 shift)`` folded through conv2
  (padding 1, so a bias map) and bn2.  The residual-stream channels are *kept*: the option-A
  shortcut couples channel c of a stage with channel c + pad of the next and every block of a
  stage adds into the same channels, so removing one would need every coupled producer dead
  and the shortcut's fixed pad widths rewritten.  Stream channels whose producers in their
  stage (the stem conv or every block's conv2) are all zero are counted in ``kept_coupled``.
  torch-pruning's dependency graph was tried for this and does not fit: it treats the
  shortcut's channel ``F.pad`` as element-wise (coupling channel c with c, not c + pad).
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import logging
import math
import os
import pickle
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from trainables.models import BasicBlock
from trainables.pruning import apply_masks, make_pruning_permanent

FORMATS: tuple[str, ...] = ("pt2", "onnx")

__all__ = [
    "FORMATS",
    "CompactResult",
    "ExportError",
    "ExportReport",
    "LayerChange",
    "compact",
    "export",
    "export_onnx",
    "export_pt2",
    "latency",
    "latency_table",
    "load_exported",
    "load_state",
    "main",
    "state_dict_bytes",
    "verify",
]


class ExportError(ValueError):
    """A model, file or setting the export cannot handle; the message is one line."""


# --- small modules the compact model is built of (torch.export / ONNX friendly) --------------


class Gather(nn.Module):
    """Keep the entries ``index`` of dimension ``dim`` (live input features or channels)."""

    def __init__(self, dim: int, index: torch.Tensor) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("index", index.to(torch.long).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.index_select(x, self.dim, self.index)


class AddMap(nn.Module):
    """Add a fixed tensor (a folded constant unit's contribution that varies with position)."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("value", value.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.value


class Apply(nn.Module):
    """A channel-wise functional op of the traced model (``F.relu``, ``F.max_pool2d`` …) as a module."""

    def __init__(self, fn: Callable[..., torch.Tensor], args: tuple, kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.fn = fn
        self.args = args
        self.kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, *self.args, **self.kwargs)


class CompactChain(nn.Module):
    """The compacted chain model: the steps in order, each a module taking and returning one tensor."""

    def __init__(self, steps: list[nn.Module]) -> None:
        super().__init__()
        self.steps = nn.ModuleList(steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            x = step(x)
        return x


class _BatchNormPlusMap(nn.Module):
    """BatchNorm followed by a fixed map: a ResNet block's bn2 after folding dead inner channels."""

    def __init__(self, bn: nn.Module, value: torch.Tensor) -> None:
        super().__init__()
        self.bn = bn
        self.register_buffer("value", value.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x) + self.value


# --- reports -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerChange:
    """What compaction did to one weight layer (rows = output units, cols = input units)."""

    name: str
    shape_dense: tuple[int, ...]
    shape_compact: tuple[int, ...]
    rows_unused: int  # removed: nothing downstream reads them
    rows_folded: int  # removed: constant, folded into the next layer
    rows_kept_not_exact: int  # constant, but folding would not be exact (bias_maps=False)
    cols_removed: int
    bias_map: bool  # a fixed map is added after this layer

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape_dense": list(self.shape_dense), "shape_compact": list(self.shape_compact)}


@dataclass
class CompactResult:
    """``compact``'s answer: the compact module (eval mode) and what was removed, folded and kept."""

    module: nn.Module
    layers: list[LayerChange]
    kept_coupled: int = 0  # residual-stream channels dead in all their producers but kept (coupling)

    @property
    def removed(self) -> int:
        return sum(layer.rows_unused + layer.rows_folded for layer in self.layers)

    @property
    def folded(self) -> int:
        return sum(layer.rows_folded for layer in self.layers)

    @property
    def kept_not_exact(self) -> int:
        return sum(layer.rows_kept_not_exact for layer in self.layers)

    @property
    def bias_maps(self) -> int:
        return sum(layer.bias_map for layer in self.layers)

    def summary(self) -> dict[str, Any]:
        return {
            "units_removed": self.removed,
            "units_folded": self.folded,
            "units_kept_not_exact": self.kept_not_exact,
            "units_kept_coupled": self.kept_coupled,
            "bias_maps": self.bias_maps,
            "layers": [layer.as_dict() for layer in self.layers],
        }


# --- compaction of chains ----------------------------------------------------------------------

_CHANNELWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardtanh,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Dropout,
    nn.Identity,
)
_CHANNELWISE_FUNCTIONS = {
    F.relu,
    torch.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.gelu,
    F.silu,
    F.hardtanh,
    torch.tanh,
    torch.sigmoid,
    F.max_pool1d,
    F.max_pool2d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
}
_CHANNELWISE_METHODS = {"relu", "tanh", "sigmoid"}


@dataclass
class _Step:
    kind: str  # "linear" | "conv" | "channelwise" | "flatten"
    name: str
    module: nn.Module  # the layer (linear/conv) or the op as a module (channelwise/flatten)
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()


def _chain_steps(model: nn.Module, input_shape: tuple[int, ...]) -> list[_Step]:
    """The model as a straight line of steps, with the per-sample shape before and after each."""
    try:
        graph_module = fx.symbolic_trace(model)
    except Exception as error:  # noqa: BLE001 - any tracing failure means "not a chain we handle"
        raise ExportError(f"cannot trace {type(model).__name__} with torch.fx: {str(error).splitlines()[0]}") from None
    steps: list[_Step] = []
    previous: fx.Node | None = None
    for node in graph_module.graph.nodes:
        if node.op == "placeholder":
            if previous is not None:
                raise ExportError(f"{type(model).__name__} takes more than one input; compact handles one")
            previous = node
            continue
        if node.op == "output":
            if node.args[0] is not previous:
                raise ExportError(f"{type(model).__name__} is not a chain of layers (output is not the last op)")
            break
        tensor_args = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node)]
        if tensor_args != [previous] or node.args[0] is not previous:
            raise ExportError(f"{type(model).__name__} is not a chain of layers (op {node.name} branches)")
        rest, kwargs = tuple(node.args[1:]), dict(node.kwargs)
        if node.op == "call_module":
            module = graph_module.get_submodule(node.target)
            if isinstance(module, nn.Linear):
                steps.append(_Step("linear", node.target, module))
            elif isinstance(module, nn.Conv2d):
                if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
                    raise ExportError(f"conv {node.target}: only groups=1, numeric zero padding is supported")
                steps.append(_Step("conv", node.target, module))
            elif isinstance(module, nn.Flatten):
                if module.start_dim != 1 or module.end_dim != -1:
                    raise ExportError(f"{node.target}: only flatten(1) is supported")
                steps.append(_Step("flatten", node.target, nn.Flatten(1)))
            elif isinstance(module, _CHANNELWISE_MODULES):
                steps.append(_Step("channelwise", node.target, copy.deepcopy(module)))
            else:
                raise ExportError(f"layer {node.target} ({type(module).__name__}) is not supported by compact")
        elif node.op == "call_function" and node.target is torch.flatten:
            start = rest[0] if rest else kwargs.get("start_dim", 0)
            end = rest[1] if len(rest) > 1 else kwargs.get("end_dim", -1)
            if start != 1 or end != -1:
                raise ExportError(f"{node.name}: only flatten(x, 1) is supported")
            steps.append(_Step("flatten", node.name, nn.Flatten(1)))
        elif node.op == "call_function" and node.target in _CHANNELWISE_FUNCTIONS:
            steps.append(_Step("channelwise", node.name, Apply(node.target, rest, kwargs)))
        elif node.op == "call_method" and node.target in _CHANNELWISE_METHODS and not rest:
            steps.append(_Step("channelwise", node.name, Apply(getattr(torch, node.target), (), {})))
        elif node.op == "call_method" and node.target == "flatten" and rest in ((1,), (1, -1)):
            steps.append(_Step("flatten", node.name, nn.Flatten(1)))
        else:
            raise ExportError(f"op {node.name} ({node.op} {node.target}) is not supported by compact")
        previous = node
    if not any(step.kind in ("linear", "conv") for step in steps):
        raise ExportError(f"{type(model).__name__} has no Linear or Conv2d layer to compact")
    x = torch.zeros((1, *input_shape))
    with torch.no_grad():
        for step in steps:
            step.in_shape = tuple(x.shape[1:])
            x = step.module(x)
            step.out_shape = tuple(x.shape[1:])
    return steps


def _layer_forward(step: _Step, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if step.kind == "linear":
        return F.linear(x, weight, bias)
    conv = step.module
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _uniform(response: torch.Tensor) -> bool:
    """Whether every channel of a (C, ...) response is the same at every position (within rounding)."""
    if response.dim() <= 1:
        return True
    flat = response.flatten(1)
    spread = flat.max(1).values - flat.min(1).values
    return bool((spread <= 1e-6 * (1 + flat.abs().max(1).values)).all())


def _used_channels(steps: list[_Step]) -> list[torch.Tensor]:
    """``used[t]``: the channels of tensor t (t = 0 the input, t = i + 1 the output of step i) read downstream."""
    used: list[torch.Tensor] = [torch.ones(0, dtype=torch.bool)] * (len(steps) + 1)
    used[-1] = torch.ones(steps[-1].out_shape[0], dtype=torch.bool)
    for i in range(len(steps) - 1, -1, -1):
        step = steps[i]
        if step.kind in ("linear", "conv"):
            nonzero = step.module.weight.detach() != 0
            rows = nonzero[used[i + 1]]
            used[i] = rows.transpose(0, 1).flatten(1).any(1)
        elif step.kind == "flatten":
            used[i] = used[i + 1].view(step.in_shape[0], -1).any(1)
        else:
            used[i] = used[i + 1].clone()
    return used


def _compact_chain_once(
    steps: list[_Step], bias_maps: bool, force: list[torch.Tensor]
) -> tuple[list[nn.Module], list[LayerChange], bool]:
    """One forward pass of chain compaction; the flag says ``force`` grew (some units must stay: run again)."""
    used = _used_channels(steps)
    last_layer = max(i for i, step in enumerate(steps) if step.kind in ("linear", "conv"))
    modules: list[nn.Module] = []
    changes: list[LayerChange] = []
    live = torch.arange(steps[0].in_shape[0])
    const: torch.Tensor | None = None  # (1, *shape): the fixed values of removed channels (others 0)
    if steps[0].kind in ("linear", "conv") and not used[0].all():
        live = used[0].nonzero().squeeze(1)
        modules.append(Gather(1, live))
    grew = False
    for i, step in enumerate(steps):
        if step.kind == "channelwise":
            modules.append(step.module)
            if const is not None:
                with torch.no_grad():
                    const = step.module(const.clone())
            continue
        if step.kind == "flatten":
            modules.append(step.module)
            per_channel = math.prod(step.in_shape[1:])
            if const is not None:
                const = const.flatten(1)
            columns = (live[:, None] * per_channel + torch.arange(per_channel)).reshape(-1)
            keep = used[i + 1][columns]
            if not keep.all():
                modules.append(Gather(1, keep.nonzero().squeeze(1)))
            live = columns[keep]
            continue
        layer = step.module
        weight = layer.weight.detach()
        out_channels = weight.shape[0]
        bias = layer.bias.detach() if layer.bias is not None else torch.zeros(out_channels, dtype=weight.dtype)
        depends = (weight[:, live] != 0).flatten(1).any(1)
        if i == last_layer:
            keep_out = torch.ones(out_channels, dtype=torch.bool)
        else:
            keep_out = used[i + 1] & (depends | force[i + 1])
        response = None
        if const is not None:
            inputs = const.clone()
            inputs[:, live] = 0
            with torch.no_grad():
                response = _layer_forward(step, inputs, weight, None)[0]
        compact_bias = bias[keep_out].clone()
        bias_map = None
        if response is not None:
            kept_response = response[keep_out]
            if _uniform(kept_response):
                compact_bias += kept_response.flatten(1).mean(1) if kept_response.dim() > 1 else kept_response
            elif bias_maps:
                bias_map = kept_response
            else:
                grew |= _force_constant_inputs(steps, i, const, live, weight[keep_out], force)
        # the removed, used outputs hold fixed values: bias plus the constant inputs' contribution
        shape = (1, out_channels) + (1,) * (len(step.out_shape) - 1)
        values = bias.view(shape).expand((1, *step.out_shape)).clone()
        if response is not None:
            values = values + response.unsqueeze(0)
        values[:, keep_out] = 0
        values[:, ~used[i + 1]] = 0
        const = values if bool((used[i + 1] & ~keep_out).any()) else None
        new_weight = weight[keep_out][:, live].clone()
        if step.kind == "linear":
            new_layer: nn.Module = nn.Linear(new_weight.shape[1], new_weight.shape[0])
        else:
            new_layer = nn.Conv2d(
                new_weight.shape[1],
                new_weight.shape[0],
                layer.kernel_size,
                stride=layer.stride,
                padding=layer.padding,
                dilation=layer.dilation,
            )
        with torch.no_grad():
            new_layer.weight.copy_(new_weight)
            new_layer.bias.copy_(compact_bias)
        modules.append(new_layer)
        if bias_map is not None:
            modules.append(AddMap(bias_map))
        constant = used[i + 1] & ~depends
        changes.append(
            LayerChange(
                name=step.name,
                shape_dense=tuple(weight.shape),
                shape_compact=tuple(new_weight.shape),
                rows_unused=int((~used[i + 1] & ~keep_out).sum()),
                rows_folded=int((constant & ~keep_out).sum()),
                rows_kept_not_exact=int((constant & keep_out & force[i + 1]).sum()) if i != last_layer else 0,
                cols_removed=weight.shape[1] - len(live),
                bias_map=bias_map is not None,
            )
        )
        live = keep_out.nonzero().squeeze(1)
    return modules, changes, grew


def _force_constant_inputs(
    steps: list[_Step], i: int, const: torch.Tensor, live: torch.Tensor, weight: torch.Tensor, force: list[torch.Tensor]
) -> bool:
    """Mark the constant inputs of step ``i`` whose contribution is not uniform as units to keep; True if new."""
    live_set = set(live.tolist())
    candidates = [c for c in range(const.shape[1]) if c not in live_set and bool(const[0, c].ne(0).any())]
    if not candidates:
        return False
    batch = torch.zeros((len(candidates), *const.shape[1:]), dtype=const.dtype)
    for k, c in enumerate(candidates):
        batch[k, c] = const[0, c]
    with torch.no_grad():
        responses = _layer_forward(steps[i], batch, weight, None)
    producer = i
    while producer > 0 and steps[producer - 1].kind == "channelwise":
        producer -= 1
    grew = False
    for k, c in enumerate(candidates):
        if not _uniform(responses[k]) and not force[producer][c]:
            force[producer][c] = True
            grew = True
    return grew


def _compact_chain(model: nn.Module, input_shape: tuple[int, ...], bias_maps: bool) -> CompactResult:
    steps = _chain_steps(model, input_shape)
    force = [torch.zeros(steps[0].in_shape[0], dtype=torch.bool)] + [
        torch.zeros(step.out_shape[0], dtype=torch.bool) for step in steps
    ]
    while True:
        modules, changes, grew = _compact_chain_once(steps, bias_maps, force)
        if not grew:
            return CompactResult(CompactChain(modules).eval(), changes)


# --- compaction of residual networks -----------------------------------------------------------


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``x * scale + shift`` per channel."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach()
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach()
    return scale, shift


def _select_bn(bn: nn.BatchNorm2d, index: torch.Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(index), eps=bn.eps, momentum=bn.momentum, affine=bn.affine)
    with torch.no_grad():
        new.running_mean.copy_(bn.running_mean[index])
        new.running_var.copy_(bn.running_var[index])
        if bn.affine:
            new.weight.copy_(bn.weight[index])
            new.bias.copy_(bn.bias[index])
    return new.eval()


def _compact_resnet(model: nn.Module, input_shape: tuple[int, ...], bias_maps: bool) -> CompactResult:
    model = copy.deepcopy(model).eval()
    blocks = [(name, module) for name, module in model.named_modules() if isinstance(module, BasicBlock)]
    spatial: dict[str, tuple[int, ...]] = {}
    handles = [
        block.conv2.register_forward_pre_hook(lambda m, i, key=name: spatial.__setitem__(key, tuple(i[0].shape[1:])))
        for name, block in blocks
    ]
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape)))
    finally:
        for handle in handles:
            handle.remove()
    changes = []
    for name, block in blocks:
        conv1, conv2 = block.conv1, block.conv2
        if conv1.bias is not None or conv2.bias is not None or conv2.groups != 1 or conv1.groups != 1:
            raise ExportError(f"block {name}: only bias-free, groups=1 convolutions are supported")
        w1, w2 = conv1.weight.detach(), conv2.weight.detach()
        used = (w2 != 0).transpose(0, 1).flatten(1).any(1)
        depends = (w1 != 0).flatten(1).any(1)
        keep = used & depends
        if not keep.any():  # a conv with no channels does not export: keep one, as a cheap placeholder
            keep[int(used.nonzero()[0]) if used.any() else 0] = True
        folded = used & ~keep
        _, shift1 = _bn_affine(block.bn1)
        scale2, shift2 = _bn_affine(block.bn2)
        value = None
        kept_not_exact = 0
        if folded.any():
            constant = torch.zeros((1, *spatial[name]))
            constant[0, folded] = F.relu(shift1[folded]).view(-1, 1, 1)
            with torch.no_grad():
                response = F.conv2d(constant, w2, None, conv2.stride, conv2.padding, conv2.dilation)[0]
            response = response * scale2.view(-1, 1, 1)
            if _uniform(response):
                with torch.no_grad():
                    block.bn2.bias.add_(response.flatten(1).mean(1))
            elif bias_maps:
                value = response
            else:
                kept_not_exact = int(folded.sum())
                keep, folded = keep | folded, torch.zeros_like(folded)
        index = keep.nonzero().squeeze(1)
        new1 = nn.Conv2d(conv1.in_channels, len(index), conv1.kernel_size, conv1.stride, conv1.padding, bias=False)
        new2 = nn.Conv2d(len(index), conv2.out_channels, conv2.kernel_size, conv2.stride, conv2.padding, bias=False)
        with torch.no_grad():
            new1.weight.copy_(w1[index])
            new2.weight.copy_(w2[:, index])
        block.conv1, block.conv2, block.bn1 = new1, new2, _select_bn(block.bn1, index)
        if value is not None:
            block.bn2 = _BatchNormPlusMap(block.bn2, value)
        changes.append(
            LayerChange(
                f"{name}.conv1",
                tuple(w1.shape),
                tuple(new1.weight.shape),
                int((~used).sum()),
                int(folded.sum()),
                kept_not_exact,
                0,
                False,
            )  # fmt: skip
        )
        changes.append(
            LayerChange(
                f"{name}.conv2",
                tuple(w2.shape),
                tuple(new2.weight.shape),
                0,
                0,
                0,
                w2.shape[1] - len(index),
                value is not None,
            )  # fmt: skip
        )
    return CompactResult(model.eval(), changes, kept_coupled=_dead_stream_channels(model, blocks))


def _dead_stream_channels(model: nn.Module, blocks: list[tuple[str, BasicBlock]]) -> int:
    """Residual-stream channels whose every producer in their stage (stem conv, blocks' conv2) is all zero."""
    stages: dict[int, list[torch.Tensor]] = {}
    stem = getattr(model, "conv1", None)
    for _, block in blocks:
        stages.setdefault(block.conv2.out_channels, []).append(block.conv2.weight.detach())
    if isinstance(stem, nn.Conv2d) and stem.out_channels in stages:
        stages[stem.out_channels].append(stem.weight.detach())
    dead = 0
    for weights in stages.values():
        alive = torch.stack([(w != 0).flatten(1).any(1) for w in weights]).any(0)
        dead += int((~alive).sum())
    return dead


# --- the public functions ----------------------------------------------------------------------


def _plain_copy(model: nn.Module) -> nn.Module:
    """A CPU float32 eval-mode copy with the pruning masks folded into the weights."""
    plain = copy.deepcopy(model).cpu().float().eval()
    make_pruning_permanent(plain)
    return plain


def compact(model: nn.Module, input_shape: tuple[int, ...], *, bias_maps: bool = True) -> CompactResult:
    """A physically smaller module computing what the (masked/pruned) ``model`` computes in eval mode.

    ``input_shape`` is one sample's shape (C, H, W).  The model is not changed (it is copied,
    masks folded).  See the module docstring for what is removed, folded and kept, and why.
    Raises ``ExportError`` for architectures it cannot compact.
    """
    plain = _plain_copy(model)
    input_shape = tuple(int(n) for n in input_shape)
    with torch.no_grad():
        if any(isinstance(module, BasicBlock) for module in plain.modules()):
            result = _compact_resnet(plain, input_shape, bias_maps)
        else:
            result = _compact_chain(plain, input_shape, bias_maps)
    for parameter in result.module.parameters():
        parameter.requires_grad_(False)
    return result


def _batches(x: torch.Tensor, size: int = 1024):
    for start in range(0, x.shape[0], size):
        yield x[start : start + size]


def verify(dense: nn.Module, compact_model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor):
    """Compare the compact model with the dense one on real inputs ``x`` (labels ``y``).

    Returns ``max_abs_logit_diff``, ``dense_accuracy``, ``compact_accuracy``,
    ``same_predictions`` (fraction of inputs with the same arg-max) and ``samples``.
    ``compact_model`` may be any callable (a loaded exported module, an onnxruntime wrapper).
    """
    dense = _plain_copy(dense)
    if type(compact_model).__module__.startswith("trainables."):
        compact_model.eval()  # a module of ours; an exported one was traced in eval mode already
    max_diff, dense_right, compact_right, same = 0.0, 0, 0, 0
    with torch.no_grad():
        for xb, yb in zip(_batches(x.cpu().float()), _batches(y.cpu())):
            a, b = dense(xb), compact_model(xb)
            max_diff = max(max_diff, float((a - b).abs().max()))
            pa, pb = a.argmax(1), b.argmax(1)
            dense_right += int((pa == yb).sum())
            compact_right += int((pb == yb).sum())
            same += int((pa == pb).sum())
    n = int(x.shape[0])
    return {
        "samples": n,
        "max_abs_logit_diff": max_diff,
        "dense_accuracy": dense_right / n,
        "compact_accuracy": compact_right / n,
        "same_predictions": same / n,
    }


def _dynamic_batch() -> dict:
    return {"x": {0: torch.export.Dim("batch", min=1, max=1 << 20)}}


def _export_program(module: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` of a one-input module with a dynamic batch dimension (example batch ≥ 2)."""
    module = module.eval()
    if example.shape[0] < 2:
        example = example.expand(2, *example.shape[1:])
    example = example[:2].detach().cpu().float().clone()  # the file keeps it: a view would keep its whole storage

    class _Wrapped(nn.Module):  # a fixed argument name, so the dynamic shape spec applies to any module
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    with torch.no_grad():
        return torch.export.export(_Wrapped(module), (example,), dynamic_shapes=_dynamic_batch())


def export_pt2(module: nn.Module, example: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write ``module`` as a ``torch.export`` program (dynamic batch); ``torch.export.load(path).module()`` runs it."""
    path = Path(path)
    program = _export_program(module, example)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, path)
    return path


def export_onnx(module: nn.Module, example: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write ``module`` as one self-contained ONNX file (dynamic batch; needs ``onnx`` and ``onnxscript``)."""
    for package in ("onnx", "onnxscript"):
        try:
            __import__(package)
        except ImportError:
            raise ExportError(f"--format onnx needs {package}: pip install 'hoyersweep[export]'") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    program = _export_program(module, example)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the exporter warns about torchvision ops it cannot register: not ours
    try:
        onnx_program = torch.onnx.export(
            program, f=None, input_names=["x"], output_names=["logits"], dynamo=True, external_data=False, verbose=False
        )
    finally:
        quiet.setLevel(level)
    onnx_program.save(str(path), external_data=False)
    return path


def load_exported(path: str | os.PathLike, fmt: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The exported file as a callable tensor → tensor (``torch.export.load`` or an onnxruntime session)."""
    if fmt == "pt2":
        return torch.export.load(str(path)).module()
    if fmt != "onnx":
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("running an ONNX export needs onnxruntime: pip install 'hoyersweep[export]'") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.detach().cpu().float().numpy()})[0])

    return run


def latency_table(
    models: Mapping[str, Callable[[torch.Tensor], Any]], inputs: torch.Tensor, repeats: int = 20, warmup: int = 3
) -> dict[str, float]:
    """Median seconds per call of each model on ``inputs``, the models interleaved in every repeat.

    Interleaving (with the order rotating) lets drift and noise from other work on the machine
    hit all models alike, so the ratios are fair even where the absolute numbers are noisy.
    """
    names = list(models)
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.no_grad():
        for _ in range(warmup):
            for name in names:
                models[name](inputs)
        for r in range(repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                start = time.perf_counter()
                models[name](inputs)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def latency(module: Callable[[torch.Tensor], Any], inputs: torch.Tensor, repeats: int = 20) -> float:
    """Median seconds of one forward of ``module`` on ``inputs`` (after a short warm-up)."""
    return latency_table({"model": module}, inputs, repeats)["model"]


def state_dict_bytes(module: nn.Module) -> int:
    """Size of ``torch.save(module.state_dict())``: the weights-only size of a model."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, buffer)
    return buffer.getbuffer().nbytes


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass
class ExportReport:
    """What ``export`` did: sizes, latencies (dense vs compact, side by side), the accuracy check, units."""

    output: str
    format: str
    params_dense: int
    params_dense_nonzero: int
    params_compact: int
    bytes_dense_state_dict: int
    bytes_compact_state_dict: int
    bytes_file: int
    latency_s: dict[str, dict[str, float]]  # {"dense"|"compact"|"exported": {"1": s, "256": s}}
    check: dict[str, Any]
    units: dict[str, Any]
    trial: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Identical predictions and the same accuracy on the checked inputs."""
        return self.check["same_predictions"] == 1.0 and self.check["dense_accuracy"] == self.check["compact_accuracy"]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def lines(self) -> list[str]:
        """A short human-readable account."""
        lat = self.latency_s
        out = [
            f"exported {self.format} to {self.output} ({self.bytes_file} bytes)",
            f"params: dense {self.params_dense} ({self.params_dense_nonzero} nonzero) -> compact {self.params_compact}",
            f"weights-only state_dict: dense {self.bytes_dense_state_dict} B -> compact "
            f"{self.bytes_compact_state_dict} B ({self.bytes_dense_state_dict / max(self.bytes_file, 1):.1f}x "
            "smaller as the exported file)",
        ]
        for batch in lat.get("dense", {}):
            row = ", ".join(f"{name} {values[batch] * 1e3:.3f} ms" for name, values in lat.items())
            out.append(f"latency batch {batch} (median): {row}")
        c = self.check
        out.append(
            f"check on {c['samples']} inputs: max |Δlogit| {c['max_abs_logit_diff']:.3g}, accuracy dense "
            f"{c['dense_accuracy']:.4f} / compact {c['compact_accuracy']:.4f}, same predictions "
            f"{c['same_predictions']:.4f}"
        )
        u = self.units
        out.append(
            f"units: removed {u['units_removed']} (folded {u['units_folded']}), kept because folding would not be "
            f"exact {u['units_kept_not_exact']}, kept for residual coupling {u['units_kept_coupled']}, "
            f"bias maps {u['bias_maps']}"
        )
        return out


def export(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    path: str | os.PathLike,
    fmt: str = "pt2",
    *,
    bias_maps: bool = True,
    repeats: int = 20,
    batches: tuple[int, ...] = (1, 256),
    trial: int | None = None,
) -> ExportReport:
    """Compact ``model``, write it to ``path`` as ``fmt``, reload the file and check it on ``(x, y)``.

    The check runs the *loaded file* (not the in-memory module) against the masked dense model.
    Latency: dense, compact module and the loaded export, interleaved, median of ``repeats``,
    at each batch size in ``batches`` (inputs drawn from ``x``, repeated if needed).
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if x.shape[0] == 0:
        raise ExportError("no inputs to verify the export on")
    x, y = x.cpu().float(), y.cpu()
    dense = _plain_copy(model)
    result = compact(dense, tuple(x.shape[1:]), bias_maps=bias_maps)
    writer = export_pt2 if fmt == "pt2" else export_onnx
    path = writer(result.module, x[:2], path)
    loaded = load_exported(path, fmt)
    check = verify(dense, loaded, x, y)
    latencies: dict[str, dict[str, float]] = {"dense": {}, "compact": {}, "exported": {}}
    for batch in batches:
        inputs = x.repeat((math.ceil(batch / x.shape[0]),) + (1,) * (x.dim() - 1))[:batch]
        table = latency_table({"dense": dense, "compact": result.module, "exported": loaded}, inputs, repeats)
        for name, seconds in table.items():
            latencies[name][str(batch)] = seconds
    return ExportReport(
        output=str(path),
        format=fmt,
        params_dense=_param_count(dense),
        params_dense_nonzero=sum(int((p != 0).sum()) for p in dense.parameters()),
        params_compact=_param_count(result.module),
        bytes_dense_state_dict=state_dict_bytes(dense),
        bytes_compact_state_dict=state_dict_bytes(result.module),
        bytes_file=path.stat().st_size,
        latency_s=latencies,
        check=check,
        units=result.summary(),
        trial=trial,
    )


# --- loading a trial's model and the CLI -------------------------------------------------------


def _read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` of a dict, with one-line errors."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ExportError(f"checkpoint {path} does not exist") from None
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise ExportError(f"cannot read checkpoint {path}: {str(error).splitlines()[0]}") from None
    if not isinstance(payload, dict):
        raise ExportError(f"{path}: expected a state_dict or a checkpoint dict, got {type(payload).__name__}")
    return payload


def load_state(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Load weights into ``model`` (in place, masks folded) from any file a trial writes.

    Accepts a plain ``state_dict`` (with or without ``*_orig`` / ``*_mask`` pruning entries), a
    ``TrialState.save`` checkpoint (``{"model": state_dict, "masks": ...}``) and a
    ``save_model`` file (``{"state_dict": ..., "masks": ...}``).  Read with
    ``torch.load(weights_only=True)``: tensors and plain data only.
    """
    payload = _read_checkpoint(path)
    state = payload.get("state_dict", payload.get("model", payload))
    masks = payload.get("masks") if state is not payload else None
    if not isinstance(state, dict):
        raise ExportError(f"{path}: no state_dict found (keys: {', '.join(map(str, payload))})")
    if not masks:
        masks = {key[: -len("_mask")]: value for key, value in state.items() if key.endswith("_mask")}
    if masks and any(key.endswith("_orig") for key in state):  # pruning still parametrised in the file
        apply_masks(model, masks)
    elif masks:  # weights already folded (``save_model``): load them, then hold the masks as the file says
        masks = {key: value for key, value in masks.items()}
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            first = " ".join(str(error).split())[:300]
            raise ExportError(f"{path} does not fit the model: {first}") from None
        apply_masks(model, masks)
        make_pruning_permanent(model)
        return model.eval()
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = " ".join(str(error).split())[:300]
        raise ExportError(f"{path} does not fit the model: {first}") from None
    make_pruning_permanent(model)
    return model.eval()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainables.export",
        description="Export a pruned model as a physically smaller torch.export (pt2) or ONNX file.",
    )
    parser.add_argument("--checkpoint", required=True, help="state_dict, TrialState checkpoint or save_model file")
    parser.add_argument("--model", help="model name (built-in or module:function); default: the file's own")
    parser.add_argument("--dataset", default="digits", help="dataset whose test split checks the export")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--format", default="pt2", help=f"one of {', '.join(FORMATS)}")
    parser.add_argument("--repeats", type=int, default=20, help="latency repeats (median)")
    parser.add_argument("--no-bias-maps", action="store_true", help="keep constant units whose folding needs a map")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry: load, compact, export, verify; 0 when predictions are identical, 1 when not, 2 on errors."""
    args = _parser().parse_args(argv)
    from trainables.config import ConfigError
    from trainables.data import DataError, load_dataset
    from trainables.models import build_model

    try:
        if args.format not in FORMATS:
            raise ExportError(f"unknown format {args.format!r}")
        checkpoint = Path(args.checkpoint)
        if not checkpoint.is_file():
            raise ExportError(f"checkpoint {checkpoint} does not exist")
        model_name = args.model
        if model_name is None:
            model_name = _read_checkpoint(checkpoint).get("model")
            if not isinstance(model_name, str):
                raise ExportError(f"{checkpoint} does not name its model; pass --model")
        data = load_dataset(args.dataset, args.data_dir)
        try:
            model = build_model(model_name, data.input_shape, data.num_classes)
        except ValueError as error:
            raise ExportError(str(error)) from None
        load_state(checkpoint, model)
        report = export(
            model, data.test_x, data.test_y, args.output, args.format, bias_maps=not args.no_bias_maps,
            repeats=args.repeats,
        )  # fmt: skip
    except (ExportError, ConfigError, DataError, OSError) as error:
        print(f"error: {str(error).splitlines()[0] if str(error) else type(error).__name__}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print("\n".join(report.lines()))
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
