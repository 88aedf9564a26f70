"""Class re-weighting by per-class robustness: the one idea of Fair-ARD (Yue et al., "Revisiting
Adversarial Robustness Distillation from the Perspective of Robust Fairness", NeurIPS 2023),
as one piece that composes with a base method; docs/methods.md#fair-ard.

Official code: github.com/NISP-official/Fair-ARD, whose four scripts (``Fair-ARD.py``,
``Fair-RSLAD.py``, ``Fair-MTARD.py``, ``Fair-IAD.py``) add the same re-weighting to ARD,
RSLAD, MTARD and IAD-I. Shared by all four (the scripts' own differences are in
``fair_ard.py``):

* kappa_i = number of attack iterates x'_0 .. x'_{K-1} (the final one excluded) at which the
  student, in the attack's mode, predicts y_i; per class K_c = sum_{i: y_i = c} kappa_i / (N / C)
  over the epoch (N = the samples of the epoch, the code's ``len(dataset)``).
* After each epoch: w~_c = (1 / (K_c + eps))^beta, w_c = clamp(C w~_c / sum w~, 5/6, 5/2),
  beta = 2, eps = 1e-5 (``ciard_bench.api.fair_class_weights``); the weights serve the next
  epoch, all ones in the first. With eps = 0 (Fair-RSLAD.py) a class with K_c = 0 would get a
  NaN weight (1/0, then inf x 0) and NaN losses: there, and only there, K_c = 1e-5 is used,
  the weights the other scripts give.
* Sample i's loss terms are multiplied by w_{y_i} before the batch reduction (which terms: each
  script's own; see ``fair_ard.py``).

The contract with a base method (``ClassReweighting`` goes before it in the bases):
* its attack calls ``self._on_attack_logits(logits.detach(), y)`` on the student's logits at
  every iterate (``ARD``, ``RSLAD``, ``MTARD``, IAD do; a no-op there);
* its loss multiplies its per-sample terms by ``self._sample_weights(y)`` unless that is None
  (``weighted_kle`` for the element-wise KLe).
State: the class weights, the epoch's per-class kappa sums and its sample count are buffers
(a resume mid-epoch keeps the partial counts); under torchrun each step's counts are summed
over the processes before they are added, so every rank holds the global batch's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..api import fair_class_weights, kl_elements, kle, option, scalar_state

KAPPA_EPS = 1e-5    # the guard of Fair-ARD.py, Fair-MTARD.py and Fair-IAD.py: 1 / (K_c + 1e-5)


def weighted_kle(log_q: Tensor, p: Tensor, w: Tensor | None) -> Tensor:
    """KLe with per-sample weights: the mean over B x C of w_i p (log(p + 1e-5) - log q), as the
    Fair-* scripts reduce their per-row element-wise KL (sum over rows / B, then mean over C);
    ``w`` None: ``kle`` itself."""
    if w is None:
        return kle(log_q, p)
    return (kl_elements(log_q, p) * w.unsqueeze(1)).mean()


@dataclass
class ReweightingOptions:
    """The switches of the re-weighting (Fair-ARD keeps its own names: ``beta``, no eps)."""
    fair_beta: float = option(2.0, "exponent of the inverse class robustness (the script's --beta)")
    weight_min: float = option(5 / 6, "lower clamp of the class weights")
    weight_max: float = option(5 / 2, "upper clamp of the class weights")
    kappa_eps: float = option(KAPPA_EPS, "guard added to the class robustness K_c before 1/K_c")


class ClassReweighting:
    """Mixin: ``class FairX(ClassReweighting, X)`` re-weights method X by class robustness."""

    def __init__(self, student, teachers, ctx, options=None):
        super().__init__(student, teachers, ctx, options)
        c = ctx.num_classes
        self.register_buffer("class_weights", torch.ones(c))
        self.register_buffer("kappa_sum", torch.zeros(c))     # sum of kappa_i per class, this epoch
        self.register_buffer("seen", scalar_state(0))         # samples seen this epoch (exact count)

    def _weight_settings(self) -> tuple[float, float, float, float]:
        """(beta, lower clamp, upper clamp, eps) of the class weights."""
        o = self.opts
        return o.fair_beta, o.weight_min, o.weight_max, o.kappa_eps

    def _on_attack_logits(self, logits: Tensor, y: Tensor) -> None:
        self._step_kappa.index_add_(0, y, (logits.argmax(dim=1) == y).to(self._step_kappa.dtype))

    def _adversarial(self, x: Tensor, y: Tensor, *args) -> Tensor:
        # this step's counts first (whole numbers: exact in any order of additions), then
        # summed over the processes under torchrun, then added to the epoch's
        self._step_kappa = torch.zeros_like(self.kappa_sum)
        x_adv = super()._adversarial(x, y, *args)
        kappa, seen = self.global_sums(self._step_kappa, self.seen.new_full((), y.numel()))
        self.kappa_sum.add_(kappa)
        self.seen.add_(seen)
        return x_adv

    def _sample_weights(self, y: Tensor) -> Tensor:
        return self.class_weights[y]

    def end_epoch(self, epoch: int) -> None:
        super().end_epoch(epoch)
        beta, lo, hi, eps = self._weight_settings()
        c = self.kappa_sum.numel()
        kappa = self.kappa_sum / (self.seen / c).clamp(min=1e-12)
        if eps == 0:    # no guard (Fair-RSLAD.py), but 1/0 would make NaN weights: the others' guard
            kappa = torch.where(kappa > 0, kappa, torch.full_like(kappa, KAPPA_EPS))
        self.class_weights.copy_(fair_class_weights(kappa, beta, eps=eps, lo=lo, hi=hi))
        self.kappa_sum.zero_()
        self.seen.zero_()

    def state_summary(self) -> dict[str, Tensor]:
        return {**super().state_summary(), "class_weight_min": self.class_weights.min(),
                "class_weight_max": self.class_weights.max()}
