"""The results store: each cell's run folder, its status, and running a cell (train, evaluate).

A cell's folder ``<results>/runs/<cell id>/`` is a training run folder of the engine
(config.json, run.json, checkpoints/, log.jsonl, result.json) plus

    eval-<best|last>.json   the evaluation suite's result for that checkpoint, with the
                            ``tables_key`` it was made for (attacks, points, settings,
                            checkpoint sha256); a different key means "evaluate again"
    eval-<which>.json.partial.json  the attacks finished so far while that evaluation runs
                            (a killed evaluation resumes after its last finished attack;
                            removed once eval-<which>.json is written)
    aa-state-<which>.json   AutoAttack's resume file
    cell.json               wall-clock seconds spent training / evaluating it here

External teachers (``rb:NAME``, files) have only ``eval-best.json`` and ``cell.json``.
Status: ``done`` (trained and evaluated), ``trained`` (evaluation missing or stale),
``partial`` (interrupted: resumed on the next run), ``missing``.

Many writers (shards, several invocations, cluster jobs on one results folder) lose no
update: every file is written atomically, and whatever is read, changed and written back
is done under a real file lock (:mod:`.locks`: ``flock`` on ``<results>/.locks/...``,
released by the kernel when the holder dies):

* the **store lock** (``.locks/store.lock``) covers the files shared by the whole folder:
  ``grid.json`` (recomputed from disk and its ``runs`` history appended to under the lock,
  :func:`write_grid`) and the rendered tables and figures (the CLI renders under it, so the
  last render reads the newest results);
* a **cell lock** (``.locks/runs/<cell id>.lock``) is held while a cell is trained or
  evaluated (:func:`train_cell`, :func:`evaluate_cell`: its run folder, ``cell.json``, the
  evaluation caches). A second process that reaches a cell another one is running *waits*
  for it, then looks again: a cell finished meanwhile is not run twice, an interrupted one
  is resumed. Waiting (not skipping) keeps the dependency order right: what needs the cell
  starts once it is done.

Locks are never nested across kinds in one process (a cell lock is released before the
store lock is taken), so two processes cannot deadlock. Not locked: the decoded
Tiny-ImageNet cache in the data root (written atomically; concurrent writers write the same
bytes).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import shlex
import time
from pathlib import Path
from typing import Any

import torch

from .. import plugins
from ..checkpoint import atomic_write_json
from ..config import changed_settings, resolve
from ..data import load_dataset, to_float_nchw
from ..errors import UserError
from ..evaluate import evaluate, predict, wilson
from ..models import load_model_file, load_teacher
from ..runs import RunDir, local_dataset, local_path, teacher_sha256
from ..train import STOP, train
from ..utils import provenance, resolve_device
from . import migrate, rehearsal
from .cells import Cell, Grid
from .keys import eval_key, reusable
from .locks import LOCK_DIR, file_lock
from .procs import train_processes
from .transfers import has_transfer, transfer_mode, transfer_store

log = logging.getLogger("ciard_bench.tables")
DONE, TRAINED, PARTIAL, MISSING, BLOCKED = "done", "trained", "partial", "missing", "blocked"


def store_lock(results: Path) -> contextlib.AbstractContextManager[None]:
    """The lock over a results folder's shared files (grid.json, tables, figures)."""
    return file_lock(Path(results) / LOCK_DIR / "store.lock", f"results folder {str(results)!r}",
                     level=logging.DEBUG)          # held for moments: a wait is not news


def cell_lock(grid: Grid, cell: Cell) -> contextlib.AbstractContextManager[None]:
    """The lock over one cell's run folder, held while it is trained or evaluated."""
    return file_lock(grid.results / LOCK_DIR / "runs" / f"{cell.id}.lock", f"cell {cell.id}")


def eval_path(grid: Grid, cell: Cell, which: str) -> Path:
    """Teachers are always evaluated at the checkpoint the students distil from (best)."""
    return grid.run_dir(cell) / f"eval-{'best' if cell.kind == 'teacher' else which}.json"


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as err:
        raise UserError(f"{str(path)!r} is not valid JSON; delete it to redo that step") from err


def train_state(grid: Grid, cell: Cell) -> str:
    """``done`` | ``partial`` | ``missing`` for the training part of a cell."""
    if not cell.trained:
        return DONE
    rundir = RunDir(grid.run_dir(cell))
    if (rundir.root / "result.json").is_file():
        _check_same_config(grid, cell)
        return DONE
    if rundir.exists():
        _check_relocatable(grid, cell, rundir.read_state().get("config") or {})
        return PARTIAL
    return MISSING


def cell_plugins(cell: Cell) -> list[dict[str, Any]]:
    """The plugins (distribution and version, or file and sha256) that the cell's method,
    student and dataset come from now; empty for built-ins."""
    if not cell.trained:
        return []
    c = cell.config
    return plugins.provenance(method=c.method, model=c.student, dataset=c.dataset)


def _check_same_config(grid: Grid, cell: Cell) -> None:
    result = read_json(grid.run_dir(cell) / "result.json") or {}
    saved, now = result.get("config", {}), resolve(cell.config).to_dict()
    _check_relocatable(grid, cell, saved)
    was_used, used = result.get("plugins", []), cell_plugins(cell)
    if was_used != used:      # another plugin version: its rows are not mixed in silently
        raise UserError(f"cell {cell.id} was trained with {plugins.said(was_used)}, the grid now "
                        f"has {plugins.said(used)}; install the version it was trained with, or "
                        f"delete {str(grid.run_dir(cell))!r}, or choose another --results-dir")
    # a teacher the user gave as a file is the same teacher wherever it is now: its content
    recorded = RunDir(grid.run_dir(cell)).read_state().get("teachers", {})
    same = {k for k, sha in recorded.items()
            if teacher_sha256(getattr(cell.config, k), grid.results) == sha}
    for key, was, asked in changed_settings(saved, now):
        if key == "sync_bn" or key in same:   # sync_bn: 1 process or global BatchNorm, one step
            continue
        raise UserError(f"cell {cell.id} in {str(grid.run_dir(cell))!r} was trained with "
                        f"{key}={was!r}, the grid now asks for {asked!r}; "
                        "delete that folder or choose another --results-dir")


def _check_relocatable(grid: Grid, cell: Cell, saved: dict[str, Any]) -> None:
    """A run recorded before results folders could move names its teachers by the absolute
    path of the folder it was made in: one line that says how to rewrite the folder once
    (:mod:`.migrate`), instead of a mismatch of settings."""
    now = cell.config
    for key in ("clean_teacher", "robust_teacher"):
        if migrate.in_grid_path(saved.get(key)) == getattr(now, key) != saved.get(key):
            raise UserError(
                f"cell {cell.id} in {str(grid.run_dir(cell))!r} names its {key} by the path "
                f"{saved[key]!r} (written before results folders could move); rewrite the "
                f"folder once: python -m ciard_bench.tables --results-dir "
                f"{shlex.quote(str(grid.results))} --migrate-paths")


def status(grid: Grid, cell: Cell, which: str) -> str:
    state = train_state(grid, cell)
    if state != DONE:
        return state
    stored = read_json(eval_path(grid, cell, which))
    if stored is not None and stored.get("tables_key") in (
            eval_key(grid, cell, which), eval_key(grid, cell, which, by_content=False)):
        return DONE
    return TRAINED


def cell_timing(grid: Grid, cell: Cell) -> dict[str, Any]:
    return read_json(grid.run_dir(cell) / "cell.json") or {}


def _record_timing(grid: Grid, cell: Cell, **values: float) -> None:
    info = {**cell_timing(grid, cell), "id": cell.id, **values}
    atomic_write_json(grid.run_dir(cell) / "cell.json", info)


@functools.lru_cache(maxsize=4)
def cached_dataset(name: str, root: str, download: bool) -> Any:
    """``load_dataset`` once per process for the whole grid (the last four datasets)."""
    return load_dataset(name, root=root, download=download)


def _model(grid: Grid, cell: Cell, which: str, num_classes: int, device: Any) -> Any:
    if not cell.trained:
        return load_teacher(cell.spec, cell.dataset, num_classes,
                            local_path(grid.settings["model_dir"], grid.results),
                            device=device)
    model, _ = load_model_file(grid.run_dir(cell), which="best" if cell.kind == "teacher"
                               else which, device=device)
    return model


def train_cell(grid: Grid, cell: Cell) -> float:
    """Train a cell (resuming an interrupted run) under its cell lock; returns the seconds it
    took here (0 when another process trained it while this one waited for the lock)."""
    with cell_lock(grid, cell):
        state = train_state(grid, cell)       # looked at again: the lock may have been waited for
        if state == DONE:
            log.info("%s: trained by another process meanwhile", cell.id)
            return 0.0
        return _train_cell(grid, cell, resume=state == PARTIAL)


def _train_cell(grid: Grid, cell: Cell, resume: bool) -> float:
    before = cell_timing(grid, cell).get("train_s", 0.0) if resume else 0.0
    start = time.perf_counter()
    procs = grid.settings.get("procs_per_cell", 1)
    if "rehearse" in grid.settings:     # measured, trained straight, stopped and resumed
        rehearsal.train_task(grid, cell)
    elif procs > 1:   # torchrun, under this process's cell lock (grid/procs.py)
        train_processes(resolve(cell.config), procs, resume, STOP, results=grid.results)
    else:                                                           # one bar: the grid's
        train(dataclasses.replace(cell.config), resume=resume, progress=False, results=grid.results)
    seconds = time.perf_counter() - start
    steps = sum(r.get("steps", 0) for r in _log(grid, cell))
    _record_timing(grid, cell, train_s=before + seconds, steps=steps)
    return seconds


def _log(grid: Grid, cell: Cell) -> list[dict]:
    path = grid.run_dir(cell) / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] \
        if path.is_file() else []


def evaluate_cell(grid: Grid, cell: Cell, which: str) -> float:
    """Run the cell's attacks with the evaluation suite under its cell lock; writes
    ``eval-<which>.json``. Returns the seconds it took here (0 when another process
    evaluated it while this one waited for the lock)."""
    with cell_lock(grid, cell):
        if status(grid, cell, which) == DONE:
            log.info("%s: evaluated by another process meanwhile", cell.id)
            return 0.0
        return _evaluate_cell(grid, cell, which)


def _evaluate_cell(grid: Grid, cell: Cell, which: str) -> float:
    s, p = grid.settings, grid.preset
    device = resolve_device(s["device"])
    data = cached_dataset(local_dataset(cell.dataset, grid.results), s["data_root"],
                          s["download"])
    n = min(p.n_examples or len(data.y_test), len(data.y_test))
    # contiguous: a permuted batch makes some small convolutions' backward unsafe (torch 2.14)
    x, y = to_float_nchw(data.x_test[:n]).contiguous(), data.y_test[:n]
    model = _model(grid, cell, which, data.num_classes, device)
    source = store = None
    if has_transfer(cell):
        source_cell = grid.by_id()[cell.source]
        source = _model(grid, source_cell, "best", data.num_classes, device)
        store = transfer_store(grid, source_cell)
    if "rehearse" in grid.settings:     # the passes that project the evaluation at full size
        rehearsal.eval_passes(grid, cell, model, x, y, device)
    key = eval_key(grid, cell, which)
    out = eval_path(grid, cell, which)
    reuse = reusable(grid, cell, which, key, read_json(out))  # only the transfer mode changed
    RunDir(out.parent).clean_temporaries()      # left by a writer killed mid-write
    cache = out.with_name(out.name + ".partial.json")
    start = time.perf_counter()
    result = evaluate(model, x, y, list(cell.attacks), key["eps"], batch_size=p.eval_batch_size,
                      seed=cell.seed, n_classes=data.num_classes, device=device, source=source,
                      expensive_checks=cell.kind != "ablation",
                      sanity_examples=p.sanity_examples,
                      aa_state=grid.run_dir(cell) / f"aa-state-{which}.json",
                      overrides=key["overrides"], cache=cache, transfer=transfer_mode(grid),
                      transfer_store=store, source_id=key["source"], reuse=reuse)
    seconds = time.perf_counter() - start
    if n < len(data.y_test) and "rehearse" not in grid.settings:  # did it learn the whole set
        result["clean_whole_test_set"] = _clean_accuracy(model, data, p.eval_batch_size, device)
    result.update({"cell": cell.id, "dataset": cell.dataset, "row": cell.row,
                   "checkpoint": which if cell.kind != "teacher" else "best",
                   "source_cell": cell.source if source is not None else None,
                   "tables_key": key, "provenance": provenance(device, cell.seed)})
    atomic_write_json(out, result)
    cache.unlink(missing_ok=True)
    if result.get("reused") and "eval_s" in cell_timing(grid, cell):
        # eval_s stays the time of the evaluation whose attacks were reused
        _record_timing(grid, cell, eval_rerun_s=seconds)
    else:
        _record_timing(grid, cell, eval_s=seconds)
    return seconds


def _clean_accuracy(model: Any, data: Any, batch_size: int, device: Any) -> dict[str, Any]:
    model.eval()
    with torch.no_grad():
        pred = predict(model, to_float_nchw(data.x_test).contiguous(), batch_size, device)
    k, n = int((pred == data.y_test.cpu()).sum()), len(data.y_test)
    return {"accuracy": 100.0 * k / n, "n": n, "ci95": wilson(k, n)}


def cell_summary(grid: Grid, cell: Cell, which: str) -> dict[str, Any]:
    """A finished cell's headline numbers from its evaluation: clean accuracy on the
    evaluated points and on the whole test set, PGD_TRADES and AA robust accuracy, and
    whether every sanity check passed (empty before the evaluation)."""
    ev = read_json(eval_path(grid, cell, which)) or {}
    if "clean" not in ev:
        return {}
    out: dict[str, Any] = {"clean": ev["clean"]["accuracy"], "n": ev["clean"]["n"]}
    if "clean_whole_test_set" in ev:
        whole = ev["clean_whole_test_set"]
        out["clean_whole_test_set"] = {"accuracy": whole["accuracy"], "n": whole["n"]}
    for name in ("pgd_trades", "aa"):
        if name in ev.get("attacks", {}):
            out[name] = ev["attacks"][name]["accuracy"]
    if "sanity" in ev:
        out["sanity_passed"] = bool(ev["sanity"].get("passed"))
    return out


def grid_record(grid: Grid, which: str, selected: set[str] | None = None) -> dict[str, Any]:
    """The machine-readable ``grid.json``: every cell with its status, timings and (once
    evaluated) headline numbers (:func:`cell_summary`)."""
    cells = []
    for cell in grid.cells:
        timing = cell_timing(grid, cell)
        cell_status = status(grid, cell, which)
        summary = cell_summary(grid, cell, which) if cell_status == DONE else {}
        cells.append({"id": cell.id, "kind": cell.kind, "dataset": cell.dataset,
                      "student": cell.student, "method": cell.method, "row": cell.row,
                      "options": dict(cell.config.method_options) if cell.config else None,
                      "spec": cell.spec, "run": f"runs/{cell.id}",
                      "status": cell_status,
                      "in_this_run": selected is None or cell.id in selected,
                      **{k: timing[k] for k in ("train_s", "eval_s", "steps") if k in timing},
                      **({"results": summary} if summary else {}),
                      **_recorded_plugins(grid, cell)})
    counts: dict[str, int] = {}
    totals: dict[str, dict[str, float]] = {}
    for c in cells:
        counts[c["status"]] = counts.get(c["status"], 0) + 1
        for kind in (c["kind"], "all"):
            t = totals.setdefault(kind, {"cells": 0, "train_s": 0.0, "eval_s": 0.0})
            t["cells"] += 1
            t["train_s"] += c.get("train_s", 0.0)
            t["eval_s"] += c.get("eval_s", 0.0)
    used = [p for cell in grid.cells for p in cell_plugins(cell)]
    used = [dict(t) for t in dict.fromkeys(tuple(sorted(p.items())) for p in used)]
    return {"format": "ciard-bench/tables-grid/1", "preset": grid.preset.name,
            "checkpoint": which, "settings": _recorded_settings(grid.settings),
            **({"plugins": used} if used else {}),
            "counts": counts, "totals": totals, "cells": cells}


def _recorded_plugins(grid: Grid, cell: Cell) -> dict[str, Any]:
    """``{"plugins": [...]}`` as the cell's finished run recorded them (none: built-ins)."""
    if not cell.trained:
        return {}
    used = (read_json(grid.run_dir(cell) / "result.json") or {}).get("plugins")
    return {"plugins": used} if used else {}


def _recorded_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings ``grid.json`` records: not this machine's paths, nor a rehearsal's copy
    of the real grid's cell configs (its report maps each cell to its real one)."""
    out = {k: v for k, v in settings.items() if k not in ("device", "data_root", "model_dir")}
    if "rehearse" in out:
        out["rehearse"] = {k: v for k, v in out["rehearse"].items() if k != "real"}
    return out


def write_grid(grid: Grid, which: str, selected: set[str] | None = None,
               add_run: dict | None = None) -> None:
    """Rewrite ``<results>/grid.json`` from what is on disk, keeping its ``runs`` history and
    appending ``add_run`` to it; under the store lock, so concurrent writers lose no record
    and the file always reflects the newest state on disk."""
    path = grid.results / "grid.json"
    with store_lock(grid.results):
        runs = (read_json(path) or {}).get("runs", []) + ([add_run] if add_run else [])
        atomic_write_json(path, {**grid_record(grid, which, selected), "runs": runs})
