"""Final-evaluation time of a grid with several students per source: transfer examples
crafted per student (the released way) against once per source.

One small grid of the smoke preset (digits, both student stand-ins, ``--methods``,
``--epochs`` on ``--n-train`` points, so 2 x len(methods) students distil from one robust
teacher) is
trained once; then its students' final evaluations are run twice from copies of it, one
worker, nothing else changed:

* ``per-student``: every student crafts the transfer examples again on the teacher, on the
  points it classifies correctly;
* ``per-source``: the first student crafts them on every point, once per transfer attack,
  into the teacher's run folder; every other student reads them and only scores them.

Printed: each run's student evaluation seconds (as ``cell.json`` records them), the seconds
in the transfer attacks (crafting included) and the crafting alone. Both evaluations run
every attack of the tables (AutoAttack included), so the saving is shown against the
whole final evaluation, not only the transfer attacks. Per student, the examples are crafted
only on the points that student classifies correctly, so the saving grows with the number
of students per source and with their clean accuracy: with S students of clean accuracy a,
per student crafts on S x a x N points, per source on N. The students' mean clean accuracy
is printed.

    python benchmarks/transfer_once.py                       # 4 methods: 8 students
    python benchmarks/transfer_once.py --methods sat,trades --n-examples 100 --epochs 1
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = "digits/teachers/robust/seed0"


def _tables(results: Path, *extra: str, common: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ciard_bench.tables", *common, "--results-dir",
                    str(results), *extra], check=True, cwd=ROOT, capture_output=True)
    return time.perf_counter() - start


def _students(results: Path) -> list[Path]:
    grid = json.loads((results / "grid.json").read_text())
    return [results / c["run"] for c in grid["cells"] if c["kind"] == "student"]


def _measure(results: Path) -> dict[str, float]:
    out = {"eval_s": 0.0, "transfer_s": 0.0, "crafting_s": 0.0, "students": 0, "clean": 0.0,
           "crafted_points": 0}
    crafted = set()
    for run in _students(results):
        out["students"] += 1
        out["eval_s"] += json.loads((run / "cell.json").read_text())["eval_s"]
        ev = json.loads((run / "eval-best.json").read_text())
        out["clean"] += ev["clean"]["accuracy"]
        for name, entry in ev["attacks"].items():
            if entry["kind"] != "transfer":
                continue
            out["transfer_s"] += entry["time_s"]
            craft = entry.get("crafting", {})
            if entry["settings"].get("examples") == "per_source" and name not in crafted:
                crafted.add(name)               # crafted once; every student reports it
                out["crafting_s"] += craft.get("time_s", 0.0)
                out["transfer_s"] += craft.get("time_s", 0.0)
                out["crafted_points"] += entry["settings"]["crafted_on_points"]
            elif entry["settings"].get("examples") != "per_source":
                out["crafting_s"] += entry["time_s"]      # per student: it is all crafting
                out["crafted_points"] += entry["n_attacked"]
    out["clean"] /= max(1, out["students"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default="sat,trades,ard,rslad")
    ap.add_argument("--n-train", default="1438", help="training points (1438: all of digits)")
    ap.add_argument("--epochs", default="2")
    ap.add_argument("--n-examples", default="200")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = ap.parse_args()
    common = ["--preset", "smoke", "--students", "resnet18,mobilenet_v2", "--methods",
              args.methods, "--epochs", args.epochs, "--teacher-epochs", args.epochs,
              "--n-train", args.n_train,
              "--n-examples", args.n_examples, "--workers", "1", "--threads", "1",
              "--device", "cpu", "--no-figures", "--only", "teacher,student"]
    work = Path(tempfile.mkdtemp(prefix="transfer-once-"))
    try:
        trained = work / "trained"
        print(f"training the grid once ({args.methods}, both students) ...", flush=True)
        _tables(trained, "--transfer-examples", "per-student", common=common)
        rows = {}
        for mode in ("per-student", "per-source"):
            folder = work / mode
            shutil.copytree(trained, folder)
            for run in _students(folder):        # evaluate again from the same checkpoints
                (run / "eval-best.json").unlink()
            shutil.rmtree(folder / "runs" / SOURCE / "transfer", ignore_errors=True)
            (folder / "runs" / SOURCE / "transfer.json").unlink(missing_ok=True)
            wall = _tables(folder, "--transfer-examples", mode, common=common)
            rows[mode] = {**_measure(folder), "wall_s": wall}
        n = rows["per-source"]["students"]
        print(f"\n{n} students of one source, {args.n_examples} test points, every attack of the "
              "tables, 1 worker x 1 thread")
        print(f"students' mean clean accuracy {rows['per-source']['clean']:.1f} % (per student, "
              "the examples are crafted on the points a student classifies correctly)")
        print(f"{'mode':<12}{'student eval s':>16}{'transfer s':>12}{'crafting s':>12}"
              f"{'points crafted':>16}{'command wall s':>16}")
        for mode, r in rows.items():
            print(f"{mode:<12}{r['eval_s']:>16.1f}{r['transfer_s']:>12.1f}{r['crafting_s']:>12.1f}"
                  f"{r['crafted_points']:>16d}{r['wall_s']:>16.1f}")
        a, b = rows["per-student"], rows["per-source"]
        print(f"\nsaved: {a['eval_s'] - b['eval_s']:.1f} s of student evaluation "
              f"({100 * (a['eval_s'] - b['eval_s']) / a['eval_s']:.0f} %); transfer attacks "
              f"{a['transfer_s']:.1f} s -> {b['transfer_s']:.1f} s")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    main()
