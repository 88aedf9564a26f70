"""AKD: Adversarial Knowledge Distillation, after J. Maroto, G. Ortiz-Jiménez and P. Frossard,
"On the benefits of knowledge distillation for adversarial robustness", arXiv:2203.07159 (2022).
Notation of ciard-bench's docs/methods.md: f_S the student, f_T the robust teacher, x' the
adversarial example, B the batch size.

What this module computes, exactly:

* Inner (student in eval mode, teacher not queried): maximise CE(f_S(x'), y), the batch mean,
  over the L-inf ball of radius eps around x: start x + U(-eps, eps) (not clamped), then K
  sign steps of size alpha, each projected to the ball and then to [0, 1]
  (``ciard_bench.api.pgd``; eps, alpha and K are the run's, 8/255, 2/255 and 10 by default).
* Outer (student in train mode; teacher in eval mode, no gradient, queried on x'):

      L = a T^2 (1/B) sum_i KL( softmax(f_T(x'_i) / T) || softmax(f_S(x'_i) / T) )
          + (1 - a) (1/B) sum_i CE(f_S(x'_i), y_i)

  with the exact KL (``log_softmax`` of the student, no epsilon), summed over the classes and
  averaged over the batch; a = ``kl_weight`` (default 0.9), T = ``temperature`` (default 1).
  Logged: ``loss_kl`` (the mean KL, before a T^2) and ``loss_adv`` (the mean CE on x').
* Forward order: attack (eval) -> f_S(x') (train) -> f_T(x'). No clean forward.

What is verified and what is assumed. The paper's abstract defines AKD as adversarially
training the student on a mixture of the original labels and the teacher's outputs. The first
author's later public code (github.com/javier-maroto/kdmc, ``src/kdmc/train/akd.py``, for
modulation classification) crafts PGD examples with the student's cross-entropy, queries the
teacher on those same adversarial examples, and minimises the cross-entropy of the student to
the mixed target a p_T(x') + (1 - a) onehot(y) at temperature 1; that equals L above at T = 1
up to a H(p_T(x')), a term without gradient for the student. The method section of the paper
itself was not available to check, so these are assumptions of this implementation, each a
switch where it matters: the temperature T with Hinton's T^2 factor (1 reproduces the code
above), the default a = 0.9, the batch-mean reduction, the attack in eval mode with an
unclamped uniform start (the torchattacks-style PGD of that code), and ``train_defaults``
below (a common CIFAR adversarial-training recipe, not the paper's stated one). Not
implemented: the paper's ensembles of teachers and early-stopped teachers (one robust
teacher, given as ``--robust-teacher``).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ciard_bench.api import (Method, UserError, eval_mode, kl_per_sample, option, pgd,
                             register_method)


@register_method
class AKD(Method):
    name = "akd"
    label = "AKD"
    description = ("adversarial KD: KL to the robust teacher's output on the student's own PGD "
                   "example, mixed with CE on that example")
    paper = "On the benefits of knowledge distillation for adversarial robustness (arXiv 2022)"
    teachers = ("robust_teacher",)
    train_defaults = {"epochs": 200, "batch_size": 128, "lr": 0.1, "momentum": 0.9,
                      "weight_decay": 5e-4, "schedule": "ard_paper"}

    @dataclass
    class Options:
        kl_weight: float = option(0.9, "a: weight of the KL to the teacher's output on x'; "
                                  "1 - a weighs CE(f_S(x'), y)")
        temperature: float = option(1.0, "distillation temperature T of both softmaxes (the KL "
                                    "is multiplied by T^2)")
        start: str = option("uniform", "PGD start: uniform = x + U(-eps, eps), gauss = "
                            "x + 0.001 N; neither clamped", ("uniform", "gauss"))
        attack_mode: str = option("eval", "student mode during the attack: eval (BatchNorm "
                                  "running statistics, untouched) or train (batch statistics, "
                                  "updated by every attack step)", ("eval", "train"))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not 0.0 <= self.opts.kl_weight <= 1.0:
            raise UserError(f"kl_weight {self.opts.kl_weight} is not valid for method 'akd'; "
                            "accepted: a number in [0, 1]")
        if not self.opts.temperature > 0.0:
            raise UserError(f"temperature {self.opts.temperature} is not valid for method "
                            "'akd'; accepted: a number > 0")

    def _adversarial(self, x: Tensor, y: Tensor) -> Tensor:
        """The inner maximisation: PGD on the student's cross-entropy with the true label."""
        student = self.student
        mode = eval_mode(student) if self.opts.attack_mode == "eval" else contextlib.nullcontext()
        with mode:
            return pgd(lambda xa: F.cross_entropy(student(xa), y), x, eps=self.ctx.eps,
                       alpha=self.ctx.alpha, steps=self.ctx.steps, start=self.opts.start,
                       shard=self.ctx.dist)

    def forward(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        a, t = self.opts.kl_weight, self.opts.temperature
        x_adv = self._adversarial(x, y)
        z_sa = self.student(x_adv)
        with torch.no_grad():
            z_ta = self.robust_teacher(x_adv)
        loss_kl = kl_per_sample(F.log_softmax(z_sa / t, dim=1), F.softmax(z_ta / t, dim=1)).mean()
        loss_ce = F.cross_entropy(z_sa, y)
        loss = a * t * t * loss_kl + (1.0 - a) * loss_ce
        return {"loss": loss, "loss_kl": loss_kl.detach(), "loss_adv": loss_ce.detach()}
