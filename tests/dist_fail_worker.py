"""Run by tests/test_distributed_faults.py under torchrun (2 gloo processes); not a test itself.

``python -m ciard_bench.train`` (its ``main``, arguments from ``argv``) with a fault on ONE
rank, chosen by ``FAIL_RANK`` at its step ``FAIL_STEP``: ``FAIL=raise`` raises an error
there (as a full disk or a bug would), ``FAIL=kill`` SIGKILLs the process, ``FAIL=term``
sends the process SIGTERM (as if only that rank got the signal) and goes on. The time of
the fault (``time.time()``) is written to ``FAIL_STAMP`` first.
"""
import os
import signal
import sys
import time
from pathlib import Path

from ciard_bench import train as engine

real_step, steps = engine.train_step, [0]


def step(*args, **kwargs):
    steps[0] += 1
    if steps[0] == int(os.environ["FAIL_STEP"]) and os.environ["RANK"] == os.environ["FAIL_RANK"]:
        Path(os.environ["FAIL_STAMP"]).write_text(repr(time.time()))
        if os.environ["FAIL"] == "raise":
            raise OSError(28, "No space left on device (injected)")
        os.kill(os.getpid(), signal.SIGKILL if os.environ["FAIL"] == "kill" else signal.SIGTERM)
    return real_step(*args, **kwargs)


engine.train_step = step
sys.exit(engine.main(sys.argv[1:]))
