"""docs/plugins.md is runnable as written: its method (the block that starts ``# my_method.py``)
and its test (``# test_my_method.py``) are copied out of the page into files, as a reader
would, and the method, loaded with ``--plugin my_method.py`` only, trains, resumes bit for bit
after a kill, and runs in a cut grid locally and on the real SLURM with 2 processes per cell
(the plugin reaches the SLURM job and its torchrun processes through CIARD_BENCH_PLUGINS)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ciard_bench.grid.rehearsal import compare_runs
from ciard_bench.models import create_model, save_model_file
from slurm_helpers import needs_slurm

DOC = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"


def _block(first_line: str) -> str:
    """The fenced python block of docs/plugins.md whose first line is ``first_line``."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    found = [b for b in blocks if b.splitlines()[0].strip() == first_line]
    assert len(found) == 1, f"docs/plugins.md has {len(found)} blocks starting {first_line!r}"
    return found[0]


def _cli(module: str, *args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=900, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
    """The page's two files in a folder, the method's registered name and teacher files."""
    root = tmp_path_factory.mktemp("tutorial")
    (root / "my_method.py").write_text(_block("# my_method.py"))
    (root / "test_my_method.py").write_text(_block("# test_my_method.py"))
    listing = _cli("ciard_bench.train", "--plugin", str(root / "my_method.py"), "--list-methods")
    assert listing.returncode == 0, listing.stderr
    sha = hashlib.sha256((root / "my_method.py").read_bytes()).hexdigest()
    ours = [l for l in listing.stdout.splitlines() if f"plugin my_method.py (sha256 {sha[:12]})" in l]
    assert len(ours) == 1, listing.stdout
    teachers = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        teachers.append(str(root / f"t{seed}.pt"))
        save_model_file(create_model("resnet8", 10), {"name": "resnet8", "num_classes": 10},
                        teachers[-1])
    return {"root": root, "name": ours[0].split()[0], "plugin": str(root / "my_method.py"),
            "teachers": teachers, "sha256": sha}


def test_the_pages_test_of_its_method_passes(tutorial):
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "test_my_method.py"], cwd=tutorial["root"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


# slow (-m slow): the page's method trains in the cut grids below (locally and on SLURM), and a
# plugin file's run resumes bit for bit in test_plugins.py and test_plugin_example.py
@pytest.mark.slow
def test_the_pages_method_trains_and_resumes_bit_for_bit(tutorial, tmp_path):
    def args(out):
        return ["--plugin", tutorial["plugin"], "--method", tutorial["name"], "--dataset",
                "digits", "--student", "resnet8", "--clean-teacher", tutorial["teachers"][0],
                "--robust-teacher", tutorial["teachers"][1], "--epochs", "2", "--n-train", "64",
                "--batch-size", "16", "--n-test", "16", "--threads", "1", "--out", str(out)]
    assert _cli("ciard_bench.train", *args(tmp_path / "a")).returncode == 0
    env = {**os.environ, "CIARD_BENCH_KILL_AT": "step:6"}
    assert _cli("ciard_bench.train", *args(tmp_path / "b"), env=env).returncode == -9
    done = _cli("ciard_bench.train", *args(tmp_path / "b"), "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert compare_runs(tmp_path / "a", tmp_path / "b")["exact"]
    used = json.loads((tmp_path / "b" / "result.json").read_text())["plugins"]
    assert used == [{"kind": "method", "name": tutorial["name"], "file": "my_method.py",
                     "sha256": tutorial["sha256"]}]


def _grid(tutorial) -> list[str]:
    return ["--plugin", tutorial["plugin"], "--methods", tutorial["name"], "--students",
            "resnet18", "--epochs", "1", "--n-train", "64", "--n-test", "16", "--n-examples",
            "16", "--sanity-examples", "8", "--threads", "1", "--no-figures",
            "--clean-teacher", tutorial["teachers"][0], "--robust-teacher", tutorial["teachers"][1]]


def _row_label(results: Path) -> list[str]:
    table = (results / "table_beyond.md").read_text()        # the methods beyond the paper's
    return [l.split("|")[1].strip() for l in table.splitlines() if l.startswith("|")]


def test_the_pages_method_in_a_cut_grid_locally(tutorial, tmp_path):
    done = _cli("ciard_bench.tables", "--results-dir", str(tmp_path / "local"), *_grid(tutorial))
    assert done.returncode == 0, done.stderr[-3000:]
    cell = tmp_path / "local" / "runs" / "digits" / "resnet18" / tutorial["name"] / "seed0"
    assert json.loads((cell / "result.json").read_text())["plugins"][0]["sha256"] == tutorial["sha256"]
    assert len(_row_label(tmp_path / "local")) == 3      # header, rule, the plugin's row


@needs_slurm
def test_the_pages_method_in_a_cut_grid_on_slurm_with_two_processes_per_cell(tutorial, tmp_path):
    results = tmp_path / "slurm"
    done = _cli("ciard_bench.tables", "--results-dir", str(results), *_grid(tutorial),
                "--launcher", "slurm", "--procs-per-cell", "2", "--cpus-per-job", "2", "--wait")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    cell = results / "runs" / "digits" / "resnet18" / tutorial["name"] / "seed0"
    result = json.loads((cell / "result.json").read_text())
    assert result["processes"] == 2
    assert result["plugins"][0]["sha256"] == tutorial["sha256"]
    assert (cell / "eval-best.json").is_file() and len(_row_label(results)) == 3
