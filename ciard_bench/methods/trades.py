"""TRADES (Zhang et al., ICML 2019), as released in github.com/yaodongyu/TRADES (``trades.py``).

Inner maximisation: maximise sum_i KL(softmax(f(x_i)) || softmax(f(x'_i))) with the model in
eval mode, Gaussian start (0.001 N), sign steps, projection then clamp to [0, 1].
Outer loss (train mode): CE(f(x), y) + beta * (1/B) sum_i KL(softmax(f(x_i)) || softmax(f(x'_i))),
beta = 6, the clean distribution NOT detached.

Quirks reproduced, with switches:

* ``clean_forwards = 2`` (code): f(x) is forwarded twice in train mode (for the CE and for the
  KL target), after f(x'), so BatchNorm statistics are updated three times per step;
  ``clean_forwards = 1`` reuses the first clean logits (same gradients up to BN statistics).
* The code's eps/step are 0.031/0.007 on CIFAR-10; distillation papers rerun TRADES at 8/255
  and 2/255, which is the engine's default (``--eps``/``--alpha`` change it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Method, option, register_method
from .pgd import eval_mode, pgd


def kl_sum(log_q: Tensor, p: Tensor) -> Tensor:
    """Exact KL(p || q) summed over batch and classes (``KLDivLoss(reduction='sum')``)."""
    return F.kl_div(log_q, p, reduction="sum")


@register_method
class TRADES(Method):
    name = "trades"
    description = "adversarial training trading off clean CE and a KL robustness term"
    paper = "Theoretically Principled Trade-off between Robustness and Accuracy (ICML 2019)"
    train_defaults = {"epochs": 76, "batch_size": 128, "lr": 0.1, "momentum": 0.9,
                      "weight_decay": 2e-4, "schedule": "trades"}

    @dataclass
    class Options:
        beta: float = option(6.0, "weight of the KL robustness term")
        clean_forwards: int = option(2, "train-mode forwards of the clean batch per step "
                                     "(2 as released, 1 reuses the logits)")

    def forward(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        model = self.student
        with eval_mode(model), torch.no_grad():
            p_clean = F.softmax(model(x), dim=1)
        with eval_mode(model):
            x_adv = pgd(lambda xa: kl_sum(F.log_softmax(model(xa), dim=1), p_clean), x,
                        eps=self.ctx.eps, alpha=self.ctx.alpha, steps=self.ctx.steps, start="gauss")
        logits = model(x)
        loss_nat = F.cross_entropy(logits, y)
        log_q_adv = F.log_softmax(model(x_adv), dim=1)
        target_logits = model(x) if self.opts.clean_forwards == 2 else logits
        loss_rob = kl_sum(log_q_adv, F.softmax(target_logits, dim=1)) / x.shape[0]
        return {"loss": loss_nat + self.opts.beta * loss_rob, "loss_nat": loss_nat, "loss_rob": loss_rob}
