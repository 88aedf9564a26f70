"""torchrun with 2 CPU processes (gloo): one run, ranks in sync, equal to one process, resumable."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import torch

from ciard_bench.models import create_model, save_model_file
from ciard_bench.runs import RunDir


def _launch(args, nproc, kill_at=None):
    env = {k: v for k, v in os.environ.items() if k != "CIARD_BENCH_KILL_AT"}
    env["OMP_NUM_THREADS"] = "1"
    if kill_at:
        env["CIARD_BENCH_KILL_AT"] = kill_at
    prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    return subprocess.run([*prefix, "-m", "ciard_bench.train", *args], env=env, capture_output=True,
                          text=True, timeout=600)


def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    """BN-free model and plain CE training: the math allows exact equality (up to float sums)."""
    args = ["--method", "standard", "--dataset", "digits", "--n-train", "64", "--n-test", "16",
            "--student", "resnet8", "--student-kwargs", '{"norm": "none"}', "--epochs", "2",
            "--batch-size", "16", "--seed", "5", "--device", "cpu"]
    one = _launch(args + ["--out", str(tmp_path / "one")], 1)
    two = _launch(args + ["--out", str(tmp_path / "two")], 2)
    assert one.returncode == 0, one.stderr[-800:]
    assert two.returncode == 0, two.stderr[-800:]
    a, b = RunDir(tmp_path / "one").load("last"), RunDir(tmp_path / "two").load("last")
    for k in a["state_dict"]:
        assert torch.allclose(a["state_dict"][k], b["state_dict"][k], atol=2e-5, rtol=1e-4), k
    result = json.loads((tmp_path / "two" / "result.json").read_text())
    assert result["processes"] == 2 and result["max_parameter_difference_between_ranks"] == 0.0
    assert len(b["rng"]["ranks"]) == 2


def test_ciard_with_itt_on_two_processes_keeps_ranks_identical_and_resumes(tmp_path):
    teachers = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        path = tmp_path / f"t{seed}.pt"
        save_model_file(create_model("resnet8", 10), {"name": "resnet8", "num_classes": 10}, path)
        teachers.append(str(path))
    args = ["--method", "ciard", "--dataset", "digits", "--n-train", "32", "--n-test", "16", "--student", "resnet8",
            "--clean-teacher", teachers[0], "--robust-teacher", teachers[1], "--epochs", "2", "--batch-size", "16",
            "--attack-steps", "1", "--itt-start-epoch", "1", "--seed", "5", "--device", "cpu"]
    straight = _launch(args + ["--out", str(tmp_path / "straight")], 2)
    assert straight.returncode == 0, straight.stderr[-800:]
    result = json.loads((tmp_path / "straight" / "result.json").read_text())
    assert result["max_parameter_difference_between_ranks"] == 0.0   # student and ITT teacher
    killed = _launch(args + ["--out", str(tmp_path / "killed")], 2, kill_at="eval:2")   # during epoch 2's eval
    assert killed.returncode != 0
    assert RunDir(tmp_path / "killed").read_state()["last"]["epoch"] == 1
    resumed = _launch(args + ["--out", str(tmp_path / "killed"), "--resume"], 2)
    assert resumed.returncode == 0, resumed.stderr[-800:]
    a, b = RunDir(tmp_path / "straight").load("last"), RunDir(tmp_path / "killed").load("last")
    for key in ("state_dict", "method_state"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]) or torch.allclose(a[key][k], b[key][k], rtol=0, atol=0,
                                                                         equal_nan=True), (key, k)
    single = _launch(args + ["--out", str(tmp_path / "straight"), "--resume"], 1)
    assert single.returncode == 2 and "written by 2 process(es) but 1 are running" in single.stderr


def _faulty(args, fault, rank, step, tmp_path):
    """torchrun over tests/dist_fail_worker.py: ``fault`` on ``rank`` at its step ``step``;
    returns (the finished process, seconds from the fault to the end of every process)."""
    env = {k: v for k, v in os.environ.items() if k != "CIARD_BENCH_KILL_AT"}
    stamp = tmp_path / f"fault-{fault}.time"
    env.update(OMP_NUM_THREADS="1", FAIL=fault, FAIL_RANK=str(rank), FAIL_STEP=str(step),
               FAIL_STAMP=str(stamp))
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(Path(__file__).with_name("dist_fail_worker.py")), *args], env=env,
        capture_output=True, text=True, timeout=600)
    return done, time.time() - float(stamp.read_text())


STOP_ARGS = ["--method", "standard", "--dataset", "digits", "--n-train", "384", "--n-test", "16",
             "--student", "resnet8", "--student-kwargs", '{"norm": "none"}', "--epochs", "2",
             "--batch-size", "16", "--seed", "5", "--device", "cpu"]


def test_sigterm_to_one_rank_saves_at_the_next_step_on_both_and_resumes_exactly(tmp_path):
    """Only rank 1 gets SIGTERM, during its step 2 of 24 in epoch 1: its stop flag rides in
    that step's gradient all-reduce, so both ranks save at the boundary after step 2 (not at
    the next synchronising step, 20) and end; the 2-process resume then ends exactly as a
    straight 2-process run."""
    straight = _launch(STOP_ARGS + ["--out", str(tmp_path / "straight")], 2)
    assert straight.returncode == 0, straight.stderr[-800:]
    stopped, _ = _faulty(STOP_ARGS + ["--out", str(tmp_path / "stopped")], "term", 1, 2, tmp_path)
    assert stopped.returncode != 0                     # stopped, not finished
    assert "stopped by SIGTERM: saved at epoch 1 step 2" in stopped.stderr
    state = RunDir(tmp_path / "stopped").read_state()["last"]
    assert (state["epoch"], state["step"]) == (1, 2)
    resumed = _launch(STOP_ARGS + ["--out", str(tmp_path / "stopped"), "--resume"], 2)
    assert resumed.returncode == 0, resumed.stderr[-800:]
    assert "resuming" in resumed.stderr and "at epoch 1 step 2" in resumed.stderr
    a, b = RunDir(tmp_path / "straight").load("last"), RunDir(tmp_path / "stopped").load("last")
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k


@pytest.mark.parametrize("fault", ["raise", "kill"])
def test_a_rank_that_fails_ends_every_rank_at_once_with_one_line(tmp_path, fault):
    """Rank 1 raises (an injected 'No space left on device') or is SIGKILLed at step 3 of
    epoch 2: rank 0's next collective fails at once ("Connection closed by peer"), torchrun's
    agent ends what is left, and the run exits non-zero within seconds (measured: about 1 s
    from the fault to the end of both processes; the bound is 30 s, the backend's timeout
    is 30 minutes). The error is told once, by rank 1; rank 0 says only that another
    process ended. The checkpoint of epoch 1 stays the last good one."""
    done, seconds = _faulty(STOP_ARGS + ["--out", str(tmp_path / "run")], fault, 1, 24 + 3, tmp_path)
    assert done.returncode != 0
    print(f"{fault}: {seconds:.2f} s from the fault to the end of both ranks")
    assert seconds < 30, seconds
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    if fault == "raise":
        assert errors == [f"rank 1: error: OSError: [Errno 28] No space left on device (injected) "
                          f"(traceback: {tmp_path / 'run' / 'error-rank1.log'})"], errors
    else:
        assert errors == [], errors
    assert "rank 0: stopped: another process of this run ended" in done.stderr
    last = RunDir(tmp_path / "run").load("last")        # its sha256 checked
    assert (last["epoch"], last["step"]) == (1, 0)
