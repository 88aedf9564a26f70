"""What the training loop keeps besides the weights, with one host sync per epoch or checkpoint.

* :func:`accumulate` / :func:`epoch_means`: the epoch's sums of every logged term, on the
  device (no sync per step), and their per-step means for ``log.jsonl``; a term a method
  weights (``Method.log_weights``) is averaged only over the steps its weight covers.
* :func:`raise_if_weights_bad`: before any checkpoint, the student and every trained teacher
  must be finite; the loss guard alone misses weights that overflow in an epoch's last step.
"""
from __future__ import annotations

from typing import Any

import torch

from .errors import UserError


class NonFiniteWeights(UserError):
    """A trained model's weights became NaN/inf; nothing is written, the last good checkpoint is kept."""


def accumulate(sums: dict[str, Any], out: dict[str, Any], weights: dict[str, str]) -> None:
    """Add one step's terms to the epoch sums on the device; a term with a weight (the
    method's ``log_weights``) adds value * weight, so its mean covers only weighted steps."""
    for k, v in out.items():
        v = v.detach().float()
        if k in weights:
            v = v * out[weights[k]].detach().float()
        sums[k] = sums[k] + v if k in sums else v.clone()


def epoch_means(sums: dict[str, Any], n_steps: int, weights: dict[str, str]) -> dict[str, float | None]:
    """Per-step means of the logged terms; a weighted term is sum(value * w) / sum(w), or None
    when no step had weight (JSON null: no value, rather than a made-up one)."""
    means: dict[str, float | None] = {}
    for k, v in sums.items():
        if k in weights:
            total = float(sums[weights[k]])
            means[k] = float(v) / total if total > 0 else None
        else:
            means[k] = float(v) / max(n_steps, 1)
    return means


def raise_if_weights_bad(run: Any, epoch: int, step: int) -> None:
    """Before any checkpoint: the student's and every trained teacher's parameters and buffers
    are finite (the loss guard misses weights that overflow in an epoch's last step)."""
    trained = [t.name for t in run.method.teacher_trainings()]
    for name in ["student", *trained]:
        tensors = [t.detach() for t in (*getattr(run.method, name).parameters(),
                                         *getattr(run.method, name).buffers()) if t.is_floating_point()]
        if not tensors:
            continue
        bad = int(torch.stack([(~torch.isfinite(t)).sum() for t in tensors]).sum())   # one sync
        if bad:
            where = f"epoch {epoch}" + (f" step {step}" if step else "")
            raise NonFiniteWeights(f"the {name.replace('_', ' ')} has {bad:,} non-finite weights of "
                                   f"{sum(t.numel() for t in tensors):,} after {where}; stopped "
                                   "without writing a checkpoint, the last good checkpoint is kept "
                                   "(a smaller --lr or --weight-decay?)")
