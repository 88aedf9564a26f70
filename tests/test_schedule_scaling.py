"""The schedule-scaling rule: at each method's released length every schedule (and CIARD's
ITT rate) is the released rule exactly; shorter runs take block means of the released
values, so no epoch runs at learning rate 0 and ITT trains over the released share."""
from __future__ import annotations

import math

import pytest

from ciard_bench.methods import create_method, get_method, list_methods
from ciard_bench.api import Context
from ciard_bench.models import create_model
from ciard_bench.schedules import RELEASED_EPOCHS, _RULES, block_mean, get_schedule


def _released_schedule(method: str) -> tuple[str, int]:
    d = get_method(method).train_defaults
    return d.get("schedule", "multistep"), d.get("epochs", 300)


@pytest.mark.parametrize("method", list_methods())
def test_every_method_keeps_its_released_schedule_at_full_length(method):
    name, epochs = _released_schedule(method)
    rule = _RULES[name][0]
    schedule = get_schedule(name)
    assert [schedule(e, epochs, 0.1) for e in range(1, epochs + 1)] == \
        [rule(e, epochs, 0.1) for e in range(1, epochs + 1)]          # bit-identical


@pytest.mark.parametrize("method", list_methods())
@pytest.mark.parametrize("epochs", [1, 2, 3, 5, 6, 10, 30])
def test_no_method_spends_an_epoch_at_rate_zero_in_a_short_run(method, epochs):
    name, released = _released_schedule(method)
    rates = [get_schedule(name)(e, epochs, 0.1) for e in range(1, epochs + 1)]
    assert min(rates) > 0, rates
    if epochs > 1:
        assert rates[0] == 0.1                   # every released schedule starts at the base


def test_block_mean_by_hand():
    # the CIARD rule at 2 epochs: epoch 1 stands for released epochs 1-150 (all 0.1), epoch
    # 2 for 151-300: the mean of 0.1 * (0.5 + 0.5 cos(pi t)) exp(-0.01 t^2), t = (j-150)/150
    rule = get_schedule("ciard_released")
    tail = [0.1 * (0.5 + 0.5 * math.cos(math.pi * (j - 150) / 150))
            * math.exp(-0.01 * ((j - 150) / 150) ** 2) for j in range(151, 301)]
    assert rule(1, 2, 0.1) == 0.1
    assert rule(2, 2, 0.1) == pytest.approx(sum(tail) / 150, rel=1e-12)
    # multistep at 4 epochs: epoch 3 = released 151-225: 65 at 0.1, 10 at 0.01
    assert get_schedule("multistep")(3, 4, 0.1) == pytest.approx((65 * 0.1 + 10 * 0.01) / 75)
    # a released epoch cut by the block counts pro rata: 7 epochs of 300, block 1 = (0, 300/7]
    assert block_mean(lambda j: float(j), 1, 7, 300) == pytest.approx(
        (sum(range(1, 43)) + (300 / 7 - 42) * 43) / (300 / 7))
    assert RELEASED_EPOCHS["ciard_released"] == 300 and RELEASED_EPOCHS["trades_released"] == 76


def _ciard(epochs: int, **options):
    models = {r: create_model("resnet8") for r in ("clean_teacher", "robust_teacher")}
    return create_method("ciard", create_model("resnet8"), models, Context(10, epochs), options)


@pytest.mark.parametrize("epochs", [6, 12, 30, 60])
def test_itt_trains_over_the_released_share_with_a_nonzero_rate(epochs):
    m = _ciard(epochs)
    (itt,) = m.teacher_trainings()
    active = [e for e in range(1, epochs + 1) if (m.begin_epoch(e), m.itt_active)[1]]
    assert len(active) / epochs == pytest.approx(250 / 300)     # epochs 51-300 of 300
    assert all(itt.lr_at(e) > 0 for e in active)
    assert all(itt.lr_at(e) == 0 for e in range(1, epochs + 1) if e not in active)


def test_itt_rate_is_released_at_full_length():
    m = _ciard(300)
    (itt,) = m.teacher_trainings()
    assert itt.lr_at(50) == 1e-4 and itt.lr_at(300) == pytest.approx(0.0, abs=1e-20)
    t = (175 - 50) / 250
    assert itt.lr_at(175) == 1e-4 * (0.5 + 0.5 * math.cos(math.pi * t)) * math.exp(-0.01 * t * t)
