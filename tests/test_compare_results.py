"""benchmarks/compare_results.py: the check behind "--threads 1 and --threads 2 mark the
same winners" (issue 15) finds equal marks equal and a moved mark, on real table CSVs."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "results" / "smoke"


def _module():
    spec = importlib.util.spec_from_file_location("compare_results",
                                                  ROOT / "benchmarks" / "compare_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _copy(tmp_path: Path, name: str) -> Path:
    out = tmp_path / name
    out.mkdir()
    for path in SMOKE.glob("table*_seeds.csv"):
        shutil.copy(path, out / path.name)
    return out


def test_same_folder_agrees_and_a_moved_mark_or_value_is_reported(tmp_path, capsys):
    cmp = _module()
    a, b = _copy(tmp_path, "a"), _copy(tmp_path, "b")
    assert cmp.main([str(a), str(b), "--out", str(tmp_path / "same.json")]) == 0
    same = json.loads((tmp_path / "same.json").read_text())["tables"]
    assert {t["table"] for t in same} >= {"table2", "table3", "table7"}
    assert all(t["marks_agree"] and t["values_differing"] == 0 for t in same)
    # mark one entry of table3 best in b, and move one of its values by 1.5 points
    path = b / "table3_seeds.csv"
    frame = pd.read_csv(path, keep_default_na=False)
    first = frame.index[0]
    frame.loc[first, "mark"] = "best"
    frame.loc[first, "mean"] = float(frame.loc[first, "mean"]) + 1.5
    frame.to_csv(path, index=False)
    assert cmp.main([str(a), str(b), "--out", str(tmp_path / "moved.json")]) == 1
    moved = {t["table"]: t for t in json.loads((tmp_path / "moved.json").read_text())["tables"]}
    row = moved["table3"]
    key = f"{frame.loc[first, 'row']} | {frame.loc[first, 'column']}"
    assert not row["marks_agree"] and row["marks_second"].get(key) == "best"
    assert row["values_differing"] == 1 and row["max_abs_difference"] == pytest.approx(1.5)
    assert "DIFFER" in capsys.readouterr().out
    assert all(t["marks_agree"] for name, t in moved.items() if name != "table3")


def test_a_missing_folder_is_a_one_line_error(tmp_path):
    cmp = _module()
    with pytest.raises(SystemExit, match="does not exist"):
        cmp.main([str(tmp_path / "nope"), str(SMOKE)])
