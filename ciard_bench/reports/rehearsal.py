"""A rehearsal's report (``rehearsal.md``, ``rehearsal.json``): one line per cell of the
real grid (pass or fail, steps, seconds, memory, checkpoint bytes) and what its
measurements project for the real cell (:mod:`.projection`), beside ``--dry-run``'s
estimate.
"""
from __future__ import annotations

import math
from typing import Any

from ..checkpoint import atomic_write_json, atomic_write_text
from ..grid import rehearsal, runner, store
from ..grid.cells import Cell, Grid
from . import projection
from .projection import GB, cell_projection, fit_budget

BUDGETS = (24.0, 40.0, 80.0)
TIGHT = 0.85                     # a fit above this share of a budget is marked tight


def _state(grid: Grid, cell: Cell, which: str, summary: dict) -> dict[str, Any]:
    """pass | fail | blocked | not run, with the error in one line and its traceback file."""
    log = grid.run_dir(cell) / "cell-error.log"
    if cell.id in summary.get("failed", {}):
        return {"status": "fail", "error": summary["failed"][cell.id], "traceback": str(log)}
    if cell.id in summary.get("blocked", []):
        bad = set(summary.get("failed", {})) | set(summary["blocked"])
        deps = [d for d in dict.fromkeys((*cell.needs, cell.source)) if d in bad]
        return {"status": "fail", "error": f"blocked: it needs {', '.join(deps) or 'a cell'}, "
                                           "which failed"}
    if store.status(grid, cell, which) == store.DONE:
        return {"status": "pass"}
    if log.is_file():
        last = [x for x in log.read_text().splitlines() if x.strip()]
        return {"status": "fail", "error": last[-1] if last else "failed", "traceback": str(log)}
    return {"status": "not run"}


def build_report(real: Grid, grid: Grid, plan: dict, summary: dict, which: str,
                 wall_s: float, budgets: tuple[float, ...]) -> dict[str, Any]:
    """The machine-readable report (``rehearsal.json``)."""
    records = {c.id: rehearsal.read_record(grid.run_dir(c)) for c in grid.cells}
    real_by_id = real.by_id()
    rows = []
    for cell in grid.cells:
        real_cell, record = real_by_id[plan["cells"][cell.id]], records[cell.id]
        row: dict[str, Any] = {"id": real_cell.id, "rehearsal_id": cell.id, "kind": cell.kind,
                               **_state(grid, cell, which, summary)}
        timing = store.cell_timing(grid, cell)
        row.update({k: timing[k] for k in ("train_s", "eval_s", "steps") if k in timing})
        row["resume"] = record.get("resumed")
        row["checkpoint_bytes"] = record.get("checkpoints")
        row["stopped_at"] = {k: record["stopped"].get(k) for k in ("epoch", "step")} \
            if "stopped" in record else None
        try:
            proj = cell_projection(real, grid, cell, real_cell, records)
        except (KeyError, TypeError, ZeroDivisionError, ValueError) as err:
            proj = {"error": f"no projection: {type(err).__name__}: {err}"}
        if "step" in proj:
            proj["budgets"] = {f"{b:g}": fit_budget(proj["step"], b) for b in budgets}
        estimate = runner.estimate(real, [real_cell], which)["cells"][0]
        proj["dry_run_s"] = estimate["train_s"] + estimate["eval_s"]
        row["projection"] = proj
        rows.append(row)
    total = sum(r["projection"].get("total_s", 0.0) for r in rows)
    device = next((r["projection"]["step"]["how"].split(" on ")[-1].split(",")[0] for r in rows
                   if "step" in r["projection"]), "unknown")
    return {"format": "ciard-bench/rehearsal/1", "note": rehearsal.NOTE,
            "preset": real.preset.name, "cells": rows, "wall_s": round(wall_s, 1),
            "device": device, "stand_ins": {"datasets": plan["datasets"],
                                            "teachers": plan["teachers"]},
            "counts": {s: sum(r["status"] == s for r in rows)
                       for s in ("pass", "fail", "not run")},
            "projected_total_h": total / 3600,
            "checkpoint_bytes": _disk(rows),
            "dry_run_total_h": sum(r["projection"]["dry_run_s"] for r in rows) / 3600,
            "budgets_gb": list(budgets), "method": projection.__doc__.split(
                "Projections (all stated in the report):")[1].strip()}


def _disk(rows: list[dict]) -> dict[str, Any]:
    """What the real grid's checkpoints take on disk: every trained cell's ``last`` and
    ``best`` (the rehearsal's files: the same models and state), and the largest cell's
    while it saves (the new ``last`` is written before the old one is removed)."""
    sizes = {r["id"]: r["checkpoint_bytes"] for r in rows if r.get("checkpoint_bytes")}
    if not sizes:
        return {"cells": 0}
    kept = {cid: sum(s.values()) for cid, s in sizes.items()}
    largest = max(sizes, key=lambda cid: kept[cid] + sizes[cid].get("last", 0))
    return {"cells": len(sizes), "total": sum(kept.values()), "largest_cell": largest,
            "largest_saving": kept[largest] + sizes[largest].get("last", 0)}


def _h(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    return f"{seconds / 3600:.3g} h" if seconds >= 360 else f"{seconds:.3g} s"


def _gb(n: float | None) -> str:
    return "n/a" if n is None else f"{n / GB:.2f} GB"


def markdown(report: dict[str, Any]) -> str:
    """The human-readable report (``rehearsal.md``)."""
    out = [f"# Rehearsal of the `{report['preset']}` grid ({report['note']})", "",
           f"{report['counts']['pass']} of {len(report['cells'])} cells passed, "
           f"{report['counts']['fail']} failed, {report['counts']['not run']} not run; "
           f"wall time {report['wall_s'] / 60:.1f} min on {report['device']}.", "",
           "Stand-ins: " + "; ".join(report["stand_ins"]["datasets"].values()) + ". Teachers: "
           + ("; ".join(report["stand_ins"]["teachers"].values()) or "trained here") + ".", "",
           f"Projected for the real grid on {report['device']}: "
           f"**{report['projected_total_h']:.4g} h** (sum over cells; `--dry-run` assumes "
           f"{report['dry_run_total_h']:.4g} h).", ""]
    costly = sorted(report["cells"], key=lambda r: -r["projection"].get("total_s", 0.0))[:5]
    out += ["Costliest cells: " + ", ".join(f"`{r['id']}` {_h(r['projection'].get('total_s'))}"
                                             for r in costly) + ".", ""]
    disk = report.get("checkpoint_bytes", {})
    if disk.get("cells"):
        out += [f"Disk: the real grid's checkpoints take **{_gb(disk['total'])}** (`last` and "
                f"`best` of {disk['cells']} trained cells: the rehearsal's own files, the same "
                f"models and state); a save writes the new `last` before removing the old, so "
                f"the largest cell, `{disk['largest_cell']}`, needs "
                f"{_gb(disk['largest_saving'])} while it saves.", ""]
    for b in report["budgets_gb"]:
        over = [(r["id"], r["projection"]["budgets"][f"{b:g}"]) for r in report["cells"]
                if not r["projection"].get("budgets", {}).get(f"{b:g}", {"fits": True})["fits"]]
        tight = [f"`{r['id']}` ({100 * r['projection']['step']['peak_bytes'] / (b * GB):.0f} %)"
                 for r in report["cells"] if r["projection"].get("budgets", {}).get(
                     f"{b:g}", {}).get("fits") and r["projection"]["step"]["peak_bytes"]
                 > TIGHT * b * GB]
        out.append(f"- {b:g} GB: " + ("every trained cell fits" if not over else
                   f"{len(over)} cells do not fit: " + "; ".join(
                       f"`{cid}` ({f['setting']})" for cid, f in over))
                   + (f"; tight (above {100 * TIGHT:.0f} % of it, before the allocator's "
                      f"overhead): {', '.join(tight)}" if tight else "") + ".")
    out.append("")
    heads = " | ".join(f"{b:g} GB" for b in report["budgets_gb"])
    out += [f"| cell | status | steps | rehearsal s (train/eval) | s/step at B | peak at B | "
            f"projected (train + epoch evals + eval) | dry-run | checkpoints | {heads} |",
            "|" + "---|" * (9 + len(report["budgets_gb"]))]
    notes = []
    for r in report["cells"]:
        p = r["projection"]
        step = p.get("step")
        fits = []
        for b in report["budgets_gb"]:
            f = p.get("budgets", {}).get(f"{b:g}")
            fits.append("—" if f is None else _fits(f, step, b))
        status = r["status"] + (f": {r['error']}" if r.get("error") else "")
        out.append(
            f"| `{r['id']}` | {status} | {r.get('steps', 0)} | {r.get('train_s', 0):.0f} / "
            f"{r.get('eval_s', 0):.0f} | "
            + (f"{step['s']:.3g} s (B={step['batch']}{_per_process(step)})" if step else "—")
            + " | "
            + (_gb(step["peak_bytes"]) if step else "—") + " | "
            + f"{_h(p.get('total_s'))} ({_h(p.get('train_s'))} + {_h(p.get('epoch_eval_s'))} + "
            f"{_h(p.get('eval_s'))}) | {_h(p.get('dry_run_s'))} | "
            + (_gb(sum(r["checkpoint_bytes"].values())) if r.get("checkpoint_bytes") else "—")
            + " | " + " | ".join(fits) + " |")
        if r.get("traceback"):
            notes.append(f"- `{r['id']}`: traceback in `{r['traceback']}`")
        if p.get("error"):
            notes.append(f"- `{r['id']}`: {p['error']}")
    checks = [(r["id"], c) for r in report["cells"] for c in (
        r["projection"].get("step", {}).get("time_check"),) if c]
    if checks:
        errors = [abs(c["error_pct"]) for _, c in checks]
        out += ["", f"Time projection checked at batch {checks[0][1]['batch']} (not used to fit): "
                f"median error {sorted(errors)[len(errors) // 2]:.1f} %, largest "
                f"{max(errors):.1f} % over {len(errors)} cells."]
    mem = [(r["id"], r["projection"]["step"]["memory_check"]) for r in report["cells"]
           if r["projection"].get("step", {}).get("memory_check")]
    if mem:
        errors = [abs(c["error_pct"]) for _, c in mem]
        out += [f"Memory projection (activations) checked likewise: median error "
                f"{sorted(errors)[len(errors) // 2]:.1f} %, largest {max(errors):.1f} %."]
    out += ["", *notes, "", "## How the projections are made", "", report["method"], ""]
    return "\n".join(out)


def _per_process(step: dict) -> str:
    procs = step.get("procs", 1)
    return f" a process, {procs} processes" if procs > 1 else ""


def _fits(f: dict, step: dict, budget_gb: float) -> str:
    if not f["fits"]:
        return f"**no**: {f['setting']}"
    share = step["peak_bytes"] / (budget_gb * GB)
    # the projection leaves out the allocator's overhead and cuDNN's workspace
    return f"fits, tight ({100 * share:.0f} %)" if share > TIGHT else "fits"


def write_report(real: Grid, grid: Grid, plan: dict, summary: dict, which: str,
                 wall_s: float, budgets: tuple[float, ...]) -> dict[str, Any]:
    """Write ``rehearsal.json`` and ``rehearsal.md`` into the rehearsal's folder."""
    report = build_report(real, grid, plan, summary, which, wall_s, budgets)
    atomic_write_json(grid.results / "rehearsal.json", report)
    atomic_write_text(grid.results / "rehearsal.md", markdown(report))
    return report
