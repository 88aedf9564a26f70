"""Fair-ARD: class-reweighted ARD (Yue et al., "Revisiting Adversarial Robustness Distillation
from the Perspective of Robust Fairness", NeurIPS 2023). Equations below in docs/methods.md notation.

Official code: github.com/NISP-official/Fair-ARD (``Fair-ARD.py``); docs/methods.md#fair-ard.
* Everything of ARD (see ``ard.py``: CE-sum PGD with uniform start and the student in train
  mode, KL at T = 30 from the teacher's clean output, alpha = 1), plus:
* kappa_i = number of attack iterates x'_0 .. x'_{K-1} at which the student (in the attack's
  mode) still predicts y_i; per class K_c = sum_{i: y_i = c} kappa_i / (N / C) over the epoch
  (N = samples seen in the epoch = the training set, as the code's ``len(dataset)``).
* At the end of each epoch: w_c = clamp(C * w~_c / sum w~, 5/6, 5/2), w~_c = (1/(K_c + 1e-5))^beta,
  beta = 2; used during the next epoch (all ones in epoch 1). Both the KL and the CE term of
  sample i are multiplied by w_{y_i}, then averaged over the batch (KL per sample / C as
  ``KLDivLoss()`` on one row).
* SGD 0.1, momentum 0.9, NESTEROV, wd 2e-4, 200 epochs, ARD's schedule bug (``ard_released``).

Quirks and switches: those of ARD (``attack_mode``, ``--schedule ard_paper``); Nesterov
momentum is the default as released (``--no-nesterov`` turns it off). Not reproduced: the
Fair-RSLAD / Fair-MTARD / Fair-IAD variants of the same repository.
The class weights and the kappa accumulators are buffers, so a run resumed in the middle of
an epoch continues the epoch's counts; under torchrun each step's counts are summed over
the processes before they are added.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..api import fair_class_weights, option, register_method, scalar_state
from .ard import ARD


@register_method
class FairARD(ARD):
    name = "fair_ard"
    label = "Fair-ARD"
    description = "ARD with class weights from per-class robustness (robust fairness)"
    paper = "Revisiting Adversarial Robustness Distillation from the Perspective of Robust Fairness (NeurIPS 2023)"
    train_defaults = {**ARD.train_defaults, "nesterov": True}   # the released script's SGD

    @dataclass
    class Options(ARD.Options):
        beta: float = option(2.0, "exponent of the inverse class robustness")
        weight_min: float = option(5 / 6, "lower clamp of the class weights")
        weight_max: float = option(5 / 2, "upper clamp of the class weights")

    def __init__(self, student, teachers, ctx, options=None):
        super().__init__(student, teachers, ctx, options)
        c = ctx.num_classes
        self.register_buffer("class_weights", torch.ones(c))
        self.register_buffer("kappa_sum", torch.zeros(c))     # sum of kappa_i per class, this epoch
        self.register_buffer("seen", scalar_state(0))         # samples seen this epoch (exact count)

    def _on_attack_logits(self, logits: Tensor, y: Tensor) -> None:
        self._step_kappa.index_add_(0, y, (logits.argmax(dim=1) == y).to(self._step_kappa.dtype))

    def _adversarial(self, x: Tensor, y: Tensor) -> Tensor:
        # this step's counts first (whole numbers: exact in any order of additions), then
        # summed over the processes under torchrun, then added to the epoch's
        self._step_kappa = torch.zeros_like(self.kappa_sum)
        x_adv = super()._adversarial(x, y)
        kappa, seen = self.global_sums(self._step_kappa, self.seen.new_full((), y.numel()))
        self.kappa_sum.add_(kappa)
        self.seen.add_(seen)
        return x_adv

    def _sample_weights(self, y: Tensor) -> Tensor:
        return self.class_weights[y]

    def end_epoch(self, epoch: int) -> None:
        c = self.kappa_sum.numel()
        kappa = self.kappa_sum / (self.seen / c).clamp(min=1e-12)
        o = self.opts
        self.class_weights.copy_(fair_class_weights(kappa, o.beta, lo=o.weight_min, hi=o.weight_max))
        self.kappa_sum.zero_()
        self.seen.zero_()

    def state_summary(self) -> dict[str, Tensor]:
        return {"class_weight_min": self.class_weights.min(), "class_weight_max": self.class_weights.max()}
