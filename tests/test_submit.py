"""python -m ciard_bench.submit: a student from the training engine goes in; a RobustBench card,
zoo-layout weights that robustbench's own load_model reads offline, a zoo entry and the issue
text come out. Refusals (a model not deterministic in eval mode) and bad inputs exit 2 with
one line and write nothing; --force writes a card that says what failed."""
from __future__ import annotations

import ast
import json

import pytest
import torch
import torch.nn as nn

from ciard_bench.checkpoint import sha256_file
from ciard_bench.sanity import SanityWarning
from ciard_bench.submit import check_name, main, register_zoo_entry
from ciard_bench.submit.card import model_info, protocol_notes, training_footnote

from toys import StuckBatchNorm2d

NAME = "Doe2025Tiny"
N = 16
# the shape of RobustBench's own cards (model_info/cifar10/Linf/Chen2021LTD_WRN34_20.json,
# a distillation entry), values replaced: which keys exist and which JSON types they hold
REFERENCE_CARD = {"link": "https://arxiv.org/abs/0000.00000", "name": "Title", "authors": "A, B",
                  "additional_data": False, "number_forward_passes": 1, "dataset": "cifar10",
                  "venue": "arXiv, Nov 2021", "architecture": "WideResNet-34-20", "eps": "8/255",
                  "clean_acc": "86.03", "reported": "57.71", "footnote": "",
                  "autoattack_acc": "57.71"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A training-engine run folder: resnet8, two epochs of standard training on digits."""
    from ciard_bench import train as engine
    from ciard_bench.config import TrainConfig

    out = tmp_path_factory.mktemp("engine") / "run"
    engine.train(TrainConfig(method="standard", dataset="digits", n_train=128, n_test=16,
                             student="resnet8", epochs=2, batch_size=32, eval_batch_size=16,
                             out=str(out), seed=0))
    return out


@pytest.fixture(scope="module")
def submitted(run, tmp_path_factory):
    """The command of the issue, AutoAttack standard at full budget, on 16 digits points."""
    out = tmp_path_factory.mktemp("submission")
    code = main(["--checkpoint", str(run), "--name", NAME, "--dataset", "cifar10",
                 "--data", "digits", "--n-examples", str(N), "--device", "cpu",
                 "--batch-size", "16", "--sanity-examples", "16", "--out", str(out),
                 "--no-progress"])
    assert code == 0
    return out


def _card(out, name=NAME):
    return json.loads((out / "model_info" / "cifar10" / "Linf" / f"{name}.json").read_text())


def _clean_accuracy(model, n=N) -> float:
    """Percent correct on the first n digits test points, computed here with plain torch."""
    from ciard_bench.data import load_dataset, to_float_nchw

    data = load_dataset("digits")
    with torch.no_grad():
        pred = model.eval()(to_float_nchw(data.x_test[:n])).argmax(1)
    return 100.0 * (pred == data.y_test[:n]).float().mean().item()


def test_name_pattern_accepts_every_robustbench_id_and_nothing_else():
    from ciard_bench._compat import import_robustbench

    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    for dataset in (BenchmarkDataset.cifar_10, BenchmarkDataset.cifar_100):
        ids = [n for n in model_dicts[dataset][ThreatModel.Linf] if n != "Standard"]
        assert len(ids) > 30 and all(check_name(n) == n for n in ids)
    for bad in ("student", "doe2025Tiny", "Doe25Tiny", "Doe2025", "Doe2025tiny", "Doe 2025Tiny",
                "Doe2025Tiny_", "Doe2025Tiny.pt"):
        with pytest.raises(ValueError, match="not a RobustBench model id"):
            check_name(bad)


def test_card_has_robustbench_fields_types_and_the_measured_numbers(run, submitted):
    from ciard_bench.models import load_model_file

    card = _card(submitted)
    assert set(card) == set(REFERENCE_CARD) | {"unreliable"}
    for key, value in REFERENCE_CARD.items():
        assert type(card[key]) is type(value), key
    record = json.loads((submitted / "submission.json").read_text())
    expected_clean = _clean_accuracy(load_model_file(run)[0])
    assert card["clean_acc"] == f"{expected_clean:.2f}"
    aa = record["evaluation"]["attacks"]["aa"]
    assert card["autoattack_acc"] == f"{aa['accuracy']:.2f}" == card["reported"]
    assert float(card["autoattack_acc"]) <= float(card["clean_acc"])
    assert aa["settings"]["version"] == "standard" and aa["settings"]["n_iter"] == 100
    assert aa["settings"]["square_n_queries"] == 5000 and aa["settings"]["eps"] == 8 / 255
    assert list(aa["sub_accuracy"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert (card["eps"], card["dataset"], card["architecture"]) == ("8/255", "cifar10", "ResNet-8")
    # digits points are not the cifar10 test set: the card must say so
    assert card["unreliable"] is True and "'digits'" in card["footnote"]
    assert f"first {N} test points" in card["footnote"]
    assert "standard (cross-entropy) training" in card["footnote"]  # from the saved config
    assert record["evaluation"]["sanity"]["passed"] and not record["forced"]
    assert record["roundtrip"]["passed"] and record["files"]["weights"] == \
        f"models/cifar10/Linf/{NAME}.pt"
    # the file written is the one robustbench loaded in the round trip
    assert sha256_file(submitted / record["files"]["weights"]) == \
        record["roundtrip"]["weights_sha256"]


def test_robustbench_load_model_reads_the_export_offline(run, submitted, monkeypatch):
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    from robustbench.utils import load_model

    from ciard_bench.models import load_model_file

    card = _card(submitted)
    model_dir = submitted / "models"
    model = load_model(NAME, model_dir=str(model_dir), dataset="cifar10", threat_model="Linf")
    # RobustBench's acceptance check: the same clean accuracy as the card, within 0.05 pp
    assert abs(_clean_accuracy(model) - float(card["clean_acc"])) <= 0.05
    # a fresh process: no entry yet; register it from the exported file alone
    monkeypatch.delitem(model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf], NAME)
    with pytest.raises(KeyError):
        load_model(NAME, model_dir=str(model_dir), dataset="cifar10", threat_model="Linf")
    entry = register_zoo_entry(NAME, "cifar10", model_dir=model_dir)
    assert entry["gdrive_id"] == "" and entry["ciard_bench_arch"]["name"] == "resnet8"
    again = load_model(NAME, model_dir=str(model_dir), dataset="cifar10", threat_model="Linf")
    trained = load_model_file(run)[0].state_dict()
    assert all(torch.equal(again.state_dict()[k], v) for k, v in trained.items())


def test_issue_text_and_zoo_entry(submitted):
    card = _card(submitted)
    issue = (submitted / "new_model_issue.md").read_text()
    assert f"`[New Model] {NAME}`" in issue and "# Paper Information" in issue
    assert f"- **Clean accuracy**: {card['clean_acc']}%" in issue
    assert f"- **Robust accuracy**: {card['autoattack_acc']}%" in issue
    assert "- **eps**: 8/255" in issue and "- **Threat Model**: Linf" in issue
    assert "apgd-ce, apgd-t, fab-t, square" in issue and "sanity checks: all passed" in issue
    assert "- [x] I want to add my models to the Model Zoo" in issue
    assert "- **Paper Title**: (fill in)" in issue  # no --info given
    tree = ast.parse((submitted / "model_zoo_entry.py").read_text())
    assigned = [n.targets[0].id for n in tree.body if isinstance(n, ast.Assign)]
    assert assigned == ["ENTRY"] and f"'{NAME}'" in ast.unparse(tree.body[-1].value)


def test_info_file_flags_and_the_distillation_footnote(run, tmp_path):
    from ciard_bench.models import load_model_file, save_model_file

    model, _ = load_model_file(run)
    ckpt = tmp_path / "student.pt"
    save_model_file(model, "resnet8", ckpt, config={
        "method": "ciard", "robust_teacher": "rb:Zhang2019Theoretically",
        "clean_teacher": "resnet56=/data/teachers/cifar10_resnet56.pth"})
    info = tmp_path / "info.yaml"
    info.write_text("link: https://arxiv.org/abs/2501.00000\nname: A Tiny Student\n"
                    "authors: Jane Doe, John Roe\nvenue: ICLR 2025\nreported: 51.5\n"
                    "license: MIT\nadditional_data: false\n")
    out = tmp_path / "out"
    assert main(["--checkpoint", str(ckpt), "--name", "Doe2025Tiny_R8", "--dataset", "cifar10",
                 "--data", "digits", "--n-examples", "8", "--device", "cpu", "--out", str(out),
                 "--info", str(info), "--venue", "NeurIPS 2025", "--no-expensive-checks",
                 "--no-progress"]) == 0
    card = _card(out, "Doe2025Tiny_R8")
    assert card["venue"] == "NeurIPS 2025"  # the flag beats the file
    assert (card["name"], card["reported"], card["link"]) == (
        "A Tiny Student", "51.50", "https://arxiv.org/abs/2501.00000")
    assert card["footnote"].startswith(
        "Compressed model: a ResNet-8 student adversarially distilled with CIARD from the robust "
        "teacher Zhang2019Theoretically (RobustBench) and the clean teacher resnet56 "
        "(cifar10_resnet56.pth).")
    issue = (out / "new_model_issue.md").read_text()
    assert "- **Paper Title**: A Tiny Student" in issue and "- [x] I agree to release" in issue


def test_a_clean_protocol_run_gives_a_card_without_notes():
    notes, unreliable = protocol_notes(n=10000, eps=8 / 255, data="cifar10", dataset="cifar10",
                                       aa_budget={}, failed=[], roundtrip_ok=True)
    assert notes == [] and unreliable is False
    card = model_info(dataset="cifar100", eps=8 / 255, clean_acc=61.234, aa_acc=30.0,
                      arch={"name": "wrn_34_10", "num_classes": 100, "kwargs": {}}, config=None,
                      user={}, notes=notes, unreliable=unreliable)
    assert (card["clean_acc"], card["autoattack_acc"], card["footnote"]) == ("61.23", "30.00", "")
    assert card["architecture"] == "WideResNet-34-10" and "unreliable" not in card
    assert training_footnote({"method": "rslad", "robust_teacher": "runs/teacher"}, "ResNet-18") \
        == ("Compressed model: a ResNet-18 student adversarially distilled with RSLAD from the "
            "robust teacher teacher.")


def stuck_bn_net(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), StuckBatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, num_classes))


@pytest.fixture
def stuck_checkpoint(tmp_path, monkeypatch):
    from ciard_bench.models import create_model, registry, save_model_file

    # registered for this test only (monkeypatch restores the registry afterwards)
    monkeypatch.setitem(registry._MODELS, "stuck_bn_net", stuck_bn_net)
    torch.manual_seed(0)
    path = tmp_path / "stuck.pt"
    save_model_file(create_model("stuck_bn_net", num_classes=10), "stuck_bn_net", path)
    return path


def _stuck_argv(ckpt, out, *extra):
    return ["--checkpoint", str(ckpt), "--name", "Doe2025Stuck", "--dataset", "cifar10",
            "--data", "digits", "--n-examples", "8", "--device", "cpu", "--out", str(out),
            "--no-expensive-checks", "--no-progress", *extra]


def test_refuses_a_model_that_is_not_deterministic_in_eval_mode(stuck_checkpoint, tmp_path,
                                                                capsys):
    out = tmp_path / "out"
    with pytest.warns(SanityWarning, match="deterministic"):
        assert main(_stuck_argv(stuck_checkpoint, out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: refusing to submit") and "\n" not in err
    assert "deterministic" in err and "--force" in err
    assert not out.exists()


def test_force_writes_a_card_that_says_what_failed(stuck_checkpoint, tmp_path):
    out = tmp_path / "out"
    # a cut AutoAttack budget (test-only flags) keeps this fast; the card must say so too
    with pytest.warns(SanityWarning, match="deterministic"):
        assert main(_stuck_argv(stuck_checkpoint, out, "--force", "--aa-n-iter", "3",
                                "--aa-square-queries", "20")) == 0
    card = _card(out, "Doe2025Stuck")
    assert card["unreliable"] is True
    assert "--force" in card["footnote"] and "deterministic" in card["footnote"]
    assert "reduced budget (n_iter=3, square_n_queries=20)" in card["footnote"]
    record = json.loads((out / "submission.json").read_text())
    assert record["forced"] and "deterministic" in record["failed_checks"]
    assert "sanity checks: FAILED" in (out / "new_model_issue.md").read_text()


@pytest.fixture(scope="module")
def plain_checkpoint(tmp_path_factory):
    from ciard_bench.models import create_model, save_model_file

    root = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    save_model_file(create_model("resnet8", num_classes=10), "resnet8", root / "s.pt")
    save_model_file(create_model("resnet8", num_classes=100), "resnet8", root / "s100.pt")
    (root / "measured.yaml").write_text("clean_acc: 99.0\n")
    (root / "unknown.yaml").write_text("paper: x\n")
    return root


@pytest.mark.parametrize("change, message", [
    ({"--dataset": "imagenet"}, "has no leaderboard here"),
    ({"--dataset": "mnist"}, "accepted: cifar10, cifar100"),
    ({"--name": "my_student"}, "not a RobustBench model id"),
    ({"--name": "Zhang2019Theoretically"}, "already a RobustBench model"),
    ({"--eps": "8"}, "pixel units"),
    ({"--n-examples": "100000"}, "larger than the 359 test points"),
    ({"--n-examples": "0"}, "must be > 0"),
    ({"--dataset": "cifar100"}, "has 10 classes but cifar100 has 100"),
    ({"--checkpoint": "s100.pt"}, "has 100 outputs but the leaderboard dataset has 10"),
    ({"--info": "measured.yaml"}, "measured by the evaluation"),
    ({"--info": "unknown.yaml"}, "unknown field 'paper'"),
    ({"--reported": "high"}, "not a number"),
    ({"--seed": "one"}, "--seed 'one' is not an integer"),
    ({"--bogus": "1"}, "unrecognized arguments"),
])
def test_bad_inputs_exit_2_with_one_line_and_write_nothing(plain_checkpoint, tmp_path, capsys,
                                                           change, message):
    out = tmp_path / "out"
    args = {"--checkpoint": str(plain_checkpoint / "s.pt"), "--name": NAME,
            "--dataset": "cifar10", "--data": "digits", "--n-examples": "8",
            "--device": "cpu", "--out": str(out)}
    args.update({k: str(plain_checkpoint / v) if k in ("--info", "--checkpoint") else v
                 for k, v in change.items()})
    assert _exit_code([x for kv in args.items() for x in kv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
    assert not out.exists()


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse errors (one line, exit 2)
        return int(exc.code)
