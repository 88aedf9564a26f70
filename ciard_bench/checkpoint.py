"""Files that never lie: atomic writes, sha256 records, and checkpoint loads that cannot run code.

Every file the project writes goes to a temporary file in the same folder first and is
renamed over the target (``os.replace`` is atomic on POSIX and Windows), so a crash leaves
either the old file or the new one, never half of one. The temporary file is created with
mode 0666 filtered by the process umask (and the folder's default ACL), exactly as a plain
``open(path, "w")`` would create it, so results stay readable by the group on a shared
cluster (``tempfile.mkstemp`` would make every file 0600). Every checkpoint load goes through
:func:`load_checkpoint`, which uses ``torch.load(weights_only=True)`` and turns the usual
failures (an HTML page saved as ``.pt``, a truncated download, a pickle that would execute
code) into a one-line :class:`~ciard_bench.errors.UserError`.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import pickle
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .faults import kill_point

FORMAT = "ciard-bench/1"


# O_EXCL: never reuse a name; O_NOFOLLOW/O_BINARY/O_NOINHERIT where they exist (as mkstemp)
_TEMP_FLAGS = (os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
               | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOINHERIT", 0))


def create_temporary(path: str | os.PathLike) -> tuple[int, str]:
    """A new ``.<name>.<random>.tmp`` beside ``path``, opened for writing: ``(fd, name)``.

    Like ``tempfile.mkstemp`` but with the mode an ordinary ``open()`` gives (0666 under the
    umask, or the folder's default ACL) instead of 0600. Reading the umask is not needed: the
    kernel applies it, which also avoids ``os.umask``'s set-and-restore race between threads.
    """
    path = Path(path)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, _TEMP_FLAGS, 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {str(path)!r}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: the old file stays whole until the new one is.

    Any failure (a full disk above all) removes the temporary file and raises a one-line
    ``UserError`` naming the path (and, for a full disk, the space left).
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = create_temporary(path)
        try:
            _write_all(fd, data)
            os.fsync(fd)                # a full disk may only show here (or at close)
        finally:
            os.close(fd)
        kill_point("atomic_write")      # tests: a kill between writing and renaming
        os.replace(tmp, path)
    except OSError as err:
        _remove(tmp)                    # before measuring the space left: it frees what it held
        raise _write_error(path, err) from err
    finally:
        _remove(tmp)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _remove(tmp: str | None) -> None:
    if tmp is not None and os.path.exists(tmp):
        os.unlink(tmp)


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _write_error(path: Path, err: OSError) -> UserError:
    reason = err.strerror or str(err)
    if err.errno in _DISK_FULL:
        try:
            free = f"{_size(shutil.disk_usage(path.parent).free)} free"
        except OSError:
            free = "free space unknown"
        return UserError(f"cannot write {str(path)!r}: {reason} ({free} in {str(path.parent)!r}); "
                         "the previous files are intact: free some space and run the command "
                         "again (a training run continues with --resume)")
    return UserError(f"cannot write {str(path)!r}: {reason}; choose a writable output folder")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def json_text(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON (RFC 8259): NaN and +-inf, which JSON has no numbers for (Python would write
    the non-standard ``NaN``/``Infinity`` that strict parsers reject), are written as null."""
    return json.dumps(_finite_or_null(obj), indent=indent, default=str, allow_nan=False)


def _finite_or_null(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_null(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented strict JSON (see :func:`json_text`), atomically."""
    atomic_write_text(path, json_text(obj) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_SHA256_SEEN: dict[tuple, str] = {}


def cached_sha256(path: str | os.PathLike) -> str:
    """:func:`sha256_file`, computed once per process for a file that has not changed since
    (same path, inode, size and modification time): a grid asks for its external teachers'
    identities at every status check, and a WRN-70-16 file is a gigabyte."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _SHA256_SEEN:
        _SHA256_SEEN[key] = sha256_file(path)
    return _SHA256_SEEN[key]


def save_checkpoint(obj: Any, path: str | os.PathLike) -> str:
    """``torch.save`` ``obj`` to ``path`` atomically; returns the file's sha256."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def _sniff(path: Path) -> None:
    with open(path, "rb") as fh:
        head = fh.read(512)
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        raise UserError(f"checkpoint {str(path)!r} is an HTML page, not a PyTorch file "
                        "(a failed Google-Drive download?); download it again")
    if not head:
        raise UserError(f"checkpoint {str(path)!r} is empty; expected a PyTorch .pt file")


def load_checkpoint(path: str | os.PathLike, expected_sha256: str | None = None) -> Any:
    """Load a PyTorch file with ``weights_only=True`` onto the CPU.

    Raises a one-line ``UserError`` when the file is missing, an HTML page, truncated,
    not a PyTorch file, holds objects that would run code when unpickled, or does not
    match ``expected_sha256``.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist; expected a .pt/.pth file")
    _sniff(path)
    if expected_sha256 is not None and sha256_file(path) != expected_sha256:
        raise UserError(f"checkpoint {str(path)!r} does not match its recorded sha256 "
                        f"{expected_sha256[:12]}...; it was modified or corrupted")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise UserError(f"checkpoint {str(path)!r} holds objects that could run code when "
                            f"loaded ({first[:120]}); refusing it (weights_only=True)") from err
        raise UserError(f"checkpoint {str(path)!r} is not a PyTorch file ({first[:120]})") from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"checkpoint {str(path)!r} is truncated or corrupt ({first[:120]}); "
                        "expected a complete PyTorch file") from err
