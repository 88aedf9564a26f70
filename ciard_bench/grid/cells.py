"""The experiment grid: one :class:`Cell` per run the tables need, and how to shard it.

Cells, in the order they are run (teachers first: the students distil from them):

* ``teacher``  -- ``<dataset>/teachers/<clean|robust>/seed<k>``: Table 2; trained by the
  pipeline (``standard`` / ``trades``) unless the preset names an existing spec (``rb:NAME``,
  a file: then one cell, ``.../seed0``, serves every seed);
* ``student``  -- ``<dataset>/<student>/<method>/seed<k>``: Tables 3-6 and the AutoAttack table;
* ``ablation`` -- ``<dataset>/resnet18/ciard-<ablation>/seed<k>``: Table 7 (first dataset only,
  as the paper; its ``+ITT+push`` row is the Table 3 CIARD cell).

Seeds are a grid axis: every trained cell runs once per seed (``preset.seed``,
``preset.seed + 1``, ...), and the students of seed k distil from the teachers of seed k, so
the spread over seeds holds the teachers' training noise too. Each cell's run folder is
``<results>/runs/<cell id>``; its config names it, and the run folders of the teachers the
grid trained, relative to the results folder (``results:runs/<cell id>``,
:func:`ciard_bench.runs.in_results`), so a results folder moved or copied elsewhere still
matches its grid. Paths the user gave (``--data-root``, ``npz:PATH``, ``--model-dir``, a
teacher file) are kept as given.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..config import TrainConfig
from ..errors import UserError
from ..methods import get_method, list_methods
from ..models import TEACHER_METHODS
from ..runs import in_results
from ..utils import positive_int
from .presets import (ABLATION_ATTACKS, ABLATIONS, STUDENT_ATTACKS, TEACHER_ATTACKS, Preset,
                      method_label, row_methods)

KINDS = ("teacher", "student", "ablation")


@dataclass
class Cell:
    """One run of the grid: how to train it (``config``, None for an external teacher) and
    which attacks evaluate it."""

    id: str
    kind: str                        # teacher | student | ablation
    dataset: str
    row: str                         # table row: teacher label, method label or ablation
    student: str | None = None       # paper student label (resnet18, mobilenet_v2)
    method: str | None = None
    role: str | None = None          # teacher cells: clean | robust
    seed: int = 0
    config: TrainConfig | None = None
    spec: str | None = None          # external teacher spec (not trained)
    attacks: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()      # ids of the teacher cells this cell distils from
    source: str | None = None        # id of the cell whose model crafts transfer attacks

    @property
    def trained(self) -> bool:
        return self.config is not None


@dataclass
class Grid:
    preset: Preset
    results: Path
    cells: list[Cell] = field(default_factory=list)
    settings: dict = field(default_factory=dict)   # device, data_root, model_dir, download
    seeds: tuple[int, ...] = (0,)

    def by_id(self) -> dict[str, Cell]:
        return {c.id: c for c in self.cells}

    def run_dir(self, cell: Cell) -> Path:
        return self.results / "runs" / cell.id


def dataset_slug(dataset: str) -> str:
    """A folder-safe name: ``npz:/a/b/mini.npz`` -> ``npz-mini``."""
    if dataset.startswith("npz:"):
        dataset = "npz-" + Path(dataset[4:]).stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset)


def dataset_label(dataset: str) -> str:
    """How tables, captions and figures name a dataset: ``npz:/a/b/mini.npz`` -> ``mini``
    (the file's stem: no directory of the user's in a file meant for a paper); any other
    name as it is."""
    return Path(dataset[4:]).stem if dataset.startswith("npz:") else dataset


def spec_label(spec: str) -> str:
    """How tables name a teacher the user gave: ``rb:NAME`` as it is, a file or run folder
    by its name (``resnet8=/a/b/t.pt`` -> ``resnet8=t.pt``): no directory of the user's in a
    file meant for a paper (the config records the spec as given)."""
    if spec.startswith("rb:"):
        return spec
    arch, sep, path = spec.partition("=")
    if sep and "/" not in arch and "\\" not in arch:      # ARCH=PATH (never the disk's say:
        return f"{arch}={Path(path).name}"               # the label is the same everywhere)
    return Path(spec).name or spec


def _teacher_cells(grid: Grid, dataset: str, overrides: dict, common: dict,
                   seed: int) -> list[Cell]:
    cells = []
    for role, plan in grid.preset.teacher_plans(dataset).items():
        spec = overrides.get(role) or plan.spec
        cell_seed = grid.preset.seed if spec else seed    # a given teacher is the same model
        cid = f"{dataset_slug(dataset)}/teachers/{role}/seed{cell_seed}"
        cell = Cell(cid, "teacher", dataset, plan.label, role=role, attacks=TEACHER_ATTACKS,
                    seed=cell_seed)
        if spec:
            cell.spec = spec
            cell.row = f"{plan.label}: {spec_label(spec)}" if overrides.get(role) else plan.label
        else:
            cell.method = TEACHER_METHODS[role]
            cell.config = TrainConfig(**{**common, **plan.train, "method": cell.method,
                                         "student": plan.arch, "student_kwargs": dict(plan.kwargs),
                                         "out": cell_out(cell)})
        cells.append(cell)
    return cells


def cell_out(cell: Cell) -> str:
    """The run folder a cell's config names: ``results:runs/<cell id>``, inside the results
    folder wherever it is (:meth:`Grid.run_dir` is where this process finds it)."""
    return in_results(f"runs/{cell.id}")


def _teacher_spec(grid: Grid, cell: Cell) -> str:
    """What a student's config names as its teacher: the spec as the user gave it, or the
    teacher cell's run folder inside the results folder (the same string from any working
    directory and in any copy of the folder)."""
    return cell.spec if cell.spec else cell_out(cell)


def _student_cell(grid: Grid, cid: str, kind: str, dataset: str, student: str, method: str,
                  options: dict, row: str, attacks: Sequence[str], teachers: dict[str, Cell],
                  common: dict, eval_teachers: bool) -> Cell:
    arch, kwargs = grid.preset.students[student]
    roles = [r.removesuffix("_teacher") for r in get_method(method).teachers]
    specs = {f"{r}_teacher": _teacher_spec(grid, teachers[r]) for r in roles}
    cell = Cell(cid, kind, dataset, row, student=student, method=method, attacks=tuple(attacks),
                needs=tuple(teachers[r].id for r in roles), source=teachers["robust"].id,
                seed=common["seed"])
    # the training-curve figure (eval_teachers) plots every epoch, whatever the preset's eval_from
    curves = {"eval_teachers": True, "eval_from": 1} if eval_teachers else {"eval_teachers": False}
    cell.config = TrainConfig(**{**common, **grid.preset.train, **specs, "method": method,
                                 "method_options": dict(options), "student": arch,
                                 "student_kwargs": dict(kwargs), **curves,
                                 "out": cell_out(cell)})
    return cell


def build_grid(preset: Preset, results: str | Path, *, datasets: Sequence[str] | None = None,
               students: Sequence[str] | None = None, methods: Sequence[str] | None = None,
               teacher_specs: dict | None = None, settings: dict | None = None,
               seeds: int | None = None) -> Grid:
    """All cells of ``preset`` (optionally fewer datasets, students, methods), each for
    ``seeds`` seeds (default: the preset's).

    ``teacher_specs`` (``{"clean"|"robust": spec}``) replaces the preset's teachers;
    ``settings`` (``device``, ``data_root``, ``download``, ``model_dir``) reach every cell.
    ``methods`` may name any registered method (a plugin's too: its rows are table_beyond's);
    one that is not registered is a one-line error.
    """
    settings = {"device": "auto", "data_root": "data", "download": False, "model_dir": "models",
                **(settings or {})}
    grid = Grid(preset, Path(results), settings=settings)
    common = {"seed": preset.seed, "device": settings["device"], "data_root": settings["data_root"],
              "download": settings["download"], "teacher_model_dir": settings["model_dir"],
              # several processes per cell: BatchNorm of the global batch, the 1-process math
              **({"sync_bn": True} if settings.get("procs_per_cell", 1) > 1 else {})}
    students = list(students or preset.students)
    methods = list(methods or preset.methods)
    if methods == ["all"]:      # every registered method: the paper's rows, then the others
        methods = row_methods(list_methods())
    for name in students:
        if name not in preset.students:
            raise UserError(f"unknown student {name!r}; accepted: {', '.join(preset.students)}")
    known = set(list_methods())
    for name in methods:
        if name not in known:
            raise UserError(f"method {name!r} is not registered; accepted: "
                            f"{', '.join(sorted(known))} (a plugin's: --plugin or its entry point)")
    n_seeds = positive_int(seeds if seeds is not None else preset.seeds, "--seeds")
    grid.seeds = tuple(range(preset.seed, preset.seed + n_seeds))
    for d_i, dataset in enumerate(datasets or preset.datasets):
        slug = dataset_slug(dataset)
        for seed in grid.seeds:      # seed-major: the first seed of every cell finishes first
            common = {**common, "dataset": dataset, "seed": seed}
            teachers = {c.role: c for c in _teacher_cells(grid, dataset, teacher_specs or {},
                                                          common, seed)}
            grid.cells += [c for c in teachers.values() if c.id not in grid.by_id()]
            for student in students:
                for method in methods:
                    grid.cells.append(_student_cell(
                        grid, f"{slug}/{student}/{method}/seed{seed}", "student", dataset,
                        student, method, {}, method_label(method), STUDENT_ATTACKS, teachers,
                        common, eval_teachers=method == "ciard" and student == students[0]))
            if d_i == 0 and "ciard" in methods and "resnet18" in students:
                for row, options in ABLATIONS.items():
                    if not options:
                        continue  # +ITT+push is the full CIARD student cell
                    tag = "-".join(f"no_{k}" for k in options)
                    grid.cells.append(_student_cell(
                        grid, f"{slug}/resnet18/ciard-{tag}/seed{seed}", "ablation", dataset,
                        "resnet18", "ciard", options, row, ABLATION_ATTACKS, teachers, common,
                        eval_teachers=False))
    return grid


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` (0 <= i < n) -> (i, n); a one-line UserError otherwise."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise UserError(f"--shard {text!r} is not valid; accepted: i/n with 0 <= i < n, "
                        "e.g. 0/4 (shard numbers start at 0)")
    i, n = int(match.group(1)), int(match.group(2))
    if n < 1 or i >= n:
        raise UserError(f"--shard {text!r} is not valid; accepted: i/n with 0 <= i < n, "
                        "e.g. 0/4 (shard numbers start at 0)")
    return i, n


def shard_cells(cells: Sequence[Cell], shard: tuple[int, int] | None) -> list[Cell]:
    """The cells of shard ``(i, n)``: every n-th cell of the grid order starting at i, so
    the shards are disjoint, cover the grid, and each gets a mix of cheap and costly cells."""
    if shard is None:
        return list(cells)
    i, n = shard
    return [c for k, c in enumerate(cells) if k % n == i]


def select_kinds(cells: Sequence[Cell], kinds: Sequence[str] | None) -> list[Cell]:
    """Only the cells of the given kinds (``--only teacher,student``)."""
    if not kinds:
        return list(cells)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise UserError(f"unknown cell kind {bad[0]!r}; accepted: {', '.join(KINDS)}")
    return [c for c in cells if c.kind in kinds]
