"""IAD-I and IAD-II (docs/methods.md#iad) on tiny models, against the released training step.

Two kinds of reference, both written independently of ``ciard_bench/methods/iad.py``:

* the released step re-done with plain torch ops in the scripts' own order (``_released_*``:
  their PGD loop with its uniform start, the per-sample Python loop for the trust weights,
  ``KLDivLoss(reduction='none')`` summed and scaled by 1/B, the extra train-mode forwards),
  on copies of the models from the same random state: the loss, the adversarial batch, the
  student's gradient and its BatchNorm statistics must agree;
* plain-Python oracles (``toys``) on logits, for the trust weights and each loss term.
"""
import copy
import sys

import pytest
import torch
import torch.nn.functional as F

from ciard_bench.api import inner as pgd_module
from ciard_bench.config import TrainConfig, resolve
from ciard_bench.methods import get_method, list_methods

from toys import ce, fix_adv, kl, log_softmax, mean, rows, softmax, tiny_method

C = 4
EPS, STEP = 8 / 255, 2 / 255
NAMES = ("iad_i", "iad_ii")


def make(name, epochs=200, steps=3, epoch=200, **opts):
    m = tiny_method(name, C, epochs, steps, **opts)
    m.begin_epoch(epoch)
    return m.train()


def batch(n=8, seed=5):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % C
    return torch.rand(n, 3, 8, 8, generator=g), y[torch.randperm(n, generator=g)]


def approx(v):
    return pytest.approx(v, rel=1e-5, abs=1e-9)


# -- the released step with plain torch ops --------------------------------------------------------
def _released_attack(net, x, y, steps):
    """The scripts' AttackPGD: uniform start (not clamped), CE summed over the batch, signed
    steps, the eps ball then [0, 1]; ``net`` in whatever mode it is (the scripts: train)."""
    start = x.detach()
    cur = start + torch.zeros_like(start).uniform_(-EPS, EPS)
    for _ in range(steps):
        cur.requires_grad_()
        with torch.enable_grad():
            objective = F.cross_entropy(net(cur), y, reduction="sum")
        (g,) = torch.autograd.grad(objective, [cur])
        cur = cur.detach() + STEP * torch.sign(g.detach())
        cur = torch.clamp(torch.min(torch.max(cur, start - EPS), start + EPS), 0.0, 1.0)
    return net(cur), cur


def _loop_trust(guide, y, beta, active):
    """The scripts' weights: ones, then one ``.item()`` per sample once the warm-up is over."""
    w = torch.ones(len(y))
    if active:
        for i in range(len(y)):
            w[i] = F.softmax(guide, dim=1)[i][y[i].item()].pow(beta).item()
    return w


def _kl_rows(log_q, p):
    return torch.nn.KLDivLoss(reduction="none")(log_q, p).sum(dim=1)


def _released_iad_i(s, t, x, y, steps, active, tau=1.0, alpha=1.0, beta=0.1):
    """IAD-I.py's train(): one batch; returns (loss, x_adv, weights)."""
    teacher_out = t(x)
    out, x_adv = _released_attack(s, x, y, steps)
    s(x_adv).detach()                                           # basicop
    guide = t(x_adv)
    w = _loop_trust(guide, y, beta, active)
    n = len(out)
    distill = alpha * tau * tau * (1 / n) * torch.sum(
        _kl_rows(F.log_softmax(out / tau, dim=1), F.softmax(teacher_out / tau, dim=1)))
    if active:
        own = alpha * (1 / n) * torch.sum(
            _kl_rows(F.log_softmax(out, dim=1), F.softmax(s(x), dim=1)).mul(1 - w))
        loss = distill + own + (1.0 - alpha) * F.cross_entropy(s(x), y)
    else:
        loss = distill + (1.0 - alpha) * F.cross_entropy(s(x), y)
    return loss, x_adv, w


def _released_iad_ii(s, t_at, t_st, x, y, steps, active, tau=1.0, a1=0.5, a2=0.25, beta=0.1):
    """IAD-II.py's train(): one batch; returns (loss, x_adv, weights)."""
    out, x_adv = _released_attack(s, x, y, steps)
    teacher_out, st_out = t_at(x_adv), t_st(x_adv)
    guide = t_at(x_adv)
    w = _loop_trust(guide, y, beta, active)
    n = len(out)
    ls = F.log_softmax(out / tau, dim=1)
    clean = a2 * tau * tau * (1 / n) * torch.sum(_kl_rows(ls, F.softmax(st_out / tau, dim=1)))
    if active:
        robust = a1 * tau * tau * (
            (1 / n) * torch.sum(_kl_rows(ls, F.softmax(teacher_out / tau, dim=1)).mul(w))
            + (1 / n) * torch.sum(_kl_rows(F.log_softmax(out, dim=1), F.softmax(s(x), dim=1)).mul(1 - w)))
    else:
        robust = a1 * tau * tau * (1 / n) * torch.sum(_kl_rows(ls, F.softmax(teacher_out / tau, dim=1)))
    return (1 - a1 - a2) * F.cross_entropy(out, y) + robust + clean, x_adv, w


def _compare_step(m, released, seed=11):
    """One step of ``m`` and of ``released(student copy)`` from the same state and RNG."""
    s = copy.deepcopy(m.student).train()
    x, y = batch()
    torch.manual_seed(seed)
    captured = {}
    real = m._adversarial
    m._adversarial = lambda *a: captured.setdefault("x_adv", real(*a))
    out = m(x, y)
    out["loss"].backward()
    torch.manual_seed(seed)
    loss, x_adv, w = released(s, x, y)
    loss.backward()
    assert torch.equal(captured["x_adv"], x_adv)
    assert out["loss"].item() == pytest.approx(loss.item(), rel=1e-6, abs=1e-7)
    for (k, p), q in zip(m.student.named_parameters(), s.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-6), k
    for (k, b), c in zip(m.student.named_buffers(), s.buffers()):
        assert torch.allclose(b.double(), c.double(), rtol=1e-6, atol=1e-7), k   # BN statistics
    return out, w, x, y, x_adv


@pytest.mark.parametrize("epoch,active", [(60, False), (61, True)])
@pytest.mark.parametrize("opts", [{}, {"temperature": 4.0, "kl_weight": 0.7, "beta": 0.5}])
def test_iad_i_is_the_released_step(epoch, active, opts):
    m = make("iad_i", epoch=epoch, **opts)
    t = copy.deepcopy(m.robust_teacher)
    kw = {"tau": opts.get("temperature", 1.0), "alpha": opts.get("kl_weight", 1.0),
          "beta": opts.get("beta", 0.1)}
    out, w, x, y, x_adv = _compare_step(
        m, lambda s, x, y: _released_iad_i(s, t, x, y, 3, active, **kw))
    assert m.introspecting == active
    if active:      # the logged mean trust is that of the scripts' weights
        assert out["trust"].item() == pytest.approx(w.mean().item(), rel=1e-6)
    assert all(p.grad is None for p in m.robust_teacher.parameters())


@pytest.mark.parametrize("epoch,opts,active", [(1, {}, True), (200, {}, True),
                                               (40, {"introspection_start": 40}, False),
                                               (41, {"introspection_start": 40, "temperature": 3.0,
                                                     "at_weight": 0.4, "st_weight": 0.35,
                                                     "beta": 0.3}, True)])
def test_iad_ii_is_the_released_step(epoch, opts, active):
    m = make("iad_ii", epoch=epoch, **opts)
    t_at, t_st = copy.deepcopy(m.robust_teacher), copy.deepcopy(m.clean_teacher)
    kw = {"tau": opts.get("temperature", 1.0), "a1": opts.get("at_weight", 0.5),
          "a2": opts.get("st_weight", 0.25), "beta": opts.get("beta", 0.1)}
    out, w, *_ = _compare_step(m, lambda s, x, y: _released_iad_ii(s, t_at, t_st, x, y, 3, active, **kw))
    assert m.introspecting == active
    if active:
        assert out["trust"].item() == pytest.approx(w.mean().item(), rel=1e-6)
    for role in ("robust_teacher", "clean_teacher"):
        assert all(p.grad is None for p in getattr(m, role).parameters())


# -- each term by plain-Python oracles ------------------------------------------------------------------
def _logits(m, x, x_adv):
    with torch.no_grad():
        s = copy.deepcopy(m.student).train()
        out = {"s": rows(s(x)), "sa": rows(s(x_adv))}
        for role in type(m).teachers:
            t = copy.deepcopy(getattr(m, role)).eval()
            out[role], out[role + "_adv"] = rows(t(x)), rows(t(x_adv))
    return out


def _trust(r, y, beta=0.1):
    """a_i = p_T(y_i | x'_i) ** beta from the robust teacher's logits on x'."""
    return [softmax(r["robust_teacher_adv"][i])[int(y[i])] ** beta for i in range(len(y))]


def test_trust_weights_by_hand():
    for name in NAMES:
        m = make(name)
        x, y = batch()
        x_adv = fix_adv(m, x)
        r = _logits(m, x, x_adv)
        for beta in (0.1, 1.0, 2.5):
            m.opts.beta = beta
            z = torch.tensor(r["robust_teacher_adv"], dtype=torch.float32)
            assert m._trust(z, y).tolist() == pytest.approx(_trust(r, y, beta), rel=1e-5)
        assert 0 < min(_trust(r, y)) and max(_trust(r, y)) < 1     # a real mixture here


@pytest.mark.parametrize("trust_teacher", [False, True])
def test_iad_i_loss_terms_by_hand(trust_teacher):
    m = make("iad_i", temperature=2.0, kl_weight=0.8, trust_teacher=trust_teacher).double()
    x, y = batch()
    x = x.double()                       # float64: the KL of near-equal rows cancels in float32
    r = _logits(m, x, fix_adv(m, x))
    a, T, n = _trust(r, y), 2.0, len(y)
    teacher = [kl(softmax(r["robust_teacher"][i], T), log_softmax(r["sa"][i], T)) for i in range(n)]
    if trust_teacher:
        teacher = [a[i] * teacher[i] for i in range(n)]
    own = [(1 - a[i]) * kl(softmax(r["s"][i]), log_softmax(r["sa"][i])) for i in range(n)]
    nat = mean(ce(r["s"][i], y[i]) for i in range(n))
    out = m(x, y)
    # the teacher on CLEAN x, at T with T^2; introspection at temperature 1 WITHOUT T^2
    assert out["loss"].item() == approx(0.8 * 4 * mean(teacher) + 0.8 * mean(own) + 0.2 * nat)
    assert out["loss_kl"].item() == approx(mean(teacher))
    assert out["loss_self"].item() == approx(mean(own))
    assert out["loss_nat"].item() == approx(nat)
    assert out["trust"].item() == approx(mean(a))
    m.begin_epoch(1)                                            # warm-up: ARD's loss at T, no trust
    plain = [kl(softmax(r["robust_teacher"][i], T), log_softmax(r["sa"][i], T)) for i in range(n)]
    out = m(x, y)
    assert out["loss"].item() == approx(0.8 * 4 * mean(plain) + 0.2 * nat)
    assert out["loss_self"].item() == 0


def test_iad_ii_loss_terms_by_hand():
    m = make("iad_ii", temperature=2.0, at_weight=0.4, st_weight=0.35).double()
    x, y = batch()
    x = x.double()
    r = _logits(m, x, fix_adv(m, x))
    a, T, n = _trust(r, y), 2.0, len(y)
    robust = [a[i] * kl(softmax(r["robust_teacher_adv"][i], T), log_softmax(r["sa"][i], T)) for i in range(n)]
    own = [(1 - a[i]) * kl(softmax(r["s"][i]), log_softmax(r["sa"][i])) for i in range(n)]
    clean = [kl(softmax(r["clean_teacher_adv"][i], T), log_softmax(r["sa"][i], T)) for i in range(n)]
    adv_ce = mean(ce(r["sa"][i], y[i]) for i in range(n))         # CE on x', not on x
    out = m(x, y)
    # both teachers on x'; T^2 multiplies the introspection term too
    hand = 0.25 * adv_ce + 0.4 * 4 * (mean(robust) + mean(own)) + 0.35 * 4 * mean(clean)
    assert out["loss"].item() == approx(hand)
    assert (out["loss_kl"].item(), out["loss_self"].item(), out["loss_kl_clean"].item(),
            out["loss_adv"].item()) == (approx(mean(robust)), approx(mean(own)), approx(mean(clean)),
                                        approx(adv_ce))


def test_confident_teacher_is_trusted_fully_and_wrong_teacher_hands_over_to_the_student():
    m = make("iad_i", beta=1.0).double()
    x, y = batch()
    x = x.double()
    x_adv = fix_adv(m, x)
    r = _logits(m, x, x_adv)
    # a teacher certain of y on x': a_i = 1, no self term
    sure = lambda z: F.one_hot(y, C).double() * 1e4               # noqa: E731
    m.robust_teacher.forward = lambda inp: sure(inp)
    out = m(x, y)
    assert out["trust"].item() == 1.0 and out["loss_self"].item() == 0.0
    wrong = lambda z: F.one_hot((y + 1) % C, C).double() * 1e4    # noqa: E731
    m.robust_teacher.forward = lambda inp: wrong(inp)
    out = m(x, y)
    own = mean(kl(softmax(r["s"][i]), log_softmax(r["sa"][i])) for i in range(len(y)))
    assert out["trust"].item() == 0.0 and out["loss_self"].item() == approx(own)


# -- warm-up, run length, training settings ---------------------------------------------------------------
@pytest.mark.parametrize("name,epochs,after", [("iad_i", 200, 60), ("iad_i", 300, 90), ("iad_i", 10, 3),
                                               ("iad_i", 2, 1), ("iad_i", 1, 1), ("iad_ii", 200, 0),
                                               ("iad_ii", 2, 0)])
def test_introspection_starts_after_the_scaled_begin(name, epochs, after):
    m = tiny_method(name, C, epochs)
    active = [e for e in range(1, epochs + 1) if (m.begin_epoch(e), m.introspecting)[1]]
    assert active == list(range(after + 1, epochs + 1))
    m.begin_epoch(epochs), m.begin_epoch(epochs)                 # idempotent (a resume)
    assert m.introspecting == (epochs > after)
    m = tiny_method(name, C, epochs, introspection_start=5)
    assert m.introspection_after == 5


def test_released_training_settings_and_registry():
    for name, label, teachers in (("iad_i", "IAD-I", ("robust_teacher",)),
                                  ("iad_ii", "IAD-II", ("clean_teacher", "robust_teacher"))):
        assert name in list_methods()
        cls = get_method(name)
        assert cls.label == label and set(cls.teachers) == set(teachers)
        assert cls.train_defaults == {"epochs": 200, "batch_size": 128, "lr": 0.1, "momentum": 0.9,
                                      "weight_decay": 2e-4, "schedule": "ard_released"}
        cfg = resolve(TrainConfig(method=name))
        assert (cfg.epochs, cfg.lr, cfg.weight_decay, cfg.schedule) == (200, 0.1, 2e-4, "ard_released")
        assert "github.com/ZFancy/IAD" in sys.modules[cls.__module__].__doc__
    o1, o2 = get_method("iad_i").Options(), get_method("iad_ii").Options()
    assert (o1.temperature, o1.kl_weight, o1.beta, o1.attack_mode, o1.bn_forwards) == \
        (1.0, 1.0, 0.1, "train", "released")
    assert o1.self_target_grad and not o1.trust_teacher and o1.introspection_start is None
    assert (o2.temperature, o2.at_weight, o2.st_weight, o2.beta) == (1.0, 0.5, 0.25, 0.1)


# -- the attack, and the switches -----------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_attack_objective_start_and_mode(name, mode, monkeypatch):
    m = make(name, attack_mode=mode)
    x, y = batch()
    seen = {}
    real = pgd_module.pgd

    def spy(loss_fn, x_in, **kw):
        seen.update(kw, training=m.student.training, bn=m.student.bn.running_mean.clone())
        counts = {"student": 0, **{r: 0 for r in type(m).teachers}}
        hooks = [getattr(m, r).register_forward_hook(lambda *a, r=r: counts.__setitem__(r, counts[r] + 1))
                 for r in counts]
        x0 = torch.rand_like(x_in)
        with torch.no_grad():
            value = loss_fn(x0).item()
            for h in hooks:
                h.remove()
            s0 = rows(m.student(x0))
        seen.update(counts=counts, value=value, hand=sum(ce(s0[i], y[i]) for i in range(len(y))))
        return real(loss_fn, x_in, **kw)

    # the attack is ARD's (methods/ard.py, StudentCEAttack): spy where it calls pgd
    monkeypatch.setattr(sys.modules[type(m)._adversarial.__module__], "pgd", spy)
    m(x, y)
    assert seen["start"] == "uniform" and not seen.get("clamp_start", False)
    assert seen["training"] == (mode == "train")
    assert seen["value"] == pytest.approx(seen["hand"], rel=1e-5)   # CE SUMMED over the batch
    assert seen["counts"] == {"student": 1, **{r: 0 for r in type(m).teachers}}
    assert (seen["eps"], seen["alpha"], seen["steps"]) == (EPS, STEP, 3)
    assert m.student.training                                     # restored


def test_train_mode_attack_moves_batchnorm_statistics_and_eval_mode_does_not():
    for mode, moved in (("train", True), ("eval", False)):
        m = make("iad_i", attack_mode=mode)
        x, y = batch()
        before = m.student.bn.running_mean.clone()
        m._adversarial(x, y)
        assert (not torch.equal(before, m.student.bn.running_mean)) == moved


def test_attack_start_is_uniform_and_not_clamped():
    m = make("iad_ii", steps=0)
    x, y = batch()
    x[:, 0], x[:, 1] = 0.0, 1.0
    x_adv = m._adversarial(x, y)
    delta = (x_adv - x).abs()
    assert delta.max().item() > 6 / 255 and delta.max().item() <= EPS + 1e-7
    assert x_adv.min().item() < 0 and x_adv.max().item() > 1          # not clamped before a step


def _count_student_forwards(m, x, y):
    calls = []
    h = m.student.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].data_ptr()))
    m(x, y)
    h.remove()
    return calls


@pytest.mark.parametrize("epoch", [200, 1])
def test_bn_forwards_switch_changes_only_batchnorm_statistics(epoch):
    x, y = batch()
    results = {}
    for forwards in ("released", "once"):
        m = make("iad_i", epoch=epoch, bn_forwards=forwards)
        x_adv = fix_adv(m, x)
        calls = _count_student_forwards(m, x, y)
        n_adv, n_x = calls.count(x_adv.data_ptr()), calls.count(x.data_ptr())
        m.student.zero_grad()
        out = m(x, y)
        out["loss"].backward()
        results[forwards] = (n_adv, n_x, out["loss"].item(), [p.grad.clone() for p in m.student.parameters()],
                             m.student.bn.running_mean.clone())
    # released: f_S(x') twice (one unused) and f_S(x) twice after the warm-up, once before
    assert results["released"][:2] == (2, 2 if epoch == 200 else 1)
    assert results["once"][:2] == (1, 1)
    assert results["released"][2] == pytest.approx(results["once"][2], rel=1e-6)
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(results["released"][3], results["once"][3]))
    assert not torch.allclose(results["released"][4], results["once"][4])


@pytest.mark.parametrize("name", NAMES)
def test_self_target_grad_switch(name):
    x, y = batch()
    grads, losses = {}, {}
    for keep in (True, False):
        m = make(name, self_target_grad=keep)
        fix_adv(m, x)
        out = m(x, y)
        out["loss"].backward()
        grads[keep] = [p.grad.clone() for p in m.student.parameters()]
        losses[keep] = out["loss"].item()
    assert losses[True] == pytest.approx(losses[False], rel=1e-6)      # the value is the same
    assert not all(torch.allclose(a, b) for a, b in zip(grads[True], grads[False]))
    # by hand: the released gradient minus the detached one is the gradient through the target
    m = make(name)
    x_adv = fix_adv(m, x)
    with torch.no_grad():
        m.student(x_adv)                                          # BN statistics do not enter
    z_sa, z_s = m.student(x_adv).detach(), m.student(x)
    a = m._trust(m.robust_teacher(x_adv), y)
    weight = 1 / len(y) * (m.opts.at_weight if name == "iad_ii" else 1.0)
    through_target = weight * torch.sum(F.kl_div(F.log_softmax(z_sa, 1), F.softmax(z_s, 1),
                                                 reduction="none").sum(1) * (1 - a))
    extra = torch.autograd.grad(through_target, list(m.student.parameters()), allow_unused=True)
    for g_keep, g_det, e in zip(grads[True], grads[False], extra):
        e = torch.zeros_like(g_keep) if e is None else e
        assert torch.allclose(g_keep - g_det, e, atol=1e-6)


def test_loss_is_finite_and_decreases_on_a_fixed_batch_with_introspection():
    for name in NAMES:
        m = make(name)
        x, y = batch()
        fix_adv(m, x)
        opt = torch.optim.SGD(m.student.parameters(), lr=0.05, momentum=0.9)
        losses = []
        for _ in range(8):
            out = m(x, y)
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            losses.append(out["loss"].item())
        assert losses[-1] < losses[0], (name, losses)
