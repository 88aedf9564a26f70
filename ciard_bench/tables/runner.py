"""Running the grid in one process (cells in order, skip finished, resume interrupted) and
estimating what is left (``--dry-run``).

One process for the whole grid: the first step of each new model shape pays oneDNN's
warm-up, and a process per cell would pay it (and the imports) every time.
"""
from __future__ import annotations

import logging
import math
import statistics
import time
from typing import Any, Sequence

from . import store
from .grid import Cell, Grid

log = logging.getLogger("ciard_bench.tables")
# training-set sizes for the estimate when the config takes the whole set
TRAIN_SIZES = {"digits": 1438, "cifar10": 50000, "cifar100": 50000, "tiny_imagenet": 100000}


def run_cells(grid: Grid, cells: Sequence[Cell], which: str) -> dict[str, Any]:
    """Train and evaluate every cell of ``cells`` that is not done; returns a timing summary.

    A cell whose teachers (or transfer source) are neither done nor run before it in this
    process is ``blocked`` and skipped (run ``--only teacher`` first when sharding).
    """
    selected = {c.id for c in cells}
    by_id = grid.by_id()
    summary: dict[str, Any] = {"cells": {}, "trained": 0, "evaluated": 0, "skipped": 0,
                               "blocked": []}
    start = time.perf_counter()
    store.write_grid(grid, which, selected)
    for k, cell in enumerate(cells, 1):
        state = store.status(grid, cell, which)
        tag = f"[{k}/{len(cells)}] {cell.id}"
        if state == store.DONE:
            summary["skipped"] += 1
            log.info("%s: done, skipped", tag)
            continue
        deps = [by_id[d] for d in (*cell.needs, *([cell.source] if cell.source else []))]
        waiting = [d.id for d in deps if store.train_state(grid, d) != store.DONE]
        if waiting:
            summary["blocked"].append(cell.id)
            log.warning("%s: blocked, waiting for %s (not trained yet)", tag, ", ".join(waiting))
            continue
        times = {}
        if cell.trained and store.train_state(grid, cell) != store.DONE:
            log.info("%s: %s", tag, "resuming" if state == store.PARTIAL else "training")
            times["train_s"] = store.train_cell(grid, cell)
            summary["trained"] += 1
        times["eval_s"] = store.evaluate_cell(grid, cell, which)
        summary["evaluated"] += 1
        summary["cells"][cell.id] = times
        store.write_grid(grid, which, selected)
        log.info("%s: %s", tag, ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in times.items()))
    summary["wall_s"] = time.perf_counter() - start
    summary["by_kind"] = _by_kind(grid, cells, summary["cells"])
    return summary


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
    from ..runs import RunDir

    last = RunDir(grid.run_dir(cell)).read_state().get("last") or {}
    epoch, step = last.get("epoch", 0), last.get("step", 0)
    per_epoch = _steps_per_epoch(cell)
    return (epoch - (1 if step else 0)) * per_epoch + step if per_epoch else 0


def _steps_per_epoch(cell: Cell) -> int | None:
    from ..config import resolve
    from ..errors import UserError

    cfg = resolve(cell.config)
    n = cfg.n_train or TRAIN_SIZES.get(cfg.dataset)
    if n is None:  # npz:PATH and the like: read the file (cached for the whole grid)
        try:
            n = len(store._dataset(cfg.dataset, cfg.data_root, False).y_train)
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
            per_epoch = _steps_per_epoch(cell)
            from ..config import resolve
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
