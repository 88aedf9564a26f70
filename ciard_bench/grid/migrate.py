"""``python -m ciard_bench.tables --results-dir DIR --migrate-paths``: rewrite, once, a
results folder written before results folders could move.

Such a folder names each cell's run folder (``out``) by the path it was run from
(``results/cpu/runs/<cell id>``) and the teachers the grid trained by the *absolute* path of
the checkout it was made in (``/home/me/ciard-bench/results/cpu/runs/<cell id>``). Today's
grid writes both relative to the results folder, ``results:runs/<cell id>``
(:func:`ciard_bench.runs.in_results`); a folder in the old form is refused by the grid with
one line that names this command.

What it rewrites, and nothing else:

* in every run folder's ``config.json``, ``run.json`` (``config``) and ``result.json``
  (``config``): ``out`` -> ``results:runs/<the folder's cell id>``; ``clean_teacher`` /
  ``robust_teacher`` -> ``results:runs/<cell id>`` where the old value is an absolute path
  ending in ``/runs/<cell id>`` of a teacher this folder trained (a teacher cell of its
  ``grid.json`` without a spec, or a run folder here with a ``run.json``) -- whichever
  checkout or results folder the path named (the old grid accepted such a moved folder as
  the same: the cpu study's seed-0 students name the smoke study's teachers, the same runs);
  a path the user gave (a teacher file, an ``npz:`` file, ``--data-root``) is kept as given;
* a rehearsal's ``rehearsal.json`` (``stopped.out``) likewise;
* the page (``index.html``): the same values where its drill-downs show them (a folder whose
  run folders are not in this copy, as a committed rehearsal's, cannot be re-rendered).

Checkpoints keep the config they were written with: their sha256 is their identity in
``run.json`` and in every evaluation's key, so rewriting them would make every evaluation
stale. Every file is written atomically; running it again changes nothing. Why an explicit
command rather than a rewrite on read: the records are the study's evidence, and a change to
them should be one reviewable step (it prints every file it changed, and ``git diff`` shows
that only paths moved), not a side effect of a render, which is read-only.
"""
from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write_json, atomic_write_text
from ..errors import UserError
from ..runs import RESULTS, in_results

TEACHER_KEYS = ("clean_teacher", "robust_teacher")
PATH_KEYS = ("out", *TEACHER_KEYS)
_RECORDS = {"config.json": (), "run.json": ("config",), "result.json": ("config",)}
_SETTING = re.compile(r"<tr><td>(out|clean_teacher|robust_teacher)</td><td>([^<]*)</td></tr>")


def _tail(value: Any) -> str | None:
    """``<cell id>`` of a path that ends in ``/runs/<cell id>`` (or starts ``runs/``)."""
    if not isinstance(value, str) or value.startswith((RESULTS, "rb:")) or "=" in value:
        return None
    text = "/" + value.replace("\\", "/").rstrip("/")
    if "/runs/" not in text:
        return None
    tail = text.rsplit("/runs/", 1)[1]
    return tail if tail and ".." not in tail.split("/") else None


def in_grid_path(value: Any) -> str | None:
    """The ``results:runs/<cell id>`` an old record's absolute teacher path stands for (the
    old grid named the teachers it trained by the absolute path of their run folder); None
    for anything else."""
    tail = _tail(value)
    if tail is None or not (value.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", value)):
        return None
    return in_results(f"runs/{tail}")


def _trained_teachers(results: Path) -> set[str]:
    """Ids of the teacher cells this folder trained: from ``grid.json`` and the run folders."""
    ids = set()
    try:
        record = json.loads((results / "grid.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        record = {}
    for cell in record.get("cells", []):
        if cell.get("kind") == "teacher" and not cell.get("spec"):
            ids.add(cell["id"])
    runs = results / "runs"
    for state in runs.glob("**/run.json"):
        ids.add(state.parent.relative_to(runs).as_posix())
    return ids


def _cell_ids(results: Path) -> set[str]:
    try:
        record = json.loads((results / "grid.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return set()
    return {c["id"] for c in record.get("cells", []) if "id" in c}


def _new_value(key: str, value: Any, cell_id: str | None, teachers: set[str]) -> Any:
    """The value ``key`` takes after the migration (``value`` itself when it stays)."""
    if key == "out":
        if cell_id is None or (isinstance(value, str) and value.startswith(RESULTS)):
            return value
        return in_results(f"runs/{cell_id}")
    new = in_grid_path(value)
    return new if new is not None and _tail(value) in teachers else value


def _migrate_config(config: dict, cell_id: str | None, teachers: set[str]) -> dict[str, tuple]:
    """Rewrite ``config``'s paths in place; ``{key: (old, new)}`` of what changed."""
    changed = {}
    for key in PATH_KEYS:
        if key in config:
            new = _new_value(key, config[key], cell_id, teachers)
            if new != config[key]:
                changed[key] = (config[key], new)
                config[key] = new
    return changed


def _migrate_page(text: str, cells: set[str], teachers: set[str]) -> tuple[str, int]:
    """The page with the drill-downs' ``out`` and teacher settings rewritten; how many."""
    count = 0

    def swap(match: re.Match) -> str:
        nonlocal count
        key, shown = match.group(1), html.unescape(match.group(2))
        cell = _tail(shown) if key == "out" else None
        new = _new_value(key, shown, cell if cell in cells else None, teachers)
        if new == shown:
            return match.group(0)
        count += 1
        return f"<tr><td>{key}</td><td>{html.escape(new, quote=True)}</td></tr>"

    return _SETTING.sub(swap, text), count


def migrate_paths(results: str | Path) -> dict[str, Any]:
    """Rewrite the results folder ``results`` (see the module); returns ``{"files":
    {relative path: {key: [old, new]}}, "page": n}`` (empty when there was nothing to do)."""
    results = Path(results)
    if not (results / "grid.json").is_file() and not (results / "runs").is_dir():
        raise UserError(f"{str(results)!r} holds no grid.json and no runs/ folder; accepted: "
                        "a results folder of python -m ciard_bench.tables")
    runs = results / "runs"
    teachers = _trained_teachers(results)
    report: dict[str, Any] = {"files": {}, "page": 0}
    records = (*_RECORDS, "rehearsal.json")
    for path in sorted(p for name in records for p in runs.glob(f"**/{name}")):
        cell_id = path.parent.relative_to(runs).as_posix()
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"{str(path)!r} is not valid JSON ({err}); repair or delete it "
                            "first") from err
        if path.name == "rehearsal.json":
            target = record.get("stopped") if isinstance(record.get("stopped"), dict) else {}
            changed = _migrate_config(target, cell_id, teachers) if "out" in target else {}
        else:
            target = record
            for key in _RECORDS[path.name]:
                target = target.get(key) if isinstance(target, dict) else None
            changed = _migrate_config(target, cell_id, teachers) if isinstance(target, dict) else {}
        if changed:
            atomic_write_json(path, record)
            report["files"][path.relative_to(results).as_posix()] = {
                k: list(v) for k, v in changed.items()}
    page = results / "index.html"
    if page.is_file():
        text, count = _migrate_page(page.read_text(), _cell_ids(results) | _run_ids(runs),
                                    teachers)
        if count:
            atomic_write_text(page, text)
            report["page"] = count
    return report


def _run_ids(runs: Path) -> set[str]:
    return {p.parent.relative_to(runs).as_posix() for name in _RECORDS
            for p in runs.glob(f"**/{name}")}

