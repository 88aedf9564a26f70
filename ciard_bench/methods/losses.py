"""Shared math of the distillation methods, as plain functions on tensors.

Every function here is checked in ``tests/test_losses.py`` against a hand computation.
None of them syncs with the host: adaptive state stays in tensors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

KL_EPS = 1e-5  # the released RSLAD/MTARD/CIARD code adds this inside log(p)


def kl_elements(log_q: Tensor, p: Tensor) -> Tensor:
    """Element-wise ``p * (log(p + 1e-5) - log_q)``: the helper of RSLAD/MTARD/CIARD."""
    return p * (torch.log(p + KL_EPS) - log_q)


def kle(log_q: Tensor, p: Tensor) -> Tensor:
    """KLe: mean over batch AND classes of :func:`kl_elements` (batch-mean KL / #classes)."""
    return kl_elements(log_q, p).mean()


def masked_kle(log_q: Tensor, p: Tensor, mask: Tensor) -> Tensor:
    """KLe over the rows selected by boolean ``mask`` (mean over |M| x C elements).

    Computed with a multiply, not boolean indexing, so it needs no host sync. An empty mask
    or a non-finite result gives 0.
    """
    rows = mask.to(p.dtype).unsqueeze(1)
    total = (kl_elements(log_q, p) * rows).sum()
    count = rows.sum() * p.shape[1]
    value = total / count.clamp(min=1)
    return torch.where((count > 0) & torch.isfinite(value), value, torch.zeros_like(value))


def neg_entropy(p: Tensor) -> Tensor:
    """``mean(p * log(p + 1e-5))`` over batch and classes (<= 0): B-MTARD's entropy value."""
    return (p * torch.log(p + KL_EPS)).mean()


@torch.no_grad()
def entropy_balance_(tau_a: Tensor, tau_n: Tensor, h_a: Tensor, h_n: Tensor, rate: Tensor,
                     lo: float = 1.0, hi: float = 10.0) -> None:
    """B-MTARD's entropy-based temperature balance, in place.

    ``tau_a -= rate * sign(H_a / H_n - 1)``, ``tau_n -= rate * sign(H_n / H_a - 1)``, both
    clipped to [lo, hi]; H are the (negative) values of :func:`neg_entropy`.
    """
    step_a = rate * torch.sign(h_a / h_n - 1)
    step_n = rate * torch.sign(h_n / h_a - 1)
    tau_a.sub_(step_a).clamp_(lo, hi)
    tau_n.sub_(step_n).clamp_(lo, hi)


@torch.no_grad()
def mtard_weights_(w_adv: Tensor, w_nat: Tensor, l_adv: Tensor, l_nat: Tensor,
                   l0_adv: Tensor, l0_nat: Tensor, rate: Tensor) -> None:
    """MTARD / B-MTARD adaptive loss weights, in place.

    ``l0_*`` hold the first step's losses (NaN until then; filled here on first call).
    r_i = (L_i / L0_i) / mean_j(L_j / L0_j); w_i <- w_i - rate * (w_i - r_i / (r_adv + r_nat));
    clip at 0 and renormalise so w_adv + w_nat = 1 (as the released CIARD/B-MTARD code).
    """
    l0_adv.copy_(torch.where(torch.isnan(l0_adv), l_adv, l0_adv))
    l0_nat.copy_(torch.where(torch.isnan(l0_nat), l_nat, l0_nat))
    lhat_adv, lhat_nat = l_adv / l0_adv, l_nat / l0_nat
    mean = (lhat_adv + lhat_nat) / 2
    r_adv, r_nat = lhat_adv / mean, lhat_nat / mean
    new_nat = w_nat - rate * (w_nat - r_nat / (r_adv + r_nat))
    new_adv = w_adv - rate * (w_adv - r_adv / (r_adv + r_nat))
    new_nat, new_adv = new_nat.clamp(min=0), new_adv.clamp(min=0)
    total = new_adv + new_nat
    w_adv.copy_(new_adv / total)
    w_nat.copy_(new_nat / total)


def magnitude_scale(l_adv: Tensor, l_nat: Tensor, l_push: Tensor) -> Tensor:
    """CIARD's push weight: 10 ** (min(floor log10 L_adv, floor log10 L_nat) - floor log10 L_push).

    On detached values; exact zeros are replaced by 1e-7 (as the released code).
    """
    def order(v: Tensor) -> Tensor:
        v = v.detach().double().abs()      # float64, as the released code's Python floats
        v = torch.where(v == 0, torch.full_like(v, 1e-7), v)
        return torch.floor(torch.log10(v))

    exponent = torch.minimum(order(l_adv), order(l_nat)) - order(l_push)
    return torch.pow(10.0, exponent).to(l_push.dtype)


def cross_entropy_sum(logits: Tensor, y: Tensor) -> Tensor:
    """CE summed over the batch (ARD's attack loss)."""
    return F.cross_entropy(logits, y, reduction="sum")
