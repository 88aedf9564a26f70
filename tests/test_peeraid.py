"""PeerAiD (docs/methods.md#peeraid) on tiny models, against the released training step.

References written independently of ``ciard_bench/methods/peeraid.py``:

* ``_released_step``: ``main.py::train_kd`` on one batch with plain torch ops in the script's
  own order (the peer's eval-mode clean forward, ``LinfPeerAttack`` with its Gaussian start and
  summed ``KLDivLoss(reduce=False)``, the train-mode forwards, ``nn.KLDivLoss()``'s legacy mean,
  one backward of loss_peer + loss_student), on copies of the models from the same random
  state: the adversarial batch, both losses, both models' gradients and BatchNorm statistics,
  and (through the engine's ``train_step``) both SGD updates must agree;
* ``_released_swa`` / ``_released_bn_update``: ``utils/SWA.py::moving_average`` and
  ``bn_update`` with their own ``.data`` arithmetic;
* plain-Python oracles (``toys``) on logits for every loss term.
"""
import copy
import json
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ciard_bench.api import Context, Method, create_method, create_model
from ciard_bench.build import Run
from ciard_bench.config import TrainConfig, resolve
from ciard_bench.methods import get_method, list_methods
from ciard_bench.methods.peeraid import PeerAiD
from ciard_bench.runs import RunDir
from ciard_bench.schedules import get_schedule
from ciard_bench.train import train_step
from ciard_bench.utils import recompute_batch_norm

from toys import Tiny, ce, fix_adv, kl, log_softmax, rows, softmax, tiny_method

C = 4
EPS, STEP = 8 / 255, 2 / 255


def make(classes=C, epochs=300, steps=3, **opts):
    m = tiny_method("peeraid", classes, epochs, steps, **opts)
    m.begin_epoch(1)
    return m.train()


def batch(n=8, seed=5, classes=C):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    return torch.rand(n, 3, 8, 8, generator=g), y[torch.randperm(n, generator=g)]


def approx(v):
    return pytest.approx(v, rel=1e-5, abs=1e-9)


# -- the released step with plain torch ops ------------------------------------------------------
def _legacy_kl(log_q, p):
    """``nn.KLDivLoss()`` as the script builds it: the legacy default reduction (mean over B x C)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nn.KLDivLoss(reduction="mean")(log_q, p)


def _released_attack(s, peer_logits, x, steps):
    """LinfPeerAttack.perturb: student in eval mode, x + 0.001 N, summed KL to the peer's label."""
    s.eval()
    cur = x.detach() + 0.001 * torch.randn(x.shape).detach()
    for _ in range(steps):
        cur.requires_grad_()
        with torch.enable_grad():
            loss_kl = nn.KLDivLoss(reduction="none")(F.log_softmax(s(cur), dim=1),
                                                      F.softmax(peer_logits, dim=1))
            loss_kl = torch.sum(loss_kl)
        grad = torch.autograd.grad(loss_kl, [cur])[0]
        cur = cur.detach() + STEP * torch.sign(grad.detach())
        cur = torch.min(torch.max(cur, x - EPS), x + EPS)
        cur = torch.clamp(cur, 0, 1).detach()
    return cur


def _released_step(s, p, x, y, steps, T=5.0, l1=0.0, l2=1.0, l3=1.0, g1=1.0, g2=0.1, Tr=1.0):
    """main.py::train_kd up to the backward; returns (loss_peer, loss_student, x_adv)."""
    p.eval()
    with torch.no_grad():
        peer_logits = p(x)
    p.train()
    adv = _released_attack(s, peer_logits, x, steps)
    s.train()
    adv_outputs = p(adv)
    student_logit_target = s(adv)
    loss_peer = F.cross_entropy(adv_outputs, y) * g1 + _legacy_kl(
        F.log_softmax(adv_outputs / Tr, dim=1), F.softmax(student_logit_target / Tr, dim=1)) * g2 * Tr * Tr
    peer_outputs = adv_outputs.clone().detach()
    student_outputs = s(adv)
    logit_nat = s(x)
    loss_student = (F.cross_entropy(student_outputs, y) * l1
                    + _legacy_kl(F.log_softmax(student_outputs / T, dim=1), F.softmax(peer_outputs / T, dim=1)) * (l2 * T * T)
                    + _legacy_kl(F.log_softmax(student_outputs / T, dim=1), F.softmax(logit_nat / T, dim=1)) * (l3 * T * T))
    return loss_peer, loss_student, adv


OPTION_CASES = [
    ({}, {}),
    ({"temperature": 3.0, "ce_weight": 0.3, "peer_weight": 2.0, "self_weight": 0.5,
      "peer_ce_weight": 0.7, "peer_kd_weight": 2.5, "peer_temperature": 2.0},
     {"T": 3.0, "l1": 0.3, "l2": 2.0, "l3": 0.5, "g1": 0.7, "g2": 2.5, "Tr": 2.0}),
]


@pytest.mark.parametrize("opts,kw", OPTION_CASES)
def test_the_step_is_the_released_step(opts, kw):
    m = make(**opts)
    s, p = copy.deepcopy(m.student), copy.deepcopy(m.peer)
    x, y = batch()
    captured = {}
    real = m._adversarial
    m._adversarial = lambda *a: captured.setdefault("x_adv", real(*a))
    torch.manual_seed(11)
    out = m(x, y)
    out["loss"].backward()
    out["peer_loss"].backward()
    torch.manual_seed(11)
    loss_peer, loss_student, x_adv = _released_step(s, p, x, y, 3, **kw)
    (loss_peer + loss_student).backward()
    assert torch.equal(captured["x_adv"], x_adv)                       # the attack, bit for bit
    assert out["loss_student"].item() == pytest.approx(loss_student.item(), rel=1e-6, abs=1e-9)
    assert out["peer_loss"].item() == pytest.approx(loss_peer.item(), rel=1e-6, abs=1e-9)
    for mine, ref in ((m.student, s), (m.peer, p)):                    # both gradients
        # atol: a bias before BatchNorm has a zero gradient, float noise of ~1e-8 either way
        scale = max(q.grad.abs().max().item() for q in ref.parameters())
        for (k, a), b in zip(mine.named_parameters(), ref.parameters()):
            assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-6 * scale), k
        for (k, a), b in zip(mine.named_buffers(), ref.buffers()):     # BatchNorm statistics
            assert torch.allclose(a.double(), b.double(), rtol=1e-6, atol=1e-8), k
    assert m.peer.training                                              # left in train mode, as there


def test_gamma2_defaults_to_the_cifar10_and_cifar100_scripts():
    assert make(classes=10).gamma2 == 0.1 and make(classes=C).gamma2 == 0.1
    assert make(classes=100).gamma2 == 1.0
    assert make(classes=100, peer_kd_weight=0.25).gamma2 == 0.25


def test_a_100_class_step_is_the_cifar100_script():
    m = make(classes=100)
    s, p = copy.deepcopy(m.student), copy.deepcopy(m.peer)
    x, y = batch(classes=100)
    torch.manual_seed(3)
    out = m(x, y)
    torch.manual_seed(3)
    loss_peer, loss_student, _ = _released_step(s, p, x, y, 3, g2=1.0)
    assert out["peer_loss"].item() == pytest.approx(loss_peer.item(), rel=1e-6)
    assert out["loss_student"].item() == pytest.approx(loss_student.item(), rel=1e-6)


def _runlike(m, lr=0.1, peer_lr=0.1):
    cfg = resolve(TrainConfig(method="peeraid"))
    return Run(cfg, torch.device("cpu"), None, m,
               torch.optim.SGD(m.student.parameters(), lr=lr, momentum=0.9, weight_decay=2e-4),
               {"peer": torch.optim.SGD(m.peer.parameters(), lr=peer_lr, momentum=0.9, weight_decay=2e-4)},
               torch.amp.GradScaler("cpu", enabled=False), None, None)


def test_the_engine_step_updates_student_and_peer_as_the_script():
    """Two steps of the engine's ``train_step`` (student step, then the peer as a
    TeacherTraining) against the script: one backward of loss_peer + loss_student, both SGD
    steps (0.1, momentum 0.9, weight decay 2e-4); the second step sees the momenta."""
    m = make()
    s, p = copy.deepcopy(m.student), copy.deepcopy(m.peer)
    run = _runlike(m)
    trainings = m.teacher_trainings()
    assert [(t.name, t.loss_key, t.momentum, t.weight_decay) for t in trainings] == \
        [("peer", "peer_loss", 0.9, 2e-4)]
    opt_s = torch.optim.SGD(s.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    opt_p = torch.optim.SGD(p.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    for k in range(2):
        x, y = batch(seed=20 + k)
        torch.manual_seed(7 + k)
        train_step(run, x, y, trainings)
        torch.manual_seed(7 + k)
        opt_s.zero_grad()
        opt_p.zero_grad()
        loss_peer, loss_student, _ = _released_step(s, p, x, y, 3)
        (loss_peer + loss_student).backward()
        opt_p.step()
        opt_s.step()
    for mine, ref in ((m.student, s), (m.peer, p)):
        for (k, a), b in zip(mine.state_dict().items(), ref.state_dict().values()):
            assert torch.allclose(a.double(), b.double(), rtol=1e-6, atol=1e-8), k


# -- every term by plain-Python oracles --------------------------------------------------------------
def _logits(m, x, x_adv):
    with torch.no_grad():
        s, p = copy.deepcopy(m.student).train(), copy.deepcopy(m.peer)
        return {"s": rows(s(x)), "sa": rows(s(x_adv)), "pc": rows(p.eval()(x)), "pa": rows(p.train()(x_adv))}


def _klm(targets, students, T=1.0, batchmean=False):
    """The KL of the released nn.KLDivLoss(): summed over rows and classes, / (B C) (or / B)."""
    total = sum(kl(softmax(t, T), log_softmax(z, T)) for t, z in zip(targets, students))
    return total / (len(targets) * (1 if batchmean else len(targets[0])))


@pytest.mark.parametrize("reduction", ["mean", "batchmean"])
def test_loss_terms_by_hand(reduction):
    m = make(temperature=2.0, ce_weight=0.4, peer_weight=1.5, self_weight=0.75,
             peer_ce_weight=0.8, peer_kd_weight=0.3, peer_temperature=3.0, kl_reduction=reduction).double()
    x, y = batch()
    x = x.double()                       # float64: KL of near-equal rows cancels in float32
    r = _logits(m, x, fix_adv(m, x))
    bm, n = reduction == "batchmean", len(y)
    cel = sum(ce(r["sa"][i], y[i]) for i in range(n)) / n
    kd_peer = _klm(r["pa"], r["sa"], 2.0, bm)                      # KL(P(x') || S(x')) at T
    kd_self = _klm(r["s"], r["sa"], 2.0, bm)                       # KL(S(x) || S(x')) at T
    peer_ce = sum(ce(r["pa"][i], y[i]) for i in range(n)) / n
    peer_kd = _klm(r["sa"], r["pa"], 3.0, bm)                      # KL(S(x') || P(x')) at Tp
    out = m(x, y)
    student = 0.4 * cel + 1.5 * 4 * kd_peer + 0.75 * 4 * kd_self
    assert out["loss_student"].item() == approx(student)
    assert out["loss"].item() == approx(student + 0.3 * 9 * peer_kd)      # + L_P's term through S
    assert out["peer_loss"].item() == approx(0.8 * peer_ce + 0.3 * 9 * peer_kd)
    assert (out["loss_ce"].item(), out["loss_kd_peer"].item(), out["loss_kd_self"].item(),
            out["peer_ce"].item(), out["peer_kd"].item()) == \
        (approx(cel), approx(kd_peer), approx(kd_self), approx(peer_ce), approx(peer_kd))
    acc = sum(max(range(C), key=lambda k: r["pa"][i][k]) == int(y[i]) for i in range(n)) / n
    assert out["peer_adv_acc"].item() == approx(acc)
    assert all(v.requires_grad == (k in ("loss", "peer_loss")) for k, v in out.items())


def test_reductions_differ_by_the_number_of_classes():
    x, y = batch()
    values = {}
    for reduction in ("mean", "batchmean"):
        m = make(kl_reduction=reduction)
        fix_adv(m, x)
        out = m(x, y)
        values[reduction] = (out["loss_kd_peer"].item(), out["loss_kd_self"].item(), out["peer_kd"].item())
    assert values["batchmean"] == pytest.approx([C * v for v in values["mean"]], rel=1e-5)


# -- the inner maximisation ----------------------------------------------------------------------
def test_attack_objective_start_mode_and_queries(monkeypatch):
    import ciard_bench.methods.peeraid as module
    m = make(steps=2)
    x, y = batch()
    seen = {}
    real = module.pgd

    def spy(loss_fn, x_in, **kw):
        seen.update(kw, student_training=m.student.training, peer_training=m.peer.training)
        calls = {"student": 0, "peer": 0}
        hooks = [getattr(m, k).register_forward_hook(lambda *a, k=k: calls.__setitem__(k, calls[k] + 1))
                 for k in calls]
        x0 = torch.rand_like(x_in)
        with torch.no_grad():
            seen["value"] = loss_fn(x0).item()
            for h in hooks:
                h.remove()
            s0 = rows(m.student(x0))                       # eval mode: as inside the attack
            pc = rows(copy.deepcopy(m.peer).eval()(x_in))  # the peer's CLEAN output, eval mode
        seen["hand"] = sum(kl(softmax(pc[i]), log_softmax(s0[i])) for i in range(len(y)))   # SUMMED
        seen["calls"] = calls
        bn = (m.student.bn.running_mean.clone(), m.peer.bn.running_mean.clone())
        out = real(loss_fn, x_in, **kw)
        seen["bn_moved"] = not (torch.equal(bn[0], m.student.bn.running_mean)
                                and torch.equal(bn[1], m.peer.bn.running_mean))
        return out

    monkeypatch.setattr(module, "pgd", spy)
    peer_bn = m.peer.bn.running_mean.clone()
    m(x, y)
    assert seen["start"] == "gauss" and not seen.get("clamp_start", False)
    assert not seen["student_training"]
    assert seen["peer_training"]          # back in train mode, as the script (never queried here)
    assert seen["value"] == pytest.approx(seen["hand"], rel=1e-4)
    assert seen["calls"] == {"student": 1, "peer": 0}              # the peer's label is fixed
    assert not seen["bn_moved"]
    assert (seen["eps"], seen["alpha"], seen["steps"]) == (EPS, STEP, 2)
    assert m.student.training and m.student.bn.training            # restored
    # the peer's BatchNorm moved once, by its train-mode forward on x' (not the clean one)
    assert not torch.equal(peer_bn, m.peer.bn.running_mean)


def test_attack_start_is_gaussian_and_not_clamped():
    m = make(steps=0)
    x, y = batch()
    x[:, 0], x[:, 1] = 0.0, 1.0
    with torch.no_grad():
        x_adv = m._adversarial(x, y, m.peer.eval()(x))
    delta = (x_adv - x).abs().max().item()
    assert 0 < delta < 0.01
    assert x_adv.min().item() < 0 and x_adv.max().item() > 1


# -- the quirk switches ------------------------------------------------------------------------------
def _grads_and_out(**opts):
    m = make(**opts)
    x, y = batch()
    fix_adv(m, x)
    out = m(x, y)
    out["loss"].backward()
    return m, out, [q.grad.clone() for q in m.student.parameters()]


def test_peer_target_grad_switch_is_the_peer_loss_through_the_student():
    m_on, out_on, g_on = _grads_and_out()
    m_off, out_off, g_off = _grads_and_out(peer_target_grad=False)
    assert out_on["loss_student"].item() == pytest.approx(out_off["loss_student"].item(), rel=1e-6)
    assert out_off["loss"].item() == pytest.approx(out_off["loss_student"].item(), rel=1e-7)
    # by hand: the difference is g2 Tp^2 KLm(softmax(S(x')) || softmax(P(x'))) through S(x') only
    m = make()
    x, y = batch()
    x_adv = fix_adv(m, x)
    with torch.no_grad():
        z_pa = m.peer.train()(x_adv)
    z_st = m.student(x_adv)
    through = 0.1 * F.kl_div(F.log_softmax(z_pa, 1), F.softmax(z_st, 1), reduction="sum") / z_st.numel()
    extra = torch.autograd.grad(through, list(m.student.parameters()), allow_unused=True)
    assert any(e is not None and e.abs().max() > 0 for e in extra)
    for a, b, e in zip(g_on, g_off, extra):
        e = torch.zeros_like(a) if e is None else e
        assert torch.allclose(a - b, e, atol=1e-7)
    assert out_on["loss"].item() - out_on["loss_student"].item() == pytest.approx(through.item(), rel=1e-4)


def test_self_target_grad_switch():
    _, out_on, g_on = _grads_and_out()
    _, out_off, g_off = _grads_and_out(self_target_grad=False)
    assert out_on["loss"].item() == pytest.approx(out_off["loss"].item(), rel=1e-6)
    assert not all(torch.allclose(a, b) for a, b in zip(g_on, g_off))
    m = make()
    x, y = batch()
    x_adv = fix_adv(m, x)
    with torch.no_grad():
        m.student(x_adv)
        m.student(x_adv)                               # the released forwards' BN updates
    z_sa, z_s = m.student(x_adv).detach(), m.student(x)
    through = 25 * F.kl_div(F.log_softmax(z_sa / 5, 1), F.softmax(z_s / 5, 1), reduction="sum") / z_s.numel()
    extra = torch.autograd.grad(through, list(m.student.parameters()), allow_unused=True)
    for a, b, e in zip(g_on, g_off, extra):
        e = torch.zeros_like(a) if e is None else e
        assert torch.allclose(a - b, e, atol=1e-7)


def test_bn_forwards_switch_changes_only_batchnorm_statistics():
    x, y = batch()
    res = {}
    for forwards in ("released", "once"):
        m = make(bn_forwards=forwards)
        x_adv = fix_adv(m, x)
        calls = []
        h = m.student.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].data_ptr()))
        out = m(x, y)
        h.remove()
        (out["loss"] + out["peer_loss"]).backward()
        res[forwards] = (calls.count(x_adv.data_ptr()), calls.count(x.data_ptr()), out["loss"].item(),
                         [q.grad.clone() for q in m.student.parameters()], m.student.bn.running_mean.clone())
    assert res["released"][:2] == (2, 1) and res["once"][:2] == (1, 1)
    assert res["released"][2] == pytest.approx(res["once"][2], rel=1e-6)
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(res["released"][3], res["once"][3]))
    assert not torch.allclose(res["released"][4], res["once"][4])


def test_no_host_sync_and_float32_outputs(monkeypatch):
    m = make(steps=1)
    x, y = batch()

    def forbidden(*a, **k):
        raise AssertionError("host sync in forward")

    for attr in ("item", "tolist", "__bool__", "__float__", "__int__", "nonzero"):
        monkeypatch.setattr(torch.Tensor, attr, forbidden)
    out = m(x, y)
    monkeypatch.undo()
    assert all(v.dtype == torch.float32 for v in out.values())


# -- the peer: a fresh model of the student's architecture, trained, checkpointed -------------------
def test_the_peer_is_a_fresh_model_of_the_students_architecture():
    torch.manual_seed(0)
    create_model("resnet8", 10)
    second = create_model("resnet8", 10)           # what the next build from this stream gives
    torch.manual_seed(0)
    student = create_model("resnet8", 10)
    m = create_method("peeraid", student, {}, Context(10, 300))
    peer = m.peer.state_dict()
    assert peer.keys() == second.state_dict().keys()
    assert all(torch.equal(peer[k], v) for k, v in second.state_dict().items())
    assert not torch.equal(peer["conv1.weight"], student.state_dict()["conv1.weight"])
    assert type(m.peer) is type(student) and m.peer is not student
    assert all(q.requires_grad for q in m.peer.parameters())
    # no ciard_arch (a model not built by create_model): each layer's reset_parameters()
    tiny = make()
    assert not torch.equal(tiny.peer.conv.weight, tiny.student.conv.weight)
    state = tiny.checkpoint_state()
    assert {"peer.conv.weight", "swa_student.conv.weight", "swa_count"} <= set(state)


def test_peer_learning_rate_follows_the_released_milestones():
    (t,) = make(epochs=300).teacher_trainings()
    assert [t.lr_at(e) for e in (1, 214, 215, 259, 260, 284, 285, 300)] == \
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001]      # lr /= 10, as the script
    student = get_schedule("peeraid_released")
    for epochs in (2, 3, 7, 30, 300, 600):
        (t,) = make(epochs=epochs).teacher_trainings()
        assert [t.lr_at(e) for e in range(1, epochs + 1)] == [student(e, epochs, 0.1) for e in range(1, epochs + 1)]
    (t,) = make(peer_lr=0.05, peer_momentum=0.5, peer_weight_decay=1e-3).teacher_trainings()
    assert (t.lr_at(1), t.lr_at(215), t.momentum, t.weight_decay) == (0.05, 0.005, 0.5, 1e-3)


def test_released_training_settings_and_registry():
    assert "peeraid" in list_methods()
    cls = get_method("peeraid")
    assert cls.label == "PeerAiD" and cls.teachers == ()
    assert cls.train_defaults == {"epochs": 300, "batch_size": 128, "lr": 0.1, "momentum": 0.9,
                                  "weight_decay": 2e-4, "schedule": "peeraid_released"}
    cfg = resolve(TrainConfig(method="peeraid"))
    assert (cfg.epochs, cfg.lr, cfg.weight_decay, cfg.schedule) == (300, 0.1, 2e-4, "peeraid_released")
    assert "github.com/jaewonalive/PeerAiD" in sys.modules[cls.__module__].__doc__
    o = cls.Options()
    assert (o.temperature, o.ce_weight, o.peer_weight, o.self_weight, o.peer_ce_weight,
            o.peer_kd_weight, o.peer_temperature) == (5.0, 0.0, 1.0, 1.0, 1.0, None, 1.0)
    assert (o.peer_lr, o.peer_momentum, o.peer_weight_decay, o.kl_reduction) == (0.1, 0.9, 2e-4, "mean")
    assert o.peer_target_grad and o.self_target_grad and o.bn_forwards == "released"
    assert (o.swa, o.swa_start_epoch, o.swa_every, o.swa_bn, o.evaluated) == (True, None, 1, "recompute", "swa")
    s = get_schedule("peeraid_released")
    assert [s(e, 300, 0.1) for e in (214, 215, 260, 285)] == [0.1, 0.01, 0.001, 0.0001]


def test_float_or_none_option_from_the_command_line():
    from ciard_bench.train import build_parser
    from ciard_bench.config import config_from_args
    args = build_parser("peeraid").parse_args(["--method", "peeraid", "--peer-kd-weight", "1/4"])
    assert config_from_args(args).method_options == {"peer_kd_weight": 0.25}


# -- the SWA student -------------------------------------------------------------------------------
def _released_swa(net1, net2, alpha):
    """utils/SWA.py::moving_average."""
    for param1, param2 in zip(net1.parameters(), net2.parameters()):
        param1.data *= (1.0 - alpha)
        param1.data += param2.data * alpha


def _perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for q in model.parameters():
            q.add_(torch.randn(q.shape, generator=g))
        for b in model.buffers():
            if b.is_floating_point():
                b.add_(torch.rand(b.shape, generator=g))


@pytest.mark.parametrize("swa_bn", ["recompute", "average"])
def test_swa_weights_are_the_released_running_average(swa_bn):
    m = make(epochs=6, swa_start_epoch=2, swa_bn=swa_bn)
    ref = Tiny(99, C)                      # the script's SWA net: its own initial weights
    snapshots, buffers = [], []
    n = 0
    for epoch in range(1, 7):
        _perturb(m.student, epoch)          # the student moved during the epoch
        m.end_epoch(epoch)
        refresh = m.batch_norm_refresh(epoch)
        if epoch >= 3:                      # the code's 0-indexed epoch >= 2
            _released_swa(ref, m.student, 1.0 / (n + 1))
            n += 1
            snapshots.append([q.detach().clone() for q in m.student.parameters()])
            buffers.append([b.clone() for b in m.student.buffers()])
            assert refresh == ([m.swa_student] if swa_bn == "recompute" else [])
        else:
            assert refresh == [] and int(m.swa_count) == 0
            assert m.evaluated_student() is m.student
        assert int(m.swa_count) == n
    assert m.evaluated_student() is m.swa_student
    for a, b in zip(m.swa_student.parameters(), ref.parameters()):
        assert torch.equal(a, b)                                    # bit for bit
    for k, (a, *snaps) in enumerate(zip(m.swa_student.parameters(), *snapshots)):
        assert torch.allclose(a, torch.stack(snaps).mean(0), rtol=1e-5, atol=1e-6)   # the mean
        assert not a.requires_grad
    norm = [b for b in m.swa_student.buffers()]
    if swa_bn == "average":
        for k, (a, *snaps) in enumerate(zip(norm, *buffers)):
            expected = snaps[-1] if not a.is_floating_point() else torch.stack(snaps).mean(0)
            assert torch.allclose(a.double(), expected.double(), rtol=1e-5, atol=1e-6)
    assert not m.swa_student.training


def test_swa_schedule_start_every_and_off():
    def averaged(m, epochs):
        return [e for e in range(1, epochs + 1) if m.averages_after(e)]
    assert averaged(make(epochs=300), 300) == list(range(215, 301))     # after the first decay
    assert make(epochs=300).swa_after == 214 and make(epochs=2).swa_after == 1
    assert averaged(make(epochs=2), 2) == [2]
    assert averaged(make(epochs=10, swa_start_epoch=4, swa_every=3), 10) == [5, 8]
    m = make(epochs=10, swa=False)
    assert averaged(m, 10) == [] and not hasattr(m, "swa_student")
    m.end_epoch(10)
    assert m.evaluated_student() is m.student and m.batch_norm_refresh(10) == []
    m = make(epochs=4, swa_start_epoch=0, evaluated="student")
    m.end_epoch(1)
    assert int(m.swa_count) == 1 and m.evaluated_student() is m.student


def test_other_methods_evaluate_their_student_and_refresh_nothing():
    for name in ("sat", "rslad", "ciard"):
        m = tiny_method(name, C)
        assert m.evaluated_student() is m.student and m.batch_norm_refresh(1) == []
    assert Method.evaluated_student is not PeerAiD.evaluated_student


def _released_bn_update(batches, model):
    """utils/SWA.py::bn_update (its loader's batches; on the CPU)."""
    model.train()
    momenta = {}
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean = torch.zeros_like(module.running_mean)
            module.running_var = torch.ones_like(module.running_var)
            momenta[module] = module.momentum
    n = 0
    for inp in batches:
        b = inp.data.size(0)
        momentum = b / (n + b)
        for module in momenta.keys():
            module.momentum = momentum
        model(inp)
        n += b
    for module in momenta.keys():
        module.momentum = momenta[module]


def test_recompute_batch_norm_is_the_released_bn_update_and_the_weighted_batch_statistics():
    g = torch.Generator().manual_seed(4)
    batches = [torch.rand(b, 3, 8, 8, generator=g) * (1 + k) for k, b in enumerate((5, 5, 3))]
    model, ref = Tiny(1, C).eval(), Tiny(1, C)
    model.bn.momentum = 0.3
    _perturb(model, 1)
    ref.load_state_dict(model.state_dict())
    ref.bn.momentum = 0.3
    with torch.no_grad():
        _released_bn_update(batches, ref)
    assert recompute_batch_norm(model, iter(batches)) == 13
    assert torch.equal(model.bn.running_mean, ref.bn.running_mean)
    assert torch.equal(model.bn.running_var, ref.bn.running_var)
    assert not model.training and not model.bn.training and model.bn.momentum == 0.3   # restored
    # by hand: the size-weighted mean of each batch's mean and unbiased variance
    with torch.no_grad():
        acts = [model.conv(b) for b in batches]
    means = [a.mean((0, 2, 3)) for a in acts]
    vars_ = [a.var((0, 2, 3), unbiased=True) for a in acts]
    sizes = [a.shape[0] for a in acts]
    assert torch.allclose(model.bn.running_mean, sum(s * v for s, v in zip(sizes, means)) / 13, rtol=1e-5)
    assert torch.allclose(model.bn.running_var, sum(s * v for s, v in zip(sizes, vars_)) / 13, rtol=1e-5)
    assert recompute_batch_norm(nn.Linear(3, 2), batches) == 0          # nothing to do


def test_the_engine_pass_draws_nothing_from_the_global_generators_and_uses_its_own_order(monkeypatch):
    from ciard_bench import build as build_module
    from ciard_bench.data import ArrayDataset, make_loader
    from ciard_bench.distributed import Dist
    g = torch.Generator().manual_seed(0)
    data = ArrayDataset((torch.rand(10, 8, 8, 3, generator=g) * 255).to(torch.uint8),
                        torch.arange(10) % C, augment=True, seed=3)
    cfg = resolve(TrainConfig(method="peeraid", batch_size=4, seed=3))
    model, ref = Tiny(1, C), Tiny(1, C)
    run = Run(cfg, torch.device("cpu"), None, None, None, {}, None, None, None)
    before = torch.get_rng_state()
    build_module.refresh_batch_norm(run, [model], data, 2, Dist())
    assert torch.equal(before, torch.get_rng_state())
    batches = [x for x, _ in make_loader(data, 4, shuffle=True, seed=3, epoch=-2)]
    assert [len(b) for b in batches] == [4, 4, 2]
    training = [x for x, _ in make_loader(data, 4, shuffle=True, seed=3, epoch=2)]
    assert not torch.equal(torch.cat(batches), torch.cat(training))   # not epoch 2's batches
    recompute_batch_norm(ref, batches)
    assert torch.equal(model.bn.running_mean, ref.bn.running_mean)
    assert torch.equal(model.bn.running_var, ref.bn.running_var)
    # and the per-epoch evaluation looks at evaluated_student()
    m = make(epochs=4, swa_start_epoch=0)
    m.end_epoch(1)
    seen = []

    def accuracy(model, *a, **k):
        seen.append(model)
        return 50.0

    run = Run(cfg, torch.device("cpu"), None, m, None, {}, None, None, None)
    monkeypatch.setattr(build_module, "accuracy", accuracy)
    build_module.evaluate_epoch(run, 1)
    assert seen and all(model is m.swa_student for model in seen)


# -- a real run: killed mid-epoch, resumed bit for bit --------------------------------------------
def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ciard_bench.train", *args], capture_output=True,
                          text=True, timeout=600, env=env)


def _argv(out):
    return ["--method", "peeraid", "--dataset", "digits", "--student", "resnet8", "--epochs", "2",
            "--n-train", "32", "--batch-size", "16", "--n-test", "16", "--eval-batch-size", "16",
            "--attack-steps", "1", "--threads", "1", "--seed", "3", "--swa-start-epoch", "0",
            "--ckpt-every-steps", "1", "--out", str(out)]


def _same(a, b, where=""):
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.shape == b.shape and a.dtype == b.dtype, where
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                     and torch.equal(a.nan_to_num(), b.nan_to_num())), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            _same(u, v, f"{where}[{i}]")
    else:
        assert a == b, where


def test_a_killed_run_resumes_bit_for_bit_with_peer_and_swa_state(tmp_path):
    """2 epochs of 2 steps, the SWA from epoch 1 on: SIGKILL before step 4 (epoch 2, after its
    step 1, whose checkpoint holds the peer mid-training and one SWA average); the resumed run
    ends as the straight one: student, peer, SWA student and its count, both optimisers."""
    env = {k: v for k, v in os.environ.items() if k != "CIARD_BENCH_KILL_AT"}
    straight = _cli(*_argv(tmp_path / "straight"), env=env)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = _cli(*_argv(tmp_path / "resumed"), env={**env, "CIARD_BENCH_KILL_AT": "step:4"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    mid = RunDir(tmp_path / "resumed").load("last")
    assert (mid["epoch"], mid["step"]) == (2, 1) and int(mid["method_state"]["swa_count"]) == 1
    resumed = _cli(*_argv(tmp_path / "resumed"), "--resume", env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr
    a, b = RunDir(tmp_path / "straight").load("last"), RunDir(tmp_path / "resumed").load("last")
    assert int(a["method_state"]["swa_count"]) == 2
    assert any(k.startswith("peer.") for k in a["method_state"])
    for key in ("state_dict", "method_state", "optimizer", "teacher_optimizers", "rng"):
        _same(a[key], b[key], key)
    strip = lambda h: [{k: v for k, v in r.items() if k != "time_s"} for r in h]   # noqa: E731
    _same(strip(a["history"]), strip(b["history"]), "history")
    # what is saved and evaluated is the SWA student
    for k, v in a["state_dict"].items():
        assert torch.equal(v, a["method_state"][f"swa_student.{k}"]), k
    assert not torch.equal(a["state_dict"]["fc.weight"], a["method_state"]["student.fc.weight"])
    best = RunDir(tmp_path / "straight").load("best")
    result = json.loads((tmp_path / "straight" / "result.json").read_text())
    assert result["best"]["epoch"] == best["epoch"]
    log = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert [r["swa_count"] for r in log] == [1.0, 2.0]
    assert [r["teacher_lr_peer"] for r in log] == [r["lr"] for r in log]    # the student's schedule
    assert all(math.isfinite(r["peer_loss"]) for r in log)
