"""--procs-per-cell: its one-line errors and device groups, and --launcher slurm
--procs-per-cell 2 on a real SLURM (``.ci/slurm-start``), with real training.

A cut grid: given teacher files (so only the student cell trains), SAT, a ResNet-18-tiny
student, 4 epochs of 8 steps. Its training job runs one task that starts 2 gloo processes
through torchrun; just after epoch 1's checkpoint the job is preempted (USR2): both
processes save at the next step boundary (mid-epoch 2), the job requeues, resumes on 2
processes from that step, and the grid's tables must equal those of a local run of the same
grid with 2 processes per cell.
"""
from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
import torch

from ciard_bench.models import create_model, save_model_file
from ciard_bench.tables import main
from slurm_helpers import last_checkpoint, needs_slurm, queue_state, wait_for

CELL = "digits/resnet18/sat/seed0"
TABLES = [f"{t}{ext}" for t in ("table2", "table3", "table5", "table_aa") for ext in (".csv", ".md")]


@pytest.fixture(autouse=True)
def _restore_threads():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("argv, needle", [
    (["--procs-per-cell", "0"], "--procs-per-cell '0' is not a process count"),
    (["--procs-per-cell", "two"], "--procs-per-cell 'two' is not a process count"),
    (["--launcher", "slurm", "--procs-per-cell", "4", "--gpus-per-job", "2"],
     "--procs-per-cell 4 needs --gpus-per-job 4 or more"),
])
def test_bad_procs_per_cell_is_one_line(tmp_path, capsys, argv, needle):
    code = main(["--results-dir", str(tmp_path), "--epochs", "1", "--methods", "sat", *argv])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


def _visible_gpus() -> str | None:
    """In a pool worker: the GPUs it may see."""
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def test_devices_go_to_the_workers_in_groups_of_procs_per_cell(monkeypatch):
    """--devices cuda:0..3 --procs-per-cell 2: two workers, each seeing its 2 GPUs (counted
    within the CUDA_VISIBLE_DEVICES it inherits); a group that repeats a GPU, or a count that
    does not divide the list, is a one-line error. No GPU is touched."""
    from ciard_bench.errors import UserError
    from ciard_bench.grid import launchers, runner
    devices = ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert launchers.device_groups(devices, 2) == ["cuda:0,cuda:1", "cuda:2,cuda:3"]
    assert launchers.device_groups(devices, 1) == devices
    with pytest.raises(UserError, match="repeats one"):
        launchers.device_groups(["cuda:0", "cuda:0"], 2)
    with pytest.raises(UserError, match="does not divide the 4 --devices"):
        launchers.procs_per_cell("3", devices, None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    pool = runner._pool(1, 1, ["cuda:3,cuda:1"])
    try:
        seen = pool.submit(_visible_gpus).result(timeout=180)
    finally:
        pool.shutdown()
    assert seen == "7,5"


# slow (-m slow): its parts stay in the default run: a preempted one-process job resumes and
# equals a local run (test_slurm.py), a two-process run stopped mid-epoch resumes exactly
# (test_distributed.py), a cell on the real SLURM with two processes (test_plugin_tutorial.py)
@pytest.mark.slow
@needs_slurm
def test_a_two_process_training_job_preempted_mid_epoch_resumes_and_equals_local(tmp_path):
    teachers = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        teachers.append(str(tmp_path / f"t{seed}.pt"))
        save_model_file(create_model("resnet8", 10), {"name": "resnet8", "num_classes": 10}, teachers[-1])
    grid = ["--epochs", "4", "--n-train", "256", "--n-test", "16", "--n-examples", "16",
            "--sanity-examples", "8", "--threads", "1", "--students", "resnet18", "--methods",
            "sat", "--no-figures", "--clean-teacher", teachers[0], "--robust-teacher", teachers[1],
            "--procs-per-cell", "2"]
    results = tmp_path / "slurm"
    assert main(["--results-dir", str(results), *grid, "--launcher", "slurm", "--cpus-per-job", "2"]) == 0
    job = json.loads((results / "runs" / CELL / "slurm.json").read_text())["train"]["job_id"]
    ids = [job, json.loads((results / "runs" / CELL / "slurm.json").read_text())["eval"]["job_id"]]
    run = results / "runs" / CELL
    try:
        wait_for("epoch 1's checkpoint", lambda: last_checkpoint(run).get("epoch", 0) >= 1, 600,
                 poll=0.05)
        subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
        wait_for("the requeued job to be pending", lambda: queue_state(job) == "PENDING", 120, poll=0.2)
        saved = last_checkpoint(run)
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=30)
        wait_for("the cell's evaluation", lambda: (run / "eval-best.json").is_file(), 600, poll=1)
        wait_for("the queue to drain", lambda: all(queue_state(j) in ("", "COMPLETED") for j in ids), 120, poll=1)
    finally:
        subprocess.run(["scancel", *ids], timeout=30)
    assert saved["epoch"] == 2 and 0 < saved["step"] < 8, saved           # mid-epoch
    where = f"epoch {saved['epoch']} step {saved['step']}"
    logs = "".join(p.read_text() for p in (run / "slurm").glob(f"{job}_0_log.*"))
    for rank in (0, 1):
        assert f"torchrun: process {rank} of 2 (world size 2)" in logs, logs[-3000:]
    assert f"train stopped by SIGUSR2, saved at {where}" in logs, logs[-3000:]
    assert f"Requeued job {job}" in logs
    assert re.search(rf"torchrun: resuming .* at {where}\n", logs), logs[-3000:]
    epochs = [json.loads(r)["epoch"] for r in (run / "log.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]
    assert json.loads((run / "result.json").read_text())["processes"] == 2

    assert main(["--results-dir", str(results), *grid, "--launcher", "slurm"]) == 0   # renders
    local = tmp_path / "local"
    assert main(["--results-dir", str(local), *grid]) == 0
    for name in TABLES:
        assert (results / name).read_text() == (local / name).read_text(), name
