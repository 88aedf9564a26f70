"""Signals that ask a training run to stop cleanly: TERM (``scancel``, ``kill``, a
scheduler's time limit) and USR1/USR2 (what ``sbatch --signal=USR1@90`` and most job
schedulers send ahead of a limit or a preemption).

:func:`stop_on_signals` turns them into the training engine's stop request
(``ciard_bench.train.STOP``) for the time of a block: the run saves at the next step
boundary and returns, instead of dying mid-step with up to an epoch of work lost. The
handler only sets an event (nothing that could deadlock inside a signal handler), and the
previous handlers come back when the block ends.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGUSR2")
                     if hasattr(signal, name))


@contextmanager
def stop_on_signals(event: threading.Event,
                    signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[list[int]]:
    """Set ``event`` when one of ``signals`` arrives inside the block; yields the list of
    signal numbers received (in order). Only the main thread can install handlers: in any
    other thread the block runs without them (and the list stays empty)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def request_stop(signum: int, frame: object) -> None:
        received.append(signum)
        event.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in signals}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
