"""The report's tables, read back from the files the render wrote: ``<name>.md`` (the layout,
the shown values and the caption) and ``<name>_seeds.csv`` (every entry's mean, std, 95 %
interval, mark and per-seed values). Reading the files (not the runs) lets a folder whose
run folders are absent (the smoke's ``runs/`` are git-ignored) get the same page."""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

TABLES = ("table2", "table3", "table4", "table5", "table6", "table7", "table_aa", "table_beyond")


@dataclass
class Value:
    """One entry: the text the Markdown table shows and, where the seeds CSV has it, its
    numbers."""

    shown: str
    mean: float = math.nan
    std: float = math.nan
    low: float = math.nan
    high: float = math.nan
    seeds: list[float] = field(default_factory=list)
    mark: str = ""

    @property
    def sort_key(self) -> str:
        if math.isfinite(self.mean):
            return repr(self.mean)
        try:
            return repr(float(self.shown.split()[0]))
        except (ValueError, IndexError):
            return ""


@dataclass
class ReportTable:
    name: str                          # file stem: table3, table3_last, table3_vs_paper
    caption: str
    index_names: list[str]
    columns: list[str]                 # flattened labels, levels joined by " / "
    rows: list[tuple[str, list[str], list[Value]]]   # (flat label, index values, entries)
    ranges: list[tuple[float, float]]  # per column: the axis of its whiskers
    base: str = ""                     # the table it is: table3 (for table3_last too)

    @property
    def levels(self) -> list[list[tuple[str, int]]]:
        """The column header rows: (label, colspan) per level, equal neighbours merged."""
        parts = [c.split(" / ") for c in self.columns]
        depth = max((len(p) for p in parts), default=1)
        parts = [[""] * (depth - len(p)) + p for p in parts]
        out = []
        for level in range(depth):
            row: list[tuple[str, int]] = []
            for i, p in enumerate(parts):
                if row and i and parts[i - 1][:level + 1] == p[:level + 1]:
                    row[-1] = (row[-1][0], row[-1][1] + 1)
                else:
                    row.append((p[level], 1))
            out.append(row)
        return out


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _parse_md(path: Path) -> tuple[str, list[str], list[str], list[list[str]]]:
    lines = path.read_text().splitlines()
    # the caption line names the table (table3 also in table3_last.md)
    head = re.match(r"\*\*[A-Za-z0-9_]+\.\*\* ", lines[0]) if lines else None
    if head is None:
        raise UserError(f"{str(path)!r} is not a table this package wrote (no caption line)")
    table = [ln for ln in lines[1:] if ln.startswith("|")]
    if len(table) < 2:
        raise UserError(f"{str(path)!r} holds no table")
    n_index = sum(1 for c in _cells(table[1]) if not c.endswith(":"))
    header = _cells(table[0])
    return (lines[0][head.end():], header[:n_index], header[n_index:],
            [_cells(ln) for ln in table[2:]])


def _read_seeds(path: Path) -> dict[tuple[str, str], Value]:
    out: dict[tuple[str, str], Value] = {}
    if not path.is_file():
        return out
    with path.open(newline="") as fh:
        for rec in csv.DictReader(fh):
            key = (rec["row"], rec["column"])
            if key not in out:
                out[key] = Value("", float(rec["mean"]), float(rec["std"]), float(rec["low"]),
                                 float(rec["high"]), mark=rec["mark"])
            out[key].seeds.append(float(rec["value"]))
    return out


def _range(values: list[Value]) -> tuple[float, float]:
    lows = [v.low for v in values if math.isfinite(v.low)]
    highs = [v.high for v in values if math.isfinite(v.high)]
    if not lows:
        return (0.0, 100.0)
    lo, hi = min(lows + [v for x in values for v in x.seeds]), max(highs)
    pad = max(1.0, (hi - lo) * 0.05)
    return (max(0.0, math.floor(lo - pad)), min(100.0, math.ceil(hi + pad)))


def read_table(results: Path, name: str) -> ReportTable | None:
    """The table ``name`` as ``results`` holds it, or None when it was not written."""
    md = results / f"{name}.md"
    if not md.is_file():
        return None
    caption, index_names, columns, body = _parse_md(md)
    stats = _read_seeds(results / f"{name}_seeds.csv")
    rows = []
    for cells in body:
        labels, shown = cells[:len(index_names)], cells[len(index_names):]
        flat = " / ".join(labels)
        values = []
        for column, text in zip(columns, shown):
            plain = text.replace("**", "").replace("<u>", "").replace("</u>", "")
            found = stats.get((flat, column))
            values.append(Value(plain, found.mean, found.std, found.low, found.high,
                                found.seeds, found.mark) if found else Value(plain))
        rows.append((flat, labels, values))
    ranges = [_range([r[2][i] for r in rows]) for i in range(len(columns))]
    return ReportTable(name, caption, index_names, columns, rows, ranges)


def read_tables(results: Path, suffix: str = "") -> list[tuple[ReportTable, ReportTable | None]]:
    """Every table the folder holds (``<name><suffix>``: the render's suffix for a checkpoint
    other than the preset's, ``_last``), each with its comparison to the paper's printed
    numbers (``<name>_vs_paper<suffix>``, written for the ``paper`` preset) when there is one."""
    out = []
    for name in TABLES:
        table = read_table(results, name + suffix)
        if table is not None:
            compared = read_table(results, f"{name}_vs_paper{suffix}")
            for t in (table, compared):
                if t is not None:
                    t.base = name
            out.append((table, compared))
    return out
