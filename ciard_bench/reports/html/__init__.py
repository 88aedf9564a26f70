"""``results/<preset>/index.html`` and ``tableN_compact.tex`` (:mod:`.compact`).

``index.html`` is one page with every table (sortable, each entry's 95 %
interval drawn as a dot and whisker on its column's axis), the figures, the preset's
reductions stated once, the paper's printed numbers where the folder holds them, and a
drill-down per cell of the grid.

It is built from the files of the results folder alone (``grid.json``, the tables'
Markdown and seeds CSV, the figures, and each run folder that is present), so
``python -m ciard_bench.tables`` writes it after every render, and
``python -m ciard_bench.reports RESULTS_DIR`` rebuilds it from a folder whose run
folders are absent (a cell without its folder shows what ``grid.json`` holds). The page is
deterministic: the same folder gives the same bytes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...checkpoint import atomic_write_text
from ...errors import ArgumentParser, UserError, cli_main
from ...web import render_page, whisker
from ...grid.cells import dataset_label
from ...grid.presets import get_preset
from ..stats import MARK_RULE
from .cells import anchor, cell_detail
from ..compact import compact_latex
from ..written import ReportTable, read_tables

PAGE = "index.html"
_STUDENT_OF = {"table3": "resnet18", "table5": "resnet18", "table4": "mobilenet_v2",
               "table6": "mobilenet_v2"}
_BOTH_STUDENTS = ("table_aa", "table_beyond")      # a row's cells: one per student and seed
_SHORT = {"resnet18": "R18 ", "mobilenet_v2": "MNv2 "}    # their link texts name the student


def reductions(record: dict) -> str | None:
    """The preset's reductions as its captions state them (with the run's overrides)."""
    try:
        preset = get_preset(record.get("preset", ""))
    except UserError:
        return None          # a preset registered in another process: captions stay whole
    changed = (record.get("settings") or {}).get("overrides") or {}
    if changed:
        return preset.reductions + "; overrides: " + ", ".join(f"{k}={v}"
                                                               for k, v in changed.items())
    return preset.reductions


def _checked(text: str | None, tables: list) -> str | None:
    """``text`` if the tables' captions state it (so it can be said once and cut from them),
    else None: a grid of a changed preset (a rehearsal's) keeps its captions whole."""
    if text and tables and not any(f" {text}." in t.caption for t, _ in tables):
        return None
    return text


def table_suffix(record: dict) -> str:
    """The render's file suffix for the grid's checkpoint: none for the preset's own."""
    which = record.get("checkpoint", "best")
    try:
        default = get_preset(record.get("preset", "")).checkpoint
    except UserError:
        default = which
    return "" if which == default else f"_{which}"


def _short_caption(caption: str, reduced: str | None) -> str:
    """The caption without what the page states once: the reductions and the mark rule."""
    if reduced:
        caption = caption.replace(f" {reduced}.", "")
    return caption.replace(f"Marks per column: {MARK_RULE}. ", "")


def _row_cells(table: str, labels: list[str], cells: list[dict]) -> list[dict]:
    """The grid cells (one per seed) behind a table row."""
    if table == "table2":
        return [c for c in cells if c["kind"] == "teacher"
                and [dataset_label(c["dataset"]), c["row"]] == labels]
    label = labels[-1]
    if table == "table7":
        ablation = [c for c in cells if c["kind"] == "ablation"]
        if any(c["row"] == label for c in ablation):
            return [c for c in ablation if c["row"] == label]
        dataset = ablation[0]["dataset"] if ablation else None
        return [c for c in cells if c["kind"] == "student" and c["student"] == "resnet18"
                and c["row"] == "CIARD" and c["dataset"] == dataset]
    return [c for c in cells if c["kind"] == "student" and c["row"] == label
            and _STUDENT_OF.get(table, c["student"]) == c["student"]]


def _table_view(table: ReportTable, reduced: str | None, cells: list[dict]) -> dict[str, Any]:
    rows = []
    for flat, labels, values in table.rows:
        links = [{"href": "#" + anchor(c["id"]), "title": c["id"],
                  "text": (_SHORT.get(c["student"], "") if table.base in _BOTH_STUDENTS else "")
                  + f"s{c['id'].rsplit('seed', 1)[-1]}"}
                 for c in _row_cells(table.base, labels, cells)]
        entries = [{"value": v, "svg": whisker(v.low, v.mean, v.high, *table.ranges[i],
                                               seeds=v.seeds if len(v.seeds) > 1 else ())}
                   for i, v in enumerate(values)]
        rows.append({"flat": flat, "labels": labels, "links": links, "entries": entries})
    return {"name": table.name, "caption": _short_caption(table.caption, reduced),
            "index_names": table.index_names, "levels": table.levels, "rows": rows,
            "n_columns": len(table.columns)}


def _figures(results: Path) -> list[dict[str, str]]:
    return [{"png": p.name, "pdf": p.with_suffix(".pdf").name
             if p.with_suffix(".pdf").is_file() else ""}
            for p in sorted(results.glob("fig*.png"))]


def _record(results: Path) -> dict:
    try:
        return json.loads((results / "grid.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError) as err:
        raise UserError(f"{str(results)!r} holds no readable grid.json ({err}); run "
                        "python -m ciard_bench.tables first") from err


def build_report(results: Path, reduced: str | None = None) -> str:
    """The page's HTML for the results folder ``results``; ``reduced``: the preset's
    reductions as the captions state them (default: the named preset's, where they match)."""
    results = Path(results)
    record = _record(results)
    cells = record.get("cells", [])
    found = read_tables(results, table_suffix(record))
    reduced = reduced if reduced is not None else _checked(reductions(record), found)
    which = record.get("checkpoint", "best")
    tables = [(_table_view(t, reduced, cells),
               _table_view(cmp, reduced, cells) if cmp else None) for t, cmp in found]
    details = [cell_detail(results, c, which) for c in cells]
    return render_page("report.html.j2", preset=record.get("preset", "?"),
                       counts=record.get("counts") or {}, checkpoint=which,
                       totals=(record.get("totals") or {}).get("all"),
                       reductions=reduced, mark_rule=MARK_RULE, tables=tables,
                       figures=_figures(results), cells=details,
                       absent=sum(not d["present"] for d in details))


def write_report(results: Path, reduced: str | None = None) -> list[Path]:
    """Write ``<results>/index.html`` and every ``tableN_compact.tex`` (atomically); returns
    their paths. ``reduced``: the grid's reductions (the tables command passes its preset's;
    default: the named preset's, where the captions state them)."""
    results = Path(results)
    record = _record(results)
    found = read_tables(results, table_suffix(record))
    reduced = reduced if reduced is not None else _checked(reductions(record), found)
    paths = []
    for table, _ in found:
        paths.append(results / f"{table.name}_compact.tex")
        atomic_write_text(paths[-1], compact_latex(table, record.get("preset", "?"), reduced))
    paths.append(results / PAGE)
    atomic_write_text(paths[-1], build_report(results, reduced))
    return paths


def _run(argv: list[str] | None) -> int:
    p = ArgumentParser(prog="python -m ciard_bench.reports",
                       description="Rebuild results/<preset>/index.html and tableN_compact.tex from "
                       "the folder's files (python -m ciard_bench.tables writes them after "
                       "every render).")
    p.add_argument("results", nargs="+", help="results folder(s), e.g. results/smoke")
    args = p.parse_args(argv)
    for folder in args.results:
        paths = write_report(Path(folder))
        print(f"wrote {paths[-1]} and {len(paths) - 1} compact LaTeX tables")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m ciard_bench.reports``; bad input is one line and exit code 2."""
    return cli_main(_run, argv)
