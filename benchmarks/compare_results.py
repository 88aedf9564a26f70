"""Two results folders of one grid, side by side: do they mark the same winners?

Reads every ``table*_seeds.csv`` that both folders hold (one row per table entry and seed,
with the entry's mark: ``best``, ``second`` or empty) and prints, per table, the marked
entries of each folder, whether the marks agree, how many values differ and by how much at
most, and in how many columns the order of the rows' means changed. Use it for the same
command run two ways (``--threads 1`` and ``--threads 2``, two machines, two versions):
the tables' digits may move, a conclusion the marks draw must not.

    python benchmarks/compare_results.py results/smoke /tmp/smoke-threads2 [--out cmp.json]

``--entries`` also lists every entry that differs: its value and 95 % interval in each
folder (the interval the tables print: one seed's Wilson interval, several seeds' joined
one), the difference, and whether each value lies inside the other's interval.

Exit status 0 when every table's marks agree, 1 when one differs, 2 on bad input.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd


def _entries(path: Path) -> pd.DataFrame:
    """One row per (row, column): the mean over seeds, its interval and the mark."""
    frame = pd.read_csv(path, keep_default_na=False)
    needed = {"row", "column", "mean", "low", "high", "mark"}
    if not needed <= set(frame.columns):
        raise SystemExit(f"error: {path} lacks the columns {sorted(needed - set(frame.columns))}; "
                         "accepted: a tableN_seeds.csv written by python -m ciard_bench.tables")
    frame = frame.drop_duplicates(["row", "column"])[["row", "column", "mean", "low", "high",
                                                      "mark"]]
    for col in ("mean", "low", "high"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame.set_index(["row", "column"])


def differing_entries(first: Path, second: Path, name: str) -> list[dict]:
    """Every entry of table ``name`` whose value differs between the folders."""
    a, b = _entries(first / f"{name}_seeds.csv"), _entries(second / f"{name}_seeds.csv")
    out = []
    for key in a.index:
        x, y = a.loc[key], b.loc[key]
        if abs(x["mean"] - y["mean"]) <= 1e-9:
            continue
        out.append({"table": name, "row": key[0], "column": key[1],
                    "first": [x["mean"], x["low"], x["high"]],
                    "second": [y["mean"], y["low"], y["high"]],
                    "difference": y["mean"] - x["mean"],
                    "inside_each_other": bool(y["low"] <= x["mean"] <= y["high"]
                                              and x["low"] <= y["mean"] <= x["high"])})
    return out


def _marked(frame: pd.DataFrame) -> dict[str, str]:
    return {f"{row} | {col}": mark for (row, col), mark in frame["mark"].items() if mark}


def _order_changes(a: pd.DataFrame, b: pd.DataFrame) -> int:
    changed = 0
    for col in a.index.get_level_values("column").unique():
        ra = a.xs(col, level="column")["mean"].dropna().sort_values(ascending=False).index.tolist()
        rb = b.xs(col, level="column")["mean"].dropna().sort_values(ascending=False).index.tolist()
        changed += ra != rb
    return changed


def compare(first: Path, second: Path) -> list[dict]:
    for folder in (first, second):
        if not folder.is_dir():
            raise SystemExit(f"error: results folder {str(folder)!r} does not exist; accepted: a "
                             "folder written by python -m ciard_bench.tables")
    names = sorted({p.name for p in first.glob("table*_seeds.csv")}
                   & {p.name for p in second.glob("table*_seeds.csv")})
    if not names:
        raise SystemExit(f"error: {str(first)!r} and {str(second)!r} share no table*_seeds.csv")
    out = []
    for name in names:
        a, b = _entries(first / name), _entries(second / name)
        if not a.index.equals(b.index):
            raise SystemExit(f"error: {name} has other rows or columns in the two folders; "
                             "accepted: two runs of the same grid")
        diff = (a["mean"] - b["mean"]).abs().dropna()
        out.append({"table": name.removesuffix("_seeds.csv"), "entries": len(a),
                    "marks_first": _marked(a), "marks_second": _marked(b),
                    "marks_agree": _marked(a) == _marked(b),
                    "values_differing": int((diff > 1e-9).sum()),
                    "max_abs_difference": round(float(diff.max()), 4) if len(diff) else 0.0,
                    "columns": len(a.index.get_level_values("column").unique()),
                    "columns_with_other_order": _order_changes(a, b)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("first", type=Path)
    p.add_argument("second", type=Path)
    p.add_argument("--out", type=Path, help="also write the comparison as JSON")
    p.add_argument("--entries", action="store_true", help="also list every differing entry "
                   "with both values and their 95 %% intervals")
    args = p.parse_args(argv)
    rows = compare(args.first, args.second)
    print(f"{'table':10} {'entries':>7} {'differ':>6} {'max |d|':>8} {'reordered':>9}  marks")
    for r in rows:
        marks = ("agree" if r["marks_agree"] else "DIFFER") + (
            f" ({len(r['marks_first'])} marked)" if r["marks_agree"] else
            f": {r['marks_first']} vs {r['marks_second']}")
        print(f"{r['table']:10} {r['entries']:7d} {r['values_differing']:6d} "
              f"{r['max_abs_difference']:8.2f} {r['columns_with_other_order']:4d}/{r['columns']:<4d}  "
              f"{marks}")
    listed = [e for r in rows for e in differing_entries(args.first, args.second, r["table"])] \
        if args.entries else []
    if listed:
        print(f"\n{'table':9} {'row':14} {'column':34} {'first [95 % interval]':>24} "
              f"{'second [95 % interval]':>24} {'d':>6}  inside")
        for e in listed:
            f, s = e["first"], e["second"]
            print(f"{e['table']:9} {e['row']:14} {e['column']:34} "
                  f"{f'{f[0]:.1f} [{f[1]:.1f}, {f[2]:.1f}]':>24} "
                  f"{f'{s[0]:.1f} [{s[1]:.1f}, {s[2]:.1f}]':>24} {e['difference']:+6.1f}  "
                  f"{'yes' if e['inside_each_other'] else 'NO'}")
    if args.out:
        args.out.write_text(json.dumps({"first": str(args.first), "second": str(args.second),
                                        "tables": rows, "entries": listed}, indent=1) + "\n")
    return 0 if all(r["marks_agree"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
