"""Projected sign-gradient ascent for *training* (the inner maximisation of every method).

Evaluation attacks live in :mod:`ciard_bench.attacks` (torchattacks); training methods need
variants the libraries do not offer (a loss through two models, a Gaussian start without
clamping, the released codes' exact order of operations), so they share this one loop.

It only ever asks autograd for the gradient with respect to the input, so no parameter's
``.grad`` is touched; BatchNorm statistics are untouched when the models are in eval mode,
which :func:`eval_mode` arranges and undoes.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..distributed import Dist
from ..utils import eval_mode  # noqa: F401  (the methods take it from here, beside pgd)


def random_start(x: Tensor, start: str, eps: float, gauss_std: float = 1e-3,
                 shard: Dist = Dist()) -> Tensor:
    """``gauss``: x + 0.001 N(0, I); ``uniform``: x + U(-eps, eps); ``zero``: x (none clamped).

    ``shard`` (torchrun): ``x`` is this rank's shard of the global batch, whose rows are every
    world-size-th row of the global batch from the rank's own (as the data loader deals them).
    Every rank then draws the noise of the WHOLE global batch from the same random stream and
    keeps its rows, so each sample starts where it would in one process on the global batch."""
    if start == "gauss":
        return x + gauss_std * (torch.randn_like(x) if not shard.enabled else
                                _global_draw(x, shard, lambda t: t.normal_()))
    if start == "uniform":
        return x + (torch.empty_like(x).uniform_(-eps, eps) if not shard.enabled else
                    _global_draw(x, shard, lambda t: t.uniform_(-eps, eps)))
    if start == "zero":
        return x.clone()
    raise ValueError(f"unknown PGD start {start!r}; accepted: gauss, uniform, zero")


def _global_draw(x: Tensor, shard: Dist, draw: Callable[[Tensor], Tensor]) -> Tensor:
    full = draw(x.new_empty((x.shape[0] * shard.world_size, *x.shape[1:])))
    return full[shard.rank::shard.world_size]


def pgd(loss_fn: Callable[[Tensor], Tensor], x: Tensor, *, eps: float, alpha: float, steps: int,
        start: str = "gauss", clamp_start: bool = False,
        on_iterate: Callable[[Tensor], None] | None = None, shard: Dist = Dist()) -> Tensor:
    """Maximise ``loss_fn(x_adv)`` over the L-inf ball of radius ``eps`` around ``x``.

    Each step: x_adv <- clip01(proj_eps(x_adv + alpha * sign(grad))). Runs in fp32 (autocast
    off) with gradients enabled only for the input. ``on_iterate`` sees every iterate before
    its step (a method may look at the iterates there; the built-ins count correct predictions
    inside their loss function instead, from the logits they compute anyway). ``shard``: see
    :func:`random_start`.
    Returns a detached tensor.
    """
    x = x.detach()
    x_adv = random_start(x, start, eps, shard=shard)
    if clamp_start:
        x_adv = x_adv.clamp(0, 1)
    lower, upper = x - eps, x + eps
    device_type = x.device.type
    with torch.autocast(device_type=device_type, enabled=False), torch.enable_grad():
        for _ in range(steps):
            x_adv = x_adv.detach().requires_grad_(True)
            if on_iterate is not None:
                on_iterate(x_adv)
            loss = loss_fn(x_adv)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() + alpha * grad.sign()
            x_adv = torch.minimum(torch.maximum(x_adv, lower), upper).clamp_(0, 1)
    return x_adv.detach()
