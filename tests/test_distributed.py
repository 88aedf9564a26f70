"""torchrun with 2 CPU processes (gloo): one run, ranks in sync, equal to one process, resumable."""
import json
import os
import subprocess
import sys
from pathlib import Path

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


def test_a_stop_requested_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    """Only rank 1 sets its stop flag (during step 2 of 24 an epoch): both ranks agree at the
    next step that synchronises anyway (step 20, LOG_EVERY), save there together and return;
    the 2-process resume then ends as a straight 2-process run."""
    args = ["--method", "standard", "--dataset", "digits", "--n-train", "384", "--n-test", "16",
            "--student", "resnet8", "--student-kwargs", '{"norm": "none"}', "--epochs", "2",
            "--batch-size", "16", "--seed", "5", "--device", "cpu"]
    straight = _launch(args + ["--out", str(tmp_path / "straight")], 2)
    assert straight.returncode == 0, straight.stderr[-800:]
    env = {k: v for k, v in os.environ.items() if k != "CIARD_BENCH_KILL_AT"}
    stopped = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(Path(__file__).with_name("dist_stop_worker.py")), *args,
         "--out", str(tmp_path / "stopped")], env={**env, "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=600)
    assert stopped.returncode == 0, stopped.stderr[-800:]
    lines = [json.loads((tmp_path / f"stopped.rank{r}.json").read_text()) for r in (0, 1)]
    where = {"epoch": 1, "step": 20, "out": str(tmp_path / "stopped")}
    assert lines == [{"rank": 0, "interrupted": where}, {"rank": 1, "interrupted": where}]
    state = RunDir(tmp_path / "stopped").read_state()["last"]
    assert (state["epoch"], state["step"]) == (1, 20)
    resumed = _launch(args + ["--out", str(tmp_path / "stopped"), "--resume"], 2)
    assert resumed.returncode == 0, resumed.stderr[-800:]
    a, b = RunDir(tmp_path / "straight").load("last"), RunDir(tmp_path / "stopped").load("last")
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
