"""Standard (non-adversarial) training: cross-entropy on clean inputs.

Used to train the clean ("natural") teachers of Table 2 when the user has none
(ResNet-56 on CIFAR-10, WRN-22-6 on CIFAR-100 in the paper).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..api import Method, register_method


@register_method
class Standard(Method):
    name = "standard"
    label = "Standard"
    description = "clean training with cross-entropy (clean teachers)"
    paper = "standard supervised training"
    train_defaults = {"epochs": 200, "batch_size": 128, "lr": 0.1, "momentum": 0.9,
                      "weight_decay": 5e-4, "schedule": "cosine"}

    def forward(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        return {"loss": F.cross_entropy(self.student(x), y)}
