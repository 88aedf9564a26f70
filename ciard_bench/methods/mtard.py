"""MTARD: Multi-Teacher Adversarial Robustness Distillation (Zhao et al., "Enhanced Accuracy and
Robustness via Multi-Teacher Adversarial Distillation", ECCV 2022). Equations below in
the notation of docs/methods.md (the paper's "adaptive normalization loss").

Official code: github.com/zhaoshiji123/MTARD (``mtard/mtard_loss.py::mtard_inner_loss_ce``,
``mtard/mtard_resnet18_cifar10.py``, ``mtard/mtard_resnet18_cifar100.py``); docs/methods.md#mtard.
* Inner: maximise CE(f_S(x'), y) (batch mean; student only, eval mode), Gaussian start
  x + 0.001 N (not clamped), K sign steps, ball then [0, 1].
* Forward order: f_Tn(x) -> attack (eval) -> f_S(x') (train) -> f_Ta(x') -> f_S(x) (train); the
  robust teacher sees the student's adversarial example, the clean teacher the clean batch.
* L_adv = KLe(softmax(f_Ta(x')), f_S(x')), L_nat = KLe(softmax(f_Tn(x)), f_S(x)) (temperature 1).
* Weights, every step BEFORE the backward: L0 = the first step's losses (never reset);
  r_i = (L_i / L0_i)^beta; w_nat <- w_nat - eta (w_nat - r_nat / (r_adv + r_nat)), w_adv = 1 - w_nat
  (``losses.mtard_weights_``, identical for eta <= 1); init 1/2, eta = 0.025, beta = 1;
  eta x0.1 after epochs 215, 260, 285 together with the LR. L = w_adv L_adv + w_nat L_nat.
* SGD 0.1, momentum 0.9, wd 2e-4, 300 epochs, x0.1 after 215, 260, 285 (``multistep``).
Teachers: robust = TRADES WRN-34-10 (C10) / Gowal WRN-70-16 (C100); clean = ResNet-56 (C10),
WRN-22-6 (C100, unverified). The released C10 script builds ``wideresnet()`` for both teachers
(placeholder paths), which the engine's ``--clean-teacher`` makes moot.

Switches: ``c100_scale`` = 10 (C100 script multiplies both KL terms by 10 on 100 classes; 1
turns it off), ``weight_rate`` (eta), ``beta``. Weights and L0 are buffers (resume-safe);
under torchrun they follow the losses' means over the global batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..api import (C100_KL_SCALE, RATE_MILESTONES, Method, eval_mode, milestone, mtard_weights_,
                   option, pgd, register_method, scalar_state)
from .fairness import weighted_kle


@register_method
class MTARD(Method):
    name = "mtard"
    label = "MTARD"
    description = "two-teacher (clean + robust) distillation with adaptive normalised loss weights"
    paper = "Enhanced Accuracy and Robustness via Multi-Teacher Adversarial Distillation (ECCV 2022)"
    teachers = ("clean_teacher", "robust_teacher")
    train_defaults = {"epochs": 300, "batch_size": 128, "lr": 0.1, "momentum": 0.9,
                      "weight_decay": 2e-4, "schedule": "multistep"}

    @dataclass
    class Options:
        weight_rate: float = option(0.025, "learning rate eta of the adaptive loss weights")
        beta: float = option(1.0, "exponent of the relative losses (the code's 'bert')")
        c100_scale: float = option(C100_KL_SCALE, "multiplier of both KL terms on 100-class data "
                                   "(C100 script: 10)")

    def __init__(self, student, teachers, ctx, options=None):
        super().__init__(student, teachers, ctx, options)
        self.rate_epochs = [milestone(m, ctx.epochs) for m in RATE_MILESTONES]
        for name, value in (("w_adv", 0.5), ("w_nat", 0.5), ("l0_adv", float("nan")),
                            ("l0_nat", float("nan")), ("weight_rate", self.opts.weight_rate)):
            self.register_buffer(name, scalar_state(value))   # float64: Python floats in the code

    def _decay(self, epoch: int) -> float:
        return 0.1 ** sum(epoch > m for m in self.rate_epochs)

    def begin_epoch(self, epoch: int) -> None:
        self.weight_rate.fill_(self.opts.weight_rate * self._decay(epoch))   # idempotent

    def _on_attack_logits(self, logits: Tensor, y: Tensor) -> None:
        """Sees the student's logits at every attack iterate (Fair-MTARD counts correct ones)."""

    def _sample_weights(self, y: Tensor) -> Tensor | None:
        """Per-sample weights of both KL terms (none for MTARD; Fair-MTARD's class weights)."""
        return None

    def _adversarial(self, x: Tensor, y: Tensor) -> Tensor:
        student = self.student

        def loss_fn(xa: Tensor) -> Tensor:
            logits = student(xa)
            self._on_attack_logits(logits.detach(), y)
            return F.cross_entropy(logits, y)

        with eval_mode(student):
            return pgd(loss_fn, x, eps=self.ctx.eps, alpha=self.ctx.alpha, steps=self.ctx.steps,
                       start="gauss", shard=self.ctx.dist)

    def _teacher_probs(self, z_ta: Tensor, z_n: Tensor) -> tuple[Tensor, Tensor]:
        """Soft labels of the two teachers (B-MTARD divides by its temperatures)."""
        return F.softmax(z_ta, dim=1), F.softmax(z_n, dim=1)

    def _temperature_stats(self, p_a: Tensor, p_n: Tensor) -> list[Tensor]:
        """Batch means a per-step temperature update needs (B-MTARD's entropies; none here)."""
        return []

    def _update_temperatures(self, stats: list[Tensor]) -> None:
        """Per-step update after the losses are formed, from ``_temperature_stats`` of the
        global batch (B-MTARD's temperatures)."""

    def forward(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            z_n = self.clean_teacher(x)
        x_adv = self._adversarial(x, y)
        z_sa = self.student(x_adv)
        with torch.no_grad():
            z_ta = self.robust_teacher(x_adv)
        z_s = self.student(x)
        p_a, p_n = self._teacher_probs(z_ta, z_n)
        scale = self.opts.c100_scale if self.ctx.num_classes == 100 else 1.0
        w = self._sample_weights(y)
        l_adv = scale * weighted_kle(F.log_softmax(z_sa, dim=1), p_a, w)
        l_nat = scale * weighted_kle(F.log_softmax(z_s, dim=1), p_n, w)
        g_adv, g_nat, *stats = self.global_means(   # of the global batch under torchrun
            [l_adv.detach(), l_nat.detach(), *self._temperature_stats(p_a, p_n)], y.shape[0])
        self._update_temperatures(stats)
        beta = self.opts.beta    # (L / L0)^beta == L^beta / L0^beta: L0 buffers hold L0^beta
        state = self.w_adv.dtype     # the code raises the .item() values (float64) to beta
        mtard_weights_(self.w_adv, self.w_nat, g_adv.to(state) ** beta, g_nat.to(state) ** beta,
                       self.l0_adv, self.l0_nat, self.weight_rate)
        loss = (self.w_adv.to(l_adv.dtype, copy=True) * l_adv       # Python float * float32 in the code
                + self.w_nat.to(l_nat.dtype, copy=True) * l_nat)
        return {"loss": loss, "loss_adv": l_adv.detach(), "loss_nat": l_nat.detach()}

    def state_summary(self) -> dict[str, Tensor]:
        return {"w_adv": self.w_adv, "w_nat": self.w_nat}
