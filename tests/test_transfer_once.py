"""Transfer examples crafted once per source (issue 27, part 2): the examples are the base
attack run on the source, on every point in order from one seeded stream, whatever the
student; every student is scored on the same examples (robust = correct clean and on its
example); a store beside the source's run keeps them with their sha256, crafts them once
under a lock when several processes ask at once, resumes a crafting killed midway, and a
grid's students read one set per source. ``per_student`` keeps the released way.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchattacks

from ciard_bench.errors import UserError
from ciard_bench.evaluate import evaluate, transfer
from ciard_bench.evaluate.engine import Options, run_attack
from ciard_bench.attacks import create_attack
from ciard_bench.utils import seed_everything, tensor_sha256

REPO = Path(__file__).resolve().parent.parent
EPS = 8 / 255
BOTH = "transfer_pgd_trades,transfer_cw_inf"


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10)).eval()


@pytest.fixture(scope="module")
def points():
    g = torch.Generator().manual_seed(1)
    return torch.rand(40, 3, 8, 8, generator=g), torch.randint(0, 10, (40,), generator=g)


def test_examples_are_the_base_attack_on_the_source_over_every_point_in_order(points):
    x, y = points
    source = _net(0)
    got = transfer.craft("transfer_pgd_trades", source, x, y, EPS, seed=3, batch_size=16,
                         n_classes=10, device="cpu")
    # by hand: torchattacks' PGD (pgd_trades: 20 steps of 0.003, random start) on the source,
    # batches of 16 in test-set order after seeding everything with 3
    seed_everything(3)
    pgd = torchattacks.PGD(source, eps=EPS, alpha=0.003, steps=20, random_start=True)
    want = torch.cat([pgd(x[i:i + 16], y[i:i + 16]) for i in range(0, 40, 16)])
    assert torch.equal(got, want)
    assert float((got - x).abs().max()) <= EPS + 1e-6


def test_every_student_is_scored_on_the_same_examples(points):
    x, y = points
    source, a, b = _net(0), _net(1), _net(2)
    ra = evaluate(a, x, y, BOTH, EPS, source=source, expensive_checks=False, batch_size=16)
    rb = evaluate(b, x, y, BOTH, EPS, source=source, expensive_checks=False, batch_size=16)
    for name in BOTH.split(","):
        ea, eb = ra["attacks"][name], rb["attacks"][name]
        assert ea["settings"]["examples"] == "per_source"
        assert ea["settings"]["examples_sha256"] == eb["settings"]["examples_sha256"]
        assert ea["n_attacked"] == 40          # every point, not the student's correct ones
        # robust = correct clean AND on the example crafted for that point
        examples = transfer.craft(name, source, x, y, EPS, seed=0, batch_size=16, n_classes=10,
                                  device="cpu")
        assert tensor_sha256(examples) == ea["settings"]["examples_sha256"]
        with torch.no_grad():
            want = (a(x).argmax(1) == y) & (a(examples).argmax(1) == y)
        assert ea["correct"] == "".join("1" if v else "0" for v in want.tolist())
        assert ea["n_correct"] == int(want.sum())
    assert ra["sanity"]["passed"] and rb["sanity"]["passed"]


def test_per_student_is_the_released_way(points):
    """Crafted again for the student, on the points it classifies correctly, in batches of
    those points: the values of the code before the change."""
    x, y = points
    source, model = _net(0), _net(1)
    got = evaluate(model, x, y, "transfer_pgd_trades", EPS, source=source, batch_size=16,
                   expensive_checks=False, transfer="per_student")["attacks"]["transfer_pgd_trades"]
    with torch.no_grad():
        clean_ok = model(x).argmax(1) == y
    seed_everything(0)
    attack = create_attack("transfer_pgd_trades", model, eps=EPS, source=source)
    want = run_attack(attack, model, x, y, clean_ok, Options(eps=EPS, batch_size=16))["ok"]
    assert got["correct"] == "".join("1" if v else "0" for v in want.tolist())
    assert got["n_attacked"] == int(clean_ok.sum())
    assert got["settings"]["examples"] == "per_student"


def test_an_unknown_mode_is_one_line(points):
    x, y = points
    with pytest.raises(UserError, match=r"transfer examples.*'per_teacher'.*per-source, per-student"):
        evaluate(_net(1), x, y, "transfer_pgd_trades", EPS, source=_net(0),
                 expensive_checks=False, transfer="per_teacher")


def _key(x, y, attack="transfer_pgd_trades"):
    return transfer.crafting_key(attack, x, y, EPS, seed=0, batch_size=16, n_classes=10,
                                 source_id="sha-of-the-source")


def _ask(folder: str, counter: str, x, y) -> str:
    """One process asking the store for the examples; its crafting is counted in a file."""
    from ciard_bench.grid.locks import file_lock
    import time

    def make(partial):
        with open(counter, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(1.0)               # long enough for the other process to arrive and wait
        return transfer.craft("transfer_pgd_trades", _net(0), x, y, EPS, seed=0, batch_size=16,
                              n_classes=10, device="cpu", partial=partial)
    store = transfer.TransferStore(folder, lock=lambda: file_lock(Path(folder) / "t.lock", "t"))
    examples, _ = store.get(_key(x, y), make)
    return tensor_sha256(examples)


def test_concurrent_students_of_one_source_craft_once(points, tmp_path):
    x, y = points
    counter = tmp_path / "crafted.txt"
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        shas = pool.starmap(_ask, [(str(tmp_path / "source"), str(counter), x, y)] * 2)
    assert len(counter.read_text().split()) == 1         # one crafting, two readers
    assert shas[0] == shas[1]
    record = json.loads((tmp_path / "source" / "transfer.json").read_text())
    (entry,) = record["examples"].values()
    from ciard_bench.checkpoint import sha256_file
    assert sha256_file(tmp_path / "source" / entry["file"]) == entry["sha256"]
    assert entry["key"]["source"] == "sha-of-the-source" and entry["n"] == 40
    # a third asker reads, crafts nothing
    assert _ask(str(tmp_path / "source"), str(counter), x, y) == shas[0]
    assert len(counter.read_text().split()) == 1


def test_a_damaged_file_is_crafted_again(points, tmp_path):
    x, y = points
    calls = []

    def make(partial):
        calls.append(1)
        return transfer.craft("transfer_pgd_trades", _net(0), x, y, EPS, seed=0, batch_size=16,
                              n_classes=10, device="cpu")
    store = transfer.TransferStore(tmp_path)
    first, entry = store.get(_key(x, y), make)
    path = tmp_path / entry["file"]
    path.write_bytes(path.read_bytes()[:-10])
    again, _ = store.get(_key(x, y), make)
    assert len(calls) == 2 and torch.equal(first, again)
    # another source checkpoint, seed or point set is another key: crafted anew
    store.get({**_key(x, y), "source": "another"}, make)
    assert len(calls) == 3


KILLED = """
import logging, sys, torch
logging.basicConfig(level=logging.INFO)
from pathlib import Path
from ciard_bench.evaluate import transfer
sys.path.insert(0, {tests!r})
from test_transfer_once import _net, _key
transfer.SAVE_EVERY_S = 0.0          # save after every batch
x, y = torch.load({points!r})
store = transfer.TransferStore({folder!r})
store.get(_key(x, y), lambda partial: transfer.craft(
    "transfer_pgd_trades", _net(0), x, y, {eps!r}, seed=0, batch_size=16, n_classes=10,
    device="cpu", partial=partial))
"""


def test_a_crafting_killed_midway_resumes_with_the_same_examples(points, tmp_path):
    x, y = points
    torch.save((x, y), tmp_path / "points.pt")
    script = KILLED.format(tests=str(REPO / "tests"), points=str(tmp_path / "points.pt"),
                           folder=str(tmp_path / "source"), eps=EPS)
    env = {**os.environ, "CIARD_BENCH_KILL_AT": "transfer_batch:2"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == -9, done.stderr[-2000:]       # SIGKILLed after 2 of 3 batches
    partials = list((tmp_path / "source" / "transfer").glob("*.partial"))
    assert len(partials) == 1 and not (tmp_path / "source" / "transfer.json").exists()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "continuing its crafting after 2 of 3 batches" in done.stderr
    assert not list((tmp_path / "source" / "transfer").glob("*.partial"))
    stored, _ = transfer.TransferStore(tmp_path / "source").get(_key(x, y), None)
    straight = transfer.craft("transfer_pgd_trades", _net(0), x, y, EPS, seed=0, batch_size=16,
                              n_classes=10, device="cpu")
    assert torch.equal(stored, straight)


# -- in a grid: every student of a source reads one set of crafted examples ------------------

TINY = ["--preset", "smoke", "--students", "resnet18,mobilenet_v2", "--methods", "sat",
        "--epochs", "1", "--teacher-epochs", "1", "--n-train", "64", "--n-test", "16",
        "--n-examples", "24", "--sanity-examples", "8", "--threads", "1", "--workers", "1",
        "--device", "cpu", "--no-figures", "--only", "teacher,student"]
STUDENTS = ("digits/resnet18/sat/seed0", "digits/mobilenet_v2/sat/seed0")
SOURCE = "digits/teachers/robust/seed0"


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    """The tiny grid (2 teachers, 2 SAT students of one robust teacher), crafting counted."""
    from ciard_bench.tables import main
    results = tmp_path_factory.mktemp("grid") / "results"
    calls: list[str] = []
    real = transfer.craft

    def counted(name, *args, **kwargs):
        calls.append(name)
        return real(name, *args, **kwargs)
    mp = pytest.MonkeyPatch()
    mp.setattr(transfer, "craft", counted)
    threads = torch.get_num_threads()
    try:
        assert main([*TINY, "--results-dir", str(results)]) == 0
    finally:
        mp.undo()
        torch.set_num_threads(threads)
    return results, calls


def _eval(results: Path, cell: str) -> dict:
    return json.loads((results / "runs" / cell / "eval-best.json").read_text())


def test_a_grids_students_read_one_crafting_per_source_and_attack(grid_run):
    results, calls = grid_run
    assert sorted(calls) == ["transfer_cw_inf", "transfer_pgd_trades"]   # not once per student
    record = json.loads((results / "runs" / SOURCE / "transfer.json").read_text())
    assert sorted(e["attack"] for e in record["examples"].values()) == sorted(set(calls))
    sha = {}
    for cell in STUDENTS:
        ev = _eval(results, cell)
        assert ev["tables_key"]["transfer_examples"] == "per_source"
        for name in ("transfer_pgd_trades", "transfer_cw_inf"):
            entry = ev["attacks"][name]
            assert entry["n_attacked"] == 24 and entry["crafting"]["stored"]
            sha.setdefault(name, set()).add(entry["settings"]["examples_sha256"])
    assert all(len(v) == 1 for v in sha.values())          # the same examples for both
    grid = json.loads((results / "grid.json").read_text())
    assert grid["settings"]["transfer_examples"] == "per_source"
    caption = (results / "table5.md").read_text()
    assert "crafted once on the robust teacher for every point" in caption


def test_a_folder_keeps_its_mode_and_the_switch_re_evaluates_per_student(grid_run, tmp_path,
                                                                          capsys):
    """Rendering keeps the folder's mode; ``--transfer-examples per-student`` re-evaluates
    the students the released way (their transfer entries then differ in what was attacked),
    and a folder evaluated before the mode existed (no mode in grid.json) renders as it was."""
    import shutil
    from ciard_bench.tables import main
    results, _ = grid_run
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    before = (copy / "table5.md").read_text()
    assert main([*TINY, "--results-dir", str(copy), "--render-only"]) == 0
    assert (copy / "table5.md").read_text() == before
    was = {cell: _eval(copy, cell) for cell in STUDENTS}
    timing = {cell: json.loads((copy / "runs" / cell / "cell.json").read_text())
              for cell in STUDENTS}
    attacked = _switch_mode(copy, "per-student")
    # only the transfer attacks ran again: the others are the stored ones, taken as they were
    assert sorted(attacked) == sorted(["transfer_pgd_trades", "transfer_cw_inf"] * 2)
    for cell in STUDENTS:
        ev = _eval(copy, cell)
        assert "transfer_examples" not in ev["tables_key"]
        entry = ev["attacks"]["transfer_pgd_trades"]
        assert entry["settings"]["examples"] == "per_student"
        assert entry["n_attacked"] == round(ev["clean"]["accuracy"] * 24 / 100)
        _assert_only_transfer_changed(was[cell], ev)
        after = json.loads((copy / "runs" / cell / "cell.json").read_text())
        assert after["eval_s"] == timing[cell]["eval_s"] and after["eval_rerun_s"] > 0
    assert "crafted on the robust teacher)" in (copy / "table5.md").read_text()
    grid = json.loads((copy / "grid.json").read_text())
    del grid["settings"]["transfer_examples"]          # as written before the mode existed
    (copy / "grid.json").write_text(json.dumps(grid))
    per_student = (copy / "table5.md").read_text()
    assert main([*TINY, "--results-dir", str(copy), "--render-only"]) == 0
    assert (copy / "table5.md").read_text() == per_student
    capsys.readouterr()
    assert main([*TINY, "--results-dir", str(copy), "--render-only",
                 "--transfer-examples", "twice"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: unknown transfer examples 'twice'; accepted: per-source, per-student")


def _switch_mode(results: Path, mode: str) -> list[str]:
    """Run the tiny grid on ``results`` with ``--transfer-examples mode``; the attacks run
    (and ``expensive_checks`` for each time the eps sweep and noise check ran)."""
    from ciard_bench.evaluate import engine
    from ciard_bench.tables import main
    attacked: list[str] = []
    real, sweep = engine._evaluate_attack, engine._expensive_checks

    def counted(name, *args, **kwargs):
        attacked.append(name)
        return real(name, *args, **kwargs)

    def swept(*args, **kwargs):
        attacked.append("expensive_checks")
        return sweep(*args, **kwargs)
    threads = torch.get_num_threads()
    mp = pytest.MonkeyPatch()
    mp.setattr(engine, "_evaluate_attack", counted)
    mp.setattr(engine, "_expensive_checks", swept)
    try:
        assert main([*TINY, "--results-dir", str(results), "--transfer-examples", mode]) == 0
    finally:
        mp.undo()
        torch.set_num_threads(threads)
    return attacked


def _assert_only_transfer_changed(was: dict, now: dict) -> None:
    other = sorted(a for a, e in was["attacks"].items() if e["kind"] != "transfer")
    assert other and now["reused"] == other
    for name in other:
        assert now["attacks"][name] == was["attacks"][name]
    checks = {c["name"]: c for c in was["sanity"]["checks"]}
    for check in now["sanity"]["checks"]:          # every check again, the attacks' as they were
        if check["name"].split(":")[-1] in other and check["name"].startswith(("eps_ball", "rescore")):
            assert check == checks[check["name"]]
    assert [c["name"] for c in now["sanity"]["checks"]] == list(checks)
    # the clean mask recomputed on the same checkpoint and points; the sweep taken with it
    assert now["clean"] == was["clean"] and now["robustness_curve"] == was["robustness_curve"]
    assert now["sanity"]["cost"] == was["sanity"]["cost"]


def test_switching_back_per_source_reruns_only_the_transfer_attacks(grid_run, tmp_path):
    """A folder evaluated per student and switched to per source (the committed studies'
    way) scores its students on the source's stored examples and runs nothing else again;
    the entries then equal those of the folder evaluated per source from the start."""
    import shutil
    results, _ = grid_run
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    assert _switch_mode(copy, "per-student")
    was = {cell: _eval(copy, cell) for cell in STUDENTS}
    attacked = _switch_mode(copy, "per-source")
    assert sorted(attacked) == sorted(["transfer_pgd_trades", "transfer_cw_inf"] * 2)
    for cell in STUDENTS:
        now, fresh = _eval(copy, cell), _eval(results, cell)
        _assert_only_transfer_changed(was[cell], now)
        assert now["tables_key"] == fresh["tables_key"]
        for name in ("transfer_pgd_trades", "transfer_cw_inf"):
            assert now["attacks"][name]["correct"] == fresh["attacks"][name]["correct"]
            assert now["attacks"][name]["settings"] == fresh["attacks"][name]["settings"]


def test_reused_results_of_another_clean_mask_are_not_taken(points):
    """The engine takes reused attack results only for the clean mask they were scored
    against: given another model's, it attacks again."""
    x, y = points
    model = _net(0)
    first = evaluate(model, x, y, ["fgsm"], 8 / 255, batch_size=8, expensive_checks=False)
    reuse = {"clean": first["clean"]["correct"],
             "attacks": {"fgsm": {"entry": {**first["attacks"]["fgsm"], "accuracy": -1.0},
                                  "checks": []}}}
    taken = evaluate(model, x, y, ["fgsm"], 8 / 255, batch_size=8, expensive_checks=False,
                     reuse=reuse)
    assert taken["attacks"]["fgsm"]["accuracy"] == -1.0 and taken["reused"] == ["fgsm"]
    flipped = "".join("0" if c == "1" else "1" for c in first["clean"]["correct"])
    again = evaluate(model, x, y, ["fgsm"], 8 / 255, batch_size=8, expensive_checks=False,
                     reuse={**reuse, "clean": flipped})
    assert again["attacks"]["fgsm"] == {**first["attacks"]["fgsm"],
                                        "time_s": again["attacks"]["fgsm"]["time_s"],
                                        "time_per_attacked_s":
                                            again["attacks"]["fgsm"]["time_per_attacked_s"]}
    assert "reused" not in again
