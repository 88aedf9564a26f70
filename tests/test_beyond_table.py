"""``table_beyond`` (issue 26): the paper's Tables 3-6 keep exactly its rows, and the methods
beyond its ten (IAD, the Fair variants, PeerAiD, a plugin's) go into their own table, after
CIARD as the reference, with the values of the same cells' evaluations."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

TINY = ["--preset", "smoke", "--students", "resnet18", "--epochs", "1", "--teacher-epochs", "1",
        "--n-train", "64", "--n-test", "16", "--n-examples", "24", "--sanity-examples", "8",
        "--threads", "1", "--workers", "1", "--device", "cpu", "--no-figures",
        "--only", "teacher,student"]
ATTACKS = {"Clean": "clean", "PGD_TRADES": "pgd_trades", "AA": "aa",
           "Transfer_PGD_TRADES": "transfer_pgd_trades"}


def _rows(path: Path) -> list[str]:
    return [ln.split("|")[1].strip() for ln in path.read_text().splitlines()
            if ln.startswith("|")][2:]            # after the header and the rule


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    """SAT and CIARD (the paper's) and IAD-I (beyond it) on the ResNet-18 stand-in."""
    from ciard_bench.tables import main
    results = tmp_path_factory.mktemp("grid") / "results"
    threads = torch.get_num_threads()
    try:
        assert main([*TINY, "--methods", "sat,ciard,iad_i", "--results-dir", str(results)]) == 0
    finally:
        torch.set_num_threads(threads)
    return results


def test_the_papers_tables_keep_its_rows_and_the_others_go_beyond(grid_run):
    results = grid_run
    for name in ("table3", "table5", "table_aa"):
        assert _rows(results / f"{name}.md") == ["SAT", "CIARD"], name
    assert _rows(results / "table_beyond.md") == ["CIARD", "IAD-I"]
    frame = pd.read_csv(results / "table_beyond.csv", header=[0, 1, 2], index_col=0)
    assert list(frame.columns) == [("ResNet-18", "digits", c) for c in ATTACKS]
    for method, row in (("ciard", "CIARD"), ("iad_i", "IAD-I")):
        ev = json.loads((results / "runs" / "digits" / "resnet18" / method / "seed0" /
                         "eval-best.json").read_text())
        for column, attack in ATTACKS.items():
            entry = ev["clean"] if attack == "clean" else ev["attacks"][attack]
            assert frame.loc[row, ("ResNet-18", "digits", column)] == entry["accuracy"], \
                (row, column)
    seeds = pd.read_csv(results / "table_beyond_seeds.csv")
    assert len(seeds) == 2 * len(ATTACKS) and set(seeds["seed"]) == {0}
    caption = (results / "table_beyond.md").read_text().splitlines()[0]
    assert "after CIARD, the paper's method, as the reference" in caption
    assert "Student ResNet-18 (here resnet18_tiny(width=8))" in caption
    assert "one seed" in caption and "W-R" not in caption
    compact = (results / "table_beyond_compact.tex").read_text()
    assert "IAD-I &" in compact and "\\emph{ResNet-18}" in compact
    page = (results / "index.html").read_text()
    assert 'href="#table_beyond"' in page and 'id="table_beyond"' in page


def test_a_grid_of_the_papers_methods_only_writes_no_beyond_table(grid_run, tmp_path):
    from ciard_bench.tables import main
    copy = tmp_path / "results"
    shutil.copytree(grid_run / "runs", copy / "runs")
    assert main([*TINY, "--methods", "sat,ciard", "--render-only", "--results-dir",
                 str(copy)]) == 0
    assert _rows(copy / "table3.md") == ["SAT", "CIARD"]
    assert not list(copy.glob("table_beyond*"))
    assert "table_beyond" not in (copy / "index.html").read_text()


def test_the_cpu_quick_and_paper_grids_train_the_methods_beyond_the_paper(tmp_path):
    """The presets' grids hold the paper's ten rows and then IAD (both), the Fair variants and
    PeerAiD on every student; the smoke keeps its three; each beyond method is registered and
    none is among the paper's rows, so Tables 3-6 cannot gain one."""
    from ciard_bench.grid.cells import build_grid
    from ciard_bench.grid.presets import BEYOND_METHODS, TABLE_METHODS, get_preset
    from ciard_bench.methods import list_methods
    assert BEYOND_METHODS == ("iad_i", "iad_ii", "fair_rslad", "fair_mtard", "fair_iad",
                              "peeraid")
    assert set(BEYOND_METHODS) <= set(list_methods()) and not set(BEYOND_METHODS) & set(TABLE_METHODS)
    for name in ("cpu", "quick", "paper"):
        preset = get_preset(name)
        assert preset.methods == TABLE_METHODS + BEYOND_METHODS, name
        grid = build_grid(preset, tmp_path / name)
        students = [c for c in grid.cells if c.kind == "student"]
        per_seed = len(preset.datasets) * len(preset.students)
        for method in BEYOND_METHODS:
            assert sum(c.method == method for c in students) == per_seed * preset.seeds, name
    assert get_preset("smoke").methods == ("sat", "mtard", "ciard")
