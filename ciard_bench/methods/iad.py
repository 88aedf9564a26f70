"""IAD: Introspective Adversarial Distillation (Zhu et al., "Reliable Adversarial Distillation
with Unreliable Teachers", ICLR 2022); both released variants, equations below in
docs/methods.md notation.

Official code: github.com/ZFancy/IAD (``IAD-I.py``: IAD on top of the repository's ARD;
``IAD-II.py``: IAD on top of AKD^2; the ``AttackPGD`` class inside each); docs/methods.md#iad.

Shared by both variants:

* Inner: maximise CE(f_S(x'), y) SUMMED over the batch (student only, true label); uniform
  start x + U(-eps, eps), NOT clamped before the first step; K sign steps, projection to the
  eps ball, then [0, 1] (8/255, 2/255, 10 steps). The student stays in TRAIN mode (the
  training loop calls ``net.train()`` on the attack wrapper), so BatchNorm uses batch
  statistics and each attack forward moves its running statistics.
* Trust weight of sample i (the teacher's reliability on the student's adversarial example):
  a_i = softmax(f_T(x'))_{i, y_i} ^ beta, beta = 0.1, a constant (no gradient; the code reads
  each one with ``.item()``). f_T is the robust teacher, queried at x'.
* Introspection (the student's own clean prediction as a second soft label):
  KL_i(softmax(f_S(x)) || softmax(f_S(x'))) at temperature 1, f_S(x) a fresh train-mode
  forward whose output is NOT detached (the gradient also reaches the student through its own
  target). Only in epochs after ``--begin`` (the code's 0-indexed ``epoch >= begin``); before
  it a_i = 1 and the term is absent.
* Every KL is ``KLDivLoss(reduce=False)`` summed over the classes and the batch, times 1 / B
  (batchmean), with the exact (unguarded) log of the target.
* SGD 0.1, momentum 0.9, wd 2e-4, batch 128, 200 epochs; the decay helper is handed the
  initial rate each time, so the second decay (0-indexed epoch 150) sets 0.01 again: ARD's
  bug (``ard_released``; ``--schedule ard_paper`` decays at 100 and 150 as intended).

IAD-I (``iad_i``; robust teacher only; tau = 1, alpha = 1, begin = 60 of 200):
  L = alpha tau^2 (1/B) sum_i KL_i(softmax_tau(f_T(x)) || softmax_tau(f_S(x')))
      + alpha (1/B) sum_i (1 - a_i) KL_i(softmax(f_S(x)) || softmax(f_S(x')))   [after begin]
      + (1 - alpha) CE(f_S(x), y)
  The teacher term uses the teacher's CLEAN output and is NOT weighted by a_i (only the
  introspection term carries the trust weights); with alpha = 1 the CE has weight 0 but is
  still forwarded. Train-mode student forwards after the attack, in the released order:
  f_S(x') (the loss), f_S(x') again (computed, detached, never used), f_S(x) (introspection,
  after begin), f_S(x) again (the CE). Teacher: f_T(x) before the attack, f_T(x') after.

IAD-II (``iad_ii``; robust (AT) teacher f_Ta and clean (ST) teacher f_Tn; tau = 1,
alpha1 = 0.5, alpha2 = 0.25, begin = 0: introspection from the first epoch):
  L = (1 - alpha1 - alpha2) CE(f_S(x'), y)
      + alpha1 tau^2 [ (1/B) sum_i a_i KL_i(softmax_tau(f_Ta(x')) || softmax_tau(f_S(x')))
                       + (1/B) sum_i (1 - a_i) KL_i(softmax(f_S(x)) || softmax(f_S(x'))) ]
      + alpha2 tau^2 (1/B) sum_i KL_i(softmax_tau(f_Tn(x')) || softmax_tau(f_S(x')))
  Both teachers see x'; here a_i DOES weight the robust teacher's term, and tau^2 also
  multiplies the (temperature-1) introspection term. Before begin: a_i = 1, no introspection.
  Train-mode student forwards after the attack: f_S(x'), then f_S(x) (after begin).

Quirks, each with its switch (defaults = the release):
* ``attack_mode``: ``train`` (BN statistics move during the attack) or ``eval``.
* ``self_target_grad``: the introspection target softmax(f_S(x)) keeps its gradient
  (``--no-self-target-grad`` detaches it).
* ``introspection_start``: the code's ``--begin`` as a 1-indexed epoch after which the
  introspection runs (default: IAD-I 60 of 200 scaled to the run length, IAD-II 0).
* IAD-I ``bn_forwards``: ``released`` makes the unused f_S(x') forward and the second f_S(x)
  forward (BatchNorm statistics only; the loss is unchanged); ``once`` forwards x' and x once.
* IAD-I ``trust_teacher``: also weight the teacher term by a_i (as IAD-II's code does);
  off as released.
Deliberate differences, none changing the math: teachers run without a graph (they have no
trainable parameter in the code either), IAD-II reuses f_Ta(x') for the trust weights (the
code forwards it twice in eval mode), and the weights stay on the device. Everything is per
sample, so under torchrun the averaged gradient is the global batch's with no all-reduce of
the method's own. Versions: IAD-I as of the repository's ``2de5a3f9`` (earlier versions have
the same loss and one train-mode forward fewer), IAD-II as of ``832e401c`` (the first version
declares ``--beta`` twice and cannot start; it had ``--begin 40``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..api import Method, kl_per_sample, milestone, option, register_method
from .ard import ATTACK_MODE_HELP, StudentCEAttack

RELEASED_EPOCHS = 200
BETA_HELP = "exponent of the teacher's probability of the true label on x' (the trust weight a_i)"
SELF_TARGET_HELP = ("the introspection target softmax(f_S(x)) keeps its gradient (released); "
                    "--no-self-target-grad detaches it")


def scaled_begin(begin_of_200: int, epochs: int) -> int:
    """The code's ``--begin`` (a 0-indexed epoch of 200; the introspection runs from it on)
    as the 1-indexed epoch after which it runs in an ``epochs``-long run: 0 stays 0 (every
    epoch), any other value scales with the run as every milestone (``milestone``)."""
    return 0 if begin_of_200 <= 0 else milestone(begin_of_200 * 300 / RELEASED_EPOCHS, epochs)


class IntrospectiveDistillation(StudentCEAttack, Method):
    """What IAD-I and IAD-II share: the attack, the trust weights and the warm-up."""

    released_begin: ClassVar[int] = 0        # the script's --begin (0-indexed epoch of 200)
    train_defaults = {"epochs": 200, "batch_size": 128, "lr": 0.1, "momentum": 0.9,
                      "weight_decay": 2e-4, "schedule": "ard_released"}

    def __init__(self, student, teachers, ctx, options=None):
        super().__init__(student, teachers, ctx, options)
        start = self.opts.introspection_start
        self.introspection_after = (start if start is not None
                                    else scaled_begin(self.released_begin, ctx.epochs))
        self.introspecting = self.introspection_after < 1     # until the first begin_epoch

    def begin_epoch(self, epoch: int) -> None:
        # Idempotent (a resume calls it again); the code's 0-indexed epoch >= begin.
        self.introspecting = epoch > self.introspection_after

    def _trust(self, z_guide: Tensor, y: Tensor) -> Tensor:
        """a_i = softmax(f_T(x'))_{i, y_i} ^ beta, without gradient (float32, as the code's)."""
        p = F.softmax(z_guide.detach(), dim=1)
        return p.gather(1, y.unsqueeze(1)).squeeze(1).pow(self.opts.beta)

    def _introspection(self, z_sa: Tensor, z_s: Tensor) -> Tensor:
        """KL_i(softmax(f_S(x)) || softmax(f_S(x'))) per sample, temperature 1."""
        target = F.softmax(z_s, dim=1)
        if not self.opts.self_target_grad:
            target = target.detach()
        return kl_per_sample(F.log_softmax(z_sa, dim=1), target)


@register_method
class IADI(IntrospectiveDistillation):
    """IAD-I: ARD's loss (teacher on clean x) plus the trust-weighted introspection term."""
    name = "iad_i"
    label = "IAD-I"
    description = ("ARD-style distillation (temperature 1) plus introspection: the student's own "
                   "clean prediction, weighted by 1 - the teacher's trust on x'")
    paper = "Reliable Adversarial Distillation with Unreliable Teachers (ICLR 2022)"
    teachers = ("robust_teacher",)
    released_begin = 60

    @dataclass
    class Options:
        temperature: float = option(1.0, "distillation temperature tau of the teacher term")
        kl_weight: float = option(1.0, "the code's alpha: weight of the KL terms; 1 - it weighs "
                                  "CE(f_S(x), y)")
        beta: float = option(0.1, BETA_HELP)
        introspection_start: int | None = option(
            None, "introspection after this epoch (default: the code's --begin 60 of 200, "
                  "scaled to the run length)")
        attack_mode: str = option("train", ATTACK_MODE_HELP, ("train", "eval"))
        self_target_grad: bool = option(True, SELF_TARGET_HELP)
        bn_forwards: str = option("released", "train-mode student forwards: released = also the "
                                  "unused f_S(x') and a second f_S(x) (BatchNorm statistics "
                                  "only); once = x' and x once each", ("released", "once"))
        trust_teacher: bool = option(False, "also weight the teacher term by the trust a_i (as "
                                     "IAD-II's code); off as released")

    def forward(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        o = self.opts
        with torch.no_grad():
            z_t = self.robust_teacher(x)                     # teacher_outputs: the CLEAN x
        x_adv = self._adversarial(x, y)
        z_sa = self.student(x_adv)                           # outputs
        if o.bn_forwards == "released":
            with torch.no_grad():
                self.student(x_adv)                          # basicop: never used
        with torch.no_grad():
            z_g = self.robust_teacher(x_adv)                 # guide
        trust = self._trust(z_g, y)
        n, t, a = y.numel(), o.temperature, o.kl_weight
        kl_t = kl_per_sample(F.log_softmax(z_sa / t, dim=1), F.softmax(z_t / t, dim=1))
        if self.introspecting and o.trust_teacher:
            kl_t = kl_t.mul(trust)
        sum_t = torch.sum(kl_t)
        loss = a * t * t * (1 / n) * sum_t
        sum_self = torch.zeros_like(sum_t)
        z_s = None
        if self.introspecting:
            z_s = self.student(x)
            sum_self = torch.sum(self._introspection(z_sa, z_s).mul(1 - trust))
            loss = loss + a * (1 / n) * sum_self
        if z_s is None or o.bn_forwards == "released":
            z_s = self.student(x)                            # the CE's own forward
        loss_ce = F.cross_entropy(z_s, y)
        loss = loss + (1.0 - a) * loss_ce
        return {"loss": loss, "loss_kl": sum_t.detach() / n, "loss_self": sum_self.detach() / n,
                "loss_nat": loss_ce.detach(), "trust": trust.mean()}


@register_method
class IADII(IntrospectiveDistillation):
    """IAD-II: AKD^2 (CE + robust and clean teachers on x') with trust-weighted robust term."""
    name = "iad_ii"
    label = "IAD-II"
    description = ("AKD2-style two-teacher distillation on x' with the robust teacher's term "
                   "weighted by its trust and the rest given to the student's own clean prediction")
    paper = "Reliable Adversarial Distillation with Unreliable Teachers (ICLR 2022)"
    teachers = ("clean_teacher", "robust_teacher")
    released_begin = 0

    @dataclass
    class Options:
        temperature: float = option(1.0, "distillation temperature tau of the teacher terms")
        at_weight: float = option(0.5, "the code's alpha1: weight of the robust-teacher and "
                                  "introspection terms")
        st_weight: float = option(0.25, "the code's alpha2: weight of the clean-teacher term; "
                                  "CE(f_S(x'), y) gets 1 - alpha1 - alpha2")
        beta: float = option(0.1, BETA_HELP)
        introspection_start: int | None = option(
            None, "introspection after this epoch (default: the code's --begin 0, every epoch)")
        attack_mode: str = option("train", ATTACK_MODE_HELP, ("train", "eval"))
        self_target_grad: bool = option(True, SELF_TARGET_HELP)

    def forward(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        o = self.opts
        x_adv = self._adversarial(x, y)
        z_sa = self.student(x_adv)                           # outputs
        with torch.no_grad():
            z_ta = self.robust_teacher(x_adv)                # teacher_outputs, also the guide
            z_tn = self.clean_teacher(x_adv)                 # st_outputs
        trust = self._trust(z_ta, y)
        n, t, a1, a2 = y.numel(), o.temperature, o.at_weight, o.st_weight
        log_q = F.log_softmax(z_sa / t, dim=1)
        kl_a = kl_per_sample(log_q, F.softmax(z_ta / t, dim=1))
        kl_n = kl_per_sample(log_q, F.softmax(z_tn / t, dim=1))
        loss_ce = F.cross_entropy(z_sa, y)
        sum_n = torch.sum(kl_n)
        if self.introspecting:
            z_s = self.student(x)
            sum_a = torch.sum(kl_a.mul(trust))
            sum_self = torch.sum(self._introspection(z_sa, z_s).mul(1 - trust))
            robust = a1 * t * t * ((1 / n) * sum_a + (1 / n) * sum_self)
        else:
            sum_a = torch.sum(kl_a)
            sum_self = torch.zeros_like(sum_a)
            robust = a1 * t * t * (1 / n) * sum_a
        loss = (1 - a1 - a2) * loss_ce + robust + a2 * t * t * (1 / n) * sum_n
        return {"loss": loss, "loss_kl": sum_a.detach() / n, "loss_kl_clean": sum_n.detach() / n,
                "loss_self": sum_self.detach() / n, "loss_adv": loss_ce.detach(),
                "trust": trust.mean()}
