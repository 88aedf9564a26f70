"""Signals that ask a training run to stop cleanly: TERM (``scancel``, ``kill``, a
scheduler's time limit) and USR1/USR2 (what ``sbatch --signal=USR1@90`` and most job
schedulers send ahead of a limit or a preemption).

:func:`stop_on_signals` turns them into the training engine's stop request
(``ciard_bench.train.STOP``) for the time of a block: the run saves at the next step
boundary and returns, instead of dying mid-step with up to an epoch of work lost. The
handler only sets an event (nothing that could deadlock inside a signal handler), and the
previous handlers come back when the block ends.

:class:`StopAtLook` is a stop request at a chosen step boundary, for the rehearsal
(``--rehearse``): the engine looks at its stop flag at fixed points (after each step, at
each epoch's end), so "the n-th look" is a step boundary known in advance. In a process
started by ``torchrun`` it comes from ``CIARD_BENCH_STOP_AT=<n>`` (:func:`stop_at_look`).
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Callable
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


class StopAtLook(threading.Event):
    """A stop request that fires at the ``n``-th look at it (``is_set``). ``fire`` makes the
    request (default: set this event; a SLURM rehearsal signals its own process instead, so
    the job's handler sets ``flag``, the engine's stop flag, and requeues); ``flag`` is the
    event whose state the looks report (default this one).

    Where the n-th look falls: one process looks after every step but an epoch's last, and
    after each epoch but the last; several processes (``torchrun``) look after every step
    (the gradient all-reduce carries the answer) and after each epoch but the last."""

    def __init__(self, n: int, fire: Callable[[], None] | None = None,
                 flag: threading.Event | None = None):
        super().__init__()
        self.n, self.seen = n, 0
        self.fire = fire or super().set
        self.flag = flag or self

    def is_set(self) -> bool:
        self.seen += 1
        if self.seen == self.n:
            self.fire()
        return threading.Event.is_set(self.flag)


STOP_AT_ENV = "CIARD_BENCH_STOP_AT"


def stop_at_look(event: threading.Event) -> threading.Event:
    """``event``, or with ``CIARD_BENCH_STOP_AT=<n>`` in the environment a
    :class:`StopAtLook` that sets ``event`` at the n-th look (signals still set ``event``)."""
    n = os.environ.get(STOP_AT_ENV)
    if not n:
        return event
    return StopAtLook(int(n), event.set, event)
