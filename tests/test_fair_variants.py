"""Fair-ARD and its variants Fair-RSLAD, Fair-MTARD, Fair-IAD (docs/methods.md#fair-ard) on
tiny models, against the released scripts of github.com/NISP-official/Fair-ARD.

Written independently of ``ciard_bench/methods/fair_ard.py`` and ``fairness.py``:

* the released step of each script re-done with plain torch ops in the script's own order
  (``_released_*``): its PGD loop counting kappa per sample in Python, the per-sample loop that
  multiplies each row's loss by ``reweight[y_i]``, the reduction (sum over rows / B, then the
  mean over classes where the script takes one), the extra forwards; on copies of the models
  from the same random state: the adversarial batch, the kappa counts, the loss, the
  student's gradient and its BatchNorm statistics must agree, over two epochs (the class
  weights computed by the scripts' ``weight_assign`` between them);
* the weight update by hand in plain Python (``toys``-style), with each script's guard;
* with all class weights 1 (and the switches of the base's behaviour) each variant's step is
  its base method's step.
"""
import copy
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ciard_bench.config import TrainConfig, resolve
from ciard_bench.methods import get_method, list_methods

from toys import tiny_method

C = 4
EPS, STEP = 8 / 255, 2 / 255
VARIANTS = ("fair_ard", "fair_rslad", "fair_mtard", "fair_iad")
BASE = {"fair_ard": "ard", "fair_rslad": "rslad", "fair_mtard": "mtard", "fair_iad": "iad_i"}


def make(name, epochs=None, steps=3, epoch=1, **opts):
    epochs = epochs or get_method(name).train_defaults["epochs"]
    m = tiny_method(name, C, epochs, steps, **opts)
    m.begin_epoch(epoch)
    return m.train()


def batch(n=8, seed=5):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % C
    return torch.rand(n, 3, 8, 8, generator=g), y[torch.randperm(n, generator=g)]


# -- the released scripts with plain torch ops ---------------------------------------------------------
def _attack(net, x, y, steps, start, objective):
    """The scripts' PGD loop with its Kappa count: x'_0 .. x'_{K-1} each counted when the
    prediction (net in whatever mode it is in) is the label; returns (x_adv, kappa list)."""
    nat = x.detach()
    if start == "uniform":
        cur = nat + torch.zeros_like(nat).uniform_(-EPS, EPS)
    else:
        cur = nat.detach() + 0.001 * torch.randn(nat.shape).detach()
    kappa = [0 for _ in range(len(nat))]
    for _ in range(steps):
        cur.requires_grad_()
        out = net(cur)
        predict = out.max(1, keepdim=True)[1]
        for p in range(len(cur)):
            if predict[p] == y[p]:
                kappa[p] += 1
        with torch.enable_grad():
            loss = objective(out)
        (g,) = torch.autograd.grad(loss, [cur])
        cur = cur.detach() + STEP * torch.sign(g.detach())
        cur = torch.min(torch.max(cur, nat - EPS), nat + EPS)
        cur = torch.clamp(cur, 0.0, 1.0)
    return cur, kappa


def _kl_vec(a, b):
    """The RSLAD/MTARD scripts' ``kl_loss``: element-wise, not reduced."""
    return -a * b + torch.log(b + 1e-5) * b


def _released_fair_ard(s, t, x, y, steps, reweight, temp=30.0, alpha=1.0):
    """Fair-ARD.py's train(): AttackPGD (train mode), then the teacher, then f_S(x)."""
    x_adv, kappa = _attack(s, x, y, steps, "uniform", lambda o: F.cross_entropy(o, y, reduction="sum"))
    outputs = s(x_adv)
    teacher_outputs = t(x)
    basic_outputs = s(x)
    kl, ce = [], []
    for i in range(len(outputs)):
        kl.append(nn.KLDivLoss()(F.log_softmax(outputs[i] / temp, dim=0),
                                 F.softmax(teacher_outputs[i] / temp, dim=0)) * reweight[y[i]])
        ce.append(nn.CrossEntropyLoss()(basic_outputs[i].unsqueeze(0), y[i].unsqueeze(0)) * reweight[y[i]])
    n = len(outputs)
    loss = alpha * temp * temp * ((1 / n) * torch.sum(torch.stack(kl))) + \
        (1.0 - alpha) * ((1 / n) * torch.sum(torch.stack(ce)))
    return loss, x_adv, kappa


def _released_fair_rslad(s, t, x, y, steps, reweight):
    """Fair-RSLAD.py: the teacher on x, rslad_inner_loss (eval mode, KL-sum objective), train
    mode for f_S(x') and f_S(x), rows weighted, summed / B, then the mean over classes."""
    with torch.no_grad():
        teacher_logits = t(x)
    s.eval()
    x_adv, kappa = _attack(s, x, y, steps, "gauss", lambda o: torch.sum(
        nn.KLDivLoss(reduction="none")(F.log_softmax(o, dim=1), F.softmax(teacher_logits, dim=1))))
    s.train()
    adv_logits = s(x_adv)
    nat_logits = s(x)
    l1, l2 = [], []
    for i in range(len(y)):
        l1.append(_kl_vec(F.log_softmax(adv_logits[i], dim=0), F.softmax(teacher_logits[i], dim=0)))
        l2.append(_kl_vec(F.log_softmax(nat_logits[i], dim=0), F.softmax(teacher_logits[i], dim=0)))
        l1[i] = l1[i] * reweight[y[i]]
        l2[i] = l2[i] * reweight[y[i]]
    k1 = torch.mean((1.0 / len(y)) * sum(l1))
    k2 = torch.mean((1.0 / len(y)) * sum(l2))
    return 5 / 6.0 * k1 + 1 / 6.0 * k2, x_adv, kappa


class _ReleasedFairMTARD:
    """Fair-MTARD.py's loop state (Python floats) and one step of it."""

    def __init__(self, nat_from_adv=True, rate=0.025, bert=1):
        self.weight = {"adv_loss": 1 / 2.0, "nat_loss": 1 / 2.0}
        self.init_adv = self.init_nat = None
        self.nat_from_adv, self.rate, self.bert = nat_from_adv, rate, bert

    def step(self, s, t_adv, t_nat, x, y, steps, reweight):
        with torch.no_grad():
            teacher_nat_logits = t_nat(x)
        s.eval()
        x_adv, kappa = _attack(s, x, y, steps, "gauss", lambda o: nn.CrossEntropyLoss()(o, y))
        s.train()
        student_adv_logits = s(x_adv)
        with torch.no_grad():
            teacher_adv_logits = t_adv(x_adv)
        student_nat_logits = s(x)
        nat_target = teacher_adv_logits if self.nat_from_adv else teacher_nat_logits
        l1, l2 = [], []
        for i in range(len(y)):
            l1.append(_kl_vec(F.log_softmax(student_adv_logits[i], dim=0), F.softmax(teacher_adv_logits[i], dim=0)))
            l2.append(_kl_vec(F.log_softmax(student_nat_logits[i], dim=0), F.softmax(nat_target[i], dim=0)))
            l1[i] = l1[i] * reweight[y[i]]
            l2[i] = l2[i] * reweight[y[i]]
        k1 = torch.mean((1 / len(y)) * sum(l1))
        k2 = torch.mean((1 / len(y)) * sum(l2))
        if self.init_nat is None:
            self.init_nat = k2.item()
        if self.init_adv is None:
            self.init_adv = k1.item()
        r_adv = (k1.item() / self.init_adv) ** self.bert
        r_nat = (k2.item() / self.init_nat) ** self.bert
        w = self.weight
        w["nat_loss"] = w["nat_loss"] - self.rate * (w["nat_loss"] - r_nat / (r_adv + r_nat))
        w["adv_loss"] = 1 - w["nat_loss"]
        return w["adv_loss"] * k1 + w["nat_loss"] * k2, x_adv, kappa


def _released_fair_iad(s, t, x, y, steps, reweight, active, temp=1.0, alpha=1.0, beta_iad=0.1):
    """Fair-IAD.py's train(): f_T(x), AttackPGD (train mode), f_S(x'), f_S(x), an unused
    f_S(x'), f_T(x'); per-sample loops; before --begin the teacher term alone."""
    teacher_outputs = t(x)
    x_adv, kappa = _attack(s, x, y, steps, "uniform", lambda o: F.cross_entropy(o, y, reduction="sum"))
    outputs = s(x_adv)
    basic_net_outputs = s(x)
    s(x_adv).detach()                                           # basicop
    guide = t(x_adv)
    a = torch.ones(len(x))
    kl_loss = nn.KLDivLoss(reduction="none")
    n = len(outputs)
    kl1 = []
    for i in range(n):
        kl1.append(kl_loss(F.log_softmax(outputs[i] / temp, dim=0), F.softmax(teacher_outputs[i] / temp, dim=0)).sum())
        kl1[i] = kl1[i] * reweight[y[i]]
    loss = alpha * temp * temp * ((1 / n) * torch.sum(torch.stack(kl1)))
    if active:
        for pp in range(n):
            a[pp] = F.softmax(guide, dim=1)[pp][y[pp].item()].pow(beta_iad).item()
        kl2, ce = [], []
        for i in range(n):
            kl2.append(kl_loss(F.log_softmax(outputs[i], dim=0), F.softmax(basic_net_outputs[i], dim=0)).sum().mul(1 - a[i]))
            ce.append(nn.CrossEntropyLoss()(outputs[i].unsqueeze(0), y[i].unsqueeze(0)))
            kl2[i] = kl2[i] * reweight[y[i]]
            ce[i] = ce[i] * reweight[y[i]]
        loss = loss + alpha * ((1 / n) * torch.sum(torch.stack(kl2))) + \
            (1.0 - alpha) * ((1 / n) * torch.sum(torch.stack(ce)))
    return loss, x_adv, kappa


def _released_weight_assign(kappa_total, n_seen, beta=2.0, guard=True):
    """The scripts' ``weight_assign`` on ``Kappa_total / (len(dataset) / num_classes)``, in
    plain Python (Fair-RSLAD.py: no guard)."""
    k = [v / (n_seen / len(kappa_total)) for v in kappa_total]
    raw = [(1 / (v + 1e-5 if guard else v)) ** beta for v in k]
    scale = len(k) / sum(raw)
    return [min(max(v * scale, 5 / 6), 5 / 2) for v in raw]


def colour_batch(seed, per_class=4):
    """Images of one dominant colour per class (class 3: dark) with a little noise; class c
    has c + 1 of its samples labelled right and the rest labelled c + 1, so each class has a
    different number of correct predictions (under the student of ``colour_student``)."""
    g = torch.Generator().manual_seed(seed)
    levels = torch.full((C, 3), 0.1)
    levels[3] = 0.05
    for c in range(3):
        levels[c, c] = 0.9
    cls = torch.arange(C).repeat_interleave(per_class)
    x = (levels[cls].view(-1, 3, 1, 1) + 0.03 * torch.rand(len(cls), 3, 8, 8, generator=g)).clamp(0, 1)
    y = cls.clone()
    for c in range(C):
        y[c * per_class + c + 1:(c + 1) * per_class] = (c + 1) % C
    return x, y


def colour_student(m, x):
    """Make the student classify by colour, in train and eval mode (running statistics of
    ``x``): every class is predicted, so every class's kappa count is positive."""
    s = m.student
    with torch.no_grad():
        s.conv.weight.zero_()
        s.conv.bias.zero_()
        for k in range(3):
            s.conv.weight[k, k, 1, 1] = 1.0                     # bright in colour k
            s.conv.weight[3 + k, k, 1, 1] = -1.0                # dark in colour k
        s.fc.weight.zero_()
        s.fc.bias.zero_()
        for c in range(3):
            s.fc.weight[c, c] = 1.0
        s.fc.weight[3, 3:] = 0.5
        h = s.conv(x)
        s.bn.running_mean.copy_(h.mean((0, 2, 3)))
        s.bn.running_var.copy_(h.var((0, 2, 3)))


def _class_sums(kappa, y):
    total = [0] * C
    for i in range(len(kappa)):
        total[int(y[i])] += kappa[i]
    return total


# -- the released steps, two epochs ---------------------------------------------------------------------
def _released_step(name, m, copies, x, y, reweight, state, active, opts):
    s = copies["student"]
    if name == "fair_ard":
        kw = {"temp": opts.get("temperature", 30.0), "alpha": opts.get("kl_weight", 1.0)}
        return _released_fair_ard(s, copies["robust_teacher"], x, y, m.ctx.steps, reweight, **kw)
    if name == "fair_rslad":
        return _released_fair_rslad(s, copies["robust_teacher"], x, y, m.ctx.steps, reweight)
    if name == "fair_mtard":
        return state.step(s, copies["robust_teacher"], copies["clean_teacher"], x, y, m.ctx.steps, reweight)
    kw = {"temp": opts.get("temperature", 1.0), "alpha": opts.get("kl_weight", 1.0)}
    return _released_fair_iad(s, copies["robust_teacher"], x, y, m.ctx.steps, reweight, active, **kw)


CASES = [("fair_ard", {}, 1), ("fair_ard", {"kl_weight": 0.5, "temperature": 4.0}, 1),
         ("fair_rslad", {}, 1), ("fair_mtard", {}, 1), ("fair_mtard", {"weight_rate": 0.3}, 1),
         ("fair_iad", {}, 60), ("fair_iad", {"kl_weight": 0.7, "temperature": 2.0}, 60)]


@pytest.mark.parametrize("name,opts,first_epoch", CASES)
def test_two_epochs_are_the_released_steps_and_weight_updates(name, opts, first_epoch):
    """Epoch 1 (weights 1) and epoch 2 (the weights the script computes from epoch 1's kappa
    counts): x', kappa per class, loss, gradient and BatchNorm statistics of each step."""
    m = make(name, epoch=first_epoch, **opts)
    colour_student(m, colour_batch(11)[0])
    copies = {k: copy.deepcopy(getattr(m, k)) for k in ("student", *type(m).teachers)}
    copies["student"].train()
    opt_ours = torch.optim.SGD(m.student.parameters(), lr=0.05)
    opt_ref = torch.optim.SGD(copies["student"].parameters(), lr=0.05)
    state = _ReleasedFairMTARD(rate=opts.get("weight_rate", 0.025)) if name == "fair_mtard" else None
    guard = name != "fair_rslad"
    reweight = torch.ones(C)
    for epoch, seed in ((first_epoch, 11), (first_epoch + 1, 12)):
        m.begin_epoch(epoch)
        active = name == "fair_iad" and epoch > 60
        assert name != "fair_iad" or m.introspecting == active
        x, y = colour_batch(seed)
        torch.manual_seed(seed)
        captured = {}
        real = m._adversarial
        m._adversarial = lambda *a: captured.setdefault("x_adv", real(*a))
        out = m(x, y)
        del m._adversarial
        opt_ours.zero_grad()
        out["loss"].backward()
        torch.manual_seed(seed)
        loss, x_adv, kappa = _released_step(name, m, copies, x, y, reweight, state, active, opts)
        opt_ref.zero_grad()
        loss.backward()
        assert torch.equal(captured["x_adv"], x_adv)
        assert m.kappa_sum.tolist() == _class_sums(kappa, y) and m.seen.item() == len(y)
        assert out["loss"].item() == pytest.approx(loss.item(), rel=1e-5, abs=1e-7)
        for (k, p), q in zip(m.student.named_parameters(), copies["student"].parameters()):
            assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), (k, epoch)
        for (k, b), c in zip(m.student.named_buffers(), copies["student"].buffers()):
            assert torch.allclose(b.double(), c.double(), rtol=1e-6, atol=1e-7), k   # BN statistics
        if name == "fair_mtard":
            assert m.w_nat.item() == pytest.approx(state.weight["nat_loss"], rel=1e-6)
        opt_ours.step()
        opt_ref.step()
        m.end_epoch(epoch)
        hand = _released_weight_assign(_class_sums(kappa, y), len(y), guard=guard)
        assert min(_class_sums(kappa, y)) > 0 and all(math.isfinite(v) for v in hand)  # every class counted
        assert m.class_weights.tolist() == pytest.approx(hand, rel=1e-5)
        assert m.kappa_sum.abs().sum().item() == 0 and m.seen.item() == 0
        reweight = torch.tensor(hand, dtype=torch.float32)
    assert len(set(m.class_weights.tolist())) > 1                 # a real re-weighting was used


# -- the class weights -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("opts", [{}, {"beta": 1.5, "weight_min": 0.5, "weight_max": 3.0}])
def test_class_weight_update_by_hand(name, opts):
    if name != "fair_ard":      # Fair-ARD keeps its own option name for the exponent
        opts = {("fair_beta" if k == "beta" else k): v for k, v in opts.items()}
    m = make(name, **opts)
    assert m.class_weights.tolist() == [1.0] * C                # epoch 1 uses ones
    counts, n = [9.0, 6.0, 14.0, 4.0], 20
    m.kappa_sum.copy_(torch.tensor(counts))
    m.seen.fill_(n)
    m.end_epoch(1)
    beta = opts.get("beta", opts.get("fair_beta", 2.0))
    lo, hi = opts.get("weight_min", 5 / 6), opts.get("weight_max", 5 / 2)
    k = [v / (n / C) for v in counts]
    raw = [(1 / (v + (0.0 if name == "fair_rslad" else 1e-5))) ** beta for v in k]
    hand = [min(max(C * v / sum(raw), lo), hi) for v in raw]
    assert m.class_weights.tolist() == pytest.approx(hand, rel=1e-6)
    assert m.class_weights.argmax().item() == 3                 # the least robust class
    summary = m.state_summary()
    assert summary["class_weight_max"].item() == pytest.approx(max(hand), rel=1e-6)
    m.end_epoch(2)                                              # no sample seen: K_c = 0 everywhere
    assert m.class_weights.tolist() == pytest.approx([1.0] * C, rel=1e-6)


def test_fair_rslad_has_no_guard_but_a_class_never_right_gets_the_others_weights():
    m = make("fair_rslad")
    assert m.opts.kappa_eps == 0.0
    counts, n = [8.0, 0.0, 2.0, 5.0], 16
    for eps, expected in ((0.0, None), (1e-5, None)):
        m.opts.kappa_eps = eps
        m.kappa_sum.copy_(torch.tensor(counts))
        m.seen.fill_(n)
        m.end_epoch(1)
        assert torch.isfinite(m.class_weights).all()
        # the guarded formula (the other scripts') for every class: the zero class at 5/2
        assert m.class_weights.tolist() == pytest.approx(
            _released_weight_assign(counts, n, guard=True), rel=1e-4)
    # without a zero class the unguarded formula is the script's, exactly
    m.opts.kappa_eps = 0.0
    m.kappa_sum.copy_(torch.tensor([8.0, 1.0, 2.0, 5.0]))
    m.seen.fill_(n)
    m.end_epoch(1)
    assert m.class_weights.tolist() == pytest.approx(
        _released_weight_assign([8.0, 1.0, 2.0, 5.0], n, guard=False), rel=1e-6)


@pytest.mark.parametrize("name", VARIANTS)
def test_kappa_counts_every_iterate_but_the_last_in_the_attack_mode(name):
    m = make(name, steps=3)
    x, y = batch()
    preds, modes = [], []

    def hook(mod, inp, out):
        preds.append(out.argmax(1).tolist())
        modes.append(mod.training)

    h = m.student.register_forward_hook(hook)
    args = (torch.softmax(m.robust_teacher(x), 1),) if name == "fair_rslad" else ()   # RSLAD's target
    m._adversarial(x, y, *args)
    m._adversarial(x, y, *args)                                 # a second step of the epoch adds up
    h.remove()
    assert len(preds) == 6
    assert modes == [name in ("fair_ard", "fair_iad")] * 6      # ARD / IAD attack in train mode
    labels = y.tolist()
    per_class = [sum(p[i] == labels[i] for p in preds for i in range(8) if labels[i] == c) for c in range(C)]
    assert m.kappa_sum.tolist() == per_class and m.seen.item() == 16
    assert m.class_weights.tolist() == [1.0] * C                # weights move only at the epoch's end


# -- uniform weights: the base method --------------------------------------------------------------------
REDUCTIONS = [("fair_ard", {}, {}), ("fair_ard", {"kl_weight": 0.5, "temperature": 4.0}, None),
              ("fair_rslad", {}, {}), ("fair_mtard", {"nat_teacher": "clean"}, {}),
              ("fair_iad", {"ce_input": "clean", "warmup_ce": True, "kl_weight": 0.7}, {"kl_weight": 0.7}),
              ("fair_iad", {}, {})]


@pytest.mark.parametrize("name,opts,base_opts", REDUCTIONS)
@pytest.mark.parametrize("epoch", [1, 200])
def test_uniform_weights_give_the_base_methods_step(name, opts, base_opts, epoch):
    """All class weights 1 (the first epoch) and the base's switches: the variant's loss and
    gradient are its base method's, step after step (MTARD's adaptive weights included). The
    default Fair-IAD has alpha = 1, so its CE on x' (weight 0) changes nothing either."""
    base_opts = opts if base_opts is None else base_opts
    runs = {}
    for key, method, o in (("fair", name, opts), ("base", BASE[name], base_opts)):
        m = make(method, epochs=200, epoch=epoch, **o)
        outs, grads = [], []
        for seed in (11, 12):
            x, y = batch(seed=seed)
            torch.manual_seed(seed)
            m.student.zero_grad()
            out = m(x, y)
            out["loss"].backward()
            outs.append(out["loss"].item())
            grads.append([p.grad.clone() for p in m.student.parameters()])
            with torch.no_grad():
                for p in m.student.parameters():
                    p -= 0.05 * p.grad
        runs[key] = (outs, grads, m)
    (fo, fg, fm), (bo, bg, bm) = runs["fair"], runs["base"]
    assert fo == pytest.approx(bo, rel=1e-6, abs=1e-8)
    for a, b in zip(fg, bg):
        assert all(torch.allclose(p, q, rtol=1e-5, atol=1e-7) for p, q in zip(a, b))
    if name == "fair_mtard":
        assert fm.w_nat.item() == pytest.approx(bm.w_nat.item(), rel=1e-12)


def test_fair_mtard_natural_term_uses_the_robust_teacher_on_x_adv():
    """As released the clean teacher does not enter the loss (it is forwarded, unused)."""
    x, y = batch()
    losses = {}
    for nat, scale in (("robust", 1.0), ("robust", 5.0), ("clean", 1.0), ("clean", 5.0)):
        m = make("fair_mtard", nat_teacher=nat)
        with torch.no_grad():
            m.clean_teacher.fc.weight.mul_(scale)
        calls = []
        m.clean_teacher.register_forward_hook(lambda *a: calls.append(1))
        torch.manual_seed(3)
        losses[nat, scale] = m(x, y)["loss_nat"].item()
        assert calls == [1]
    assert losses["robust", 1.0] == losses["robust", 5.0]
    assert losses["clean", 1.0] != pytest.approx(losses["clean", 5.0])


def test_fair_iad_ce_is_on_x_adv_and_absent_in_the_warm_up():
    """alpha = 0 leaves the (1 - alpha) CE term alone: class-weighted CE on f_S(x') after
    begin (f_S(x) with --ce-input clean), nothing before it unless --warmup-ce."""
    x, y = batch()
    for epoch, opts, present in ((61, {}, True), (61, {"ce_input": "clean"}, True),
                                 (60, {}, False), (60, {"warmup_ce": True}, True)):
        m = make("fair_iad", epoch=epoch, kl_weight=0.0, **opts)
        m.class_weights.copy_(torch.tensor([1.0, 2.0, 0.5, 1.5]))
        torch.manual_seed(4)
        captured = {}
        real = m._adversarial
        m._adversarial = lambda *a: captured.setdefault("x_adv", real(*a))
        with torch.no_grad():
            s = copy.deepcopy(m.student).train()
        out = m(x, y)
        with torch.no_grad():
            z = s(x if opts.get("ce_input") == "clean" else captured["x_adv"])
        w = [1.0, 2.0, 0.5, 1.5]
        hand = sum(w[int(y[i])] * F.cross_entropy(z[i:i + 1], y[i:i + 1]).item() for i in range(8)) / 8
        assert out["loss_ce"].item() == pytest.approx(hand, rel=1e-5)
        assert out["loss"].item() == (pytest.approx(hand, rel=1e-5) if present else 0.0)


def test_fair_iad_forwards_x_adv_x_then_an_unused_x_adv():
    x, y = batch()
    for forwards, expected in (("released", ["adv", "x", "adv"]), ("once", ["adv", "x"])):
        for epoch in (60, 61):
            m = make("fair_iad", epoch=epoch, bn_forwards=forwards)
            calls = []
            m.student.register_forward_hook(
                lambda mod, inp, out: calls.append("x" if inp[0] is x else "adv"))
            m(x, y)
            assert calls[3:] == expected                          # after the 3 attack iterates


# -- registry, defaults, the attack ------------------------------------------------------------------------
SETTINGS = {  # epochs, schedule of each script (all: SGD 0.1 Nesterov 0.9, wd 2e-4, batch 128)
    "fair_ard": (200, "ard_released"), "fair_rslad": (300, "multistep"),
    "fair_mtard": (300, "multistep"), "fair_iad": (200, "ard_released"),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_registry_labels_and_released_settings(name):
    assert name in list_methods()
    cls = get_method(name)
    label = {"fair_ard": "Fair-ARD", "fair_rslad": "Fair-RSLAD", "fair_mtard": "Fair-MTARD",
             "fair_iad": "Fair-IAD"}[name]
    assert cls.label == label and cls.teachers == get_method(BASE[name]).teachers
    assert cls.train_defaults == {"epochs": SETTINGS[name][0], "batch_size": 128, "lr": 0.1,
                                  "momentum": 0.9, "weight_decay": 2e-4,
                                  "schedule": SETTINGS[name][1], "nesterov": True}
    cfg = resolve(TrainConfig(method=name))
    assert (cfg.epochs, cfg.schedule, cfg.nesterov) == (*SETTINGS[name], True)
    assert "github.com/NISP-official/Fair-ARD" in sys.modules[cls.__module__].__doc__
    o = cls.Options()
    if name == "fair_ard":
        assert (o.beta, o.weight_min, o.weight_max) == (2.0, 5 / 6, 5 / 2)
    else:
        assert (o.fair_beta, o.weight_min, o.weight_max) == (2.0, 5 / 6, 5 / 2)
        assert o.kappa_eps == (0.0 if name == "fair_rslad" else 1e-5)
    base = get_method(BASE[name]).Options()
    same = {"fair_ard": ("temperature", "kl_weight", "attack_mode"),
            "fair_rslad": ("adv_weight", "c100_scale", "student_log"),
            "fair_mtard": ("weight_rate", "beta", "c100_scale"),
            "fair_iad": ("temperature", "kl_weight", "beta", "introspection_start", "attack_mode",
                         "self_target_grad", "trust_teacher")}[name]
    assert all(getattr(o, k) == getattr(base, k) for k in same)
    if name == "fair_mtard":
        assert o.nat_teacher == "robust"
    if name == "fair_iad":
        assert (o.ce_input, o.warmup_ce, o.bn_forwards) == ("adversarial", False, "released")
        assert make("fair_iad", epochs=200).introspection_after == 60


@pytest.mark.parametrize("name", VARIANTS)
def test_resume_state_is_in_buffers(name):
    m = make(name)
    x, y = batch()
    m(x, y)
    state = m.checkpoint_state()
    assert {"class_weights", "kappa_sum", "seen"} <= set(state)
    other = make(name)
    other.load_checkpoint_state(state)
    assert torch.equal(other.kappa_sum, m.kappa_sum) and other.seen.item() == 8
