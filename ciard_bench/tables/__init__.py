"""``python -m ciard_bench.tables``: the paper's Tables 2-7 (and AutoAttack, and the
methods beyond the paper) from real runs.

One command builds the experiment grid of a preset (:mod:`ciard_bench.grid.presets`: ``smoke``, ``quick``,
``paper``), trains what is missing in one process (finished cells are skipped, interrupted
ones resumed), evaluates each run with :func:`ciard_bench.evaluate.evaluate`, and writes

    results/<preset>/tableN.{csv,tex,md}   Tables 2-7 and table_aa (AutoAttack), each with
                                           tableN_seeds.csv; table_beyond: the methods beyond
                                           the paper's ten (IAD, Fair-*, PeerAiD, a plugin's),
                                           after CIARD, when the grid has any (Tables 3-6 and
                                           table_aa keep the paper's rows)
    results/<preset>/fig*.{png,pdf}        training curves (Fig. 3), robustness curves
    results/<preset>/grid.json             every cell: status, timings
    results/<preset>/index.html            the report (HTML, offline), and tableN_compact.tex
    results/<preset>/runs/<cell id>/       run folders (git-ignored): config, checkpoints,
                                           log, result, eval-<checkpoint>.json

The command lives here (``cli``); running the grid is :mod:`ciard_bench.grid` (presets,
cells, store, runner, launchers, slurm, rehearsal) and rendering what it wrote is
:mod:`ciard_bench.reports` (frames, render, figures, the HTML report, the rehearsal
report).
"""
from __future__ import annotations

from ..grid import (Cell, Grid, Preset, TeacherPlan, build_grid, get_preset, list_presets,
                    parse_shard, register_preset, shard_cells)
from ..reports.frames import all_tables
from .cli import main

__all__ = ["Cell", "Grid", "Preset", "TeacherPlan", "all_tables", "build_grid", "get_preset",
           "list_presets", "main", "parse_shard", "register_preset", "shard_cells"]
