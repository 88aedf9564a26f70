"""ard-plugin's own tests: each piece against an independent computation.

1. AKD's outer loss, inner maximisation and whole step against a hand computation written
   here with plain torch operations (softmax and log-softmax spelled out, PGD written out);
2. the ``cnn4`` student's output shape, width and registration;
3. the datasets' arrays (``digits_inverted`` image for image against the built-in ``digits``;
   ``image_folder`` on a folder written here);
4. the entry points: installed, and every name they register attributed to this distribution.

Run after ``pip install -e examples/ard-plugin``: ``python -m pytest examples/ard-plugin/tests``.
"""
from __future__ import annotations

import copy
from importlib import metadata

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ciard_bench import plugins
from ciard_bench.api import (Context, UserError, create_method, create_model, get_method,
                             list_datasets, list_methods, list_models, make_options)

DIST, VERSION = "ard-plugin", "0.1.0"
C = 4                                           # classes of the toy models below
torch.set_num_threads(1)                        # tiny models: a second thread only spins

try:                                            # the plugin must be installed, not just on disk
    metadata.distribution(DIST)
except metadata.PackageNotFoundError:           # pragma: no cover - a set-up error
    pytest.fail(f"{DIST} is not installed: pip install -e examples/ard-plugin", pytrace=False)
# look a name up BEFORE anything imports ard_plugin: the entry points then load it, so its
# registrations are recorded as this distribution's (a direct earlier import would not be)
list_methods()


# -- toy models and hand computations ----------------------------------------------------------
class Tiny(nn.Module):
    """conv + BatchNorm + global mean + linear on 3 x 8 x 8 inputs."""

    def __init__(self, seed: int, classes: int = C):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3))) * 3


def make(steps: int = 3, **opts):
    ctx = Context(num_classes=C, epochs=1, steps=steps)
    return create_method("akd", Tiny(0), {"robust_teacher": Tiny(1)}, ctx, opts).train()


def batch(n: int = 8, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g), torch.arange(n) % C


def hand_log_softmax(z):
    """log q_k = z_k - m - log sum_j exp(z_j - m), m = max_j z_j, per row."""
    m = z.max(dim=1, keepdim=True).values
    return z - m - torch.log(torch.exp(z - m).sum(dim=1, keepdim=True))


def hand_loss(z_s, z_t, y, a, t):
    """a T^2 mean_i sum_k p_k (log p_k - log q_k) + (1 - a) mean_i (-log q_{i, y_i})."""
    log_p, log_q = hand_log_softmax(z_t / t), hand_log_softmax(z_s / t)
    kl = (torch.exp(log_p) * (log_p - log_q)).sum(dim=1).mean()
    ce = -hand_log_softmax(z_s)[torch.arange(len(y)), y].mean()
    return a * t * t * kl + (1 - a) * ce, kl, ce


def hand_pgd(student, x, y, eps, step, steps, start):
    """PGD written out: a start (drawn from the global RNG), then ``steps`` signed steps of
    the batch-mean CE, each kept within eps of x and within [0, 1]. ``student`` is a copy."""
    if start == "uniform":
        xa = x + torch.empty(x.shape, dtype=x.dtype).uniform_(-eps, eps)
    else:
        xa = x + 1e-3 * torch.randn(x.shape, dtype=x.dtype)
    for _ in range(steps):
        xa = xa.detach().requires_grad_(True)
        z = student(xa)
        ce = -hand_log_softmax(z)[torch.arange(len(y)), y].mean()
        (g,) = torch.autograd.grad(ce, xa)
        xa = xa.detach() + step * torch.sign(g)
        xa = torch.max(torch.min(xa, x + eps), x - eps).clamp(0, 1)
    return xa.detach()


# -- 1. the method -------------------------------------------------------------------------------
@pytest.mark.parametrize("opts", [{}, {"kl_weight": 0.5, "temperature": 4.0},
                                  {"kl_weight": 0.0}, {"kl_weight": 1.0, "temperature": 2.0}])
def test_outer_loss_matches_the_hand_computation_with_the_teacher_on_x_adv(opts):
    m = make(**opts).double()
    x, y = batch()
    x = x.double()
    g = torch.Generator().manual_seed(9)
    x_adv = (x + (torch.rand(x.shape, generator=g, dtype=torch.float64) * 2 - 1) * 8 / 255).clamp(0, 1)
    m._adversarial = lambda *args: x_adv                       # a fixed inner maximum
    with torch.no_grad():
        z_s = copy.deepcopy(m.student).train()(x_adv)          # the step's student: train mode
        z_t = copy.deepcopy(m.robust_teacher).eval()(x_adv)    # the teacher AT x', eval mode
    seen = []
    m.robust_teacher.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    out = m(x, y)
    a, t = opts.get("kl_weight", 0.9), opts.get("temperature", 1.0)
    loss, kl, ce = hand_loss(z_s, z_t, y, a, t)
    assert out["loss"].item() == pytest.approx(loss.item(), rel=1e-12, abs=1e-12)
    assert out["loss_kl"].item() == pytest.approx(kl.item(), rel=1e-12, abs=1e-12)
    assert out["loss_adv"].item() == pytest.approx(ce.item(), rel=1e-12, abs=1e-12)
    assert len(seen) == 1 and torch.equal(seen[0], x_adv)     # queried once, on x' only
    out["loss"].backward()
    assert all(p.grad is None for p in m.robust_teacher.parameters())
    assert all(p.grad is not None for p in m.student.parameters())


@pytest.mark.parametrize("start", ["uniform", "gauss"])
def test_inner_maximisation_is_pgd_on_the_students_ce_in_eval_mode(start):
    m = make(steps=3, start=start)
    x, y = batch()
    x[:, 0] = 0.0                                              # pixels on the border
    reference = copy.deepcopy(m.student).eval()
    bn_before = m.student.bn.running_mean.clone()
    calls = []
    m.robust_teacher.register_forward_hook(lambda *a: calls.append(1))
    torch.manual_seed(123)
    x_adv = m._adversarial(x, y)
    torch.manual_seed(123)
    expected = hand_pgd(reference, x, y, eps=8 / 255, step=2 / 255, steps=3, start=start)
    assert torch.equal(x_adv, expected)
    assert (x_adv - x).abs().max().item() <= 8 / 255 + 1e-7
    assert x_adv.min().item() >= 0 and x_adv.max().item() <= 1
    assert not calls                                           # the teacher is not queried
    assert torch.equal(m.student.bn.running_mean, bn_before)  # eval mode: BN statistics kept
    assert m.student.training and m.student.bn.training       # and the mode restored


def test_unclamped_start_and_the_train_mode_switch():
    m = make(steps=0)                                          # no step: x' is the start point
    x, y = batch()
    x[:, 0], x[:, 1] = 0.0, 1.0
    x_adv = m._adversarial(x, y)
    assert x_adv.min().item() < 0 and x_adv.max().item() > 1  # the start is not clamped
    assert (x_adv - x).abs().max().item() > 4 / 255            # uniform over the eps ball
    m = make(steps=1, attack_mode="train")
    bn_before = m.student.bn.running_mean.clone()
    m._adversarial(x, y)
    assert not torch.equal(m.student.bn.running_mean, bn_before)


def test_the_whole_step_is_the_hand_loss_at_the_hand_pgd_point():
    m = make(steps=2, kl_weight=0.7, temperature=2.0).double()
    x, y = batch()
    x = x.double()
    attack_copy = copy.deepcopy(m.student).eval()
    outer_copy = copy.deepcopy(m.student).train()
    teacher_copy = copy.deepcopy(m.robust_teacher).eval()
    torch.manual_seed(7)
    out = m(x, y)
    torch.manual_seed(7)
    x_adv = hand_pgd(attack_copy, x, y, eps=8 / 255, step=2 / 255, steps=2, start="uniform")
    with torch.no_grad():
        loss, _, _ = hand_loss(outer_copy(x_adv), teacher_copy(x_adv), y, 0.7, 2.0)
    assert out["loss"].item() == pytest.approx(loss.item(), rel=1e-12, abs=1e-12)
    assert set(out) == {"loss", "loss_kl", "loss_adv"}
    assert not out["loss_kl"].requires_grad and not out["loss_adv"].requires_grad


def test_training_on_a_fixed_batch_lowers_the_loss():
    m = make()
    x, y = batch()
    g = torch.Generator().manual_seed(3)
    x_adv = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * 8 / 255).clamp(0, 1)
    m._adversarial = lambda *args: x_adv
    opt = torch.optim.SGD(m.student.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(8):
        loss = m(x, y)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_class_attributes_options_and_bad_values():
    cls = get_method("akd")
    assert (cls.name, cls.label, cls.teachers) == ("akd", "AKD", ("robust_teacher",))
    from ciard_bench.schedules import list_schedules
    assert cls.train_defaults["schedule"] in list_schedules()
    assert make_options(cls, {}).kl_weight == 0.9 and make_options(cls, {}).temperature == 1.0
    with pytest.raises(UserError, match="kl_weight"):
        make(kl_weight=1.5)
    with pytest.raises(UserError, match="temperature"):
        make(temperature=0.0)
    with pytest.raises(UserError, match="accepted: uniform, gauss"):
        make_options(cls, {"start": "zero"})
    with pytest.raises(UserError, match="needs robust_teacher"):
        create_method("akd", Tiny(0), {}, Context(num_classes=C, epochs=1))


# -- 2. the student ------------------------------------------------------------------------------
def test_cnn4_output_shape_width_and_registration():
    assert "cnn4" in list_models()
    model = create_model("cnn4", num_classes=7)
    assert model.ciard_arch == {"name": "cnn4", "num_classes": 7, "kwargs": {}}
    x = torch.rand(5, 3, 32, 32)
    assert model(x).shape == (5, 7)
    assert model.eval()(torch.rand(2, 3, 64, 64)).shape == (2, 7)   # any input size
    narrow = create_model("cnn4", num_classes=10, width=8)
    convs = [m for m in narrow.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 8, 16, 16]
    assert sum(p.numel() for p in narrow.parameters()) == 4514
    assert sum(p.numel() for p in create_model("cnn4").parameters()) == 66410
    assert narrow(x).shape == (5, 10) and torch.isfinite(narrow(x)).all()
    with pytest.raises(UserError, match="width"):
        create_model("cnn4", width=0)


# -- 3. the datasets -----------------------------------------------------------------------------
def test_digits_inverted_is_the_negative_of_digits_image_for_image():
    from ciard_bench.data import load_dataset      # the engine's loader (not part of the API)
    assert {"digits_inverted", "image_folder"} <= set(list_datasets())
    inv, ref = load_dataset("digits_inverted"), load_dataset("digits")
    assert inv.name == "digits_inverted" and inv.num_classes == 10
    assert inv.classes == tuple(str(c) for c in range(10))
    for split, n in (("train", 1438), ("test", 359)):
        x, y = getattr(inv, f"x_{split}"), getattr(inv, f"y_{split}")
        assert x.dtype == torch.uint8 and x.shape == (n, 32, 32, 3)
        assert y.dtype == torch.int64 and y.shape == (n,)
        assert set(y.tolist()) == set(range(10))
        assert torch.equal(x, 255 - getattr(ref, f"x_{split}"))
        assert torch.equal(y, getattr(ref, f"y_{split}"))
    assert torch.equal(inv.x_train[..., 0], inv.x_train[..., 2])   # grey: equal channels
    assert (inv.x_train[:, :, :2] == 255).float().mean().item() > 0.95  # white left border


def _write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_reads_the_class_folders(tmp_path):
    from ciard_bench.data import load_dataset
    rng = np.random.default_rng(0)
    root = tmp_path / "image_folder"
    written = {}
    for split, per_class in (("train", 3), ("test", 2)):
        for cls in ("cat", "ant"):
            for i in range(per_class):
                img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                _write_png(root / split / cls / f"{i}.png", img)
                written[(split, cls, i)] = img
    _write_png(root / "train" / "cat" / "big.png", rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    data = load_dataset("image_folder", root=tmp_path)
    assert data.classes == ("ant", "cat") and data.num_classes == 2   # sorted folder names
    assert data.x_train.dtype == torch.uint8 and data.x_train.shape == (7, 32, 32, 3)
    assert data.x_test.shape == (4, 32, 32, 3)
    assert data.y_train.tolist() == [0, 0, 0, 1, 1, 1, 1] and data.y_test.tolist() == [0, 0, 1, 1]
    assert np.array_equal(data.x_train[0].numpy(), written[("train", "ant", 0)])
    assert np.array_equal(data.x_test[3].numpy(), written[("test", "cat", 1)])
    _write_png(root / "test" / "dog" / "0.png", written[("test", "cat", 0)])
    with pytest.raises(UserError, match="test class 'dog'"):
        load_dataset("image_folder", root=tmp_path)
    with pytest.raises(UserError, match="is missing"):
        load_dataset("image_folder", root=tmp_path / "nowhere")


# -- 4. the entry points -------------------------------------------------------------------------
def test_entry_points_are_installed_and_attributed_to_this_distribution(capsys):
    dist = metadata.distribution(DIST)
    assert dist.version == VERSION
    assert {(ep.group, ep.name, ep.value) for ep in dist.entry_points} == {
        ("ciard_bench.methods", "akd", "ard_plugin.akd"),
        ("ciard_bench.models", "cnn4", "ard_plugin.models"),
        ("ciard_bench.datasets", "digits_inverted", "ard_plugin.datasets")}
    where = f"plugin {DIST} {VERSION}"
    for kind, name in (("method", "akd"), ("model", "cnn4"), ("dataset", "digits_inverted"),
                       ("dataset", "image_folder")):
        assert plugins.describe(kind, name) == where, (kind, name)
    assert plugins.origin("method", "akd")["entry_point"] == "ciard_bench.methods:akd = ard_plugin.akd"
    assert plugins.describe("method", "rslad") == "built-in"
    assert not [f for f in plugins.FAILURES if DIST in f]
    from ciard_bench import train as engine
    assert engine.main(["--list-methods"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.split()[0] == "akd")
    assert line.endswith(f"({where})") and get_method("akd").paper in line
