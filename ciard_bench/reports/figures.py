"""Figures (matplotlib, Agg backend, PNG and PDF):

* ``fig3_training_<dataset>``: Fig. 3, the (first seed's) CIARD run's student and both teachers, clean
  and PGD_TRADES accuracy on the per-epoch evaluation subset (the engine logs the
  teachers when ``eval_teachers`` is on, which the grid sets for the first student's
  CIARD cell; the robust teacher changes under ITT);
* ``fig_robustness_<student>_<dataset>``: accuracy against eps for every method of a
  table (first seed): the evaluation suite's eps sweep (PGD_SAT, 20 steps of max(2/255, 2.5 eps/20),
  on the first ``sanity_examples`` test points) that each student evaluation runs.

The PDF carries no creation date, so regenerating it gives the same bytes.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

from ..checkpoint import atomic_write_bytes
from ..grid import store
from .frames import datasets_of, seed_samples, students_of
from ..grid.cells import Grid, dataset_label, dataset_slug
from ..grid.presets import STUDENT_LABELS, method_label, row_methods
from .render import DATASET_NAMES


def _shown(dataset: str) -> str:
    """A dataset as a figure's title names it (an npz file by its stem)."""
    return DATASET_NAMES.get(dataset, dataset_label(dataset))


def _file_part(dataset: str) -> str:
    """A dataset as a figure's file name holds it (an npz file by its stem)."""
    return dataset_slug(dataset_label(dataset))


def _pyplot():  # Agg before pyplot: no display on servers and CI
    # heavy import (matplotlib), and the backend must be chosen before pyplot: kept lazy
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, stem: Path) -> list[Path]:
    """Lay out, write ``stem``.png and .pdf, close the figure."""
    fig.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path, kwargs in zip(paths, ({"dpi": 120, "metadata": {"Software": None}},
                                    {"metadata": {"CreationDate": None, "Creator": None,
                                                  "Producer": None}})):
        buf = io.BytesIO()  # rendered in memory, then written atomically like every other file
        fig.savefig(buf, format=path.suffix[1:], **kwargs)
        atomic_write_bytes(path, buf.getvalue())
    _pyplot().close(fig)
    return paths


def training_curves(grid: Grid, out: Path) -> list[Path]:
    """Fig. 3 for each dataset whose CIARD cell logged its teachers."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator  # matplotlib: lazy, see _pyplot
    written = []
    for cell in grid.cells:
        if not (cell.config and cell.config.eval_teachers and cell.kind == "student"
                and cell.seed == grid.seeds[0]):      # one figure: the first seed's run
            continue
        log_path = grid.run_dir(cell) / "log.jsonl"
        if store.train_state(grid, cell) != store.DONE or not log_path.is_file():
            continue
        records = [json.loads(x) for x in log_path.read_text().splitlines() if x.strip()]
        records = [r for r in records if "clean_acc" in r]
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharex=True)
        for ax, key, title in ((axes[0], "clean_acc", "Clean"),
                               (axes[1], "pgd_trades_acc", "PGD_TRADES")):
            for prefix, label, style in (("", f"student ({STUDENT_LABELS[cell.student]})", "-o"),
                                         ("clean_teacher_", "clean teacher", "--s"),
                                         ("robust_teacher_", "robust teacher (ITT)", ":^")):
                pts = [(r["epoch"], r[prefix + key]) for r in records if prefix + key in r]
                if pts:
                    ax.plot(*zip(*pts), style, label=label, markersize=4)
            ax.set(title=f"{title} accuracy", xlabel="epoch", ylabel="accuracy (%)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"CIARD training, {_shown(cell.dataset)} "
                     f"({grid.preset.name} preset)", fontsize=10)
        written += _save(fig, out / f"fig3_training_{_file_part(cell.dataset)}")
    return written


def robustness_curves(grid: Grid, out: Path, which: str, suffix: str = "") -> list[Path]:
    """Accuracy against eps, one line per method, for each student and dataset."""
    plt = _pyplot()
    written = []
    for student in students_of(grid):
        for dataset in datasets_of(grid):
            cells = [c for c in grid.cells if c.kind == "student" and c.student == student
                     and c.dataset == dataset and c.seed == grid.seeds[0]]   # the first seed's
            fig, ax = plt.subplots(figsize=(5.5, 3.8))
            drawn, points = 0, 0
            for cell in cells:
                ev = store.read_json(store.eval_path(grid, cell, which)) \
                    if store.status(grid, cell, which) == store.DONE else None
                curve = (ev or {}).get("robustness_curve")
                if not curve:
                    continue
                eps = [e * 255 for e in curve["eps"]]
                ax.plot(eps, curve["accuracy"], "-o", markersize=3,
                        label=method_label(cell.method))
                drawn, points = drawn + 1, curve.get("n", 0)
            if not drawn:
                plt.close(fig)
                continue
            ax.set_xscale("symlog", linthresh=2)
            ax.set(xlabel="eps (x 1/255)", ylabel="accuracy (%)",
                   title=f"{STUDENT_LABELS[student]}, {_shown(dataset)}: "
                         f"PGD_SAT against eps, first {points} test points, seed "
                         f"{grid.seeds[0]} ({grid.preset.name})")
            ax.title.set_fontsize(9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, ncol=2)
            written += _save(fig, out / f"fig_robustness_{student}_{_file_part(dataset)}{suffix}")
    return written


def seed_spread(grid: Grid, out: Path, which: str, suffix: str = "") -> list[Path]:
    """Every seed's Clean and PGD_TRADES accuracy per method and student (one figure per
    dataset); drawn once some method has every seed finished."""
    plt = _pyplot()
    written = []
    students = students_of(grid)
    for dataset in datasets_of(grid):
        fig, axes = plt.subplots(1, len(students), figsize=(5.2 * len(students), 3.6),
                                 squeeze=False)
        drawn = 0
        for ax, student in zip(axes[0], students):
            methods = row_methods([c.method for c in grid.cells
                                   if c.student == student and c.kind == "student"])
            for i, method in enumerate(methods):
                cells = [c for c in grid.cells if c.kind == "student" and c.student == student
                         and c.method == method and c.dataset == dataset]
                for what, colour, dx in (("Clean", "tab:blue", -0.15),
                                         ("Robust", "tab:red", 0.15)):
                    values = [s.value for s in seed_samples(grid, cells, which, "pgd_trades", what)]
                    if not values:
                        continue
                    drawn += 1
                    ax.scatter([i + dx] * len(values), values, s=14, color=colour, alpha=0.8,
                               label=("Clean" if what == "Clean" else "PGD_TRADES")
                               if i == 0 else None)
                    ax.hlines(sum(values) / len(values), i + dx - 0.12, i + dx + 0.12,
                              color=colour)
            ax.set_xticks(range(len(methods)), [method_label(m) for m in methods], rotation=45,
                          ha="right", fontsize=8)
            ax.set(ylabel="accuracy (%)", title=f"{STUDENT_LABELS[student]}: "
                   f"{len(grid.seeds)} seed(s), dots = seeds, bars = mean")
            ax.title.set_fontsize(9)
            ax.grid(alpha=0.3, axis="y")
        if not drawn:
            plt.close(fig)
            continue
        axes[0][0].legend(fontsize=8)
        fig.suptitle(f"Spread over seeds, {_shown(dataset)} "
                     f"({grid.preset.name} preset)", fontsize=10)
        written += _save(fig, out / f"fig_seeds_{_file_part(dataset)}{suffix}")
    return written
