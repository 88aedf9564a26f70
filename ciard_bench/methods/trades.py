"""TRADES (Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy",
ICML 2019), as released in github.com/yaodongyu/TRADES (``trades.py::trades_loss``,
``train_trades_cifar10.py``); docs/methods.md#trades.

Inner maximisation: maximise sum_i KL(softmax(f(x_i)) || softmax(f(x'_i))) with the model in
eval mode, Gaussian start x + 0.001 N (not clamped), sign steps, projection then clamp to
[0, 1]. (The code recomputes the clean target each step; in eval mode it is the same tensor.)
Outer loss (train mode): CE(f(x), y) + beta * (1/B) sum_i KL(softmax(f(x_i)) || softmax(f(x'_i))),
beta = 6, the clean distribution NOT detached.
Optimiser: SGD 0.1, momentum 0.9, wd 2e-4, batch 128, 76 epochs, x0.1 from epoch 75 on
(the code's ``epoch >= 75``: schedule ``trades_released``).

Quirks reproduced, with switches:

* ``clean_forwards = 2`` (code): f(x) is forwarded twice in train mode (for the CE and for the
  KL target), f(x) -> f(x') -> f(x), so BatchNorm statistics are updated three times per step;
  ``clean_forwards = 1`` reuses the first clean logits (same gradients up to BN statistics).
* The code's eps/step are 0.031/0.007 on CIFAR-10; distillation papers rerun TRADES at 8/255
  and 2/255, which is the engine's default (``--eps``/``--alpha`` change it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..api import Method, eval_mode, kl_sum, option, pgd, register_method


@register_method
class TRADES(Method):
    name = "trades"
    label = "TRADES"
    description = "adversarial training trading off clean CE and a KL robustness term"
    paper = "Theoretically Principled Trade-off between Robustness and Accuracy (ICML 2019)"
    train_defaults = {"epochs": 76, "batch_size": 128, "lr": 0.1, "momentum": 0.9,
                      "weight_decay": 2e-4, "schedule": "trades_released"}

    @dataclass
    class Options:
        beta: float = option(6.0, "weight of the KL robustness term")
        clean_forwards: int = option(2, "train-mode forwards of the clean batch per step "
                                     "(2 as released, 1 reuses the logits)")

    def _adversarial(self, x: Tensor, y: Tensor) -> Tensor:
        model = self.student
        with eval_mode(model):
            with torch.no_grad():
                p_clean = F.softmax(model(x), dim=1)
            return pgd(lambda xa: kl_sum(F.log_softmax(model(xa), dim=1), p_clean), x,
                       eps=self.ctx.eps, alpha=self.ctx.alpha, steps=self.ctx.steps, start="gauss",
                       shard=self.ctx.dist)

    def forward(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        model = self.student
        x_adv = self._adversarial(x, y)
        logits = model(x)
        loss_nat = F.cross_entropy(logits, y)
        log_q_adv = F.log_softmax(model(x_adv), dim=1)
        target_logits = model(x) if self.opts.clean_forwards == 2 else logits
        loss_rob = kl_sum(log_q_adv, F.softmax(target_logits, dim=1)) / x.shape[0]
        return {"loss": loss_nat + self.opts.beta * loss_rob, "loss_nat": loss_nat, "loss_rob": loss_rob}
