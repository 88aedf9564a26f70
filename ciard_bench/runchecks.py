"""What the training engine checks of a run and its method, each failure one line naming the
method and where it comes from (built-in or which plugin): the settings and plugins of a run
being resumed, the loss a forward returns, a non-finite loss."""
from __future__ import annotations

from typing import Any

import torch

from . import plugins
from .config import TrainConfig, changed_settings
from .errors import UserError


class NonFiniteLoss(UserError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


def check_resume(saved: dict[str, Any], cfg: TrainConfig, used: list, out: str,
                 teachers: dict[str, str] | None = None) -> None:
    """A run resumes only with its own settings (``saved``: its ``run.json``) and the plugins
    it began with (distribution and version, or file hash): another version may compute
    another step. A teacher given as a file is identified by its content (``teachers``:
    key -> sha256 now; the run records them): moved, it resumes; changed, it does not."""
    recorded = saved.get("teachers", {})
    teachers = teachers or {}
    for key, sha in recorded.items():
        if key in teachers and teachers[key] != sha:
            raise UserError(f"--resume: the {key} file {getattr(cfg, key)!r} is not the one the "
                            f"run in {out!r} began with (sha256 {teachers[key][:12]}..., it "
                            f"was {sha[:12]}...); accepted: the same weights, wherever they are")
    same = {k for k in recorded if teachers.get(k) == recorded[k]}
    for key, was, now in [c for c in changed_settings(saved["config"], cfg.to_dict())
                          if c[0] not in same][:1]:
        raise UserError(f"--resume: {key} is {now!r} but the run in {out!r} used "
                        f"{was!r}; accepted: the run's own settings")
    if saved.get("plugins", []) != used:
        raise UserError(f"--resume: the run in {out!r} was trained with "
                        f"{plugins.said(saved.get('plugins', []))}, but now it is "
                        f"{plugins.said(used)}; accepted: the same plugin version (or a new --out)")


def check_loss(method: str, out: Any) -> None:
    """``out`` must be a dict whose ``"loss"`` is a 0-dim tensor with a graph: checked every
    step before the backward, on metadata only (no host sync)."""
    who = f"method {method!r} ({plugins.describe('method', method)})"
    if not isinstance(out, dict) or not isinstance(out.get("loss"), torch.Tensor):
        got = f"a dict with keys {sorted(out)}" if isinstance(out, dict) else type(out).__name__
        if isinstance(out, dict) and "loss" in out:
            got = f"'loss' of type {type(out['loss']).__name__}"
        raise UserError(f"{who}: forward returned {got}; accepted: a dict whose 'loss' is a "
                        "0-dim tensor (what the student minimises)")
    loss = out["loss"]
    if loss.dim() != 0 or not loss.requires_grad:
        raise UserError(f"{who}: forward's 'loss' has shape {tuple(loss.shape)} and "
                        f"requires_grad={loss.requires_grad}; accepted: a 0-dim tensor with a "
                        "graph to the student's parameters")


def check_first_loss(method: str, out: dict, epoch: int) -> None:
    """The first step of an invocation: a loss that is not finite names the method and where
    it comes from (one host sync, once; later steps are checked by :func:`raise_if_bad`)."""
    loss = out["loss"].detach()
    if not bool(torch.isfinite(loss)):
        raise NonFiniteLoss(f"method {method!r} ({plugins.describe('method', method)}): the loss "
                            f"of its first step (epoch {epoch}) is {float(loss):.4g}; accepted: "
                            "a finite loss")


def raise_if_bad(bad_step: torch.Tensor, bad_terms: dict, epoch: int) -> None:
    """``bad_step`` (the first 1-based step of the epoch whose loss was not finite, else -1)
    and that step's loss terms -> :class:`NonFiniteLoss`."""
    step = int(bad_step.item())
    if step >= 0:
        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in bad_terms.items())
        raise NonFiniteLoss(f"non-finite loss at epoch {epoch} step {step} ({terms}); "
                            "stopped, the last good checkpoint is kept")
