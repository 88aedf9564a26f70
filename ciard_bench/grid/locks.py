"""File locks for a results folder that several processes write at once.

``fcntl.flock`` on a small lock file under ``<results>/.locks/``: the kernel releases the
lock when its holder exits in any way (SIGKILL, a SLURM preemption, an out-of-memory kill),
so a dead process never leaves a stale lock behind and nothing has to be cleaned up. Lock
files are kept after use: removing one while another process waits on it would let two
processes hold "the" lock at once (each on its own inode).

A lock is re-entrant within a process (a nested ``with`` on the same file only counts), so
a caller that already holds the store's lock may call a function that takes it too; two
*open* descriptions of one file in one process would otherwise deadlock (flock locks
belong to an open file description, not to a process).

Shared file systems: Linux NFS clients (v4; v3 with lockd) map flock onto NFS byte-range
locks, so the lock holds across the nodes of a cluster; Lustre needs the ``flock`` mount
option and a ``local_lock=`` / ``nolock`` NFS mount makes locks node-local. Where the
platform has no ``fcntl`` (Windows) the lock is a no-op with a warning: one writer per
results folder there.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:            # Windows: no flock
    fcntl = None

log = logging.getLogger("ciard_bench.tables")
LOCK_DIR = ".locks"
_held: dict[str, tuple[int, int]] = {}     # this process's locks: real path -> (fd, depth)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, what: str, level: int = logging.INFO) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created with the mode ``open()`` gives) for the
    ``with`` block; wait, with a log line at ``level`` naming the holder, while another
    process has it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(path)
    if key in _held:                       # re-entered in this process
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _held[key]
            _held[key] = (fd, depth - 1)
        return
    if fcntl is None:
        log.warning("no file locks on this platform: run one writer per results folder")
        yield
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:                # a group member's lock file under umask 027
        fd = os.open(path, os.O_RDONLY)   # flock needs no write access
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.log(level, "%s is held by %s; waiting for it", what, _holder(fd) or "another process")
            fcntl.flock(fd, fcntl.LOCK_EX)
        _write_holder(fd)
        _held[key] = (fd, 1)
        try:
            yield
        finally:
            _held.pop(key, None)
    finally:
        os.close(fd)                       # closing the last descriptor releases the lock


def _forget_in_child() -> None:
    """A forked child does not hold its parent's locks: close its copies of their
    descriptors (the lock lasts while any descriptor of it is open)."""
    for fd, _ in _held.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def _holder(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _write_holder(fd: int) -> None:
    """``pid <pid> on <host>`` into the lock file, for a waiting process's message only
    (the lock itself is the flock, not the content)."""
    text = f"pid {os.getpid()} on {socket.gethostname()}\n".encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, text, 0)
    except OSError:
        pass                               # a read-only lock file still locks
