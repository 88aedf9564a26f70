"""Teachers: RobustBench zoo files offline, teacher specs, the CLI, and the robustbench shim."""
from __future__ import annotations

import importlib
import importlib.metadata
from pathlib import Path

import pytest
import torch

from ciard_bench.errors import UserError
from ciard_bench.models import create_model, save_model_file, write_random_zoo_file, zoo_dataset
from ciard_bench.teachers import (DEFAULT_CLEAN_TEACHERS, DEFAULT_ROBUST_TEACHERS,
                                  load_robustbench_teacher, load_teacher, main, robustbench_path)


def _zoo():
    from ciard_bench._compat import import_robustbench

    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf]


def _randomise_bn(model):
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in model.named_buffers():
            if "running_mean" in name:
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
            elif "running_var" in name:
                t.uniform_(0.5, 1.5, generator=gen)
    return model.eval()


def _frozen(model):
    return not model.training and not any(p.requires_grad for p in model.parameters())


def test_defaults_and_paths(tmp_path):
    assert DEFAULT_ROBUST_TEACHERS == {"cifar10": "Zhang2019Theoretically",
                                       "cifar100": "Gowal2020Uncovering"}
    assert DEFAULT_CLEAN_TEACHERS == {"cifar10": "resnet56", "cifar100": "wrn_22_6"}
    assert robustbench_path("X", "cifar100", tmp_path) == tmp_path / "cifar100" / "Linf" / "X.pt"
    assert robustbench_path("X", "cifar10", "m", "l2") == Path("m/cifar10/L2/X.pt")
    with pytest.raises(UserError, match="unknown dataset 'mnist'"):
        robustbench_path("X", "mnist", tmp_path)


@pytest.fixture(scope="module")
def zhang_dir(tmp_path_factory):
    """Zhang2019Theoretically as robustbench builds it, random weights, saved in the zoo layout
    the way robustbench's files are: a `state_dict` key with DataParallel `module.` prefixes."""
    torch.manual_seed(0)
    model = _randomise_bn(_zoo()["Zhang2019Theoretically"]["model"]())
    root = tmp_path_factory.mktemp("zoo")
    path = root / "cifar10" / "Linf" / "Zhang2019Theoretically.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return root, path, x, model(x)


def test_robustbench_teacher_loads_from_the_zoo_layout(zhang_dir):
    root, _, x, expected = zhang_dir
    teacher = load_robustbench_teacher("Zhang2019Theoretically", "cifar10", model_dir=root)
    assert _frozen(teacher)
    with torch.no_grad():
        assert torch.allclose(teacher(x), expected, atol=1e-5)


def test_our_wrn_34_10_reads_the_same_file(zhang_dir):
    # the released TRADES file, read as ARCH=PATH: `module.` stripped, `sub_block1` dropped
    root, path, x, expected = zhang_dir
    teacher = load_teacher(f"wrn_34_10={path}", "cifar10", 10, model_dir=root)
    assert _frozen(teacher)
    with torch.no_grad():
        assert torch.allclose(teacher(x), expected, atol=1e-5)


def test_missing_file_offline_names_path_and_source(tmp_path):
    with pytest.raises(UserError) as err:
        load_robustbench_teacher("Zhang2019Theoretically", "cifar10", model_dir=tmp_path)
    msg = str(err.value)
    expected = tmp_path / "cifar10" / "Linf" / "Zhang2019Theoretically.pt"
    assert str(expected) in msg and "1hPz9QQwyM7QSuWu-ANG_uXR-29xtL8t_" in msg and "\n" not in msg
    assert not expected.parent.exists()  # nothing created, nothing downloaded


def test_a_failed_download_leaves_nothing_behind(tmp_path, monkeypatch):
    _zoo()  # robustbench imported through the shim
    rb_utils = importlib.import_module("robustbench.utils")

    def fake_gdown(gdrive_id, fname_save):  # what Google Drive sends past its quota
        Path(fname_save).write_text("<!DOCTYPE html><html>Quota exceeded</html>")

    monkeypatch.setattr(rb_utils, "download_gdrive_new", fake_gdown)
    with pytest.raises(UserError, match="HTML page"):
        load_robustbench_teacher("Zhang2019Theoretically", "cifar10", model_dir=tmp_path,
                                 download=True)
    assert list((tmp_path / "cifar10" / "Linf").iterdir()) == []


def test_unknown_zoo_name_suggests_close_matches(tmp_path):
    with pytest.raises(UserError, match="unknown RobustBench model 'Zhang2019Theoretical'.*"
                                        "close matches: Zhang2019Theoretically"):
        load_robustbench_teacher("Zhang2019Theoretical", "cifar10", model_dir=tmp_path)
    with pytest.raises(UserError, match="close matches: Gowal2020Uncovering"):
        load_teacher("rb:Gowal2020Uncoverin", "cifar100", 100, model_dir=tmp_path)


def test_html_or_truncated_zoo_file_is_one_line_error(tmp_path, zhang_dir):
    path = robustbench_path("Zhang2019Theoretically", "cifar10", tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("<html><head><title>Google Drive - Virus scan warning</title></head></html>")
    with pytest.raises(UserError, match="HTML page"):
        load_robustbench_teacher("Zhang2019Theoretically", "cifar10", model_dir=tmp_path)
    with open(zhang_dir[1], "rb") as fh:
        path.write_bytes(fh.read(1 << 20))  # the first MiB of a 185 MB file
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_robustbench_teacher("Zhang2019Theoretically", "cifar10", model_dir=tmp_path)
    torch.save(create_model("resnet8").state_dict(), path)  # a sound file of another model
    with pytest.raises(UserError, match="robustbench could not load 'Zhang2019Theoretically'.*"
                                        "Missing key"):
        load_robustbench_teacher("Zhang2019Theoretically", "cifar10", model_dir=tmp_path)


def test_teacher_specs(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet8").eval()
    torch.save({"model": model.state_dict(), "epoch": 3}, tmp_path / "released.pth")
    save_model_file(model, "resnet8", tmp_path / "ours.pt")
    x = torch.rand(2, 3, 32, 32)
    for spec in (f"resnet8={tmp_path / 'released.pth'}", str(tmp_path / "ours.pt")):
        teacher = load_teacher(spec, "cifar10", 10)
        assert _frozen(teacher)
        with torch.no_grad():
            assert torch.allclose(teacher(x), model(x), atol=1e-6)
    with pytest.raises(UserError, match="names an architecture but no weights"):
        load_teacher("resnet8", "cifar10", 10)
    with pytest.raises(UserError, match="unknown architecture 'resnet9'"):
        load_teacher(f"resnet9={tmp_path / 'released.pth'}", "cifar10", 10)
    with pytest.raises(UserError, match="ARCH=PATH"):
        load_teacher(str(tmp_path / "released.pth"), "cifar10", 10)
    with pytest.raises(UserError, match="10 classes but 100"):
        load_teacher(str(tmp_path / "ours.pt"), "cifar100", 100)


def test_cli_list_and_check(tmp_path, capsys):
    assert main(["list", "--model-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "rb:Zhang2019Theoretically" in out and "missing" in out and "wrn_22_6" in out
    assert str(Path("cifar100") / "Linf" / "Gowal2020Uncovering.pt") in out
    save_model_file(create_model("resnet8"), "resnet8", tmp_path / "t.pt")
    assert main(["check", "--spec", str(tmp_path / "t.pt"), "--dataset", "cifar10"]) == 0
    assert "0.078 M parameters, 10 classes" in capsys.readouterr().out
    assert main(["check", "--spec", "rb:Nope", "--dataset", "cifar10",
                 "--model-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown RobustBench model 'Nope'") and err.count("\n") == 1


def test_import_robustbench_gives_the_real_package():
    from ciard_bench._compat import import_robustbench

    rb = import_robustbench()
    dist_files = {Path(f.locate()).resolve() for f in importlib.metadata.files("robustbench")}
    assert Path(rb.__file__).resolve() in dist_files  # not torchattacks' vendored copy
    assert callable(importlib.import_module("robustbench.utils").load_model)
    autoattack = importlib.import_module("autoattack")
    pyautoattack = importlib.import_module("pyautoattack")
    assert autoattack.AutoAttack is pyautoattack.AutoAttack


def test_train_subcommand_trains_a_teacher_through_the_engine_and_loads_from_its_run_folder(tmp_path, capsys):
    import json

    from ciard_bench import teachers

    out = tmp_path / "robust"
    code = teachers.main(["train", "--kind", "robust", "--arch", "resnet8", "--dataset", "digits",
                          "--n-train", "32", "--n-test", "16", "--epochs", "1", "--batch-size", "16",
                          "--attack-steps", "1", "--out", str(out)])
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "trades" and config["student"] == "resnet8"
    model = teachers.load_teacher(str(out), dataset="digits", num_classes=10)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert teachers.main(["train", "--kind", "bogus", "--arch", "resnet8"]) == 2
    assert "unknown teacher kind 'bogus'" in capsys.readouterr().err


def test_run_folder_checkpoint_with_wrong_sha_is_refused(tmp_path):
    import json

    import pytest

    from ciard_bench.errors import UserError
    from ciard_bench.models import create_model, load_model_file, save_model_file

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    sha = save_model_file(create_model("resnet8", 10), {"name": "resnet8", "num_classes": 10},
                          run / "checkpoints" / "best-e0001.pt")
    (run / "run.json").write_text(json.dumps({"best": {"file": "best-e0001.pt", "sha256": sha, "epoch": 1}}))
    model, meta = load_model_file(run)
    assert meta["sha256"] == sha
    with open(run / "checkpoints" / "best-e0001.pt", "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(UserError, match="sha256"):
        load_model_file(run)


def test_rb_teacher_with_an_npz_dataset_of_100_classes_loads(tmp_path):
    # a CIFAR-100 zoo model in the zoo layout (random weights, robustbench's own architecture
    # and file format), used with an npz: dataset: the zoo's dataset comes from the class count
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    path = write_random_zoo_file("Rice2020Overfitting", "cifar100", tmp_path, images)
    assert path == tmp_path / "cifar100" / "Linf" / "Rice2020Overfitting.pt"
    teacher = load_teacher("rb:Rice2020Overfitting", f"npz:{tmp_path / 'c100.npz'}", 100,
                           model_dir=tmp_path)
    assert _frozen(teacher)
    with torch.no_grad():
        logits = teacher(images)
    assert logits.shape == (8, 100) and torch.isfinite(logits).all()
    assert logits.abs().max() < 1e3            # BatchNorm calibrated: no blow-up with depth
    named = load_teacher("rb:cifar100/Rice2020Overfitting", "npz:x.npz", 100, model_dir=tmp_path)
    with torch.no_grad():
        assert torch.equal(named(images), logits)


def test_rb_teacher_zoo_dataset_rules():
    assert zoo_dataset("rb:X", "cifar10", 10) == ("cifar10", "X")
    assert zoo_dataset("rb:X", "npz:/a/b.npz", 100) == ("cifar100", "X")
    assert zoo_dataset("rb: cifar100/X", "npz:/a/b.npz", 10) == ("cifar100", "X")
    with pytest.raises(UserError, match=r"200 classes.*accepted: rb:cifar10/X, rb:cifar100/X"):
        zoo_dataset("rb:X", "npz:/a/tiny.npz", 200)
    with pytest.raises(UserError, match="unknown RobustBench dataset 'mnist'"):
        zoo_dataset("rb:mnist/X", "npz:/a/b.npz", 10)
    with pytest.raises(UserError, match="names no model"):
        zoo_dataset("rb:", "cifar10", 10)
