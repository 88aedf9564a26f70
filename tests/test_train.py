"""The training engine: resume equivalence, ITT through the engine, run-folder safety, the CLI."""
import json
import os
import signal
import threading
from pathlib import Path

import pytest
import torch

from ciard_bench import train as engine
from ciard_bench.config import TrainConfig
from ciard_bench.errors import UserError
from ciard_bench.models import create_model, save_model_file
from ciard_bench.runs import RunDir

MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_mini.npz"


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    paths = {}
    for role, seed in (("clean", 1), ("robust", 2)):
        torch.manual_seed(seed)
        paths[role] = str(root / f"{role}.pt")
        save_model_file(create_model("resnet8", 10), {"name": "resnet8", "num_classes": 10}, paths[role])
    return paths


def cfg_for(out, teachers, **kw):
    base = dict(method="ciard", dataset="digits", n_train=48, n_test=16, student="resnet8",
                clean_teacher=teachers["clean"], robust_teacher=teachers["robust"], epochs=2,
                batch_size=16, attack_steps=2, eval_batch_size=16, out=str(out), seed=3,
                method_options={"itt_start_epoch": 1})
    base.update(kw)
    return TrainConfig(**base)


def final_state(out):
    ckpt = RunDir(out).load("last")
    return ckpt


def assert_same_state(a, b):
    for key in ("state_dict", "method_state"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            same = torch.equal(a[key][k], b[key][k]) or (
                a[key][k].is_floating_point() and torch.allclose(a[key][k], b[key][k], rtol=0, atol=0, equal_nan=True))
            assert same, f"{key}.{k} differs"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for k in sa:
        assert torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"])
    strip = lambda h: [{k: v for k, v in r.items() if k != "time_s"} for r in h]
    assert strip(a["history"]) == strip(b["history"])


class Killed(Exception):
    pass


def _kill_after(monkeypatch, n_saves):
    real = RunDir.save
    count = [0]

    def save(self, *args, **kwargs):
        real(self, *args, **kwargs)
        count[0] += 1
        if count[0] == n_saves:
            raise Killed()

    monkeypatch.setattr(RunDir, "save", save)


def test_resume_at_epoch_boundary_equals_straight_run(tmp_path, teachers, monkeypatch):
    engine.train(cfg_for(tmp_path / "straight", teachers))
    _kill_after(monkeypatch, 1)
    with pytest.raises(Killed):
        engine.train(cfg_for(tmp_path / "killed", teachers))
    monkeypatch.undo()
    assert RunDir(tmp_path / "killed").read_state()["last"]["epoch"] == 1
    engine.train(cfg_for(tmp_path / "killed", teachers), resume=True)
    a, b = final_state(tmp_path / "straight"), final_state(tmp_path / "killed")
    assert_same_state(a, b)
    assert a["method_state"]["tau_a"] == b["method_state"]["tau_a"]
    log_a = (tmp_path / "straight" / "log.jsonl").read_text().splitlines()
    log_b = (tmp_path / "killed" / "log.jsonl").read_text().splitlines()
    assert len(log_a) == len(log_b) == 2


def test_resume_mid_epoch_equals_straight_run(tmp_path, teachers, monkeypatch):
    kw = dict(ckpt_every_steps=1)
    engine.train(cfg_for(tmp_path / "straight", teachers, **kw))
    _kill_after(monkeypatch, 2)                      # killed after step 2 of epoch 1
    with pytest.raises(Killed):
        engine.train(cfg_for(tmp_path / "killed", teachers, **kw))
    monkeypatch.undo()
    state = RunDir(tmp_path / "killed").read_state()["last"]
    assert (state["epoch"], state["step"]) == (1, 2)
    engine.train(cfg_for(tmp_path / "killed", teachers, **kw), resume=True)
    assert_same_state(final_state(tmp_path / "straight"), final_state(tmp_path / "killed"))


def _signal_inside_step(monkeypatch, k, stop):
    """A real SIGUSR2 to this process inside the k-th training step (after its backward,
    before its optimiser step), with a handler that sets ``stop``, as the SLURM job's does.
    Returns a function that puts the previous handler back."""
    real_step, real_average, steps, sent = engine.train_step, engine.average_gradients, [0], []

    def step(*args, **kwargs):
        steps[0] += 1
        return real_step(*args, **kwargs)

    def average(*args, **kwargs):
        if steps[0] == k and not sent:
            sent.append(k)
            os.kill(os.getpid(), signal.SIGUSR2)   # the handler runs here, mid-step
        return real_average(*args, **kwargs)

    monkeypatch.setattr(engine, "train_step", step)
    monkeypatch.setattr(engine, "average_gradients", average)
    old = signal.signal(signal.SIGUSR2, lambda *_: stop.set())
    return lambda: signal.signal(signal.SIGUSR2, old)


@pytest.mark.parametrize("k, saved", [(2, (1, 2)), (3, (1, 0))])
def test_a_stop_request_saves_at_the_next_step_boundary_and_resume_is_exact(
        tmp_path, teachers, monkeypatch, k, saved):
    """3 steps per epoch. A signal inside step 2 saves epoch 1 step 2 (mid-epoch, with no
    ckpt_every_steps); inside step 3, the epoch's last, the run ends the epoch and saves it.
    Either way train() returns "interrupted", and --resume ends exactly as a straight run."""
    engine.train(cfg_for(tmp_path / "straight", teachers))
    stop = threading.Event()
    restore = _signal_inside_step(monkeypatch, k, stop)
    try:
        out = engine.train(cfg_for(tmp_path / "stopped", teachers), stop=stop)
    finally:
        restore()
        monkeypatch.undo()
    assert out == {"interrupted": {"epoch": 1, "step": saved[1], "out": str(tmp_path / "stopped")}}
    state = RunDir(tmp_path / "stopped").read_state()["last"]
    assert (state["epoch"], state["step"]) == saved
    assert not (tmp_path / "stopped" / "result.json").exists()
    assert engine.train(cfg_for(tmp_path / "stopped", teachers), resume=True)["epochs"] == 2
    assert_same_state(final_state(tmp_path / "straight"), final_state(tmp_path / "stopped"))
    log_a = (tmp_path / "straight" / "log.jsonl").read_text().splitlines()
    log_b = (tmp_path / "stopped" / "log.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(r).items() if k != "time_s"} for r in lines]
    assert strip(log_a) == strip(log_b) and len(log_a) == 2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_the_cli_saves_on_term_or_usr1_and_resumes_exactly(tmp_path, teachers, monkeypatch, capsys,
                                                           sig):
    # the real handlers of `python -m ciard_bench.train` (ciard_bench.signals): a signal
    # inside step 2 saves at epoch 1 step 2, exits 128 + signal, and --resume ends as a
    # straight run; the previous handler is back afterwards
    engine.train(cfg_for(tmp_path / "straight", teachers))
    real_step, real_average, steps = engine.train_step, engine.average_gradients, [0]

    def step(*args, **kwargs):
        steps[0] += 1
        return real_step(*args, **kwargs)

    def average(*args, **kwargs):
        if steps[0] == 2:
            steps[0] += 100                       # once
            os.kill(os.getpid(), sig)
        return real_average(*args, **kwargs)

    monkeypatch.setattr(engine, "train_step", step)
    monkeypatch.setattr(engine, "average_gradients", average)
    before = signal.getsignal(sig)
    argv = ["--method", "ciard", "--dataset", "digits", "--n-train", "48", "--n-test", "16",
            "--student", "resnet8", "--clean-teacher", teachers["clean"], "--robust-teacher",
            teachers["robust"], "--epochs", "2", "--batch-size", "16", "--attack-steps", "2",
            "--eval-batch-size", "16", "--seed", "3", "--itt-start-epoch", "1",
            "--out", str(tmp_path / "stopped")]
    assert engine.main(argv) == 128 + sig
    assert signal.getsignal(sig) == before and not engine.STOP.is_set()
    err = capsys.readouterr().err
    assert f"stopped by {signal.Signals(sig).name}: saved at epoch 1 step 2" in err
    assert "--resume" in err
    monkeypatch.undo()
    assert engine.main(argv + ["--resume"]) == 0
    assert_same_state(final_state(tmp_path / "straight"), final_state(tmp_path / "stopped"))


def _teacher_params(path):
    from ciard_bench.checkpoint import load_checkpoint
    return load_checkpoint(path)["state_dict"]


def test_itt_leaves_teacher_unchanged_before_its_epoch_and_trains_it_after(tmp_path, teachers):
    original = _teacher_params(teachers["robust"])
    out = tmp_path / "itt"
    # epochs 1-2 frozen; epoch 3 trains (lr > 0; at the last epoch the released schedule reaches 0)
    cfg = cfg_for(out, teachers, epochs=4, method_options={"itt_start_epoch": 2}, teacher_model_dir=str(tmp_path))
    seen = {}
    real_save = RunDir.save

    def spy(self, last, **kw):
        seen[kw["epoch"]] = {k[len("robust_teacher."):]: v.clone() for k, v in last["method_state"].items()
                             if k.startswith("robust_teacher.")}
        real_save(self, last, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RunDir, "save", spy)
        engine.train(cfg)
    weights = [k for k in original if k.endswith(".weight")]
    for epoch in (1, 2):
        assert all(torch.equal(seen[epoch][k], original[k]) for k in weights), f"epoch {epoch} changed Ta"
    assert any(not torch.equal(seen[3][k], original[k]) for k in weights)
    record = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert "robust_teacher_loss" not in record[1] and "robust_teacher_loss" in record[2]


def test_no_itt_has_no_teacher_optimiser_and_excludes_teachers_from_checkpoints(tmp_path, teachers):
    engine.train(cfg_for(tmp_path / "r", teachers, epochs=1, method_options={"itt": False}))
    ckpt = final_state(tmp_path / "r")
    assert ckpt["teacher_optimizers"] == {}
    assert not any(k.startswith(("robust_teacher.", "clean_teacher.")) for k in ckpt["method_state"])


def test_run_folder_outputs(tmp_path, teachers):
    out = tmp_path / "r"
    result = engine.train(cfg_for(out, teachers, epochs=1))
    saved = json.loads((out / "result.json").read_text())
    assert saved["last"] == result["last"] and saved["best"]["epoch"] == 1
    assert set(saved["last"]) == {"epoch", "clean_acc", "pgd_trades_acc", "wr"}
    assert saved["last"]["wr"] == pytest.approx((saved["last"]["clean_acc"] + saved["last"]["pgd_trades_acc"]) / 2)
    assert saved["provenance"]["versions"]["torch"] and saved["config"]["epochs"] == 1
    assert json.loads((out / "config.json").read_text())["schedule"] == "ciard_released"
    state = json.loads((out / "run.json").read_text())
    files = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert files == sorted([state["last"]["file"], state["best"]["file"]])   # no stale or temp files
    from ciard_bench.models import load_model_file
    model, meta = load_model_file(out / "checkpoints" / state["best"]["file"])
    assert meta["arch"]["name"] == "resnet8"


def test_existing_run_needs_resume_and_resume_needs_same_config(tmp_path, teachers):
    out = tmp_path / "r"
    engine.train(cfg_for(out, teachers, epochs=1))
    with pytest.raises(UserError, match="--resume"):
        engine.train(cfg_for(out, teachers, epochs=1))
    with pytest.raises(UserError, match="lr"):
        engine.train(cfg_for(out, teachers, epochs=1, lr=0.05), resume=True)


def test_eval_from_skips_early_evaluations_and_leaves_training_unchanged(tmp_path, teachers):
    # the per-epoch evaluation runs on a forked RNG in eval mode: skipping it changes only
    # which epochs can be chosen as best, never the weights
    every = engine.train(cfg_for(tmp_path / "every", teachers, epochs=3))
    late = engine.train(cfg_for(tmp_path / "late", teachers, epochs=3, eval_from=3))
    # the histories differ by design (no evaluation in epochs 1-2): compare weights and state
    a, b = final_state(tmp_path / "every"), final_state(tmp_path / "late")
    for key in ("state_dict", "method_state"):   # bit-identical (NaN: a statistic not yet set)
        assert all(torch.equal(a[key][k], b[key][k]) or torch.allclose(
            a[key][k], b[key][k], rtol=0, atol=0, equal_nan=True) for k in a[key])
    logs = [json.loads(line) for line in (tmp_path / "late" / "log.jsonl").read_text().splitlines()]
    assert ["wr" in r for r in logs] == [False, False, True]
    assert late["best"]["epoch"] == 3 and late["last"] == every["last"]
    full = [json.loads(line) for line in (tmp_path / "every" / "log.jsonl").read_text().splitlines()]
    assert full[2]["wr"] == logs[2]["wr"]     # same seed for the epoch-3 evaluation


def test_eval_from_past_the_last_epoch_still_evaluates_the_last(tmp_path, teachers):
    result = engine.train(cfg_for(tmp_path / "r", teachers, epochs=2, eval_from=5))
    assert result["best"]["epoch"] == 2
    with pytest.raises(UserError, match="eval-from 0 must be > 0"):
        engine.train(cfg_for(tmp_path / "bad", teachers, eval_from=0))


def test_resume_accepts_a_config_saved_before_a_setting_existed(tmp_path, teachers):
    from ciard_bench.config import changed_settings
    now = cfg_for(tmp_path, teachers).to_dict()
    older = {k: v for k, v in now.items() if k != "eval_from"}   # saved before eval_from
    assert changed_settings(older, now) == []
    assert changed_settings(older, {**now, "eval_from": 4}) == [("eval_from", 1, 4)]
    assert changed_settings({**now, "device": "cuda"}, now) == []   # resume-free key


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, teachers, monkeypatch):
    from ciard_bench.methods.ciard import CIARD
    real = CIARD.forward
    calls = [0]

    def poisoned(self, x, y):
        out = real(self, x, y)
        calls[0] += 1
        if calls[0] == 5:                            # epoch 2, step 2 (3 steps per epoch)
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(CIARD, "forward", poisoned)
    out = tmp_path / "r"
    with pytest.raises(engine.NonFiniteLoss, match=r"epoch 2 step 2 .*loss=nan"):
        engine.train(cfg_for(out, teachers))
    state = RunDir(out).read_state()
    assert state["last"]["epoch"] == 1
    ckpt = RunDir(out).load("last")
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


@pytest.mark.parametrize("argv,needle", [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--epochs", "0"], "epochs 0 must be > 0"),
    (["--batch-size", "-1"], "batch-size -1 must be > 0"),
    (["--eps", "8"], "looks like pixel units"),
    (["--amp", "bf16", "--device", "cpu"], "needs a CUDA device"),
    (["--device", "cuda"], "no CUDA GPU"),
    (["--schedule", "weird"], "unknown schedule 'weird'"),
])
def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, capsys, argv, needle):
    method = [] if "--method" in argv else ["--method", "standard", "--student", "resnet8"]
    code = engine.main(argv + method + ["--out", str(tmp_path / "r"), "--n-train", "16"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "r" / "run.json").exists()


def test_cli_lists_methods_and_documents_every_ciard_switch(capsys):
    assert engine.main(["--list-methods"]) == 0
    listing = capsys.readouterr().out
    assert "ciard" in listing and "ICCV 2025" in listing
    with pytest.raises(SystemExit):
        engine.main(["--method", "ciard", "--help"])
    helptext = capsys.readouterr().out
    for flag in ("--inner", "--push-temperature", "--lambda-push", "--loss-weights", "--robust-teacher-bn",
                 "--schedule", "--itt-start-epoch", "--teacher-lr", "--no-itt", "--no-push", "--rate-decay",
                 "--resume", "--amp", "--channels-last"):
        assert flag in helptext, flag


def test_cli_trains_with_method_flags(tmp_path, teachers, capsys):
    out = tmp_path / "cli"
    argv = ["--method", "ciard", "--dataset", "digits", "--n-train", "32", "--n-test", "16", "--student", "resnet8",
            "--clean-teacher", teachers["clean"], "--robust-teacher", teachers["robust"], "--epochs", "1",
            "--batch-size", "16", "--attack-steps", "1", "--push-temperature", "4", "--no-itt",
            "--inner", "paper", "--out", str(out)]
    assert engine.main(argv) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method_options"] == {"push_temperature": 4.0, "itt": False, "inner": "paper"}


# slow (-m slow): that students learn stays checked on the committed smoke study (every student
# >= 85 % clean, tests/test_committed_results.py), the CIFAR file formats in test_data.py
@pytest.mark.slow
@pytest.mark.skipif(not MINI.exists(), reason="../shared/data/cifar10_mini.npz is absent (only in the project's CI)")
def test_short_ciard_run_on_real_cifar_images_learns(tmp_path):
    data = f"npz:{MINI}"
    teacher = engine.train(TrainConfig(method="standard", dataset=data, student="resnet8", epochs=8,
                                       batch_size=64, lr=0.05, eval_every=8, out=str(tmp_path / "teacher")))
    tpath = str(tmp_path / "teacher" / "checkpoints" / teacher["checkpoints"]["best"]["file"])
    result = engine.train(TrainConfig(method="ciard", dataset=data, student="resnet8", clean_teacher=tpath,
                                      robust_teacher=tpath, epochs=4, batch_size=64, attack_steps=3,
                                      eval_every=4, out=str(tmp_path / "ciard")))
    # 164 test images, 10 classes: chance is 10 % (95 % interval up to ~15 %)
    assert teacher["last"]["clean_acc"] > 25
    assert result["last"]["clean_acc"] > 20


def test_yaml_config_file_with_flag_overrides(tmp_path, teachers):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(
        "method: ciard\ndataset: digits\nn_train: 32\nn_test: 16\nstudent: resnet8\n"
        f"clean_teacher: {teachers['clean']}\nrobust_teacher: {teachers['robust']}\n"
        "epochs: 1\nbatch_size: 16\nattack_steps: 1\neps: 4/255\n"
        "method_options: {push_temperature: 4.0, loss_weights: mtard_adaptive}\n")
    out = tmp_path / "r"
    assert engine.main(["--config", str(cfg_file), "--lambda-push", "2", "--epochs", "1",
                        "--channels-last", "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["eps"] == pytest.approx(4 / 255) and saved["channels_last"] is True
    assert saved["method_options"] == {"push_temperature": 4.0, "loss_weights": "mtard_adaptive",
                                       "lambda_push": 2.0}
    assert saved["weight_decay"] == 2e-4 and saved["schedule"] == "ciard_released"   # CIARD's released values


def test_bad_config_files(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 3\n")
    assert engine.main(["--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "unknown setting 'epochz'" in capsys.readouterr().err
    assert engine.main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    opt = tmp_path / "opt.json"
    opt.write_text(json.dumps({"method": "ciard", "method_options": {"inner": "sideways"}}))
    assert engine.main(["--config", str(opt), "--out", str(tmp_path / "r")]) == 2
    assert "inner 'sideways' is not valid" in capsys.readouterr().err


def test_nesterov_default_follows_the_method_and_reaches_the_optimiser(tmp_path):
    from ciard_bench.config import resolve

    assert resolve(TrainConfig(method="fair_ard")).nesterov is True      # Fair-ARD's released SGD
    assert resolve(TrainConfig(method="ard")).nesterov is False
    assert resolve(TrainConfig(method="fair_ard", protocol="shared")).nesterov is False
    run = engine.build(resolve(TrainConfig(method="standard", student="resnet8", n_train=16, n_test=8,
                                           nesterov=True)), torch.device("cpu"))
    assert run.optimizer.param_groups[0]["nesterov"] is True
