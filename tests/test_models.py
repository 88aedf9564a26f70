"""Model registry, architectures (shapes, sizes, FLOPs), and checkpoint-file I/O."""
from __future__ import annotations

import os
import time

import pytest
import torch
from torch import nn

from ciard_bench.checkpoint import sha256_file
from ciard_bench.errors import UserError
from ciard_bench.models import (count_flops, count_parameters, create_model, list_models,
                                load_model_file, load_state_dict_checked, register_model,
                                save_model_file)
from ciard_bench.models.cli import main as models_main

TINY = ["resnet18_tiny", "mobilenet_v2_tiny", "resnet8", "wrn_10_2"]
EXPECTED = TINY + ["resnet18", "mobilenet_v2", "resnet56", "wrn_22_6", "wrn_34_10", "wrn_70_16"]


def _meta(name: str, **kwargs):
    with torch.device("meta"):
        return create_model(name, **kwargs)


def _randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics too, so a load that skipped them would show."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(model.parameters()) + [b for n, b in model.named_buffers()
                                             if "running" in n]:
            t.copy_(torch.rand(t.shape, generator=gen) * 0.2 + (0.9 if t.dim() == 1 else -0.1))
    return model.eval()


# --- registry ----------------------------------------------------------------------------

def test_registry_lists_every_model_and_filters():
    assert set(EXPECTED) <= set(list_models())
    assert list_models("wrn_*") == ["wrn_10_2", "wrn_22_6", "wrn_34_10", "wrn_70_16"]
    assert list_models("nothing*") == []


def test_unknown_name_and_duplicate_and_bad_kwargs():
    with pytest.raises(UserError, match=r"unknown model 'resnet19'; accepted: .*resnet18"):
        create_model("resnet19")

    def resnet8(num_classes=10):  # a second 'resnet8'
        return nn.Identity()

    with pytest.raises(ValueError, match="model name 'resnet8' is already used by a built-in"):
        register_model(resnet8)
    assert create_model("resnet8").__class__.__name__ == "CifarResNet"
    with pytest.raises(UserError, match="does not take 'depthh'.*accepted: num_classes, depth"):
        create_model("resnet8", depthh=20)


def test_none_kwargs_keep_architecture_defaults():
    model = create_model("resnet18_tiny", num_classes=7, width=None)
    assert model.conv1.out_channels == 8 and model.linear.out_features == 7
    assert model.ciard_arch == {"name": "resnet18_tiny", "num_classes": 7, "kwargs": {}}
    wide = create_model("resnet18_tiny", width=16)
    assert wide.conv1.out_channels == 16 and wide.ciard_arch["kwargs"] == {"width": 16}


# --- architectures -----------------------------------------------------------------------

@pytest.mark.parametrize("name", EXPECTED)
def test_output_shape_on_meta(name):
    # every model, the 267 M-parameter one included, checked for shapes without compute
    model = _meta(name, num_classes=13)
    assert model(torch.zeros(2, 3, 32, 32, device="meta")).shape == (2, 13)


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_are_cheap_and_return_logits(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10)
    x = torch.rand(64, 3, 32, 32)
    # deterministic budget: forward + backward ~ 3x forward FLOPs; 20 GFLOP is < 0.5 s at the
    # 40-60 GFLOP/s this 2-core CPU sustains (spec/PERFORMANCE.md)
    assert 3 * 64 * count_flops(model) < 20e9
    # one thread: with 2 OpenMP threads on a 2-core machine that others also load, barrier
    # spinning makes timings 10-20x worse and says nothing about the model
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            out = model(x)
            out.sum().backward()
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    assert out.shape == (64, 10) and torch.isfinite(out).all()
    assert min(times) < 1.5, f"{name}: forward+backward of 64 images took {min(times):.2f}s"


@pytest.mark.parametrize("name,low,high", [
    ("resnet18", 11.16e6, 11.18e6), ("mobilenet_v2", 2.2e6, 2.3e6),
    ("wrn_34_10", 46.1e6, 46.2e6), ("resnet56", 0.84e6, 0.87e6)])
def test_parameter_counts(name, low, high):
    assert low <= count_parameters(_meta(name)) <= high


def test_variants_are_smaller_versions():
    assert count_parameters(create_model("resnet8")) < count_parameters(_meta("resnet56"))
    assert create_model("mobilenet_v2_tiny").conv1.out_channels == 8  # 32 * 0.25
    assert create_model("wrn_10_2").fc.in_features == 128  # 64 * widen 2


def _zoo_model(dataset: str, name: str):
    from ciard_bench._compat import import_robustbench

    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    with torch.device("meta"):
        return model_dicts[BenchmarkDataset(dataset)][ThreatModel.Linf][name]["model"]()


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_wrns_match_the_robustbench_zoo_entries():
    zhang = _zoo_model("cifar10", "Zhang2019Theoretically")
    assert _shapes(_meta("wrn_34_10", sub_block1=True)) == _shapes(zhang)
    ours = _shapes(_meta("wrn_34_10"))
    assert {k: v for k, v in _shapes(zhang).items() if not k.startswith("sub_block1.")} == ours
    gowal = _zoo_model("cifar100", "Gowal2020Uncovering")
    wrn = _meta("wrn_70_16", num_classes=100)
    assert _shapes(wrn) == _shapes(gowal)
    assert type(wrn.relu).__name__ == "Swish"
    # normalisation is inside the model, with the zoo entry's CIFAR-100 statistics
    zoo_mean = torch.tensor((0.5071, 0.4865, 0.4409)).view(3, 1, 1)
    assert torch.equal(create_model("wrn_70_16", depth=10, widen_factor=1).mean, zoo_mean)


def _conv_flops(c_in, c_out, k, h, w, groups=1):
    return 2 * (c_in // groups) * c_out * k * k * h * w


def test_count_flops_against_hand_counts_and_paper_figures():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                         nn.Flatten(), nn.Linear(8 * 32 * 32, 10))
    hand = _conv_flops(3, 8, 3, 32, 32) + _conv_flops(8, 8, 3, 32, 32, 8) + 2 * 8192 * 10
    assert count_flops(conv, (4, 3, 32, 32)) == hand  # per image, groups honoured
    # spec/PERFORMANCE.md: forward GFLOPs per image
    for name, expected in [("resnet18", 1.11), ("mobilenet_v2", 0.18), ("resnet56", 0.25),
                           ("wrn_34_10", 13.32)]:
        assert count_flops(_meta(name)) / 1e9 == pytest.approx(expected, rel=0.02), name
    model = create_model("resnet8").train()
    count_flops(model)
    assert model.training  # mode restored


def test_models_cli_prints_a_table(capsys):
    assert models_main(["--pattern", "resnet*", "--num-classes", "100"]) == 0
    out = capsys.readouterr().out
    assert "resnet18" in out and "11.2" in out and "1.111" in out
    assert models_main(["--pattern", "resnet8", "--no-flops"]) == 0
    assert models_main(["--pattern", "nope*"]) == 2
    assert "error: no model matches 'nope*'" in capsys.readouterr().err


# --- checkpoint I/O ----------------------------------------------------------------------

@pytest.fixture
def tiny():
    return _randomised(create_model("resnet8", num_classes=10))


def _same_outputs(a, b):
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-6)


def test_project_format_round_trip(tiny, tmp_path):
    path = tmp_path / "ck.pt"
    digest = save_model_file(tiny, "resnet8", path, epoch=7, method="ciard", best=0.5)
    assert digest == sha256_file(path)
    model, meta = load_model_file(path)
    assert not model.training and _same_outputs(model, tiny)
    assert meta["arch"] == {"name": "resnet8", "num_classes": 10, "kwargs": {}}
    assert meta["sha256"] == digest and meta["source"] == str(path)
    assert (meta["epoch"], meta["method"], meta["best"]) == (7, "ciard", 0.5)
    load_model_file(path, arch="resnet8", num_classes=10)  # agreeing arguments are fine
    with pytest.raises(UserError, match="holds name 'resnet8' but 'resnet56'"):
        load_model_file(path, arch="resnet56")
    with pytest.raises(UserError, match="10 classes but 100"):
        load_model_file(path, num_classes=100)


def test_released_formats_with_prefixes(tiny, tmp_path):
    sd = {f"module.{k}": v for k, v in tiny.state_dict().items()}
    torch.save({"model": sd, "optimizer": {}, "epoch": 299}, tmp_path / "ciard.pth")
    model, meta = load_model_file(tmp_path / "ciard.pth", arch="resnet8", num_classes=10)
    assert _same_outputs(model, tiny) and meta["epoch"] == 299
    compiled = {f"_orig_mod.{k}": v for k, v in tiny.state_dict().items()
                if not k.endswith("num_batches_tracked")}  # as files from old torch lack them
    torch.save(compiled, tmp_path / "bare.pt")
    model, _ = load_model_file(tmp_path / "bare.pt", arch="resnet8", num_classes=10)
    assert _same_outputs(model, tiny)
    with pytest.raises(UserError, match="does not say which architecture.*ARCH=PATH"):
        load_model_file(tmp_path / "bare.pt")


def test_trades_sub_block1_entries_are_dropped(tmp_path):
    trades = _randomised(create_model("wrn_10_2", sub_block1=True))
    torch.save({"state_dict": trades.state_dict()}, tmp_path / "trades.pt")
    model, _ = load_model_file(tmp_path / "trades.pt", arch="wrn_10_2", num_classes=10)
    assert not hasattr(model, "sub_block1") and _same_outputs(model, trades)


def test_wrong_architecture_is_one_line(tiny, tmp_path):
    torch.save(tiny.state_dict(), tmp_path / "r8.pt")
    with pytest.raises(UserError) as err:
        load_model_file(tmp_path / "r8.pt", arch="resnet18_tiny", num_classes=10)
    msg = str(err.value)
    assert "\n" not in msg and "r8.pt" in msg and "'resnet18_tiny'" in msg
    assert "missing keys (" in msg and "unexpected keys (" in msg
    assert "shape mismatches, first conv1.weight: checkpoint (16, 3, 3, 3) vs model (8, 3, 3, 3)" \
        in msg


def test_wrong_number_of_classes_says_so(tiny, tmp_path):
    torch.save({"net": tiny.state_dict()}, tmp_path / "r8.pt")
    with pytest.raises(UserError, match="checkpoint has 10 classes, model expects 100"):
        load_model_file(tmp_path / "r8.pt", arch="resnet8", num_classes=100)
    model = create_model("resnet8", num_classes=100)
    with pytest.raises(UserError, match="'src.pt' does not fit model 'resnet8'.*10 classes"):
        load_state_dict_checked(model, tiny.state_dict(), "src.pt")


def test_save_refuses_what_would_not_load(tiny, tmp_path):
    with pytest.raises(UserError, match="classes, model expects 100"):
        save_model_file(tiny.state_dict(), {"name": "resnet8", "num_classes": 100},
                        tmp_path / "x.pt")
    with pytest.raises(UserError, match="cannot store extra.bad of type"):
        save_model_file(tiny, "resnet8", tmp_path / "x.pt", extra={"bad": object()})
    assert not (tmp_path / "x.pt").exists()


def test_html_and_truncated_files(tiny, tmp_path):
    (tmp_path / "page.pt").write_text("<!DOCTYPE html><html><body>Google Drive</body></html>")
    with pytest.raises(UserError, match="HTML page"):
        load_model_file(tmp_path / "page.pt", arch="resnet8", num_classes=10)
    save_model_file(tiny, "resnet8", tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_model_file(tmp_path / "cut.pt")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_running_pickle_is_refused(tmp_path):
    marker = tmp_path / "MARKER"
    torch.save({"state_dict": {}, "payload": _Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="could run code"):
        load_model_file(tmp_path / "evil.pt", arch="resnet8", num_classes=10)
    assert not marker.exists()
