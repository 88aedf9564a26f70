"""What a new evaluation of a model takes, as it is, from a stored one (``evaluate(reuse=)``):
when a grid's results folder changes only how its transfer examples are made, the other
attacks and the expensive checks ran on the same checkpoint, points and settings
(:func:`ciard_bench.grid.keys.reusable` builds ``reuse`` from the stored result)."""
from __future__ import annotations

import logging

import torch

from .scoring import encode_mask

log = logging.getLogger("ciard_bench.evaluate.engine")


# the names :mod:`ciard_bench.sanity` gives the checks of one attack and of the eps sweep
_ATTACK_CHECKS = ("eps_ball:{}", "rescore:{}")
_SWEEP_CHECKS = {"eps_zero_equals_clean", "eps_monotone", "large_eps_near_chance"}


def reuse_from(result: dict, attacks: list[str]) -> dict:
    """``evaluate(reuse=)`` from a stored ``result``: its clean mask, the entries and own
    checks of ``attacks``, and its expensive checks (the eps sweep's curve and checks, the
    noise check, their cost; None when it ran without them)."""
    checks = result.get("sanity", {}).get("checks", [])
    own = {a: [c for c in checks if c.get("name") in [n.format(a) for n in _ATTACK_CHECKS]]
           for a in attacks}
    return {"clean": result["clean"]["correct"],
            "attacks": {a: {"entry": result["attacks"][a], "checks": own[a]} for a in attacks},
            "expensive": _expensive_part(result, checks)}


def _expensive_part(result: dict, checks: list[dict]) -> dict | None:
    if result.get("robustness_curve") is None:
        return None
    cost = {k: v for k, v in result["sanity"].get("cost", {}).items() if k != "expensive_checks"}
    return {"checks": [c for c in checks
                       if c["name"] in _SWEEP_CHECKS or c["name"].startswith("noise>=")],
            "curve": result["robustness_curve"], "cost": cost}


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
