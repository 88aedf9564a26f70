"""The baselines of the paper's tables (METHODS.md), each checked against a hand computation.

Per method: the outer loss on a fixed adversarial batch equals the formula of METHODS.md
computed in plain Python; the inner maximisation's objective, start, model mode and the
models it queries are those of §11; adaptive state follows its update rule by hand. Over the
whole registry: one short engine run that resumes mid-epoch to the same state, a loss that
decreases on a fixed batch, no gradient into teachers, no host sync in forward.
"""
import copy
import math
import sys

import pytest
import torch

from ciard_bench import train as engine
from ciard_bench.config import SHARED_PROTOCOL, TrainConfig, resolve
from ciard_bench.methods import get_method, list_methods
from ciard_bench.plugins import origin
from ciard_bench.api import inner as pgd_module
from ciard_bench.models import create_model, save_model_file
from ciard_bench.runs import RunDir

from toys import ce, fix_adv, kl, kle, log_softmax, mean, rows, softmax, tiny_method

C = 4
# the built-ins (an installed plugin, e.g. examples/ard-plugin, is checked by its own tests)
METHODS = [n for n in list_methods() if n != "ciard" and origin("method", n) is None]  # CIARD: test_ciard.py
ATTACKING = [n for n in METHODS if hasattr(get_method(n), "_adversarial")]


def make(name, classes=C, epochs=300, steps=3, **opts):
    m = tiny_method(name, classes, epochs, steps, **opts)
    m.begin_epoch(1)
    return m.train()


def batch(n=8, seed=5, classes=C):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes                                 # every class present
    return torch.rand(n, 3, 8, 8, generator=g), y[torch.randperm(n, generator=g)]


def ref(m, x, x_adv):
    """Logits the step should use, on copies: student in train mode, teachers in eval mode."""
    out = {}
    with torch.no_grad():
        s = copy.deepcopy(m.student).train()
        out["s"], out["sa"] = rows(s(x)), rows(s(x_adv))
        for role in type(m).teachers:
            t = copy.deepcopy(getattr(m, role)).eval()
            out[role], out[role + "_adv"] = rows(t(x)), rows(t(x_adv))
    return out


def approx(v):
    return pytest.approx(v, rel=1e-5, abs=1e-9)


# -- outer losses by hand -----------------------------------------------------------------------
def test_sat_loss_is_ce_on_adversarial_examples():
    m = make("sat")
    x, y = batch()
    r = ref(m, x, fix_adv(m, x))
    out = m(x, y)
    assert out["loss"].item() == approx(mean(ce(r["sa"][i], y[i]) for i in range(8)))
    assert out["loss_nat"].item() == approx(mean(ce(r["s"][i], y[i]) for i in range(8)))
    assert "loss_nat" not in make("sat", clean_forward=False)(x, y)


@pytest.mark.parametrize("forwards", [2, 1])
def test_trades_loss(forwards):
    m = make("trades", clean_forwards=forwards)
    x, y = batch()
    r = ref(m, x, fix_adv(m, x))
    rob = mean(kl(softmax(r["s"][i]), log_softmax(r["sa"][i])) for i in range(8))
    hand = mean(ce(r["s"][i], y[i]) for i in range(8)) + 6 * rob
    assert m(x, y)["loss"].item() == approx(hand)


@pytest.mark.parametrize("name", ["ard", "fair_ard"])
@pytest.mark.parametrize("opts", [{}, {"kl_weight": 0.5, "temperature": 4.0}])
def test_ard_and_fair_ard_loss(name, opts):
    m = make(name, **opts).double()      # float64: at T = 30 the KL of near-equal rows cancels in float32
    weights = [1.0] * C
    if name == "fair_ard":
        weights = [1.0, 2.0, 0.5, 1.5]
        m.class_weights.copy_(torch.tensor(weights))
    x, y = batch()
    x = x.double()
    r = ref(m, x, fix_adv(m, x))
    T, a = opts.get("temperature", 30.0), opts.get("kl_weight", 1.0)
    klc = mean(weights[y[i]] * kl(softmax(r["robust_teacher"][i], T), log_softmax(r["sa"][i], T)) / C
               for i in range(8))                           # teacher on CLEAN x; KLDivLoss(): / (B C)
    hand = a * T * T * klc + (1 - a) * mean(weights[y[i]] * ce(r["s"][i], y[i]) for i in range(8))
    assert m(x, y)["loss"].item() == approx(hand)


def test_rslad_loss_and_cifar100_scale():
    m = make("rslad")
    x, y = batch()
    r = ref(m, x, fix_adv(m, x))
    p = [softmax(z) for z in r["robust_teacher"]]               # the teacher's CLEAN soft labels
    assert m(x, y)["loss"].item() == approx(5 / 6 * kle(p, r["sa"]) + 1 / 6 * kle(p, r["s"]))
    x100, y100 = batch(classes=100)
    losses = {}
    for scale in (10.0, 1.0):
        m = make("rslad", classes=100, c100_scale=scale)
        r = ref(m, x100, fix_adv(m, x100))
        p = [softmax(z) for z in r["robust_teacher"]]
        losses[scale] = m(x100, y100)["loss"].item()
        assert losses[scale] == approx(scale * (5 / 6 * kle(p, r["sa"]) + 1 / 6 * kle(p, r["s"])))


@pytest.mark.parametrize("mode", ["product", "separate"])
def test_absld_loss_uses_class_temperatures(mode):
    m = make("absld", soft_labels=mode)
    t_adv, t_nat = [1.0, 2.0, 0.5, 1.5], [2.0, 1.0, 1.0, 0.8]
    m.tau_adv.copy_(torch.tensor(t_adv))
    m.tau_nat.copy_(torch.tensor(t_nat))
    x, y = batch()
    r = ref(m, x, fix_adv(m, x))
    z = r["robust_teacher"]
    if mode == "product":        # released aliasing: both soft labels use tau_adv * tau_nat
        p_adv = p_nat = [softmax(z[i], t_adv[y[i]] * t_nat[y[i]]) for i in range(8)]
    else:
        p_adv = [softmax(z[i], t_adv[y[i]]) for i in range(8)]
        p_nat = [softmax(z[i], t_nat[y[i]]) for i in range(8)]
    assert m(x, y)["loss"].item() == approx(5 / 6 * kle(p_adv, r["sa"]) + 1 / 6 * kle(p_nat, r["s"]))


def test_absld_accumulates_class_losses_and_updates_temperatures_by_hand():
    m = make("absld")
    x, y = batch()
    r = ref(m, x, fix_adv(m, x))
    m(x, y)
    m(x, y)                                                     # two steps of the same batch
    hand_adv = [2 * sum(ce(r["sa"][i], c) for i in range(8) if y[i] == c) for c in range(C)]
    hand_nat = [2 * sum(ce(r["s"][i], c) for i in range(8) if y[i] == c) for c in range(C)]
    assert m.loss_sum_adv.tolist() == pytest.approx(hand_adv, rel=1e-5)
    assert m.loss_sum_nat.tolist() == pytest.approx(hand_nat, rel=1e-5)

    def step(tau, sums, rate):
        gap = [s - mean(sums) for s in sums]
        return [min(max(t - rate * g / max(abs(v) for v in gap), 0.5), 5.0) for t, g in zip(tau, gap)]

    m.end_epoch(1)
    assert m.tau_adv.tolist() == pytest.approx(step([1.0] * C, hand_adv, 0.1), rel=1e-5)
    assert m.tau_nat.tolist() == pytest.approx(step([1.0] * C, hand_nat, 0.1), rel=1e-5)
    assert m.loss_sum_adv.abs().sum() == 0                      # the sums restart each epoch
    before = m.tau_adv.tolist()
    m.loss_sum_adv.copy_(torch.tensor(hand_adv))
    m.end_epoch(215)                                            # rate already x0.1 at epoch 215
    assert m.tau_adv.tolist() == pytest.approx(step(before, hand_adv, 0.01), rel=1e-5)


def _mtard_losses(m, r, tau_a=1.0, tau_n=1.0):
    p_a = [softmax(z, tau_a) for z in r["robust_teacher_adv"]]  # robust teacher ON x'
    p_n = [softmax(z, tau_n) for z in r["clean_teacher"]]       # clean teacher on x
    return kle(p_a, r["sa"]), kle(p_n, r["s"]), p_a, p_n


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_mtard_loss_and_adaptive_weights_by_hand(beta):
    m = make("mtard", beta=beta)
    x, y = batch()
    x_adv = fix_adv(m, x)
    l_adv0, l_nat0, _, _ = _mtard_losses(m, ref(m, x, x_adv))
    out = m(x, y)                                               # step 1: L0 recorded, w stay 1/2
    assert out["loss"].item() == approx(0.5 * l_adv0 + 0.5 * l_nat0)
    m.student.fc.bias.data += torch.tensor([1.0, -1.0, 0.5, 0.0])
    l_adv, l_nat, _, _ = _mtard_losses(m, ref(m, x, x_adv))
    r_adv, r_nat = (l_adv / l_adv0) ** beta, (l_nat / l_nat0) ** beta
    w_nat = 0.5 - 0.025 * (0.5 - r_nat / (r_adv + r_nat))
    out = m(x, y)
    assert m.w_nat.item() == approx(w_nat) and m.w_adv.item() == approx(1 - w_nat)
    assert out["loss"].item() == approx((1 - w_nat) * l_adv + w_nat * l_nat)


def test_mtard_rate_decay_and_cifar100_scale():
    m = make("mtard")
    for epoch, rate in ((215, 0.025), (216, 0.0025), (216, 0.0025), (286, 0.000025)):
        m.begin_epoch(epoch)                                    # idempotent (mid-epoch resume)
        assert m.weight_rate.item() == approx(rate)
    x, y = batch(classes=100)
    m = make("mtard", classes=100)
    l_adv, l_nat, _, _ = _mtard_losses(m, ref(m, x, fix_adv(m, x)))
    out = m(x, y)
    assert out["loss_adv"].item() == approx(10 * l_adv) and out["loss_nat"].item() == approx(10 * l_nat)


def test_bmtard_temperatures_and_weights_by_hand():
    m = make("bmtard")
    x, y = batch()
    x_adv = fix_adv(m, x)
    l_adv0, l_nat0, _, _ = _mtard_losses(m, ref(m, x, x_adv))
    m(x, y)                                                     # L0 taken with tau = 1
    m.tau_a.fill_(2.0)
    m.tau_n.fill_(3.0)
    m.student.fc.bias.data += torch.tensor([1.0, -1.0, 0.5, 0.0])
    l_adv, l_nat, p_a, p_n = _mtard_losses(m, ref(m, x, x_adv), 2.0, 3.0)
    w_adv, w_nat = m.w_adv.item(), m.w_nat.item()
    out = m(x, y)
    assert out["loss_adv"].item() == approx(l_adv) and out["loss_nat"].item() == approx(l_nat)
    ent = lambda probs: mean(p * math.log(p + 1e-5) for row in probs for p in row)
    sign = lambda v: (v > 0) - (v < 0)
    h_a, h_n = ent(p_a), ent(p_n)
    assert m.tau_a.item() == approx(2.0 - 0.001 * sign(h_a / h_n - 1))
    assert m.tau_n.item() == approx(3.0 - 0.001 * sign(h_n / h_a - 1))
    la, ln = l_adv / l_adv0, l_nat / l_nat0
    ra, rn = la / ((la + ln) / 2), ln / ((la + ln) / 2)
    new_a, new_n = (max(w - 0.025 * (w - r / (ra + rn)), 0) for w, r in ((w_adv, ra), (w_nat, rn)))
    assert m.w_adv.item() == approx(new_a / (new_a + new_n))
    assert out["loss"].item() == approx((new_a * l_adv + new_n * l_nat) / (new_a + new_n))
    m.begin_epoch(216)
    assert m.temp_rate.item() == approx(1e-4) and m.weight_rate.item() == approx(0.0025)


@pytest.mark.parametrize("opts", [{}, {"beta": 3.0, "clip_loss": 0.0, "label_smoothing": 0.3}])
def test_score_loss(opts):
    m = make("score", **opts)
    x, y = batch()
    r = ref(m, x, fix_adv(m, x))
    beta, clip, ls = opts.get("beta", 6.0), opts.get("clip_loss", 0.3), opts.get("label_smoothing", 0.0) / (C - 1)
    bound = clip * clip * C / (C - 1)                           # 0.12 for clip 0.3, C = 4
    total = 0.0
    for i in range(8):
        p, pa = softmax(r["s"][i]), softmax(r["sa"][i])
        target = [(1 - C * ls) * (c == int(y[i])) + ls for c in range(C)]
        li = sum((a - b) ** 2 for a, b in zip(p, target)) + beta * sum((a - b) ** 2 for a, b in zip(pa, p))
        total += max(li - bound, 0.0)
    assert m(x, y)["loss"].item() == approx(total / 8)


@pytest.mark.parametrize("classes,opts,scale", [(C, {}, 1), (C, {"adv_weight": 0.25}, 1), (100, {}, 100)])
def test_adaad_loss(classes, opts, scale):
    m = make("adaad", classes=classes, **opts)
    x, y = batch(classes=classes)
    r = ref(m, x, fix_adv(m, x))
    n, a = len(y), opts.get("adv_weight", 1.0)
    adv = sum(kl(softmax(r["robust_teacher_adv"][i]), log_softmax(r["sa"][i])) for i in range(n))
    nat = sum(kl(softmax(r["robust_teacher"][i]), log_softmax(r["s"][i])) for i in range(n))
    assert m(x, y)["loss"].item() == approx(scale * (a * adv + (1 - a) * nat) / (n * classes))


def test_fair_ard_counts_kappa_and_sets_class_weights_by_hand():
    m = make("fair_ard", steps=3)
    x, y = batch()
    preds = []
    m.student.register_forward_hook(lambda mod, inp, out: preds.append(out.argmax(1).tolist()))
    m._adversarial(x, y)
    assert len(preds) == 3                                      # iterates x'_0 .. x'_2, train mode
    labels = y.tolist()
    kappa = [sum(p[i] == labels[i] for p in preds) for i in range(8)]
    per_class = [sum(k for k, c in zip(kappa, labels) if c == cls) for cls in range(C)]
    assert m.kappa_sum.tolist() == per_class and m.seen.item() == 8
    assert m.class_weights.tolist() == [1.0] * C                # epoch 1 uses ones
    m.end_epoch(1)
    K = [k / (8 / C) for k in per_class]
    raw = [(1 / (k + 1e-5)) ** 2 for k in K]
    hand = [min(max(C * v / sum(raw), 5 / 6), 5 / 2) for v in raw]
    assert m.class_weights.tolist() == pytest.approx(hand, rel=1e-5)
    assert m.kappa_sum.sum().item() == 0 and m.seen.item() == 0


# -- inner maximisation: objective, start, mode, who is queried (METHODS.md §11) -----------------
ATTACKS = {  # start, start clamped to [0, 1], student mode, teachers queried at each step
    "sat": ("gauss", True, "eval", ()),
    "trades": ("gauss", False, "eval", ()),
    "ard": ("uniform", False, "train", ()),
    "fair_ard": ("uniform", False, "train", ()),
    "iad_i": ("uniform", False, "train", ()), "iad_ii": ("uniform", False, "train", ()),
    "fair_iad": ("uniform", False, "train", ()),
    "rslad": ("gauss", False, "eval", ()), "fair_rslad": ("gauss", False, "eval", ()),
    "absld": ("gauss", False, "eval", ()),
    "mtard": ("gauss", False, "eval", ()), "fair_mtard": ("gauss", False, "eval", ()),
    "bmtard": ("gauss", False, "eval", ()),
    "score": ("gauss", True, "eval", ()),
    "adaad": ("gauss", False, "eval", ("robust_teacher",)),
    "peeraid": ("gauss", False, "eval", ()),       # the peer's clean label is computed before
}


def _objective(name, m, x, y, x0):
    """The attack objective at x0, by hand from METHODS.md (models in the attack's modes)."""
    with torch.no_grad():
        s0 = rows(m.student(x0))
        if name in ("sat", "mtard", "bmtard", "fair_mtard"):
            return mean(ce(s0[i], y[i]) for i in range(8))
        if name in ("ard", "fair_ard", "iad_i", "iad_ii", "fair_iad"):
            return sum(ce(s0[i], y[i]) for i in range(8))
        if name == "trades":
            s = rows(m.student(x))
            return sum(kl(softmax(s[i]), log_softmax(s0[i])) for i in range(8))
        if name == "score":
            s = rows(m.student(x))
            return mean(sum((a - b) ** 2 for a, b in zip(softmax(s0[i]), softmax(s[i]))) for i in range(8))
        if name in ("rslad", "absld", "fair_rslad"):   # the teacher's CLEAN soft label (ABSLD: / tau_a tau_n)
            z, tau = rows(m.robust_teacher(x)), [1.0] * 8
            if name == "absld":
                tau = (m.tau_adv[y] * m.tau_nat[y]).tolist()
            return sum(kl(softmax(z[i], tau[i]), log_softmax(s0[i])) for i in range(8))
        if name == "adaad":                   # the teacher AT x0
            z0 = rows(m.robust_teacher(x0))
            return sum(kl(softmax(z0[i]), log_softmax(s0[i])) for i in range(8))
        if name == "peeraid":                 # the peer's CLEAN prediction, in eval mode
            z = rows(copy.deepcopy(m.peer).eval()(x))
            return sum(kl(softmax(z[i]), log_softmax(s0[i])) for i in range(8))
    raise AssertionError(f"add the attack objective of {name!r} (METHODS.md) to this test")


def _spy_pgd(monkeypatch, m, record):
    real = pgd_module.pgd

    def spy(loss_fn, x, **kw):
        record.update(kw, student_training=m.student.training, bn_training=m.student.bn.training)
        counts = {r: 0 for r in ("student", *type(m).teachers)}
        hooks = [getattr(m, r).register_forward_hook(lambda *a, r=r: counts.__setitem__(r, counts[r] + 1))
                 for r in counts]
        x0 = torch.rand_like(x)           # any point: far from x, so float32 KL does not cancel
        with torch.no_grad():
            record["value"] = loss_fn(x0).item()
        for h in hooks:
            h.remove()
        record.update(counts=counts, x0=x0, loss_fn=loss_fn)
        record["hand"] = _objective(record["name"], m, x, record["y"], x0)
        bn = m.student.bn.running_mean.clone()
        out = real(loss_fn, x, **kw)
        record["bn_moved"] = not torch.equal(bn, m.student.bn.running_mean)
        record["x_adv"] = out
        return out

    for mod in {sys.modules[k.__module__] for k in type(m).__mro__ if k.__module__.startswith("ciard_bench.methods")}:
        if hasattr(mod, "pgd"):
            monkeypatch.setattr(mod, "pgd", spy)


@pytest.mark.parametrize("name", ATTACKING)
def test_inner_maximisation_objective_mode_start_and_queries(name, monkeypatch):
    assert name in ATTACKS, f"add {name!r} to ATTACKS (METHODS.md §11)"
    start, clamped, mode, queried = ATTACKS[name]
    m = make(name, steps=2)
    if name == "absld":
        m.tau_adv.copy_(torch.tensor([1.0, 2.0, 0.5, 1.5]))
        m.tau_nat.copy_(torch.tensor([2.0, 1.0, 1.0, 0.8]))
    x, y = batch()
    record = {"name": name, "y": y}
    _spy_pgd(monkeypatch, m, record)
    m(x, y)
    assert record["start"] == start and record.get("clamp_start", False) == clamped
    assert record["student_training"] == record["bn_training"] == (mode == "train")
    assert record["bn_moved"] == (mode == "train")              # ARD's attack moves BN statistics
    assert record["value"] == pytest.approx(record["hand"], rel=1e-4)
    assert record["counts"] == {"student": 1, **{r: int(r in queried) for r in type(m).teachers}}
    assert (record["x_adv"] - x).abs().max().item() <= 8 / 255 + 1e-6
    assert 0 <= record["x_adv"].min().item() and record["x_adv"].max().item() <= 1
    assert m.student.training and m.student.bn.training        # mode restored
    assert all(not getattr(m, r).training for r in type(m).teachers)


@pytest.mark.parametrize("name", ATTACKING)
def test_attack_start_distribution_and_clamping(name, monkeypatch):
    start, clamped, _, _ = ATTACKS[name]
    m = make(name, steps=0)                                     # no step: x' is the start point
    x, y = batch()
    x[:, 0], x[:, 1] = 0.0, 1.0                                 # pixels on both borders
    record = {"name": name, "y": y}
    _spy_pgd(monkeypatch, m, record)
    m(x, y)
    delta = (record["x_adv"] - x).abs().max().item()
    assert (delta > 4 / 255) if start == "uniform" else (delta < 0.01)
    inside = record["x_adv"].min().item() >= 0 and record["x_adv"].max().item() <= 1
    assert inside == clamped


def test_adaad_attack_differentiates_through_the_teacher(monkeypatch):
    m = make("adaad")
    x, y = batch()
    record = {"name": "adaad", "y": y}
    _spy_pgd(monkeypatch, m, record)
    m(x, y)
    x0 = record["x0"].clone().requires_grad_(True)
    with pgd_module.eval_mode(m.student):
        (g_full,) = torch.autograd.grad(record["loss_fn"](x0), x0)
        s, t = torch.log_softmax(m.student(x0), 1), torch.softmax(m.robust_teacher(x0), 1)
        (g_student,) = torch.autograd.grad(torch.nn.functional.kl_div(s, t.detach(), reduction="sum"), x0)
    assert not torch.allclose(g_full, g_student)               # the teacher's gradient is in it
    assert all(p.grad is None for p in m.robust_teacher.parameters())


@pytest.mark.parametrize("name,opts,mode", [("sat", {"attack_mode": "train"}, True),
                                            ("ard", {"attack_mode": "eval"}, False)])
def test_attack_mode_switch(name, opts, mode, monkeypatch):
    m = make(name, **opts)
    x, y = batch()
    record = {"name": name, "y": y}
    _spy_pgd(monkeypatch, m, record)
    m(x, y)
    assert record["student_training"] == record["bn_moved"] == mode


# -- every registered method ----------------------------------------------------------------------
@pytest.mark.parametrize("name", METHODS)
def test_loss_decreases_on_a_fixed_batch_and_teachers_get_no_gradient(name):
    m = make(name)
    x, y = batch()
    if hasattr(m, "_adversarial"):
        fix_adv(m, x)
    opt = torch.optim.SGD(m.student.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(8):
        out = m(x, y)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0], losses
    for role in type(m).teachers:
        assert all(p.grad is None for p in getattr(m, role).parameters())


@pytest.mark.parametrize("name", METHODS)
def test_forward_never_syncs_with_the_host(name, monkeypatch):
    m = make(name, steps=1)
    x, y = batch()

    def forbidden(*a, **k):
        raise AssertionError("host sync in forward")

    for attr in ("item", "tolist", "__bool__", "__float__", "__int__", "nonzero"):
        monkeypatch.setattr(torch.Tensor, attr, forbidden)
    out = m(x, y)
    monkeypatch.undo()
    assert torch.isfinite(out["loss"]).item()


@pytest.mark.parametrize("name", [*METHODS, "ciard"])
def test_scalar_adaptive_state_is_float64_and_losses_stay_float32(name):
    """Every 0-dim floating buffer of a method is adaptive state the released code keeps as a
    Python float: float64 (issue 12); per-class vectors (ABSLD, Fair-ARD) are float32 tensors in
    the released code too. The losses stay float32, as Python float * float32 tensor gives."""
    m = make(name, steps=1)
    own = {n: b for n, b in m.named_buffers(recurse=False) if b.is_floating_point()}
    for buf_name, buf in own.items():
        assert buf.dtype == (torch.float64 if buf.dim() == 0 else torch.float32), (name, buf_name)
    x, y = batch()
    for _ in range(2):
        out = m(x, y)
    assert all(v.dtype == torch.float32 for v in out.values()), {k: v.dtype for k, v in out.items()}


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    paths = {}
    for role, seed in (("clean_teacher", 1), ("robust_teacher", 2)):
        torch.manual_seed(seed)
        paths[role] = str(root / f"{role}.pt")
        save_model_file(create_model("resnet8", 10), {"name": "resnet8", "num_classes": 10}, paths[role])
    return paths


class Killed(Exception):
    pass


def _cfg(name, out, teachers):
    return TrainConfig(method=name, dataset="digits", n_train=16, n_test=8, student="resnet8", epochs=2,
                       batch_size=8, attack_steps=1, eval_batch_size=8, ckpt_every_steps=1, seed=3,
                       out=str(out), **teachers)


@pytest.mark.parametrize("name", METHODS)
def test_engine_trains_and_resumes_mid_epoch_to_the_same_state(name, tmp_path, teacher_files, monkeypatch):
    # evaluation is not under test here (tests/test_train.py): a constant keeps this fast
    monkeypatch.setattr(engine, "evaluate_epoch", lambda run, epoch: {"clean_acc": 0.0, "pgd_trades_acc": 0.0, "wr": 0.0})
    engine.train(_cfg(name, tmp_path / "straight", teacher_files))
    real_save, saves = RunDir.save, [0]

    def save_then_die(self, *a, **k):
        real_save(self, *a, **k)
        saves[0] += 1
        if saves[0] == 1:                                       # epoch 1, after step 1 of 2
            raise Killed()

    with monkeypatch.context() as mp:
        mp.setattr(RunDir, "save", save_then_die)
        with pytest.raises(Killed):
            engine.train(_cfg(name, tmp_path / "killed", teacher_files))
    assert (RunDir(tmp_path / "killed").read_state()["last"]["step"]) == 1
    engine.train(_cfg(name, tmp_path / "killed", teacher_files), resume=True)
    a, b = RunDir(tmp_path / "straight").load("last"), RunDir(tmp_path / "killed").load("last")
    assert a["epoch"] == b["epoch"] == 2
    for key in ("state_dict", "method_state"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.allclose(a[key][k].double(), b[key][k].double(), rtol=0, atol=0, equal_nan=True), (key, k)
    strip = lambda h: [{k: v for k, v in r.items() if k != "time_s"} for r in h]
    assert strip(a["history"]) == strip(b["history"])
    assert all(math.isfinite(r["loss"]) for r in a["history"])


@pytest.mark.parametrize("name", METHODS)
def test_released_and_shared_protocols(name):
    cls = get_method(name)
    released = resolve(TrainConfig(method=name))
    assert {k: getattr(released, k) for k in cls.train_defaults} == cls.train_defaults
    shared = resolve(TrainConfig(method=name, protocol="shared"))
    assert {k: getattr(shared, k) for k in SHARED_PROTOCOL} == SHARED_PROTOCOL


RELEASED = {  # METHODS.md §11: epochs, lr, weight decay, schedule of each released script
    "sat": (110, 0.1, 5e-4, "sat_released"), "trades": (76, 0.1, 2e-4, "trades_released"),
    "ard": (200, 0.1, 2e-4, "ard_released"), "fair_ard": (200, 0.1, 2e-4, "ard_released"),
    "rslad": (300, 0.1, 2e-4, "multistep"), "absld": (300, 0.1, 2e-4, "multistep"),
    "mtard": (300, 0.1, 2e-4, "multistep"), "bmtard": (300, 0.1, 2e-4, "multistep"),
    "score": (110, 0.05, 5e-4, "sat_released"), "adaad": (200, 0.1, 5e-4, "adaad"),
    "fair_rslad": (300, 0.1, 2e-4, "multistep"), "fair_mtard": (300, 0.1, 2e-4, "multistep"),
    "fair_iad": (200, 0.1, 2e-4, "ard_released"), "peeraid": (300, 0.1, 2e-4, "peeraid_released"),
}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_training_settings(name):
    d = get_method(name).train_defaults
    assert (d["epochs"], d["lr"], d["weight_decay"], d["schedule"]) == RELEASED[name]
    assert d["batch_size"] == 128 and d["momentum"] == 0.9


def test_cli_lists_every_method_and_documents_its_switches(capsys):
    assert engine.main(["--list-methods"]) == 0
    listing = capsys.readouterr().out.splitlines()
    for name in list_methods():
        cls = get_method(name)
        assert cls.description and cls.paper and sys.modules[cls.__module__].__doc__
        if name in RELEASED:                                    # the baselines cite their official code
            assert "github.com" in sys.modules[cls.__module__].__doc__
        assert any(line.split()[0] == name and cls.paper in line for line in listing)
    for name in METHODS:
        with pytest.raises(SystemExit):
            engine.main(["--method", name, "--help"])
        helptext = capsys.readouterr().out
        for field in get_method(name).Options.__dataclass_fields__:
            assert "--" + field.replace("_", "-") in helptext, (name, field)
