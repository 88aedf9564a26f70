"""B-MTARD: Balanced Multi-Teacher Adversarial Robustness Distillation (Zhao, Wang, Wei,
"Mitigating Accuracy-Robustness Trade-off via Balanced Multi-Teacher Adversarial Distillation",
TPAMI 2024): MTARD plus Entropy-Based Balance of the teachers' temperatures and Normalization
Loss Balance of the weights. Equations below in docs/methods.md notation.

Official code: github.com/zhaoshiji123/MTARD-extension (``resnet18_mtard_cifar10.py``, the only
training script; its ``mtard_loss``/``dataset``/``resnet56`` imports are missing, so the inner
maximisation is MTARD's, as its call signature indicates); docs/methods.md#b-mtard.
* Inner maximisation and forwards as MTARD (see ``mtard.py``); the student order S(x') then S(x)
  is the same (the code calls f_Tn(x) last; teachers are eval-mode, so this changes nothing).
* L_adv = KLe(softmax(f_Ta(x') / tau_a), f_S(x')), L_nat = KLe(softmax(f_Tn(x) / tau_n), f_S(x)):
  temperatures divide only the teacher logits, no T^2 factor.
* After the losses (every step): with H = mean(p log(p + 1e-5)) of each teacher's soft label,
  tau_a <- clip(tau_a - eta_tau sign(H_a / H_n - 1), 1, 10), tau_n likewise with H_n / H_a;
  init 1, eta_tau = 0.001 (``losses.entropy_balance_``).
* Weights: r_i = (L_i / L0_i) / mean_j(L_j / L0_j); w_i <- w_i - eta (w_i - r_i / sum r), clip at 0,
  renormalise (``losses.mtard_weights_``); L0 = first step's losses (taken with tau = 1), eta 0.025.
* eta and eta_tau x0.1 after epochs 215, 260, 285 (once each, with the LR); SGD 0.1, momentum
  0.9, wd 2e-4, 300 epochs, ``multistep``. Teachers: robust WRN-34-10 (TRADES), clean ResNet-56.
Switches: MTARD's, with ``c100_scale`` = 1 by default (there is no released CIFAR-100 script),
plus ``temp_rate``, ``temp_min``, ``temp_max``. All state is in buffers (resume-safe); under
torchrun the entropies and losses are means over the global batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from ..api import entropy_balance_, neg_entropy, option, register_method, scalar_state
from .mtard import MTARD


@register_method
class BMTARD(MTARD):
    name = "bmtard"
    label = "B-MTARD"
    description = "MTARD with entropy-balanced teacher temperatures and normalised loss balance"
    paper = "Mitigating Accuracy-Robustness Trade-off via Balanced Multi-Teacher Adversarial Distillation (TPAMI 2024)"

    @dataclass
    class Options(MTARD.Options):
        c100_scale: float = option(1.0, "multiplier of both KL terms on 100-class data "
                                   "(1: B-MTARD released no CIFAR-100 script)")
        temp_rate: float = option(0.001, "step eta_tau of the entropy-balanced temperatures")
        temp_min: float = option(1.0, "lower bound of the teacher temperatures")
        temp_max: float = option(10.0, "upper bound of the teacher temperatures")

    def __init__(self, student, teachers, ctx, options=None):
        super().__init__(student, teachers, ctx, options)
        for name, value in (("tau_a", 1.0), ("tau_n", 1.0), ("temp_rate", self.opts.temp_rate)):
            self.register_buffer(name, scalar_state(value))   # float64: Python floats in the code

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        self.temp_rate.fill_(self.opts.temp_rate * self._decay(epoch))

    def _teacher_probs(self, z_ta: Tensor, z_n: Tensor) -> tuple[Tensor, Tensor]:
        return F.softmax(z_ta / self.tau_a, dim=1), F.softmax(z_n / self.tau_n, dim=1)

    def _temperature_stats(self, p_a: Tensor, p_n: Tensor) -> list[Tensor]:
        return [neg_entropy(p_a), neg_entropy(p_n)]

    def _update_temperatures(self, stats: list[Tensor]) -> None:
        h_a, h_n = stats
        entropy_balance_(self.tau_a, self.tau_n, h_a, h_n, self.temp_rate,
                         self.opts.temp_min, self.opts.temp_max)

    def state_summary(self) -> dict[str, Tensor]:
        return {**super().state_summary(), "tau_adv": self.tau_a, "tau_nat": self.tau_n}
