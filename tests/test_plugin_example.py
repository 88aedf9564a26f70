"""``examples/ard-plugin``, installed as the README says (``pip install -e
examples/ard-plugin``), through everything a built-in goes through: found by its entry points
(the listing names its distribution), trained with its own method, student and dataset, killed
mid-epoch and resumed bit for bit, a cut grid ``--methods <plugin>,ciard,rslad`` whose tables,
page and compact LaTeX have its rows, the rehearsal of that grid, ``evaluate`` and ``submit``
with the leaderboard. The plugin's own exactness tests are in examples/ard-plugin/tests.
SLURM and ``--procs-per-cell 2`` with a plugin: tests/test_plugin_tutorial.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata

import pytest
import torch

from ciard_bench.grid.rehearsal import compare_runs
from ciard_bench.methods import get_method
from ciard_bench.models import create_model, save_model_file

DIST = "ard-plugin"


def _entry_points() -> dict[str, str]:
    """kind -> the name the plugin registers (its entry point's name)."""
    try:
        dist = metadata.distribution(DIST)
    except metadata.PackageNotFoundError:
        pytest.fail("the example plugin is not installed: pip install -e examples/ard-plugin "
                    "(the README's set-up and .ci/run do)")
    names = {ep.group.rsplit(".", 1)[1]: ep.name for ep in dist.entry_points}
    assert {"methods", "models", "datasets"} <= set(names), names
    return names


@pytest.fixture(scope="module")
def plug():
    names = _entry_points()
    version = metadata.version(DIST)
    return {"method": names["methods"], "model": names["models"], "dataset": names["datasets"],
            "where": f"plugin {DIST} {version}", "version": version}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Two resnet8 teacher files (random weights: the tests check the path, not the numbers)."""
    root = tmp_path_factory.mktemp("teachers")
    out = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        out.append(str(root / f"t{seed}.pt"))
        save_model_file(create_model("resnet8", 10), {"name": "resnet8", "num_classes": 10}, out[-1])
    return {"clean_teacher": out[0], "robust_teacher": out[1]}


def _cli(module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=900, env=env)


def _train_args(plug: dict, teachers: dict, out) -> list[str]:
    roles = get_method(plug["method"]).teachers
    return ["--method", plug["method"], "--student", plug["model"], "--dataset", plug["dataset"],
            *[a for r in roles for a in (f"--{r.replace('_', '-')}", teachers[r])],
            "--epochs", "2", "--n-train", "64", "--batch-size", "16", "--n-test", "16",
            "--eval-batch-size", "16", "--threads", "1", "--out", str(out)]


def test_the_listings_name_the_plugin_and_its_distribution(plug):
    out = _cli("ciard_bench.train", "--list-methods").stdout
    line = next(l for l in out.splitlines() if l.split()[0] == plug["method"])
    assert line.endswith(f"({plug['where']})"), line
    assert "(built-in)" in next(l for l in out.splitlines() if l.split()[0] == "ciard")
    datasets = _cli("ciard_bench.train", "--list-datasets").stdout
    assert f"{plug['dataset']}" in datasets and plug["where"] in datasets
    models = _cli("ciard_bench.models", "--no-flops").stdout
    assert any(l.split()[0] == plug["model"] and l.endswith(plug["where"])
               for l in models.splitlines()[1:]), models


@pytest.fixture(scope="module")
def trained(plug, teachers, tmp_path_factory):
    """The plugin's method, student and dataset trained straight, and killed inside a step of
    epoch 2 (SIGKILL) then resumed."""
    root = tmp_path_factory.mktemp("plugin-train")
    straight = _cli("ciard_bench.train", *_train_args(plug, teachers, root / "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    env = {**os.environ, "CIARD_BENCH_KILL_AT": "step:6"}     # 4 steps an epoch: epoch 2, step 2
    killed = _cli("ciard_bench.train", *_train_args(plug, teachers, root / "resumed"), env=env)
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = _cli("ciard_bench.train", *_train_args(plug, teachers, root / "resumed"), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr
    return root


def test_a_killed_plugin_run_resumes_bit_for_bit_and_records_its_plugin(trained, plug):
    assert compare_runs(trained / "straight", trained / "resumed")["exact"]
    result = json.loads((trained / "resumed" / "result.json").read_text())
    used = {(p["kind"], p["name"]): p for p in result["plugins"]}
    assert set(used) == {("method", plug["method"]), ("model", plug["model"]),
                         ("dataset", plug["dataset"])}
    assert all(p["distribution"] == DIST and p["version"] == plug["version"]
               and p["entry_point"].startswith("ciard_bench.") for p in used.values())
    state = json.loads((trained / "resumed" / "run.json").read_text())
    assert state["plugins"] == result["plugins"]


def test_evaluate_and_submit_a_plugin_student(trained, plug, tmp_path):
    run = trained / "resumed"
    out = tmp_path / "eval.json"
    done = _cli("ciard_bench.evaluate", "--checkpoint", str(run), "--dataset", plug["dataset"],
                "--attacks", "fgsm,pgd_trades", "--n-examples", "16", "--sanity-examples", "8",
                "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {(p["kind"], p["name"]) for p in result["plugins"]} == {
        ("model", plug["model"]), ("dataset", plug["dataset"])}
    cards = tmp_path / "cards"
    done = _cli("ciard_bench.submit", "--checkpoint", str(run), "--name", "Doe2026Plugin",
                "--dataset", "cifar10", "--data", plug["dataset"], "--n-examples", "8",
                "--sanity-examples", "8", "--batch-size", "8", "--device", "cpu",
                "--out", str(cards), "--no-progress", "--force")
    assert done.returncode == 0, done.stderr[-3000:]
    card = json.loads((cards / "model_info" / "cifar10" / "Linf" / "Doe2026Plugin.json").read_text())
    assert f"the plugin {DIST} {plug['version']}" in card["footnote"]
    record = json.loads((cards / "submission.json").read_text())
    assert {p["name"] for p in record["plugins"]} == {plug["method"], plug["model"], plug["dataset"]}
    board = tmp_path / "board.html"
    done = _cli("ciard_bench.submit", "leaderboard", str(cards), "--out", str(board))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Doe2026Plugin" in board.read_text()


def test_a_cut_grid_with_the_plugin_has_its_rows_and_its_rehearsal_passes(plug, teachers,
                                                                          tmp_path):
    from ciard_bench.tables import main
    label = get_method(plug["method"]).label
    grid = ["--methods", f"{plug['method']},ciard,rslad", "--students", "resnet18",
            "--epochs", "1", "--n-train", "64", "--n-test", "16", "--n-examples", "16",
            "--sanity-examples", "8", "--threads", "1", "--no-figures",
            "--clean-teacher", teachers["clean_teacher"],
            "--robust-teacher", teachers["robust_teacher"]]
    results = tmp_path / "grid"
    assert main(["--results-dir", str(results), *grid]) == 0
    def rows(name):
        return [l.split("|")[1].strip() if "|" in l else l.split(",")[0]
                for l in (results / name).read_text().splitlines()]
    for name in ("table3.md", "table5.md", "table3.csv"):      # the paper's rows only
        assert label not in rows(name) and rows(name).index("CIARD") > rows(name).index("RSLAD")
    for name in ("table_beyond.md", "table_beyond.csv"):       # CIARD, the reference, first
        assert rows(name).index(label) > rows(name).index("CIARD") and "RSLAD" not in rows(name)
    assert f"{label} &" in (results / "table_beyond_compact.tex").read_text()
    page = (results / "index.html").read_text()
    assert label in page and f"{DIST} {plug['version']}" in page
    record = json.loads((results / "grid.json").read_text())
    assert {p["name"] for p in record["plugins"]} == {plug["method"]}
    cell = next(c for c in record["cells"] if c["method"] == plug["method"])
    assert cell["status"] == "done" and cell["plugins"][0]["distribution"] == DIST

    assert main(["--results-dir", str(tmp_path / "r"), *grid, "--rehearse"]) == 0
    report = json.loads((tmp_path / "r-rehearsal" / "rehearsal.json").read_text())
    ours = [c for c in report["cells"] if f"/{plug['method']}/" in c["id"]]
    assert ours and all(c["status"] == "pass" for c in ours), ours
