"""--rehearse: every cell through its real code path, measured and projected, in a folder of
its own; a failed cell fails alone; the projections against hand computations and against a
measurement at a batch size they were not fitted on."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ciard_bench.config import TrainConfig, resolve
from ciard_bench.grid import get_preset
from ciard_bench.grid.measure import LiveBytes, measure_training
from ciard_bench.methods import get_method
from ciard_bench.models import create_model, save_model_file
from ciard_bench.reports import projection
from ciard_bench.tables import main
from ciard_bench.utils import resolve_device
from slurm_helpers import needs_slurm, queue_state, wait_for


def _main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def paper_cut(tmp_path_factory):
    """The paper grid cut to CIFAR-10 (absent here: synthetic stand-in), the MobileNet-V2
    student, CIARD and SAT; its RobustBench teacher absent too (random-weight stand-in)."""
    root = tmp_path_factory.mktemp("paper")
    with pytest.MonkeyPatch.context() as mp:     # run from root, as from a clone: relative paths
        mp.chdir(root)
        code, out, err = _main("--preset", "paper", "--rehearse", "--dataset", "cifar10",
                               "--students", "mobilenet_v2", "--methods", "sat,ciard",
                               "--memory-budget", "0.5")
    folder = root / "results" / "paper-rehearsal"
    return root, folder, code, out, err, json.loads((folder / "rehearsal.json").read_text())


def test_a_cut_paper_grid_is_rehearsed_and_reported(paper_cut):
    root, folder, code, out, err, rep = paper_cut
    assert code == 0, out + err
    ids = [c["id"] for c in rep["cells"]]
    assert ids == ["cifar10/teachers/clean/seed0", "cifar10/teachers/robust/seed0",
                   "cifar10/mobilenet_v2/sat/seed0", "cifar10/mobilenet_v2/ciard/seed0"]
    assert rep["counts"] == {"pass": 4, "fail": 0, "not run": 0}
    assert "rehearsal: 4 of 4 cells passed" in out
    assert "synthetic" in rep["stand_ins"]["datasets"]["cifar10"]
    assert "random weights" in rep["stand_ins"]["teachers"]["rb:Zhang2019Theoretically"]
    assert (folder / "models" / "cifar10" / "Linf" / "Zhang2019Theoretically.pt").is_file()
    assert not (root / "models").exists() and not (root / "results" / "paper").exists()
    # the stand-in and the zoo folder are named inside the rehearsal's folder: no path of
    # the machine or of the folder in any record (an absolute folder: the next test)
    record = json.loads((folder / "grid.json").read_text())
    assert {c["dataset"] for c in record["cells"]} == {"npz:results:data/cifar10-synthetic.npz"}
    configs = [json.loads(f.read_text()) for f in (folder / "runs").rglob("config.json")]
    assert configs and {c["teacher_model_dir"] for c in configs} == {"results:models"}
    for f in folder.rglob("*.json"):
        assert str(root) not in f.read_text(), f
    assert record["settings"]["rehearse"] == {"launcher": "local"}
    cells = {c["id"]: c for c in rep["cells"]}
    for cid in ("cifar10/teachers/clean/seed0", "cifar10/mobilenet_v2/ciard/seed0"):
        c = cells[cid]
        assert c["steps"] == 4                                  # 2 epochs of 2 steps
        assert c["stopped_at"] == {"epoch": 2, "step": 1}       # mid-epoch
        assert c["resume"]["exact"] and c["resume"]["tensors_compared"] > 10
        step = c["projection"]["step"]
        assert step["batch"] == 128 and step["s"] > 0
        assert step["peak_bytes"] > step["state_bytes"] > 0
        # the step's memory is deterministic: the line through batch 2 and 4 holds at 8
        assert abs(step["memory_check"]["error_pct"]) < 10
        assert math.isfinite(step["time_check"]["error_pct"])
        assert c["projection"]["steps"] == math.ceil(50000 / 128) * (
            200 if "teachers" in cid else 300)
        assert set(c["projection"]["budgets"]) == {"0.5", "24", "40", "80"}
    ciard = cells["cifar10/mobilenet_v2/ciard/seed0"]
    # disk: CIARD's last checkpoint holds the WRN-34-10 teacher ITT trains and its momentum
    teacher = (folder / "models" / "cifar10" / "Linf" / "Zhang2019Theoretically.pt").stat().st_size
    student = 4 * sum(p.numel() for p in create_model("mobilenet_v2", 10).parameters())
    disk = ciard["checkpoint_bytes"]
    assert disk["last"] > 2 * 0.95 * teacher and student < disk["best"] < 2 * student
    assert rep["checkpoint_bytes"]["cells"] == 3                # the two trained teachers too
    assert rep["checkpoint_bytes"]["total"] == sum(
        sum(c["checkpoint_bytes"].values()) for c in rep["cells"] if c["checkpoint_bytes"])
    assert rep["checkpoint_bytes"]["largest_cell"] == ciard["id"]
    measured = json.loads((folder / "runs" / "npz-cifar10-synthetic" / "mobilenet_v2" / "ciard" /
                           "seed0" / "rehearsal.json").read_text())["measured"]
    assert measured["itt"] and measured["epoch"] == 300         # ITT on, at the real epoch
    assert ciard["projection"]["budgets"]["24"]["fits"]
    assert not ciard["projection"]["budgets"]["0.5"]["fits"]    # a WRN-34-10 teacher trains
    robust = cells["cifar10/teachers/robust/seed0"]
    assert "step" not in robust["projection"] and robust["projection"]["eval_s"] > 0
    # transfer examples crafted once per source: the source's gradient passes count once, in
    # the robust teacher's evaluation; each student only scores them (one forward per point)
    transfer = ciard["projection"]["attacks"]["transfer_cw_inf"]
    assert transfer["passes"] == {"gradient": 0.0, "forward": 1.0, "source": 0.0}
    crafting = robust["projection"]["transfer_crafting"]
    assert {k: v["gradient_passes"] for k, v in crafting.items()} == \
        {"transfer_pgd_trades": 20.0, "transfer_cw_inf": 30.0}
    assert all(v["s"] > 0 for v in crafting.values())
    assert "transfer_crafting" not in ciard["projection"]
    # and the students of that source read one set of crafted examples
    examples = json.loads((folder / "runs" / "npz-cifar10-synthetic" / "teachers" / "robust" /
                           "seed0" / "transfer.json").read_text())["examples"]
    assert sorted(e["attack"] for e in examples.values()) == ["transfer_cw_inf",
                                                               "transfer_pgd_trades"]
    assert ciard["projection"]["eval_points"] == 10000
    assert rep["projected_total_h"] > 0 and rep["dry_run_total_h"] > 0
    md = (folder / "rehearsal.md").read_text()
    assert all(f"`{cid}`" in md for cid in ids) and "rehearsal — not results" in md


def test_a_rehearsal_in_a_folder_given_by_absolute_path_names_no_machine_path(tmp_path):
    """Under SLURM the rehearsal's folder is absolute (jobs may start in another working
    directory): its synthetic stand-in and its zoo folder are still named inside it
    (``results:``), so a SLURM rehearsal's records hold no path of the machine either."""
    from ciard_bench.grid import build_grid
    from ciard_bench.grid.rehearsal import prepare
    from ciard_bench.runs import local_dataset
    real = build_grid(get_preset("smoke"), "results/smoke", datasets=["cifar10"],
                      methods=["sat"], settings={"data_root": "no-data-here"})
    folder = (tmp_path / "results" / "smoke-rehearsal").resolve()
    grid, _ = prepare(real, folder)
    configs = [c.config.to_dict() for c in grid.cells if c.trained]
    assert configs and {c["dataset"] for c in configs} == {"npz:results:data/cifar10-synthetic.npz"}
    assert {c["teacher_model_dir"] for c in configs} == {"results:models"}
    assert str(tmp_path) not in json.dumps([configs, grid.settings], default=str)
    # and opened inside the folder wherever it is
    assert local_dataset(configs[0]["dataset"], folder) == f"npz:{folder}/data/cifar10-synthetic.npz"
    assert (folder / "data" / "cifar10-synthetic.npz").is_file()


def test_rehearsal_tables_say_so_and_name_an_npz_dataset_by_its_stem(paper_cut):
    root, folder, *_ = paper_cut
    tables = sorted(folder.glob("table*.md")) + sorted(folder.glob("table*.tex"))
    assert len(tables) >= 8
    for path in tables:
        text = path.read_text()
        assert "rehearsal — not results".upper() in text.upper(), path.name
        assert "cifar10-synthetic" in text and "npz:" not in text and str(root) not in text
    assert all("synthetic" in p.name or "cifar10" not in p.name for p in folder.glob("fig*.png"))
    assert not any(str(root) in p.name or "npz" in p.name for p in folder.glob("fig*"))


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and ".locks" not in p.parts}


GRID = ["--preset", "smoke", "--students", "resnet18", "--epochs", "1", "--teacher-epochs", "1",
        "--n-train", "64", "--n-test", "8", "--n-examples", "8", "--sanity-examples", "4",
        "--no-figures"]
SMOKE = [*GRID, "--workers", "1"]


def test_the_real_results_folder_is_untouched_and_a_real_run_after_is_unaffected(tmp_path):
    results = tmp_path / "smoke"
    code, out, err = _main(*SMOKE, "--methods", "sat", "--results-dir", str(results))
    assert code == 0, out + err
    before = _hashes(results)
    code, out, err = _main(*SMOKE, "--methods", "sat", "--results-dir", str(results),
                           "--rehearse")
    assert code == 0, out + err
    assert _hashes(results) == before                       # not one byte of it changed
    assert (tmp_path / "smoke-rehearsal" / "rehearsal.json").is_file()
    code, out, err = _main(*SMOKE, "--methods", "sat", "--results-dir", str(results))
    assert code == 0 and "trained 0, evaluated 0" in out    # all done: nothing rerun
    own = ("grid.json", "launcher.json")                     # each real invocation's own
    assert {k: v for k, v in _hashes(results).items() if k not in own} == \
        {k: v for k, v in before.items() if k not in own}


def test_a_rehearsal_killed_in_its_stopped_run_resumes_and_passes(tmp_path):
    """SIGKILL in the middle of a cell's second (stopped) run, the one that leaves a run
    folder behind; the same command again finishes the rehearsal, the cell resumed exactly."""
    argv = [sys.executable, "-m", "ciard_bench.tables", *SMOKE, "--methods", "sat", "--only",
            "teacher", "--results-dir", str(tmp_path / "smoke"), "--rehearse"]
    env = {k: v for k, v in os.environ.items() if k != "CIARD_BENCH_KILL_AT"}
    # the clean teacher's straight run takes steps 1-4; the 7th is its stopped run's first
    # step of epoch 2, after epoch 1 was saved
    killed = subprocess.run(argv, env={**env, "CIARD_BENCH_KILL_AT": "step:7"},
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode != 0
    run = tmp_path / "smoke-rehearsal" / "runs" / "digits" / "teachers" / "clean" / "seed0"
    assert "stopped" not in _record(run) and (run / "run.json").is_file()
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-800:] + again.stderr[-800:]
    record = _record(run)
    assert {k: record["stopped"][k] for k in ("epoch", "step")} == {"epoch": 2, "step": 1}
    assert record["resumed"]["exact"]
    # the same folder without its run folders (as committed, or copied): a new rehearsal,
    # whose wall time and grid.json count only its own invocation
    folder = tmp_path / "smoke-rehearsal"
    shutil.rmtree(folder / "runs")
    anew = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert anew.returncode == 0, anew.stdout[-800:] + anew.stderr[-800:]
    runs = json.loads((folder / "grid.json").read_text())["runs"]
    assert len(runs) == 1 and runs[0]["trained"] == 2
    assert json.loads((folder / "rehearsal.json").read_text())["wall_s"] == runs[0]["wall_s"]


def test_a_planted_failure_fails_its_cells_alone_with_one_line(tmp_path, monkeypatch):
    def broken(self, x, y):
        raise RuntimeError("planted failure inside the RSLAD step")

    monkeypatch.setattr(get_method("rslad"), "forward", broken)
    results = tmp_path / "cpu"
    code, out, err = _main("--preset", "cpu", "--seeds", "1", *SMOKE[2:], "--methods",
                           "sat,rslad,ciard", "--results-dir", str(results), "--rehearse",
                           "--clean-teacher", str(tmp_path / "nope.pt"))
    assert code == 1
    rep = json.loads((tmp_path / "cpu-rehearsal" / "rehearsal.json").read_text())
    status = {c["id"]: c for c in rep["cells"]}
    assert {k for k, c in status.items() if c["status"] == "pass"} == {
        "digits/teachers/robust/seed0", "digits/resnet18/sat/seed0"}
    clean, rslad = status["digits/teachers/clean/seed0"], status["digits/resnet18/rslad/seed0"]
    assert "nope.pt" in clean["error"] and Path(clean["traceback"]).is_file()
    assert "planted failure inside the RSLAD step" in rslad["error"]
    assert Path(rslad["traceback"]).is_file()
    # CIARD and its ablations distil from the missing teacher: failed, naming it
    for cid in ("digits/resnet18/ciard/seed0", "digits/resnet18/ciard-no_itt-no_push/seed0",
                "digits/resnet18/ciard-no_push/seed0"):
        assert status[cid]["status"] == "fail"
        assert "digits/teachers/clean/seed0" in status[cid]["error"]
    assert all("\n" not in c.get("error", "") for c in status.values())
    assert "rehearsal: 2 of 7 cells passed, 5 failed" in out


def test_memory_budget_needs_rehearse_and_a_positive_number(tmp_path):
    code, out, err = _main(*SMOKE, "--results-dir", str(tmp_path / "r"), "--memory-budget", "24")
    assert code == 2 and "--memory-budget goes with --rehearse" in err
    code, out, err = _main(*SMOKE, "--results-dir", str(tmp_path / "r"), "--rehearse",
                           "--memory-budget", "-3")
    assert code == 2 and "--memory-budget '-3' is not valid" in err


def test_line_and_budget_against_hand_computations():
    assert projection.line({"2": 5.0, "4": 9.0}) == (1.0, 2.0)
    step = {"batch": 128, "peak_bytes": 30e9, "state_bytes": 10e9, "activation_bytes": 20e9,
            "activation_bytes_per_point": 20e9 / 128}
    assert projection.fit_budget(step, 40) == {"fits": True}
    # 24 GB: bf16 alone gives 10 + 20 / 2 = 20 GB
    assert projection.fit_budget(step, 24) == {"fits": False, "setting": "--amp bf16",
                                           "projected_gb": pytest.approx(20.0)}
    # 16 GB: two processes (10 + 10 = 20) no, two in bf16 (10 + 5 = 15) yes
    got = projection.fit_budget(step, 16)
    assert got["setting"] == "--amp bf16 + 2 processes per cell (batch 64 each)"
    assert got["projected_gb"] == pytest.approx(15.0)
    # 13 GB: four processes in bf16 (10 + 2.5)
    assert projection.fit_budget(step, 13)["setting"] == \
        "--amp bf16 + 4 processes per cell (batch 32 each)"
    assert projection.fit_budget(step, 8)["setting"].startswith("none: the model state alone")
    # measured as one of 2 processes (batch 128 a process): twice as many processes, 4
    per_process = {**step, "procs": 2}
    assert projection.fit_budget(per_process, 16)["setting"] == \
        "--amp bf16 + 4 processes per cell (batch 64 each)"
    assert projection.fit_budget(per_process, 24)["setting"] == "--amp bf16"


@pytest.mark.processes     # 2 gloo processes: run apart from other tests (conftest)
def test_a_rehearsal_on_two_processes_per_cell_stops_and_resumes_them_exactly(tmp_path):
    """--procs-per-cell 2 (issue 21: the rehearsal works as for one process): the CIARD
    cell's three runs are 2 gloo processes each, stopped together after step 1 of epoch 2
    and resumed bit for bit (ITT trains the robust teacher in epoch 2); the step is measured
    at the per-process batch. Teachers are files, so that only the one cell trains."""
    teachers = []
    for role in ("clean", "robust"):
        teachers += [f"--{role}-teacher", str(tmp_path / f"{role}.pt")]
        save_model_file(create_model("resnet8", 10), {"name": "resnet8", "num_classes": 10},
                        tmp_path / f"{role}.pt")
    code, out, err = _main(*SMOKE, "--methods", "ciard", "--only", "student", *teachers,
                           "--procs-per-cell", "2", "--results-dir", str(tmp_path / "smoke"),
                           "--rehearse")
    assert code == 0, out + err
    folder = tmp_path / "smoke-rehearsal"
    rep = json.loads((folder / "rehearsal.json").read_text())
    cell = next(c for c in rep["cells"] if c["id"] == "digits/resnet18/ciard/seed0")
    assert cell["status"] == "pass"
    run = folder / "runs" / cell["rehearsal_id"]
    record = _record(run)
    assert {k: record["stopped"][k] for k in ("epoch", "step")} == {"epoch": 2, "step": 1}
    assert record["resumed"]["exact"] and record["resumed"]["tensors_compared"] > 0
    batch = get_preset("smoke").train["batch_size"]
    assert record["measured"]["procs"] == 2 and record["measured"]["real_batch"] == batch // 2
    epochs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert "robust_teacher_loss" in epochs[1] and epochs[1]["method_state_equal_on_all_ranks"]
    assert cell["projection"]["step"]["procs"] == 2
    launches = (run / "torchrun.log").read_text()
    assert launches.count("process 0 of 2") == 2 and launches.count("process 1 of 2") == 2
    assert json.loads((run / "config.json").read_text())["batch_size"] == 4    # 2 a process
    assert not (folder / "rehearsal-straight").exists()     # compared, then removed
    assert f"(B={batch // 2} a process, 2 processes)" in (folder / "rehearsal.md").read_text()


def test_attack_passes_follow_the_protocol():
    aa = projection.attack_passes("aa", 8 / 255, 100, {})
    # standard: APGD-CE 100 x 1 restart, APGD-T and FAB-T 100 x 9 targets, Square 5000 queries
    assert aa == {"gradient": 100 + 900 + 900, "forward": 1 + 5000, "source": 0.0}
    assert projection.attack_passes("pgd_sat", 8 / 255, 10, {})["gradient"] == 20
    assert projection.attack_passes("square", 8 / 255, 10, {})["forward"] == 101
    custom = {"version": "custom", "attacks": ["apgd-ce", "apgd-t"], "n_iter": 10,
              "apgd_n_restarts": 1, "n_target_classes": 3}
    assert projection.attack_passes("aa", 16 / 255, 10, custom)["gradient"] == 10 + 30


def test_live_bytes_counts_what_is_alive_and_its_peak():
    x = torch.zeros(1000)                                   # 4000 bytes, given at the start
    with LiveBytes([x]) as tracker:
        a = torch.ones(2000)                                # + 8000 -> 12000
        del a                                               # freed -> 4000
        b = torch.ones(500) * 2                             # + 2000 (ones) + 2000 (product)
    assert tracker.peak == 12000
    assert tracker.live == 4000 + 2000                      # x and b (the ones freed)
    del b


def test_training_step_memory_projects_to_a_batch_not_fitted():
    # a real step (SAT on the tiny ResNet, digits) on this CPU: memory at batch 2 and 4
    # gives a line that must hold at 8 (deterministic); the time's check is stated
    cfg = resolve(TrainConfig(method="sat", dataset="digits", student="resnet18_tiny",
                              student_kwargs={"width": 8}, epochs=6, batch_size=32,
                              attack_steps=3))
    measured = measure_training(cfg, resolve_device("cpu"))
    step = projection.step_projection(measured)
    assert measured["fit"] == [2, 4] and measured["check"] == [8]
    assert abs(step["memory_check"]["error_pct"]) < 5
    assert step["memory_check"]["measured"] == measured["batch"]["8"]["peak_bytes"]
    assert step["peak_bytes"] > measured["batch"]["8"]["peak_bytes"]     # batch 32 > 8
    assert math.isfinite(step["time_check"]["error_pct"]) and step["s"] > 0


# slow (-m slow): the rehearsal's cells, stops and report stay checked locally (above), the
# SLURM launcher's requeue of a preempted job in test_slurm.py
@pytest.mark.slow
@needs_slurm
def test_a_rehearsal_through_slurm_submits_requeues_one_cell_and_reports(tmp_path):
    results = tmp_path / "smoke"
    folder = tmp_path / "smoke-rehearsal"
    clean = folder / "runs" / "digits" / "teachers" / "clean" / "seed0"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ciard_bench.tables", *GRID, "--methods", "sat", "--rehearse",
         "--launcher", "slurm", "--wait", "--results-dir", str(results)],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        # the first trained cell stops itself with the job's USR2 inside epoch 2, saves,
        # requeues; a requeued job waits ~2.5 min for its begin time: let it start now
        end = time.monotonic() + 240
        while "stopped" not in _record(clean):
            assert time.monotonic() < end and proc.poll() is None, "no stop recorded"
            time.sleep(0.5)
        job = json.loads((clean / "slurm.json").read_text())["train"]["job_id"]
        wait_for("the stopped job to be requeued", lambda: queue_state(job) == "PENDING",
                 end - time.monotonic(), poll=0.5)
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True,
                       timeout=30)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "rehearsal: 3 of 3 cells passed" in out
    record = _record(clean)
    assert {k: record["stopped"][k] for k in ("epoch", "step")} == {"epoch": 2, "step": 1}
    assert record["resumed"]["exact"]
    logs = "".join(p.read_text() for p in (clean / "slurm").glob("*_log.err"))
    assert "interrupted; requeued" in logs and "resuming" in logs
    rep = json.loads((folder / "rehearsal.json").read_text())
    assert all(c["projection"].get("total_s", 0) > 0 for c in rep["cells"])
    assert not results.exists()


def _record(run: Path) -> dict:
    try:
        return json.loads((run / "rehearsal.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
