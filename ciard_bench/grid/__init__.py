"""Running an experiment grid: what ``python -m ciard_bench.tables`` trains and evaluates.

This package runs cells and records them; it renders nothing (that is
:mod:`ciard_bench.reports`, which reads what this package writes).

Modules: ``presets`` (the scales: ``smoke``, ``quick``, ``paper``), ``cells`` (the grid's
cells, sharding), ``store`` (a cell's status, training and evaluating it, ``grid.json``),
``locks`` (file locks shared by processes), ``runner`` (the loop over cells, the estimate),
``launchers`` (``--devices``, who owns a results folder), ``slurm`` (``--launcher slurm``),
``procs`` (several processes per training cell), ``rehearsal`` and ``measure``
(``--rehearse``: every cell for a few steps at full size, measured).
"""
from __future__ import annotations

from .cells import Cell, Grid, build_grid, parse_shard, shard_cells
from .presets import Preset, TeacherPlan, get_preset, list_presets, register_preset

__all__ = ["Cell", "Grid", "Preset", "TeacherPlan", "build_grid", "get_preset", "list_presets",
           "parse_shard", "register_preset", "shard_cells"]
