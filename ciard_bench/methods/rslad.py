"""RSLAD: Robust Soft Label Adversarial Distillation (Zi et al., ICCV 2021); equations below in
the notation of docs/methods.md.

Official code: github.com/zibojia/RSLAD (``rslad_loss.py::rslad_inner_loss``,
``resnet18_rslad_cifar10.py``, ``resnet18_rslad_cifar100.py``); docs/methods.md#rslad.
* Robust soft labels p_T = softmax(f_T(x)): the teacher's output on the CLEAN batch (eval, no grad).
* Inner: maximise sum_{i,k} KL(p_T || softmax(f_S(x'))) (the student's adversarial prediction
  pushed away from the teacher's clean soft label; the teacher is not queried); student in eval
  mode; Gaussian start x + 0.001 N (not clamped); K sign steps, ball then [0, 1].
* Outer (train mode): 5/6 * KLe(p_T, f_S(x')) + 1/6 * KLe(p_T, f_S(x)), KLe = element-wise mean
  over B x C of p (log(p + 1e-5) - log q) (``losses.kle``), temperature 1.
* Forward order: f_T(x) -> attack (eval) -> f_S(x') (train) -> f_S(x) (train).
* SGD 0.1, momentum 0.9, wd 2e-4, 300 epochs, x0.1 after epochs 215, 260, 285 (``multistep``).

CIFAR-100 conventions of the released C100 script, each with a switch:
* ``c100_scale`` = 10: both KL terms x10 when the dataset has 100 classes ("to keep consistent
  with CIFAR-10"); 1 turns it off.
* ``student_log``: ``released`` takes log(softmax) (not log_softmax) for the student on
  CIFAR-100 (-inf on underflow), log_softmax otherwise; ``log_softmax`` always uses the stable form.
Not reproduced: the C100 script casts the WRN-70-16 teacher to half precision.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..api import (C100_KL_SCALE, Method, eval_mode, kl_sum, log_probs, option, pgd,
                   register_method)
from .fairness import weighted_kle


@register_method
class RSLAD(Method):
    name = "rslad"
    label = "RSLAD"
    description = "distillation with the robust teacher's clean soft labels, in the attack and in both loss terms"
    paper = "Revisiting Adversarial Robustness Distillation: Robust Soft Labels Make Student Better (ICCV 2021)"
    teachers = ("robust_teacher",)
    train_defaults = {"epochs": 300, "batch_size": 128, "lr": 0.1, "momentum": 0.9,
                      "weight_decay": 2e-4, "schedule": "multistep"}

    @dataclass
    class Options:
        adv_weight: float = option(5 / 6, "weight of the adversarial term (the natural term gets 1 - it)")
        c100_scale: float = option(C100_KL_SCALE, "multiplier of both KL terms on 100-class data "
                                   "(C100 script: 10)")
        student_log: str = option("released", "student log-probabilities: released = log(softmax) on "
                                  "CIFAR-100 as its script, log_softmax = always the stable form",
                                  ("released", "log_softmax"))

    def _scale(self) -> float:
        return self.opts.c100_scale if self.ctx.num_classes == 100 else 1.0

    def _log_probs(self, logits: Tensor) -> Tensor:
        released_log = self.opts.student_log == "released" and self.ctx.num_classes == 100
        return log_probs(logits, exact=not released_log)

    def _soft_labels(self, z_t: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher targets of the adversarial and natural terms (ABSLD rescales them per class)."""
        p = F.softmax(z_t, dim=1)
        return p, p

    def _record(self, z_sa: Tensor, z_s: Tensor, y: Tensor) -> None:
        """Sees the student's train-mode logits each step (ABSLD accumulates class losses)."""

    def _on_attack_logits(self, logits: Tensor, y: Tensor) -> None:
        """Sees the student's logits at every attack iterate (Fair-RSLAD counts correct ones)."""

    def _sample_weights(self, y: Tensor) -> Tensor | None:
        """Per-sample weights of both KL terms (none for RSLAD; Fair-RSLAD's class weights)."""
        return None

    def _adversarial(self, x: Tensor, y: Tensor, target: Tensor) -> Tensor:
        student = self.student

        def loss_fn(xa: Tensor) -> Tensor:
            logits = student(xa)
            self._on_attack_logits(logits.detach(), y)
            return kl_sum(F.log_softmax(logits, dim=1), target)

        with eval_mode(student):
            return pgd(loss_fn, x, eps=self.ctx.eps, alpha=self.ctx.alpha, steps=self.ctx.steps,
                       start="gauss", shard=self.ctx.dist)

    def forward(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            z_t = self.robust_teacher(x)
        p_adv, p_nat = self._soft_labels(z_t, y)
        x_adv = self._adversarial(x, y, p_adv)
        z_sa = self.student(x_adv)
        z_s = self.student(x)
        self._record(z_sa, z_s, y)
        scale = self._scale()
        w = self._sample_weights(y)
        l_adv = scale * weighted_kle(self._log_probs(z_sa), p_adv, w)
        l_nat = scale * weighted_kle(self._log_probs(z_s), p_nat, w)
        w = self.opts.adv_weight
        return {"loss": w * l_adv + (1.0 - w) * l_nat, "loss_adv": l_adv.detach(), "loss_nat": l_nat.detach()}
