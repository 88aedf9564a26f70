"""--launcher slurm on a real SLURM (``.ci/slurm-start``: slurmctld + slurmd on localhost),
through real submitit, with real training; and the launchers' one-line errors.

The grid: the smoke preset cut to digits, ResNet-18-tiny students, SAT and MTARD (MTARD
distils from both teachers, SAT from none; both are evaluated with transfer attacks from
the robust teacher), 4-epoch teachers on 128 points (4 steps an epoch at batch 32): 4
cells, 8 jobs. While it runs, the robust teacher's training job is preempted just after its
first epoch's checkpoint, so inside epoch 2 (USR2, the signal submitit's jobs treat as
preemption or time limit): it saves at the next step boundary (mid-epoch), requeues and
resumes from that step. Its tables must equal those of an uninterrupted local run of the
same grid (run beside it, ``--devices cpu``).

Without accounting, submitit's job state stays UNKNOWN, so every wait here polls the
results store or squeue, each with a timeout.
"""
from __future__ import annotations

import contextlib
import io
import json
import pickle
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ciard_bench.tables import build_grid, get_preset, main
from slurm_helpers import last_checkpoint, needs_slurm, queue_state, wait_for

GRID = ["--epochs", "1", "--teacher-epochs", "4", "--n-train", "128", "--n-test", "16",
        "--n-examples", "16", "--sanity-examples", "8", "--threads", "1", "--students",
        "resnet18", "--methods", "sat,mtard", "--no-figures"]
ROBUST = "digits/teachers/robust/seed0"
CELLS = ["digits/teachers/clean/seed0", ROBUST, "digits/resnet18/sat/seed0",
         "digits/resnet18/mtard/seed0"]
TABLES = [f"{t}{ext}" for t in ("table2", "table3", "table5", "table_aa") for ext in (".csv", ".md")]


def _last_epoch(run: Path) -> int:
    return last_checkpoint(run).get("epoch", 0)


def _main(*argv: str) -> tuple[int, str, str]:
    """The command in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:        # argparse's own errors
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def _slurm(results: Path, *extra: str) -> tuple[int, str, str]:
    return _main("--results-dir", str(results), *GRID, "--launcher", "slurm", *extra)


def _job_ids(results: Path) -> dict[str, str]:
    ids = {}
    for cell in CELLS:
        record = json.loads((results / "runs" / cell / "slurm.json").read_text())
        ids.update({f"{cell} {k}": v["job_id"] for k, v in record.items()})
    return ids


@pytest.fixture(scope="module")
def slurm_grid(tmp_path_factory):
    """The grid through SLURM with one preempted training job, next to a local run of it.
    Yields the two results folders and what the test saw on the way."""
    root = tmp_path_factory.mktemp("slurm")
    results, local = root / "slurm", root / "local"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = subprocess.Popen(
        [sys.executable, "-m", "ciard_bench.tables", "--results-dir", str(local), *GRID,
         "--devices", "cpu", "--workers", "1"], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    seen = {}
    try:
        # a live local run owns its folder: a submission there is refused, naming it
        wait_for("the local run's launcher.json", lambda: (local / "launcher.json").is_file(), 60)
        seen["refused_slurm"] = _slurm(local)

        seen["first"] = _slurm(results)
        seen["ids"] = _job_ids(results)
        seen["again"] = _slurm(results)            # everything is queued: submits nothing
        seen["refused_local"] = _main("--results-dir", str(results), *GRID)   # jobs alive

        # preempt the robust teacher's training after its first epoch's checkpoint
        job = seen["ids"][f"{ROBUST} train"]
        run = results / "runs" / ROBUST
        wait_for("the robust teacher's first epoch", lambda: _last_epoch(run) >= 1, 120, poll=0.05)
        seen["epoch_at_signal"] = _last_epoch(run)
        subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
        # requeued: pending on a begin time ~2.5 min away; let it start now (FACTS.md)
        wait_for("the requeued job to be pending", lambda: queue_state(job) == "PENDING", 60)
        seen["saved_on_signal"] = last_checkpoint(run)       # what the job saved before it requeued
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True,
                       timeout=30)
        seen["restarts"] = re.search(r"Restarts=(\d+)", subprocess.run(
            ["scontrol", "show", "job", job], capture_output=True, text=True,
            timeout=30).stdout).group(1)
        wait_for("every cell done", lambda: all(
            (results / "runs" / c / "eval-best.json").is_file() for c in CELLS), 300, poll=1)
        wait_for("the queue to drain", lambda: all(
            queue_state(j) in ("", "COMPLETED") for j in seen["ids"].values()), 60, poll=1)
        seen["status"] = _main("--results-dir", str(results), *GRID, "--status")
        seen["rerun"] = _slurm(results)             # all done: renders the tables
        out, _ = reference.communicate(timeout=300)
        seen["reference"] = (reference.returncode, out)
    finally:
        if reference.poll() is None:
            reference.kill()
        ids = list(seen.get("ids", {}).values())
        if ids:                                            # nothing of ours left in the queue
            subprocess.run(["scancel", *ids], timeout=30)
    yield results, local, seen


@pytest.fixture(autouse=True)
def _restore_threads():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


@needs_slurm
def test_grid_through_slurm_with_a_preempted_job_equals_a_local_run(slurm_grid):
    results, local, seen = slurm_grid
    code, out, _ = seen["first"]
    assert code == 0, out
    # one job per task (2 teachers + 2 students, each trained and evaluated), and afterok
    # dependencies: a student's training waits for its teachers' trainings, an evaluation
    # for its own training and its transfer source's
    ids = seen["ids"]
    assert len(set(ids.values())) == 8 and out.count("submitted: ") == 8
    for task, jid in ids.items():
        assert f"submitted: {task}: job {jid}" in out
    def after(task):
        cell, kind = task.rsplit(" ", 1)
        return json.loads((results / "runs" / cell / "slurm.json").read_text())[kind]["after"]
    train = {c: ids[f"{c} train"] for c in CELLS}
    assert after("digits/resnet18/mtard/seed0 train") == [
        train["digits/teachers/clean/seed0"], train[ROBUST]]
    assert after("digits/resnet18/sat/seed0 train") == []
    assert after("digits/resnet18/sat/seed0 eval") == [train["digits/resnet18/sat/seed0"],
                                                       train[ROBUST]]
    mtard = results / "runs/digits/resnet18/mtard/seed0"
    text = (mtard / "slurm" / f"{train[str(mtard.relative_to(results / 'runs'))]}_submission.sh"
            ).read_text()
    assert f"--dependency=afterok:{train['digits/teachers/clean/seed0']}:{train[ROBUST]}" in text
    assert "--kill-on-invalid-dep=yes" in text and "--signal=USR2@" in text

    # the preempted job: signalled inside epoch 2 (just after epoch 1's checkpoint), it
    # saved at a step boundary inside that epoch, requeued (same job id) and resumed from
    # that very step; no epoch twice in the log
    assert seen["epoch_at_signal"] == 1 and int(seen["restarts"]) >= 1
    saved = seen["saved_on_signal"]
    assert saved["epoch"] == 2 and 0 < saved["step"] < 4, saved      # mid-epoch
    where = f"epoch {saved['epoch']} step {saved['step']}"
    robust = results / "runs" / ROBUST
    logs = "".join(p.read_text() for p in (robust / "slurm").glob(f"{train[ROBUST]}_0_log.*"))
    assert f"train stopped by SIGUSR2, saved at {where}" in logs, logs[-3000:]
    assert f"interrupted; requeued, it resumes from the step it saved ({where})" in logs
    assert f"Requeued job {train[ROBUST]}" in logs
    assert re.search(rf"resuming .*robust/seed0 at {where}\n", logs), logs[-3000:]
    epochs = [json.loads(r)["epoch"] for r in (robust / "log.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]

    code, out = seen["reference"]
    assert code == 0, out[-3000:]
    code, out, _ = seen["rerun"]
    assert code == 0 and "submitted 0 jobs, 0 already queued, 4 cells done" in out, out
    for name in TABLES:                  # the same numbers, every table
        assert (results / name).read_text() == (local / name).read_text(), name
    assert "--" not in (results / "table3.csv").read_text()


@needs_slurm
def test_rerun_submits_only_what_is_neither_done_nor_queued(slurm_grid):
    results, _, seen = slurm_grid
    code, out, _ = seen["again"]
    assert code == 0 and "submitted 0 jobs" in out, out
    for task, jid in seen["ids"].items():
        if f"{task}:" in out:            # tasks finished by then are done, not queued
            assert f"already queued: {task}: job {jid}" in out
    assert "already queued" in out
    assert _job_ids(results) == seen["ids"]          # nothing resubmitted on the way


@needs_slurm
def test_wait_resubmits_only_the_missing_task_and_renders(slurm_grid, tmp_path):
    results, local, seen = slurm_grid
    copy = tmp_path / "copy"
    shutil.copytree(results, copy)
    (copy / "runs" / CELLS[0] / "eval-best.json").unlink()     # the clean teacher's evaluation
    code, out, _ = _slurm(copy, "--wait")
    assert code == 0, out
    assert out.count("submitted: ") == 1 and f"submitted: {CELLS[0]} eval: job" in out
    new = json.loads((copy / "runs" / CELLS[0] / "slurm.json").read_text())["eval"]["job_id"]
    assert new not in seen["ids"].values() and queue_state(new) in ("", "COMPLETED")
    for name in TABLES:                  # waited, then rendered: the same tables
        assert (copy / name).read_text() == (local / name).read_text(), name

    # a job of a task the store has done (a requeue after its last write, a duplicate)
    # succeeds without touching the run
    from ciard_bench.grid import slurm
    from ciard_bench.tables.cli import _parser, apply_overrides
    preset = apply_overrides(get_preset("smoke"), _parser().parse_args(GRID))[0]
    grid = build_grid(preset, copy, students=["resnet18"], methods=["sat", "mtard"])
    run = copy / "runs" / CELLS[0]
    before = (run / "run.json").read_bytes()
    options = slurm.check_cluster(slurm.SlurmOptions())
    job = slurm._submit_one(grid, grid.by_id()[CELLS[0]], "train", "best", options, [])
    wait_for("the duplicate job to end", lambda: queue_state(job) in ("", "COMPLETED"), 120, poll=0.5)
    with open(run / "slurm" / f"{job}_0_result.pkl", "rb") as f:
        assert pickle.load(f) == ("success", {"train_s": 0.0})
    assert (run / "run.json").read_bytes() == before


@needs_slurm
def test_status_lists_every_cell_with_its_jobs(slurm_grid):
    results, _, seen = slurm_grid
    code, out, _ = seen["status"]
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == CELLS
    for line in lines:
        cell = line.split()[0]
        assert line.split()[1] == "done"
        for kind in ("train", "eval"):
            assert f"{kind} job {seen['ids'][f'{cell} {kind}']} " in line


@needs_slurm
def test_a_folder_another_launcher_owns_is_refused_in_one_line(slurm_grid):
    results, local, seen = slurm_grid
    code, _, err = seen["refused_local"]          # local run while SLURM jobs are queued
    assert code == 2 and err.count("\n") == 1 and "SLURM jobs still queued or running" in err
    assert f"(job {seen['ids'][f'{CELLS[-1]} eval']} " in err
    code, _, err = seen["refused_slurm"]          # submission while a local run holds it
    assert code == 2 and err.count("\n") == 1 and "in use by a local run (PID" in err
    assert not list((local / "runs").glob("**/slurm.json"))


@needs_slurm
def test_an_unknown_partition_is_one_line(tmp_path):
    code, _, err = _main("--results-dir", str(tmp_path), *GRID, "--launcher", "slurm",
                         "--partition", "nosuch")
    partitions = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True,
                                timeout=30).stdout.split()
    assert code == 2 and err.count("\n") == 1 and "unknown partition 'nosuch'; accepted: " in err
    assert all(p.rstrip("*") in err for p in partitions)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "launcher.json").exists()


@pytest.mark.parametrize("argv, needle", [
    (["--partition", "debug"], "--partition is an option of --launcher slurm"),
    (["--launcher", "local", "--time", "10"], "--time is an option of --launcher slurm"),
    (["--launcher", "slurm", "--devices", "cpu"], "--devices is an option of --launcher local"),
    (["--launcher", "slurm", "--time", "soon"], "--time 'soon' is not a SLURM time"),
    (["--launcher", "slurm", "--slurm-extra", "nokey"], "--slurm-extra 'nokey' is not KEY=VALUE"),
    (["--launcher", "cloud"], "invalid choice: 'cloud'"),
    (["--devices", "gpu0"], "--devices entry 'gpu0' is not a device; accepted: "),
    (["--devices", "cpu,cuda:0"], "cpu stands alone"),
])
def test_bad_launcher_input_is_one_line(tmp_path, argv, needle):
    code, out, err = _main("--results-dir", str(tmp_path), *GRID, *argv)
    assert code == 2 and needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


def test_a_device_that_does_not_exist_is_one_line(tmp_path):
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    code, _, err = _main("--results-dir", str(tmp_path), *GRID, "--devices", f"cuda:{n}")
    assert code == 2 and err.count("\n") == 1 and f"'cuda:{n}' does not exist" in err, err
    assert ("no CUDA GPU" in err) if n == 0 else (f"cuda:{n - 1}" in err)


def test_slurm_without_sbatch_on_path_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))       # a PATH with no SLURM on it
    code, _, err = _main("--results-dir", str(tmp_path), *GRID, "--launcher", "slurm")
    assert code == 2 and err.count("\n") == 1 and "needs SLURM's sbatch on PATH" in err, err


def _device_of_worker(rendezvous: str) -> tuple[int, str | None]:
    """In a pool worker: check in, wait until the other worker has too (so each of the two
    tasks runs in its own worker), and say which GPU this worker may see."""
    folder = Path(rendezvous)
    (folder / str(os.getpid())).touch()
    end = time.monotonic() + 120
    while len(list(folder.iterdir())) < 2 and time.monotonic() < end:
        time.sleep(0.05)
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")


def test_each_local_worker_is_pinned_to_its_device(monkeypatch, tmp_path):
    """--devices cuda:1,cuda:0: each worker process sees only its own GPU, counted within
    the CUDA_VISIBLE_DEVICES it inherits (here 5,7: cuda:1 is GPU 7). No GPU is touched:
    only the pinning is checked (this machine may have none)."""
    from ciard_bench.grid import runner
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    pool = runner._pool(2, 1, ["cuda:1", "cuda:0"])
    try:
        seen = [f.result(timeout=180) for f in
                [pool.submit(_device_of_worker, str(tmp_path)) for _ in range(2)]]
    finally:
        pool.shutdown()
    assert len({pid for pid, _ in seen}) == 2 and sorted(dev for _, dev in seen) == ["5", "7"]


@needs_slurm
def test_scancel_saves_at_the_next_step_and_the_rerun_resumes_it(slurm_grid, tmp_path):
    """A plain ``scancel`` (SIGTERM to the job): the training job saves at the next step
    boundary and ends without requeuing itself (a cancelled job stays cancelled; SLURM
    requeues a preempted one); resuming the cell then ends as the uninterrupted run."""
    from ciard_bench.runs import RunDir
    from ciard_bench.grid import runner, slurm
    from ciard_bench.tables.cli import _parser, apply_overrides
    _, local, _ = slurm_grid
    preset = apply_overrides(get_preset("smoke"), _parser().parse_args(GRID))[0]
    grid = build_grid(preset, tmp_path, students=["resnet18"], methods=["sat", "mtard"])
    cell = grid.by_id()[CELLS[0]]                  # the clean teacher: waits for nothing
    run = tmp_path / "runs" / CELLS[0]
    job = slurm._submit_one(grid, cell, "train", "best", slurm.check_cluster(
        slurm.SlurmOptions()), [])
    try:
        wait_for("the first epoch", lambda: _last_epoch(run) >= 1, 120, poll=0.05)
        subprocess.run(["scancel", job], check=True, timeout=30)
        wait_for("the job's result", lambda: (run / "slurm" / f"{job}_0_result.pkl").is_file(), 90)
    finally:
        subprocess.run(["scancel", job], timeout=30)
    saved = last_checkpoint(run)
    assert saved["epoch"] == 2 and 0 < saved["step"] < 4, saved          # mid-epoch
    where = f"epoch 2 step {saved['step']}"
    logs = "".join(p.read_text() for p in (run / "slurm").glob(f"{job}_0_log.*"))
    assert f"train stopped by SIGTERM, saved at {where}" in logs, logs[-3000:]
    assert "Requeued job" not in logs
    with open(run / "slurm" / f"{job}_0_result.pkl", "rb") as f:
        kind, text = pickle.load(f)
    assert kind == "error" and f"training stopped by SIGTERM and saved at {where}" in text
    assert runner.run_task(grid, cell, "train", "best").keys() == {"train_s"}   # the rerun
    strip = lambda p: [{k: v for k, v in json.loads(r).items() if k != "time_s"}
                       for r in (p / "runs" / CELLS[0] / "log.jsonl").read_text().splitlines()]
    assert strip(tmp_path) == strip(local) and len(strip(local)) == 4
    a, b = (RunDir(p / "runs" / CELLS[0]).load("last") for p in (tmp_path, local))
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
