"""Results folders that travel (issue 27, part 1): a grid's records name the teachers it
trained and each cell's run folder relative to the results folder (``results:runs/<cell
id>``), never by the absolute path of the machine that made them; so a results folder moved
or copied elsewhere re-renders the same bytes, resumes a stopped cell exactly, keeps its
page's links and feeds ``submit``; ``--migrate-paths`` rewrites a folder of the old form once.

One tiny grid (two teachers trained by the grid, an MTARD student that distils from both,
2 epochs) serves every test: copied, stopped and moved, rewritten into the old form.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from ciard_bench.config import TrainConfig, changed_settings, localize
from ciard_bench.errors import UserError
from ciard_bench.grid.migrate import migrate_paths
from ciard_bench.grid.rehearsal import compare_runs
from ciard_bench.runs import in_results, local_path
from ciard_bench.tables import main

REPO = Path(__file__).resolve().parent.parent
TINY = ["--preset", "smoke", "--students", "resnet18", "--methods", "mtard", "--epochs", "2",
        "--teacher-epochs", "1", "--n-train", "64", "--n-test", "16", "--n-examples", "16",
        "--sanity-examples", "8", "--threads", "1", "--workers", "1", "--device", "cpu",
        "--no-figures"]
STUDENT = "digits/resnet18/mtard/seed0"
TEACHERS = {"clean_teacher": "digits/teachers/clean/seed0",
            "robust_teacher": "digits/teachers/robust/seed0"}
# the issue's grep, and a wider one: an absolute path of a machine (also unquoted, as a page
# shows it), anywhere in a file
ISSUE_GREP = re.compile(rb'"/(home|work|tmp|scratch|root)/')
ABSOLUTE = re.compile(rb'(?<![\w.~-])/(home|work|tmp|scratch|root|Users|mnt|private)/')
IMAGES = (".png", ".pdf")
STEPS_BEFORE_THE_STUDENTS_SECOND_EPOCH = 2 + 2 + 2    # 2 steps an epoch: 2 teachers, epoch 1


def _main(*argv: str, cwd: Path | None = None) -> tuple[int, str, str]:
    """``python -m ciard_bench.tables`` in this process, from ``cwd`` (another working
    directory than the one the folder was made from)."""
    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        if cwd is not None:
            stack.enter_context(contextlib.chdir(cwd))
        try:
            code = main(list(argv))
        finally:
            torch.set_num_threads(threads)
    return code, out.getvalue(), err.getvalue()


def _tables(results: Path, *extra: str, kill_at: str | None = None, cwd: Path = REPO):
    env = {k: v for k, v in os.environ.items() if k != "CIARD_BENCH_KILL_AT"}
    if kill_at:
        env["CIARD_BENCH_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "ciard_bench.tables", *TINY, *extra,
                           "--results-dir", str(results)], env=env, capture_output=True,
                          text=True, timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """The tiny grid, run to the end."""
    results = tmp_path_factory.mktemp("made-here") / "results"
    code, out, err = _main(*TINY, "--results-dir", str(results))
    assert code == 0, out + err[-2000:]
    return results


def _rendered(root: Path) -> dict[str, bytes]:
    """What a render writes: the tables, the page, the compact LaTeX, grid.json."""
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()
            and (p.name.startswith("table") or p.name in ("index.html", "grid.json"))}


def _records(root: Path) -> dict[str, bytes]:
    """Every file of the folder but its locks and the launcher's claim."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".locks" not in p.parts and p.name != "launcher.json"}


def _absolute_paths(files: dict[str, bytes]) -> list[str]:
    return [f"{name}: {m.group(0)!r}" for name, data in files.items()
            if not name.endswith(IMAGES) for m in ABSOLUTE.finditer(data)]


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".locks", "launcher.json"))
    return dst


# -- (a) the committed results --------------------------------------------------------------------

def _committed_results() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files", "results"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):     # not a git checkout: every file
        return [p for p in (REPO / "results").rglob("*") if p.is_file()]
    return [REPO / name for name in names]


def test_no_committed_results_file_names_an_absolute_path():
    files = _committed_results()
    assert len(files) > 400 and any(p.name == "index.html" for p in files)
    found = {p.relative_to(REPO).as_posix(): p.read_bytes() for p in files
             if not p.name.endswith(IMAGES)}
    assert not [name for name, data in found.items() if ISSUE_GREP.search(data)]
    assert not _absolute_paths(found), "rewrite with python -m ciard_bench.tables " \
        "--results-dir results/<name> --migrate-paths"


# -- (b) a finished grid, copied ------------------------------------------------------------------

class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in ("href", "src") and value is not None:
                self.links.append(value)
            elif key == "id" and value:
                self.ids.add(value)


def test_a_finished_grid_copied_elsewhere_renders_the_same_bytes(finished, tmp_path):
    made = _records(finished)
    assert not _absolute_paths(made), "a grid wrote a path of this machine"
    config = json.loads(made[f"runs/{STUDENT}/config.json"])
    assert config["out"] == f"results:runs/{STUDENT}"
    assert {k: config[k] for k in TEACHERS} == {k: f"results:runs/{v}" for k, v in TEACHERS.items()}
    assert str(finished).encode() not in b"".join(made.values())

    # another path, rendered from another working directory; the original is gone
    copy = _copy(finished, tmp_path / "elsewhere" / "copy")
    hidden = finished.with_name("hidden")
    finished.rename(hidden)
    try:
        code, out, err = _main(*TINY, "--results-dir", str(copy), "--render-only", cwd=tmp_path)
    finally:
        hidden.rename(finished)
    assert code == 0, out + err[-2000:]
    assert "trained 0, evaluated 0" in out
    assert _rendered(copy) == _rendered(finished) and len(_rendered(copy)) >= 15
    assert _records(copy) == made

    # the page's links: every one relative, each anchor a drill-down of the page, each file
    # beside it in the copy
    page = _Links()
    page.feed((copy / "index.html").read_text())
    assert page.links and len([x for x in page.links if x.startswith("#cell-")]) >= 3
    for link in page.links:
        assert not re.match(r"^([a-z][a-z0-9+.-]*:|/)", link, re.I), link
        if link.startswith("#"):
            assert link[1:] in page.ids, link
        else:
            assert (copy / link).is_file(), link


def test_submit_runs_from_a_copied_folder_and_its_card_names_no_path(finished, tmp_path):
    """The whole ``submit`` (AutoAttack at a cut budget, the robustbench round trip) on the
    copied student: the card names the teachers the grid trained by their cells."""
    from ciard_bench.submit import main as submit

    copy = _copy(finished, tmp_path / "copy")
    out = tmp_path / "submission"
    assert submit(["--checkpoint", str(copy / "runs" / STUDENT), "--name", "Doe2025Moved",
                   "--dataset", "cifar10", "--data", "digits", "--n-examples", "8",
                   "--device", "cpu", "--no-expensive-checks", "--no-progress", "--force",
                   "--aa-n-iter", "2", "--aa-square-queries", "10", "--out", str(out)]) == 0
    card = (out / "model_info" / "cifar10" / "Linf" / "Doe2025Moved.json").read_bytes()
    assert not ABSOLUTE.search(card)
    assert json.loads(card)["footnote"].startswith(
        "Compressed model: a resnet18_tiny student adversarially distilled with MTARD from the "
        "robust teacher digits/teachers/robust/seed0 (trained by its ciard-bench grid) and the "
        "clean teacher digits/teachers/clean/seed0 (trained by its ciard-bench grid).")
    record = json.loads((out / "submission.json").read_text())
    assert record["checkpoint"]["config"]["robust_teacher"] == \
        f"results:runs/{TEACHERS['robust_teacher']}"


# -- (c) a stopped cell, moved --------------------------------------------------------------------

def test_a_stopped_cell_moved_elsewhere_resumes_there_exactly(finished, tmp_path):
    here = tmp_path / "here" / "results"
    # SIGKILL inside the student's first step of epoch 2: its epoch-1 checkpoint is saved
    stopped = _tables(here, kill_at=f"step:{STEPS_BEFORE_THE_STUDENTS_SECOND_EPOCH + 1}")
    assert stopped.returncode == -9, stopped.stderr[-2000:]
    run = here / "runs" / STUDENT
    assert (run / "run.json").is_file() and not (run / "result.json").exists()
    assert json.loads((run / "run.json").read_text())["last"]["epoch"] == 1
    epoch_1 = (run / "log.jsonl").read_text()

    there = tmp_path / "there" / "moved"          # the old path does not exist any more
    there.parent.mkdir()
    shutil.move(here, there)
    shutil.rmtree(tmp_path / "here")
    code, out, err = _main(*TINY, "--results-dir", str(there), cwd=tmp_path)
    assert code == 0, out + err[-2000:]
    assert "trained 1," in out                    # the student; the teachers were done
    moved = there / "runs" / STUDENT
    log = (moved / "log.jsonl").read_text()
    # resumed, not restarted: epoch 1's record (its wall time too) is the stopped run's
    assert log.startswith(epoch_1) and [json.loads(r)["epoch"] for r in log.splitlines()] == [1, 2]
    assert compare_runs(finished / "runs" / STUDENT, moved) == {
        "max_abs_difference": 0.0, "exact": True,
        "tensors_compared": compare_runs(finished / "runs" / STUDENT,
                                         finished / "runs" / STUDENT)["tensors_compared"]}
    tables = lambda root: {p.name: p.read_bytes() for p in root.glob("table*")}  # noqa: E731
    assert tables(there) == tables(finished)
    assert not _absolute_paths(_records(there))


# -- (d) the migration of a folder of the old form ------------------------------------------------

def _old_form(root: Path, checkout: str) -> None:
    """Rewrite ``root`` (a new-form folder) as the old grid wrote it from ``checkout``: each
    run's ``out`` by the path it was run from, the teachers by the absolute path of their run
    folder (the clean one in another checkout's results folder, as the cpu study's seed-0
    students name the smoke study's teachers), and the page showing the same."""
    def old(key: str, value: str) -> str:
        rel = value.removeprefix("results:")
        if key == "out":
            return f"results/smoke/{rel}"
        base = "/home/someone/ciard-bench/results/smoke" if key == "clean_teacher" else checkout
        return f"{base}/{rel}"

    for path in (root / "runs").rglob("*.json"):
        if path.name not in ("config.json", "run.json", "result.json"):
            continue
        record = json.loads(path.read_text())
        config = record if path.name == "config.json" else record.get("config")
        if config is None:
            continue
        for key in ("out", *TEACHERS):
            if isinstance(config.get(key), str) and config[key].startswith("results:"):
                config[key] = old(key, config[key])
        path.write_text(json.dumps(record, indent=2) + "\n")
    page = root / "index.html"
    setting = r"<tr><td>(out|clean_teacher|robust_teacher)</td><td>(results:[^<]*)</td>"
    page.write_text(re.sub(setting, lambda m: f"<tr><td>{m[1]}</td><td>{old(m[1], m[2])}</td>",
                           page.read_text()))


def test_the_migration_rewrites_the_old_paths_and_changes_nothing_else(finished, tmp_path):
    folder = _copy(finished, tmp_path / "old" / "results")
    _old_form(folder, str(folder.resolve()))
    config = json.loads((folder / "runs" / STUDENT / "config.json").read_text())
    assert config["robust_teacher"].startswith("/") and ABSOLUTE.search(
        (folder / "index.html").read_bytes())

    # the grid refuses the old form with one line that names the command
    code, out, err = _main(*TINY, "--results-dir", str(folder), "--render-only")
    assert code == 2 and err.count("\n") == 1
    assert "--migrate-paths" in err and "_teacher by the path '/" in err

    code, out, err = _main("--results-dir", str(folder), "--migrate-paths")
    assert code == 0, err
    assert "9 records" in out and f"runs/{STUDENT}/config.json" in out
    assert _records(folder) == _records(finished)       # byte for byte the new form
    code, out, err = _main("--results-dir", str(folder), "--migrate-paths")
    assert code == 0 and "nothing to rewrite" in out     # once is enough
    code, out, err = _main(*TINY, "--results-dir", str(folder), "--render-only")
    assert code == 0, err[-2000:]
    assert _rendered(folder) == _rendered(finished)


def test_the_migration_keeps_the_paths_a_user_gave(tmp_path):
    run = tmp_path / "runs" / "npz-mini" / "resnet18" / "ard" / "seed0"
    run.mkdir(parents=True)
    config = {"dataset": "npz:/data/sets/mini.npz", "data_root": "/data",
              "robust_teacher": "/data/teachers/robust.pt",        # a file of the user's
              "clean_teacher": "/elsewhere/results/cpu/runs/npz-mini/teachers/clean/seed0",
              "teacher_model_dir": "/models", "out": "/scratch/me/results/x/runs/npz-mini/"
              "resnet18/ard/seed0"}
    (run / "config.json").write_text(json.dumps(config))
    report = migrate_paths(tmp_path)
    saved = json.loads((run / "config.json").read_text())
    # a teacher run folder this results folder did not train stays as it was given too
    assert saved == {**config, "out": "results:runs/npz-mini/resnet18/ard/seed0"}
    assert report["files"] == {"runs/npz-mini/resnet18/ard/seed0/config.json": {
        "out": [config["out"], "results:runs/npz-mini/resnet18/ard/seed0"]}}
    with pytest.raises(UserError, match="no grid.json"):
        migrate_paths(tmp_path / "runs" / "npz-mini")


# -- the pieces -----------------------------------------------------------------------------------

def test_results_paths_resolve_against_the_folder_and_user_paths_stay_as_given(tmp_path):
    assert in_results("runs/a/seed0") == "results:runs/a/seed0"
    with pytest.raises(ValueError):
        in_results("/abs/runs")
    assert local_path("results:runs/a", tmp_path) == str(tmp_path / "runs" / "a")
    for given in ("runs/a", "/abs/t.pt", "rb:Zhang2019Theoretically", "resnet8=t.pt", None):
        assert local_path(given, tmp_path) == given
    with pytest.raises(UserError, match="--results-dir"):
        local_path("results:runs/a", None)
    cfg = TrainConfig(dataset="npz:results:data/x.npz", out="results:runs/s",
                      robust_teacher="results:runs/t", clean_teacher="rb:X", data_root="data")
    here = localize(cfg, tmp_path)
    assert (here.dataset, here.out, here.robust_teacher, here.clean_teacher, here.data_root) == (
        f"npz:{tmp_path / 'data/x.npz'}", str(tmp_path / "runs/s"), str(tmp_path / "runs/t"),
        "rb:X", "data")


def test_a_resume_does_not_compare_where_this_machine_keeps_data_and_models():
    saved = TrainConfig(dataset="npz:/mnt/a/mini.npz", data_root="/mnt/data",
                        teacher_model_dir="/mnt/models").to_dict()
    now = TrainConfig(dataset="npz:data/mini.npz", data_root="data").to_dict()
    assert changed_settings(saved, now) == []
    other = TrainConfig(dataset="npz:data/other.npz").to_dict()
    assert changed_settings(saved, other) == [("dataset", "npz:/mnt/a/mini.npz",
                                               "npz:data/other.npz")]


def test_the_training_command_runs_a_grid_cell_config_with_its_results_folder(finished, tmp_path):
    """``python -m ciard_bench.train --config <cell>/config.json --results-dir DIR`` (what a
    torchrun launch of a cell does): the config's teachers are found in DIR; without DIR, one
    line."""
    copy = _copy(finished, tmp_path / "copy")
    config = copy / "runs" / STUDENT / "config.json"
    for name in ("checkpoints", "run.json", "result.json", "log.jsonl"):
        path = copy / "runs" / STUDENT / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    from ciard_bench.train import main as train_main

    def run(*extra: str) -> tuple[int, str]:
        err = io.StringIO()
        threads = torch.get_num_threads()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err), \
                contextlib.chdir(tmp_path):
            try:
                return train_main(["--config", str(config), "--epochs", "1", *extra]), \
                    err.getvalue()
            finally:
                torch.set_num_threads(threads)

    code, err = run()
    assert code == 2 and err.count("\n") == 1 and "--results-dir" in err
    code, err = run("--results-dir", str(copy))
    assert code == 0, err[-2000:]
    result = json.loads((copy / "runs" / STUDENT / "result.json").read_text())
    assert result["config"]["robust_teacher"] == f"results:runs/{TEACHERS['robust_teacher']}"
    assert result["config"]["out"] == f"results:runs/{STUDENT}"


# -- (e) teachers the user gave as files: identified by their content -----------------------------

def _teacher_files(folder: Path, robust_seed: int = 2) -> dict[str, str]:
    from ciard_bench.models import create_model, save_model_file
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for key, seed in (("clean_teacher", 1), ("robust_teacher", robust_seed)):
        torch.manual_seed(seed)
        out[key] = str(folder / f"{key}.pt")
        save_model_file(create_model("resnet8", 10), {"name": "resnet8", "num_classes": 10},
                        out[key])
    return out


def _train(out: Path, teachers: dict[str, str], kill_at: str | None = None, resume=False):
    env = {k: v for k, v in os.environ.items() if k != "CIARD_BENCH_KILL_AT"}
    if kill_at:
        env["CIARD_BENCH_KILL_AT"] = kill_at
    return subprocess.run(
        [sys.executable, "-m", "ciard_bench.train", "--method", "mtard", "--dataset", "digits",
         "--n-train", "32", "--n-test", "16", "--student", "resnet8", "--epochs", "2",
         "--batch-size", "16", "--attack-steps", "1", "--eval-every", "2", "--device", "cpu",
         "--clean-teacher", teachers["clean_teacher"],
         "--robust-teacher", teachers["robust_teacher"], "--out", str(out),
         *(["--resume"] if resume else [])], env=env, capture_output=True, text=True,
        timeout=300, cwd=REPO)


def test_a_run_resumes_with_its_teacher_files_moved_and_refuses_changed_ones(tmp_path):
    """The run records each teacher file's sha256: the same weights under another path (a
    results folder on another machine) resume exactly; other weights under the same path are
    refused in one line."""
    first = _teacher_files(tmp_path / "here")
    straight = _train(tmp_path / "straight", first)
    assert straight.returncode == 0, straight.stderr[-2000:]
    stopped = _train(tmp_path / "run", first, kill_at="step:3")   # inside epoch 2
    assert stopped.returncode == -9, stopped.stderr[-2000:]
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["teachers"]
    assert set(recorded) == {"clean_teacher", "robust_teacher"}

    shutil.move(tmp_path / "here", tmp_path / "there")
    moved = {k: v.replace(f"{os.sep}here{os.sep}", f"{os.sep}there{os.sep}")
             for k, v in first.items()}
    resumed = _train(tmp_path / "run", moved, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert compare_runs(tmp_path / "straight", tmp_path / "run")["exact"]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["robust_teacher"] == moved["robust_teacher"]      # recorded as given

    again = _train(tmp_path / "run2", moved, kill_at="step:3")
    assert again.returncode == -9
    _teacher_files(tmp_path / "there", robust_seed=3)              # other weights, same path
    refused = _train(tmp_path / "run2", moved, resume=True)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith(
        f"error: --resume: the robust_teacher file {moved['robust_teacher']!r} is not the one "
        f"the run in {str(tmp_path / 'run2')!r} began with")


def test_a_grid_of_teacher_files_moved_with_its_folder_evaluates_nothing_again(tmp_path):
    """A grid whose teachers are files the user gave (not trained by it): its evaluation keys
    name each file by its sha256, so the results folder and the files moved elsewhere (another
    path given) find every cell done and render the same tables; other weights under the
    same path make the teacher's evaluation stale. A key written before, with the path as
    given, is still accepted where that path is given (it cannot tell the file's content,
    as before)."""
    files = _teacher_files(tmp_path / "here")
    grid = ["--methods", "sat", "--only", "teacher,student"]
    given = ["--clean-teacher", files["clean_teacher"], "--robust-teacher", files["robust_teacher"]]
    results = tmp_path / "results"
    code, out, err = _main(*TINY, *grid, *given, "--results-dir", str(results))
    assert code == 0, out + err[-2000:]
    ev = json.loads((results / "runs" / "digits" / "teachers" / "robust" / "seed0" /
                     "eval-best.json").read_text())["tables_key"]
    assert ev["spec"] == ev["checkpoint"] and ev["spec"].startswith("sha256:")
    assert files["robust_teacher"] not in json.dumps(ev)

    shutil.move(tmp_path / "here", tmp_path / "there")
    moved = [v.replace(f"{os.sep}here{os.sep}", f"{os.sep}there{os.sep}") for v in given]
    copy = _copy(results, tmp_path / "elsewhere" / "results")
    code, out, err = _main(*TINY, *grid, *moved, "--results-dir", str(copy), cwd=tmp_path)
    assert code == 0, out + err[-2000:]
    assert "trained 0, evaluated 0" in out
    assert {k: v for k, v in _rendered(copy).items() if k != "grid.json"} == \
        {k: v for k, v in _rendered(results).items() if k != "grid.json"}

    # other weights under the path: the robust teacher is evaluated again, the clean one not
    teacher = copy / "runs" / "digits" / "teachers"
    path = teacher / "robust" / "seed0" / "eval-best.json"
    clean = (teacher / "clean" / "seed0" / "eval-best.json").read_bytes()
    _teacher_files(tmp_path / "there", robust_seed=3)
    code, out, err = _main(*TINY, *grid, *moved, "--results-dir", str(copy), cwd=tmp_path)
    assert code == 0, out + err[-2000:]
    key = json.loads(path.read_text())["tables_key"]
    assert key["spec"].startswith("sha256:") and key["spec"] != ev["spec"]
    assert (teacher / "clean" / "seed0" / "eval-best.json").read_bytes() == clean

    # a key written before (the path as given) is still accepted where that path is given
    record = json.loads(path.read_text())
    record["tables_key"].update(spec=moved[3], checkpoint=moved[3])
    path.write_text(json.dumps(record))
    code, out, err = _main(*TINY, *grid, *moved, "--results-dir", str(copy), cwd=tmp_path)
    assert code == 0 and "trained 0, evaluated 0" in out, out + err[-2000:]
