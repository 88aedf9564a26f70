"""``--rehearse``: every cell of a grid through its real code path, for a few steps and a few
test points, with its cost measured on the device it runs on. Nothing of it is a result.

A rehearsal is an ordinary grid (:func:`prepare` builds it; the same runner, store, locks and
launchers run it) in a folder of its own, whose cells differ from the real ones in size only:

* data: the real dataset where it loads from ``--data-root``; otherwise synthetic images of
  the dataset's shape and class count, written as ``<rehearsal>/data/<name>-synthetic.npz``
  and read by the real ``npz:`` loader;
* teachers: ``rb:`` files found under ``--model-dir`` are used (linked); a missing one is
  RobustBench's own architecture with random weights (:func:`ciard_bench.models.
  write_random_zoo_file`) in ``<rehearsal>/models`` -- nothing is downloaded; teachers the
  grid trains are rehearsal cells like the students;
* training: the real architectures at full size and each method's real settings (inner
  attack steps, its schedule scaled to :data:`EPOCHS` epochs, so CIARD's ITT trains in the
  second), :data:`STEPS` steps of :data:`BATCH` points (a process) an epoch. Each training task
  (:func:`train_task`) first **measures** the real step (:func:`measure_training`: the
  method at its last epoch, ITT on, at the preset's batch size on a GPU; on a CPU at small
  batches, projected), then trains the cell twice: straight through, and stopped at a step
  boundary inside the second epoch (through the engine's stop request; under SLURM through
  the job's own USR2 save-and-requeue) and resumed; the two must end bit for bit equal
  on a CPU. With ``--procs-per-cell N`` each of these runs is N processes (``torchrun``)
  stopped at the same step boundary on every one of them, and the step is measured at the
  per-process batch;
* evaluation: the cell's whole attack list at protocol settings (AutoAttack standard, the
  transfer attacks from the real source cell, the sanity checks) on :data:`N_EXAMPLES`
  points; before it, the model's forward and backward passes are timed
  (:func:`measure_passes`) to project the evaluation at full size.

What is measured goes to ``rehearsal.json`` in each cell's run folder (written as it goes, so
a killed rehearsal resumes); :mod:`ciard_bench.reports.rehearsal` turns it into the report.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import submitit
import torch

from .. import plugins
from .. import train as engine
from ..checkpoint import atomic_write_json
from ..config import localize, resolve
from ..data import load_dataset, to_float_nchw
from ..errors import UserError
from ..models import robustbench_path, write_random_zoo_file, zoo_dataset
from ..runs import RunDir, in_results, local_dataset, local_path
from ..signals import StopAtLook
from ..utils import resolve_device
from .cells import Cell, Grid, build_grid, dataset_slug
from .measure import measure_passes, measure_training
from .procs import train_processes

BATCH = 2            # points per training step of the rehearsal's own runs
STEPS = 2            # steps per epoch
EPOCHS = 2           # epochs: ITT trains in the second (CIARD: epoch > milestone(50, 2) = 1)
N_TEST = 1           # points of the engine's per-epoch evaluation (last epoch only)
N_EXAMPLES = 2       # points of the final evaluation
SANITY_EXAMPLES = 1  # points of the eps sweep and noise checks
# class count and image side of the datasets a synthetic stand-in can replace
SHAPES = {"cifar10": (10, 32), "cifar100": (100, 32), "tiny_imagenet": (200, 64),
          "imagenet": (1000, 224)}
RECORD = "rehearsal.json"
NOTE = "rehearsal — not results"


def folder_for(results: Path) -> Path:
    """A rehearsal's folder beside the real results folder: ``results/paper-rehearsal``."""
    return results.with_name(results.name + "-rehearsal")


# --- preparing the grid (main process) --------------------------------------------------------
def prepare(real: Grid, folder: Path, teacher_specs: dict | None = None) -> tuple[Grid, dict]:
    """The rehearsal grid of ``real`` in ``folder`` and what stands in for what
    (``{"datasets": {...}, "teachers": {...}, "cells": {rehearsal id: real id}}``);
    ``teacher_specs``: the ones ``real`` was built with."""
    if folder.resolve() == real.results.resolve():
        raise UserError(f"a rehearsal never writes into the real results folder {str(folder)!r}; "
                        "choose another --results-dir")
    if not (folder / "runs").exists() and (folder / "grid.json").exists():
        # a rehearsal that has no run folder starts anew: the invocations a committed or
        # copied grid.json records were of run folders that are gone, and the report's wall
        # time (the sum of the recorded invocations') must not count them
        (folder / "grid.json").unlink()
    s = real.settings
    names = list(dict.fromkeys(c.dataset for c in real.cells))
    datasets, plan = {}, {"datasets": {}, "teachers": {}, "cells": {}}
    notes = []
    procs = s.get("procs_per_cell", 1)
    batch = BATCH * procs            # BATCH points a process: the global batch divides
    for name in names:
        datasets[name], plan["datasets"][name] = _dataset(name, s["data_root"], folder,
                                                          batch * STEPS)
        notes.append(f"{name}: synthetic images of its size and class count"
                     if datasets[name] != name else f"{name}: the real data")
    p = real.preset
    small = {"epochs": EPOCHS, "batch_size": batch, "n_train": batch * STEPS, "n_test": N_TEST}
    teachers = {d: {r: dataclasses.replace(t, train={**t.train, **small}) if t.spec is None else t
                    for r, t in plans.items()} for d, plans in p.teachers.items()}
    for name, stand_in in datasets.items():      # the real dataset's teachers serve its stand-in
        teachers[stand_in] = teachers.get(name) or teachers["default"]
    preset = p.with_overrides(
        teachers=teachers, train={**p.train, **small}, n_examples=N_EXAMPLES,
        sanity_examples=SANITY_EXAMPLES, table_notes={},
        reductions=f"{NOTE.upper()}: every cell of the {p.name} grid for {EPOCHS}x{STEPS} steps "
                   f"of {batch} points, evaluated on {N_EXAMPLES} test points; "
                   + "; ".join(notes) + "; the numbers mean nothing")
    students = list(dict.fromkeys(c.student for c in real.cells if c.kind == "student"))
    methods = list(dict.fromkeys(c.method for c in real.cells if c.kind == "student"))
    grid = build_grid(preset, folder, datasets=[datasets[d] for d in names],
                      students=students or None, methods=methods or None,
                      teacher_specs=teacher_specs, seeds=len(real.seeds),
                      settings={**s, "model_dir": in_results("models")})
    plan["cells"] = {c.id: _real_id(c.id, datasets) for c in grid.cells}
    unmatched = sorted({c.id for c in real.cells} ^ set(plan["cells"].values()))
    if unmatched:     # the two grids are built by the same code: a bug, not a user error
        raise RuntimeError(f"rehearsal: the rehearsal grid and the real one differ at {unmatched[0]}")
    for cell in grid.cells:
        if cell.trained:   # the engine's per-epoch evaluation at the last epoch only
            cell.config = dataclasses.replace(cell.config, eval_from=EPOCHS)
        if cell.spec and cell.spec.startswith("rb:") and cell.spec not in plan["teachers"]:
            plan["teachers"][cell.spec] = _zoo_teacher(cell, real, folder)
    by_id = real.by_id()
    grid.settings["rehearse"] = {"real": {c.id: by_id[plan["cells"][c.id]].config
                                          for c in grid.cells}, "launcher": "local"}
    return grid, plan


def _real_id(cid: str, datasets: dict[str, str]) -> str:
    head, _, rest = cid.partition("/")
    for name, stand_in in datasets.items():
        if head == dataset_slug(stand_in):
            return f"{dataset_slug(name)}/{rest}"
    return cid


def _dataset(name: str, root: str, folder: Path, n_train: int) -> tuple[str, str]:
    """(the dataset the rehearsal uses, what the report says of it); a synthetic stand-in
    holds at least ``n_train`` training images."""
    try:
        load_dataset(name, root=root)
        return name, f"{name} (the real data, from {root})"
    except UserError:
        if name.startswith("npz:") or name.lower() not in SHAPES:
            raise
    classes, side = SHAPES[name.lower()]
    # named inside the rehearsal's folder (npz:results:data/...): no machine's path in its
    # records, wherever the folder is (under SLURM it is absolute: jobs may start elsewhere)
    path = folder / "data" / f"{name.lower()}-synthetic.npz"
    if not path.is_file() or _train_size(path) < n_train:
        path.parent.mkdir(parents=True, exist_ok=True)
        gen = np.random.default_rng(0)
        n_train = max(2 * classes, n_train)
        arrays = {"x_train": gen.integers(0, 256, (n_train, side, side, 3), dtype=np.uint8),
                  "y_train": np.arange(n_train) % classes,
                  "x_test": gen.integers(0, 256, (N_EXAMPLES, side, side, 3), dtype=np.uint8),
                  "y_test": np.arange(N_EXAMPLES) % classes,
                  "classes": np.array([f"class{i}" for i in range(classes)])}
        tmp = path.with_name(path.name + ".part.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    return f"npz:{in_results(path.relative_to(folder))}", (
        f"{name}: synthetic ({classes} classes, {side}x{side} random images; "
        f"{name} was not under {root})")


def _train_size(path: Path) -> int:
    with np.load(path) as arrays:
        return len(arrays["y_train"])


def _zoo_teacher(cell: Cell, real: Grid, folder: Path) -> str:
    """Put the ``rb:`` teacher of ``cell`` into the rehearsal's model folder: the real file
    (linked) where ``--model-dir`` has it, else a random-weight stand-in; what was done."""
    data = load_dataset(local_dataset(cell.dataset, folder), root=real.settings["data_root"])
    zoo, name = zoo_dataset(cell.spec, cell.dataset, data.num_classes)
    found = robustbench_path(name, zoo, real.settings["model_dir"])
    target = robustbench_path(name, zoo, folder / "models")
    if found.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(found.resolve())
        return f"{cell.spec}: the real file {found}"
    if not target.is_file():
        images = to_float_nchw(data.x_train[:8]).contiguous()
        write_random_zoo_file(name, zoo, folder / "models", images)
    return (f"{cell.spec}: RobustBench's architecture with random weights ({found} is missing; "
            "nothing is downloaded)")


# --- the tasks (worker processes or SLURM jobs) -------------------------------------------------
def read_record(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / RECORD).read_text())
    except FileNotFoundError:
        return {}


def _write_record(run_dir: Path, record: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / RECORD, record)


def train_task(grid: Grid, cell: Cell) -> dict[str, Any]:
    """Measure, train straight, train stopped and resumed, compare; resumable at each stage
    (``rehearsal.json``). Returns ``{"interrupted": ...}`` when a SLURM job was stopped to
    be requeued (its requeued run resumes here). With ``--procs-per-cell N`` the three runs
    are N processes each (:func:`ciard_bench.grid.procs.train_processes`) and the step is
    measured at the per-process batch."""
    run_dir = grid.run_dir(cell)
    record = read_record(run_dir)
    device = resolve_device(cell.config.device)
    procs = grid.settings.get("procs_per_cell", 1)
    if "measured" not in record:
        real = resolve(grid.settings["rehearse"]["real"][cell.id])
        cfg = resolve(cell.config)
        here = localize(cfg, grid.results)      # measured here: the paths as opened here
        measure = dataclasses.replace(real, dataset=here.dataset, data_root=cfg.data_root,
                                      clean_teacher=here.clean_teacher,
                                      robust_teacher=here.robust_teacher,
                                      teacher_model_dir=here.teacher_model_dir, out=here.out,
                                      batch_size=real.batch_size // procs)
        start = time.perf_counter()
        record["measured"] = {**measure_training(measure, device), "procs": procs,
                              "seconds": time.perf_counter() - start}
        _write_record(run_dir, record)
    straight = grid.results / "rehearsal-straight" / cell.id
    if "straight" not in record:
        shutil.rmtree(straight, ignore_errors=True)
        start = time.perf_counter()
        _train(dataclasses.replace(cell.config, out=in_results(f"rehearsal-straight/{cell.id}")),
               procs, grid.results, resume=False)
        record["straight"] = {"seconds": time.perf_counter() - start}
        _write_record(run_dir, record)
    if "stopped" not in record:
        if RunDir(run_dir).exists():   # a rehearsal killed before its record: start afresh
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            (run_dir / "run.json").unlink(missing_ok=True)
        start = time.perf_counter()
        out = _train(cell.config, procs, grid.results, resume=False, stop_at=_stop_look(procs),
                     fire=_fire(grid, cell, procs))
        record["stopped"] = {**out.get("interrupted", {"epoch": None, "step": None}),
                             "seconds": time.perf_counter() - start}
        _write_record(run_dir, record)
        if "interrupted" not in out:
            raise RuntimeError(f"{cell.id}: the stop request inside epoch {EPOCHS} did not stop "
                               "the run")
        if cell.id == requeued_cell(grid):
            if procs > 1:               # the processes have saved; now the job's own signal
                _signal_self()
            return out                  # the job's handler requeues; the new job resumes below
    start = time.perf_counter()
    out = _train(cell.config, procs, grid.results, resume=True)
    if "interrupted" in out:            # a real stop request (a preempted job): resumed later
        return out
    record["resumed"] = {"seconds": time.perf_counter() - start,
                         **compare_runs(straight, run_dir)}
    record["checkpoints"] = checkpoint_bytes(run_dir)
    _write_record(run_dir, record)
    if device.type == "cpu" and not record["resumed"]["exact"]:
        method = cell.config.method
        origin = plugins.origin("method", method)
        hint = "" if origin is None else (
            f"; method {method!r} comes from the plugin {plugins.label(origin)}"
            + (f" ({origin['entry_point']})" if origin.get("entry_point") else "")
            + ": state its step adapts outside buffers or modules (checkpoint_state()) is lost "
            "at a resume; keep it in a buffer (docs/plugins.md)")
        raise RuntimeError(f"{cell.id}: stopped at epoch {record['stopped']['epoch']} step "
                           f"{record['stopped']['step']} and resumed, the run differs from the "
                           f"straight one by up to {record['resumed']['max_abs_difference']:g}"
                           + hint)
    _remove(straight, grid.results / "rehearsal-straight")   # compared: not needed any more
    return {}


def _remove(run: Path, root: Path) -> None:
    """Remove the run folder ``run`` and the folders above it up to ``root`` left empty."""
    shutil.rmtree(run, ignore_errors=True)
    for parent in run.parents:
        if parent == root.parent:
            break
        try:
            parent.rmdir()
        except OSError:         # not empty (another cell's), or gone
            break


def _train(cfg: Any, procs: int, results: Path, resume: bool, stop_at: int | None = None,
           fire: Callable[[], None] | None = None) -> dict[str, Any]:
    """One run of the cell (its ``results:`` paths inside ``results``), in this process or on
    ``procs`` processes; stopped at the ``stop_at``-th look at the stop flag when given.
    Returns the engine's result (``{"interrupted": {"epoch", "step"}}`` when it stopped)."""
    if procs == 1:
        stop = StopAtLook(stop_at, fire, engine.STOP if fire else None) if stop_at else None
        return engine.train(cfg, resume=resume, progress=False, stop=stop, results=results)
    # engine.STOP: a real stop request (a SLURM job's signal) is passed on to the processes
    if train_processes(resolve(cfg), procs, resume, engine.STOP, stop_at=stop_at,
                       results=results):
        return {}
    last = RunDir(local_path(cfg.out, results)).read_state().get("last") or {}
    return {"interrupted": {"epoch": last.get("epoch"), "step": last.get("step")}}


def _stop_look(procs: int) -> int:
    """The look at the stop flag that comes after step 1 of epoch 2 (:class:`StopAtLook`):
    one process looks after steps 1 .. STEPS-1 and at the epoch's end (STEPS looks an
    epoch); several look after every step and at the epoch's end (STEPS + 1)."""
    return (STEPS if procs == 1 else STEPS + 1) + 1


def _fire(grid: Grid, cell: Cell, procs: int) -> Callable[[], None] | None:
    """How the stopped run's stop request is made: in-process (None); for the one cell a
    SLURM rehearsal requeues (:func:`requeued_cell`) the job's own USR2, which sets the
    engine's flag and requeues (several processes: sent once they have saved)."""
    if cell.id != requeued_cell(grid) or procs > 1:
        return None
    return _signal_self


def _signal_self() -> None:
    """The job's preemption signal to this very process: its handler sets engine.STOP."""
    os.kill(os.getpid(), getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG))


def requeued_cell(grid: Grid) -> str | None:
    """Under SLURM, the first trained cell is stopped by the job's own preemption signal
    (USR2: save at the step boundary, requeue, resume in the new job): the cluster's
    requeue path proven once. The others stop in-process (a requeued job may wait minutes
    for the scheduler)."""
    if grid.settings["rehearse"].get("launcher") != "slurm":
        return None
    return next((c.id for c in grid.cells if c.trained), None)


def checkpoint_bytes(run_dir: Path) -> dict[str, int]:
    """Bytes of the run's ``last`` and ``best`` checkpoint files: what the real cell keeps on
    disk (the same models, method state and optimiser state; only the log is longer)."""
    state = RunDir(run_dir).read_state()
    return {which: (run_dir / "checkpoints" / state[which]["file"]).stat().st_size
            for which in ("last", "best") if state.get(which)}


def compare_runs(a: Path, b: Path) -> dict[str, Any]:
    """The largest difference between two finished runs' last training states: the student,
    the method's state (adaptive buffers, trained teachers) and the optimiser's moments."""
    sa, sb = RunDir(a).load("last"), RunDir(b).load("last")
    diffs = []
    for key in ("state_dict", "method_state"):
        diffs += _differences(sa[key], sb[key])
    diffs += _differences(sa["optimizer"]["state"], sb["optimizer"]["state"])
    worst = max(diffs, default=0.0)
    return {"max_abs_difference": worst, "exact": worst == 0.0, "tensors_compared": len(diffs)}


def _differences(a: Any, b: Any) -> list[float]:
    if torch.is_tensor(a):
        if not torch.is_tensor(b) or a.shape != b.shape:
            return [math.inf]
        if a.is_floating_point():
            return [float((a.double() - b.double()).abs().max()) if a.numel() else 0.0]
        return [0.0 if torch.equal(a, b) else math.inf]
    if isinstance(a, dict):
        if not isinstance(b, dict) or set(a) != set(b):
            return [math.inf]
        return [d for k in a for d in _differences(a[k], b[k])]
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            return [math.inf]
        return [d for u, v in zip(a, b) for d in _differences(u, v)]
    return [0.0 if a == b else math.inf]


def eval_passes(grid: Grid, cell: Cell, model: torch.nn.Module, x: torch.Tensor,
                y: torch.Tensor, device: torch.device) -> None:
    """Before a rehearsal cell's evaluation: time ``model``'s passes into its record."""
    run_dir = grid.run_dir(cell)
    record = read_record(run_dir)
    if "passes" not in record:
        record["passes"] = measure_passes(model, x, y, device, grid.preset.eval_batch_size)
        _write_record(run_dir, record)
