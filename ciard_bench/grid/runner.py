"""Running the grid (cells in dependency order, skip finished, resume interrupted; one
process, or several workers side by side) and estimating what is left (``--dry-run``).

Workers are long-lived processes (one per worker, not per cell): each pays the imports and
oneDNN's warm-up once.
"""
from __future__ import annotations

import ctypes
import logging
import math
import multiprocessing as mp
import os
import signal
import statistics
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Sequence

import torch
from tqdm import tqdm

from ..checkpoint import atomic_write_text
from ..config import resolve
from ..errors import UserError, quiet_third_party_warnings
from ..runs import RunDir, local_dataset
from . import store
from .cells import Cell, Grid

log = logging.getLogger("ciard_bench.tables")
# training-set sizes for the estimate when the config takes the whole set
TRAIN_SIZES = {"digits": 1438, "cifar10": 50000, "cifar100": 50000, "tiny_imagenet": 100000}


def run_cells(grid: Grid, cells: Sequence[Cell], which: str, workers: int = 1,
              threads: int = 1, devices: Sequence[str] | None = None) -> dict[str, Any]:
    """Train and evaluate every cell of ``cells`` that is not done; returns a timing summary.

    Each cell is two tasks: training (once the teachers it distils from are trained) and
    evaluation (once it and its transfer source are trained). With ``workers`` > 1 tasks
    run side by side, each in a worker process with ``threads`` torch threads, seed by
    seed: first the training that other cells wait for (the teachers), then ready
    evaluations (a cell is finished as early as it can be), then the most costly training
    (so the long MobileNet cells do not end the grid alone); with one worker they run in
    grid order. Results do not depend on ``workers``: every task is seeded on its own and
    runs alone in its process. A cell whose teachers are neither
    trained nor trained in this invocation is ``blocked`` (run ``--only teacher`` first when
    sharding); a task that fails is reported with its error, the tasks that need it are
    blocked, the others go on. ``devices`` (one per worker, ``--devices``) pins each worker
    process to one of them for its whole life.
    """
    by_id = grid.by_id()
    selected = {c.id for c in cells}
    summary: dict[str, Any] = {"cells": {}, "trained": 0, "evaluated": 0, "skipped": 0,
                               "blocked": [], "failed": {}}
    start = time.perf_counter()
    store.write_grid(grid, which, selected)
    todo = []
    for cell in cells:
        if store.status(grid, cell, which) == store.DONE:
            summary["skipped"] += 1
        else:
            todo.append(cell)
    costs = {c.id: _task_costs(grid, c, which) for c in todo}
    progress = Progress(todo, {cid: sum(c.values()) for cid, c in costs.items()},
                        summary["skipped"])
    pending = [(c, "train") for c in todo if c.trained and store.train_state(grid, c) != store.DONE]
    pending += [(c, "eval") for c in todo]
    pending.sort(key=lambda t: (todo.index(t[0]), t[1] == "eval"))     # grid order
    running: dict[Any, tuple[Cell, str]] = {}
    failed: set[str] = set()

    def training(cid: str) -> bool:   # its training is pending or running in this invocation
        return any(c.id == cid and kind == "train"
                   for c, kind in (*pending, *running.values()))

    def ready(cell: Cell, kind: str) -> str:
        """``go`` | ``wait`` (a dependency trains in this invocation) | ``blocked``."""
        deps = list(cell.needs)
        if kind == "eval":
            deps += [cell.id] if cell.trained else []
            deps += [cell.source] if cell.source else []
        for d in deps:
            if d in failed:
                return "blocked"
            if store.train_state(grid, by_id[d]) != store.DONE:
                return "wait" if training(d) else "blocked"
        return "go"

    needed_by = {c.id: sum(c.id in (*o.needs, o.source) for o in todo) for c in todo}

    def priority(task: tuple[Cell, str]) -> tuple:
        """Seed by seed (an interrupted study has whole seeds); within a seed the training
        that other cells wait for (the teachers) first, then evaluations (a cell finishes
        as soon as it can), then the costliest training."""
        cell, kind = task
        rank = -needed_by[cell.id] if kind == "train" and needed_by[cell.id] else \
            (0 if kind == "eval" else 1)
        return (cell.seed, rank, -costs[cell.id].get(kind, 0.0))

    def finished(cell: Cell, kind: str, outcome: dict) -> None:
        times = summary["cells"].setdefault(cell.id, {})
        if "error" in outcome:
            failed.add(cell.id)
            pending[:] = [t for t in pending if t[0].id != cell.id]   # its evaluation too
            summary["failed"][cell.id] = outcome["error"]
            progress.line(f"{cell.id}: {kind} FAILED: {outcome['error']} (traceback: "
                          f"{grid.run_dir(cell) / 'cell-error.log'})", done=cell.id)
            return
        times.update(outcome)
        if kind == "train":
            summary["trained"] += 1
            progress.advance(costs[cell.id].get("train", 0.0), cell.id)
            return
        summary["evaluated"] += 1
        store.write_grid(grid, which, selected)
        progress.line(f"{cell.id}: " + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in times.items())
                      + _headline(grid, cell, which), done=cell.id)

    pool = _pool(workers, threads, devices) if workers > 1 else None
    try:
        while pending or running:
            order = list(pending) if pool is None else sorted(pending, key=priority)
            launched = False
            for task in order:
                if pool is not None and len(running) >= workers:
                    break
                cell, kind = task
                if task not in pending:          # dropped with a blocked cell's other task
                    continue
                state = ready(cell, kind)
                if state == "wait":
                    continue
                pending.remove(task)
                if state == "blocked":
                    _block(cell, kind, pending, summary, progress, grid, by_id, failed)
                    continue
                launched = True
                if pool is None:
                    finished(cell, kind, run_task(grid, cell, kind, which))
                    break                        # re-check readiness in grid order
                running[pool.submit(run_task, grid, cell, kind, which)] = task
            if running:
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in done:
                    cell, kind = running.pop(future)
                    try:
                        outcome = future.result()
                    except BrokenProcessPool as err:
                        raise UserError(f"a worker process died (killed, or out of memory) while "
                                        f"running {cell.id}; run the command again: finished "
                                        "cells are kept and interrupted ones resume") from err
                    finished(cell, kind, outcome)
            elif pending and not launched:   # every pending task waits on a failed one
                cell, kind = pending.pop(0)
                _block(cell, kind, pending, summary, progress, grid, by_id, failed)
    finally:
        progress.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    summary["cells"] = {k: v for k, v in summary["cells"].items() if v}
    summary["wall_s"] = time.perf_counter() - start
    summary["by_kind"] = _by_kind(grid, cells, summary["cells"])
    return summary


def _block(cell: Cell, kind: str, pending: list, summary: dict, progress: "Progress", grid: Grid,
           by_id: dict, failed: set) -> None:
    """Report a cell whose dependencies will not be trained here; drop its other task."""
    for task in [t for t in pending if t[0].id == cell.id]:
        pending.remove(task)
    deps = dict.fromkeys([*cell.needs, *([cell.source] if cell.source else [])])
    waiting = [d for d in deps if d in failed or store.train_state(grid, by_id[d]) != store.DONE]
    failed.add(cell.id)                  # what needs this cell is blocked too
    summary["blocked"].append(cell.id)
    progress.line(f"{cell.id}: blocked, waiting for {', '.join(waiting) or 'its training'} "
                  "(not trained yet)", done=cell.id)


def run_task(grid: Grid, cell: Cell, kind: str, which: str) -> dict[str, Any]:
    """Train (or resume) a cell, or evaluate it: ``{"train_s"}`` / ``{"eval_s"}`` or
    ``{"error"}``.

    Runs in a worker process or in the main one. An error is returned, not raised, so one
    failed cell does not stop the grid; its traceback goes to ``cell-error.log`` in the run
    folder.
    """
    try:
        if kind == "train":
            return {"train_s": store.train_cell(grid, cell)}
        return {"eval_s": store.evaluate_cell(grid, cell, which)}
    except (UserError, RuntimeError, OSError) as err:   # NonFiniteLoss is a UserError
        message = " ".join(str(err).split()) or type(err).__name__
        with store.cell_lock(grid, cell):   # another process running it cleans temporaries
            grid.run_dir(cell).mkdir(parents=True, exist_ok=True)
            atomic_write_text(grid.run_dir(cell) / "cell-error.log", traceback.format_exc())
        return {"error": f"{type(err).__name__}: {message}"}


def _headline(grid: Grid, cell: Cell, which: str) -> str:
    summary = store.cell_summary(grid, cell, which)
    parts = [f"clean {summary['clean']:.1f} %"] if summary else []
    if "clean_whole_test_set" in summary:
        whole = summary["clean_whole_test_set"]
        parts.append(f"clean {whole['accuracy']:.1f} % on all {whole['n']} test points")
    for name in ("pgd_trades", "aa"):
        if name in summary:
            parts.append(f"{name.upper()} {summary[name]:.1f} %")
    return f" -- {', '.join(parts)}" if parts else ""


def _init_worker(threads: int, levels: dict[str, int], slots: Any = None) -> None:
    """Worker start: one torch thread count, quiet third-party warnings, the main process's
    log levels; and on Linux the worker dies with the main process (a killed grid leaves no
    orphan writing into the results). With ``slots`` (a queue of devices) the worker takes
    one device for its life: ``cuda:N`` becomes its only visible GPU (``cuda`` in it)."""
    if slots is not None:
        device = slots.get(timeout=60)
        if device.startswith("cuda:"):   # before CUDA starts in this process
            indices = [int(d.split(":")[1]) for d in device.split(",")]   # several: a cell's procs
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")   # cuda:N counts within it
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(
                visible.split(",")[i].strip() if visible else str(i) for i in indices)
    quiet_third_party_warnings()
    logging.basicConfig(level=levels.pop(""), format="%(message)s", stream=sys.stderr)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    torch.set_num_threads(threads)
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _pool(workers: int, threads: int, devices: Sequence[str] | None = None) -> ProcessPoolExecutor:
    os.environ["OMP_NUM_THREADS"] = str(threads)     # inherited by the spawned workers
    context = mp.get_context("spawn")
    slots = None
    if devices:              # one device per worker, taken once at its start
        slots = context.Queue()
        for device in devices:
            slots.put(device)
    return ProcessPoolExecutor(max_workers=workers, mp_context=context,
                               initializer=_init_worker,
                               initargs=(threads, _log_levels(), slots))


def _log_levels() -> dict[str, int]:
    """The root level (key "") and every ciard_bench logger's own level."""
    levels = {"": logging.getLogger().getEffectiveLevel()}
    for name, logger in logging.root.manager.loggerDict.items():
        if name.startswith("ciard_bench") and isinstance(logger, logging.Logger) and logger.level:
            levels[name] = logger.level
    return levels


class Progress:
    """One bar over the whole grid, in estimated seconds of work (so the ETA weighs a
    MobileNet cell more than an ablation), and a line per finished cell above it."""

    def __init__(self, cells: Sequence[Cell], cost: dict[str, float], skipped: int):
        self.cost, self.n, self.k, self.done = cost, len(cells), 0, {}
        total = max(sum(cost.values()), 1e-9)
        self.bar = tqdm(total=total, desc=f"grid: {self.n} cells to run", unit="s",
                        bar_format="{desc} |{bar}| {percentage:3.0f}% [{elapsed}<{remaining}]",
                        disable=None if self.n else True, dynamic_ncols=True, file=sys.stderr)
        if skipped:
            log.info("%d cells already done, skipped", skipped)

    def line(self, text: str, done: str) -> None:
        """A cell is finished (or failed, or blocked): its line, and the bar moves past it."""
        self.k += 1
        self.bar.write(f"[{self.k}/{self.n}] {text}", file=sys.stderr)
        self.advance(self.cost.get(done, 0.0) - self.done.get(done, 0.0), done)
        self.bar.set_description(f"grid: {self.k}/{self.n} cells")

    def advance(self, seconds: float, cell: str | None = None) -> None:
        if cell is not None:
            self.done[cell] = self.done.get(cell, 0.0) + seconds
        self.bar.update(seconds)

    def close(self) -> None:
        self.bar.close()


def _task_costs(grid: Grid, cell: Cell, which: str) -> dict[str, float]:
    """Estimated seconds of the cell's training (left) and evaluation, from measured cells
    of its kind where the store has them (the preset's stated assumption before)."""
    row = estimate(grid, [cell], which)["cells"][0]
    return {"train": row["train_s"] if math.isfinite(row["train_s"]) else 60.0,
            "eval": row["eval_s"] if math.isfinite(row["eval_s"]) else 30.0}


def _by_kind(grid: Grid, cells: Sequence[Cell], ran: dict) -> dict[str, dict[str, float]]:
    """Seconds spent in this run per cell kind: training and evaluation."""
    totals: dict[str, dict[str, float]] = {}
    for cell in cells:
        if cell.id in ran:
            entry = totals.setdefault(cell.kind, {"cells": 0, "train_s": 0.0, "eval_s": 0.0})
            entry["cells"] += 1
            for key, value in ran[cell.id].items():
                entry[key] += value
    return totals


def _steps_done(grid: Grid, cell: Cell) -> int:
    last = RunDir(grid.run_dir(cell)).read_state().get("last") or {}
    epoch, step = last.get("epoch", 0), last.get("step", 0)
    per_epoch = _steps_per_epoch(grid, cell)
    return (epoch - (1 if step else 0)) * per_epoch + step if per_epoch else 0


def _steps_per_epoch(grid: Grid, cell: Cell) -> int | None:
    cfg = resolve(cell.config)
    n = cfg.n_train or TRAIN_SIZES.get(cfg.dataset)
    if n is None:  # npz:PATH and the like: read the file (cached for the whole grid)
        try:
            n = len(store.cached_dataset(local_dataset(cfg.dataset, grid.results), cfg.data_root,
                                         False).y_train)
        except UserError:
            return None
    return math.ceil(n / cfg.batch_size)


def _measured(grid: Grid, kind: str, key: str) -> float | None:
    """Median measured seconds per step (``train``) or per evaluation (``eval``)."""
    values = []
    for cell in grid.cells:
        if cell.kind != kind and not (kind == "student" and cell.kind == "ablation"):
            continue
        t = store.cell_timing(grid, cell)
        if key == "train" and t.get("train_s") and t.get("steps"):
            values.append(t["train_s"] / t["steps"])
        elif key == "eval" and t.get("eval_s") and cell.kind == kind:
            values.append(t["eval_s"])
    return statistics.median(values) if values else None


def estimate(grid: Grid, cells: Sequence[Cell], which: str) -> dict[str, Any]:
    """Seconds of compute left for ``cells``: steps left x seconds per step (measured in this
    results store when any cell of the kind has run, else the preset's stated assumption),
    plus one evaluation per cell not evaluated."""
    assumed = grid.preset.assumed_step_s
    rows, total, sources = [], 0.0, set()
    for cell in cells:
        state = store.status(grid, cell, which)
        row = {"id": cell.id, "status": state, "train_s": 0.0, "eval_s": 0.0}
        kind = "teacher" if cell.kind == "teacher" else "student"
        if state in (store.MISSING, store.PARTIAL) and cell.trained:
            per_epoch = _steps_per_epoch(grid, cell)
            steps = (per_epoch or 0) * resolve(cell.config).epochs - _steps_done(grid, cell)
            step_s = _measured(grid, kind, "train")
            sources.add("measured" if step_s else "assumed")
            step_s = step_s or assumed.get(kind, float("nan"))
            row.update(steps_left=steps, train_s=steps * step_s)
        if state != store.DONE:
            eval_s = _measured(grid, cell.kind, "eval")
            sources.add("measured" if eval_s else "assumed")
            row["eval_s"] = eval_s if eval_s else assumed.get(f"eval_{kind}", 0.0)
        total += row["train_s"] + row["eval_s"]
        rows.append(row)
    return {"cells": rows, "total_s": total, "basis": sorted(sources),
            "assumed": dict(assumed)}
