"""The key of a cell's evaluation: everything its stored result depends on (attacks,
points, settings, the checkpoint's sha256, its teachers by content or name). A stored result
whose key differs is stale, and :mod:`.store` evaluates the cell again."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from ..attacks import get_attack
from ..evaluate import transfer
from ..evaluate.reuse import reuse_from
from ..runs import RunDir, local_path, teacher_sha256
from .cells import Cell, Grid
from .transfers import has_transfer, transfer_mode


def eval_key(grid: Grid, cell: Cell, which: str, by_content: bool = True) -> dict[str, Any]:
    """Everything an evaluation result depends on; a stored result with another key is stale.
    A teacher given as a file (``PATH``, ``ARCH=PATH``) enters by its content's sha256, so the
    file may move (another machine, another path given) without an evaluation made again;
    ``rb:NAME`` enters by its name. (``by_content=False``: the key as written before, with the
    path as given, still accepted by :func:`status`. Results evaluated before transfer
    examples could be shared have no ``transfer_examples`` in their key: they were made per
    student, and stay valid for that mode.)"""
    p = grid.preset
    shared = has_transfer(cell) and transfer_mode(grid) == transfer.PER_SOURCE
    ident = functools.partial(_checkpoint_id, grid, by_content=by_content)
    return {**({"transfer_examples": transfer.PER_SOURCE} if shared else {}),
            "attacks": list(cell.attacks), "n_examples": p.n_examples, "seed": cell.seed,
            "eps": cell.config.eps if cell.config else 8 / 255, "which": which,
            "overrides": {a: p.attack_overrides[a] for a in cell.attacks
                          if a in p.attack_overrides},
            "sanity_examples": p.sanity_examples if cell.kind != "ablation" else None,
            "checkpoint": ident(cell, which),
            "spec": _spec_id(grid, cell.spec) if by_content else cell.spec,
            "source": ident(grid.by_id()[cell.source], "best") if has_transfer(cell) else None}


def _spec_id(grid: Grid, spec: str | None) -> str | None:
    """An external teacher as an evaluation key holds it: a file by ``sha256:HEX`` (with its
    ``ARCH=`` when given so), ``rb:NAME`` and a file that cannot be read as given."""
    sha = teacher_sha256(spec, grid.results)
    if sha is None:
        return spec
    arch, sep, _ = str(spec).partition("=")
    named = sep and not Path(local_path(str(spec), grid.results)).exists()
    return f"{arch}=sha256:{sha}" if named else f"sha256:{sha}"


def _checkpoint_id(grid: Grid, cell: Cell, which: str, by_content: bool = True) -> str | None:
    if not cell.trained:
        return _spec_id(grid, cell.spec) if by_content else cell.spec
    entry = RunDir(grid.run_dir(cell)).read_state().get("best" if cell.kind == "teacher" else which)
    return entry["sha256"] if entry else None


def reusable(grid: Grid, cell: Cell, which: str, key: dict[str, Any],
             stored: dict | None) -> dict | None:
    """What of the stored evaluation ``stored`` a new one with ``key`` (today's
    :func:`eval_key`) takes as it is (the engine's ``reuse``): when the keys differ only in
    how the transfer examples are made (a folder evaluated per student, now per source, or
    back), its other attacks and its expensive checks (eps sweep, noise) ran on the same
    checkpoint, points and settings, and only the transfer attacks run again.
    ``None`` when the key is today's (nothing to do) or differs in anything else."""
    if not stored or not has_transfer(cell):
        return None
    was = stored.get("tables_key") or {}
    now = [key, eval_key(grid, cell, which, by_content=False)]
    if was in now or _without_mode(was) not in [_without_mode(k) for k in now]:
        return None
    return reuse_from(stored, [a for a in cell.attacks if get_attack(a).kind != "transfer"
                               and a in stored.get("attacks", {})])


def _without_mode(key: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in key.items() if k != "transfer_examples"}
