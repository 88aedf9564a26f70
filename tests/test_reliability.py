"""Kill-anywhere resume, proven with real SIGKILLs of a training subprocess."""
import json
import os
import subprocess
import sys

import pytest
import torch

from ciard_bench.models import create_model, save_model_file
from ciard_bench.runs import RunDir


@pytest.fixture(scope="module")
def run_args(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        path = root / f"t{seed}.pt"
        save_model_file(create_model("resnet8", 10), {"name": "resnet8", "num_classes": 10}, path)
        paths.append(str(path))
    # 3 steps per epoch, ITT from epoch 2, a checkpoint after every step
    return ["--method", "ciard", "--dataset", "digits", "--n-train", "48", "--n-test", "16",
            "--student", "resnet8", "--clean-teacher", paths[0], "--robust-teacher", paths[1],
            "--epochs", "2", "--batch-size", "16", "--attack-steps", "1", "--eval-batch-size", "16",
            "--ckpt-every-steps", "1", "--itt-start-epoch", "1", "--seed", "3", "--device", "cpu"]


def _train(args, kill_at=None):
    env = {k: v for k, v in os.environ.items() if k != "CIARD_BENCH_KILL_AT"}
    if kill_at:
        env["CIARD_BENCH_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "ciard_bench.train", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def _same(a, b, where=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert torch.equal(a, b) or torch.allclose(a, b, rtol=0, atol=0, equal_nan=True), where
    else:
        assert a == b, where


def test_sigkill_mid_epoch_during_checkpoint_write_and_during_evaluation_then_resume(tmp_path, run_args):
    straight = tmp_path / "straight"
    assert _train(run_args + ["--out", str(straight)]).returncode == 0

    killed = tmp_path / "killed"
    args = run_args + ["--out", str(killed)]
    for point in ("step:2", "atomic_write:4", "eval:2"):
        proc = _train(args + (["--resume"] if killed.exists() else []), kill_at=point)
        assert proc.returncode == -9, (point, proc.stderr[-500:])
        state = RunDir(killed).read_state()
        if state:                                    # run.json only ever names complete files
            for entry in (state.get("last"), state.get("best")):
                if entry:
                    RunDir(killed).load("last")
    assert _train(args + ["--resume"]).returncode == 0

    a, b = RunDir(straight).load("last"), RunDir(killed).load("last")
    for key in ("state_dict", "method_state", "optimizer", "teacher_optimizers", "rng", "best_wr"):
        _same(a[key], b[key], key)
    strip = lambda path: [{k: v for k, v in json.loads(line).items() if k != "time_s"}
                          for line in (path / "log.jsonl").read_text().splitlines()]
    assert strip(straight) == strip(killed)
    assert len(strip(killed)) == 2
    result_a = json.loads((straight / "result.json").read_text())
    result_b = json.loads((killed / "result.json").read_text())
    assert result_a["last"] == result_b["last"] and result_a["best"] == result_b["best"]
    leftovers = sorted(p.name for p in killed.rglob("*") if p.is_file())
    assert not [n for n in leftovers if n.endswith(".tmp")], leftovers
    state = RunDir(killed).read_state()
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == sorted(
        {state["last"]["file"], state["best"]["file"]})


def _strip_volatile(obj):
    if isinstance(obj, dict):
        return {k: _strip_volatile(v) for k, v in obj.items()
                if k not in ("time_s", "time_per_attacked_s", "command", "provenance", "cost")}
    if isinstance(obj, list):
        return [_strip_volatile(v) for v in obj]
    return obj


# slow (-m slow): the same kill between attacks, through a grid, and its resume with the same
# numbers: test_grid_killed_while_evaluating_cells_resumes_with_the_same_numbers_and_no_duplicates
@pytest.mark.slow
def test_evaluation_killed_between_attacks_resumes_with_the_same_numbers(tmp_path, run_args):
    torch.manual_seed(0)
    ckpt = tmp_path / "student.pt"
    save_model_file(create_model("resnet8", 10), {"name": "resnet8", "num_classes": 10}, ckpt)
    args = ["--checkpoint", str(ckpt), "--dataset", "digits", "--n-examples", "24", "--batch-size", "12",
            "--attacks", "fgsm,pgd_trades,aa", "--aa-attacks", "apgd-ce", "--no-expensive-checks",
            "--device", "cpu"]

    def evaluate(out, kill_at=None):
        env = {k: v for k, v in os.environ.items() if k != "CIARD_BENCH_KILL_AT"}
        if kill_at:
            env["CIARD_BENCH_KILL_AT"] = kill_at
        return subprocess.run([sys.executable, "-m", "ciard_bench.evaluate", *args, "--out", str(out)],
                              env=env, capture_output=True, text=True, timeout=300)

    assert evaluate(tmp_path / "straight.json").returncode == 0
    out = tmp_path / "killed.json"
    proc = evaluate(out, kill_at="attack_done:2")              # killed after pgd_trades was cached
    assert proc.returncode == -9 and not out.exists()
    partial = json.loads((tmp_path / "killed.json.partial.json").read_text())
    assert sorted(partial["attacks"]) == ["fgsm", "pgd_trades"]
    resumed = evaluate(out)
    assert resumed.returncode == 0, resumed.stderr[-500:]
    assert "pgd_trades: " in resumed.stderr and "(cached in" in resumed.stderr
    a = json.loads((tmp_path / "straight.json").read_text())
    b = json.loads(out.read_text())
    assert _strip_volatile(a["attacks"]) == _strip_volatile(b["attacks"])
    assert a["worst_case_white_box"] == b["worst_case_white_box"]
    assert not (tmp_path / "killed.json.partial.json").exists()
    assert not (tmp_path / "killed.json.aa_state.json").exists()


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("cli", ["evaluate", "train", "submit"])
def test_a_checkpoint_that_would_run_code_is_refused_by_every_cli(tmp_path, cli, capsys):
    import importlib

    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Evil(marker)}, evil)
    argv = {"evaluate": ["--checkpoint", str(evil), "--dataset", "digits", "--attacks", "fgsm",
                         "--out", str(tmp_path / "e.json")],
            "train": ["--method", "rslad", "--student", "resnet8", "--robust-teacher", str(evil),
                      "--n-train", "16", "--out", str(tmp_path / "r")],
            "submit": ["--checkpoint", str(evil), "--name", "Evil2024Payload", "--dataset", "cifar10",
                       "--data", "digits", "--n-examples", "16", "--out", str(tmp_path / "s")]}[cli]
    code = importlib.import_module(f"ciard_bench.{cli}").main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "could run code" in err
    assert not marker.exists()


# -- files the package writes: permissions (issue 12, item 1) -------------------------------------

def _tiny_sat(out, **extra):
    from ciard_bench.config import TrainConfig
    values = dict(method="sat", dataset="digits", n_train=16, n_test=8, student="resnet8", epochs=1,
                  batch_size=16, attack_steps=1, eval_batch_size=8, device="cpu", out=str(out))
    return TrainConfig(**{**values, **extra})


@pytest.mark.parametrize("umask", [0o027, 0o022])
def test_every_file_written_gets_the_mode_open_would_give_under_the_umask(tmp_path, umask):
    import numpy as np
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ciard_bench import evaluate as evaluate_cli
    from ciard_bench.data.sources import _write_npz_atomic
    from ciard_bench.grid import build_grid, get_preset, store
    from ciard_bench.reports import render
    from ciard_bench.reports.figures import _save
    from ciard_bench.reports.frames import all_tables
    from ciard_bench.train import train

    old = os.umask(umask)
    try:
        train(_tiny_sat(tmp_path / "run"))                        # checkpoints, run/config/result.json, log
        assert evaluate_cli.main(["--checkpoint", str(tmp_path / "run"), "--dataset", "digits",
                                  "--n-examples", "8", "--attacks", "fgsm", "--no-expensive-checks",
                                  "--device", "cpu", "--out", str(tmp_path / "eval.json")]) == 0
        grid = build_grid(get_preset("smoke"), tmp_path / "tables")
        store.write_grid(grid, "best")                             # grid.json
        table = all_tables(grid, "best")[0]
        render.write_table(table, "caption", tmp_path / "tables")  # csv, tex, md
        fig = plt.figure()
        _save(fig, tmp_path / "tables" / "fig")                    # png, pdf
        plt.close(fig)
        _write_npz_atomic(tmp_path / "cache.npz", {"x": np.zeros(3)})  # decoded-image cache
        with open(tmp_path / "plain", "w"):                        # what an ordinary open() gives
            pass
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert (os.stat(tmp_path / "plain").st_mode & 0o777) == expected
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    kinds = {p.suffix or p.name for p in files}
    assert {".pt", ".json", ".jsonl", ".csv", ".tex", ".md", ".png", ".pdf", ".npz"} <= kinds
    assert {"run.json", "result.json", "config.json", "eval.json", "grid.json"} <= {p.name for p in files}
    modes = {str(p.relative_to(tmp_path)): oct(os.stat(p).st_mode & 0o777) for p in files}
    assert set(modes.values()) == {oct(expected)}, modes


# -- evaluate() and robustness_curve() leave the caller's modes alone (issue 12, item 2) -----------

def _modes(model):
    return [m.training for m in model.modules()]


def _bn_toy():
    from toys import toy
    from torch import nn
    model, x, y = toy()
    model = nn.Sequential(*model, nn.BatchNorm1d(10), nn.Dropout(0.0)).train()
    model[1].eval()                     # a mixed state: every submodule's own flag must come back
    with torch.no_grad():               # BN statistics of the data: the model stays accurate
        model(x)
    return model, x, y


def test_evaluate_and_robustness_curve_restore_train_modes_also_on_exceptions():
    from ciard_bench.errors import UserError
    from ciard_bench.evaluate import evaluate, robustness_curve

    model, x, y = _bn_toy()
    source, _, _ = _bn_toy()
    before, source_before = _modes(model), _modes(source)
    assert before[0] and not before[2]  # the Sequential trains, its Linear is in eval mode
    result = evaluate(model, x, y, ["fgsm", "transfer_pgd_trades"], batch_size=20, source=source,
                      expensive_checks=False, overrides={"transfer_pgd_trades": {"steps": 2}})
    check = next(c for c in result["sanity"]["checks"] if c["name"] == "eval_mode")
    assert check["passed"]               # the attacks saw the model in eval mode
    assert _modes(model) == before and _modes(source) == source_before
    robustness_curve(model, x[:10], y[:10], [0.0, 8 / 255], "fgsm", batch_size=10)
    assert _modes(model) == before
    with pytest.raises(UserError):      # raised after the model was put in eval mode
        evaluate(model, x, y, ["fgsm"], n_classes=7, source=source, expensive_checks=False)
    assert _modes(model) == before and _modes(source) == source_before
    with pytest.raises(KeyError):       # an attack that does not exist, found mid-curve
        robustness_curve(model, x[:10], y[:10], [0.0], "no_such_attack", batch_size=10)
    assert _modes(model) == before


# -- AutoAttack's resume state is bound to the points, in order (issue 12, item 4) --------------------

def test_autoattack_state_does_not_resume_for_the_same_points_in_another_order(tmp_path):
    from toys import toy

    from ciard_bench.attacks import create_attack
    from ciard_bench.errors import UserError

    model, x, y = toy(n=20)
    state = tmp_path / "aa.json"

    def aa():
        return create_attack("aa", model, eps=8 / 255, state_path=state, version="custom",
                             attacks=["apgd-ce"], n_iter=3, batch_size=20)

    first = aa()
    first(x, y)
    flags = first.robust_flags.clone()
    assert 0 < int(flags.sum()) < len(y)                  # some points robust, some broken
    again = aa()
    again(x, y)                                           # the same points in order: resumed
    assert again.restored == ["apgd-ce"] and torch.equal(again.robust_flags, flags)
    perm = torch.roll(torch.arange(len(y)), 1)            # same sums, same count, other order
    assert not torch.equal(flags[perm], flags)            # resuming would mislabel points
    assert float(x[perm].double().sum()) == float(x.double().sum()) and int(y[perm].sum()) == int(y.sum())
    with pytest.raises(UserError, match="other points or settings"):
        aa()(x[perm], y[perm])


# -- CIARD's logged push scale covers only steps with a non-empty push set (issue 12, item 5) --------

def test_logged_push_scale_averages_only_steps_with_a_non_empty_push_set(tmp_path, monkeypatch):
    from ciard_bench.config import TrainConfig
    from ciard_bench.methods.ciard import CIARD
    from ciard_bench.train import train

    # a clean teacher that always answers class 0: the push set of a step is its points with y != 0
    torch.manual_seed(0)
    always_zero = create_model("resnet8", 10)
    with torch.no_grad():
        always_zero.fc.weight.zero_()
        always_zero.fc.bias.copy_(torch.arange(10, 0, -1).float())
    save_model_file(always_zero, {"name": "resnet8", "num_classes": 10}, tmp_path / "zero.pt")
    save_model_file(create_model("resnet8", 10), {"name": "resnet8", "num_classes": 10}, tmp_path / "r.pt")
    steps = []                                       # what each step returned, read as it happens
    real_forward = CIARD.forward
    monkeypatch.setattr(CIARD, "forward", lambda self, x, y: steps.append(
        (int((y != 0).sum()), real_forward(self, x, y))) or steps[-1][1])
    cfg = TrainConfig(method="ciard", dataset="digits", n_train=10, n_test=8, student="resnet8",
                      clean_teacher=str(tmp_path / "zero.pt"), robust_teacher=str(tmp_path / "r.pt"),
                      epochs=1, batch_size=1, attack_steps=1, eval_batch_size=8, device="cpu",
                      out=str(tmp_path / "run"))
    train(cfg)
    record = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert len(steps) == 10 and sorted(n for n, _ in steps) == [0] + [1] * 9   # one empty step
    empty = next(out for n, out in steps if n == 0)
    assert empty["loss_push"].item() == 0.0
    assert empty["push_scale"].item() >= 1e3         # 10 ** (order - log10 1e-7): meaningless here
    active = [out["push_scale"].item() for n, out in steps if n]
    assert record["push_scale"] == pytest.approx(sum(active) / 9, rel=1e-6)
    assert empty["push_active"].item() == 0.0 and record["push_active"] == pytest.approx(0.9)


# -- non-finite settings, non-finite weights, strict JSON (issue 12, item 6) ------------------------

@pytest.mark.parametrize("argv,needle", [
    (["--method", "sat", "--lr", "nan"], "lr nan is not a finite number"),
    (["--method", "sat", "--lr", "inf"], "lr inf is not a finite number"),
    (["--method", "sat", "--momentum", "nan"], "momentum nan is not a finite number"),
    (["--method", "sat", "--weight-decay=-inf"], "weight-decay -inf is not a finite number"),
    (["--method", "sat", "--weight-decay=-1"], "weight-decay -1.0 must be >= 0"),
    (["--method", "sat", "--eps", "nan"], "eps 'nan' is not a number"),
    (["--method", "sat", "--alpha", "inf"], "alpha 'inf' is not a number"),
    (["--method", "ciard", "--temp-rate", "nan"], "--temp-rate: invalid parse_fraction value: 'nan'"),
])
def test_non_finite_settings_are_one_line_errors_and_write_nothing(tmp_path, capsys, argv, needle):
    from ciard_bench.train import main

    out = tmp_path / "run"
    try:
        code = main([*argv, "--dataset", "digits", "--n-train", "16", "--n-test", "8", "--epochs", "1",
                     "--batch-size", "16", "--student", "resnet8", "--attack-steps", "1",
                     "--device", "cpu", "--out", str(out)])
    except SystemExit as exit_:                              # argparse rejects the option itself
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and "\n" not in err, err
    assert not out.exists()


def test_non_finite_settings_through_the_api_and_config_files(tmp_path):
    from ciard_bench.config import TrainConfig, config_from_args, resolve
    from ciard_bench.errors import UserError
    from ciard_bench.train import build_parser

    for bad in ({"lr": float("nan")}, {"momentum": float("inf")}, {"eps": float("nan")},
                {"alpha": float("-inf")}, {"method_options": {"temp_rate": float("nan")}}):
        with pytest.raises(UserError, match="not a finite number"):
            resolve(TrainConfig(method="ciard", **bad))
    (tmp_path / "c.yaml").write_text("lr: .nan\n")
    with pytest.raises(UserError, match="lr nan is not a finite number; accepted: a finite number > 0"):
        resolve(config_from_args(build_parser("sat").parse_args(["--config", str(tmp_path / "c.yaml")])))


def test_weights_that_overflow_in_the_last_step_stop_the_run_before_any_checkpoint(tmp_path, capsys):
    from ciard_bench.train import main

    # lr * weight_decay * w overflows float32 in the only step: the loss of that step is finite
    out = tmp_path / "run"
    argv = ["--method", "sat", "--dataset", "digits", "--n-train", "16", "--n-test", "8",
            "--student", "resnet8", "--epochs", "1", "--batch-size", "16", "--attack-steps", "1",
            "--lr", "1e10", "--weight-decay", "1e30", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: the student has ") and "non-finite weights" in err
    assert not (out / "checkpoints").exists() and not (out / "run.json").exists()


def test_an_itt_teacher_going_non_finite_keeps_the_last_good_checkpoint(tmp_path, run_args, capsys):
    from ciard_bench.train import main

    # ITT trains the robust teacher from epoch 2 on (one step per epoch); its huge weight decay
    # overflows its weights in that step, after the student's step of a finite loss
    out = tmp_path / "run"
    argv = [*run_args, "--n-train", "16", "--batch-size", "16", "--epochs", "3",
            "--teacher-lr", "1e10", "--teacher-weight-decay", "1e30", "--out", str(out)]
    for attempt in range(2):                                 # the resumed run stops the same way
        assert main(argv + (["--resume"] if attempt else [])) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("error: the robust teacher has ") and "after epoch 2;" in err, err
        state = RunDir(out).read_state()
        assert state["last"]["epoch"] == 1 and state["best"]["epoch"] == 1
        last = RunDir(out).load("last")                      # sha256-verified, complete
        assert all(torch.isfinite(v).all() for v in last["method_state"].values()
                   if v.is_floating_point() and not v.isnan().all())  # l0_*: NaN until step 1
        assert len((out / "log.jsonl").read_text().splitlines()) == 1
        assert not (out / "result.json").exists()


def _strict(text):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


def test_every_json_file_written_is_strict_json(tmp_path, run_args):
    from ciard_bench import evaluate as evaluate_cli
    from ciard_bench.checkpoint import atomic_write_json
    from ciard_bench.runs import RunDir

    atomic_write_json(tmp_path / "nan.json", {"a": float("nan"), "b": [float("inf"), 1.5]})
    assert _strict((tmp_path / "nan.json").read_text()) == {"a": None, "b": [None, 1.5]}
    RunDir(tmp_path / "r").write_log([{"epoch": 1, "lr": float("nan")}])
    assert _strict((tmp_path / "r" / "log.jsonl").read_text()) == {"epoch": 1, "lr": None}
    # a small CIARD run and an evaluation with AutoAttack and the sanity sweep
    out = tmp_path / "run"
    assert _train(run_args + ["--epochs", "1", "--loss-weights", "mtard_adaptive",
                              "--out", str(out)]).returncode == 0
    assert evaluate_cli.main(["--checkpoint", str(out), "--dataset", "digits", "--n-examples", "12",
                              "--attacks", "fgsm,aa", "--aa-attacks", "apgd-ce", "--sanity-examples", "4",
                              "--aa-state", str(tmp_path / "aa.json"), "--device", "cpu",
                              "--out", str(tmp_path / "eval.json")]) == 0
    files = [p for p in tmp_path.rglob("*.json*") if p.name not in ("nan.json", "log.jsonl")
             or p.parent == out]
    assert {"run.json", "config.json", "result.json", "log.jsonl", "eval.json", "aa.json"} <= {p.name for p in files}
    for path in files:
        for line in (path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]):
            _strict(line)


def test_metrics_of_no_points_are_refused_rather_than_written_as_nan():
    from toys import toy

    from ciard_bench.errors import UserError
    from ciard_bench.evaluate import evaluate, robustness_curve

    model, x, y = toy(n=10)
    with pytest.raises(UserError, match="no points"):
        robustness_curve(model, x[:0], y[:0], [0.0, 8 / 255], "fgsm")
    with pytest.raises(UserError, match="nothing to evaluate"):
        evaluate(model, x, y, ["fgsm"], sanity_examples=0)
    with pytest.raises(UserError, match="nothing to evaluate"):
        evaluate(model, x[:0], y[:0], ["fgsm"], expensive_checks=False)


# -- a full disk while writing a checkpoint or the result (issue 12, item 7) ------------------------

@pytest.mark.parametrize("target", ["checkpoint", "result"])
def test_disk_full_mid_write_is_one_line_and_the_run_resumes(tmp_path, capsys, monkeypatch, target):
    import errno

    from ciard_bench import checkpoint
    from ciard_bench.train import main

    argv = ["--method", "sat", "--dataset", "digits", "--n-train", "16", "--n-test", "8",
            "--student", "resnet8", "--epochs", "2", "--batch-size", "16", "--attack-steps", "1",
            "--eval-batch-size", "8", "--device", "cpu"]
    assert main(argv + ["--out", str(tmp_path / "straight")]) == 0
    capsys.readouterr()

    real_write, written = checkpoint._write_all, []

    def disk_full(fd, data):          # the device fills up halfway through the file
        is_target = (data[:2] == b"PK" and len([d for d in written if d[:2] == b"PK"]) >= 2
                     if target == "checkpoint" else b'"max_parameter_difference' in data)
        written.append(bytes(data[:2]))
        if is_target:
            real_write(fd, data[:len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(fd, data)

    monkeypatch.setattr(checkpoint, "_write_all", disk_full)
    out = tmp_path / "full"
    assert main(argv + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    name = "last-e0002-s000000.pt" if target == "checkpoint" else "result.json"
    assert err[-1].startswith(f"error: cannot write '{out}/") and name in err[-1], err[-1]
    assert "No space left on device" in err[-1] and " free in " in err[-1]
    assert not [p for p in out.rglob("*.tmp")]                  # the half-written file is gone
    state = RunDir(out).read_state()
    assert state["last"]["epoch"] == (1 if target == "checkpoint" else 2)
    RunDir(out).load("last")                                    # complete, sha256-verified
    monkeypatch.undo()
    assert main(argv + ["--out", str(out), "--resume"]) == 0
    a, b = RunDir(tmp_path / "straight").load("last"), RunDir(out).load("last")
    for key in ("state_dict", "optimizer", "rng", "best_wr"):
        _same(a[key], b[key], key)
    strip = lambda path: [{k: v for k, v in json.loads(line).items() if k != "time_s"}
                          for line in (path / "log.jsonl").read_text().splitlines()]
    assert strip(tmp_path / "straight") == strip(out)
    assert json.loads((out / "result.json").read_text())["last"] == \
        json.loads((tmp_path / "straight" / "result.json").read_text())["last"]


# -- a killed evaluation of a whole grid (issue 12, item 8) ------------------------------------------

TINY_GRID = ["--preset", "smoke", "--students", "resnet18", "--methods", "sat", "--epochs", "1",
             "--teacher-epochs", "1", "--n-train", "64", "--n-test", "16", "--n-examples", "16",
             "--sanity-examples", "8", "--threads", "1", "--workers", "1", "--device", "cpu",
             "--no-figures", "--verbose"]


def _tables(results, kill_at=None):
    env = {k: v for k, v in os.environ.items() if k != "CIARD_BENCH_KILL_AT"}
    if kill_at:
        env["CIARD_BENCH_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "ciard_bench.tables", *TINY_GRID,
                           "--results-dir", str(results)], env=env, capture_output=True, text=True,
                          timeout=300)


def test_grid_killed_while_evaluating_cells_resumes_with_the_same_numbers_and_no_duplicates(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = _tables(straight)
    assert done.returncode == 0, done.stderr[-800:]
    cells = [c["id"] for c in json.loads((straight / "grid.json").read_text())["cells"]]
    n_attacks = {c: len(json.loads((straight / "runs" / c / "eval-best.json").read_text())["attacks"])
                 for c in cells}
    first, second, student = cells              # clean teacher, robust teacher, the SAT student
    assert student.endswith("/sat/seed0") and n_attacks[first] > 2

    # killed after the first cell's 2nd attack, then after the student's 2nd attack (SIGKILL)
    proc = _tables(killed, kill_at="attack_done:2")
    assert proc.returncode == -9, proc.stderr[-800:]
    partial = killed / "runs" / first / "eval-best.json.partial.json"
    assert len(json.loads(partial.read_text())["attacks"]) == 2
    proc = _tables(killed, kill_at=f"attack_done:{n_attacks[first] - 2 + n_attacks[second] + 2}")
    assert proc.returncode == -9, proc.stderr[-800:]
    assert "(cached in" in proc.stderr                           # the first cell's 2 attacks reused
    assert not partial.exists() and (killed / "runs" / first / "eval-best.json").is_file()
    partial = killed / "runs" / student / "eval-best.json.partial.json"
    assert len(json.loads(partial.read_text())["attacks"]) == 2
    assert (killed / "runs" / student / "result.json").is_file()   # trained, evaluation partial
    assert not (killed / "runs" / student / "eval-best.json").exists()
    proc = _tables(killed)
    assert proc.returncode == 0, proc.stderr[-800:]
    assert proc.stderr.count("(cached in") == 2 and "trained 0, evaluated 1" in proc.stdout

    def tables(root):
        return {p.name: p.read_text() for p in root.glob("table*.csv")}
    assert tables(killed) == tables(straight) and len(tables(straight)) >= 3
    for cell in cells:
        a, b = (json.loads((root / "runs" / cell / "eval-best.json").read_text())
                for root in (straight, killed))
        assert _strip_volatile(a["attacks"]) == _strip_volatile(b["attacks"]), cell
        assert a["clean"] == b["clean"] and a["robustness_curve"] == b["robustness_curve"], cell
        log = (killed / "runs" / cell / "log.jsonl").read_text().splitlines()
        assert [json.loads(r)["epoch"] for r in log] == [1]       # one row per epoch, no repeats
    grid_a, grid_b = (json.loads((root / "grid.json").read_text()) for root in (straight, killed))
    assert [c["id"] for c in grid_b["cells"]] == cells and grid_b["counts"] == grid_a["counts"]
    assert len(grid_b["runs"]) == len(grid_a["runs"]) == 1    # killed invocations record nothing
    for csv in tables(killed).values():                         # a repeated cell = a repeated line
        assert len(csv.splitlines()) == len(set(csv.splitlines())), csv
    leftovers = [p.name for p in killed.rglob("*") if p.name.endswith((".tmp", ".partial.json"))]
    assert not leftovers, leftovers
