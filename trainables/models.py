"""Models used in the DeepHoyer paper, sized from the data, plus user models by import path.

- ``lenet300_100``: MLP 300-100 whose input size is C·H·W of the data (8×8 digits, 28×28 MNIST).
- ``lenet5``: the Caffe LeNet-5 (conv 20@5×5, max-pool, conv 50@5×5, max-pool, FC 500, FC classes).
  At 28×28 it is exactly Caffe's; inputs smaller than 28×28 (8×8 digits) get padding 2 on
  both convs so the feature maps do not vanish.
- ``resnet20`` / ``resnet32`` / ``resnet56``: CIFAR-style ResNets (He et al. 2016, 3 stages of
  16/32/64 channels, option-A identity shortcuts with zero-padded channels).
- ``package.module:function``: any callable ``function(input_shape, num_classes) -> nn.Module``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

ModelFactory = Callable[[tuple[int, int, int], int], nn.Module]


class LeNet300100(nn.Module):
    """LeNet-300-100: FC(in→300) ReLU FC(300→100) ReLU FC(100→classes)."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.fc1 = nn.Linear(channels * height * width, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """Caffe LeNet-5: conv 20@5×5, pool, conv 50@5×5, pool, FC 500, FC classes (ReLU between FCs)."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        padding = 0 if min(height, width) >= 28 else 2
        self.conv1 = nn.Conv2d(channels, 20, kernel_size=5, padding=padding)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5, padding=padding)
        side_h = ((height + 2 * padding - 4) // 2 + 2 * padding - 4) // 2
        side_w = ((width + 2 * padding - 4) // 2 + 2 * padding - 4) // 2
        if side_h < 1 or side_w < 1:
            raise ValueError(f"lenet5 needs inputs of at least 8x8, got {height}x{width}")
        self.fc1 = nn.Linear(50 * side_h * side_w, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv1(x), 2)
        x = F.max_pool2d(self.conv2(x), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


class BasicBlock(nn.Module):
    """3×3–3×3 residual block with an option-A (parameter-free) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.extra_channels = planes - in_planes

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            half = self.extra_channels // 2
            x = F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32×32 inputs: conv 16, three stages of n blocks (16, 32, 64), pool, FC."""

    def __init__(self, depth: int, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(input_shape[0], 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers: list[nn.Module] = []
        in_planes = 16
        for stage, planes in enumerate((16, 32, 64)):
            for index in range(blocks):
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(torch.flatten(x, 1))


def _resnet(depth: int) -> ModelFactory:
    def build(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        return CifarResNet(depth, input_shape, num_classes)

    build.__name__ = f"resnet{depth}"
    return build


MODELS: dict[str, ModelFactory] = {
    "lenet300_100": LeNet300100,
    "lenet5": LeNet5,
    "resnet20": _resnet(20),
    "resnet32": _resnet(32),
    "resnet56": _resnet(56),
}


def resolve_model(name: str) -> ModelFactory:
    """The factory for a built-in model name or a ``package.module:function`` import path."""
    if name in MODELS:
        return MODELS[name]
    if ":" not in name:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)} or give module:function")
    module_name, _, attribute = name.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"model {name!r} cannot be imported: {error}") from None
    if not callable(factory):
        raise ValueError(f"model {name!r} is not callable")
    return factory


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Instantiate model ``name`` for inputs of ``input_shape`` (C, H, W) and ``num_classes``."""
    model = resolve_model(name)(tuple(input_shape), num_classes)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model
