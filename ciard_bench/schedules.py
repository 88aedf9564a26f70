"""Learning-rate schedules, as functions of the 1-indexed epoch and the run length.

Each schedule is the released code's rule at its released length (300 epochs for CIARD,
RSLAD, MTARD and PeerAiD, 200 for ARD and AdaAD, 110 for SAT, 76 for TRADES). The released scripts
set the rate at the start of each epoch (CIARD sets it every batch, to the same value), so
one value per epoch is exact.

A run of the released length or longer uses the rule as written, milestones as fractions
of the run. A shorter run (the CPU presets) cannot evaluate the rule at its own epochs: the
cosine of ``ciard_released`` reaches 0 at the last epoch, which is harmless at 300 epochs
and half the training at 2. There, epoch ``e`` of ``E`` stands for the released epochs
``((e - 1) L / E, e L / E]`` and gets their mean rate (:func:`block_mean`). So a short run
keeps the shape of the released schedule, no epoch runs at rate 0 unless every released
epoch it stands for does, and at ``E = L`` each block is one epoch: the released values.
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


def block_mean(rate_at: Callable[[int], float], epoch: int, epochs: int, length: int) -> float:
    """Mean of ``rate_at(j)`` over the released epochs ``j`` (1..length) that epoch ``epoch``
    of an ``epochs``-long run stands for; a released epoch cut by the block counts pro rata."""
    lo, hi = (epoch - 1) * length / epochs, epoch * length / epochs
    parts = [(min(hi, j) - max(lo, j - 1), rate_at(j))
             for j in range(math.floor(lo) + 1, math.ceil(hi) + 1)]
    if len({rate for _, rate in parts}) == 1:   # a flat stretch keeps its exact value
        return parts[0][1]
    return math.fsum(w * rate for w, rate in parts) / (hi - lo)


def scaled(rule: Schedule, length: int) -> Schedule:
    """``rule`` as released (``length`` epochs): as written for runs of at least ``length``
    epochs, block means of its released values for shorter ones (see the module docstring)."""
    def schedule(epoch: int, epochs: int, base: float) -> float:
        if epochs >= length:
            return rule(epoch, epochs, base)
        return block_mean(lambda j: rule(j, length, base), epoch, epochs, length)
    return schedule


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


def _divided(fractions: tuple[float, ...]) -> Schedule:
    """The rate divided by 10 after each milestone, by repeated division as PeerAiD's
    ``adjust_learning_rate`` (``lr /= 10``; ``0.1 / 10`` is 0.01, ``0.1 * 0.1`` is not)."""
    def schedule(epoch: int, epochs: int, base: float) -> float:
        rate = base
        for f in fractions:
            if epoch > round(f * epochs):
                rate /= 10
        return rate
    return schedule


# name -> (released rule, released length in epochs, description)
_RULES: dict[str, tuple[Schedule, int, str]] = {
    "ciard_released": (_ciard_released, 300, "0.1 until half the run, then cosine x exp decay (CIARD code)"),
    # a cosine over the run at any length (it ends at 1e-5, never 0): nothing to scale
    "cosine": (_cosine, 1, "cosine from the base rate to 1e-5 over the run (CIARD paper)"),
    "multistep": (_steps((215 / 300, 260 / 300, 285 / 300)), 300, "x0.1 after epochs 215, 260, 285 of 300 (RSLAD/MTARD)"),
    # PeerAiD's configs list the 0-indexed epochs [214, 259, 284] and divide the rate from
    # each on: x0.1 from epochs 215, 260, 285 (1-indexed), one epoch before "multistep"
    "peeraid_released": (_divided((214 / 300, 259 / 300, 284 / 300)), 300,
                         "x0.1 after epochs 214, 259, 284 of 300 (PeerAiD code: from epoch 215)"),
    "ard_released": (_steps((0.5,)), 200, "x0.1 after half the run, never again (ARD code's bug)"),
    "ard_paper": (_steps((0.5, 0.75)), 200, "x0.1 after 1/2 and 3/4 of the run (ARD's intent)"),
    "sat_released": (_steps((100 / 110, 105 / 110)), 110, "x0.1 after epochs 100 and 105 of 110 (AdaAD's SAT)"),
    "trades": (_steps((75 / 76,)), 76, "x0.1 after epoch 75 of 76 (TRADES code)"),
    # TRADES' code sets lr x0.1 when epoch >= 75 (1-indexed), i.e. for epochs 75 and 76 of 76;
    # "trades" above decays only epoch 76. (Its later decays at 90/100 are never reached.)
    "trades_released": (_steps((74 / 76,)), 76, "x0.1 from epoch 75 of 76 on (TRADES code: epoch >= 75)"),
    "adaad": (_steps((100 / 200, 150 / 200)), 200, "x0.1 after epochs 100 and 150 of 200 (AdaAD code)"),
    "constant": (lambda epoch, epochs, base: base, 1, "the base rate throughout"),
}
RELEASED_EPOCHS = {name: length for name, (_, length, _) in _RULES.items()}
SCHEDULES: dict[str, tuple[Schedule, str]] = {
    name: (scaled(rule, length), text) for name, (rule, length, text) in _RULES.items()}


def list_schedules() -> list[str]:
    return sorted(SCHEDULES)


def get_schedule(name: str) -> Schedule:
    if name not in SCHEDULES:
        raise choices_error("schedule", name, list_schedules())
    return SCHEDULES[name][0]
