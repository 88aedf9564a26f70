"""Small models shared by the attack, evaluation and sanity tests."""
import torch
from torch import nn


def toy(n: int = 40, contrast: float = 0.2, seed: int = 0):
    """A prototype-matching linear classifier on 3x8x8 images: ~80 % clean, ~40 % PGD."""
    protos = torch.rand(10, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed + 1))
    y = torch.arange(n) % 10
    x = (0.5 + contrast * (protos[y] - 0.5) + 0.1 * noise).clamp(0, 1)
    lin = nn.Linear(192, 10)
    with torch.no_grad():
        lin.weight.copy_(4 * (protos - 0.5).flatten(1))
        lin.bias.zero_()
    return nn.Sequential(nn.Flatten(), lin).eval(), x, y
