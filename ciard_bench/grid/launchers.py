"""Who runs a results folder, and where: ``--devices`` for ``--launcher local`` and the
folder's owner (``launcher.json``), so a local run and SLURM jobs never train the same
cells side by side.

``<results>/launcher.json`` records the launcher that last worked on the folder: ``local``
with its host and PID while a local run is going (``pid`` null once it ended), or
``slurm``. A local run refuses a folder with SLURM jobs still queued or running (named);
a SLURM submission refuses a folder that a live local run holds. Two local runs (shards)
may share a folder, as before; so may two SLURM submissions (the second adds only what is
neither done nor queued).
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from ..checkpoint import atomic_write_json
from ..errors import UserError
from ..utils import positive_int
from . import store

LAUNCHERS = ("local", "slurm")
# flags that only mean something to SLURM (dest names), refused with --launcher local
SLURM_OPTIONS = ("partition", "gpus_per_job", "cpus_per_job", "mem", "time", "account", "qos",
                 "slurm_extra", "wait")


def check_flags(args: Any) -> None:
    """Options of the other launcher (argparse dests) are one-line errors, not ignored."""
    if args.launcher == "local":
        given = [o for o in SLURM_OPTIONS if getattr(args, o) not in (None, False)]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} is an option of --launcher slurm; "
                            "accepted with --launcher local: --devices, --workers, --threads, "
                            "--procs-per-cell")
        if args.devices and args.device != "auto":
            raise UserError("give --devices or --device, not both")
    elif args.devices or args.workers:
        raise UserError(f"{'--devices' if args.devices else '--workers'} is an option of "
                        "--launcher local; with --launcher slurm each job asks for "
                        "--gpus-per-job and --cpus-per-job")


def local_devices(devices: str | None, device: str,
                  workers: str | None) -> tuple[str, list[str] | None]:
    """``--devices`` -> ``(device of the grid's settings, one device per worker or None)``:
    one device is used by the run itself; several give each worker its own GPU, which
    it sees as ``cuda``."""
    if not devices:
        return device, None
    listed = parse_devices(devices)
    if listed == ["cpu"]:
        return "cpu", None
    if workers is not None:
        raise UserError(f"--workers is set by --devices {devices!r} (one worker per device; "
                        "list a device twice for two workers on it)")
    return (listed[0], None) if len(listed) == 1 else ("cuda", listed)


def procs_per_cell(text: str | None, devices: list[str] | None, gpus_per_job: str | None) -> int:
    """``--procs-per-cell`` -> N: a positive integer that divides the ``--devices`` list (one
    group of N devices per cell) and fits in ``--gpus-per-job``."""
    if text is None:
        return 1
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"--procs-per-cell {text!r} is not a process count; accepted: an integer >= 1")
    n = int(text)
    if devices and len(devices) % n:
        raise UserError(f"--procs-per-cell {n} does not divide the {len(devices)} --devices; "
                        f"accepted: a divisor of {len(devices)}")
    if gpus_per_job is not None and gpus_per_job.isdigit() and n > int(gpus_per_job) > 0:
        raise UserError(f"--procs-per-cell {n} needs --gpus-per-job {n} or more (one GPU per process)")
    return n


def device_groups(devices: list[str] | None, procs: int) -> list[str] | None:
    """The ``--devices`` in groups of ``procs`` (``cuda:0,cuda:1``), one worker per group."""
    if not devices or procs == 1:
        return devices
    groups = [devices[i:i + procs] for i in range(0, len(devices), procs)]
    for g in groups:
        if len(set(g)) < len(g):
            raise UserError(f"--procs-per-cell {procs}: a cell's processes need distinct devices, "
                            f"and {','.join(g)} repeats one")
    return [",".join(g) for g in groups]


def parse_devices(text: str) -> list[str]:
    """``cuda:0,cuda:1`` | ``cpu`` -> the devices, one local worker each; a device that
    does not exist on this machine is a one-line error naming it."""
    devices = [d.strip().lower() for d in text.split(",") if d.strip()]
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    accepted = ("cpu (with --workers N)" if not n_gpus else
                f"cpu, or a comma list of cuda:0 .. cuda:{n_gpus - 1}")
    if not devices:
        raise UserError(f"--devices {text!r} names no device; accepted: {accepted}")
    for dev in devices:
        if dev == "cpu":
            if len(devices) > 1:
                raise UserError(f"--devices {text!r}: cpu stands alone (set its workers with "
                                f"--workers N); accepted: {accepted}")
            continue
        index = dev.removeprefix("cuda:")
        if not dev.startswith("cuda:") or not index.isdigit():
            raise UserError(f"--devices entry {dev!r} is not a device; accepted: {accepted}")
        if int(index) >= n_gpus:
            where = f"this machine has {n_gpus} GPU(s)" if n_gpus else "this machine has no CUDA GPU"
            raise UserError(f"--devices entry {dev!r} does not exist ({where}); accepted: {accepted}")
    return devices


def _path(results: Path) -> Path:
    return Path(results) / "launcher.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # alive, another user's
        return True
    return True


def claim_local(results: Path, alive_jobs: dict[str, str]) -> None:
    """Before a local run: refuse while SLURM jobs of this folder are alive
    (``alive_jobs``: ``{"<cell> <task>": "<job id> <state>"}``), then record the run."""
    if alive_jobs:
        named = ", ".join(f"{k} (job {v})" for k, v in sorted(alive_jobs.items()))
        raise UserError(f"results folder {str(results)!r} has SLURM jobs still queued or running: "
                        f"{named}; watch them with --status, or scancel them before a local run")
    atomic_write_json(_path(results), {"launcher": "local", "host": socket.gethostname(),
                                       "pid": os.getpid(), "since": time.time()})


def release_local(results: Path) -> None:
    """After a local run: keep the record, mark it ended (if it is still this process's)."""
    info = store.read_json(_path(results)) or {}
    if info.get("launcher") == "local" and info.get("pid") == os.getpid() \
            and info.get("host") == socket.gethostname():
        atomic_write_json(_path(results), {**info, "pid": None, "ended": time.time()})


def claim_slurm(results: Path) -> None:
    """Before submitting: refuse a folder that a live local run holds, then record SLURM."""
    info = store.read_json(_path(results)) or {}
    if info.get("launcher") == "local" and info.get("pid") is not None:
        here = info.get("host") == socket.gethostname()
        if not here or _pid_alive(int(info["pid"])):
            raise UserError(f"results folder {str(results)!r} is in use by a local run (PID "
                            f"{info['pid']} on {info.get('host')}); wait for it to end, or if "
                            f"it is gone delete {str(_path(results))!r}")
    atomic_write_json(_path(results), {"launcher": "slurm", "host": socket.gethostname(),
                                       "since": time.time()})


def owner(results: Path) -> str | None:
    """``local`` | ``slurm`` | None: the launcher recorded in the folder."""
    return (store.read_json(_path(results)) or {}).get("launcher")


def recorded(results: Path) -> Iterator[tuple[str, Path]]:
    """``(cell id, slurm.json path)`` for every cell of the folder that SLURM jobs ran
    (every cell, not only this invocation's grid: another selection may have queued them)."""
    runs = Path(results) / "runs"
    for path in sorted(runs.glob("**/slurm.json")) if runs.is_dir() else ():
        yield str(path.parent.relative_to(runs)), path


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask; os.cpu_count() elsewhere)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # macOS, Windows
        return os.cpu_count() or 1


def parallelism(device: str, workers: str | None, threads: str | None) -> tuple[int, int]:
    """``(workers, threads per worker)``: the flags, else one single-threaded worker per
    usable core on CPU (independent cells side by side scale ~2x on 2 cores where two
    threads on one cell gain ~1.2x), and one worker on a GPU."""
    n_threads = positive_int(threads, "--threads") if threads is not None else 1
    if workers is not None:
        return positive_int(workers, "--workers"), n_threads
    if device != "cpu" and (device.startswith("cuda") or _cuda_available()):
        return 1, n_threads if threads is not None else max(1, usable_cores())
    return max(1, usable_cores() // n_threads), n_threads


def _cuda_available() -> bool:
    return torch.cuda.is_available()
