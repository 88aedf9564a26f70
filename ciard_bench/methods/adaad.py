"""AdaAD: Adaptive Adversarial Distillation (Huang et al., "Boosting Accuracy and Robustness of
Student Models via Adaptive Adversarial Distillation", CVPR 2023). Equations below in
the notation of docs/methods.md.

Official code: github.com/boyellow/AdaAD (``AT_helper.py::adaad_inner_loss``, ``main.py``,
README commands); docs/methods.md#adaad.
* Inner ("adaptive": the teacher is queried at the moving point): maximise
  sum_{i,k} KL(softmax(f_T(x')) || softmax(f_S(x'))); the gradient w.r.t. x' flows through BOTH
  networks (teacher output not detached); student and teacher in eval mode; Gaussian start
  x + 0.001 N (not clamped); K sign steps, ball then [0, 1] (README: 8/255, 2/255, 10 steps).
* Outer (student train mode; forwards f_S(x) then f_S(x'); teacher outputs without grad):
  alpha KLmean(softmax(f_T(x')) || softmax(f_S(x'))) + (1 - alpha) KLmean(softmax(f_T(x)) || softmax(f_S(x))),
  KLmean = exact KL summed / (B C) (``nn.KLDivLoss()``), alpha = 1, temperature 1.
* SGD 0.1, momentum 0.9, wd 5e-4, batch 128, 200 epochs, 0.1 / 0.01 after epoch 100 / 0.001
  after 150 (``adaad``). Teachers: LTD WRN-34-20 (C10), LTD WRN-34-10 (C100) from RobustBench.
Switches: ``adv_weight`` (the code's ``AdaAD_alpha``; ``--alpha`` is the engine's PGD step);
``c100_scale`` = 100: the CIFAR-100 branch reduces with sum / B (batchmean) instead of
sum / (B C), i.e. x C = x100 on 100 classes; 1 turns it off.
Note: each attack step runs the teacher forward and backward, the cost of this method.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..api import (C100_BATCHMEAN_SCALE, Method, eval_mode, kl_mean, kl_sum, option, pgd,
                   register_method)


@register_method
class AdaAD(Method):
    name = "adaad"
    label = "AdaAD"
    description = "distillation whose attack maximises the student-teacher KL, querying the teacher at x'"
    paper = "Boosting Accuracy and Robustness of Student Models via Adaptive Adversarial Distillation (CVPR 2023)"
    teachers = ("robust_teacher",)
    train_defaults = {"epochs": 200, "batch_size": 128, "lr": 0.1, "momentum": 0.9,
                      "weight_decay": 5e-4, "schedule": "adaad"}

    @dataclass
    class Options:
        adv_weight: float = option(1.0, "the code's AdaAD_alpha: weight of the adversarial KL term "
                                   "(1 - it: the natural one)")
        c100_scale: float = option(C100_BATCHMEAN_SCALE, "multiplier on 100-class data "
                                   "(C100 branch: sum/B = x100)")

    def _adversarial(self, x: Tensor, y: Tensor) -> Tensor:
        student, teacher = self.student, self.robust_teacher

        def loss_fn(xa: Tensor) -> Tensor:
            return kl_sum(F.log_softmax(student(xa), dim=1), F.softmax(teacher(xa), dim=1))

        with eval_mode(student, teacher):
            return pgd(loss_fn, x, eps=self.ctx.eps, alpha=self.ctx.alpha, steps=self.ctx.steps,
                       start="gauss", shard=self.ctx.dist)

    def forward(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        x_adv = self._adversarial(x, y)
        z_s = self.student(x)
        z_sa = self.student(x_adv)
        with torch.no_grad():
            z_t, z_ta = self.robust_teacher(torch.cat([x, x_adv])).chunk(2)
        scale = self.opts.c100_scale if self.ctx.num_classes == 100 else 1.0
        l_adv = scale * kl_mean(F.log_softmax(z_sa, dim=1), F.softmax(z_ta, dim=1))
        l_nat = scale * kl_mean(F.log_softmax(z_s, dim=1), F.softmax(z_t, dim=1))
        a = self.opts.adv_weight
        return {"loss": a * l_adv + (1 - a) * l_nat, "loss_adv": l_adv.detach(), "loss_nat": l_nat.detach()}
