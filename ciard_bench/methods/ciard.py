"""CIARD: Cyclic Iterative Adversarial Robustness Distillation (ICCV 2025).

Paper: "CIARD: Cyclic Iterative Adversarial Robustness Distillation", ICCV 2025 (Sec. 3.3
push loss, Sec. 3.4 iterative teacher training, Eq. 6 inner maximisation, Eq. 9 objective).
Released code: github.com/eminentgu/CIARD (``CIARD.py``, ``mtard_loss.py``).
The step, line by line, and every paper-vs-code switch: docs/methods.md#ciard.

Defaults reproduce the released code; each place where the paper differs is a switch:

* ``inner``: ``released`` attacks the student only (CE); ``paper`` (Eq. 6) maximises
  CE(S(x'), y) + CE(Tn(x'), y).
* ``push_temperature``: 5 (code) vs 4 (paper text).
* ``teacher_lr``: 1e-4 (code) vs 1e-5 (paper).
* ``loss_weights``: ``fixed`` (code: 1 and 1) or ``mtard_adaptive`` (MTARD's weights).
* ``robust_teacher_bn``: ``eval_when_frozen`` (default) or ``train_always`` (code: the
  robust teacher sits in train mode all run, so its BN statistics drift while "frozen").
* ``rate_decay``: ``released`` multiplies the temperature/weight rates by 0.1 on every
  batch of the milestone epochs (so they are ~0 from epoch 215 on), ``once`` per milestone.
* schedule (engine flag ``--schedule``): ``ciard_released`` vs ``cosine`` (paper).

Deliberate differences from the released code, none changing the math: the unused
robust-teacher forward on clean inputs is not computed, the clean teacher runs without a
graph (its two eval-mode forwards batched into one call), the robust teacher builds a graph
only while ITT trains it, and no value leaves the device during a step. Under torchrun the
temperatures (and adaptive weights) are updated from means over the global batch, and the
push term is that of the global batch: its mean over the push set of every process, scaled
by the magnitudes of the global losses (one all-reduce for all of it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..api import (RATE_MILESTONES, Method, TeacherTraining, block_mean, cos_exp_decay,
                   entropy_balance_, eval_mode, kle, magnitude_scale, masked_kle, masked_kle_parts,
                   masked_kle_share, milestone, mtard_weights_, neg_entropy, option, pgd,
                   register_method, scalar_state)

RELEASED_EPOCHS = 300
ITT_START = 50                      # of 300 epochs: ITT trains the robust teacher after it


@register_method
class CIARD(Method):
    name = "ciard"
    label = "CIARD"
    description = "dual-teacher distillation with a contrastive push loss and iterative robust-teacher training"
    paper = "Cyclic Iterative Adversarial Robustness Distillation (ICCV 2025)"
    teachers = ("clean_teacher", "robust_teacher")
    train_defaults = {"epochs": 300, "batch_size": 128, "lr": 0.1, "momentum": 0.9,
                      "weight_decay": 2e-4, "schedule": "ciard_released"}
    # push_scale multiplies a zero loss when the push set is empty: log it only over the steps
    # with a non-empty set; the epoch mean of push_active is the share of such steps
    log_weights = {"push_scale": "push_active"}

    @dataclass
    class Options:
        inner: str = option("released", "inner maximisation: released = CE of the student; "
                            "paper = CE of student + clean teacher (Eq. 6)", ("released", "paper"))
        push: bool = option(True, "contrastive push loss (--no-push: Table 7 ablation)")
        push_temperature: float = option(5.0, "student temperature in the push loss (code 5, paper 4)")
        lambda_push: float = option(1.0, "multiplier of the scaled push loss")
        itt: bool = option(True, "iterative training of the robust teacher (--no-itt: ablation)")
        itt_start_epoch: int | None = option(None, "ITT trains the robust teacher after this epoch "
                                      "(default: 50 of 300, scaled to the run length)")
        teacher_lr: float = option(1e-4, "ITT base learning rate (code 1e-4, paper 1e-5)")
        teacher_momentum: float = option(0.1, "ITT SGD momentum")
        teacher_weight_decay: float = option(2e-4, "ITT SGD weight decay")
        loss_weights: str = option("fixed", "g_nat, g_adv: fixed = 1 and 1 (code); "
                                   "mtard_adaptive = MTARD's adaptive weights", ("fixed", "mtard_adaptive"))
        weight_rate: float = option(0.025, "MTARD weight learning rate (mtard_adaptive only)")
        temp_rate: float = option(0.001, "rate of the entropy-balanced teacher temperatures")
        temp_min: float = option(1.0, "lower bound of the teacher temperatures")
        temp_max: float = option(10.0, "upper bound of the teacher temperatures")
        rate_decay: str = option("released", "x0.1 of the rates at epochs 215/260/285: released = "
                                 "on every batch of those epochs; once = once each", ("released", "once"))
        robust_teacher_bn: str = option("eval_when_frozen", "robust teacher mode: eval while frozen "
                                        "and train under ITT, or train_always (code)",
                                        ("eval_when_frozen", "train_always"))

    def __init__(self, student, teachers, ctx, options=None):
        super().__init__(student, teachers, ctx, options)
        o = self.opts
        self.itt_start = o.itt_start_epoch if o.itt_start_epoch is not None else milestone(ITT_START, ctx.epochs)
        # the start on the released 300-epoch scale, for the ITT rate of shorter runs
        self.itt_start_300 = (ITT_START if o.itt_start_epoch is None
                              else o.itt_start_epoch * RELEASED_EPOCHS / ctx.epochs)
        self.rate_epochs = sorted({milestone(m, ctx.epochs) for m in RATE_MILESTONES})
        for name, value in (("tau_a", 1.0), ("tau_n", 1.0), ("temp_rate", o.temp_rate),
                            ("weight_rate", o.weight_rate), ("w_adv", 0.5), ("w_nat", 0.5),
                            ("l0_adv", float("nan")), ("l0_nat", float("nan"))):
            self.register_buffer(name, scalar_state(value))   # float64: Python floats in the code
        self.itt_active = False
        self.decay_every_batch = False

    def begin_epoch(self, epoch: int) -> None:
        # Idempotent: called again when a run resumes in the middle of an epoch.
        self.itt_active = self.opts.itt and epoch > self.itt_start
        self.robust_teacher.train(self.itt_active or self.opts.robust_teacher_bn == "train_always")
        self.robust_teacher.requires_grad_(self.itt_active)
        self.decay_every_batch = self.opts.rate_decay == "released" and epoch in self.rate_epochs
        if self.opts.rate_decay == "once":
            passed = sum(epoch >= m for m in self.rate_epochs)
            self.temp_rate.fill_(self.opts.temp_rate * 0.1 ** passed)
            self.weight_rate.fill_(self.opts.weight_rate * 0.1 ** passed)

    def teacher_trainings(self) -> list[TeacherTraining]:
        if not self.opts.itt:
            return []
        start, end, base = self.itt_start, self.ctx.epochs, self.opts.teacher_lr

        def released(epoch: float, start: float, end: int) -> float:
            return 0.0 if epoch <= start else base * cos_exp_decay(epoch, start, end)

        if end >= RELEASED_EPOCHS:
            def lr_at(epoch: int) -> float:
                return 0.0 if epoch < start else base * cos_exp_decay(epoch, start, end)
        else:
            # A shorter run: each epoch gets the mean ITT rate of the released epochs it stands
            # for (as the engine's schedules), so no ITT epoch runs at rate 0 and ITT trains
            # over the same share of the run as epochs 51-300 of 300.
            start_300 = self.itt_start_300

            def lr_at(epoch: int) -> float:
                if epoch <= start:
                    return 0.0
                return block_mean(lambda j: released(j, start_300, RELEASED_EPOCHS), epoch, end,
                                  RELEASED_EPOCHS)

        return [TeacherTraining("robust_teacher", "robust_teacher_loss", lr_at,
                                self.opts.teacher_momentum, self.opts.teacher_weight_decay)]

    def _adversarial(self, x: Tensor, y: Tensor) -> Tensor:
        student, clean = self.student, self.clean_teacher
        if self.opts.inner == "paper":
            def loss_fn(xa: Tensor) -> Tensor:
                return F.cross_entropy(student(xa), y) + F.cross_entropy(clean(xa), y)
        else:
            def loss_fn(xa: Tensor) -> Tensor:
                return F.cross_entropy(student(xa), y)
        with eval_mode(student):
            return pgd(loss_fn, x, eps=self.ctx.eps, alpha=self.ctx.alpha, steps=self.ctx.steps,
                       start="gauss", shard=self.ctx.dist)

    def forward(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        o = self.opts
        z_s = self.student(x)                        # train-mode forwards: S(x), S(x'), Ta(x')
        x_adv = self._adversarial(x, y)
        z_sa = self.student(x_adv)
        with torch.no_grad():                        # Tn is eval and frozen: one batched call
            z_n, z_na = self.clean_teacher(torch.cat([x, x_adv])).chunk(2)
        with torch.set_grad_enabled(self.itt_active):
            z_ta = self.robust_teacher(x_adv)

        p_a = F.softmax(z_ta.detach() / self.tau_a, dim=1)
        p_n = F.softmax(z_n / self.tau_n, dim=1)
        l_adv = kle(F.log_softmax(z_sa, dim=1), p_a)
        l_nat = kle(F.log_softmax(z_s, dim=1), p_n)
        stats = [neg_entropy(p_a), neg_entropy(p_n)]          # what the temperatures need
        if o.loss_weights == "mtard_adaptive" or (o.push and self.ctx.dist.enabled):
            stats += [l_adv.detach(), l_nat.detach()]         # the weights, the push scale
        push_parts = ()
        if o.push:
            wrong = z_na.argmax(dim=1) != y          # the clean teacher errs on x'
            log_q, p_na = F.log_softmax(z_sa / o.push_temperature, dim=1), F.softmax(z_na, dim=1)
            if self.ctx.dist.enabled:                # the push set of the global batch
                push_parts = masked_kle_parts(log_q, p_na, wrong)
        # of the global batch, in one all-reduce (one process: the values themselves)
        h_a, h_n, *losses = self.global_means(stats, y.shape[0], sums=push_parts)
        entropy_balance_(self.tau_a, self.tau_n, h_a, h_n, self.temp_rate, o.temp_min, o.temp_max)
        if o.loss_weights == "mtard_adaptive":
            mtard_weights_(self.w_adv, self.w_nat, *losses[:2], self.l0_adv, self.l0_nat, self.weight_rate)
            # float64 weights cast to the loss dtype: Python float * float32 tensor in the code
            loss = (self.w_nat.to(l_nat.dtype, copy=True) * l_nat
                    + self.w_adv.to(l_adv.dtype, copy=True) * l_adv)
        else:
            loss = l_nat + l_adv
        out = {"loss_adv": l_adv, "loss_nat": l_nat}
        if o.push:
            if self.ctx.dist.enabled:                # global mean, global magnitude scale
                g_adv, g_nat, total_all, count_all = losses[-4:]
                push_term, l_push = masked_kle_share(push_parts[0], total_all, count_all,
                                                     self.ctx.dist.world_size)
                scale = magnitude_scale(g_adv, g_nat, l_push)
                active = (count_all > 0).float()
            else:
                l_push = push_term = masked_kle(log_q, p_na, wrong)
                scale = magnitude_scale(l_adv, l_nat, l_push)
                active = wrong.any().float()
            loss = loss - o.lambda_push * scale * push_term
            out.update(loss_push=l_push, push_scale=scale, push_fraction=wrong.float().mean(),
                       push_active=active)
        if self.itt_active:
            out["robust_teacher_loss"] = F.cross_entropy(z_ta, y)
        if self.decay_every_batch:                   # released quirk, see rate_decay
            self.temp_rate.mul_(0.1)
            self.weight_rate.mul_(0.1)
        out["loss"] = loss
        return out

    def state_summary(self) -> dict[str, Tensor]:
        return {"tau_adv": self.tau_a, "tau_nat": self.tau_n, "w_adv": self.w_adv,
                "w_nat": self.w_nat, "temp_rate": self.temp_rate}
