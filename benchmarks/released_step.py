"""A CIARD step with the per-step work structure of the authors' released training loop.

For speed comparisons only (``benchmarks/step.py --reference released``). Written from
the step of ``docs/methods.md#ciard`` and a profile of the released loop (``benchmarks/README.md``), not from
the authors' code. The math is that of :class:`ciard_bench.methods.ciard.CIARD` (the loss
values must agree; the losses are written out again here rather than imported, so the
agreement is an independent check), but the work is what the released loop does each step:

* the robust teacher also runs on the clean batch, and that output is never used;
* the robust teacher's parameters always require grad, so both of its forwards build a graph,
  before ITT starts too;
* the clean teacher runs on x under ``no_grad`` but on x' with autograd on (its parameters
  require grad): that graph is kept to the end of the step for nothing;
* temperatures, MTARD weights (computed every step, used only with ``mtard_adaptive``) and
  the push-loss scale are Python floats, so each step syncs with the device through
  ``.item()``; the push loss selects the rows with boolean indexing (one more sync).

Not the released behaviour, to keep the math equal to the project's step: the robust
teacher's BatchNorm mode follows the method's ``robust_teacher_bn`` option (released: train
mode always; the work is the same), and only ``inner = released`` is supported.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _kle(log_q: Tensor, p: Tensor) -> Tensor:
    return (p * (torch.log(p + 1e-5) - log_q)).mean()


def _sign(v: float) -> int:
    return (v > 0) - (v < 0)


def _order(v: float) -> int:
    v = abs(v)
    return math.floor(math.log10(v if v != 0 else 1e-7))


class ReleasedCIARDStep:
    """Callable like a method: ``step(x, y) -> dict`` of loss terms, on a CIARD method's
    models (give it a deep copy: it switches the teachers' ``requires_grad`` on)."""

    def __init__(self, method: nn.Module):
        if method.opts.inner != "released":
            raise ValueError("the released step attacks the student only (inner = released)")
        self.method = method
        self.student, self.clean, self.robust = method.student, method.clean_teacher, method.robust_teacher
        self.robust_teacher = self.robust   # the engine's train_step finds a trained teacher by role
        self.reset()

    def reset(self) -> None:
        """Take the adaptive state (temperatures, rates, weights) from the method's buffers."""
        m = self.method
        self.tau_a, self.tau_n = float(m.tau_a), float(m.tau_n)
        self.temp_rate, self.weight_rate = float(m.temp_rate), float(m.weight_rate)
        self.w_adv, self.w_nat = float(m.w_adv), float(m.w_nat)
        self.l0: tuple[float, float] | None = None

    def models(self) -> dict[str, nn.Module]:
        return {"student": self.student, "clean_teacher": self.clean, "robust_teacher": self.robust}

    def teacher_trainings(self) -> list:
        return self.method.teacher_trainings()

    def begin_epoch(self, epoch: int) -> None:
        self.method.begin_epoch(epoch)            # ITT state, robust-teacher mode, rate decay
        self.clean.requires_grad_(True)           # released: nothing is frozen
        self.robust.requires_grad_(True)
        if self.method.opts.rate_decay == "once":
            self.temp_rate, self.weight_rate = float(self.method.temp_rate), float(self.method.weight_rate)

    def _pgd(self, x: Tensor, y: Tensor) -> Tensor:
        ctx = self.method.ctx
        self.student.eval()
        x_adv = x.detach() + 0.001 * torch.randn_like(x)
        with torch.autocast(device_type=x.device.type, enabled=False), torch.enable_grad():
            for _ in range(ctx.steps):
                x_adv.requires_grad_(True)
                loss = F.cross_entropy(self.student(x_adv), y)
                grad = torch.autograd.grad(loss, [x_adv])[0]
                x_adv = x_adv.detach() + ctx.alpha * torch.sign(grad)
                x_adv = torch.min(torch.max(x_adv, x - ctx.eps), x + ctx.eps).clamp(0.0, 1.0)
        self.student.train()
        return x_adv.detach()

    def _mtard_weights(self, l_adv: float, l_nat: float) -> None:
        if self.l0 is None:
            self.l0 = (l_adv, l_nat)
        h_adv, h_nat = l_adv / self.l0[0], l_nat / self.l0[1]
        mean = (h_adv + h_nat) / 2
        r_adv, r_nat = h_adv / mean, h_nat / mean
        new_nat = max(0.0, self.w_nat - self.weight_rate * (self.w_nat - r_nat / (r_adv + r_nat)))
        new_adv = max(0.0, self.w_adv - self.weight_rate * (self.w_adv - r_adv / (r_adv + r_nat)))
        self.w_adv, self.w_nat = new_adv / (new_adv + new_nat), new_nat / (new_adv + new_nat)

    def __call__(self, x: Tensor, y: Tensor) -> dict:
        m, o = self.method, self.method.opts
        z_s = self.student(x)
        x_adv = self._pgd(x, y)
        z_sa = self.student(x_adv)
        ta_clean = self.robust(x)                 # released: computed every step, never used
        z_ta = self.robust(x_adv)
        with torch.no_grad():
            z_n = self.clean(x)
        z_na_graph = self.clean(x_adv)            # autograd on: its graph lives to the end of the step
        z_na = z_na_graph.detach()

        p_a = F.softmax(z_ta.detach() / self.tau_a, dim=1)
        p_n = F.softmax(z_n / self.tau_n, dim=1)
        l_adv = _kle(F.log_softmax(z_sa, dim=1), p_a)
        l_nat = _kle(F.log_softmax(z_s, dim=1), p_n)
        h_a = (p_a * torch.log(p_a + 1e-5)).mean().item()
        h_n = (p_n * torch.log(p_n + 1e-5)).mean().item()
        self.tau_a = min(max(self.tau_a - self.temp_rate * _sign(h_a / h_n - 1), o.temp_min), o.temp_max)
        self.tau_n = min(max(self.tau_n - self.temp_rate * _sign(h_n / h_a - 1), o.temp_min), o.temp_max)
        self._mtard_weights(l_adv.item(), l_nat.item())
        if o.loss_weights == "mtard_adaptive":
            loss = self.w_nat * l_nat + self.w_adv * l_adv
        else:
            loss = l_nat + l_adv
        out = {"loss_adv": l_adv, "loss_nat": l_nat}
        if o.push:
            wrong = z_na.argmax(dim=1) != y
            n_wrong = int(wrong.sum().item())
            l_push = torch.zeros((), device=x.device)
            if n_wrong:
                l_push = _kle(F.log_softmax(z_sa[wrong] / o.push_temperature, dim=1),
                              F.softmax(z_na[wrong], dim=1))
                if not math.isfinite(l_push.item()):
                    l_push = torch.zeros((), device=x.device)
            scale = 10.0 ** (min(_order(l_adv.item()), _order(l_nat.item())) - _order(l_push.item()))
            loss = loss - o.lambda_push * scale * l_push
            out.update(loss_push=l_push, push_scale=scale, push_fraction=n_wrong / len(y))
        if m.itt_active:
            out["robust_teacher_loss"] = F.cross_entropy(z_ta, y)
        if m.decay_every_batch:
            self.temp_rate *= 0.1
            self.weight_rate *= 0.1
        out["loss"] = loss
        out["_held"] = (ta_clean, z_na_graph)     # as the released loop: alive until the step ends
        return out
