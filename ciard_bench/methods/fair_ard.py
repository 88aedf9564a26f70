"""Fair-ARD and the paper's own variants Fair-RSLAD, Fair-MTARD and Fair-IAD (Yue et al.,
"Revisiting Adversarial Robustness Distillation from the Perspective of Robust Fairness",
NeurIPS 2023): ARD, RSLAD, MTARD and IAD-I with class weights from per-class robustness.
Equations below in docs/methods.md notation.

Official code: github.com/NISP-official/Fair-ARD (``Fair-ARD.py``, ``Fair-RSLAD.py``,
``Fair-MTARD.py``, ``Fair-IAD.py``); docs/methods.md#fair-ard. The re-weighting they share
(kappa counts in the attack, weights after each epoch, per-sample weights w_{y_i}) is one
piece, ``fairness.ClassReweighting``; each class below composes it with its base method and
sets what its script does differently. Every script trains with SGD 0.1, momentum 0.9,
NESTEROV (the base methods' scripts do not; ``--no-nesterov``), wd 2e-4, batch 128.

Fair-ARD (``fair_ard``, ``Fair-ARD.py``):
* Everything of ARD (see ``ard.py``: CE-sum PGD with uniform start and the student in train
  mode, KL at T = 30 from the teacher's clean output, alpha = 1); kappa counted in train mode.
* w~_c = (1/(K_c + 1e-5))^beta, beta = 2 (``--beta``). Both the KL and the CE term of sample i
  are multiplied by w_{y_i}, then averaged over the batch (KL per sample / C as ``KLDivLoss()``
  on one row). 200 epochs, ARD's schedule bug (``ard_released``).

Fair-RSLAD (``fair_rslad``, ``Fair-RSLAD.py``):
* Everything of RSLAD (``rslad.py``: KL-sum PGD towards the teacher's clean soft label,
  Gaussian start, eval mode; 5/6 KLe(x') + 1/6 KLe(x), temperature 1); kappa counted in EVAL
  mode (the attack's). Both KLe terms weighted per sample: mean over B x C of
  w_{y_i} p (log(p + 1e-5) - log q). 300 epochs, ``multistep``.
* Quirk: its weight function has NO guard, w~_c = (1/K_c)^beta (``kappa_eps`` = 0; ``--kappa-eps
  1e-5`` is the other scripts' guard). A class that no iterate of the epoch got right would
  make the script's weight of that class NaN (1/0, then inf x 0), and the loss NaN: for such a
  class only, K_c = 1e-5 is used (the weights the other scripts give).

Fair-MTARD (``fair_mtard``, ``Fair-MTARD.py``):
* MTARD's attack (CE mean, Gaussian start, eval mode; kappa in eval mode), forwards and
  adaptive loss weights (eta = 0.025, beta = 1, decayed with the LR), 300 epochs,
  ``multistep``. Both KLe terms weighted per sample as Fair-RSLAD's; the adaptive weights
  (and their L0, the first step's) see the class-weighted losses.
* Quirk: the natural term's target is the ROBUST teacher's output on x' (the clean teacher is
  loaded and forwarded but never used): L_nat = KLe(softmax(f_Ta(x')), f_S(x)).
  ``--nat-teacher robust`` (default) or ``clean`` (MTARD's softmax(f_Tn(x))).

Fair-IAD (``fair_iad``, ``Fair-IAD.py``; on IAD-I: robust teacher, trust exponent 0.1 = the
script's ``--beta_iad``, introspection after ``--begin`` 60 of 200, tau = 1, alpha = 1):
* IAD-I's attack (CE-sum, uniform start, train mode; kappa in train mode) and trust weights;
  200 epochs, ``ard_released``. Every term is weighted per sample, each summed over the batch
  and times 1/B:
  L = alpha tau^2 (1/B) sum_i w_i KL_i(softmax_tau(f_T(x)) || softmax_tau(f_S(x')))
      + alpha (1/B) sum_i w_i (1 - a_i) KL_i(softmax(f_S(x)) || softmax(f_S(x')))   [after begin]
      + (1 - alpha) (1/B) sum_i w_i CE(f_S(x'_i), y_i)                               [after begin]
  Before begin the loss is the teacher term alone.
* Differences from IAD-I's script, each a switch: the CE is on f_S(x') (``--ce-input
  adversarial``; ``clean`` = IAD-I's f_S(x)); no CE before begin (``--warmup-ce`` = IAD-I's);
  train-mode forwards f_S(x'), f_S(x) (the introspection target, every epoch), then an unused
  f_S(x') (``--bn-forwards released``; ``once`` drops the unused one).
The three variant scripts are CIFAR-10 only (Fair-RSLAD.py hard-codes 10 classes): on 100
classes the variants keep their base method's CIFAR-100 switches and defaults (``c100_scale``,
``student_log``), which no released Fair-* script confirms.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..api import kl_per_sample, option, register_method
from .ard import ARD
from .fairness import ClassReweighting, ReweightingOptions
from .iad import IADI
from .mtard import MTARD
from .rslad import RSLAD

FAIR_PAPER = ("Revisiting Adversarial Robustness Distillation from the Perspective of Robust "
              "Fairness (NeurIPS 2023)")


@register_method
class FairARD(ClassReweighting, ARD):
    name = "fair_ard"
    label = "Fair-ARD"
    description = "ARD with class weights from per-class robustness (robust fairness)"
    paper = FAIR_PAPER
    train_defaults = {**ARD.train_defaults, "nesterov": True}   # the released script's SGD

    @dataclass
    class Options(ARD.Options):
        beta: float = option(2.0, "exponent of the inverse class robustness")
        weight_min: float = option(5 / 6, "lower clamp of the class weights")
        weight_max: float = option(5 / 2, "upper clamp of the class weights")

    def _weight_settings(self) -> tuple[float, float, float, float]:
        o = self.opts
        return o.beta, o.weight_min, o.weight_max, 1e-5


@register_method
class FairRSLAD(ClassReweighting, RSLAD):
    name = "fair_rslad"
    label = "Fair-RSLAD"
    description = "RSLAD with class weights from per-class robustness (robust fairness)"
    paper = FAIR_PAPER
    train_defaults = {**RSLAD.train_defaults, "nesterov": True}

    @dataclass
    class Options(ReweightingOptions, RSLAD.Options):
        kappa_eps: float = option(0.0, "guard added to the class robustness K_c before 1/K_c "
                                  "(Fair-RSLAD.py: none, NaN weights if a class has K_c = 0)")


@register_method
class FairMTARD(ClassReweighting, MTARD):
    name = "fair_mtard"
    label = "Fair-MTARD"
    description = "MTARD with class weights from per-class robustness (robust fairness)"
    paper = FAIR_PAPER
    train_defaults = {**MTARD.train_defaults, "nesterov": True}

    @dataclass
    class Options(ReweightingOptions, MTARD.Options):
        nat_teacher: str = option("robust", "target of the natural term: robust = the robust "
                                  "teacher on x' (Fair-MTARD.py), clean = the clean teacher on x "
                                  "(MTARD)", ("robust", "clean"))

    def _teacher_probs(self, z_ta: Tensor, z_n: Tensor) -> tuple[Tensor, Tensor]:
        if self.opts.nat_teacher == "clean":
            return super()._teacher_probs(z_ta, z_n)
        p_a = F.softmax(z_ta, dim=1)
        return p_a, p_a


@register_method
class FairIAD(ClassReweighting, IADI):
    name = "fair_iad"
    label = "Fair-IAD"
    description = "IAD-I with class weights from per-class robustness (robust fairness)"
    paper = FAIR_PAPER
    train_defaults = {**IADI.train_defaults, "nesterov": True}

    @dataclass
    class Options(ReweightingOptions, IADI.Options):
        bn_forwards: str = option("released", "train-mode student forwards: released = f_S(x'), "
                                  "f_S(x), then an unused f_S(x') (BatchNorm statistics only); "
                                  "once = without the unused one", ("released", "once"))
        ce_input: str = option("adversarial", "input of the (1 - alpha)-weighted CE: adversarial "
                               "= f_S(x') (Fair-IAD.py), clean = f_S(x) (IAD-I)",
                               ("adversarial", "clean"))
        warmup_ce: bool = option(False, "keep the CE term before the introspection starts (IAD-I); "
                                 "off as Fair-IAD.py (the teacher term alone)")

    def forward(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        o = self.opts
        with torch.no_grad():
            z_t = self.robust_teacher(x)                     # teacher_outputs: the CLEAN x
        x_adv = self._adversarial(x, y)
        z_sa = self.student(x_adv)                           # outputs
        z_s = self.student(x)                                # basic_net_outputs
        if o.bn_forwards == "released":
            with torch.no_grad():
                self.student(x_adv)                          # basicop: never used
        with torch.no_grad():
            z_g = self.robust_teacher(x_adv)                 # guide
        trust = self._trust(z_g, y)
        w = self._sample_weights(y)
        n, t, a = y.numel(), o.temperature, o.kl_weight
        kl_t = kl_per_sample(F.log_softmax(z_sa / t, dim=1), F.softmax(z_t / t, dim=1))
        if self.introspecting and o.trust_teacher:
            kl_t = kl_t.mul(trust)
        sum_t = torch.sum(kl_t * w)
        loss = a * t * t * (1 / n) * sum_t
        ce = F.cross_entropy(z_sa if o.ce_input == "adversarial" else z_s, y, reduction="none")
        sum_ce = torch.sum(ce * w)
        sum_self = torch.zeros_like(sum_t)
        if self.introspecting:
            sum_self = torch.sum(self._introspection(z_sa, z_s).mul(1 - trust) * w)
            loss = loss + a * (1 / n) * sum_self
        if self.introspecting or o.warmup_ce:
            loss = loss + (1.0 - a) * (1 / n) * sum_ce
        return {"loss": loss, "loss_kl": sum_t.detach() / n, "loss_self": sum_self.detach() / n,
                "loss_ce": sum_ce.detach() / n, "trust": trust.mean()}
