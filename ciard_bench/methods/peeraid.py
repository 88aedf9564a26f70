"""PeerAiD: adversarial distillation from a peer trained alongside the student (Jung, Jang,
Song, Lee, "PeerAiD: Improving Adversarial Distillation from a Specialized Peer Tutor",
CVPR 2024); equations below in docs/methods.md notation, P the peer, S the student.

Official code: github.com/jaewonalive/PeerAiD (``main.py::train_kd``, the attack
``attack_function.py::LinfPeerAttack``, the weight average ``utils/SWA.py::moving_average`` and
``bn_update``, the commands in ``training_scripts/*.sh`` and the README, the schedule in
``configs/*.json``); docs/methods.md#peeraid.

No pretrained teacher: the peer has the student's architecture and its own random
initialisation (the scripts' ``--p_type`` equals ``--s_type``), and is trained from scratch
on the STUDENT's adversarial examples, every step, beside the student. One step:

* P(x): the peer in eval mode on the clean batch, without gradient (the attack's target).
* Inner: maximise sum_{i,k} KL(softmax(P(x)) || softmax(S(x'))) (summed over the batch and
  the classes, exact log) with the student in EVAL mode; Gaussian start x + 0.001 N, not
  clamped; K sign steps, the eps ball then [0, 1] (8/255, 2/255, 10 steps).
* Train-mode forwards, in the released order: P(x'), S(x') (the peer's target), S(x')
  again (the student's loss), S(x).
* Peer:    L_P = g1 CE(P(x'), y) + g2 Tp^2 KLm(softmax(S(x') / Tp) || softmax(P(x') / Tp))
* Student: L_S = l1 CE(S(x'), y) + l2 T^2 KLm(softmax(P(x') / T) || softmax(S(x') / T))
                 + l3 T^2 KLm(softmax(S(x) / T) || softmax(S(x') / T))
  KLm is ``nn.KLDivLoss()``'s legacy mean: the exact KL summed and divided by B x C. The
  student's loss sees P(x') detached. The code back-propagates L_P + L_S once and steps both
  optimisers, so the peer's gradient is dL_P/dP, and the student's is dL_S/dS PLUS dL_P/dS
  through L_P's target softmax(S(x') / Tp), which is not detached. Here: ``"loss"`` (the
  student's) is L_S + that L_P term with P(x') detached, ``"peer_loss"`` is L_P with S(x')
  detached, trained by the engine's :class:`TeacherTraining` after the student's step: the
  same two gradients, from the same forward.
* Scripts (CIFAR-10 / CIFAR-100): T = 5, l1 = 0, l2 = l3 = 1, g1 = 1, g2 = 0.1 / 1, Tp = 1.
  Both optimisers SGD 0.1, momentum 0.9, weight decay 2e-4; 300 epochs, batch 128; both rates
  divided by 10 from the 0-indexed epochs 214, 259, 284 (1-indexed 215, 260, 285;
  ``peeraid_released``).
* SWA student (``--swa_s``, in every script; ``main.py`` evaluates it each epoch and runs
  AutoAttack on its best checkpoint as well as on the best student's): after each epoch from
  the student's first rate decay on (the 0-indexed ``epoch >= 214``: after epochs 215..300),
  W_swa <- W_swa (1 - 1/(n+1)) + W_S / (n+1), n the number of averages so far (the first one
  copies W_S), parameters only; then its BatchNorm statistics are recomputed by a pass over
  the training data (``bn_update``), which the engine runs (``Method.batch_norm_refresh``).
  The engine evaluates and saves the SWA student (``Method.evaluated_student``) from its first
  average on, the student before.

Quirks, each with its switch (defaults = the release):
* ``peer_target_grad``: L_P's target softmax(S(x') / Tp) keeps its gradient, so the peer's
  loss also trains the student; ``--no-peer-target-grad`` detaches it.
* ``self_target_grad``: the student's own clean target softmax(S(x) / T) keeps its gradient.
* ``bn_forwards``: ``released`` forwards S(x') twice in train mode (BatchNorm statistics move
  twice; the loss and gradient are the same), ``once`` once.
* ``kl_reduction``: ``mean`` divides every KL by B x C (``KLDivLoss()``'s legacy default),
  ``batchmean`` by B.
* ``peer_kd_weight`` (g2): 0.1, or 1 on 100-class data (the CIFAR-100 scripts).
* ``swa_start_epoch`` (214 of 300, scaled), ``swa_every`` (1: every epoch), ``swa_bn``
  (``recompute``: the pass over the training data; ``average``: the BatchNorm statistics
  averaged like the weights, no pass), ``--no-swa``, ``evaluated`` (``swa`` or ``student``).
Deliberate differences: the run keeps one best checkpoint, chosen by the engine's
(clean + PGD_TRADES)/2 over the evaluated model of each epoch (the code keeps a best student
and a best SWA student, each by PGD-10 accuracy); the SWA pass draws its own shuffled,
augmented pass of the data (the code re-iterates its training loader). Under torchrun every
term is a batch mean and nothing of the method's own is reduced; the peer's gradients are
averaged by the engine, and the SWA pass keeps rank 0's statistics. The peer and the SWA
student are copies of the student's modules, so ``--sync-bn`` reaches them too.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..api import (Method, TeacherTraining, UserError, block_mean, create_model, eval_mode, kl_mean,
                   kl_sum, milestone, option, pgd, register_method)

RELEASED_EPOCHS = 300
RATE_DECAYS = (214, 259, 284)    # the configs' lr_decay_epochs (0-indexed): / 10 from each on
SWA_START = 214                  # --swa_s_start = lr_decay_epochs_student[0]: after epoch 214


def fresh_copy(student: nn.Module) -> nn.Module:
    """A model of the student's architecture with new random weights: a copy of the student's
    modules (any conversion the engine made, e.g. ``--sync-bn``, included) holding the weights
    of a newly built model of its registered architecture (``create_model`` records it in
    ``ciard_arch``); a student built otherwise gets every layer's ``reset_parameters()``."""
    peer = copy.deepcopy(student)
    arch = getattr(student, "ciard_arch", None)
    if arch is not None:
        fresh = create_model(arch["name"], num_classes=arch["num_classes"], **arch["kwargs"])
        peer.load_state_dict(fresh.state_dict())
    else:
        for module in peer.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    return peer


@register_method
class PeerAiD(Method):
    name = "peeraid"
    label = "PeerAiD"
    description = ("online distillation from a peer of the student's architecture, trained from "
                   "scratch on the student's adversarial examples; the student's SWA average is evaluated")
    paper = "PeerAiD: Improving Adversarial Distillation from a Specialized Peer Tutor (CVPR 2024)"
    teachers = ()
    train_defaults = {"epochs": 300, "batch_size": 128, "lr": 0.1, "momentum": 0.9,
                      "weight_decay": 2e-4, "schedule": "peeraid_released"}

    @dataclass
    class Options:
        temperature: float = option(5.0, "the code's --temperature T of the student's two KL terms")
        ce_weight: float = option(0.0, "the code's lamb1: weight of CE(S(x'), y) (scripts: 0)")
        peer_weight: float = option(1.0, "the code's lamb2: weight of T^2 KL(P(x') || S(x'))")
        self_weight: float = option(1.0, "the code's lamb3: weight of T^2 KL(S(x) || S(x'))")
        peer_ce_weight: float = option(1.0, "the code's gamma1: weight of the peer's CE(P(x'), y)")
        peer_kd_weight: float | None = option(
            None, "the code's gamma2: weight of the peer's Tp^2 KL(S(x') || P(x')) (default: "
                  "0.1, or 1 on 100-class data, as the CIFAR-10 and CIFAR-100 scripts)")
        peer_temperature: float = option(1.0, "the code's --re_kd_temperature Tp of the peer's KL term")
        peer_lr: float = option(0.1, "the peer's base learning rate (its SGD: /10 at the "
                                "student's milestones, momentum and weight decay below)")
        peer_momentum: float = option(0.9, "the peer's SGD momentum")
        peer_weight_decay: float = option(2e-4, "the peer's SGD weight decay")
        kl_reduction: str = option("mean", "every KL term: mean = summed / (B C) (released "
                                   "KLDivLoss()), batchmean = summed / B", ("mean", "batchmean"))
        peer_target_grad: bool = option(True, "the peer's target softmax(S(x')/Tp) keeps its "
                                        "gradient, so the peer's loss trains the student too "
                                        "(released); --no-peer-target-grad detaches it")
        self_target_grad: bool = option(True, "the student's clean target softmax(S(x)/T) keeps its "
                                        "gradient (released); --no-self-target-grad detaches it")
        bn_forwards: str = option("released", "train-mode student forwards: released = S(x') twice "
                                  "(the peer's target, the student's loss: BatchNorm statistics "
                                  "only), once = once", ("released", "once"))
        swa: bool = option(True, "keep the SWA average of the student and evaluate it (the "
                           "scripts' --swa_s); --no-swa evaluates the student")
        swa_start_epoch: int | None = option(
            None, "average after each epoch after this one (default: the first rate decay, "
                  "214 of 300, scaled to the run length)")
        swa_every: int = option(1, "average every this many epochs from the start (released: 1)")
        swa_bn: str = option("recompute", "BatchNorm statistics of the SWA student: recompute = "
                             "a pass over the training data after each average (released "
                             "bn_update); average = averaged like the weights, no pass",
                             ("recompute", "average"))
        evaluated: str = option("swa", "the model evaluated and saved: swa (once averaging has "
                                "begun; the student before) or student", ("swa", "student"))

    def __init__(self, student, teachers, ctx, options=None):
        super().__init__(student, teachers, ctx, options)
        o = self.opts
        if o.swa_every < 1:
            raise UserError(f"swa_every {o.swa_every} is not valid for method 'peeraid'; "
                            "accepted: an integer >= 1")
        self.peer = fresh_copy(student)              # trained (teacher_trainings), checkpointed
        self.swa_after = (o.swa_start_epoch if o.swa_start_epoch is not None
                          else milestone(SWA_START, ctx.epochs))
        if o.swa:
            self.swa_student = copy.deepcopy(student).requires_grad_(False).eval()
        self.register_buffer("swa_count", torch.zeros((), dtype=torch.long))   # the code's swa_n
        self.gamma2 = (o.peer_kd_weight if o.peer_kd_weight is not None
                       else (1.0 if ctx.num_classes == 100 else 0.1))

    # -- the peer's optimiser -----------------------------------------------------------------
    def teacher_trainings(self) -> list[TeacherTraining]:
        base, epochs = self.opts.peer_lr, self.ctx.epochs

        def released(epoch: int, length: int) -> float:
            rate = base
            for m in RATE_DECAYS:                # adjust_learning_rate: lr /= 10 per milestone
                if epoch > round(m / RELEASED_EPOCHS * length):
                    rate /= 10
            return rate

        def lr_at(epoch: int) -> float:
            if epochs >= RELEASED_EPOCHS:
                return released(epoch, epochs)
            # a shorter run: the mean of the released epochs it stands for, as the student's
            return block_mean(lambda j: released(j, RELEASED_EPOCHS), epoch, epochs, RELEASED_EPOCHS)

        o = self.opts
        return [TeacherTraining("peer", "peer_loss", lr_at, o.peer_momentum, o.peer_weight_decay)]

    # -- the step --------------------------------------------------------------------------------
    def _kl(self, log_q: Tensor, p: Tensor) -> Tensor:
        if self.opts.kl_reduction == "mean":
            return kl_mean(log_q, p)
        return F.kl_div(log_q, p, reduction="batchmean")

    def _adversarial(self, x: Tensor, y: Tensor, z_peer: Tensor) -> Tensor:
        """LinfPeerAttack: the student's x' away from the peer's clean prediction."""
        student, target = self.student, F.softmax(z_peer, dim=1)

        def loss_fn(xa: Tensor) -> Tensor:
            return kl_sum(F.log_softmax(student(xa), dim=1), target)

        with eval_mode(student):
            return pgd(loss_fn, x, eps=self.ctx.eps, alpha=self.ctx.alpha, steps=self.ctx.steps,
                       start="gauss", shard=self.ctx.dist)

    def forward(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        o, peer, student = self.opts, self.peer, self.student
        peer.eval()
        with torch.no_grad():
            z_pc = peer(x)                                   # peer_logits
        peer.train()
        x_adv = self._adversarial(x, y, z_pc)
        z_pa = peer(x_adv)                                   # adv_outputs
        z_st = student(x_adv)                                # student_logit_target
        z_sa = student(x_adv) if o.bn_forwards == "released" else z_st   # student_outputs
        z_s = student(x)                                     # logit_nat

        tp, g1, g2 = o.peer_temperature, o.peer_ce_weight, self.gamma2
        peer_ce = F.cross_entropy(z_pa, y)
        peer_kd = self._kl(F.log_softmax(z_pa / tp, dim=1), F.softmax(z_st.detach() / tp, dim=1))
        peer_loss = peer_ce * g1 + peer_kd * g2 * tp * tp    # the code's order of products

        t = o.temperature
        log_q = F.log_softmax(z_sa / t, dim=1)
        own = F.softmax(z_s / t, dim=1)
        if not o.self_target_grad:
            own = own.detach()
        ce = F.cross_entropy(z_sa, y)
        kd_peer = self._kl(log_q, F.softmax(z_pa.detach() / t, dim=1))
        kd_self = self._kl(log_q, own)
        loss_student = (ce * o.ce_weight + kd_peer * (o.peer_weight * t * t)
                        + kd_self * (o.self_weight * t * t))
        loss = loss_student
        if o.peer_target_grad:          # dL_P/dS: L_P's term through its target, P(x') fixed
            through = self._kl(F.log_softmax(z_pa.detach() / tp, dim=1), F.softmax(z_st / tp, dim=1))
            loss = loss + through * g2 * tp * tp
        return {"loss": loss, "loss_student": loss_student.detach(), "loss_ce": ce.detach(),
                "loss_kd_peer": kd_peer.detach(), "loss_kd_self": kd_self.detach(),
                "peer_loss": peer_loss, "peer_ce": peer_ce.detach(), "peer_kd": peer_kd.detach(),
                "peer_adv_acc": (z_pa.detach().argmax(dim=1) == y).float().mean()}

    # -- the SWA student -------------------------------------------------------------------------
    def averages_after(self, epoch: int) -> bool:
        """Whether the SWA student takes the student's weights after ``epoch``."""
        o = self.opts
        return o.swa and epoch > self.swa_after and (epoch - self.swa_after - 1) % o.swa_every == 0

    @torch.no_grad()
    def end_epoch(self, epoch: int) -> None:
        if not self.averages_after(epoch):
            return
        w = 1.0 / (int(self.swa_count) + 1)          # moving_average(swa, student, 1 / (n + 1))
        for avg, p in zip(self.swa_student.parameters(), self.student.parameters()):
            avg.mul_(1.0 - w)
            avg.add_(p * w)
        if self.opts.swa_bn == "average":
            for avg, b in zip(self.swa_student.buffers(), self.student.buffers()):
                if avg.is_floating_point():
                    avg.mul_(1.0 - w)
                    avg.add_(b * w)
                else:
                    avg.copy_(b)                     # num_batches_tracked
        self.swa_count.add_(1)

    def batch_norm_refresh(self, epoch: int) -> list[nn.Module]:
        if self.opts.swa_bn == "recompute" and self.averages_after(epoch):
            return [self.swa_student]               # bn_update(train_loader, swa) after the average
        return []

    def evaluated_student(self) -> nn.Module:
        o = self.opts
        if o.swa and o.evaluated == "swa" and int(self.swa_count) > 0:
            return self.swa_student
        return self.student

    def state_summary(self) -> dict[str, Tensor]:
        return {"swa_count": self.swa_count}
