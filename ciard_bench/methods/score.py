"""SCORE: self-consistent robust error with the squared-L2 ("LSE") distance (Pang et al.,
"Robustness and Accuracy Could Be Reconcilable by (Proper) Definition", ICML 2022).
Equations below in docs/methods.md notation.

Official code: github.com/P2333/SCORE. Its headline path (``train-wa.py``: WRN-28-10, 1M DDPM
images, batch 512, 400 epochs, EMA) has no ResNet-18 / no-extra-data counterpart; the defaults
follow ``without_DDPM/train_cifar.py`` with its README's TRADES-LSE command
(``--attack TRADES --TRADESlambda 6 --divergence LSE --clip_loss 0.3 --lr-max 0.05``); docs/methods.md#score.
* Inner: p = softmax(f(x)) detached (eval); maximise mean_i ||softmax(f(x'_i)) - p_i||^2 with the
  model in eval mode; start x + 0.001 N clamped to [0, 1]; K sign steps, ball then [0, 1].
* Outer (train mode; forwards f(x') then f(x)): l_i = ||softmax(f(x_i)) - y~_i||^2
  + lambda ||softmax(f(x'_i)) - softmax(f(x_i))||^2, loss = mean_i ReLU(l_i - b) with
  b = clip^2 C / (C - 1) (0.1 for clip 0.3, C = 10) and lambda = 6; softmax(f(x)) is NOT detached;
  y~ = (1 - C ls') onehot + ls', ls' = ls / (C - 1) (ls = 0: one-hot).
* SGD 0.05, momentum 0.9, wd 5e-4, batch 128, 110 epochs, /10 after epoch 100, /100 after 105
  (``sat_released``). The code changes the rate per iteration (fractional epoch), so its last
  batch of epochs 100 and 105 already uses the next rate; the engine sets it per epoch.
Switches: ``beta`` (lambda), ``clip_loss`` (0 = no clipping), ``label_smoothing``. Not
reproduced: the train-wa recipe (DDPM data, EMA, BN tracking off during its uniform-start attack).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..api import Method, eval_mode, lse_clip_bound, lse_distance, option, pgd, register_method


@register_method
class SCORE(Method):
    name = "score"
    label = "SCORE"
    description = "TRADES with the squared-L2 distance of probabilities and a clipped loss (SCORE)"
    paper = "Robustness and Accuracy Could Be Reconcilable by (Proper) Definition (ICML 2022)"
    train_defaults = {"epochs": 110, "batch_size": 128, "lr": 0.05, "momentum": 0.9,
                      "weight_decay": 5e-4, "schedule": "sat_released"}

    @dataclass
    class Options:
        beta: float = option(6.0, "weight lambda of the robustness term")
        clip_loss: float = option(0.3, "clip c: per-sample losses below c^2 C/(C-1) give no gradient (0: off)")
        label_smoothing: float = option(0.0, "label smoothing of the natural target")

    def _adversarial(self, x: Tensor, y: Tensor) -> Tensor:
        model = self.student
        with eval_mode(model):
            with torch.no_grad():
                p_clean = F.softmax(model(x), dim=1)
            return pgd(lambda xa: lse_distance(F.softmax(model(xa), dim=1), p_clean).mean(), x,
                       eps=self.ctx.eps, alpha=self.ctx.alpha, steps=self.ctx.steps, start="gauss",
                       clamp_start=True, shard=self.ctx.dist)

    def forward(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        o, c = self.opts, self.ctx.num_classes
        x_adv = self._adversarial(x, y)
        p_adv = F.softmax(self.student(x_adv), dim=1)
        p = F.softmax(self.student(x), dim=1)
        ls = o.label_smoothing / (c - 1)
        target = (1 - c * ls) * F.one_hot(y, c).to(p.dtype) + ls
        l_nat, l_rob = lse_distance(p, target), lse_distance(p_adv, p)
        loss = F.relu(l_nat + o.beta * l_rob - lse_clip_bound(o.clip_loss, c)).mean()
        return {"loss": loss, "loss_nat": l_nat.mean().detach(), "loss_rob": l_rob.mean().detach()}
