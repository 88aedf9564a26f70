"""One cell's training on several processes (``--procs-per-cell N``), for both launchers.

The cell's resolved config goes to a JSON file and ``python -m torch.distributed.run
--standalone --nproc-per-node N -m ciard_bench.train --config FILE --results-dir RESULTS
[--resume]`` trains it:
PyTorch's own launcher, on this machine (a local worker's, or one SLURM job's node). Every
process takes the devices it is given (``CUDA_VISIBLE_DEVICES``: process k uses GPU k of
them) or the CPU (gloo). Everything else is the engine's: the checkpoints, the exact resume,
the stop at the next step boundary, the fail-fast of :mod:`ciard_bench.distributed`. The
caller holds the cell lock for the whole launch, as for one process; evaluation stays one
process.

Signals: the launcher process ignores USR1/USR2 (a SLURM preemption signal reaches every
process of the job, and torchrun would die of it); the training processes set their own
handlers. A stop request in the caller (``stop``, set by its own handler) is forwarded to the
training processes, again every second until they end (a process still starting has no
handler yet): they save at the next step boundary and end. The caller's death sends torchrun
SIGTERM, which it passes on (the same save). torchrun's output goes to ``<run>/torchrun.log``;
the lines that say which process trained (rank, world size) are logged here too.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

from ..config import TrainConfig
from ..runs import local_path
from ..signals import STOP_AT_ENV

log = logging.getLogger("ciard_bench.tables")
FORWARD = signal.SIGUSR1   # what the caller's stop request becomes in the training processes


def train_processes(cfg: TrainConfig, procs: int, resume: bool, stop: threading.Event,
                    stop_at: int | None = None, results: Path | None = None) -> bool:
    """Train ``cfg`` (resolved) on ``procs`` processes; True when it finished, False when it
    stopped on ``stop`` or at ``stop_at`` (saved at a step boundary). A failure raises
    ``RuntimeError`` with the failing rank's line and the log's path.

    ``stop_at`` (the rehearsal's): every process stops at its ``stop_at``-th look at its stop
    flag (``CIARD_BENCH_STOP_AT``, :class:`ciard_bench.signals.StopAtLook`), a step boundary
    known in advance. ``results``: the results folder of the config's ``results:`` paths
    (``--results-dir`` of the training processes)."""
    out = Path(local_path(cfg.out, results))
    out.mkdir(parents=True, exist_ok=True)         # a run folder is a run once run.json is in it
    log_path = out / "torchrun.log"
    with tempfile.TemporaryDirectory(prefix="ciard-cell-") as tmp:
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps(cfg.to_dict()))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={procs}", "-m", "ciard_bench.train", "--config", str(config),
               *(["--results-dir", str(results)] if results is not None else []),
               *(["--resume"] if resume else [])]
        # the caller's threads (--threads, a SLURM job's CPUs) shared among the processes
        threads = max(1, torch.get_num_threads() // procs)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        env.pop(STOP_AT_ENV, None)
        if stop_at is not None:
            env[STOP_AT_ENV] = str(stop_at)
        start = log_path.stat().st_size if log_path.is_file() else 0
        with open(log_path, "a") as out_file:
            proc = subprocess.Popen(cmd, stdout=out_file, stderr=subprocess.STDOUT, env=env,
                                    preexec_fn=_child_setup)
            code = _wait(proc, stop)
    with open(log_path, errors="replace") as f:   # this launch's part of the log
        f.seek(start)
        launched = f.read()
    for line in launched.splitlines():             # who trained (the job log shows it)
        if line.startswith(("process ", "resuming ", "stop requested")):
            log.info("torchrun: %s", line)
    if code == 0:
        return True
    if stop.is_set() or (stop_at is not None and _stopped(launched)):
        return False
    lines = [ln.strip() for ln in launched.splitlines() if ln.startswith(("rank ", "error:"))]
    raise RuntimeError(f"training on {procs} processes failed (exit {code}): "
                       f"{' | '.join(lines[-3:]) or 'no error line'} (log: {log_path})")


def _stopped(launched: str) -> bool:
    """Whether this launch's log says the run saved on a stop request (rank 0's line)."""
    return any(line.startswith("stop requested") for line in launched.splitlines())


def _child_setup() -> None:
    """In torchrun's process, before it starts: ignore USR1/USR2 (inherited by the training
    processes until they set their handlers), and receive SIGTERM when the caller dies."""
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _wait(proc: subprocess.Popen, stop: threading.Event) -> int:
    while True:
        try:
            return proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            if stop.is_set():
                for pid in _children(proc.pid):
                    try:
                        os.kill(pid, FORWARD)
                    except ProcessLookupError:
                        pass


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux: /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found
