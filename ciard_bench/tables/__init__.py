"""``python -m ciard_bench.tables``: the paper's Tables 2-7 (and AutoAttack) from real runs.

One command builds the experiment grid of a preset (:mod:`.presets`: ``smoke``, ``quick``,
``paper``), trains what is missing in one process (finished cells are skipped, interrupted
ones resumed), evaluates each run with :func:`ciard_bench.evaluate.evaluate`, and writes

    results/<preset>/tableN.{csv,tex,md}   Tables 2-7 and table_aa (AutoAttack)
    results/<preset>/fig*.{png,pdf}        training curves (Fig. 3), robustness curves
    results/<preset>/grid.json             every cell: status, timings
    results/<preset>/index.html            the report (HTML, offline), and tableN_compact.tex
    results/<preset>/runs/<cell id>/       run folders (git-ignored): config, checkpoints,
                                           log, result, eval-<checkpoint>.json

Modules: ``presets`` (the scales), ``grid`` (cells, sharding), ``store`` (status, running a
cell), ``runner`` (the loop, the estimate), ``launchers`` (``--devices``, who owns a results
folder), ``slurm`` (``--launcher slurm``: one submitit job per task), ``frames``
(DataFrames), ``render`` (CSV, LaTeX, Markdown, captions, the paper's numbers),
``figures``, ``report`` (the HTML report and the compact LaTeX, from the written files),
``cli``.
"""
from __future__ import annotations

from .cli import main
from .frames import all_tables
from .grid import Cell, Grid, build_grid, parse_shard, shard_cells
from .presets import Preset, TeacherPlan, get_preset, list_presets, register_preset

__all__ = ["Cell", "Grid", "Preset", "TeacherPlan", "all_tables", "build_grid", "get_preset",
           "list_presets", "main", "parse_shard", "register_preset", "shard_cells"]
