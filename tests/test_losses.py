"""Every piece of shared loss math against a hand computation on tiny tensors."""
import math

import pytest
import torch

from ciard_bench.api.losses import (entropy_balance_, kl_elements, kle, magnitude_scale, masked_kle,
                                        mtard_weights_, neg_entropy)

from toys import kle as kle_oracle
from toys import log_softmax, softmax


LOGITS_Q = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
LOGITS_P = [[0.3, 0.1, 2.0], [1.0, 1.0, -2.0]]


def _hand_kle(rows_q, rows_p):
    return kle_oracle([softmax(p) for p in rows_p], rows_q)


def test_kle_matches_hand_computation():
    lq = torch.log_softmax(torch.tensor(LOGITS_Q), 1)
    p = torch.softmax(torch.tensor(LOGITS_P), 1)
    assert kle(lq, p).item() == pytest.approx(_hand_kle(LOGITS_Q, LOGITS_P), rel=1e-6)
    # element-wise form: first element by hand
    p00, lq00 = softmax(LOGITS_P[0])[0], log_softmax(LOGITS_Q[0])[0]
    assert kl_elements(lq, p)[0, 0].item() == pytest.approx(p00 * (math.log(p00 + 1e-5) - lq00), rel=1e-6)


def test_kle_is_batch_mean_kl_divided_by_classes():
    lq = torch.log_softmax(torch.tensor(LOGITS_Q), 1)
    p = torch.softmax(torch.tensor(LOGITS_P), 1)
    exact = torch.nn.functional.kl_div(lq, p, reduction="batchmean") / 3
    assert kle(lq, p).item() == pytest.approx(exact.item(), abs=1e-4)  # differs only by the 1e-5


def test_masked_kle_uses_selected_rows_only():
    lq = torch.log_softmax(torch.tensor(LOGITS_Q), 1)
    p = torch.softmax(torch.tensor(LOGITS_P), 1)
    value = masked_kle(lq, p, torch.tensor([False, True]))
    assert value.item() == pytest.approx(_hand_kle(LOGITS_Q[1:], LOGITS_P[1:]), rel=1e-6)
    assert masked_kle(lq, p, torch.tensor([True, True])).item() == pytest.approx(kle(lq, p).item(), rel=1e-6)


def test_masked_kle_empty_or_nonfinite_is_zero():
    lq = torch.log_softmax(torch.tensor(LOGITS_Q), 1)
    p = torch.softmax(torch.tensor(LOGITS_P), 1)
    assert masked_kle(lq, p, torch.tensor([False, False])).item() == 0.0
    bad = lq.clone()
    bad[0, 0] = float("nan")
    assert masked_kle(bad, p, torch.tensor([True, False])).item() == 0.0


def test_neg_entropy_by_hand():
    p = torch.softmax(torch.tensor(LOGITS_P), 1)
    hand = sum(v * math.log(v + 1e-5) for row in LOGITS_P for v in softmax(row)) / 6
    assert neg_entropy(p).item() == pytest.approx(hand, rel=1e-6)
    assert neg_entropy(p).item() < 0


@pytest.mark.parametrize("h_a,h_n,expect_a,expect_n", [
    (-0.2, -0.1, 2.0 - 0.001, 2.0 + 0.001),   # H_a/H_n = 2 > 1: robust teacher more uncertain -> sharpen it
    (-0.1, -0.2, 2.0 + 0.001, 2.0 - 0.001),
    (-0.1, -0.1, 2.0, 2.0),                   # equal: sign(0) = 0, no change
])
def test_entropy_balance_step(h_a, h_n, expect_a, expect_n):
    tau_a, tau_n = torch.tensor(2.0), torch.tensor(2.0)
    entropy_balance_(tau_a, tau_n, torch.tensor(h_a), torch.tensor(h_n), torch.tensor(0.001))
    assert tau_a.item() == pytest.approx(expect_a, abs=1e-7)
    assert tau_n.item() == pytest.approx(expect_n, abs=1e-7)


def test_entropy_balance_bounds():
    tau_a, tau_n = torch.tensor(1.0), torch.tensor(10.0)
    entropy_balance_(tau_a, tau_n, torch.tensor(-0.3), torch.tensor(-0.1), torch.tensor(0.5))
    assert tau_a.item() == 1.0 and tau_n.item() == 10.0   # clipped to [1, 10]


def test_mtard_weights_first_step_and_second_step_by_hand():
    w_adv, w_nat = torch.tensor(0.5), torch.tensor(0.5)
    l0_adv, l0_nat = torch.tensor(float("nan")), torch.tensor(float("nan"))
    rate = torch.tensor(0.025)
    # first step: L0 := L, ratios 1 and 1 -> targets 1/2, weights unchanged
    mtard_weights_(w_adv, w_nat, torch.tensor(0.4), torch.tensor(0.2), l0_adv, l0_nat, rate)
    assert (l0_adv.item(), l0_nat.item()) == pytest.approx((0.4, 0.2))
    assert (w_adv.item(), w_nat.item()) == pytest.approx((0.5, 0.5))
    # second step by hand: lhat = (0.2/0.4, 0.18/0.2) = (0.5, 0.9); share_adv = 0.5/1.4
    mtard_weights_(w_adv, w_nat, torch.tensor(0.2), torch.tensor(0.18), l0_adv, l0_nat, rate)
    share_adv, share_nat = 0.5 / 1.4, 0.9 / 1.4
    new_adv = 0.5 - 0.025 * (0.5 - share_adv)
    new_nat = 0.5 - 0.025 * (0.5 - share_nat)
    assert w_adv.item() == pytest.approx(new_adv / (new_adv + new_nat), rel=1e-6)
    assert w_nat.item() == pytest.approx(new_nat / (new_adv + new_nat), rel=1e-6)
    assert w_adv.item() + w_nat.item() == pytest.approx(1.0)


@pytest.mark.parametrize("l_adv,l_nat,l_push,expected", [
    (0.0234, 0.5, 3.2, 1e-2),       # min(-2, -1) - 0
    (0.02, 0.003, 0.00045, 10.0),   # min(-2, -3) - (-4) = 1
    (0.5, 0.5, 0.5, 1.0),
    (0.0, 0.5, 0.5, 1e-6),          # zero -> 1e-7 -> order -7; minus order(0.5) = -1
])
def test_magnitude_scale_by_hand(l_adv, l_nat, l_push, expected):
    got = magnitude_scale(torch.tensor(l_adv), torch.tensor(l_nat), torch.tensor(l_push))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_magnitude_scale_is_detached():
    l_push = torch.tensor(0.3, requires_grad=True)
    assert not magnitude_scale(torch.tensor(0.1), torch.tensor(0.2), l_push).requires_grad
