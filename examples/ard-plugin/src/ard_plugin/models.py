"""``cnn4``: a 4-layer convolutional student with BatchNorm, for 3 x 32 x 32 images.

Layout (w = ``width``, default 32): two 3x3 conv-BN-ReLU layers at w channels, 2x2 max-pool,
two 3x3 conv-BN-ReLU layers at 2w channels, 2x2 max-pool, global average pool, one linear
layer to ``num_classes`` logits. Convolutions have no bias (BatchNorm follows each). It takes
[0, 1] images as they come from ciard-bench's loaders and does not normalise them: the
BatchNorm after the first convolution rescales its input. Any input size works (the pool is
global); ciard-bench's datasets are 32 x 32 but for Tiny-ImageNet's 64 x 64.

Size at 10 classes: 66,410 parameters and 0.049 GFLOPs per image at width 32, about 0.38 of
the ``resnet18_tiny`` stand-in's parameters; 4,514 parameters at width 8.
"""
from __future__ import annotations

import torch
from torch import nn

from ciard_bench.api import UserError, register_model


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class CNN4(nn.Module):
    """Four conv-BN-ReLU layers in two stages of ``width`` and ``2 * width`` channels."""

    def __init__(self, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu(3, width), _conv_bn_relu(width, width), nn.MaxPool2d(2),
            _conv_bn_relu(width, 2 * width), _conv_bn_relu(2 * width, 2 * width), nn.MaxPool2d(2))
        self.classifier = nn.Linear(2 * width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


@register_model
def cnn4(num_classes: int = 10, width: int = 32) -> CNN4:
    """4-layer CNN with BatchNorm (plugin ard-plugin): 0.07 M parameters at width 32."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise UserError(f"cnn4 width {width!r} is not valid; accepted: an integer >= 1")
    return CNN4(num_classes=num_classes, width=width)
