"""What the tests that drive the real SLURM share: the skip when there is none, polling,
a job's queue state, a run's last checkpoint."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

_skip_without_slurm = pytest.mark.skipif(
    shutil.which("sbatch") is None,
    reason="SLURM's sbatch is not on PATH (.ci/slurm-start starts a single-node SLURM; CI runs "
    "these tests)")


def needs_slurm(test):
    """Skipped without SLURM; marked ``slurm`` (conftest: these run in one test process)."""
    return pytest.mark.slurm(_skip_without_slurm(test))


def wait_for(what: str, check, timeout: float, poll: float = 0.1):
    """Poll ``check()`` until it returns something true; fail naming ``what`` after ``timeout``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def queue_state(job: str) -> str:
    """The job's state in ``squeue`` (finished ones too), '' once SLURM has forgotten it."""
    return subprocess.run(["squeue", "-h", "-t", "all", "-j", job, "-o", "%T"],
                          capture_output=True, text=True, timeout=30).stdout.strip()


def last_checkpoint(run: Path) -> dict:
    """The run's last checkpoint entry (epoch, step, file), {} before the first."""
    try:
        return json.loads((run / "run.json").read_text()).get("last", {})
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
