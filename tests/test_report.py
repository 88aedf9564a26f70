"""results/<preset>/index.html (issue 22): written by every ``tables`` render, built from the
results folder's files alone, every entry with its interval, a drill-down per cell, the
reductions once, the paper's numbers where the folder has them, everything escaped, the same
bytes every time, and the committed smoke and cpu pages current. The browser checks (sorting,
drill-down, no request) are in tests/test_browser.py."""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
from markupsafe import escape
from test_tables import REDUCED, fake_done, reduced_preset

from ciard_bench.tables import build_grid, get_preset, main
from ciard_bench.reports.html import build_report, main as report_main, reductions, write_report
from ciard_bench.reports.compact import compact_latex
from ciard_bench.reports.written import read_tables
from ciard_bench.reports.stats import MARK_RULE

RESULTS = Path(__file__).resolve().parent.parent / "results"


@pytest.fixture
def rendered(tmp_path):
    """A reduced smoke grid with SAT and CIARD (ResNet) and the teachers done, rendered."""
    grid = build_grid(reduced_preset(), tmp_path)
    for cell in grid.cells:
        if cell.kind == "teacher":
            fake_done(grid, cell, 90.0, {"fgsm": 10.0, "pgd_sat": 5.0}, n=200)
        elif cell.kind == "student" and cell.student == "resnet18" and cell.row in ("SAT", "CIARD"):
            v = 50.0 if cell.row == "SAT" else 80.0
            fake_done(grid, cell, v + 10, {a: v - 40 + i for i, a in enumerate(cell.attacks)}, n=200)
    (grid.run_dir(grid.cells[0]) / "log.jsonl").write_text(
        "\n".join(json.dumps({"epoch": e, "lr": 0.1, "loss": 1 / e, "clean_acc": 50 + 10 * e,
                              "pgd_trades_acc": 20 + 5 * e}) for e in (1, 2, 3)) + "\n{torn")
    assert main(["--results-dir", str(tmp_path), *REDUCED, "--render-only", "--no-figures"]) == 0
    return tmp_path


def _table(page: str, name: str) -> str:
    return re.search(rf'<table class="sortable results" id="{name}">.*?</table>', page, re.S)[0]


def test_the_render_writes_the_page_with_every_table_entry_and_cell(rendered):
    page = (rendered / "index.html").read_text()
    grid = json.loads((rendered / "grid.json").read_text())
    for name in ("table2", "table3", "table4", "table5", "table6", "table7", "table_aa"):
        assert f'id="{name}"' in page, name
    t3 = _table(page, "table3")
    assert t3.count("<tr data-row=") == 3                          # SAT, MTARD, CIARD
    # CIARD's FGSM Clean: 90 % of 200 points, its Wilson interval shown and drawn
    assert "90.00 [85.1, 93.4]" in t3 and 'aria-label="90.00 in [85.1, 93.4]"' in t3
    mtard = re.search(r'<tr data-row="MTARD">.*?</tr>', t3, re.S)[0]
    assert mtard.count('class=" missing"') == 12 and "<svg" not in mtard   # not run: no drawing
    # one drill-down per cell, and the table rows link to theirs
    assert page.count('<details class="cell"') == len(grid["cells"])
    assert 'href="#cell-digits-resnet18-ciard-seed0"' in t3
    assert 'id="cell-digits-resnet18-ciard-seed0"' in page
    # the reductions once at the top; the captions and the mark rule without them
    reductions = str(escape(reduced_preset().reductions))
    assert page.count(reductions) == 1 and page.count(str(escape(MARK_RULE))) == 1
    # the teacher's log.jsonl as a chart (the torn last line skipped), its attacks' intervals
    clean = page.split('id="cell-digits-teachers-clean-seed0"', 1)[1].split("</details>", 1)[0]
    assert 'aria-label="accuracy on the per-epoch evaluation subset"' in clean
    assert clean.count("<polyline") >= 3 and "fgsm" in clean and "[85.1, 93.4]" in clean


def test_a_cell_without_its_run_folder_shows_what_grid_json_holds(rendered):
    shutil.rmtree(rendered / "runs")
    page = build_report(rendered)
    sat = page.split('id="cell-digits-resnet18-sat-seed0"', 1)[1].split("</details>", 1)[0]
    assert "is not in this copy" in sat and "clean 60.0" in sat and "<h3>Settings" not in sat
    assert "of 10 run folders are not in this copy" in page


def test_the_page_is_the_same_bytes_every_time_and_a_rerun_keeps_it(rendered):
    before = (rendered / "index.html").read_bytes()
    assert write_report(rendered)[-1].read_bytes() == before
    assert main(["--results-dir", str(rendered), *REDUCED, "--render-only", "--no-figures"]) == 0
    assert (rendered / "index.html").read_bytes() == before


def test_every_text_from_the_folder_is_escaped(rendered):
    grid = json.loads((rendered / "grid.json").read_text())
    grid["cells"][0]["row"] = '<script>alert("grid")</script>'
    grid["preset"] = '<img src=x onerror=alert(1)>'
    del grid["totals"], grid["counts"]                 # and a grid.json without its summaries
    (rendered / "grid.json").write_text(json.dumps(grid))
    md = rendered / "table7.md"
    md.write_text(md.read_text().replace("| baseline |", '| <b onclick="x()">base</b> |'))
    page = build_report(rendered)
    assert "<script>alert" not in page and "<img src=x" not in page and "<b onclick" not in page
    assert "&lt;script&gt;alert(&#34;grid&#34;)&lt;/script&gt;" in page
    assert "&lt;b onclick=&#34;x()&#34;&gt;base&lt;/b&gt;" in page
    # the only script is the page's own, pinned by the Content-Security-Policy
    assert page.count("<script>") == 1 and "script-src &#39;sha256-" in page


def test_the_paper_preset_shows_the_papers_numbers_beside_ours(tmp_path):
    argv = ["--preset", "paper", "--results-dir", str(tmp_path), "--dataset", "cifar10",
            "--students", "resnet18", "--methods", "sat,ciard", "--render-only", "--no-figures"]
    from ciard_bench.tables.cli import _parser, apply_overrides
    preset = apply_overrides(get_preset("paper"), _parser().parse_args(argv))[0]
    grid = build_grid(preset, tmp_path, datasets=["cifar10"], students=["resnet18"],
                      methods=["sat", "ciard"])
    for cell in grid.cells:
        fake_done(grid, cell, 85.0, {a: 50.0 for a in cell.attacks}, n=1000)
    assert main(argv) == 0
    page = (tmp_path / "index.html").read_text()
    cmp = _table(page, "table3_vs_paper")
    assert "the paper's printed numbers beside ours" in page
    # CIARD's printed FGSM clean accuracy for the ResNet-18 student on CIFAR-10, beside ours
    assert '<tr data-row="CIARD / cifar10 / FGSM / Clean">' in cmp and ">85.00<" in cmp


def test_a_render_of_the_last_checkpoint_shows_its_own_tables(rendered):
    grid = build_grid(reduced_preset(), rendered)
    for cell in grid.cells:
        if cell.kind == "student" and cell.student == "resnet18" and cell.row == "CIARD":
            fake_done(grid, cell, 70.0, {a: 30.0 for a in cell.attacks}, which="last", n=200)
    assert main(["--results-dir", str(rendered), *REDUCED, "--render-only", "--no-figures",
                 "--checkpoint", "last"]) == 0
    page = (rendered / "index.html").read_text()
    assert 'id="table3_last"' in page and 'id="table3"' not in page
    ciard = re.search(r'<tr data-row="CIARD">.*?</tr>', _table(page, "table3_last"), re.S)[0]
    assert ">70.00 [" in ciard and 'href="#cell-digits-resnet18-ciard-seed0"' in ciard
    assert (rendered / "table3_last_compact.tex").is_file()


def test_reductions_the_captions_do_not_state_stay_in_them(rendered):
    # a grid of a changed preset (a rehearsal's): the named preset's reductions are not the
    # captions', so nothing is cut from them and no other preset's reductions are shown
    grid = json.loads((rendered / "grid.json").read_text())
    grid["preset"] = "cpu"
    (rendered / "grid.json").write_text(json.dumps(grid))
    paths = write_report(rendered)
    page = paths[-1].read_text()
    assert str(escape(get_preset("cpu").reductions)) not in page
    assert "see each table&#39;s caption" in page or "see each table's caption" in page
    assert page.count(str(escape(reduced_preset().reductions))) == 7       # in every caption
    assert "Reductions: see the caption of table3.tex." in (rendered / "table3_compact.tex").read_text()
    # what the tables command passes is what the page states once
    page = (write_report(rendered, reduced_preset().reductions))[-1].read_text()
    assert page.count(str(escape(reduced_preset().reductions))) == 1


def test_the_report_command_and_its_one_line_error(tmp_path, capsys):
    assert report_main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("preset", ["smoke", "cpu"])
def test_the_committed_pages_are_current_and_quick_to_build(preset):
    start = time.perf_counter()
    page = build_report(RESULTS / preset)
    seconds = time.perf_counter() - start
    assert page == (RESULTS / preset / "index.html").read_text(), \
        f"rebuild it: python -m ciard_bench.reports results/{preset}"
    assert seconds < 10          # issue 22: the page adds at most 10 s to a render
    record = json.loads((RESULTS / preset / "grid.json").read_text())
    for table, _ in read_tables(RESULTS / preset):
        assert compact_latex(table, preset, reductions(record)) == \
            (RESULTS / preset / f"{table.name}_compact.tex").read_text(), table.name


def test_a_teacher_row_of_an_npz_dataset_links_its_cells():
    from ciard_bench.reports.html import _row_cells

    cells = [{"id": f"npz-mini/teachers/clean/seed{k}", "kind": "teacher", "row": "T (clean)",
              "dataset": "npz:/data/x/mini.npz", "student": None} for k in (0, 1)]
    assert _row_cells("table2", ["mini", "T (clean)"], cells) == cells   # tables name it "mini"
    assert _row_cells("table2", ["mini", "T (robust)"], cells) == []
