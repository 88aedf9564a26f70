"""What the tests share: toy models and the plain-Python oracles they check the code against.

Models: :func:`toy` (a prototype-matching linear classifier with its data: attacks,
evaluation, sanity), :class:`Tiny` and :func:`tiny_method` (a method on conv + BN + linear
models: the training methods), :class:`StuckBatchNorm2d` (the classic eval-mode bug).
Oracles take Python lists of floats (see :func:`rows`) and use only ``math``: a number the
code computes with torch is compared with one computed independently here.
"""
import math

import torch
from torch import nn

from ciard_bench.methods import Context, create_method, get_method

ROLES = ("clean_teacher", "robust_teacher")


# -- models ------------------------------------------------------------------------------------
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


class Tiny(nn.Module):
    """Conv, BatchNorm, global mean, linear: a student or teacher for 3x8x8 inputs."""

    def __init__(self, seed: int, classes: int = 4):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3))) * 3


def tiny_method(name: str, classes: int = 4, epochs: int = 300, steps: int = 3, **opts):
    """Method ``name`` on a ``Tiny(0)`` student and the teachers it needs (``Tiny(1)`` clean,
    ``Tiny(2)`` robust)."""
    cls = get_method(name)
    teachers = {r: Tiny(i + 1, classes) for i, r in enumerate(ROLES) if r in cls.teachers}
    ctx = Context(num_classes=classes, epochs=epochs, steps=steps)
    return create_method(name, Tiny(0, classes), teachers, ctx, opts)


def fix_adv(method, x, seed: int = 9):
    """Replace the method's inner maximisation by a fixed point in the 8/255 ball; returns it."""
    g = torch.Generator().manual_seed(seed)
    x_adv = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * 8 / 255).clamp(0, 1)
    method._adversarial = lambda *a, **k: x_adv
    return x_adv


class StuckBatchNorm2d(nn.BatchNorm2d):
    """A classic bug: eval() does not reach this layer, so it normalises with batch statistics."""

    def train(self, mode: bool = True):
        return super().train(True)


# -- oracles: plain Python on lists of floats ----------------------------------------------------
def rows(t) -> list[list[float]]:
    """A tensor of logits as float64 lists, the oracles' input."""
    return t.detach().double().tolist()


def log_softmax(row, T: float = 1.0) -> list[float]:
    s = [v / T for v in row]
    m = max(s)
    lse = m + math.log(sum(math.exp(v - m) for v in s))
    return [v - lse for v in s]


def softmax(row, T: float = 1.0) -> list[float]:
    e = [math.exp((v - max(row)) / T) for v in row]
    return [v / sum(e) for v in e]


def kl(p, log_q) -> float:
    """Exact KL(p || q) of one row."""
    return sum(a * (math.log(a) - b) for a, b in zip(p, log_q))


def kle(probs, student_rows, T: float = 1.0) -> float:
    """The released codes' element-wise KL: mean over rows and classes of
    p (log(p + 1e-5) - log q), q = softmax(student / T); 0 without rows."""
    terms = [a * (math.log(a + 1e-5) - b) for p, s in zip(probs, student_rows)
             for a, b in zip(p, log_softmax(s, T))]
    return sum(terms) / len(terms) if terms else 0.0


def ce(row, label: int) -> float:
    return -log_softmax(row)[label]


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)
