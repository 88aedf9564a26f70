"""The paper's tables (and ``table_beyond``, the methods beyond them) as pandas DataFrames,
read from the results store.

Values are accuracies in percent exactly as the evaluation JSONs hold them (rounding
happens when a table is written). With several seeds a value is the mean over seeds, and
``Table.samples`` keeps every seed's value with its Wilson interval over the test points; a
value is NaN until every seed of its cell has finished. Column labels use the names of
``paper_results.csv`` (``Clean``, ``FGSM``, ``PGD_SAT``, ``PGD_TRADES``, ``CW_inf``,
``Transfer_PGD_TRADES``, ``Transfer_CW_inf``, ``SA``, ``AA``): each attack's ``label`` in
:mod:`ciard_bench.attacks`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..attacks import get_attack
from ..grid import store
from ..grid.cells import Cell, Grid, dataset_label
from ..grid.presets import ABLATIONS, STUDENT_LABELS, TABLE_METHODS, method_label, row_methods

METRICS = ("Clean", "Robust", "W-R")
WHITE_BOX = ("fgsm", "pgd_sat", "pgd_trades", "cw_inf")
BLACK_BOX = ("transfer_pgd_trades", "transfer_cw_inf", "square")
TEACHER_COLUMNS = ("clean", "fgsm", "pgd_sat", "pgd_trades", "cw_inf")
BEYOND_COLUMNS = ("clean", "pgd_trades", "aa", "transfer_pgd_trades")


@dataclass(frozen=True)
class Sample:
    """One seed's value of a table entry: accuracy (%) on ``n`` points, 95 % Wilson interval."""

    seed: int
    value: float
    n: int
    low: float
    high: float


@dataclass
class Table:
    """One table: its DataFrame and what the caption must say."""

    name: str                        # file stem: table2 ... table7, table_aa, table_beyond
    title: str
    frame: pd.DataFrame
    attacks: tuple[str, ...]
    datasets: tuple[str, ...]
    student: str | None = None       # paper student label, None for teachers
    highlight: bool = True           # marks per column where the intervals separate rows
    cells: list[Cell] = field(default_factory=list)
    samples: dict = field(default_factory=dict)   # (frame row, frame column) -> [Sample]
    note: str = ""                   # caption sentence after the title: what the table is
    has_wr: bool = True              # columns include W-R = (Clean + Robust)/2 (caption says so)


def _eval(grid: Grid, cell: Cell | None, which: str) -> dict[str, Any] | None:
    if cell is None or store.status(grid, cell, which) != store.DONE:
        return None
    return store.read_json(store.eval_path(grid, cell, which))


def metric(ev: dict | None, attack: str, what: str) -> float:
    """``Clean`` / ``Robust`` / ``W-R`` of ``attack`` in an evaluation result (NaN if absent)."""
    return sample(ev, attack, what, 0).value


def sample(ev: dict | None, attack: str, what: str, seed: int) -> Sample:
    """The value and its 95 % Wilson interval (W-R: the mean of the Clean and Robust bounds)."""
    if ev is None or (attack != "clean" and attack not in ev["attacks"]):
        return Sample(seed, math.nan, 0, math.nan, math.nan)
    clean = ev["clean"]
    if what == "Clean" or attack == "clean":
        entry = clean
    else:
        entry = ev["attacks"][attack]
        if what == "W-R":
            return Sample(seed, (float(clean["accuracy"]) + float(entry["accuracy"])) / 2,
                          entry["n"], (clean["ci95"][0] + entry["ci95"][0]) / 2,
                          (clean["ci95"][1] + entry["ci95"][1]) / 2)
    return Sample(seed, float(entry["accuracy"]), entry["n"], *map(float, entry["ci95"]))


def seed_samples(grid: Grid, cells: list[Cell], which: str, attack: str, what: str) -> list[Sample]:
    """One sample per seed of a table entry; empty unless every seed has finished."""
    out = [sample(_eval(grid, c, which), attack, what, c.seed) for c in cells]
    return out if out and not any(math.isnan(s.value) for s in out) else []


def _mean(samples: list[Sample]) -> float:
    return sum(s.value for s in samples) / len(samples) if samples else math.nan


def students_of(grid: Grid) -> list[str]:
    """The grid's student architectures, in grid order."""
    return list(dict.fromkeys(c.student for c in grid.cells if c.kind == "student"))


def datasets_of(grid: Grid) -> list[str]:
    """The grid's datasets, in grid order."""
    return list(dict.fromkeys(c.dataset for c in grid.cells))


def _labels(datasets: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dataset_label(d) for d in datasets)


def _cells(grid: Grid, kind: str, dataset: str, student: str | None, row: str) -> list[Cell]:
    """The cells of one table row, one per seed."""
    return [c for c in grid.cells if c.kind == kind and c.dataset == dataset
            and c.student == student and c.row == row]


def teacher_table(grid: Grid, which: str) -> Table:
    """Table 2: every teacher under Clean, FGSM, PGD_SAT, PGD_TRADES, CW_inf (robust acc.)."""
    columns = ["Clean", *(get_attack(a).label for a in TEACHER_COLUMNS[1:])]
    rows, index, samples = [], [], {}
    cells = [c for c in grid.cells if c.kind == "teacher"]
    for dataset, row_label in dict.fromkeys((c.dataset, c.row) for c in cells):
        seeds = [c for c in cells if (c.dataset, c.row) == (dataset, row_label)]
        key = (dataset_label(dataset), row_label)
        row = []
        for attack, column in zip(TEACHER_COLUMNS, columns):
            samples[(key, column)] = seed_samples(grid, seeds, which, attack, "Robust")
            row.append(_mean(samples[(key, column)]))
        rows.append(row)
        index.append(key)
    frame = pd.DataFrame(rows, columns=columns,
                         index=pd.MultiIndex.from_tuples(index, names=["dataset", "teacher"]))
    return Table("table2", "Teachers", frame, TEACHER_COLUMNS[1:], _labels(datasets_of(grid)),
                 highlight=False, cells=cells, samples=samples)


def method_table(grid: Grid, which: str, name: str, title: str, student: str,
                 attacks: tuple[str, ...]) -> Table:
    """Tables 3-6 and the AutoAttack table: rows = the paper's methods the grid has (in its
    order; the others are in :func:`beyond_table`), columns (attack, dataset, metric)."""
    datasets = datasets_of(grid)
    methods = [m for m in row_methods([c.method for c in grid.cells if c.kind == "student"])
               if m in TABLE_METHODS]
    columns = pd.MultiIndex.from_tuples(
        [(get_attack(a).label, dataset_label(d), m) for a in attacks for d in datasets
         for m in METRICS],
        names=["attack", "dataset", "metric"])
    rows, cells, samples = [], [], {}
    for method in methods:
        label, row = method_label(method), []
        for attack in attacks:
            for dataset in datasets:
                seeds = _cells(grid, "student", dataset, student, label)
                cells += [c for c in seeds if c not in cells]
                for m in METRICS:
                    entry = samples[(label, (get_attack(attack).label, dataset_label(dataset), m))] = \
                        seed_samples(grid, seeds, which, attack, m)
                    row.append(_mean(entry))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=columns,
                         index=pd.Index([method_label(m) for m in methods], name="method"))
    return Table(name, title, frame, attacks, _labels(datasets), student=student, cells=cells,
                 samples=samples)


def beyond_table(grid: Grid, which: str) -> Table | None:
    """The methods beyond the paper's ten (others of the field, a plugin's) after CIARD, the
    paper's method, as the reference; None when the grid has none. Columns (student, dataset,
    column): Clean and the robust accuracy under PGD_TRADES, AutoAttack and transfer
    PGD_TRADES, the attacks of these the student cells evaluate; the values are those cells'
    evaluations, as in the other tables."""
    student_cells = [c for c in grid.cells if c.kind == "student"]
    beyond = [m for m in row_methods([c.method for c in student_cells])
              if m not in TABLE_METHODS]
    if not beyond:
        return None
    methods = (["ciard"] if any(c.method == "ciard" for c in student_cells) else []) + beyond
    evaluated = {a for c in student_cells for a in c.attacks}
    attacks = tuple(a for a in BEYOND_COLUMNS if a == "clean" or a in evaluated)
    students, datasets = students_of(grid), datasets_of(grid)
    heads = ["Clean" if a == "clean" else get_attack(a).label for a in attacks]
    columns = pd.MultiIndex.from_tuples(
        [(STUDENT_LABELS[s], dataset_label(d), h) for s in students for d in datasets
         for h in heads], names=["student", "dataset", "attack"])
    rows, cells, samples = [], [], {}
    for method in methods:
        label, row = method_label(method), []
        for student in students:
            for dataset in datasets:
                seeds = _cells(grid, "student", dataset, student, label)
                cells += seeds
                for attack, head in zip(attacks, heads):
                    key = (label, (STUDENT_LABELS[student], dataset_label(dataset), head))
                    samples[key] = seed_samples(grid, seeds, which, attack, "Robust")
                    row.append(_mean(samples[key]))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=columns,
                         index=pd.Index([method_label(m) for m in methods], name="method"))
    reference = ", after CIARD, the paper's method, as the reference" if "ciard" in methods else ""
    note = (f"Rows: methods the paper does not compare with (Tables 3-6), from the field or "
            f"from a plugin{reference}; each trained and evaluated under the protocol "
            f"of those tables, its values read from the same cell evaluations as theirs. "
            f"Columns: Clean, then robust accuracy under {', '.join(heads[1:])}.")
    return Table("table_beyond", "Beyond the paper's comparison (other methods, and plugins)",
                 frame, attacks[1:], _labels(datasets), cells=cells, samples=samples, note=note,
                 has_wr=False)


def ablation_table(grid: Grid, which: str) -> Table | None:
    """Table 7: baseline (ITT and push off), +ITT, +ITT+push on PGD_TRADES, Clean, W-acc."""
    abl = [c for c in grid.cells if c.kind == "ablation"]
    if not abl:
        return None
    dataset, student = abl[0].dataset, abl[0].student
    rows, cells, samples = [], [], {}
    for label in ABLATIONS:
        kind = "ablation" if ABLATIONS[label] else "student"
        seeds = _cells(grid, kind, dataset, student, label if kind == "ablation" else "CIARD")
        cells += seeds
        row = []
        for column, what in (("PGD_TRADES", "Robust"), ("Clean", "Clean"), ("W-acc", "W-R")):
            samples[(label, column)] = seed_samples(grid, seeds, which, "pgd_trades", what)
            row.append(_mean(samples[(label, column)]))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["PGD_TRADES", "Clean", "W-acc"],
                         index=pd.Index(list(ABLATIONS), name="ablation"))
    return Table("table7", "Ablation of CIARD's components", frame, ("pgd_trades",),
                 _labels([dataset]), student=student, cells=cells, samples=samples)


def all_tables(grid: Grid, which: str) -> list[Table]:
    """Tables 2-7, the AutoAttack table and the methods beyond the paper (table_beyond) for
    whatever students the grid has; a table without rows (the student tables of a grid of
    none of the paper's methods) is left out."""
    tables = [teacher_table(grid, which)]
    numbers = {"resnet18": ("table3", "table5"), "mobilenet_v2": ("table4", "table6")}
    students = students_of(grid)
    for student in students:
        white, black = numbers[student]
        label = STUDENT_LABELS[student]
        tables.append(method_table(grid, which, white, f"White-box robustness, {label} student",
                                   student, WHITE_BOX))
    for student in students:
        label = STUDENT_LABELS[student]
        tables.append(method_table(grid, which, numbers[student][1],
                                   f"Black-box robustness, {label} student", student, BLACK_BOX))
    ablation = ablation_table(grid, which)
    if ablation is not None:
        tables.append(ablation)
    aa = [method_table(grid, which, "table_aa", "", s, ("aa",)) for s in students]
    if aa:
        frame = pd.concat({STUDENT_LABELS[s]: t.frame for s, t in zip(students, aa)}, axis=1,
                          names=["student"]).droplevel("attack", axis=1)
        samples = {(row, (STUDENT_LABELS[s], *col[1:])): v for s, t in zip(students, aa)
                   for (row, col), v in t.samples.items()}
        tables.append(Table("table_aa", "AutoAttack (added in the rebuttal)", frame, ("aa",),
                            aa[0].datasets, student=None, cells=[c for t in aa for c in t.cells],
                            samples=samples))
    beyond = beyond_table(grid, which)
    if beyond is not None:
        tables.append(beyond)
    return sorted((t for t in tables if len(t.frame.index)), key=lambda t: t.name)
