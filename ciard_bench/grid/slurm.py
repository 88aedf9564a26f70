"""``--launcher slurm``: the grid's tasks as SLURM jobs, submitted through submitit.

One job per task -- a cell's training, a cell's evaluation -- not an array per stage: each
task has dependencies of its own (a student waits for its own teachers, an evaluation for
its training and its transfer source), which ``afterok`` expresses job by job, where an
array per stage would make every student wait for every teacher; per-task jobs also give
per-cell logs, squeue lines and requeues. A job whose dependency fails is cancelled
(``--kill-on-invalid-dep=yes``); rerunning the command submits it again.

Where things live, per cell ``<results>/runs/<cell id>/``:

    slurm.json   the job id of its ``train`` and ``eval`` task (the last submitted of each)
    slurm/       submitit's folder: ``<job id>_0_log.out`` / ``.err`` and the pickled task

A task is *alive* while ``squeue`` lists its job in a non-final state. Rerunning the command
submits only the tasks that are neither done (the results store says so) nor alive.

Requeue: a job is a :class:`CellJob` (``submitit.helpers.Checkpointable``). At the
preemption or time-limit signal (USR2, ``--signal-delay`` seconds before the limit)
submitit's handler calls :meth:`CellJob.checkpoint`, requeues the job with what it returns
(the same task, which resumes the cell from the store) and exits -- at once, wherever the
main thread was. So a training task puts its own handler in front for the time it trains:

    USR2 -> the handler sets the engine's stop flag (``train.STOP``) and returns
         -> the training loop finishes the step it is in, saves an atomic checkpoint at
            that step boundary (mid-epoch) and returns "interrupted"
         -> the task calls submitit's handler itself: checkpoint(), ``scontrol requeue``,
            exit; the requeued job resumes the run from that very step.

The requeued run ends with the weights, method state and log of an uninterrupted one (the
engine's resume is exact); a requeue costs at most the step under way. SIGTERM (a plain
``scancel``, a preemption that SLURM itself requeues) also saves at the next step, then
fails the job without requeuing it (SLURM decides: a preempted job comes back, a cancelled
one does not; rerunning the command resumes it). An evaluation keeps submitit's handler: it
requeues at once and resumes after its last finished attack.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Sequence

import submitit
import torch

from .. import plugins
from .. import train as engine
from ..checkpoint import atomic_write_json
from ..errors import UserError, quiet_third_party_warnings
from ..runs import RunDir
from ..signals import stop_on_signals
from . import launchers, runner, store
from .cells import Cell, Grid

log = logging.getLogger("ciard_bench.tables")
# squeue states after which a job will not run again (anything else is queued or running)
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
         "BOOT_FAIL", "DEADLINE", "PREEMPTED", "SPECIAL_EXIT", "REVOKED"}


@dataclasses.dataclass
class SlurmOptions:
    """What every job asks SLURM for (``None``: the partition's default)."""

    partition: str | None = None
    gpus_per_job: int | None = None
    cpus_per_job: int = 1
    mem: str | None = None
    time_min: int | None = None
    account: str | None = None
    qos: str | None = None
    extra: dict[str, str] = dataclasses.field(default_factory=dict)
    signal_delay_s: int = 90


def parse_time(text: str) -> int:
    """SLURM's time formats (``MM``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) -> whole minutes."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise UserError(f"--time {text!r} is not a SLURM time; accepted: MINUTES, HH:MM:SS, "
                        "D-HH:MM:SS")
    days, a, b, c = (int(g) if g else None for g in m.groups())
    if days is None and b is None:
        minutes = a * 1.0                                       # MM
    elif days is None and c is None:
        minutes = a + b / 60                                    # MM:SS
    else:
        minutes = (days or 0) * 1440 + a * 60 + (b or 0) + (c or 0) / 60   # [D-]HH:MM[:SS]
    if minutes <= 0:
        raise UserError(f"--time {text!r} must be positive")
    return max(1, round(minutes))


def parse_extra(items: Sequence[str]) -> dict[str, str]:
    """``--slurm-extra KEY=VALUE`` (repeatable) -> sbatch options, e.g. constraint=a100."""
    extra = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key.strip()):
            raise UserError(f"--slurm-extra {item!r} is not KEY=VALUE (an sbatch option without "
                            "its dashes, e.g. constraint=a100)")
        extra[key.strip().replace("-", "_")] = value.strip()
    return extra


def _slurm(*cmd: str) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as err:
        raise UserError(f"{' '.join(cmd)} did not answer in 60 s; is slurmctld up?") from err
    if done.returncode:
        raise UserError(f"{' '.join(cmd)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def check_cluster(options: SlurmOptions) -> SlurmOptions:
    """sbatch on PATH and the partition known (else one line); the time limit resolved
    (the partition's default, else its maximum, else 24 h: submitit counts time-outs)."""
    if shutil.which("sbatch") is None:
        raise UserError("--launcher slurm needs SLURM's sbatch on PATH, and it is not; run on a "
                        "SLURM login node, or use --launcher local")
    listed = _slurm("sinfo", "-h", "-o", "%P").split()      # the default one ends with *
    partitions = [p.rstrip("*") for p in listed]
    if options.partition is not None and options.partition not in partitions:
        raise UserError(f"unknown partition {options.partition!r}; accepted: "
                        f"{', '.join(partitions) or '(sinfo lists none)'}")
    if options.time_min is None:
        name = options.partition or next((p.rstrip("*") for p in listed if p.endswith("*")),
                                         partitions[0] if partitions else "")
        info = _slurm("scontrol", "show", "partition", name) if name else ""
        limits = dict(re.findall(r"(DefaultTime|MaxTime)=(\S+)", info))
        for key in ("DefaultTime", "MaxTime"):
            if limits.get(key, "NONE") not in ("NONE", "UNLIMITED", "INFINITE"):
                return dataclasses.replace(options, time_min=parse_time(limits[key]))
        return dataclasses.replace(options, time_min=24 * 60)
    return options


def queue() -> dict[str, str] | None:
    """``{job id: state}`` of this user's jobs that SLURM still knows; None without squeue."""
    if shutil.which("squeue") is None:
        return None
    out = _slurm("squeue", "-h", "--me", "-t", "all", "-o", "%i|%T")
    return dict(line.split("|", 1) for line in out.split() if "|" in line)


def jobs(grid_results: Any) -> dict[tuple[str, str], str]:
    """``{(cell id, "train"|"eval"): job id}`` recorded in the results folder."""
    found = {}
    for cid, path in launchers.recorded(grid_results):
        for kind, entry in (store.read_json(path) or {}).items():
            found[(cid, kind)] = str(entry["job_id"])
    return found


def alive(grid_results: Any) -> dict[tuple[str, str], tuple[str, str]]:
    """``{(cell id, task): (job id, state)}`` for recorded jobs still queued or running."""
    recorded = jobs(grid_results)
    if not recorded:
        return {}
    if shutil.which("squeue") is None:
        raise UserError(f"{str(grid_results)!r} records SLURM jobs but squeue is not on PATH to "
                        "ask whether they still run; use a SLURM node, or delete the runs' "
                        "slurm.json files if those jobs are over")
    states = queue() or {}
    return {task: (jid, states[jid]) for task, jid in recorded.items()
            if jid in states and states[jid] not in FINAL}


class CellJob(submitit.helpers.Checkpointable):
    """One task of the grid in a SLURM job: ``runner.run_task`` (which resumes from the
    store), failing the job when the task fails so that ``afterok`` dependents are
    cancelled."""

    def __init__(self, grid: Grid, cell_id: str, kind: str, which: str):
        self.grid, self.cell_id, self.kind, self.which = grid, cell_id, kind, which
        # the submitting command's plugins (--plugin, CIARD_BENCH_PLUGINS) travel with the job,
        # whatever the cluster's sbatch --export policy passes of the environment
        self.plugins = plugins.specs_from_env()

    def __call__(self) -> dict[str, Any]:
        quiet_third_party_warnings()
        plugins.activate(self.plugins)     # also in the environment of its torchrun processes
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
        logging.getLogger("ciard_bench.train").setLevel(logging.INFO)   # "resuming ... at epoch"
        threads = int(os.environ.get("SLURM_CPUS_PER_TASK", "1"))
        torch.set_num_threads(threads)
        cell = self.grid.by_id()[self.cell_id]
        log.info("%s: %s (job %s, %d thread(s))", cell.id, self.kind,
                 os.environ.get("SLURM_JOB_ID"), threads)
        # already done: a requeue that came after the task's last write, or a duplicate job
        if (store.train_state(self.grid, cell) if self.kind == "train" else
                store.status(self.grid, cell, self.which)) == store.DONE:
            log.info("%s: %s already done in the store", cell.id, self.kind)
            return {f"{self.kind}_s": 0.0}
        outcome = (self._train(cell) if self.kind == "train" else
                   runner.run_task(self.grid, cell, self.kind, self.which))
        if "error" in outcome:
            raise RuntimeError(f"{cell.id}: {self.kind} failed: {outcome['error']} (traceback: "
                               f"{self.grid.run_dir(cell) / 'cell-error.log'})")
        log.info("%s: %s done: %s", cell.id, self.kind, outcome)
        return outcome

    def _train(self, cell: Cell) -> dict[str, Any]:
        """The training task under this job's own USR2/TERM handler (module docstring): a
        signal stops the run at the next step boundary, saved; then USR2 requeues through
        submitit's handler (which exits), and TERM fails the job."""
        usr = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
        submitit_handler = signal.getsignal(usr)     # checkpoint(), requeue, exit
        engine.STOP.clear()
        with stop_on_signals(engine.STOP, (usr, signal.SIGTERM)) as received:
            outcome = runner.run_task(self.grid, cell, "train", self.which)
        if not received or store.train_state(self.grid, cell) == store.DONE or "error" in outcome:
            return outcome                           # (a signal after the last step: done)
        name = signal.Signals(received[0]).name
        log.warning("%s: train stopped by %s, saved at %s", cell.id, name, self._saved_at())
        if received[0] == usr and callable(submitit_handler):
            submitit_handler(usr, None)              # requeues and exits (SystemExit)
        raise RuntimeError(f"{cell.id}: training stopped by {name} and saved at "
                           f"{self._saved_at()}; not requeued here (SLURM requeues a preempted "
                           "job; after a scancel, rerun the command to resume)")

    def _saved_at(self) -> str:
        last = RunDir(self.grid.run_dir(self.grid.by_id()[self.cell_id])).read_state().get("last")
        return f"epoch {last['epoch']} step {last['step']}" if last else "no checkpoint yet"

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Preempted or at the time limit: requeue the same task. A training run has saved
        at its last step boundary just before (see :meth:`_train`), an evaluation keeps its
        finished attacks, so nothing is saved here."""
        where = f"the step it saved ({self._saved_at()})" if self.kind == "train" else \
            "its last finished attack"
        log.warning("%s: %s interrupted; requeued, it resumes from %s", self.cell_id,
                    self.kind, where)
        return submitit.helpers.DelayedSubmission(self)


def _deps(cell: Cell, kind: str) -> list[str]:
    """Cells whose training this task waits for."""
    if kind == "train":
        return list(cell.needs)
    return ([cell.id] if cell.trained else []) + ([cell.source] if cell.source else [])


def submit(grid: Grid, cells: Sequence[Cell], which: str,
           options: SlurmOptions) -> dict[str, Any]:
    """Submit every task of ``cells`` that is neither done nor alive, with ``afterok`` on
    the jobs of the tasks it waits for; returns what was submitted, kept, blocked."""
    by_id = grid.by_id()
    live = alive(grid.results)
    job_of = {task: jid for task, (jid, _) in live.items()}
    summary: dict[str, Any] = {"submitted": {}, "queued": {}, "blocked": [], "done": 0}
    for cell in cells:
        tasks = [k for k in ("train", "eval") if not (
            (k == "train" and store.train_state(grid, cell) == store.DONE)
            or (k == "eval" and store.status(grid, cell, which) == store.DONE))]
        summary["done"] += not tasks
        for kind in tasks:
            if (cell.id, kind) in live:
                summary["queued"][f"{cell.id} {kind}"] = live[(cell.id, kind)][0]
                continue
            after, missing = [], []
            for dep in _deps(cell, kind):
                if store.train_state(grid, by_id[dep]) == store.DONE:
                    continue
                (after if (dep, "train") in job_of else missing).append(dep)
            if missing:
                summary["blocked"].append(f"{cell.id} {kind} (waits for {', '.join(missing)}, "
                                          "not trained nor queued)")
                continue
            jid = _submit_one(grid, cell, kind, which, options,
                              [job_of[(d, "train")] for d in after])
            job_of[(cell.id, kind)] = jid
            summary["submitted"][f"{cell.id} {kind}"] = jid
    return summary


def _submit_one(grid: Grid, cell: Cell, kind: str, which: str, options: SlurmOptions,
                after: list[str]) -> str:
    folder = grid.run_dir(cell) / "slurm"
    executor = submitit.SlurmExecutor(folder=folder)
    extra = {**options.extra}
    if after:
        extra.update(dependency="afterok:" + ":".join(after), kill_on_invalid_dep="yes")
    params = {"job_name": f"ciard:{cell.id}:{kind}", "partition": options.partition,
              "time": options.time_min, "cpus_per_task": options.cpus_per_job,
              "gpus_per_node": options.gpus_per_job, "mem": options.mem,
              "account": options.account, "qos": options.qos,
              "signal_delay_s": options.signal_delay_s, "additional_parameters": extra}
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    try:
        job = executor.submit(CellJob(grid, cell.id, kind, which))
    except subprocess.CalledProcessError as err:
        output = " ".join((err.output or b"").decode(errors="replace").split())
        raise UserError(f"sbatch refused the {kind} job of {cell.id}: {output or err}") from err
    path = grid.run_dir(cell) / "slurm.json"
    record = store.read_json(path) or {}
    record[kind] = {"job_id": job.job_id, "submitted": time.time(), "after": after,
                    "logs": str(folder.relative_to(grid.results))}
    atomic_write_json(path, record)
    return job.job_id


def status_lines(grid: Grid, which: str) -> list[str]:
    """One line per cell: its state in the store, and each task's job id and queue state."""
    recorded = jobs(grid.results)
    states = queue() if recorded else {}
    unknown = "state unknown (squeue is not on PATH)" if states is None else "gone from the queue"
    lines = []
    width = max((len(c.id) for c in grid.cells), default=10) + 2
    for cell in grid.cells:
        parts = []
        for kind in ("train", "eval"):
            jid = recorded.get((cell.id, kind))
            if jid is not None:
                parts.append(f"{kind} job {jid} {(states or {}).get(jid, unknown)}")
        lines.append(f"{cell.id:<{width}}{store.status(grid, cell, which):<9}"
                     + ("; ".join(parts) or "no SLURM job"))
    return lines


def wait(grid: Grid, timeout_s: float | None = None, max_poll_s: float = 30.0) -> bool:
    """Until no recorded job of the folder is alive (polling squeue, not submitit: without
    accounting its job state stays UNKNOWN); False when ``timeout_s`` passed first. The
    poll starts at 1 s and grows by half up to ``max_poll_s`` (squeue loads the controller)."""
    start, poll = time.monotonic(), 1.0
    while alive(grid.results):
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            return False
        time.sleep(poll)
        poll = min(1.5 * poll, max_poll_s)
    return True
