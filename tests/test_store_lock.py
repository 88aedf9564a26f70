"""One results folder, many writers (issue 13, item 3): real processes write the store at once.

Every writer here is a separate process (its own open files, its own locks, as a second
invocation or a SLURM job would be) working on the same results folder through the store's
own functions.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time

import pytest

from ciard_bench.grid import build_grid, get_preset, store
from ciard_bench.tables.cli import _parser, apply_overrides

N_WRITERS, N_APPENDS = 4, 25
TINY = ["--epochs", "1", "--teacher-epochs", "1", "--n-train", "64", "--n-test", "16",
        "--n-examples", "16", "--sanity-examples", "8"]
# forkserver: every writer is a fresh process forked from a clean server that imported the
# package once (spawn would pay torch's import per writer: the tests would take ~50 s)
CTX = mp.get_context("forkserver")
CTX.set_forkserver_preload(["torch", "ciard_bench.tables", "ciard_bench.train"])


def _grid(results):
    preset = apply_overrides(get_preset("smoke"), _parser().parse_args(TINY))[0]
    return build_grid(preset, results, students=["resnet18"], methods=["sat"])


def _append_runs(results, writer: int, barrier) -> None:
    grid = _grid(results)
    barrier.wait()                                  # all writers start together
    for i in range(N_APPENDS):
        store.write_grid(grid, "best", add_run={"writer": writer, "i": i})


def test_concurrent_writers_lose_no_grid_json_record(tmp_path):
    """N processes x M read-modify-writes of grid.json's ``runs`` list -> exactly N x M
    records, each once (with the lock disabled, one run kept 29 of the 100)."""
    barrier = CTX.Barrier(N_WRITERS)
    procs = [CTX.Process(target=_append_runs, args=(tmp_path, k, barrier))
             for k in range(N_WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * N_WRITERS
    record = json.loads((tmp_path / "grid.json").read_text())
    runs = [(r["writer"], r["i"]) for r in record["runs"]]
    assert len(runs) == N_WRITERS * N_APPENDS
    assert sorted(runs) == [(k, i) for k in range(N_WRITERS) for i in range(N_APPENDS)]
    assert all(runs.index((k, i)) < runs.index((k, i + 1))     # each writer's order is kept
               for k in range(N_WRITERS) for i in range(N_APPENDS - 1))
    assert len(record["cells"]) == len(_grid(tmp_path).cells)
    assert not list(tmp_path.glob(".grid.json.*.tmp"))


def _hold_cell_lock(results, cell_id: str, held, log_path) -> None:
    grid = _grid(results)
    with store.cell_lock(grid, grid.by_id()[cell_id]):
        with open(log_path, "a") as fh:
            fh.write(f"held {os.getpid()}\n")
        held.set()
        time.sleep(600)                             # until killed


def _take_cell_lock(results, cell_id: str, log_path) -> None:
    grid = _grid(results)
    with store.cell_lock(grid, grid.by_id()[cell_id]):
        with open(log_path, "a") as fh:
            fh.write(f"taken {os.getpid()}\n")


def test_a_second_process_waits_for_a_cell_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    cell_id = "digits/teachers/clean/seed0"
    log_path = tmp_path / "order.log"
    held = CTX.Event()
    holder = CTX.Process(target=_hold_cell_lock, args=(tmp_path, cell_id, held, log_path))
    holder.start()
    assert held.wait(60)
    waiter = CTX.Process(target=_take_cell_lock, args=(tmp_path, cell_id, log_path))
    waiter.start()
    time.sleep(2.0)                                 # the waiter has started and is blocked
    assert waiter.is_alive() and log_path.read_text().count("taken") == 0
    other = CTX.Process(target=_take_cell_lock,     # another cell's lock is independent
                        args=(tmp_path, "digits/teachers/robust/seed0", log_path))
    other.start()
    other.join(60)
    assert other.exitcode == 0 and log_path.read_text().count("taken") == 1
    os.kill(holder.pid, signal.SIGKILL)             # no cleanup runs: the kernel drops the lock
    holder.join(10)
    waiter.join(60)
    assert waiter.exitcode == 0
    assert log_path.read_text().splitlines() == [f"held {holder.pid}", f"taken {other.pid}",
                                                  f"taken {waiter.pid}"]
    lock = tmp_path / ".locks" / "runs" / f"{cell_id}.lock"
    assert lock.is_file()


def _train(results, cell_id: str, barrier, out) -> None:
    import torch
    torch.set_num_threads(1)
    grid = _grid(results)
    barrier.wait()
    out.put(store.train_cell(grid, grid.by_id()[cell_id]))


def test_two_processes_on_one_cell_train_it_once(tmp_path):
    """Two invocations reach the same cell at once: one trains it, the other waits for the
    lock, sees it finished and returns without training (0 s)."""
    cell_id = "digits/teachers/clean/seed0"
    barrier, out = CTX.Barrier(2), CTX.Queue()
    procs = [CTX.Process(target=_train, args=(tmp_path, cell_id, barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in procs] == [0, 0]
    seconds = sorted(out.get(timeout=10) for _ in procs)
    assert seconds[0] == 0.0 and seconds[1] > 0.0
    grid = _grid(tmp_path)
    cell = grid.by_id()[cell_id]
    assert store.train_state(grid, cell) == store.DONE
    log = (grid.run_dir(cell) / "log.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in log] == [1]
    assert store.cell_timing(grid, cell)["train_s"] == pytest.approx(seconds[1])


def test_the_lock_is_reentrant_in_one_process(tmp_path):
    """write_grid takes the store lock; a caller already holding it (the CLI renders under
    it) does not deadlock on itself."""
    grid = _grid(tmp_path)
    with store.store_lock(tmp_path):
        with store.store_lock(tmp_path):
            store.write_grid(grid, "best", add_run={"writer": 0})
        store.write_grid(grid, "best", add_run={"writer": 1})
    assert [r["writer"] for r in json.loads((tmp_path / "grid.json").read_text())["runs"]] == [0, 1]


def test_two_invocations_of_one_grid_share_the_work_and_lose_nothing(tmp_path):
    """Two ``python -m ciard_bench.tables`` on one results folder at once (as two users, or a
    rerun while a first run still goes): every cell is trained and evaluated exactly once,
    both invocations end with the whole grid done, grid.json keeps both run records."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "ciard_bench.tables", "--results-dir", str(tmp_path), *TINY,
           "--threads", "1", "--workers", "1", "--students", "resnet18", "--methods", "sat",
           "--no-figures"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    grid = _grid(tmp_path)
    for cell in grid.cells:
        assert store.status(grid, cell, "best") == store.DONE
        log = (grid.run_dir(cell) / "log.jsonl").read_text().splitlines()
        assert [json.loads(r)["epoch"] for r in log] == [1], cell.id     # trained once
    record = json.loads((tmp_path / "grid.json").read_text())
    assert len(record["runs"]) == 2 and record["counts"] == {"done": len(grid.cells)}
    # the seconds the two invocations spent training / evaluating add up to what the cells
    # record (cell.json keeps one training and one evaluation each): nothing ran twice (with
    # the locks disabled both trained the first teacher and this failed)
    for key in ("train_s", "eval_s"):
        spent = sum(k[key] for r in record["runs"] for k in r["by_kind"].values())
        kept = sum(store.cell_timing(grid, c)[key] for c in grid.cells)
        assert spent == pytest.approx(kept, rel=1e-9), key
    assert (tmp_path / "table3.csv").is_file()
    assert not [p for p in tmp_path.rglob("*.tmp")]
