"""Cells side by side or threads inside a cell: wall time of the same small grid both ways.

Runs ``python -m ciard_bench.tables`` on a reduced smoke grid (the two teachers and
``--methods`` for one student, a few epochs on part of digits) into fresh temporary folders,
once per ``--modes`` entry (``WORKERSxTHREADS``), and prints wall seconds, the speedup over
the first mode, and whether the tables are identical (they must be: every cell is seeded
and runs alone in its process). Each mode trains from scratch, so the grid costs the same
work in every mode.

    python benchmarks/workers.py                      # 1x1, 1x2, 2x1 on the default grid
    python benchmarks/workers.py --modes 1x2,2x1 --epochs 2 --n-train 512
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _mode(text: str) -> tuple[int, int]:
    try:
        workers, threads = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"mode {text!r} is not WORKERSxTHREADS, e.g. 2x1") from err
    if workers < 1 or threads < 1:
        raise argparse.ArgumentTypeError(f"mode {text!r}: workers and threads must be >= 1")
    return workers, threads


def run(results: Path, workers: int, threads: int, args: argparse.Namespace) -> float:
    cmd = [sys.executable, "-m", "ciard_bench.tables", "--preset", "smoke",
           "--results-dir", str(results), "--students", args.student, "--methods", args.methods,
           "--epochs", str(args.epochs), "--teacher-epochs", str(args.epochs),
           "--n-train", str(args.n_train), "--n-examples", str(args.n_examples),
           "--workers", str(workers), "--threads", str(threads), "--no-figures"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", default="1x1,1x2,2x1",
                   type=lambda s: [_mode(m) for m in s.split(",")],
                   help="comma list of WORKERSxTHREADS (default 1x1,1x2,2x1)")
    p.add_argument("--student", default="resnet18", choices=("resnet18", "mobilenet_v2"))
    p.add_argument("--methods", default="sat,mtard")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--n-train", type=int, default=512)
    p.add_argument("--n-examples", type=int, default=64)
    args = p.parse_args(argv)
    print(json.dumps({"cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()),
                      "grid": {k: v for k, v in vars(args).items() if k != "modes"}}))
    first, tables = None, None
    with tempfile.TemporaryDirectory() as tmp:
        for workers, threads in args.modes:
            out = Path(tmp) / f"{workers}x{threads}"
            wall = run(out, workers, threads, args)
            first = first or wall
            csv = {f.name: f.read_text() for f in sorted(out.glob("table*.csv"))}
            same = tables is None or csv == tables
            tables = tables or csv
            print(f"{workers} worker(s) x {threads} thread(s): {wall:7.1f} s wall, "
                  f"speedup {first / wall:4.2f}x, tables identical to the first mode: {same}, "
                  f"load average now {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
