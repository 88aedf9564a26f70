"""The report's drill-down: what one cell of the grid holds, read from its run folder
(settings, training curves, every attack's accuracy and interval, sanity checks, timings,
provenance) or, where the folder is absent from this copy, from ``grid.json``."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from ... import plugins
from ...web import line_chart, whisker

# the per-epoch log's accuracy keys (training engine, ciard_bench/train.py) and their labels
_CURVES = {"clean_acc": "student clean", "pgd_trades_acc": "student PGD_TRADES",
           "clean_teacher_clean_acc": "clean teacher, clean",
           "robust_teacher_clean_acc": "robust teacher, clean",
           "robust_teacher_pgd_trades_acc": "robust teacher, PGD_TRADES"}


def anchor(cell_id: str) -> str:
    """The HTML id of a cell's drill-down: ``cell-digits-resnet18-sat-seed0``."""
    return "cell-" + re.sub(r"[^A-Za-z0-9_-]+", "-", cell_id).strip("-")


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue            # a torn last line of a killed run: the rest still plots
        if isinstance(record, dict) and "epoch" in record:
            out.append(record)
    return out


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _curves(log: list[dict]) -> list[Any]:
    def series(keys: dict[str, str]) -> dict[str, list[tuple[float, float]]]:
        return {label: [(r["epoch"], r[k]) for r in log if isinstance(r.get(k), (int, float))]
                for k, label in keys.items() if any(k in r for r in log)}
    losses = sorted({k for r in log for k in r if k == "loss" or k.startswith("loss_")
                     or k == "robust_teacher_loss"})
    charts = [line_chart(series(_CURVES), title="accuracy on the per-epoch evaluation subset",
                         xlabel="epoch", ylabel="%"),
              line_chart(series({k: k for k in losses}), title="training losses",
                         xlabel="epoch", ylabel="loss"),
              line_chart(series({"lr": "student lr"}), title="learning rate",
                         xlabel="epoch", ylabel="lr")]
    return [c for c in charts if c]


def _attacks(ev: dict) -> list[dict]:
    rows = []
    entries = [("clean", {**ev["clean"], "kind": "clean"})] if "clean" in ev else []
    entries += list(ev.get("attacks", {}).items())
    if "clean_whole_test_set" in ev:
        entries.append(("clean, whole test set", {**ev["clean_whole_test_set"], "kind": "clean"}))
    for name, a in entries:
        low, high = (a.get("ci95") or [math.nan, math.nan])[:2]
        acc = float(a.get("accuracy", math.nan))
        rows.append({"name": name, "kind": a.get("kind", ""), "accuracy": acc, "low": low,
                     "high": high, "n": a.get("n", ""), "wr": a.get("wr"),
                     "time_s": a.get("time_s"), "svg": whisker(low, acc, high, 0, 100, width=120)})
    return rows


def _provenance(ev: dict, result: dict) -> dict[str, str]:
    prov = ev.get("provenance") or result.get("provenance") or {}
    out = {k: _text(prov[k]) for k in ("git_revision", "device", "python", "platform", "seed",
                                       "cpu_count") if k in prov}
    out.update({f"version {k}": str(v) for k, v in (prov.get("versions") or {}).items()})
    for p in result.get("plugins") or []:      # the plugins the cell's run used
        out[f"plugin: {p['kind']} {p['name']}"] = plugins.label(p) + (
            f" ({p['entry_point']})" if p.get("entry_point") else "")
    return out


def cell_detail(results: Path, cell: dict, which: str) -> dict[str, Any]:
    """Everything the drill-down of one ``grid.json`` cell shows."""
    root = results / cell.get("run", f"runs/{cell['id']}")
    detail: dict[str, Any] = {"id": cell["id"], "anchor": anchor(cell["id"]), "cell": cell,
                              "present": root.is_dir(), "grid": {k: _text(v) for k, v in
                                                                 cell.items()}}
    res = cell.get("results") or {}
    detail["headline"] = ", ".join(f"{k} {res[k]:.1f}" for k in ("clean", "pgd_trades", "aa")
                                   if isinstance(res.get(k), (int, float)))
    detail["sanity_ok"] = res.get("sanity_passed")
    if not detail["present"]:
        return detail
    ev = _read(root / f"eval-{'best' if cell.get('kind') == 'teacher' else which}.json") or {}
    result = _read(root / "result.json") or {}
    config = _read(root / "config.json") or result.get("config") or {}
    timing = _read(root / "cell.json") or {}
    checks = (ev.get("sanity") or {}).get("checks", [])
    detail.update({
        "settings": {k: _text(v) for k, v in config.items()},
        "charts": _curves(_log(root / "log.jsonl")),
        "attacks": _attacks(ev) if ev else [],
        "checks": [{"name": c.get("name", ""), "passed": c.get("passed"),
                    "message": c.get("message", "")} for c in checks],
        "timings": {k: _text(v) for k, v in (("training (s)", timing.get("train_s")),
                                              ("evaluation (s)", timing.get("eval_s")),
                                              ("steps", timing.get("steps")),
                                              ("evaluation suite (s)", ev.get("time_s")),
                                              ("sanity checks (s)",
                                               (ev.get("sanity") or {}).get("cost", {})
                                               .get("time_s"))) if v is not None},
        "epochs": {k: _text(result[k]) for k in ("best", "last", "selection") if k in result},
        "provenance": _provenance(ev, result),
        "notes": [str(n) for n in ev.get("notes", [])],
    })
    return detail
