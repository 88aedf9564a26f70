"""evaluate(): numbers equal torchattacks run directly, the JSON schema, the worst case,
AutoAttack on a tiny model, the robustness curve, and the command line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchattacks

from ciard_bench.evaluate import (decode_mask, evaluate, main, resolve_attacks,
                                  robustness_curve, wilson)
from ciard_bench.errors import UserError
from ciard_bench.utils import seed_everything

from toys import toy

EPS = 8 / 255




def _acc(model, x, y):
    with torch.no_grad():
        return model(x).argmax(1) == y


def test_wilson_interval():
    lo, hi = wilson(50, 100)
    assert lo == pytest.approx(40.383, abs=1e-3) and hi == pytest.approx(59.617, abs=1e-3)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 100.0


def test_resolve_attacks():
    assert resolve_attacks("all") == ["fgsm", "pgd_sat", "pgd_trades", "cw_inf", "aa", "square"]
    assert resolve_attacks("all", with_source=True)[-2:] == ["transfer_pgd_trades",
                                                               "transfer_cw_inf"]
    assert resolve_attacks("fgsm, pgd_sat,fgsm") == ["fgsm", "pgd_sat"]
    with pytest.raises(UserError, match="unknown attack 'pgd'"):
        resolve_attacks("pgd")


@pytest.mark.parametrize("skip", [False, True])
def test_pgd_through_ciard_bench_equals_torchattacks_directly(skip):
    model, x, y = toy()
    res = evaluate(model, x, y, ["pgd_sat"], EPS, batch_size=len(y), seed=7,
                   skip_misclassified=skip, expensive_checks=False)
    clean = _acc(model, x, y)
    attacked = clean.nonzero().flatten() if skip else torch.arange(len(y))
    seed_everything(7)  # what evaluate does before each attack
    adv = torchattacks.PGD(model, eps=EPS, alpha=2 / 255, steps=20,
                           random_start=True)(x[attacked], y[attacked])
    direct = torch.zeros_like(clean)
    direct[attacked] = _acc(model, adv, y[attacked])
    direct &= clean  # robust = correct clean and attacked (RobustBench / AutoAttack)
    got = res["attacks"]["pgd_sat"]
    assert torch.equal(decode_mask(got["correct"]), direct)
    assert got["accuracy"] == 100.0 * int(direct.sum()) / len(y)
    assert 0 < got["accuracy"] < res["clean"]["accuracy"]  # the toy model is partly robust
    assert got["n_attacked"] == len(attacked)


def test_result_schema_worst_case_and_wr():
    model, x, y = toy()
    res = evaluate(model, x, y, "fgsm,pgd_trades,cw_inf,square", EPS, batch_size=16,
                   expensive_checks=False, overrides={"square": {"n_queries": 30}})
    for key in ("format", "n_examples", "eps", "seed", "clean", "attacks", "worst_case_white_box",
                "sanity", "robust_convention", "correct_encoding", "time_s"):
        assert key in res
    clean = res["clean"]
    assert clean["accuracy"] == 100.0 * int(_acc(model, x, y).sum()) / len(y)
    worst = decode_mask(clean["correct"])
    for name in ("fgsm", "pgd_trades", "cw_inf", "square"):
        e = res["attacks"][name]
        ok = decode_mask(e["correct"])
        assert e["n"] == len(y) and e["n_correct"] == int(ok.sum())
        assert e["accuracy"] == pytest.approx(100.0 * ok.float().mean().item())
        assert e["wr"] == pytest.approx((clean["accuracy"] + e["accuracy"]) / 2)
        assert e["ci95"][0] <= e["accuracy"] <= e["ci95"][1]
        assert e["settings"]["eps"] == EPS and e["time_s"] >= 0
        assert not (ok & ~decode_mask(clean["correct"])).any()
        if e["kind"] == "white-box":
            worst &= ok
    assert res["attacks"]["square"]["settings"]["n_queries"] == 30
    assert res["worst_case_white_box"]["attacks"] == ["fgsm", "pgd_trades", "cw_inf"]
    assert torch.equal(decode_mask(res["worst_case_white_box"]["correct"]), worst)
    assert res["sanity"]["passed"], res["sanity"]["failed"]
    json.dumps(res)  # JSON-ready


def test_autoattack_standard_on_a_tiny_model_is_at_most_clean():
    model, x, y = toy(n=8)
    res = evaluate(model, x, y, ["aa"], 16 / 255, batch_size=8, expensive_checks=False)
    aa = res["attacks"]["aa"]
    assert aa["settings"]["version"] == "standard" and aa["settings"]["n_iter"] == 100
    assert aa["accuracy"] <= res["clean"]["accuracy"]
    assert list(aa["sub_accuracy"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert aa["sub_accuracy"]["square"] == aa["accuracy"]


def test_robustness_curve_starts_at_clean_and_falls():
    model, x, y = toy()
    curve = robustness_curve(model, x, y, [0.0, 4 / 255, 16 / 255, 64 / 255], "pgd_trades")
    assert curve["accuracy"][0] == curve["clean"]
    assert curve["accuracy"] == sorted(curve["accuracy"], reverse=True)
    assert curve["accuracy"][-1] <= 10.0 and curve["n"] == len(y)


def test_expensive_checks_record_the_curve_and_their_cost():
    model, x, y = toy()
    res = evaluate(model, x, y, ["pgd_trades"], EPS, sanity_examples=20)
    names = [c["name"] for c in res["sanity"]["checks"]]
    for name in ("eps_zero_equals_clean", "eps_monotone", "large_eps_near_chance",
                 "noise>=pgd_trades", "gradients", "deterministic", "eval_mode", "logits"):
        assert name in names
    assert res["robustness_curve"]["n"] == 20 and res["sanity"]["cost"]["n_points"] == 20
    assert res["sanity"]["passed"], res["sanity"]["failed"]


def _digits_checkpoint(tmp_path):
    from ciard_bench.models import create_model, save_model_file

    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10)
    path = tmp_path / "student.pt"
    save_model_file(model, "resnet8", path, epoch=3)
    return path


def test_cli_on_a_project_checkpoint(tmp_path, capsys):
    ckpt = _digits_checkpoint(tmp_path)
    out = tmp_path / "eval.json"
    code = main(["--checkpoint", str(ckpt), "--dataset", "digits", "--n-examples", "12",
                 "--attacks", "fgsm,pgd_trades", "--batch-size", "6", "--device", "cpu",
                 "--out", str(out), "--no-expensive-checks", "--no-progress"])
    assert code == 0
    res = json.loads(out.read_text())
    assert res["n_examples"] == 12 and res["dataset"] == "digits"
    assert res["model"]["arch"]["name"] == "resnet8" and len(res["model"]["sha256"]) == 64
    assert set(res["attacks"]) == {"fgsm", "pgd_trades"}
    assert res["provenance"]["seed"] == 0 and "torch" in res["provenance"]["versions"]
    assert len(res["attacks"]["fgsm"]["correct"]) == 12
    assert "pgd_trades" in capsys.readouterr().out


def test_cli_on_what_the_training_engine_wrote(tmp_path):
    from ciard_bench import train as engine
    from ciard_bench.config import TrainConfig

    run = tmp_path / "run"
    engine.train(TrainConfig(method="standard", dataset="digits", n_train=32, n_test=16,
                             student="resnet8", epochs=1, batch_size=16, eval_batch_size=16,
                             out=str(run), seed=0))
    best = json.loads((run / "run.json").read_text())["best"]["file"]
    for target in (run / "checkpoints" / best, run):
        assert main(["--checkpoint", str(target), "--dataset", "digits", "--n-examples", "8",
                     "--attacks", "fgsm,cw_inf", "--device", "cpu", "--no-expensive-checks",
                     "--no-progress"]) == 0
    res = json.loads((run / "eval.json").read_text())
    assert res["model"]["arch"]["name"] == "resnet8" and set(res["attacks"]) == {"fgsm", "cw_inf"}
    assert (run / "checkpoints" / (Path(best).stem + "_eval.json")).is_file()


@pytest.mark.parametrize("argv, message", [
    (["--eps", "8"], "pixel units"),
    (["--n-examples", "100000"], "larger than the"),
    (["--attacks", "pgd"], "unknown attack"),
])
def test_cli_user_errors_exit_2(tmp_path, capsys, argv, message):
    ckpt = _digits_checkpoint(tmp_path)
    code = main(["--checkpoint", str(ckpt), "--dataset", "digits", "--device", "cpu", *argv])
    assert code == 2 and message in capsys.readouterr().err


def test_cli_on_a_robustbench_zoo_file_placed_offline(tmp_path):
    import numpy as np

    from ciard_bench._compat import import_robustbench

    import_robustbench()  # the autoattack alias must exist before robustbench is imported
    from robustbench.model_zoo.architectures.resnet import ResNet18

    torch.manual_seed(0)
    folder = tmp_path / "models" / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    torch.save({"state_dict": ResNet18().state_dict()}, folder / "Sehwag2021Proxy_R18.pt")
    data = tmp_path / "c10.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x_train=rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8),
             y_train=np.arange(10), x_test=rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8),
             y_test=np.arange(10))
    out = tmp_path / "zoo.json"
    code = main(["--zoo", "Sehwag2021Proxy_R18", "--model-dir", str(tmp_path / "models"),
                 "--dataset", f"npz:{data}", "--zoo-dataset", "cifar10", "--n-examples", "4",
                 "--attacks", "fgsm",
                 "--device", "cpu", "--out", str(out), "--no-expensive-checks"])
    assert code == 0 and json.loads(out.read_text())["model"]["zoo"] == "Sehwag2021Proxy_R18"
