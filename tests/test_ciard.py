"""CIARD (CIARD.md) step by step on tiny models: every loss term by hand, every switch."""
import copy
import math

import pytest
import torch

from ciard_bench.schedules import get_schedule

from toys import fix_adv, kle, rows, softmax, tiny_method

C = 4


def make(epochs=300, steps=3, **opts):
    return tiny_method("ciard", C, epochs, steps, **opts)


def batch(n=8, seed=5):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, C, (n,), generator=g)


def _order(v):
    v = abs(v) if v != 0 else 1e-7
    return math.floor(math.log10(v))


def _reference_logits(method, x, x_adv):
    """The logits CIARD.md says the step uses, computed on copies (train-mode student)."""
    s = copy.deepcopy(method.student).train()
    tn = copy.deepcopy(method.clean_teacher).eval()
    ta = copy.deepcopy(method.robust_teacher)
    with torch.no_grad():
        return s(x), s(x_adv), tn(x), tn(x_adv), ta(x_adv)


def _labels_half_wrong(method, x_adv):
    with torch.no_grad():
        pred = method.clean_teacher.eval()(x_adv).argmax(1)
    y = pred.clone()
    y[::2] = (pred[::2] + 1) % C       # the clean teacher errs on even rows
    return y


def test_every_loss_term_matches_hand_computation():
    m = make()
    m.begin_epoch(1)
    m.train()
    x, _ = batch()
    x_adv = fix_adv(m, x)
    y = _labels_half_wrong(m, x_adv)
    z_s, z_sa, z_n, z_na, z_ta = _reference_logits(m, x, x_adv)
    out = m(x, y)
    p_a = [softmax(r) for r in rows(z_ta)]
    p_n = [softmax(r) for r in rows(z_n)]
    l_adv, l_nat = kle(p_a, rows(z_sa)), kle(p_n, rows(z_s))
    wrong = [i for i in range(len(y)) if max(range(C), key=lambda c: z_na[i, c]) != y[i]]
    assert wrong == [0, 2, 4, 6]
    l_push = kle([softmax(rows(z_na)[i]) for i in wrong], [rows(z_sa)[i] for i in wrong], T=5.0)
    scale = 10.0 ** (min(_order(l_adv), _order(l_nat)) - _order(l_push))
    assert out["loss_adv"].item() == pytest.approx(l_adv, rel=1e-5)
    assert out["loss_nat"].item() == pytest.approx(l_nat, rel=1e-5)
    assert out["loss_push"].item() == pytest.approx(l_push, rel=1e-5)
    assert out["push_scale"].item() == pytest.approx(scale)
    assert out["push_fraction"].item() == pytest.approx(0.5)
    assert out["loss"].item() == pytest.approx(l_nat + l_adv - scale * l_push, rel=1e-5)
    assert "robust_teacher_loss" not in out        # epoch 1: ITT not active


def test_temperature_update_follows_entropy_balance():
    m = make()
    m.begin_epoch(1)
    m.tau_a.fill_(2.0)
    m.tau_n.fill_(3.0)
    x, y = batch()
    x_adv = fix_adv(m, x)
    _, _, z_n, _, z_ta = _reference_logits(m, x, x_adv)
    out = m(x, y)
    ent = lambda probs: sum(p * math.log(p + 1e-5) for row in probs for p in row) / (len(probs) * C)
    h_a = ent([softmax(r, 2.0) for r in rows(z_ta)])
    h_n = ent([softmax(r, 3.0) for r in rows(z_n)])
    sign = lambda v: (v > 0) - (v < 0)
    assert m.tau_a.item() == pytest.approx(2.0 - 0.001 * sign(h_a / h_n - 1), abs=1e-6)
    assert m.tau_n.item() == pytest.approx(3.0 - 0.001 * sign(h_n / h_a - 1), abs=1e-6)
    # the losses of this step used the temperatures before the update
    assert out["loss_adv"].item() == pytest.approx(kle([softmax(r, 2.0) for r in rows(z_ta)],
                                                       rows(_reference_logits(m, x, x_adv)[1])), rel=1e-4)


def test_temperatures_stay_in_bounds():
    m = make(temp_rate=5.0)
    m.begin_epoch(1)
    x, y = batch()
    for _ in range(3):
        m(x, y)
        assert 1.0 <= m.tau_a.item() <= 10.0 and 1.0 <= m.tau_n.item() <= 10.0


def test_push_temperature_and_lambda_push():
    x, _ = batch()
    results = {}
    for key, opts in {"base": {}, "t4": {"push_temperature": 4.0}, "lam": {"lambda_push": 2.5}}.items():
        m = make(**opts)
        m.begin_epoch(1)
        x_adv = fix_adv(m, x)
        y = _labels_half_wrong(m, x_adv)
        _, z_sa, _, z_na, _ = _reference_logits(m, x, x_adv)
        results[key] = (m(x, y), z_sa, z_na, y)
    base, t4, lam = results["base"][0], results["t4"][0], results["lam"][0]
    _, z_sa, z_na, y = results["t4"]
    wrong = [i for i in range(len(y)) if z_na[i].argmax() != y[i]]
    hand_t4 = kle([softmax(rows(z_na)[i]) for i in wrong], [rows(z_sa)[i] for i in wrong], T=4.0)
    assert t4["loss_push"].item() == pytest.approx(hand_t4, rel=1e-5)
    assert t4["loss_push"].item() != pytest.approx(base["loss_push"].item())
    extra = (lam["loss"] - base["loss"]).item()
    assert extra == pytest.approx(-1.5 * (base["push_scale"] * base["loss_push"]).item(), rel=1e-4)


def test_no_push_ablation():
    m = make(push=False)
    m.begin_epoch(1)
    x, y = batch()
    out = m(x, y)
    assert "loss_push" not in out
    assert out["loss"].item() == pytest.approx((out["loss_adv"] + out["loss_nat"]).item(), rel=1e-6)


def test_empty_push_mask_gives_zero_push():
    m = make()
    m.begin_epoch(1)
    x, _ = batch()
    x_adv = fix_adv(m, x)
    with torch.no_grad():
        y = m.clean_teacher(x_adv).argmax(1)         # the clean teacher is right everywhere
    out = m(x, y)
    assert out["loss_push"].item() == 0.0
    assert out["loss"].item() == pytest.approx((out["loss_adv"] + out["loss_nat"]).item(), rel=1e-6)


def test_mtard_adaptive_weights_are_used():
    m = make(loss_weights="mtard_adaptive")
    m.begin_epoch(1)
    x, y = batch()
    m(x, y)                                          # first step: L0 recorded, weights stay 1/2
    assert m.w_adv.item() == pytest.approx(0.5)
    m.student.fc.bias.data += 1.0                    # change the losses
    out = m(x, y)
    assert m.w_adv.item() != pytest.approx(0.5)
    expect = m.w_nat * out["loss_nat"] + m.w_adv * out["loss_adv"] - out["push_scale"] * out["loss_push"]
    assert out["loss"].item() == pytest.approx(expect.item(), rel=1e-5)
    fixed = make()
    fixed.begin_epoch(1)
    fixed(x, y)
    fixed(x, y)
    assert fixed.w_adv.item() == 0.5                 # 'fixed' (released) never touches the weights


def _all_params(m):
    return [p for mod in (m.student, m.clean_teacher, m.robust_teacher) for p in mod.parameters()]


def _bn_stats(m):
    return [b.clone() for mod in (m.student, m.clean_teacher, m.robust_teacher) for b in mod.buffers()]


@pytest.mark.parametrize("inner", ["released", "paper"])
def test_inner_maximisation_touches_no_grad_no_bn_and_stays_in_ball(inner):
    m = make(inner=inner, steps=5)
    m.begin_epoch(1)
    m.train()
    for p in m.student.parameters():                 # requires_grad as in training
        assert p.requires_grad
    x, y = batch()
    before = _bn_stats(m)
    x_adv = m._adversarial(x, y)
    assert all(p.grad is None for p in _all_params(m))
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_stats(m)))
    assert (x_adv - x).abs().max().item() <= 8 / 255 + 1e-6
    assert x_adv.min().item() >= 0 and x_adv.max().item() <= 1
    assert (x_adv - x).abs().max().item() > 4 / 255   # it moved
    assert m.student.training and m.student.bn.training   # mode restored


def test_paper_inner_maximisation_queries_the_clean_teacher():
    calls = {}
    x, y = batch()
    for inner in ("released", "paper"):
        m = make(inner=inner, steps=4)
        m.begin_epoch(1)
        count = [0]
        m.clean_teacher.register_forward_hook(lambda *a: count.__setitem__(0, count[0] + 1))
        torch.manual_seed(0)
        m._adversarial(x, y)
        calls[inner] = count[0]
    assert calls == {"released": 0, "paper": 4}


def test_student_loss_sends_no_gradient_into_teachers():
    m = make(epochs=6)                               # ITT from epoch 2
    x, y = batch()
    for epoch in (1, 3):
        m.begin_epoch(epoch)
        m.train()
        out = m(x, y)
        out["loss"].backward()
        assert all(p.grad is None for p in m.clean_teacher.parameters())
        assert all(p.grad is None for p in m.robust_teacher.parameters())
        assert any(p.grad is not None for p in m.student.parameters())
        m.student.zero_grad(set_to_none=True)
    assert out["robust_teacher_loss"].requires_grad  # ITT loss exists and reaches the teacher
    out["robust_teacher_loss"].backward()
    assert all(p.grad is not None for p in m.robust_teacher.parameters())


def test_itt_schedule_and_teacher_lr():
    m = make()
    assert m.itt_start == 50
    (tt,) = m.teacher_trainings()
    assert tt.name == "robust_teacher" and tt.momentum == 0.1 and tt.weight_decay == 2e-4
    assert tt.lr_at(49) == 0.0
    assert tt.lr_at(50) == pytest.approx(1e-4)
    assert tt.lr_at(175) == pytest.approx(1e-4 * 0.5 * math.exp(-0.01 * 0.25))
    assert tt.lr_at(300) == pytest.approx(0.0, abs=1e-20)
    m.begin_epoch(50)
    assert not m.itt_active and not m.robust_teacher.training
    m.begin_epoch(51)
    assert m.itt_active and m.robust_teacher.training
    assert make(epochs=6).itt_start == 1
    assert make(itt_start_epoch=7).itt_start == 7
    assert make(teacher_lr=1e-5).teacher_trainings()[0].lr_at(50) == pytest.approx(1e-5)


def test_no_itt_ablation_never_trains_the_teacher():
    m = make(itt=False)
    assert m.teacher_trainings() == []
    m.begin_epoch(200)
    x, y = batch()
    assert "robust_teacher_loss" not in m(x, y)
    assert not any(k.startswith(("robust_teacher.", "clean_teacher.")) for k in m.checkpoint_state())
    with_itt = make()
    assert any(k.startswith("robust_teacher.") for k in with_itt.checkpoint_state())
    assert not any(k.startswith("clean_teacher.") for k in with_itt.checkpoint_state())


@pytest.mark.parametrize("bn_mode,changes", [("eval_when_frozen", False), ("train_always", True)])
def test_robust_teacher_bn_while_frozen(bn_mode, changes):
    m = make(robust_teacher_bn=bn_mode)
    m.begin_epoch(1)
    before = m.robust_teacher.bn.running_mean.clone()
    x, y = batch()
    m(x, y)
    assert (not torch.equal(before, m.robust_teacher.bn.running_mean)) == changes


def test_rate_decay_released_applies_every_batch_of_milestone_epochs():
    m = make()
    x, y = batch()
    m.begin_epoch(214)
    m(x, y)
    assert m.temp_rate.item() == pytest.approx(1e-3)
    m.begin_epoch(215)
    m(x, y)
    m(x, y)
    assert m.temp_rate.item() == pytest.approx(1e-5)
    assert m.weight_rate.item() == pytest.approx(0.025e-2)


def test_rate_decay_once_per_milestone_and_idempotent():
    m = make(rate_decay="once")
    x, y = batch()
    m.begin_epoch(215)
    m.begin_epoch(215)                               # resume mid-epoch calls it again
    m(x, y)
    m(x, y)
    assert m.temp_rate.item() == pytest.approx(1e-4)
    m.begin_epoch(285)
    assert m.temp_rate.item() == pytest.approx(1e-6)


def test_schedules_by_hand():
    released, cosine, steps = (get_schedule(n) for n in ("ciard_released", "cosine", "multistep"))
    assert released(149, 300, 0.1) == 0.1
    assert released(150, 300, 0.1) == pytest.approx(0.1)
    assert released(225, 300, 0.1) == pytest.approx(0.1 * 0.5 * math.exp(-0.01 * 0.25))
    assert cosine(1, 300, 0.1) == pytest.approx(0.1)
    assert cosine(151, 300, 0.1) == pytest.approx(1e-5 + (0.1 - 1e-5) * 0.5)
    assert [steps(e, 300, 0.1) for e in (215, 216, 260, 261, 286)] == pytest.approx([0.1, 0.01, 0.01, 0.001, 1e-4])
    assert released(3, 6, 0.1) == pytest.approx(0.1)   # milestones scale with the run length
    assert released(2, 6, 0.1) == 0.1


# -- adaptive scalars in float64, as the released code's Python floats (issue 12, item 3) -----------

def _released_tau(signs, rate=0.001, lo=1.0, hi=10.0):
    """The released update, in Python floats: tau = clip(tau - rate * sign(...).item(), lo, hi)."""
    tau = 1.0
    for s in signs:
        tau = max(min(hi, tau - rate * float(s)), lo)
    return tau


def test_two_temperature_updates_follow_the_released_python_float_arithmetic():
    m = make(loss_weights="mtard_adaptive")
    m.begin_epoch(1)
    x, y = batch()
    fix_adv(m, x)
    outs = [m(x, y), m(x, y)]
    for name in ("tau_a", "tau_n", "temp_rate", "weight_rate", "w_adv", "w_nat", "l0_adv", "l0_nat"):
        assert getattr(m, name).dtype == torch.float64, name
    # opposite signs each step: one temperature rose twice by 0.001, the other stayed clipped at 1
    up = max(m.tau_a.item(), m.tau_n.item())
    assert min(m.tau_a.item(), m.tau_n.item()) == 1.0
    assert up == _released_tau([-1, -1]) == 1.0 + 0.001 + 0.001        # 1.002 as Python holds it
    f32 = torch.ones(())
    f32 += 0.001
    f32 += 0.001
    assert up != f32.item()                                            # float32 state: 1.0020001
    # the losses stay float32, as Python float * float32 tensor gives
    for out in outs:
        assert out["loss"].dtype == out["loss_adv"].dtype == torch.float32
    # the MTARD weights follow the released float arithmetic on the losses' .item() values
    l0 = (outs[0]["loss_adv"].item(), outs[0]["loss_nat"].item())
    w_adv = w_nat = 0.5
    for out in outs:
        h_adv, h_nat = out["loss_adv"].item() / l0[0], out["loss_nat"].item() / l0[1]
        mean = (h_adv + h_nat) / 2
        r_adv, r_nat = h_adv / mean, h_nat / mean
        new_nat = max(0.0, w_nat - 0.025 * (w_nat - r_nat / (r_adv + r_nat)))
        new_adv = max(0.0, w_adv - 0.025 * (w_adv - r_adv / (r_adv + r_nat)))
        w_adv, w_nat = new_adv / (new_adv + new_nat), new_nat / (new_adv + new_nat)
    assert (m.w_adv.item(), m.w_nat.item()) == (w_adv, w_nat)


def test_float64_state_survives_a_checkpoint_exactly(tmp_path):
    from ciard_bench.checkpoint import load_checkpoint, save_checkpoint

    m = make()
    m.begin_epoch(1)
    x, y = batch()
    m(x, y)
    m(x, y)
    save_checkpoint({"method_state": m.checkpoint_state()}, tmp_path / "c.pt")
    fresh = make()
    fresh.load_checkpoint_state(load_checkpoint(tmp_path / "c.pt")["method_state"])
    for name in ("tau_a", "tau_n", "temp_rate", "w_adv", "w_nat", "l0_adv", "l0_nat"):
        a, b = getattr(m, name), getattr(fresh, name)
        assert b.dtype == torch.float64 and (torch.equal(a, b) or (a.isnan() and b.isnan())), name
    # a checkpoint written before the change (float32 state) still loads, exactly widened
    old = {k: (v.float() if v.dtype == torch.float64 else v) for k, v in m.checkpoint_state().items()}
    fresh.load_checkpoint_state(old)
    assert fresh.tau_a.dtype == torch.float64 and fresh.tau_a.item() == m.tau_a.float().item()


def test_float64_state_falls_back_to_float32_with_a_warning():
    m = make()
    m.to(torch.device("cpu"), memory_format=torch.channels_last)
    assert m.tau_a.dtype == torch.float64                              # CPU/CUDA keep float64
    with pytest.warns(UserWarning, match="mps has no float64.*float32"):
        try:
            m.to("mps")
        except RuntimeError:                                           # a machine without MPS
            pass
    assert m.tau_a.dtype == torch.float32 and m.w_adv.dtype == torch.float32
    m.to("cpu")
    m.begin_epoch(1)
    x, y = batch()
    assert m(x, y)["loss"].dtype == torch.float32
