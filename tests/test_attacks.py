"""Attacks: the protocol table, hand-computed FGSM and CW loss, eps ball for every attack,
transfer uses the source's gradients, AutoAttack's settings and resume file."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchattacks

from ciard_bench.attacks import (PROTOCOL, AttackSpec, AutoAttackAdapter, CWLinf, attack_settings,
                                 create_attack, cw_margin_loss, describe_attack, get_attack,
                                 list_attacks, register_attack)
from ciard_bench.errors import UserError

from toys import toy

EPS = 8 / 255
_PGD_TRADES = "PGD_TRADES: CE, 20 steps of 0.003, random start"
_CW_INF = ("CW_inf: CW margin (kappa 50), 30 steps of 2/255, zero start, clamped every step "
           "(torchattacks convention)")
# One row per registered attack: name, kind, table label, caption phrase at the protocol's
# settings. Adding an attack is one record in ciard_bench/attacks/protocol.py and one row here.
SPECS = [
    ("fgsm", "white-box", "FGSM", "FGSM: 1 step of eps"),
    ("pgd_sat", "white-box", "PGD_SAT", "PGD_SAT: CE, 20 steps of 2/255, random start"),
    ("pgd_trades", "white-box", "PGD_TRADES", _PGD_TRADES),
    ("cw_inf", "white-box", "CW_inf", _CW_INF),
    ("square", "black-box", "SA", "SA: Square (Linf), 100 queries"),
    ("square_aa", "black-box", "SA_AA", "SA_AA: AutoAttack's Square (Linf), 5000 queries"),
    ("aa", "white-box", "AA", "AA: AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square)"),
    ("transfer_pgd_trades", "transfer", "Transfer_PGD_TRADES",
     f"Transfer PGD_TRADES ({_PGD_TRADES}, crafted on the robust teacher)"),
    ("transfer_cw_inf", "transfer", "Transfer_CW_inf",
     f"Transfer CW_inf ({_CW_INF}, crafted on the robust teacher)"),
    ("noise", "sanity", "Noise", "Noise: uniform in the eps ball, 20 draws per point"),
]


def test_every_registered_attack_has_its_row():
    assert [row[0] for row in SPECS] == list_attacks()


@pytest.mark.parametrize("name,kind,label,caption", SPECS, ids=[row[0] for row in SPECS])
def test_each_attack_record_builds_and_has_its_label_and_caption(name, kind, label, caption):
    model, _, _ = toy(4)
    source, _, _ = toy(1, contrast=0.5)
    spec = get_attack(name)
    assert (spec.kind, spec.label, attack_settings(name)["kind"]) == (kind, label, kind)
    assert describe_attack(name, EPS, {}) == caption
    attack = create_attack(name, model, source=source)
    assert isinstance(attack, torchattacks.attack.Attack) and attack.settings["name"] == name


def test_a_record_that_cannot_be_built_is_refused_at_registration():
    with pytest.raises(ValueError, match="attack name 'fgsm' is already used by a built-in"):
        register_attack(AttackSpec("fgsm", "white-box", {}, label="FGSM", build=lambda *a, **k: None))
    with pytest.raises(ValueError, match="builder"):
        register_attack(AttackSpec("no_builder", "white-box", {}, label="X"))
    with pytest.raises(ValueError, match="kind"):
        register_attack(AttackSpec("bad_kind", "grey-box", {}, label="X", build=lambda *a, **k: None))
    with pytest.raises(ValueError, match="table label 'FGSM' is already used"):
        register_attack(AttackSpec("fgsm2", "white-box", {}, label="FGSM", build=lambda *a, **k: None))
    assert "no_builder" not in list_attacks() and "bad_kind" not in list_attacks()
    assert "fgsm2" not in list_attacks()


def test_registry_has_the_protocol_attacks():
    names = list_attacks()
    for name in ("fgsm", "pgd_sat", "pgd_trades", "cw_inf", "square", "square_aa", "aa",
                 "transfer_pgd_trades", "transfer_cw_inf"):
        assert name in names
    assert list_attacks("transfer") == ["transfer_pgd_trades", "transfer_cw_inf"]


def test_protocol_defaults_are_the_papers():
    assert attack_settings("fgsm")["step_size"] == pytest.approx(EPS)
    s = attack_settings("pgd_sat")
    assert (s["steps"], s["alpha"], s["random_start"], s["loss"]) == (20, 2 / 255, True, "ce")
    s = attack_settings("pgd_trades")
    assert (s["steps"], s["alpha"], s["random_start"]) == (20, 0.003, True)
    s = attack_settings("cw_inf")
    assert (s["kappa"], s["steps"], s["alpha"], s["random_start"]) == (50.0, 30, 2 / 255, False)
    assert attack_settings("square")["n_queries"] == 100
    s = attack_settings("aa")
    assert s["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert s["square_n_queries"] == 5000
    assert attack_settings("transfer_cw_inf", eps=4 / 255)["kappa"] == 50.0
    assert attack_settings("pgd_sat", eps=4 / 255, steps=100)["steps"] == 100


def test_aa_target_classes_follow_n_classes():
    assert attack_settings("aa", n_classes=100)["apgd_t_n_target_classes"] == 9
    assert attack_settings("aa", n_classes=100)["fab_t_n_target_classes"] == 9
    assert attack_settings("aa", n_classes=5)["apgd_t_n_target_classes"] == 4
    model, _, _ = toy(20)
    atk = create_attack("aa", model, n_classes=5)
    assert atk.aa.apgd_targeted.n_target_classes == 4 and atk.aa.fab.n_target_classes == 4


def test_aa_target_classes_can_be_fewer_in_custom_only():
    kw = {"version": "custom", "attacks": ["apgd-ce", "apgd-t"], "n_iter": 10}
    s = attack_settings("aa", n_target_classes=3, **kw)
    assert (s["apgd_t_n_target_classes"], s["fab_t_n_target_classes"]) == (3, 3)
    model, _, _ = toy(20)
    atk = create_attack("aa", model, n_target_classes=3, **kw)
    assert atk.aa.apgd_targeted.n_target_classes == 3
    assert atk._fingerprint(torch.zeros(1, 3, 4, 4), torch.zeros(1))["settings"][
        "apgd_t_n_target_classes"] == 3        # a resume file of 9 targets is not reused
    caption = describe_attack("aa", 8 / 255, {"aa": {"n_target_classes": 3, **kw}})
    assert "APGD-T on the 3 most likely wrong classes" in caption
    assert "9 most likely" in describe_attack("aa", 8 / 255, {"aa": kw})
    with pytest.raises(UserError, match="n_target_classes 10 is not accepted; accepted: an "
                                        "integer from 1 to 9"):
        attack_settings("aa", n_target_classes=10, **kw)
    with pytest.raises(UserError, match="n_target_classes 0 "):
        attack_settings("aa", n_target_classes=0, **kw)
    with pytest.raises(UserError, match="version='custom' to set n_target_classes"):
        attack_settings("aa", n_target_classes=3)


def test_unknown_names_are_user_errors():
    model, _, _ = toy(20)
    with pytest.raises(UserError, match="unknown attack 'pgd'; accepted: .*pgd_sat"):
        create_attack("pgd", model)
    with pytest.raises(UserError, match="no setting 'stepz'"):
        attack_settings("pgd_sat", stepz=3)
    with pytest.raises(UserError, match="needs a source model"):
        create_attack("transfer_pgd_trades", model)
    with pytest.raises(UserError, match="custom"):
        attack_settings("aa", attacks=["apgd-ce"])


def test_fgsm_is_one_hand_computed_sign_gradient_step():
    model, x, y = toy(20)
    xr = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(F.cross_entropy(model(xr), y), xr)
    expected = (x + EPS * grad.sign()).clamp(0, 1)
    assert torch.equal(create_attack("fgsm", model, eps=EPS)(x, y), expected)


@pytest.mark.parametrize("name", list_attacks())
def test_every_attack_respects_the_eps_ball_and_image_range(name):
    model, x, y = toy(n=6)
    source, _, _ = toy(n=1, contrast=0.5)
    torch.manual_seed(0)
    x0 = x.clone()
    fast = {"square": {"n_queries": 20}, "aa": {"n_iter": 5, "square_n_queries": 20},
            "square_aa": {"square_n_queries": 20}}  # CPU time; the settings are tested above
    extra = fast.get(name, {})
    adv = create_attack(name, model, eps=EPS, source=source, **extra)(x, y)
    assert torch.equal(x, x0)  # the input is not modified in place
    assert adv.shape == x.shape and adv.dtype == x.dtype and not torch.isnan(adv).any()
    assert (adv - x).abs().max() <= EPS + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert isinstance(create_attack(name, model, source=source), torchattacks.attack.Attack)


def test_cw_margin_loss_equals_hand_computation():
    logits = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, -1.0], [0.0, 2.0, 1.0]])
    labels = torch.tensor([1, 0, 0])
    # -max(z_y - max_{j!=y} z_j + kappa, 0): 3-2+50, 5-0+50, 0-2+50; with kappa 1: max(0-2+1, 0)
    assert cw_margin_loss(logits, labels, kappa=50).tolist() == [-51.0, -55.0, -48.0]
    assert cw_margin_loss(logits, labels, kappa=1).tolist() == [-2.0, -6.0, -0.0]
    # the released attack_eval.py formula (one-hot with -10000 on the true class)
    z, t = torch.randn(7, 10), torch.randint(0, 10, (7,))
    onehot = F.one_hot(t, 10).float()
    real = (onehot * z).sum(1)
    other = ((1 - onehot) * z - onehot * 10000).max(1)[0]
    assert torch.allclose(cw_margin_loss(z, t), -torch.clamp(real - other + 50, min=0))


def test_cw_inf_first_step_is_a_sign_step_on_the_margin_loss():
    model, x, y = toy(20)
    xr = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(cw_margin_loss(model(xr), y).sum(), xr)
    expected = (x + (2 / 255) * grad.sign()).clamp(0, 1)
    assert torch.allclose(CWLinf(model, eps=EPS, steps=1)(x, y), expected)
    released = CWLinf(model, eps=EPS, clamp_every_step=False)(x, y)  # clamps only at the end
    assert (released - x).abs().max() <= EPS + 1e-6 and released.min() >= 0


class _Counting(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_transfer_attack_uses_the_source_gradients_not_the_targets():
    target_net, x, y = toy(20)
    source, _, _ = toy(n=1, contrast=0.5)
    with torch.no_grad():  # a different model: permuted classifier rows
        source[1].weight.copy_(source[1].weight.roll(1, dims=1))
    target = _Counting(target_net)
    torch.manual_seed(3)
    adv = create_attack("transfer_pgd_trades", target, eps=EPS, source=source)(x, y)
    assert target.calls == 0 and target_net[1].weight.grad is None
    torch.manual_seed(3)
    on_source = torchattacks.PGD(source, eps=EPS, alpha=0.003, steps=20)(x, y)
    torch.manual_seed(3)
    on_target = torchattacks.PGD(target_net, eps=EPS, alpha=0.003, steps=20)(x, y)
    assert torch.equal(adv, on_source) and not torch.equal(adv, on_target)


def test_square_is_torchattacks_with_100_queries_and_square_aa_is_autoattacks():
    model, x, y = toy(20)
    square = create_attack("square", model, seed=4)
    assert isinstance(square, torchattacks.Square)
    assert (square.n_queries, square.p_init, square.seed, square.norm) == (100, 0.8, 4, "Linf")
    square_aa = create_attack("square_aa", model)
    assert square_aa.aa.attacks_to_run == ["square"] and square_aa.aa.square.n_queries == 5000


def test_autoattack_resume_file_skips_finished_sub_attacks(tmp_path, monkeypatch):
    model, x, y = toy(n=10)
    state = tmp_path / "aa.json"
    kw = {"version": "custom", "attacks": ["apgd-ce", "apgd-dlr"], "state_path": state}
    atk = create_attack("aa", model, **kw)
    adv = atk(x, y)
    first = atk.robust_flags.clone()
    saved = json.loads(state.read_text())
    assert saved["done"] == ["apgd-ce", "apgd-dlr"]
    assert saved["robust_flags"] == "".join("1" if f else "0" for f in first.tolist())
    assert (model(adv).argmax(1) == y)[first].all()
    again = create_attack("aa", model, **kw)
    monkeypatch.setattr(again.aa, "run_standard_evaluation",
                        lambda *a, **k: pytest.fail("a finished sub-attack was run again"))
    again(x, y)
    assert torch.equal(again.robust_flags, first) and again.restored == ["apgd-ce", "apgd-dlr"]
    with pytest.raises(UserError, match="other points or settings"):
        create_attack("aa", model, **kw)(x[:5], y[:5])


def test_autoattack_adapter_records_sub_attack_results():
    model, x, y = toy(n=10)
    atk = create_attack("aa", model, version="custom", attacks=["apgd-ce"])
    assert isinstance(atk, AutoAttackAdapter)
    adv = atk(x, y)
    robust = (model(adv).argmax(1) == y) & (model(x).argmax(1) == y)
    assert atk.sub_robust == {"apgd-ce": int(robust.sum())}
    assert torch.equal(atk.robust_flags, robust)
    assert PROTOCOL["aa"]["seed"] == 0


def test_autoattack_leaves_no_weight_gradients_and_restores_requires_grad():
    """FAB calls .backward(): the adapter freezes the parameters around AutoAttack."""
    import torch
    from torch import nn

    from ciard_bench.attacks import create_attack

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).eval()
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)               # every point correct, so FAB attacks them all
    atk = create_attack("aa", model, eps=8 / 255, n_classes=10, version="custom",
                        attacks=["fab-t"], n_iter=2)
    atk(x, y)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
