"""CIFAR MobileNet-V2: the student of ARD, RSLAD and CIARD (CIARD's released default).

The CIFAR adaptation of Sandler et al. (2018) used by those repositories: stride-1 3x3 stem,
the second stage at stride 1 instead of 2 (so 32x32 inputs end at 4x4), 1x1-conv + BN
shortcuts on stride-1 blocks whose width changes, and no shortcut at all on stride-2 blocks.
Parameter names match RSLAD's ``cifar10_models/mobilenet_v2.py`` (``conv1``, ``layers``,
``conv2``, ``linear``) so released student checkpoints load. 2.30 M parameters and 0.19
GFLOPs per 32x32 image at ``width_mult=1``. No input normalisation (as released).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .registry import register_model

# (expansion, out_channels, num_blocks, stride) of the released CIFAR variant
_CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
        (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class _InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, expansion: int, stride: int):
        super().__init__()
        self.stride = stride
        hidden = expansion * c_in
        self.conv1 = nn.Conv2d(c_in, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.conv3 = nn.Conv2d(hidden, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride == 1 and c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2(nn.Module):
    """CIFAR MobileNet-V2; ``width_mult`` scales every layer's channels (also the last 1280),
    ``depth_mult`` every stage's number of blocks (at least one each; 1.0 = the released 17)."""

    def __init__(self, num_classes: int = 10, width_mult: float = 1.0, depth_mult: float = 1.0):
        super().__init__()
        if not width_mult > 0:
            raise UserError(f"width_mult {width_mult!r} is not valid; accepted: a number > 0")
        if not depth_mult > 0:
            raise UserError(f"depth_mult {depth_mult!r} is not valid; accepted: a number > 0")

        def scaled(channels: int) -> int:
            return max(1, int(round(channels * width_mult)))

        c_in = scaled(32)
        self.conv1 = nn.Conv2d(3, c_in, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_in)
        blocks = []
        for expansion, c_out, num_blocks, stride in _CFG:
            for i in range(max(1, round(num_blocks * depth_mult))):
                blocks.append(_InvertedResidual(c_in, scaled(c_out), expansion,
                                                stride if i == 0 else 1))
                c_in = scaled(c_out)
        self.layers = nn.Sequential(*blocks)
        c_last = scaled(1280)
        self.conv2 = nn.Conv2d(c_in, c_last, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_last)
        self.linear = nn.Linear(c_last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.relu(self.bn2(self.conv2(out)))
        # adaptive pooling equals the released avg_pool2d(out, 4) on 32x32 inputs
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register_model
def mobilenet_v2(num_classes: int = 10, width_mult: float = 1.0) -> MobileNetV2:
    """CIFAR MobileNet-V2 student (ARD/RSLAD/CIARD): 2.30 M parameters for 10 classes."""
    return MobileNetV2(num_classes=num_classes, width_mult=width_mult)


@register_model
def mobilenet_v2_tiny(num_classes: int = 10, width_mult: float = 0.25,
                      depth_mult: float = 1.0) -> MobileNetV2:
    """MobileNet-V2 at width multiplier 0.25: the CPU stand-in for ``mobilenet_v2``
    (``depth_mult`` < 1 keeps fewer blocks per stage, for the CPU presets)."""
    return MobileNetV2(num_classes=num_classes, width_mult=width_mult, depth_mult=depth_mult)
