"""What a new evaluation of a model takes, as it is, from a stored one (``evaluate(reuse=)``):
when a grid's results folder changes only how its transfer examples are made, the other
attacks and the expensive checks ran on the same checkpoint, points and settings
(:func:`ciard_bench.grid.keys.reusable` builds ``reuse`` from the stored result)."""
from __future__ import annotations

import logging

import torch

from .scoring import encode_mask

log = logging.getLogger("ciard_bench.evaluate.engine")


def expensive_part(result: dict) -> dict | None:
    """The expensive checks of a stored ``result`` (the eps sweep's curve and checks, the
    noise check, their cost), for ``reuse``; None when it ran without them."""
    if result.get("robustness_curve") is None:
        return None
    sweep = {"eps_zero_equals_clean", "eps_monotone", "large_eps_near_chance"}
    checks = [c for c in result["sanity"]["checks"]
              if c["name"] in sweep or c["name"].startswith("noise>=")]
    cost = {k: v for k, v in result["sanity"].get("cost", {}).items() if k != "expensive_checks"}
    return {"checks": checks, "curve": result["robustness_curve"], "cost": cost}


def reusable_attacks(reuse: dict | None, clean_ok: torch.Tensor, names: list[str]) -> dict:
    """The attacks of ``reuse`` that this evaluation runs, if they were scored against the
    same clean mask (else none: another model or other points)."""
    if not reuse:
        return {}
    if reuse.get("clean") != encode_mask(clean_ok):
        log.warning("not reusing earlier attack results: they were scored against another "
                    "clean mask (another model or other points)")
        return {}
    return {a: r for a, r in reuse.get("attacks", {}).items() if a in names}
