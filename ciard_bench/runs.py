"""A run folder: resolved config, checkpoints, the JSONL log, the result — all written atomically.

Layout of ``<out>/``::

    config.json            the resolved TrainConfig
    run.json               the commit point: which checkpoint files are current, their sha256
    checkpoints/last-eEEEE-sSSSSSS.pt   full training state (resume)
    checkpoints/best-eEEEE.pt           the student with the best (clean + PGD_TRADES)/2
    log.jsonl              one record per epoch
    result.json            final metrics + provenance

A checkpoint is written under a new name first and only then made current by rewriting
``run.json``; the file it replaces is deleted afterwards. A kill at any moment therefore
leaves ``run.json`` pointing to complete files whose sha256 it records.

Paths inside a results folder (:func:`in_results`): a grid's cell names its own run folder
(``out``) and the run folders of the teachers the grid trained as ``results:runs/<cell id>``,
relative to the results folder its records are in, so a results folder can be moved or
copied (another path, another machine) and still re-render, resume and check its cells.
Whoever runs such a config says which folder that is (``train(..., results=DIR)``,
``python -m ciard_bench.train --results-dir DIR``); :func:`local_path` gives the path this
process opens. Every other path (``--out``, a teacher file, ``npz:PATH``, ``--data-root``) is
kept as the user gave it: relative to the working directory.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .checkpoint import (atomic_write_json, atomic_write_text, cached_sha256, json_text,
                         load_checkpoint, save_checkpoint)
from .errors import UserError


RESULTS = "results:"   # the prefix of a path relative to the results folder of the record


def in_results(relative: str | Path) -> str:
    """How a record names a path inside its results folder: ``results:runs/<cell id>``."""
    rel = Path(relative)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"{str(relative)!r} is not a path inside a results folder")
    return RESULTS + rel.as_posix()


def is_in_results(value: Any) -> bool:
    """Whether ``value`` is a path named relative to a results folder (:func:`in_results`)."""
    return isinstance(value, str) and value.startswith(RESULTS)


def local_path(value: Any, results: str | Path | None) -> Any:
    """A recorded path as this process opens it: ``results:REL`` -> ``<results>/REL``; any
    other value (a path as the user gave it, ``rb:NAME``, ``ARCH=PATH``, None) unchanged.
    A ``results:`` path without a results folder is a one-line error."""
    if not is_in_results(value):
        return value
    if results is None:
        raise UserError(f"{value!r} is a path inside a results folder (a grid cell's config); "
                        "accepted: the folder that holds it (python -m ciard_bench.train "
                        "--results-dir DIR, or run the grid: python -m ciard_bench.tables)")
    return str(Path(results) / value[len(RESULTS):])


class RunDir:
    def __init__(self, out: str | Path):
        self.root = Path(out)
        self.ckpt_dir = self.root / "checkpoints"

    @property
    def state_path(self) -> Path:
        return self.root / "run.json"

    def exists(self) -> bool:
        return self.state_path.is_file()

    def read_state(self) -> dict[str, Any]:
        if not self.exists():
            return {}
        try:
            return json.loads(self.state_path.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"{str(self.state_path)!r} is not valid JSON; the run folder is damaged") from err

    def clean_temporaries(self) -> None:
        """Remove temporary files a killed writer left (never mistaken for complete files)."""
        for folder in (self.root, self.ckpt_dir):
            if folder.is_dir():
                for tmp in folder.glob(".*.tmp"):
                    tmp.unlink(missing_ok=True)

    def _commit(self, state: dict[str, Any]) -> None:
        keep = {entry["file"] for entry in (state.get("last"), state.get("best")) if entry}
        atomic_write_json(self.state_path, state)
        for stale in self.ckpt_dir.glob("*.pt"):
            if stale.name not in keep:
                stale.unlink(missing_ok=True)

    def save(self, last: dict[str, Any], *, epoch: int, step: int, best: dict[str, Any] | None,
             log: list[dict[str, Any]], extra_state: dict[str, Any]) -> None:
        """Write the last (and, if given, a new best) checkpoint, the log, then commit."""
        state = self.read_state()
        name = f"last-e{epoch:04d}-s{step:06d}.pt"
        sha = save_checkpoint(last, self.ckpt_dir / name)
        state["last"] = {"file": name, "sha256": sha, "epoch": epoch, "step": step}
        if best is not None:
            bname = f"best-e{epoch:04d}.pt"
            state["best"] = {"file": bname, "sha256": save_checkpoint(best, self.ckpt_dir / bname),
                             "epoch": epoch, "metrics": best.get("metrics")}
        state.update(extra_state)
        self.write_log(log)
        self._commit(state)

    def write_log(self, log: list[dict[str, Any]]) -> None:
        atomic_write_text(self.root / "log.jsonl", "".join(json_text(r, indent=None) + "\n" for r in log))

    def load(self, which: str = "last") -> dict[str, Any] | None:
        """The current ``last``/``best`` checkpoint, sha256-verified; None when there is none."""
        entry = self.read_state().get(which)
        if not entry:
            return None
        return load_checkpoint(self.ckpt_dir / entry["file"], expected_sha256=entry["sha256"])


def local_dataset(name: Any, results: str | Path | None) -> Any:
    """A dataset name as this process opens it: ``npz:results:REL`` (a file the grid wrote
    inside its results folder, as a rehearsal's synthetic stand-in) -> ``npz:<results>/REL``;
    any other name unchanged."""
    if isinstance(name, str) and name.startswith("npz:"):
        return "npz:" + str(local_path(name[4:], results))
    return name


def check_writable(folder: str | Path) -> None:
    """Fail early, with one line, when ``folder`` cannot be created or written (writes nothing)."""
    folder = Path(folder).absolute()
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"output folder {str(folder)!r} is not writable ({str(probe)!r} is "
                        f"{'not a folder' if not probe.is_dir() else 'read-only'}); choose a writable --out")


def resolve_checkpoint(path: str | Path, which: str = "best") -> tuple[Path, str | None]:
    """A checkpoint file, or a run folder (its current ``best``/``last``) -> (file, sha256)."""
    path = Path(path)
    if path.is_dir():
        entry = RunDir(path).read_state().get(which)
        if not entry:
            raise UserError(f"run folder {str(path)!r} has no {which} checkpoint yet "
                            f"(no run.json entry); train it first or pass a .pt file")
        return path / "checkpoints" / entry["file"], entry["sha256"]
    return path, None


TEACHER_KEYS = ("clean_teacher", "robust_teacher")


def teacher_sha256(spec: str | None, results: str | Path | None = None) -> str | None:
    """The sha256 of the weights a teacher spec names (``PATH``, ``ARCH=PATH``, a training run
    folder: its best checkpoint, as recorded in its ``run.json``), so a run is identified by
    its teachers' content, not by where they sit; None for ``rb:NAME`` (a name) and no spec."""
    if not spec or str(spec).startswith("rb:"):
        return None
    spec = str(spec)
    path = local_path(spec, results)
    if not Path(path).exists() and "=" in spec:
        path = local_path(spec.partition("=")[2], results)
    if not Path(path).exists():
        return None                 # the loader says what is wrong with it
    file, sha = resolve_checkpoint(path, "best")
    return sha or cached_sha256(file)


def teacher_identities(cfg: Any, results: str | Path | None = None) -> dict[str, str]:
    """``{key: sha256}`` of the teachers ``cfg`` gives as files (``TEACHER_KEYS``)."""
    out = {}
    for key in TEACHER_KEYS:
        sha = teacher_sha256(getattr(cfg, key, None), results)
        if sha is not None:
            out[key] = sha
    return out
