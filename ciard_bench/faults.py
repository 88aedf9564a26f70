"""Fault injection for the kill-anywhere tests: ``CIARD_BENCH_KILL_AT=<point>:<n>``.

When the variable is set, the n-th time the process passes ``kill_point(<point>)`` it sends
itself SIGKILL — a real, uncatchable kill at a chosen moment (inside a training step, between
writing a checkpoint's temporary file and renaming it, during evaluation). Unset, a call
costs one dictionary lookup.
"""
from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("CIARD_BENCH_KILL_AT", "")
_POINT, _, _COUNT = _SPEC.partition(":")
_seen: dict[str, int] = {}


def kill_point(name: str) -> None:
    """SIGKILL this process if ``name`` is the configured point and its count is reached."""
    if name != _POINT:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == int(_COUNT or 1):
        os.kill(os.getpid(), signal.SIGKILL)
