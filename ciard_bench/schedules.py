"""Learning-rate schedules, as functions of the 1-indexed epoch and the run length.

Milestones are fractions of the run length (CIARD.md §7), so a short preset keeps the
shape of the 300-epoch protocol. The released scripts set the rate at the start of each
epoch (CIARD sets it every batch, to the same value), so one value per epoch is exact.
"""
from __future__ import annotations

import math
from typing import Callable

from .errors import choices_error

Schedule = Callable[[int, int, float], float]   # (epoch, epochs, base_lr) -> lr


def cos_exp_decay(epoch: float, start: float, end: float) -> float:
    """The released CIARD factor (0.5 + 0.5 cos(pi t)) * exp(-0.01 t^2), t = (e - start)/(end - start)."""
    t = (epoch - start) / max(end - start, 1e-12)
    return (0.5 + 0.5 * math.cos(math.pi * t)) * math.exp(-0.01 * t * t)


def _ciard_released(epoch: int, epochs: int, base: float) -> float:
    half = epochs * 150 / 300
    return base if epoch < half else base * cos_exp_decay(epoch, half, epochs)


def _cosine(epoch: int, epochs: int, base: float, final: float = 1e-5) -> float:
    return final + (base - final) * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / epochs))


def _steps(fractions: tuple[float, ...], gamma: float = 0.1) -> Schedule:
    def schedule(epoch: int, epochs: int, base: float) -> float:
        passed = sum(epoch > round(f * epochs) for f in fractions)
        return base * gamma ** passed
    return schedule


SCHEDULES: dict[str, tuple[Schedule, str]] = {
    "ciard_released": (_ciard_released, "0.1 until half the run, then cosine x exp decay (CIARD code)"),
    "cosine": (_cosine, "cosine from the base rate to 1e-5 over the run (CIARD paper)"),
    "multistep": (_steps((215 / 300, 260 / 300, 285 / 300)), "x0.1 after epochs 215, 260, 285 of 300 (RSLAD/MTARD)"),
    "ard_released": (_steps((0.5,)), "x0.1 after half the run, never again (ARD code's bug)"),
    "ard_paper": (_steps((0.5, 0.75)), "x0.1 after 1/2 and 3/4 of the run (ARD's intent)"),
    "sat_released": (_steps((100 / 110, 105 / 110)), "x0.1 after epochs 100 and 105 of 110 (AdaAD's SAT)"),
    "trades": (_steps((75 / 76,)), "x0.1 after epoch 75 of 76 (TRADES code)"),
    "adaad": (_steps((100 / 200, 150 / 200)), "x0.1 after epochs 100 and 150 of 200 (AdaAD code)"),
    "constant": (lambda epoch, epochs, base: base, "the base rate throughout"),
}


def list_schedules() -> list[str]:
    return sorted(SCHEDULES)


def get_schedule(name: str) -> Schedule:
    if name not in SCHEDULES:
        raise choices_error("schedule", name, list_schedules())
    return SCHEDULES[name][0]


# TRADES' code sets lr x0.1 when epoch >= 75 (1-indexed), i.e. for epochs 75 and 76 of 76;
# "trades" above decays only epoch 76. (Its later decays at 90/100 are never reached.)
SCHEDULES["trades_released"] = (_steps((74 / 76,)), "x0.1 from epoch 75 of 76 on (TRADES code: epoch >= 75)")
