"""CIFAR ResNets: the ResNet-18 student and the ResNet-56 clean teacher (plus small variants).

* ``ResNet`` is the 4-stage CIFAR ResNet-18 used as the student by RSLAD, MTARD and CIARD
  (3x3 stride-1 stem, no max-pool, 1x1-conv shortcuts, classifier named ``linear``); its
  parameter names match those repositories' ``cifar10_models/resnet.py`` so their released
  student checkpoints load. 11.17 M parameters and 1.11 GFLOPs per 32x32 image at width 64.
* ``CifarResNet`` is the 3-stage depth-(6n+2) ResNet of He et al. (2016) with 16/32/64
  channels, laid out as chenyaofo/pytorch-cifar-models (1x1-conv + BN downsample, classifier
  ``fc``), which is what MTARD's and CIARD's ``cifar10_resnet56`` clean teacher loads.

Neither normalises its input: the released code feeds them [0, 1] images.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .registry import register_model


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


class _PostActBlock(nn.Module):
    """conv-BN-ReLU-conv-BN + shortcut, ReLU; ``shortcut`` is empty when shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """4-stage CIFAR ResNet (RSLAD/MTARD/CIARD layout) with base width ``width``."""

    def __init__(self, num_blocks: Sequence[int] = (2, 2, 2, 2), num_classes: int = 10,
                 width: int = 64):
        super().__init__()
        self.conv1 = _conv3x3(3, width)
        self.bn1 = nn.BatchNorm2d(width)
        c_in = width
        for stage, blocks in enumerate(num_blocks):
            c_out = width * 2 ** stage
            strides = [1 if stage == 0 else 2] + [1] * (blocks - 1)
            layers = []
            for stride in strides:
                layers.append(_PostActBlock(c_in, c_out, stride))
                c_in = c_out
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))
        self.num_stages = len(num_blocks)
        self.linear = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        for stage in range(self.num_stages):
            out = getattr(self, f"layer{stage + 1}")(out)
        # adaptive pooling equals the released avg_pool2d(out, 4) on 32x32 inputs
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def _norm(channels: int, norm: str) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "none":
        return nn.Identity()
    raise UserError(f"norm {norm!r} is not valid; accepted: batch, none")


class _HeBlock(nn.Module):
    """The basic block with chenyaofo's names (``downsample`` = 1x1 conv + BN, or None)."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str = "batch"):
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = _norm(c_out, norm)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = _norm(c_out, norm)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                            _norm(c_out, norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """Depth-(6n+2) CIFAR ResNet, channels ``width``, 2x, 4x (16/32/64 by default)."""

    def __init__(self, depth: int = 56, num_classes: int = 10, width: int = 16, norm: str = "batch"):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise UserError(f"CIFAR ResNet depth {depth} is not valid; accepted: 6n+2 "
                            "(8, 20, 32, 44, 56, 110, ...)")
        n = (depth - 2) // 6
        self.conv1 = _conv3x3(3, width)
        self.bn1 = _norm(width, norm)
        self.relu = nn.ReLU(inplace=True)
        c_in = width
        for stage in range(3):
            c_out = width * 2 ** stage
            blocks = []
            for i in range(n):
                blocks.append(_HeBlock(c_in, c_out, 2 if (stage > 0 and i == 0) else 1, norm))
                c_in = c_out
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():  # the initialisation of the torchvision/chenyaofo code
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register_model
def resnet18(num_classes: int = 10, width: int = 64) -> ResNet:
    """CIFAR ResNet-18 student (RSLAD/MTARD/CIARD): 11.17 M parameters for 10 classes."""
    return ResNet((2, 2, 2, 2), num_classes=num_classes, width=width)


@register_model
def resnet18_tiny(num_classes: int = 10, width: int = 8) -> ResNet:
    """ResNet-18 at base width 8 (~0.18 M parameters): the CPU stand-in for ``resnet18``."""
    return ResNet((2, 2, 2, 2), num_classes=num_classes, width=width)


@register_model
def resnet56(num_classes: int = 10, depth: int = 56, width: int = 16, norm: str = "batch") -> CifarResNet:
    """CIFAR ResNet-56 clean teacher (CIFAR-10): 0.86 M parameters, 0.25 GFLOPs per image."""
    return CifarResNet(depth=depth, num_classes=num_classes, width=width, norm=norm)


@register_model
def resnet8(num_classes: int = 10, depth: int = 8, width: int = 16, norm: str = "batch") -> CifarResNet:
    """CIFAR ResNet-8 (one block per stage): the CPU stand-in for ``resnet56``.

    ``norm="none"`` drops BatchNorm (a model whose data-parallel training equals one process
    with the same global batch exactly: the multi-process test uses it).
    """
    return CifarResNet(depth=depth, num_classes=num_classes, width=width, norm=norm)
