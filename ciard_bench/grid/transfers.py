"""How a grid's transfer attacks get their examples (:mod:`ciard_bench.evaluate.transfer`):
the mode of a results folder, which cells need a source, and the store of examples crafted
on a source, beside its run."""
from __future__ import annotations

import logging
from pathlib import Path

from ..attacks import get_attack
from ..evaluate import transfer
from .cells import Cell, Grid
from .locks import LOCK_DIR, file_lock

log = logging.getLogger("ciard_bench.tables")


def transfer_mode(grid: Grid) -> str:
    """How the grid's transfer examples are made: ``per_source`` (crafted once per source
    and shared, the default) or ``per_student`` (the released way)."""
    return grid.settings.get("transfer_examples", transfer.DEFAULT)


def folder_transfer_mode(results: Path, recorded: dict | None, asked: str | None) -> str:
    """The transfer mode of a run on ``results``: ``asked`` when given, else what its
    ``grid.json`` (``recorded``) says; a folder evaluated before the mode existed was evaluated
    per student and stays so, a new folder gets the default (per source)."""
    if asked is not None:
        return transfer.check_mode(asked)
    if recorded is None:
        return transfer.DEFAULT
    mode = recorded.get("settings", {}).get("transfer_examples")
    if mode is None:
        log.info("%s was evaluated before transfer examples could be shared: its transfer "
                 "attacks stay crafted per student (--transfer-examples per-source re-evaluates "
                 "them once per source)", results)
        return transfer.PER_STUDENT
    return transfer.check_mode(mode)


def has_transfer(cell: Cell) -> bool:
    """Whether ``cell`` runs transfer attacks (crafted on its ``source``)."""
    return bool(cell.source) and any(get_attack(a).kind == "transfer" for a in cell.attacks)


def transfer_store(grid: Grid, source: Cell) -> transfer.TransferStore:
    """The transfer examples crafted on ``source``, kept in its run folder. Crafting holds
    the source's transfer lock (``.locks/runs/<source id>.transfer.lock``), inside the
    evaluated cell's lock: sources are teachers, which take no other cell's lock, so the
    order is always student, then source, and no two processes wait on each other."""
    lock = grid.results / LOCK_DIR / "runs" / f"{source.id}.transfer.lock"
    return transfer.TransferStore(
        grid.run_dir(source),
        lock=lambda: file_lock(lock, f"transfer examples of {source.id}"))
