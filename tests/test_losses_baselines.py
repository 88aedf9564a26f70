"""The baselines' shared math (losses.py, second half) against hand computations."""
import math

import pytest
import torch

from ciard_bench.api.losses import (absld_temperatures, fair_class_weights, kl_mean, kl_per_sample,
                                        kl_sum, log_probs, lse_clip_bound, lse_distance)
from ciard_bench.schedules import get_schedule

from toys import kl, log_softmax, softmax

Q = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
P = [[0.3, 0.1, 2.0], [1.0, 1.0, -2.0]]


def _kl(p_logits, q_logits):
    return kl(softmax(p_logits), log_softmax(q_logits))


def _tensors():
    return torch.log_softmax(torch.tensor(Q), 1), torch.softmax(torch.tensor(P), 1)


def test_exact_kl_reductions():
    lq, p = _tensors()
    rows = [_kl(P[i], Q[i]) for i in range(2)]
    assert kl_per_sample(lq, p).tolist() == pytest.approx(rows, rel=1e-6)
    assert kl_sum(lq, p).item() == pytest.approx(sum(rows), rel=1e-6)
    assert kl_mean(lq, p).item() == pytest.approx(sum(rows) / 6, rel=1e-6)   # nn.KLDivLoss(): / (B*C)


def test_kl_sum_differentiates_the_target():
    lq = torch.log_softmax(torch.tensor(Q), 1)
    logits = torch.tensor(P, requires_grad=True)
    kl_sum(lq, torch.softmax(logits, 1)).backward()
    assert logits.grad.abs().sum() > 0


def test_log_probs_both_forms():
    z = torch.tensor(Q)
    hand = [math.log(v) for r in Q for v in softmax(r)]
    assert log_probs(z).flatten().tolist() == pytest.approx(hand, rel=1e-6)
    assert log_probs(z, exact=False).flatten().tolist() == pytest.approx(hand, rel=1e-6)
    extreme = torch.tensor([[0.0, 200.0]])
    assert log_probs(extreme, exact=False)[0, 0].item() == -math.inf   # log(softmax) underflows
    assert log_probs(extreme)[0, 0].item() == pytest.approx(-200.0)


def test_lse_distance_and_clip_bound():
    p, q = torch.tensor([[0.7, 0.2, 0.1]]), torch.tensor([[1.0, 0.0, 0.0]])
    assert lse_distance(p, q).item() == pytest.approx(0.09 + 0.04 + 0.01)
    assert lse_clip_bound(0.3, 10) == pytest.approx(0.1)            # METHODS.md §7.2
    assert lse_clip_bound(0.4, 10) == pytest.approx(0.16 * 10 / 9)
    smoothed = torch.tensor([[0.7] + [0.3 / 9] * 9])                # its definition
    onehot = torch.tensor([[1.0] + [0.0] * 9])
    assert lse_distance(smoothed, onehot).item() == pytest.approx(lse_clip_bound(0.3, 10))


def test_fair_class_weights_by_hand():
    kappa = torch.tensor([2.0, 4.0, 8.0, 1.0])
    raw = [(1 / (k + 1e-5)) ** 2 for k in kappa.tolist()]
    hand = [min(max(4 * r / sum(raw), 5 / 6), 5 / 2) for r in raw]
    assert fair_class_weights(kappa, 2.0).tolist() == pytest.approx(hand, rel=1e-5)
    assert hand[3] == 5 / 2 and hand[2] == 5 / 6                    # both clamps active
    assert fair_class_weights(torch.full((3,), 7.0), 2.0).tolist() == pytest.approx([1, 1, 1])


def test_absld_temperature_step_by_hand():
    tau = torch.tensor([1.0, 1.0, 0.55, 4.98])
    loss = torch.tensor([10.0, 4.0, 13.0, 1.0])
    mean = 7.0
    gaps = [v - mean for v in loss.tolist()]                        # 3, -3, 6, -6
    hand = [min(max(t - 0.1 * g / 6, 0.5), 5.0) for t, g in zip(tau.tolist(), gaps)]
    assert absld_temperatures(tau, loss, 0.1).tolist() == pytest.approx(hand, rel=1e-6)
    assert hand[2] == 0.5 and hand[3] == 5.0                        # the clamps
    same = torch.full((4,), 3.0)                                    # 0/0 in the code: unchanged here
    assert absld_temperatures(tau, same, 0.1).tolist() == pytest.approx(tau.tolist())


def test_trades_released_schedule_decays_from_epoch_75():
    s = get_schedule("trades_released")
    assert [s(e, 76, 0.1) for e in (74, 75, 76)] == pytest.approx([0.1, 0.01, 0.01])
