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
    total, count = masked_kle_parts(log_q, p, mask)
    value = total / count.clamp(min=1)
    return torch.where((count > 0) & torch.isfinite(value), value, torch.zeros_like(value))


def masked_kle_parts(log_q: Tensor, p: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """The numerator and denominator of :func:`masked_kle`: the sum of :func:`kl_elements` over
    the masked rows, and |M| x C."""
    rows = mask.to(p.dtype).unsqueeze(1)
    return (kl_elements(log_q, p) * rows).sum(), rows.sum() * p.shape[1]


def masked_kle_share(total: Tensor, total_all: Tensor, count_all: Tensor,
                     processes: int) -> tuple[Tensor, Tensor]:
    """:func:`masked_kle` over the masked rows of ALL processes (torchrun), from this process's
    numerator ``total`` (with its graph) and the detached sums over processes ``total_all``,
    ``count_all``. Returns ``(share, value)``: ``value`` is the global masked KLe (0 when the
    global mask is empty or the value non-finite); ``share = processes * total / count_all``
    is this process's part of it, whose mean over the processes is ``value`` and whose
    gradient, averaged over the processes, is the gradient of ``value``."""
    value = total_all / count_all.clamp(min=1)
    ok = (count_all > 0) & torch.isfinite(value)
    share = processes * total / count_all.clamp(min=1)
    return (torch.where(ok, share, torch.zeros_like(share)),
            torch.where(ok, value, torch.zeros_like(value)))


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


# -- baselines (docs/methods.md): ARD/AdaAD/TRADES exact KL, SCORE, Fair-ARD, ABSLD ---------------

def kl_sum(log_q: Tensor, p: Tensor) -> Tensor:
    """Exact KL(p || q) summed over batch and classes (``KLDivLoss(reduction='sum')``).

    Gradient flows into ``p`` too (TRADES' clean distribution, AdaAD's teacher in the attack).
    """
    return F.kl_div(log_q, p, reduction="sum")


def kl_mean(log_q: Tensor, p: Tensor) -> Tensor:
    """Exact KL summed and divided by B x C: ``nn.KLDivLoss()`` with default arguments (ARD, AdaAD)."""
    return F.kl_div(log_q, p, reduction="sum") / log_q.numel()   # reduction="mean" warns (deprecated)


def kl_per_sample(log_q: Tensor, p: Tensor) -> Tensor:
    """Exact KL(p_i || q_i) per row (shape B)."""
    return F.kl_div(log_q, p, reduction="none").sum(dim=1)


def log_probs(logits: Tensor, exact: bool = True) -> Tensor:
    """``log_softmax`` (exact) or ``log(softmax)`` as RSLAD-C100 and ABSLD write it (-inf on underflow)."""
    return F.log_softmax(logits, dim=1) if exact else torch.log(F.softmax(logits, dim=1))


def lse_distance(p: Tensor, q: Tensor) -> Tensor:
    """SCORE's squared-L2 distance between probability rows: sum_k (p_k - q_k)^2 (shape B)."""
    return ((p - q) ** 2).sum(dim=1)


def lse_clip_bound(clip: float, num_classes: int) -> float:
    """SCORE's clip bound b: the LSE distance from a one-hot to the label-smoothed vector that keeps
    1 - clip on the label and spreads ``clip`` over the others, = clip^2 * C / (C - 1)."""
    return clip * clip * num_classes / (num_classes - 1)


def fair_class_weights(kappa: Tensor, beta: float, eps: float = 1e-5, lo: float = 5 / 6,
                       hi: float = 5 / 2) -> Tensor:
    """Fair-ARD class weights from per-class robustness K_c (mean PGD steps the class survived).

    w~_c = (1 / (K_c + eps))^beta;  w_c = clamp(C * w~_c / sum_c' w~_c', lo, hi).
    """
    raw = (1.0 / (kappa + eps)) ** beta
    return (raw * (kappa.numel() / raw.sum())).clamp(lo, hi)


def absld_temperatures(tau: Tensor, class_loss: Tensor, rate: float, lo: float = 0.5,
                       hi: float = 5.0) -> Tensor:
    """ABSLD's per-epoch class temperature step (returns the new temperatures).

    g_c = E_c - mean(E);  tau_c <- clamp(tau_c - rate * g_c / max_c' |g_c'|, lo, hi). Classes
    with a higher student loss get a lower (sharper) temperature. When every gap is zero the
    released code divides 0 by 0 (NaN); here the temperatures are left unchanged.
    """
    gap = class_loss - class_loss.mean()
    top = gap.abs().max()
    step = torch.where(top > 0, gap / top.clamp(min=torch.finfo(gap.dtype).tiny), torch.zeros_like(gap))
    return (tau - rate * step).clamp(lo, hi)
