"""A rehearsal's report: one line per cell of the real grid (pass or fail, steps, seconds,
memory) and what its measurements project for the real cell, beside ``--dry-run``'s estimate.

Projections (all stated in the report):

* **a training step at the real batch B** (with ``--procs-per-cell N``, a process's step at
  its batch B / N; the processes' gradient all-reduce is not included): on a GPU the step
  measured at B; on a CPU
  ``seconds = b x batch`` fitted (least squares through the origin) to the median step
  times measured at batch 2 and 4, checked against the step measured at batch 8 (its error
  is reported);
* **peak memory at B**: on a GPU ``max_memory_allocated`` at B; on a CPU a line through the
  peak of every tensor the step holds (parameters, gradients, optimiser state,
  activations, temporaries: ``measure.LiveBytes``) at batch 2 and 4, checked at 8 (without
  the allocator's overhead, which a GPU adds);
* **a cell**: steps (``ceil(n_train / B) x epochs``) x seconds per step, plus the engine's
  per-epoch evaluation (clean + PGD_TRADES-20 on the per-epoch test points of every
  evaluated epoch), plus the final evaluation: every attack's forward and gradient passes
  per point (from its settings) x the measured seconds per pass x the test points, the
  sanity checks and the whole-test-set clean pass. Attack passes assume every point stays
  robust to the end (AutoAttack's cascade and the skip of misclassified points make the
  real cost lower): an upper bound;
* **disk**: the rehearsal's ``last`` and ``best`` checkpoint files of each trained cell are
  the real cell's sizes (the same architectures, method state and optimiser state);
* **memory budgets**: a cell whose projected peak exceeds a budget gets the first setting
  that fits: ``--amp bf16`` (activations assumed halved, the fp32 model state kept), a
  smaller per-process batch (N processes per cell, B / N each), or both.
"""
from __future__ import annotations

import math
from typing import Any

from ..attacks import attack_settings, get_attack
from ..checkpoint import atomic_write_json, atomic_write_text
from ..config import resolve
from ..data import load_dataset
from ..grid import rehearsal, runner, store
from ..grid.cells import Cell, Grid

GB = 1e9
BUDGETS = (24.0, 40.0, 80.0)
TEST_SIZES = {"cifar10": 10000, "cifar100": 10000, "tiny_imagenet": 10000, "digits": 359}
SANITY_PASSES = (6 * 20, 20)     # eps sweep (6 radii x PGD-20) and uniform noise (20 draws)
BF16_ACTIVATIONS = 0.5           # assumed: autocast stores activations in half the bytes
TIGHT = 0.85                     # a fit above this share of a budget is marked tight


def line(points: dict[str, float]) -> tuple[float, float]:
    """``(a, b)`` of ``y = a + b x`` through the measured ``{batch: y}`` (least squares)."""
    xs = [float(k) for k in points]
    ys = list(points.values())
    if len(xs) == 1:
        return 0.0, ys[0] / xs[0]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def through_origin(points: dict[str, float]) -> float:
    """``b`` of ``y = b x`` through the measured ``{batch: y}`` (least squares)."""
    return sum(float(k) * y for k, y in points.items()) / sum(float(k) ** 2 for k in points)


def _at(measured: dict, key: str, batch: int) -> tuple[float, dict | None]:
    """The value of ``key`` at ``batch`` (measured, or on the fitted line) and the check of
    the line against the batch not used to fit it. Seconds (``s``, ``*_s``) go through the origin:
    a small batch's timing on a shared CPU is too noisy to fix an intercept (two points
    gave negative slopes), and a step's fixed cost is small beside a full batch's;
    memory (deterministic) gets its intercept, the model state."""
    rows = measured["batch"]
    if str(batch) in rows and rows[str(batch)][key] is not None:
        return float(rows[str(batch)][key]), None
    points = {k: rows[str(k)][key] for k in measured["fit"]}
    a, b = (0.0, through_origin(points)) if key == "s" or key.endswith("_s") else line(points)
    check = None
    for k in measured["check"]:
        got, want = rows[str(k)][key], a + b * k
        if got:
            check = {"batch": k, "measured": got, "projected": want,
                     "error_pct": 100.0 * (want - got) / got}
    return a + b * batch, check


def step_projection(measured: dict) -> dict[str, Any]:
    """Seconds and peak bytes of one step at the real batch (see the module docstring)."""
    b, rows = measured["real_batch"], measured["batch"]
    seconds, s_check = _at(measured, "s", b)
    peak, m_check = _at(measured, "peak_bytes", b)
    slope = line({k: rows[str(k)]["peak_bytes"] for k in measured["fit"]})[1] \
        if len(measured["fit"]) > 1 else 0.0
    state = rows[str(max(measured["fit"]))]["state_bytes"]
    procs = measured.get("procs", 1)
    how = (f"measured at batch {b} on {measured['device']}" if str(b) in rows else
           f"line through batches {', '.join(map(str, measured['fit']))} on "
           f"{measured['device']}, checked at {', '.join(map(str, measured['check']))}")
    if procs > 1:
        how += f" (a process of {procs}; their gradient all-reduce not included)"
    return {"batch": b, "procs": procs, "s": seconds, "peak_bytes": peak, "state_bytes": state,
            "activation_bytes": max(peak - state, 0.0), "activation_bytes_per_point": slope,
            "how": how, "time_check": s_check, "memory_check": m_check}


def fit_budget(step: dict, budget_gb: float) -> dict[str, Any]:
    """Whether the step fits ``budget_gb`` and, if not, the first setting that does."""
    state, act, per_point = step["state_bytes"], step["activation_bytes"], \
        step["activation_bytes_per_point"]
    if step["peak_bytes"] <= budget_gb * GB:
        return {"fits": True}
    out = {"fits": False}
    if state > budget_gb * GB:
        out["setting"] = (f"none: the model state alone is {state / GB:.1f} GB (needs sharding, "
                          "which ciard-bench does not do)")
        return out
    # fewest GPUs first, and on each count bf16 only when fp32 does not fit; ``n`` times the
    # processes the step was measured with (``procs``: its batch is a process's)
    procs = step.get("procs", 1)
    for n, amp in ((1, True), (2, False), (2, True), (4, False), (4, True), (8, False), (8, True)):
        if step["batch"] % n:
            continue
        less = act - per_point * (step["batch"] - step["batch"] / n)
        need = state + max(less, 0.0) * (BF16_ACTIVATIONS if amp else 1.0)
        if need <= budget_gb * GB:
            parts = (["--amp bf16"] if amp else []) + (
                [f"{n * procs} processes per cell (batch {step['batch'] // n} each)"]
                if n > 1 else [])
            out.update(setting=" + ".join(parts), projected_gb=need / GB)
            return out
    out["setting"] = "none found up to bf16 and 8 processes"
    return out


def attack_passes(name: str, eps: float, n_classes: int, overrides: dict) -> dict[str, float]:
    """Passes per point of an attack that runs to its end: gradient and forward passes on
    the model, gradient passes on the transfer source."""
    s = attack_settings(name, eps, **({"n_classes": n_classes} if name.startswith("aa")
                                      or name == "square_aa" else {}), **overrides)
    if get_attack(name).kind == "transfer":
        return {"gradient": 0.0, "forward": 1.0, "source": float(s["steps"])}
    if s["impl"] == "pyautoattack.AutoAttack":
        grads, fwds, it = 0.0, 1.0, s["n_iter"]
        for sub in s["attacks"]:
            if sub in ("apgd-ce", "apgd-dlr"):
                grads += it * s["apgd_n_restarts"]
            elif sub == "apgd-t":
                grads += it * s["apgd_t_n_target_classes"]
            elif sub == "fab-t":
                grads += it * s["fab_t_n_target_classes"] * s.get("fab_n_restarts", 1)
            elif sub == "fab":
                grads += it * n_classes
            elif sub == "square":
                fwds += s["square_n_queries"]
        return {"gradient": grads, "forward": fwds, "source": 0.0}
    if s["impl"] == "torchattacks.Square":
        return {"gradient": 0.0, "forward": 1.0 + s["n_queries"] * s["n_restarts"], "source": 0.0}
    return {"gradient": float(s.get("steps", 1)), "forward": 1.0, "source": 0.0}


def _per_point(passes: dict | None, eval_batch: int) -> dict[str, float]:
    """Seconds per point of a forward and a gradient pass at the evaluation's batch."""
    if not passes:
        return {"forward": math.nan, "gradient": math.nan}
    return {kind: _at(passes, f"{kind}_s", eval_batch)[0] / eval_batch
            for kind in ("forward", "gradient")}


def _sizes(cfg: Any) -> tuple[int, int]:
    """(training points, test points) of the real dataset."""
    name = cfg.dataset
    if name in TEST_SIZES:
        n_train = runner.TRAIN_SIZES[name]
        return cfg.n_train or n_train, TEST_SIZES[name]
    data = load_dataset(name, root=cfg.data_root)
    return cfg.n_train or len(data.y_train), len(data.y_test)


def cell_projection(real: Grid, grid: Grid, cell: Cell, real_cell: Cell,
                    records: dict[str, dict]) -> dict[str, Any]:
    """Seconds the real cell will take on the rehearsal's device (module docstring)."""
    record, eval_batch = records[cell.id], real.preset.eval_batch_size
    own = _per_point(record.get("passes"), eval_batch)
    out: dict[str, Any] = {"train_s": 0.0, "epoch_eval_s": 0.0}
    if real_cell.trained and "measured" in record:
        cfg = resolve(real_cell.config)
        step = step_projection(record["measured"])
        n_train, n_test_all = _sizes(cfg)
        steps = math.ceil(n_train / cfg.batch_size) * cfg.epochs
        epochs = [e for e in range(1, cfg.epochs + 1) if e == cfg.epochs or (
            e >= cfg.eval_from and e % cfg.eval_every == 0)]
        models = [own] + ([_per_point(records.get(t, {}).get("passes"), eval_batch)
                           for t in cell.needs] if cfg.eval_teachers else [])
        out.update(step=step, steps=steps, train_s=steps * step["s"],
                   epoch_eval_s=len(epochs) * (cfg.n_test or n_test_all) * sum(
                       m["forward"] + 20 * m["gradient"] for m in models))
    out.update(_evaluation(real, grid, cell, real_cell, records, own))
    out["total_s"] = out["train_s"] + out["epoch_eval_s"] + out["eval_s"]
    return out


def _evaluation(real: Grid, grid: Grid, cell: Cell, real_cell: Cell, records: dict[str, dict],
                own: dict[str, float]) -> dict[str, Any]:
    """The final evaluation's projection: every attack, the clean passes, the sanity checks."""
    p = real.preset
    data_cfg = real_cell.config or next(c.config for c in real.cells
                                        if c.dataset == real_cell.dataset and c.config)
    _, n_test_all = _sizes(resolve(data_cfg))
    classes = _classes(grid, cell)
    n = min(p.n_examples or n_test_all, n_test_all)
    eps = real_cell.config.eps if real_cell.config else 8 / 255
    source = _per_point(records.get(cell.source, {}).get("passes"), p.eval_batch_size) \
        if cell.source else {}
    ran = (store.read_json(store.eval_path(grid, cell, p.checkpoint)) or {}).get("attacks", {})
    attacks = {}
    for name in real_cell.attacks:
        k = attack_passes(name, eps, classes, p.attack_overrides.get(name, {}))
        per_point = (k["gradient"] * own["gradient"] + k["forward"] * own["forward"]
                     + (k["source"] * source.get("gradient", math.nan) if k["source"] else 0.0))
        attacks[name] = {"passes": k, "s_per_point": per_point, "s": n * per_point,
                         "rehearsal": {key: ran.get(name, {}).get(key)
                                       for key in ("time_s", "n_attacked")}}
    extra = own["forward"] * n + (own["forward"] * n_test_all if n < n_test_all else 0.0)
    if real_cell.kind != "ablation":
        m = min(p.sanity_examples, n)
        extra += m * (SANITY_PASSES[0] * own["gradient"] + SANITY_PASSES[1] * own["forward"])
    return {"eval_points": n, "attacks": attacks,
            "eval_s": sum(a["s"] for a in attacks.values()) + extra}


def _classes(grid: Grid, cell: Cell) -> int:
    return store.cached_dataset(cell.dataset, grid.settings["data_root"], False).num_classes


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
            "budgets_gb": list(budgets), "method": __doc__.split("Projections (all stated in "
                                                                 "the report):")[1].strip()}


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
