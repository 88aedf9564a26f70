"""ARD: Adversarially Robust Distillation (Goldblum et al., AAAI 2020); its distillation
objective below in docs/methods.md notation.

Official code: github.com/goldblum/AdversariallyRobustDistillation (``main.py``); docs/methods.md#ard.
* Inner: maximise CE(f_S(x'), y) summed over the batch (student only, ground-truth label);
  uniform start x + U(-eps, eps), NOT clamped before the first step; K sign steps, projection
  to the eps ball then [0, 1]. The student stays in TRAIN mode (the attack wrapper never
  switches it), so BatchNorm uses batch statistics and updates its running statistics.
* Outer: alpha * T^2 * KL(softmax(f_T(x)/T) || softmax(f_S(x')/T)) / (B * C)
  + (1 - alpha) * CE(f_S(x), y);  T = 30, alpha = 1 (option ``kl_weight``, as ``--alpha`` is the
  engine's PGD step), so the CE term has weight 0 but f_S(x) is still forwarded in train mode.
  The teacher sees the CLEAN x; ``nn.KLDivLoss()`` default reduction = sum / (B * C).
* Forward order: attack (train) -> f_S(x') (train) -> f_T(x) -> f_S(x) (train).
* SGD 0.1, momentum 0.9, wd 2e-4, 200 epochs; batch 128 (256 on CIFAR-100: pass --batch-size).

Quirks, each with its switch:
* LR schedule bug: the second decay (epoch 150) never happens: ``ard_released`` (default);
  ``--schedule ard_paper`` decays at epochs 100 and 150 as intended.
* ``attack_mode``: ``train`` as released (BN running statistics polluted by the attack), or
  ``eval`` (the other distillation methods' convention).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..api import Method, cross_entropy_sum, eval_mode, kl_per_sample, option, pgd, register_method


ATTACK_MODE_HELP = "student mode during the attack: train (released; BN statistics move) or eval"


class StudentCEAttack:
    """The training attack of ARD and IAD (both releases' ``AttackPGD``): PGD on the student's
    cross-entropy summed over the batch, from x + U(-eps, eps) unclamped, with the student in
    ``opts.attack_mode`` (train as released). A mixin of a :class:`Method` whose options have
    ``attack_mode``."""

    def _on_attack_logits(self, logits: Tensor, y: Tensor) -> None:
        """Sees the student's logits at every attack iterate (the class re-weighting of
        ``fairness.py`` counts the correct ones)."""

    def _adversarial(self, x: Tensor, y: Tensor) -> Tensor:
        student = self.student

        def loss_fn(xa: Tensor) -> Tensor:
            logits = student(xa)
            self._on_attack_logits(logits.detach(), y)
            return cross_entropy_sum(logits, y)

        mode = eval_mode(student) if self.opts.attack_mode == "eval" else contextlib.nullcontext()
        with mode:
            return pgd(loss_fn, x, eps=self.ctx.eps, alpha=self.ctx.alpha, steps=self.ctx.steps,
                       start="uniform", shard=self.ctx.dist)


@register_method
class ARD(StudentCEAttack, Method):
    name = "ard"
    label = "ARD"
    description = "robust distillation: KL at temperature 30 from the teacher's clean output to the student's PGD output"
    paper = "Adversarially Robust Distillation (AAAI 2020)"
    teachers = ("robust_teacher",)
    train_defaults = {"epochs": 200, "batch_size": 128, "lr": 0.1, "momentum": 0.9,
                      "weight_decay": 2e-4, "schedule": "ard_released"}

    @dataclass
    class Options:
        temperature: float = option(30.0, "distillation temperature T")
        kl_weight: float = option(1.0, "the code's alpha: weight of the KL term; 1 - it weighs CE(f_S(x), y)")
        attack_mode: str = option("train", ATTACK_MODE_HELP, ("train", "eval"))

    def _sample_weights(self, y: Tensor) -> Tensor | None:
        """Per-sample loss weights (none for ARD; the class weights of ``fairness.py``)."""
        return None

    def forward(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        o = self.opts
        x_adv = self._adversarial(x, y)
        z_sa = self.student(x_adv)
        with torch.no_grad():
            z_t = self.robust_teacher(x)
        z_s = self.student(x)
        t = o.temperature
        kl = kl_per_sample(F.log_softmax(z_sa / t, dim=1), F.softmax(z_t / t, dim=1)) / z_t.shape[1]
        ce = F.cross_entropy(z_s, y, reduction="none")
        w = self._sample_weights(y)
        if w is not None:
            kl, ce = kl * w, ce * w
        loss_kl, loss_ce = kl.mean(), ce.mean()
        loss = o.kl_weight * t * t * loss_kl + (1.0 - o.kl_weight) * loss_ce
        return {"loss": loss, "loss_kl": loss_kl.detach(), "loss_nat": loss_ce.detach()}
