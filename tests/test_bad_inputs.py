"""Wrong inputs across the CLIs: exit code 2, one line naming the value and what is accepted,
no traceback, nothing written."""
import importlib
import json

import numpy as np
import pytest
import torch

from ciard_bench.models import create_model, save_model_file

GOOD = {"x_train": np.zeros((20, 32, 32, 3), np.uint8), "y_train": np.arange(20) % 10,
        "x_test": np.zeros((10, 32, 32, 3), np.uint8), "y_test": np.arange(10)}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    f = {}

    def npz(name, **changes):
        arrays = {**GOOD, **changes}
        arrays = {k: v for k, v in arrays.items() if v is not None}
        np.savez(root / f"{name}.npz", **arrays)
        f[name] = f"npz:{root / name}.npz"

    npz("missing_array", y_test=None)
    npz("wrong_dtype", x_train=GOOD["x_train"].astype(np.float32))
    npz("wrong_shape", x_train=np.zeros((20, 32, 32), np.uint8))
    npz("length_mismatch", y_train=np.arange(19) % 10)
    npz("bad_labels", y_test=np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 12]))
    (root / "page.pt").write_text("<!DOCTYPE html><html><body>Google Drive - virus scan warning</body></html>")
    f["html"] = str(root / "page.pt")
    torch.manual_seed(0)
    good = root / "resnet8.pt"
    save_model_file(create_model("resnet8", 10), {"name": "resnet8", "num_classes": 10}, good)
    f["ckpt"] = str(good)
    (root / "truncated.pt").write_bytes(good.read_bytes()[:2000])
    f["truncated"] = str(root / "truncated.pt")
    torch.save(create_model("resnet8", 10).state_dict(), root / "plain.pt")
    f["plain"] = str(root / "plain.pt")
    save_model_file(create_model("resnet8", 100), {"name": "resnet8", "num_classes": 100}, root / "c100.pt")
    f["c100"] = str(root / "c100.pt")
    (root / "a_file").write_text("not a folder")
    f["file_parent"] = str(root / "a_file" / "run")
    # a finished run, for --resume with another config
    from ciard_bench.train import main as train_main
    f["run"] = str(root / "run")
    assert train_main(["--method", "standard", "--student", "resnet8", "--n-train", "16", "--n-test", "8",
                       "--epochs", "1", "--batch-size", "8", "--out", f["run"]]) == 0
    return f


STD = ["--method", "standard", "--student", "resnet8", "--n-train", "16", "--n-test", "8", "--epochs", "1"]
CIARD = ["--method", "ciard", "--student", "resnet8", "--n-train", "16", "--n-test", "8", "--epochs", "1"]
EVAL = ["--dataset", "digits", "--n-examples", "8", "--attacks", "fgsm"]

# (cli module, argv built from the fixture files {name}, text the one-line error must contain)
CASES = [
    ("train", ["--method", "nope"], "unknown method 'nope'"),
    ("train", STD + ["--dataset", "imagenet9"], "unknown dataset 'imagenet9'"),
    ("train", STD[:2] + ["--student", "resnet99"] + STD[4:], "unknown model 'resnet99'"),
    ("train", STD + ["--schedule", "linear"], "unknown schedule 'linear'"),
    ("train", STD + ["--eps", "0"], "eps '0' must be > 0"),
    ("train", STD + ["--eps=-1/255"], "must be > 0"),
    ("train", STD + ["--eps", "8"], "8/255"),
    ("train", STD + ["--eps", "300"], "pixel units"),
    ("train", STD + ["--batch-size", "0"], "batch-size 0 must be > 0"),
    ("train", STD + ["--epochs", "-2"], "epochs -2 must be > 0"),
    ("train", STD + ["--dataset", "cifar10", "--data-root", "{missing_dir}"], "cifar-10-batches-py"),
    ("train", STD + ["--dataset", "{missing_array}"], "y_test"),
    ("train", STD + ["--dataset", "{wrong_dtype}"], "uint8"),
    ("train", STD + ["--dataset", "{wrong_shape}"], "x_train"),
    ("train", STD + ["--dataset", "{length_mismatch}"], "y_train"),
    ("train", STD + ["--dataset", "{bad_labels}"], "label"),
    ("train", STD + ["--n-train", "5000"], "5000"),
    ("train", CIARD + ["--clean-teacher", "{html}", "--robust-teacher", "{ckpt}"], "HTML"),
    ("train", CIARD + ["--clean-teacher", "{truncated}", "--robust-teacher", "{ckpt}"], "truncated"),
    ("train", CIARD + ["--clean-teacher", "resnet56={plain}", "--robust-teacher", "{ckpt}"], "does not fit"),
    ("train", CIARD + ["--clean-teacher", "{c100}", "--robust-teacher", "{ckpt}"], "classes"),
    ("train", CIARD + ["--robust-teacher", "{ckpt}"], "needs --clean-teacher"),
    ("train", ["--method", "standard", "--student", "resnet8", "--n-train", "16", "--n-test", "8",
               "--epochs", "1", "--batch-size", "8", "--lr", "0.5", "--resume", "--out", "{run}"], "--resume: lr"),
    ("train", STD + ["--device", "cuda"], "no CUDA GPU"),
    ("train", STD + ["--amp", "bf16"], "needs a CUDA device"),
    ("train", STD + ["--amp", "fp8"], "unknown amp mode 'fp8'"),
    ("train", STD + ["--inner", "paper"], "unrecognized arguments: --inner"),
    ("train", CIARD + ["--loss-weights", "equal"], "invalid choice: 'equal'"),
    ("train", STD + ["--out", "{file_parent}"], "not writable"),
    ("evaluate", ["--checkpoint", "{ckpt}"] + EVAL[:4] + ["--attacks", "fgsm,bogus"], "unknown attack 'bogus'"),
    ("evaluate", ["--checkpoint", "{ckpt}"] + EVAL + ["--eps", "8"], "8/255"),
    ("evaluate", ["--checkpoint", "{ckpt}", "--dataset", "digits", "--n-examples", "100000"], "100000"),
    ("evaluate", ["--checkpoint", "{html}"] + EVAL, "HTML"),
    ("evaluate", ["--checkpoint", "{plain}"] + EVAL, "architecture"),
    ("evaluate", ["--zoo", "Zhang2019Theoreticaly", "--model-dir", "{missing_dir}", "--zoo-dataset", "cifar10"]
     + EVAL, "Zhang2019Theoretically"),
    ("evaluate", ["--zoo", "Zhang2019Theoretically", "--model-dir", "{missing_dir}", "--zoo-dataset", "cifar10"]
     + EVAL, "Zhang2019Theoretically.pt"),
    ("teachers", ["train", "--kind", "fancy", "--arch", "resnet8"], "unknown teacher kind 'fancy'"),
    ("teachers", ["check", "--spec", "rb:NoSuchModel2020", "--dataset", "cifar10"], "NoSuchModel2020"),
    ("models.cli", ["--num-classes", "0"], "--num-classes"),
    ("tables", ["--preset", "huge", "--results-dir", "{out}"], "unknown preset 'huge'"),
    ("tables", ["--shard", "3/2", "--results-dir", "{out}"], "--shard '3/2' is not valid"),
    ("tables", ["--shard", "1of2", "--results-dir", "{out}"], "--shard '1of2' is not valid"),
    ("submit", ["--checkpoint", "{ckpt}", "--name", "my_model", "--dataset", "cifar10", "--data", "digits",
                "--out", "{out}"], "'my_model' is not a RobustBench model id"),
    ("submit", ["--checkpoint", "{ckpt}", "--name", "Good2024Name", "--dataset", "svhn", "--data", "digits",
                "--out", "{out}"], "'svhn' has no leaderboard"),
    ("submit", ["--checkpoint", "{ckpt}", "--name", "Good2024Name", "--dataset", "cifar10", "--data", "digits",
                "--eps", "8", "--out", "{out}"], "8/255"),
]


def _fill(argv, files, tmp_path):
    names = {**files, "missing_dir": str(tmp_path / "nowhere"), "out": str(tmp_path / "out")}
    return [a.format(**names) if "{" in a else a for a in argv]


@pytest.mark.parametrize("cli,argv,needle", CASES, ids=[f"{c}-{n[:30]}" for c, _, n in CASES])
def test_bad_input_gets_one_line_and_exit_2(cli, argv, needle, files, tmp_path, capsys):
    argv = _fill(argv, files, tmp_path)
    out = tmp_path / "out"
    if cli == "train" and "--out" not in argv:
        argv += ["--out", str(out)]
    if cli == "evaluate":
        argv += ["--out", str(out / "eval.json")]
    before = sorted(p.name for p in tmp_path.iterdir())
    run_state = (json.dumps(sorted(str(p) for p in __import__("pathlib").Path(files["run"]).rglob("*"))))
    main = importlib.import_module(f"ciard_bench.{cli}").main
    try:
        code = main(argv)
    except SystemExit as exc:          # argparse errors
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:") and "Traceback" not in err
    assert needle in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before   # nothing written
    assert json.dumps(sorted(str(p) for p in __import__("pathlib").Path(files["run"]).rglob("*"))) == run_state
