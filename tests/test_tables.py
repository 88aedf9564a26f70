"""python -m ciard_bench.tables: rendering from a fixture results store (missing cells,
bold/underline, captions, CSV round trip, LaTeX), skip/resume of finished and interrupted
cells, sharding, and a reduced smoke grid end to end.

The end-to-end test runs the real command on the ``smoke`` preset with every reduction flag
at its minimum (``--epochs 1 --teacher-epochs 1 --n-train 64 --n-test 16 --n-examples 16
--sanity-examples 8``) and two table rows per student (``--methods sat,ciard``): every
table it renders is full, and a second run trains nothing and rewrites identical tables.
"""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from ciard_bench.config import resolve
from ciard_bench.checkpoint import atomic_write_json
from ciard_bench.tables import build_grid, get_preset, main, parse_shard, shard_cells
from ciard_bench.grid import store
from ciard_bench.reports import render
from ciard_bench.tables.cli import apply_overrides, _parser
from ciard_bench.reports.frames import all_tables
from ciard_bench.errors import UserError
from ciard_bench.evaluate.engine import wilson
from ciard_bench.models import create_model, save_model_file
from ciard_bench.runs import RunDir

REDUCED = ["--epochs", "1", "--teacher-epochs", "1", "--n-train", "64", "--n-test", "16",
           "--n-examples", "16", "--sanity-examples", "8", "--threads", "1", "--workers", "1"]


@pytest.fixture(autouse=True)
def _restore_threads():
    # the command sets torch's threads (--threads 1 here: tiny models, shared 2-core CPU)
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


def reduced_preset(argv=()):
    args = _parser().parse_args([*REDUCED, *argv])
    return apply_overrides(get_preset("smoke"), args)[0]


def _entry(acc: float, n: int) -> dict:
    return {"accuracy": acc, "n": n, "ci95": wilson(round(acc * n / 100), n)}


def fake_done(grid, cell, clean: float, robust: dict[str, float], which="best", n=2000):
    """Make ``cell`` look trained and evaluated with the given accuracies on ``n`` points
    (no training; a large n gives tight intervals, so the marks follow the values)."""
    root = grid.run_dir(cell)
    if cell.trained:
        atomic_write_json(root / "result.json", {"config": resolve(cell.config).to_dict()})
        atomic_write_json(root / "run.json", {"best": {"file": "b.pt", "sha256": f"{cell.id}-b"},
                                              "last": {"file": "l.pt", "sha256": f"{cell.id}-l"}})
    attacks = {a: {**_entry(robust.get(a, 0.0), n), "wr": (clean + robust.get(a, 0.0)) / 2}
               for a in cell.attacks}
    atomic_write_json(store.eval_path(grid, cell, which), {
        "clean": _entry(clean, n), "attacks": attacks,
        "robustness_curve": {"eps": [0.0, 8 / 255], "accuracy": [clean, robust.get("pgd_sat", 0)]},
        "tables_key": store.eval_key(grid, cell, which)})


@pytest.fixture
def fixture_store(tmp_path):
    grid = build_grid(reduced_preset(), tmp_path / "res")
    values = {"SAT": 50.0, "CIARD": 80.0}                  # MTARD not run
    for cell in grid.cells:
        if cell.kind == "teacher":
            fake_done(grid, cell, 90.0, {"fgsm": 10.0, "pgd_sat": 5.0})
        elif cell.kind == "student" and cell.row in values and cell.student == "resnet18":
            v = values[cell.row]
            fake_done(grid, cell, v + 10, {a: v - 40 + i for i, a in enumerate(cell.attacks)})
        elif cell.kind == "ablation" and cell.row == "baseline":
            fake_done(grid, cell, 70.0, {"pgd_trades": 30.0})
    return grid


def test_render_from_fixture_store(fixture_store, tmp_path):
    grid = fixture_store
    tables = {t.name: t for t in all_tables(grid, "best")}
    assert sorted(tables) == ["table2", "table3", "table4", "table5", "table6", "table7",
                              "table_aa"]
    t3 = tables["table3"].frame
    assert t3.loc["CIARD", ("FGSM", "digits", "Clean")] == 90.0
    assert t3.loc["CIARD", ("PGD_SAT", "digits", "Robust")] == 41.0      # 80 - 40 + 1
    assert t3.loc["SAT", ("PGD_SAT", "digits", "W-R")] == (60.0 + 11.0) / 2
    assert math.isnan(t3.loc["MTARD", ("FGSM", "digits", "Clean")])       # not run: missing
    assert tables["table4"].frame.isna().all().all()                      # no MobileNet run
    t7 = tables["table7"].frame
    assert t7.loc["baseline"].tolist() == [30.0, 70.0, 50.0]
    assert t7.loc["+ITT+push", "PGD_TRADES"] == 42.0                      # the CIARD cell
    assert t7.loc["+ITT"].isna().all()
    t2 = tables["table2"].frame
    assert t2.loc[("digits", "ResNet-18-tiny (clean)"), "Clean"] == 90.0
    assert t2.loc[("digits", "ResNet-18-tiny (clean)"), "FGSM"] == 10.0

    table = tables["table3"]
    text = render.caption(grid, table, "best")
    for needle in ("digits", "ResNet-18", "resnet18_tiny", "eps = 16/255", "first 16 test points",
                   "smoke preset", "best-epoch", "20 steps of 4/255", "20 steps of 0.006",
                   "kappa 50", "not run yet"):
        assert needle in text, needle
    out = tmp_path / "out"
    csv, tex, md, seeds_csv = render.write_table(table, text, out)
    back = render.read_table_csv(csv, table)
    pd.testing.assert_frame_equal(back, table.frame, check_names=True)
    latex = tex.read_text()
    assert "\\toprule" in latex and "\\midrule" in latex and "\\bottomrule" in latex
    assert "\\caption{" in latex and "resnet18\\_tiny" in latex
    # FGSM Clean column: one seed, so each value with its Wilson interval over the 2000
    # points and no mark (CIARD's 90 is 30 points above SAT's 60, but one seed's interval
    # has no training noise in it); missing rows "--"
    ciard = next(line for line in latex.splitlines() if line.startswith("CIARD"))
    sat = next(line for line in latex.splitlines() if line.startswith("SAT"))
    mtard = next(line for line in latex.splitlines() if line.startswith("MTARD"))
    lo, hi = wilson(1800, 2000)
    assert ciard.split("&")[1].strip() == f"90.00 [{lo:.1f}, {hi:.1f}]"
    lo, hi = wilson(1200, 2000)
    assert sat.split("&")[1].strip() == f"60.00 [{lo:.1f}, {hi:.1f}]"
    assert mtard.split("&")[1].strip() == "--"
    assert "\\textbf{" not in latex and "\\underline{" not in latex
    markdown = md.read_text()
    assert "| CIARD | 90.00 [88.6, 91.2] |" in markdown
    assert "| SAT | 60.00 [57.8, 62.1] |" in markdown
    assert "| MTARD | -- |" in markdown and "**" not in markdown.split("\n", 1)[1]
    assert "lies above every other row's" in text and "1 training seed per cell" in text
    assert "followed by its 95 % interval [low, high] (Wilson" in text
    assert "nothing is marked with fewer than 2 seeds" in text


def test_three_seeds_that_separate_are_marked_in_markdown_and_latex(tmp_path):
    grid = build_grid(reduced_preset(), tmp_path, students=["resnet18"], methods=["sat", "ciard"],
                      seeds=3)
    for cell in grid.cells:     # the same values in every seed: the Wilson part decides
        v = {"SAT": 50.0, "CIARD": 80.0}.get(cell.row, 60.0)
        fake_done(grid, cell, v + 10, {a: v - 20 for a in cell.attacks}, n=2000)
    table = next(t for t in all_tables(grid, "best") if t.name == "table3")
    markdown = render.to_markdown(table, "c")
    assert "| CIARD | **90.00 ± 0.00** |" in markdown and "| SAT | 60.00 ± 0.00 |" in markdown
    latex = render.to_latex(table, "c")
    ciard = next(line for line in latex.splitlines() if line.startswith("CIARD"))
    assert ciard.split("&")[1].strip() == "\\textbf{90.00 $\\pm$ 0.00}"


def test_a_cell_saved_before_a_setting_existed_is_still_done(fixture_store):
    # a result.json written before TrainConfig had eval_from counts as its default (1): the
    # curve cell (eval_from 1) is done, a smoke cell (eval_from 4) was trained otherwise
    grid = fixture_store
    curves = grid.by_id()["digits/resnet18/ciard/seed0"]
    sat = grid.by_id()["digits/resnet18/sat/seed0"]
    for cell, asked in ((curves, 1), (sat, 4)):
        path = grid.run_dir(cell) / "result.json"
        config = json.loads(path.read_text())["config"]
        assert config["eval_from"] == asked
        atomic_write_json(path, {"config": {k: v for k, v in config.items() if k != "eval_from"}})
    assert store.status(grid, curves, "best") == store.DONE
    with pytest.raises(UserError, match="was trained with eval_from=1, the grid now asks for 4"):
        store.status(grid, sat, "best")


def test_marks_need_intervals_that_separate(fixture_store, tmp_path):
    # the same values on 16 points: Wilson intervals of +-20 pp overlap, nothing is marked
    grid = fixture_store
    for cell in grid.cells:
        if cell.kind == "student" and cell.student == "resnet18" and cell.row in ("SAT", "CIARD"):
            v = {"SAT": 70.0, "CIARD": 80.0}[cell.row]
            fake_done(grid, cell, v + 10, {a: v - 40 + i for i, a in enumerate(cell.attacks)}, n=16)
    table = next(t for t in all_tables(grid, "best") if t.name == "table3")
    markdown = render.to_markdown(table, "caption")
    ciard = next(line for line in markdown.splitlines() if line.startswith("| CIARD"))
    assert "**" not in ciard and "<u>" not in ciard
    assert ciard.startswith("| CIARD | 90.00 [%.1f, %.1f] |" % tuple(wilson(14, 16)))


def test_paper_comparison_uses_printed_numbers(fixture_store):
    grid = fixture_store
    paper = render.paper_results()
    assert set(paper["table"]) >= {2, 3, 4, 5, 6, 7}
    # map the fixture's digits cells onto CIFAR-10 in a copy of the CIARD row of Table 3
    table = next(t for t in all_tables(grid, "best") if t.name == "table3")
    frame = table.frame.rename(columns={"digits": "cifar10"}, level="dataset")
    table.frame, table.datasets = frame, ("cifar10",)
    cmp = render.comparison(table, grid)
    row = cmp[(cmp["row"] == "CIARD") & (cmp["attack"] == "FGSM") & (cmp["metric"] == "Clean")]
    assert row["paper"].item() == 88.87 and row["ours"].item() == 90.0
    assert row["diff"].item() == pytest.approx(90.0 - 88.87)


def test_shards_cover_the_grid_exactly_once(tmp_path):
    grid = build_grid(reduced_preset(), tmp_path)
    ids = [c.id for c in grid.cells]
    assert len(ids) == len(set(ids)) == 10         # 2 teachers, 3 methods x 2 students, 2 ablations
    assert {c.config.dataset for c in grid.cells} == {"digits"}
    paper = build_grid(get_preset("paper"), tmp_path / "paper")
    assert len(paper.cells) == 70 and not paper.by_id()["cifar100/teachers/robust/seed0"].trained
    assert all(c.config.dataset == c.dataset for c in paper.cells if c.trained)
    ciard = paper.by_id()["cifar100/resnet18/ciard/seed0"]
    assert ciard.config.robust_teacher == "rb:Gowal2020Uncovering"
    for n in (1, 2, 3, 5, 10, 30):
        parts = [[c.id for c in shard_cells(grid.cells, (i, n))] for i in range(n)]
        flat = [cid for part in parts for cid in part]
        assert sorted(flat) == sorted(ids) and len(flat) == len(ids)
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(UserError):
            parse_shard(bad)


def test_smoke_cells_are_the_cpu_studys_seed0_cells_but_for_its_two_savings(tmp_path):
    # the smoke evaluates epochs 4-6 only (not the training-curve cell) and runs APGD-T on 3
    # targets; every other setting of every cell is the cpu study's, so with the same best
    # epochs its numbers are the cpu study's seed 0 (results/README.md)
    smoke = build_grid(get_preset("smoke"), tmp_path / "s")
    cpu = build_grid(get_preset("cpu"), tmp_path / "c").by_id()
    assert len(smoke.cells) == 10
    for cell in smoke.cells:
        a, b = resolve(cell.config).to_dict(), resolve(cpu[cell.id].config).to_dict()
        differ = {k for k in a if a[k] != b[k]} - {"out", "clean_teacher", "robust_teacher"}
        curves = cell.config.eval_teachers
        assert differ == (set() if curves else {"eval_from"}), cell.id
        assert a["eval_from"] == (1 if curves else 4) and b["eval_from"] == 1
        assert cell.attacks == cpu[cell.id].attacks
    assert [c.id for c in smoke.cells if c.config.eval_teachers] == ["digits/resnet18/ciard/seed0"]
    s, c = get_preset("smoke").attack_overrides, get_preset("cpu").attack_overrides
    assert {k: v for k, v in s.items() if k != "aa"} == {k: v for k, v in c.items() if k != "aa"}
    assert s["aa"] == {**c["aa"], "n_target_classes": 3}


def test_bad_shard_and_unknown_preset_are_one_line_errors(tmp_path, capsys):
    assert main(["--shard", "4/2", "--results-dir", str(tmp_path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --shard '4/2'") and "\n" not in err
    assert main(["--preset", "huge", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown preset 'huge'" in err and "smoke" in err and "\n" not in err


def test_dry_run_lists_the_grid_and_an_estimate(tmp_path, capsys):
    assert main(["--results-dir", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "digits/teachers/robust" in out and "digits/resnet18/ciard-no_push" in out
    assert "compute left: about" in out and "assumed" in out
    assert not (tmp_path / "runs").exists()


def _run_tiny(tmp_path, extra=()):
    return main(["--results-dir", str(tmp_path), *REDUCED, "--students", "resnet18",
                 "--methods", "sat", "--no-figures", *extra])


def test_skip_finished_and_resume_interrupted(tmp_path, monkeypatch):
    from ciard_bench.runs import RunDir

    class Killed(Exception):
        pass

    # interrupt the robust teacher after its first checkpoint (a 2-epoch run)
    real_save = RunDir.save

    def save_then_die(self, *a, **kw):
        real_save(self, *a, **kw)
        if "robust" in str(self.root):
            raise Killed()

    monkeypatch.setattr(RunDir, "save", save_then_die)
    with pytest.raises(Killed):
        _run_tiny(tmp_path, ["--teacher-epochs", "2"])
    grid = build_grid(reduced_preset(["--teacher-epochs", "2", "--students", "resnet18",
                                      "--methods", "sat"]), tmp_path,
                      students=["resnet18"], methods=["sat"])
    cells = grid.by_id()
    assert store.status(grid, cells["digits/teachers/clean/seed0"], "best") == store.DONE
    assert store.status(grid, cells["digits/teachers/robust/seed0"], "best") == store.PARTIAL
    monkeypatch.setattr(RunDir, "save", real_save)

    calls = []
    real_train = store.train     # the engine's train, as the store calls it
    monkeypatch.setattr(store, "train", lambda cfg, resume=False, progress=True, results=None:
                        calls.append((cfg.out, resume))
                        or real_train(cfg, resume=resume, progress=progress, results=results))
    assert _run_tiny(tmp_path, ["--teacher-epochs", "2"]) == 0
    assert [(out.split("runs/")[1], resume) for out, resume in calls] == [
        ("digits/teachers/robust/seed0", True), ("digits/resnet18/sat/seed0", False)]
    log = (grid.run_dir(cells["digits/teachers/robust/seed0"]) / "log.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in log] == [1, 2]
    assert all(store.status(grid, c, "best") == store.DONE for c in grid.cells)

    calls.clear()
    tables = {p.name: p.read_bytes() for p in tmp_path.glob("table*")}
    assert _run_tiny(tmp_path, ["--teacher-epochs", "2"]) == 0
    assert calls == []                                         # nothing trained again
    assert {p.name: p.read_bytes() for p in tmp_path.glob("table*")} == tables
    # a finished cell trained with other settings is an error, not silently mixed in
    assert _run_tiny(tmp_path, ["--teacher-epochs", "3"]) == 2


def test_reduced_smoke_grid_end_to_end(tmp_path):
    argv = ["--results-dir", str(tmp_path), *REDUCED, "--methods", "sat,ciard"]
    assert main(argv) == 0
    grid_json = json.loads((tmp_path / "grid.json").read_text())
    assert grid_json["counts"] == {"done": len(grid_json["cells"])} and len(grid_json["cells"]) == 8
    grid = build_grid(reduced_preset(), tmp_path, methods=["sat", "ciard"])
    tables = all_tables(grid, "best")
    assert [t.name for t in tables] == ["table2", "table3", "table4", "table5", "table6",
                                        "table7", "table_aa"]
    for table in tables:
        assert table.frame.notna().all().all(), table.name               # every cell filled
        back = render.read_table_csv(tmp_path / f"{table.name}.csv", table)
        pd.testing.assert_frame_equal(back, table.frame)
        assert "Every value is from a finished run." in (tmp_path / f"{table.name}.md").read_text()
        assert (tmp_path / f"{table.name}.tex").read_text().startswith("\\begin{table}")
    ev = json.loads((tmp_path / "runs/digits/resnet18/ciard/seed0/eval-best.json").read_text())
    assert set(ev["attacks"]) == {"fgsm", "pgd_sat", "pgd_trades", "cw_inf", "square", "aa",
                                  "transfer_pgd_trades", "transfer_cw_inf"}
    assert ev["n_examples"] == 16 and ev["attacks"]["pgd_sat"]["settings"]["steps"] == 20
    for fig in ("fig3_training_digits", "fig_robustness_resnet18_digits",
                "fig_robustness_mobilenet_v2_digits"):
        assert (tmp_path / f"{fig}.png").is_file() and (tmp_path / f"{fig}.pdf").is_file()
    assert "<h2 id=\"h-table_aa\">" in (tmp_path / "index.html").read_text()   # the report
    before = {p.name: p.read_bytes() for p in [*tmp_path.glob("table*"), tmp_path / "grid.json",
                                               tmp_path / "index.html"]}
    assert main(argv) == 0                                   # nothing to do: re-render only
    after = {p.name: p.read_bytes() for p in [*tmp_path.glob("table*"), tmp_path / "grid.json",
                                              tmp_path / "index.html"]}
    assert after == before


def test_shard_without_teachers_blocks_students_and_renders_missing(tmp_path):
    # MTARD distils from both teachers: not trained. SAT trains without a teacher, but its
    # evaluation needs the robust teacher (transfer attacks): trained, evaluation blocked.
    assert main(["--results-dir", str(tmp_path), *REDUCED, "--students", "resnet18",
                 "--methods", "sat,mtard", "--no-figures", "--only", "student",
                 "--shard", "0/1"]) == 0
    grid_json = json.loads((tmp_path / "grid.json").read_text())
    assert grid_json["runs"][-1]["blocked"] == ["digits/resnet18/sat/seed0",
                                                "digits/resnet18/mtard/seed0"]
    assert grid_json["counts"] == {"missing": 3, "trained": 1}
    assert [p.name for p in (tmp_path / "runs/digits/resnet18").iterdir()] == ["sat"]
    assert "-- = not run yet" in (tmp_path / "table3.md").read_text()


def test_seeds_are_a_grid_axis(tmp_path):
    grid = build_grid(reduced_preset(), tmp_path, methods=["sat", "ciard"], seeds=2)
    assert grid.seeds == (0, 1)
    cells = grid.by_id()
    student = cells["digits/resnet18/ciard/seed1"]
    assert student.seed == 1 and student.config.seed == 1
    assert student.needs == ("digits/teachers/clean/seed1", "digits/teachers/robust/seed1")
    assert student.config.robust_teacher.endswith("digits/teachers/robust/seed1")
    assert cells["digits/teachers/robust/seed1"].config.seed == 1
    assert len(grid.cells) == 2 * (2 + 2 * 2 + 2)
    # a given (not trained) teacher is one cell shared by every seed
    shared = build_grid(reduced_preset(), tmp_path / "b", methods=["sat"], seeds=3,
                        teacher_specs={"robust": "resnet8=/x.pt"})
    robust = [c for c in shared.cells if c.role == "robust"]
    assert [c.id for c in robust] == ["digits/teachers/robust/seed0"]
    assert {c.source for c in shared.cells if c.kind == "student"} == {robust[0].id}
    with pytest.raises(UserError, match="--seeds 0"):
        build_grid(reduced_preset(), tmp_path, seeds=0)


def test_tables_show_mean_and_std_over_seeds_and_keep_every_seed(tmp_path):
    grid = build_grid(reduced_preset(), tmp_path, students=["resnet18"], methods=["sat", "ciard"],
                      seeds=2)
    for cell in grid.cells:
        base = {"SAT": 50.0, "CIARD": 70.0}.get(cell.row, 60.0) + 4.0 * cell.seed   # +0, +4
        fake_done(grid, cell, base + 10, {a: base - 20 for a in cell.attacks}, n=1000)
    table = next(t for t in all_tables(grid, "best") if t.name == "table3")
    assert table.frame.loc["CIARD", ("PGD_SAT", "digits", "Robust")] == 52.0     # (50 + 54)/2
    md = render.to_markdown(table, "c")
    assert "| CIARD | 82.00 ± 2.83 |" in md                   # clean 80, 84: std 2 sqrt(2)
    rows = [line for line in md.splitlines() if line.startswith(("| SAT", "| CIARD"))]
    assert "**" not in "".join(rows)   # 20 pp apart, but 2 seeds: t(0.975, 1) = 12.7 x 2/sqrt(2)
    paths = render.write_table(table, render.caption(grid, table, "best"), tmp_path / "out")
    seeds = pd.read_csv(paths[-1])
    rows = seeds[(seeds["row"] == "CIARD") & (seeds["column"] == "PGD_SAT / digits / Robust")]
    assert rows["seed"].tolist() == [0, 1] and rows["value"].tolist() == [50.0, 54.0]
    assert rows["n"].tolist() == [1000, 1000] and (rows["wilson_low"] < rows["value"]).all()
    assert rows["std"].iloc[0] == pytest.approx(2 * math.sqrt(2))
    assert "2 training seeds per cell; mean +- std over seeds" in paths[2].read_text()
    # a seed that has not finished hides the entry instead of a one-seed mean
    (grid.run_dir(grid.by_id()["digits/resnet18/sat/seed1"]) / "eval-best.json").unlink()
    table = next(t for t in all_tables(grid, "best") if t.name == "table3")
    assert table.frame.loc["SAT"].isna().all() and table.frame.loc["CIARD"].notna().all()


def test_rerun_gives_identical_tables_with_any_number_of_workers(tmp_path):
    """Same command, same machine: identical tables, whether cells run in one process or
    side by side in two workers (every cell is seeded and run alone in its process)."""
    argv = [*REDUCED[:-2], "--students", "resnet18", "--methods", "sat,mtard", "--no-figures"]
    assert main(["--results-dir", str(tmp_path / "a"), *argv, "--workers", "1"]) == 0
    assert main(["--results-dir", str(tmp_path / "b"), *argv, "--workers", "2"]) == 0
    for name in ("table2", "table3", "table5", "table_aa"):
        for ext in (".csv", ".md"):
            a = (tmp_path / "a" / f"{name}{ext}").read_text()
            assert a == (tmp_path / "b" / f"{name}{ext}").read_text(), name + ext
    assert "--" not in (tmp_path / "a" / "table3.csv").read_text()


def test_a_moved_results_folder_still_matches_its_grid(tmp_path):
    import shutil

    grid = build_grid(reduced_preset(), tmp_path / "here", methods=["mtard"], students=["resnet18"])
    for cell in grid.cells:
        fake_done(grid, cell, 90.0, {})
    shutil.copytree(tmp_path / "here", tmp_path / "there")
    moved = build_grid(reduced_preset(), tmp_path / "there", methods=["mtard"],
                       students=["resnet18"])
    student = moved.by_id()["digits/resnet18/mtard/seed0"]
    # the teachers the grid trains are named inside the results folder, wherever it is
    assert json.loads((moved.run_dir(student) / "result.json").read_text())["config"][
        "robust_teacher"] == "results:runs/digits/teachers/robust/seed0"
    assert store.train_state(moved, student) == store.DONE
    # a different teacher is still a different config
    other = build_grid(reduced_preset(), tmp_path / "there", methods=["mtard"],
                       students=["resnet18"], teacher_specs={"robust": "resnet8=/x.pt"})
    with pytest.raises(UserError, match="robust_teacher"):
        store.train_state(other, other.by_id()["digits/resnet18/mtard/seed0"])


def test_a_failed_cell_is_named_and_the_others_go_on(tmp_path, capsys):
    # the robust teacher is a file that does not exist: its evaluation fails; MTARD, which
    # distils from it, is blocked untrained; SAT trains (it needs no teacher) but its
    # evaluation (transfer attacks from that teacher) is blocked; the clean teacher is done
    code = main(["--results-dir", str(tmp_path), *REDUCED, "--students", "resnet18",
                 "--methods", "sat,mtard", "--no-figures", "--robust-teacher",
                 f"resnet8={tmp_path / 'missing.pt'}"])
    assert code == 1
    out = capsys.readouterr().out
    grid_json = json.loads((tmp_path / "grid.json").read_text())
    run = grid_json["runs"][-1]
    assert list(run["failed"]) == ["digits/teachers/robust/seed0"]
    assert "missing.pt" in run["failed"]["digits/teachers/robust/seed0"]
    assert run["blocked"] == ["digits/resnet18/sat/seed0", "digits/resnet18/mtard/seed0"]
    assert "failed: digits/teachers/robust/seed0" in out and "cell-error.log" in out
    assert "Traceback" in (tmp_path / "runs/digits/teachers/robust/seed0/cell-error.log").read_text()
    cells = {c["id"]: c["status"] for c in grid_json["cells"]}
    assert cells == {"digits/teachers/clean/seed0": "done", "digits/teachers/robust/seed0": "trained",
                     "digits/resnet18/sat/seed0": "trained", "digits/resnet18/mtard/seed0": "missing"}


# slow (-m slow): two processes equal one with the same global batch (test_distributed.py), a
# grid cell on two processes (test_plugin_tutorial.py on SLURM, test_rehearsal.py locally)
@pytest.mark.slow
def test_two_processes_per_cell_give_the_one_process_tables(tmp_path):
    """``--procs-per-cell 2`` on CPU: the cut grid's training cell runs as 2 gloo processes
    through torchrun (with ``--sync-bn``; given teachers, so one cell trains) and the grid
    runs to the end; its tables equal those of 1 process. Why they may: every rank draws the
    global batch's attack starts from one stream and BatchNorm uses global-batch statistics,
    so the runs differ in float reduction order only. PGD's sign() turns such differences in
    near-zero input gradients into whole steps on a few pixels, so after the epoch's steps
    at rate 0.09 the student weights differ by up to 4.4e-3 (measured, the same in repeated
    runs; conv1, whose weights are ~0.1): far below what a wrong average would give (twice the step), and below what
    moves any table value here."""
    teachers = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        teachers.append(str(tmp_path / f"t{seed}.pt"))
        save_model_file(create_model("resnet8", 10), {"name": "resnet8", "num_classes": 10}, teachers[-1])
    argv = [*REDUCED, "--students", "resnet18", "--methods", "sat", "--no-figures",
            "--clean-teacher", teachers[0], "--robust-teacher", teachers[1]]
    assert main(["--results-dir", str(tmp_path / "one"), *argv]) == 0
    assert main(["--results-dir", str(tmp_path / "two"), *argv, "--procs-per-cell", "2"]) == 0
    run = "runs/digits/resnet18/sat/seed0"
    result = json.loads((tmp_path / "two" / run / "result.json").read_text())
    assert result["processes"] == 2 and result["config"]["sync_bn"] is True
    log = (tmp_path / "two" / run / "torchrun.log").read_text()
    assert "process 0 of 2" in log and "process 1 of 2" in log
    one, two = (RunDir(tmp_path / w / run).load("last")["state_dict"] for w in ("one", "two"))
    differences = {k: float((one[k].double() - two[k].double()).abs().max()) for k in one}
    print("largest weight difference, 1 vs 2 processes:", max(differences.values()))
    assert max(differences.values()) < 1e-2
    for name in ("table2", "table3", "table5", "table_aa"):
        for ext in (".csv", ".md"):
            assert (tmp_path / "one" / f"{name}{ext}").read_text() == \
                (tmp_path / "two" / f"{name}{ext}").read_text(), name + ext
