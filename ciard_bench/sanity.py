"""Sanity checks that run with every evaluation (Carlini et al. 2019; AutoAttack's checks).

Each check returns a dict ``{"name", "passed", "message", "values"}`` (``passed`` is
``True``, ``False``, or ``None`` when it could not run). A failing check is never silent: it
is logged and raised as a :class:`SanityWarning` naming the check and the numbers.

Cheap checks (always on): eval mode, deterministic and batch-independent logits, logits
rather than probabilities, non-zero input gradients, every attack's eps ball / [0, 1] / NaN,
re-scoring ``x_adv`` reproduces the accuracy, and the orderings between attacks
(PGD <= FGSM; AA <= PGD and CW; white-box <= transfer and Square; noise >= PGD).
The eps-sweep and noise checks need extra attacks; ``evaluate`` runs them on a small subset
(see ``ciard_bench.evaluate``) and feeds the numbers to :func:`check_eps_sweep` and
:func:`check_noise`.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from .attacks import get_attack, list_attacks

log = logging.getLogger(__name__)

# relative tolerance for "identical" logits: reductions (and TF32 / cuDNN algorithm choice on
# GPU) differ with the batch size by far less; train-mode BatchNorm or dropout by far more
LOGIT_TOL = 1e-3
CHANCE_MARGIN = 10.0  # pp above 100/C still counted as "near chance" at a huge eps


class SanityWarning(UserWarning):
    """A sanity check of an evaluation failed; the numbers may be wrong."""


def make_check(name: str, passed: bool | None, message: str, **values: Any) -> dict:
    """Build a check record; warn (and log) when it failed."""
    check = {"name": name, "passed": passed, "message": message, "values": values}
    if passed is False:
        text = f"sanity check '{name}' FAILED: {message}"
        log.warning(text)
        warnings.warn(text, SanityWarning, stacklevel=2)
    elif passed is None:
        log.info("sanity check '%s' skipped: %s", name, message)
    return check


def slack(n: int) -> float:
    """Allowed slack (pp) for dataset-level inequalities: 0.2 pp (AutoAttack's), >= 1 example."""
    return max(0.2, 100.0 / max(n, 1))


def check_eval_mode(model: torch.nn.Module) -> dict:
    """S1a: no module of ``model`` is in training mode."""
    training = [name or "<root>" for name, m in model.named_modules() if m.training]
    return make_check("eval_mode", not training,
                      "all modules in eval mode" if not training else
                      f"{len(training)} module(s) in training mode: {', '.join(training[:5])}",
                      modules_in_training=training[:20])


@torch.no_grad()
def check_deterministic(model: torch.nn.Module, x: torch.Tensor) -> dict:
    """S1b: two passes agree, and logits do not depend on the batch (train-mode BN, dropout)."""
    if len(x) < 2:
        return make_check("deterministic", None, "needs at least 2 points")
    a, b = model(x), model(x)
    k = len(x) // 2
    parts = torch.cat([model(x[:k]), model(x[k:])])
    scale = max(1.0, a.abs().max().item())
    repeat = (a - b).abs().max().item() / scale
    batch = (a - parts).abs().max().item() / scale
    ok = repeat <= LOGIT_TOL and batch <= LOGIT_TOL
    return make_check("deterministic", ok,
                      f"relative logit change: repeated pass {repeat:.2e}, split batch {batch:.2e} "
                      f"(tolerance {LOGIT_TOL:.0e})", repeat=repeat, split_batch=batch)


def check_logits(logits: torch.Tensor, n_classes: int | None = None) -> dict:
    """S2/S18: outputs are finite logits (not probabilities) with ``n_classes`` columns."""
    finite = bool(torch.isfinite(logits).all())
    probs = bool(logits.min() > -1e-5 and logits.max() < 1 + 1e-5
                 and ((logits.sum(1) - 1).abs() < 1e-5).all())
    width_ok = n_classes is None or logits.shape[1] == n_classes
    ok = finite and not probs and width_ok and logits.ndim == 2
    msg = (f"shape {tuple(logits.shape)}, finite={finite}, looks like probabilities={probs}"
           + ("" if width_ok else f", expected {n_classes} classes"))
    return make_check("logits", ok, msg, shape=list(logits.shape), finite=finite,
                      probabilities=probs, n_classes=n_classes)


def check_gradients(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """S5: the input gradient of the CE loss is non-zero for every point."""
    x = x.clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y, reduction="sum")
        if not loss.requires_grad:
            return make_check("gradients", False, "the loss does not depend on the input "
                              "through a differentiable path", zero_fraction=1.0, n=len(x))
        grad = torch.autograd.grad(loss, x)[0]
    zero = (grad.flatten(1).abs().sum(1) == 0).float().mean().item()
    return make_check("gradients", zero == 0,
                      f"{100 * zero:.1f}% of {len(x)} points have an all-zero input gradient",
                      zero_fraction=zero, n=len(x))


def check_perturbation(attack: str, x: torch.Tensor, x_adv: torch.Tensor, eps: float) -> dict:
    """S3: ``|x_adv - x|_inf <= eps``, ``x_adv`` in [0, 1], no NaN."""
    if len(x) == 0:
        return make_check(f"eps_ball:{attack}", None, "no point was attacked")
    nan = int(torch.isnan(x_adv).sum())
    linf = (x_adv - x).abs().flatten(1).max(1).values.max().item()
    lo, hi = x_adv.min().item(), x_adv.max().item()
    ok = nan == 0 and linf <= eps + 1e-6 and lo >= 0 and hi <= 1
    return make_check(f"eps_ball:{attack}", ok,
                      f"max Linf {linf:.6f} (eps {eps:.6f}), range [{lo:.4f}, {hi:.4f}], {nan} NaN",
                      max_linf=linf, eps=eps, min=lo, max=hi, nan=nan)


def check_rescore(attack: str, reported: torch.Tensor, rescored: torch.Tensor) -> dict:
    """S4: scoring ``x_adv`` again (other batches) gives the same per-example results."""
    diff = int((reported != rescored).sum())
    n = len(reported)
    acc_a = 100.0 * reported.float().mean().item() if n else 0.0
    acc_b = 100.0 * rescored.float().mean().item() if n else 0.0
    return make_check(f"rescore:{attack}", diff == 0,
                      f"reported {acc_a:.2f}% vs re-scored {acc_b:.2f}%, {diff} point(s) differ",
                      reported=acc_a, rescored=acc_b, differing=diff)


def check_order(lower: str, lower_acc: float, upper: str, upper_acc: float, tol: float,
                **values: Any) -> dict:
    """``lower_acc <= upper_acc + tol`` (e.g. PGD <= FGSM)."""
    ok = lower_acc <= upper_acc + tol
    return make_check(f"order:{lower}<={upper}", ok,
                      f"{lower} {lower_acc:.2f}% vs {upper} {upper_acc:.2f}% (slack {tol:.2f} pp)",
                      lower=lower_acc, upper=upper_acc, slack=tol, **values)


def order_checks(acc: dict[str, float], correct: dict[str, torch.Tensor], kinds: dict[str, str],
                 n: int) -> list[dict]:
    """The dataset-level orderings between the attacks that were run, by each attack's
    ``sanity`` role in :mod:`ciard_bench.attacks` (PGD <= FGSM; AA <= PGD and CW) and kind
    (the strongest white-box attack <= every black-box and transfer attack)."""
    tol, checks = slack(n), []
    ran = [a for a in list_attacks() if a in acc]          # protocol order
    role = {a: get_attack(a).sanity for a in ran}
    for lower in (a for a in ran if role[a] == "pgd"):
        for upper in (a for a in ran if role[a] == "one_step"):
            checks.append(check_order(lower, acc[lower], upper, acc[upper], tol))
    for ens in (a for a in ran if role[a] == "ensemble"):
        for other in (a for a in ran if role[a] in ("pgd", "iterative")):
            missed = int((correct[ens] & ~correct[other]).sum())
            checks.append(check_order(ens, acc[ens], other, acc[other], tol,
                                      **{f"missed_by_{ens}": missed}))
    white = [a for a in acc if kinds.get(a) == "white-box"]
    if white:
        best = min(white, key=lambda a: acc[a])
        for other in acc:
            if kinds.get(other) in ("black-box", "transfer"):
                checks.append(check_order(best, acc[best], other, acc[other], tol))
    return checks


def check_eps_sweep(eps: list[float], acc: list[float], clean: float, n_classes: int,
                    n: int) -> list[dict]:
    """S7-S9 on one accuracy-vs-eps curve measured on the same ``n`` points."""
    checks, tol = [], slack(n)
    if eps and eps[0] == 0:
        checks.append(make_check("eps_zero_equals_clean", abs(acc[0] - clean) < 1e-9,
                                 f"accuracy at eps=0 {acc[0]:.2f}% vs clean {clean:.2f}%",
                                 eps0=acc[0], clean=clean))
    rises = [(eps[i], acc[i], eps[i + 1], acc[i + 1]) for i in range(len(acc) - 1)
             if acc[i + 1] > acc[i] + tol]
    checks.append(make_check(
        "eps_monotone", not rises,
        "accuracy non-increasing in eps" if not rises else
        "accuracy rises: " + "; ".join(f"{a:.2f}% at {e:.4f} -> {b:.2f}% at {f:.4f}"
                                       for e, a, f, b in rises), eps=eps, accuracy=acc, slack=tol))
    limit = 100.0 / n_classes + CHANCE_MARGIN
    checks.append(make_check("large_eps_near_chance", acc[-1] <= limit,
                             f"accuracy {acc[-1]:.2f}% at eps {eps[-1]:.4f}; chance "
                             f"{100.0 / n_classes:.2f}%, limit {limit:.2f}%",
                             eps=eps[-1], accuracy=acc[-1], limit=limit))
    return checks


def check_noise(noise_acc: float, pgd: str, pgd_acc: float, n: int, draws: int) -> dict:
    """S14: random noise in the eps ball is no stronger than the gradient attack."""
    return make_check(f"noise>={pgd}", noise_acc >= pgd_acc,
                      f"uniform noise ({draws} draws/point) {noise_acc:.2f}% vs {pgd} "
                      f"{pgd_acc:.2f}% on {n} points (noise stronger = masked gradients)",
                      noise=noise_acc, pgd=pgd_acc, n=n, draws=draws)


def summarize(checks: list[dict]) -> dict:
    """``{"passed", "n_failed", "failed", "checks"}`` for the result JSON."""
    failed = [c["name"] for c in checks if c["passed"] is False]
    return {"passed": not failed, "n_failed": len(failed), "failed": failed, "checks": checks}
