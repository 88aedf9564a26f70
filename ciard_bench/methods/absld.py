"""ABSLD: Anti-Bias Soft Label Distillation (Zhao et al., "Improving Adversarial Robust Fairness
via Anti-Bias Soft Label Distillation", NeurIPS 2024, arXiv 2312.05508). Equations below are
written in docs/methods.md notation (equation numbers of the paper were not verified).

Official code: github.com/zhaoshiji123/ABSLD (``absld_loss.py::absld_inner_loss``,
``resnet18_absld_cifar10.py``); docs/methods.md#absld.
* RSLAD (see ``rslad.py``: teacher on clean x, KL-sum PGD from the teacher's soft label with the
  student in eval mode and a Gaussian start, 5/6 adversarial + 1/6 natural KLe) with the teacher
  logits divided by class temperatures tau^adv_{y_i}, tau^nat_{y_i} (all 1 at the start).
* Per step (no grad): E^adv_c += CE(f_S(x'_i), y_i), E^nat_c += CE(f_S(x_i), y_i) over the
  samples of class c (train-mode logits); the sums restart every epoch.
* After each epoch: tau_c <- clamp(tau_c - r * g_c / max|g|, 0.5, 5), g = E - mean(E), for adv
  and nat separately; r = 0.1, x0.1 at epochs 215, 260, 285 (already at the update that ends
  those epochs, as the code's decay precedes the update).
* SGD 0.1, momentum 0.9, wd 2e-4, 300 epochs, x0.1 after 215, 260, 285 (``multistep``).

Quirks, each with its switch:
* ``soft_labels``: ``product`` (released): the two rescaled teacher tensors alias one storage
  and are divided in place, so BOTH soft labels (and the attack's target) use
  z_T / (tau^adv_y * tau^nat_y); ``separate`` keeps z_T / tau^adv_y and z_T / tau^nat_y (paper).
* ``student_log``: ``log_of_softmax`` (released: log(softmax), -inf on underflow) or ``log_softmax``.
Deviation: if every class has the same loss sum the code divides 0 by 0; here tau is unchanged.
Temperatures and loss sums are buffers (a mid-epoch resume keeps the partial sums); under
torchrun each step's class sums are summed over the processes before they are added.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..api import (RATE_MILESTONES, absld_temperatures, log_probs, milestone, option,
                   register_method)
from .rslad import RSLAD


@register_method
class ABSLD(RSLAD):
    name = "absld"
    label = "ABSLD"
    description = "RSLAD with class-wise teacher temperatures balancing the student's per-class loss"
    paper = "Improving Adversarial Robust Fairness via Anti-Bias Soft Label Distillation (NeurIPS 2024)"

    @dataclass
    class Options:
        adv_weight: float = option(5 / 6, "weight of the adversarial term (the natural term gets 1 - it)")
        temp_rate: float = option(0.1, "class temperature step per epoch")
        temp_min: float = option(0.5, "lower bound of the class temperatures")
        temp_max: float = option(5.0, "upper bound of the class temperatures")
        soft_labels: str = option("product", "product = both soft labels use tau_adv * tau_nat (released "
                                  "aliasing); separate = tau_adv and tau_nat (paper)", ("product", "separate"))
        student_log: str = option("log_of_softmax", "student log-probabilities in the outer loss: "
                                  "log(softmax) (released) or log_softmax", ("log_of_softmax", "log_softmax"))

    def __init__(self, student, teachers, ctx, options=None):
        super().__init__(student, teachers, ctx, options)
        c = ctx.num_classes
        for name, value in (("tau_adv", 1.0), ("tau_nat", 1.0), ("loss_sum_adv", 0.0), ("loss_sum_nat", 0.0)):
            self.register_buffer(name, torch.full((c,), value))
        self.rate_epochs = [milestone(m, ctx.epochs) for m in RATE_MILESTONES]

    def _scale(self) -> float:
        return 1.0

    def _log_probs(self, logits: Tensor) -> Tensor:
        return log_probs(logits, exact=self.opts.student_log == "log_softmax")

    def _soft_labels(self, z_t: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        t_adv, t_nat = self.tau_adv[y].unsqueeze(1), self.tau_nat[y].unsqueeze(1)
        if self.opts.soft_labels == "product":
            p = F.softmax(z_t / (t_adv * t_nat), dim=1)
            return p, p
        return F.softmax(z_t / t_adv, dim=1), F.softmax(z_t / t_nat, dim=1)

    @torch.no_grad()
    def _record(self, z_sa: Tensor, z_s: Tensor, y: Tensor) -> None:
        ce_adv = F.cross_entropy(z_sa.float(), y, reduction="none")
        ce_nat = F.cross_entropy(z_s.float(), y, reduction="none")
        if not self.ctx.dist.enabled:    # straight into the sums: one process's order of additions
            self.loss_sum_adv.index_add_(0, y, ce_adv)
            self.loss_sum_nat.index_add_(0, y, ce_nat)
            return
        # torchrun: this step's class sums over all processes, so every rank's sums are global
        step_adv, step_nat = self.global_sums(torch.zeros_like(self.loss_sum_adv).index_add_(0, y, ce_adv),
                                              torch.zeros_like(self.loss_sum_nat).index_add_(0, y, ce_nat))
        self.loss_sum_adv.add_(step_adv)
        self.loss_sum_nat.add_(step_nat)

    def end_epoch(self, epoch: int) -> None:
        o = self.opts
        rate = o.temp_rate * 0.1 ** sum(epoch >= m for m in self.rate_epochs)
        self.tau_adv.copy_(absld_temperatures(self.tau_adv, self.loss_sum_adv, rate, o.temp_min, o.temp_max))
        self.tau_nat.copy_(absld_temperatures(self.tau_nat, self.loss_sum_nat, rate, o.temp_min, o.temp_max))
        self.loss_sum_adv.zero_()
        self.loss_sum_nat.zero_()

    def state_summary(self) -> dict[str, Tensor]:
        return {"tau_adv_min": self.tau_adv.min(), "tau_adv_max": self.tau_adv.max(),
                "tau_nat_min": self.tau_nat.min(), "tau_nat_max": self.tau_nat.max()}
