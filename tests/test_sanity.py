"""Sanity checks: each one trips on the model or numbers it exists to catch, with a warning
naming the check and the numbers, and stays quiet on a healthy model."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

from ciard_bench import sanity
from ciard_bench.evaluate import evaluate
from ciard_bench.sanity import SanityWarning

from toys import StuckBatchNorm2d, toy

EPS = 8 / 255



class Quantise(nn.Module):
    """A non-differentiable input quantiser: round to 1/levels (zero gradient everywhere)."""

    def __init__(self, levels: int = 16):
        super().__init__()
        self.levels = levels

    def forward(self, x):
        return torch.round(x * self.levels) / self.levels


def stuck_bn_net() -> nn.Module:
    """eval() leaves its BatchNorm (module ``1``) in training mode."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), StuckBatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 64, 10))


def _by_name(result: dict) -> dict:
    return {c["name"]: c for c in result["sanity"]["checks"]}


def test_healthy_model_passes_every_check():
    model, x, y = toy()
    with warnings.catch_warnings():
        warnings.simplefilter("error", SanityWarning)
        res = evaluate(model, x, y, "fgsm,pgd_sat,pgd_trades,cw_inf", EPS, sanity_examples=40)
    assert res["sanity"]["passed"] and res["sanity"]["n_failed"] == 0
    checks = _by_name(res)
    assert checks["eps_ball:pgd_sat"]["values"]["max_linf"] <= EPS + 1e-6
    assert checks["rescore:cw_inf"]["values"]["differing"] == 0
    assert checks["order:pgd_sat<=fgsm"]["passed"]


def test_masked_gradients_trip_the_gradient_and_noise_checks():
    model, x, y = toy(n=60)
    masked = nn.Sequential(Quantise(), model).eval()
    with pytest.warns(SanityWarning, match=r"'gradients' FAILED: 100.0% of"):
        res = evaluate(masked, x, y, ["pgd_trades"], 16 / 255, sanity_examples=60)
    checks = _by_name(res)
    assert checks["gradients"]["passed"] is False
    assert checks["gradients"]["values"]["zero_fraction"] == 1.0
    noise = checks["noise>=pgd_trades"]
    assert noise["passed"] is False and noise["values"]["noise"] < noise["values"]["pgd"]
    assert "gradients" in res["sanity"]["failed"]


def test_train_mode_batchnorm_trips_the_determinism_check():
    torch.manual_seed(0)
    model = stuck_bn_net()
    x, y = torch.rand(16, 3, 8, 8), torch.arange(16) % 10
    with pytest.warns(SanityWarning, match="'deterministic' FAILED"):
        res = evaluate(model, x, y, ["fgsm"], EPS, expensive_checks=False)
    checks = _by_name(res)
    assert checks["deterministic"]["values"]["split_batch"] > sanity.LOGIT_TOL
    assert checks["eval_mode"]["passed"] is False
    assert "1" in checks["eval_mode"]["values"]["modules_in_training"]


def test_probabilities_trip_the_logits_check():
    model, x, y = toy()
    probs = nn.Sequential(model, nn.Softmax(dim=1)).eval()
    with pytest.warns(SanityWarning, match="'logits' FAILED"):
        check = sanity.check_logits(probs(x), n_classes=10)
    assert check["values"]["probabilities"] is True
    assert sanity.check_logits(model(x), n_classes=10)["passed"]
    with pytest.warns(SanityWarning, match="expected 100 classes"):
        sanity.check_logits(model(x), n_classes=100)


def test_perturbation_and_rescore_checks_name_the_numbers():
    x = torch.full((2, 3, 4, 4), 0.5)
    assert sanity.check_perturbation("pgd", x, x + EPS, EPS)["passed"]
    with pytest.warns(SanityWarning, match=r"eps_ball:pgd' FAILED: max Linf 0\.062"):
        sanity.check_perturbation("pgd", x, x + 2 * EPS, EPS)
    with pytest.warns(SanityWarning, match=r"range \[0\.5000, 1\.1000\]"):
        sanity.check_perturbation("pgd", x, torch.stack([x[0], torch.full_like(x[1], 1.1)]), 1.0)
    ok = torch.tensor([True, False, True])
    assert sanity.check_rescore("aa", ok, ok)["passed"]
    with pytest.warns(SanityWarning, match="1 point"):
        sanity.check_rescore("aa", ok, torch.tensor([True, True, True]))


def test_eps_sweep_checks():
    eps = [0.0, 2 / 255, 8 / 255, 0.5]
    good = sanity.check_eps_sweep(eps, [80.0, 60.0, 40.0, 5.0], clean=80.0, n_classes=10, n=100)
    assert all(c["passed"] for c in good)
    with pytest.warns(SanityWarning):
        bad = sanity.check_eps_sweep(eps, [70.0, 60.0, 65.0, 50.0], clean=80.0, n_classes=10,
                                     n=100)
    assert [c["passed"] for c in bad] == [False, False, False]
    assert "60.00% at 0.0078 -> 65.00% at 0.0314" in bad[1]["message"]


def test_order_checks_flag_aa_above_pgd_and_white_box_above_square():
    n = 100
    acc = {"fgsm": 50.0, "pgd_sat": 40.0, "aa": 45.0, "square": 30.0}
    correct = {a: torch.arange(n) < int(v) for a, v in acc.items()}
    kinds = {"fgsm": "white-box", "pgd_sat": "white-box", "aa": "white-box", "square": "black-box"}
    with pytest.warns(SanityWarning):
        checks = {c["name"]: c for c in sanity.order_checks(acc, correct, kinds, n)}
    assert checks["order:pgd_sat<=fgsm"]["passed"]
    assert checks["order:aa<=pgd_sat"]["passed"] is False
    assert checks["order:aa<=pgd_sat"]["values"]["missed_by_aa"] == 5
    assert checks["order:pgd_sat<=square"]["passed"] is False
