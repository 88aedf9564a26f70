"""SAT: PGD adversarial training (Madry et al., "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR 2018, Eq. 2.1: min_theta E max_{||d|| <= eps} CE(f(x + d), y)).

Official code: github.com/MadryLab/cifar10_challenge (TensorFlow, WRN, 0-255 pixels). Defaults
follow the PyTorch ResNet-18 SAT that the distillation papers compare with, the ``Plain_Madry``
method of github.com/boyellow/AdaAD (``AT_helper.py::Madry_PGD``, ``main.py``); docs/methods.md#sat.
* Inner: maximise CE(f(x'), y); Gaussian start x + 0.001 N clamped to [0, 1]; K sign steps of
  2/255 projected to the 8/255 ball then [0, 1]; model in eval mode.
* Outer: CE(f(x'), y) (batch mean), model in train mode; no clean term.
* SGD 0.1, momentum 0.9, wd 5e-4, 110 epochs, x0.1 after epochs 100 and 105 (``sat_released``).

Switches (Madry's TensorFlow recipe is ``--attack-mode train --start uniform`` with
``--epochs 205 --schedule ard_paper --weight-decay 2e-4``: 80k iterations, x0.1 at 40k and 60k):
* ``attack_mode``: ``eval`` (AdaAD) or ``train`` (Madry: BatchNorm uses batch statistics and its
  running statistics are updated by every attack forward).
* ``start``: ``gauss`` (AdaAD) or ``uniform`` U(-eps, eps) (Madry); both clamped to [0, 1].
* ``clean_forward``: AdaAD also forwards the clean batch in train mode after f(x') (for its
  logged clean accuracy), which updates BatchNorm statistics; off skips it. Logged as ``loss_nat``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..api import Method, eval_mode, option, pgd, register_method


@register_method
class SAT(Method):
    name = "sat"
    label = "SAT"
    description = "PGD adversarial training: cross-entropy on PGD-10 examples only"
    paper = "Towards Deep Learning Models Resistant to Adversarial Attacks (ICLR 2018)"
    train_defaults = {"epochs": 110, "batch_size": 128, "lr": 0.1, "momentum": 0.9,
                      "weight_decay": 5e-4, "schedule": "sat_released"}

    @dataclass
    class Options:
        attack_mode: str = option("eval", "model mode during the attack: eval (AdaAD's PyTorch SAT) "
                                  "or train (Madry's code: BN batch statistics)", ("eval", "train"))
        start: str = option("gauss", "PGD start: gauss = x + 0.001 N (AdaAD), uniform = "
                            "x + U(-eps, eps) (Madry); clamped to [0, 1]", ("gauss", "uniform"))
        clean_forward: bool = option(True, "forward the clean batch in train mode after f(x') "
                                     "(AdaAD logs it; it moves BN statistics)")

    def _adversarial(self, x: Tensor, y: Tensor) -> Tensor:
        model = self.student
        mode = eval_mode(model) if self.opts.attack_mode == "eval" else contextlib.nullcontext()
        with mode:
            return pgd(lambda xa: F.cross_entropy(model(xa), y), x, eps=self.ctx.eps,
                       alpha=self.ctx.alpha, steps=self.ctx.steps, start=self.opts.start,
                       clamp_start=True, shard=self.ctx.dist)

    def forward(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        x_adv = self._adversarial(x, y)
        loss = F.cross_entropy(self.student(x_adv), y)
        out = {"loss": loss, "loss_adv": loss.detach()}
        if self.opts.clean_forward:
            with torch.no_grad():
                out["loss_nat"] = F.cross_entropy(self.student(x), y)
        return out
