"""Writing the tables: ``tableN.csv`` (exact values: the mean over seeds),
``tableN_seeds.csv`` (every seed's value with its Wilson interval, and each entry's mean,
std, interval and mark), ``tableN.tex`` (booktabs) and ``tableN.md`` (mean +- std over seeds;
bold and underline only where the intervals separate the rows, :mod:`.stats`), each with a
caption that states dataset, student, attack settings, eps, test points, seeds, preset and
checkpoint; and for the ``paper`` preset ``tableN_vs_paper.*`` (ours, the paper's printed
number, the difference).
"""
from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import pandas as pd

from ..attacks import describe_attack, get_attack, list_attacks
from ..checkpoint import atomic_write_text
from ..utils import fraction_text
from .frames import Table
from ..grid import transfers
from ..grid.cells import Grid
from ..grid.presets import ABLATIONS, STUDENT_LABELS
from .stats import MARK_RULE, Entry, entry, marks

DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "digits": "digits",
                 "tiny_imagenet": "Tiny-ImageNet"}
_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}", "<": r"$<$", ">": r"$>$"}
_TEX_LABELS = {get_attack(a).label: get_attack(a).tex_label for a in list_attacks()
               if get_attack(a).tex_label}
_PAPER_STUDENT = {"resnet18": "resnet18", "mobilenet_v2": "mobilenetv2"}
_PAPER_ABLATION = dict(zip(ABLATIONS, ("CIARD w/o ITT w/o push", "CIARD w/o push", "CIARD")))


def tex_escape(text: object) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def _tex_label(text: object) -> str:
    text = DATASET_NAMES.get(str(text), str(text))
    return _TEX_LABELS.get(text, tex_escape(text))


def caption(grid: Grid, table: Table, which: str) -> str:
    """What the numbers are: the table, the data, the models, the attacks, the protocol."""
    p = grid.preset
    eps = next((c.config.eps for c in table.cells if c and c.config), 8 / 255)
    data = ", ".join(DATASET_NAMES.get(d, d) for d in table.datasets)
    parts = [f"{table.title} on {data}."] + ([table.note] if table.note else [])
    students = [table.student] if table.student else []
    if table.name == "table_beyond":      # its columns span the students: each is named
        students = list(dict.fromkeys(c.student for c in table.cells))
    if students:
        shown = []
        for student in students:
            arch, kwargs = p.students[student]
            args = ", ".join(f"{k}={v}" for k, v in kwargs.items())
            shown.append(f"{STUDENT_LABELS[student]} (here {arch}{f'({args})' if args else ''})")
        parts.append(f"Student{'s' if len(shown) > 1 else ''} {', '.join(shown)}.")
    parts.append(f"eps = {fraction_text(eps)} (Linf); "
                 + "; ".join(describe_attack(a, eps, p.attack_overrides,
                                           transfers.transfer_mode(grid))
                            for a in table.attacks)
                 + ".")
    points = f"the first {p.n_examples} test points" if p.n_examples else "the whole test set"
    seeds = max((len(v) for v in table.samples.values()), default=0) or len(grid.seeds)
    check = ("the teachers' best checkpoints" if table.name == "table2" else
             "best-epoch checkpoints (highest (Clean + PGD_TRADES)/2 on the per-epoch evaluation "
             "subset of the test set, as the released code)" if which == "best" else
             "last-epoch checkpoints")
    wr = "W-R = (Clean + Robust)/2; " if table.has_wr else ""
    parts.append(f"Accuracy in percent on {points}; robust = correct clean and attacked; "
                 f"{wr}{check}.")
    parts.append(f"{seeds} training seed{'s' if seeds != 1 else ''} per cell"
                 + ("; mean +- std over seeds." if seeds > 1 else
                    "; each value is followed by its 95 % interval [low, high] (Wilson, over "
                    "the test points; one seed: run-to-run training noise is not in it)."))
    parts.append(f"{p.reductions}.")
    if table.name in p.table_notes:
        parts.append(p.table_notes[table.name])
    missing = int(table.frame.isna().to_numpy().sum())
    parts.append((f"Marks per column: {MARK_RULE}. " if table.highlight else "")
                 + (f"-- = not run yet ({missing} values missing)." if missing else
                    "Every value is from a finished run."))
    return " ".join(parts)


def entries(table: Table) -> dict[tuple, Entry]:
    """Every entry of the table's frame with its seeds' statistics."""
    return {(row, col): entry(table.samples.get((row, col), []))
            for row in table.frame.index for col in table.frame.columns}


def _marks(table: Table, stats: dict[tuple, Entry]) -> dict[tuple, str]:
    out = {key: "" for key in stats}
    if table.highlight:
        rows = list(table.frame.index)
        for col in table.frame.columns:
            for row, mark in zip(rows, marks([stats[(r, col)] for r in rows])):
                out[(row, col)] = mark
    return out


def _shown(table: Table, stats: dict[tuple, Entry], tex: bool = False) -> pd.DataFrame:
    """The values a reader sees: ``mean +- std`` with several seeds; with one, the value and
    its 95 % interval (the test points' Wilson interval), ``value [low, high]``."""
    pm = r" $\pm$ " if tex else " ± "

    def text(row, col) -> str:
        value = table.frame.loc[row, col]
        e = stats[(row, col)]
        if math.isnan(value):
            return "--"
        if e.seeds > 1:
            return f"{value:.2f}{pm}{e.std:.2f}"
        if e.seeds == 0:         # a value without samples: the paper's numbers, differences
            return f"{value:.2f}"
        return f"{value:.2f} [{e.low:.1f}, {e.high:.1f}]"

    return pd.DataFrame([[text(r, c) for c in table.frame.columns] for r in table.frame.index],
                        index=table.frame.index, columns=table.frame.columns)


def to_latex(table: Table, text: str) -> str:
    stats = entries(table)
    mark = _marks(table, stats)
    frame = _shown(table, stats, tex=True)
    wrap = {"best": r"\textbf{%s}", "second": r"\underline{%s}", "": "%s"}
    for row in frame.index:
        for col in frame.columns:
            frame.loc[row, col] = wrap[mark[(row, col)]] % frame.loc[row, col]
    frame.columns = frame.columns.map(lambda c: tuple(map(_tex_label, c)) if isinstance(c, tuple)
                                      else _tex_label(c))
    frame.index = frame.index.map(lambda r: tuple(map(_tex_label, r)) if isinstance(r, tuple)
                                  else _tex_label(r))
    frame.columns.names = [tex_escape(n) if n else n for n in table.frame.columns.names]
    frame.index.names = [tex_escape(n) if n else n for n in table.frame.index.names]
    return frame.style.to_latex(caption=tex_escape(text), label=f"tab:{table.name}", hrules=True,
                                multicol_align="c", position_float="centering",
                                column_format="l" * frame.index.nlevels + "r" * frame.shape[1])


def to_markdown(table: Table, text: str) -> str:
    frame = table.frame
    stats = entries(table)
    mark = _marks(table, stats)
    shown = _shown(table, stats)
    flat = lambda v: " / ".join(map(str, v)) if isinstance(v, tuple) else str(v)  # noqa: E731
    names = [n or "" for n in frame.index.names]
    header = names + [flat(c) for c in frame.columns]
    lines = [f"**{table.name}.** {text}", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(names) + "---:|" * frame.shape[1]]
    for idx in frame.index:
        cells = list(idx) if isinstance(idx, tuple) else [idx]
        for col in frame.columns:
            s, r = shown.loc[idx, col], mark[(idx, col)]
            cells.append(f"**{s}**" if r == "best" else f"<u>{s}</u>" if r == "second" else s)
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def seeds_frame(table: Table) -> pd.DataFrame:
    """Long form: one row per (entry, seed) with its value and Wilson interval, and the
    entry's mean, std, seeds, combined interval and mark repeated on each of its rows."""
    stats = entries(table)
    mark = _marks(table, stats)
    flat = lambda v: " / ".join(map(str, v)) if isinstance(v, tuple) else str(v)  # noqa: E731
    rows = []
    for (row, col), e in stats.items():
        for smp in table.samples.get((row, col), []):
            rows.append({"row": flat(row), "column": flat(col), "seed": smp.seed,
                         "value": smp.value, "n": smp.n, "wilson_low": smp.low,
                         "wilson_high": smp.high, "mean": e.mean, "std": e.std, "seeds": e.seeds,
                         "low": e.low, "high": e.high, "mark": mark[(row, col)]})
    return pd.DataFrame(rows, columns=["row", "column", "seed", "value", "n", "wilson_low",
                                       "wilson_high", "mean", "std", "seeds", "low", "high",
                                       "mark"])


def write_table(table: Table, text: str, out: Path, suffix: str = "") -> list[Path]:
    """``<name><suffix>.csv/.tex/.md`` (and ``_seeds.csv`` when it has samples) in ``out``."""
    stem = out / f"{table.name}{suffix}"
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".tex"), stem.with_suffix(".md")]
    atomic_write_text(paths[0], table.frame.to_csv(float_format=None))
    atomic_write_text(paths[1], to_latex(table, text))
    atomic_write_text(paths[2], to_markdown(table, text))
    if table.samples:
        paths.append(out / f"{table.name}{suffix}_seeds.csv")
        atomic_write_text(paths[-1], seeds_frame(table).to_csv(index=False))
    return paths


def read_table_csv(path: str | Path, table: Table) -> pd.DataFrame:
    """Read a written CSV back into the frame's shape (its header and index levels)."""
    frame = table.frame
    return pd.read_csv(path, header=list(range(frame.columns.nlevels)),
                       index_col=list(range(frame.index.nlevels)))


def paper_results() -> pd.DataFrame:
    """The paper's printed numbers (``ciard_bench/resources/paper_results.csv``)."""
    with resources.files("ciard_bench.resources").joinpath("paper_results.csv").open() as fh:
        return pd.read_csv(fh)


def comparison(table: Table, grid: Grid) -> pd.DataFrame:
    """Ours beside the paper's printed number and ours - paper, for every printed value."""
    paper = paper_results()
    number = int(table.name[5:]) if table.name[5:].isdigit() else None
    paper = paper[paper["table"] == number] if number else paper.iloc[:0]
    rows = []
    for _, ref in paper.iterrows():
        for metric, col in (("Clean", "clean"), ("Robust", "robust"), ("W-R", "wr")):
            if pd.isna(ref[col]):
                continue
            ours = _ours(table, grid, ref, metric)
            if ours is None:
                continue
            rows.append({"row": ref["method"], "dataset": ref["dataset"], "attack": ref["attack"],
                         "metric": metric, "ours": ours, "paper": float(ref[col]),
                         "diff": ours - float(ref[col])})
    return pd.DataFrame(rows, columns=["row", "dataset", "attack", "metric", "ours", "paper",
                                       "diff"])


def _ours(table: Table, grid: Grid, ref: pd.Series, metric: str) -> float | None:
    frame = table.frame
    if table.name == "table2":
        cells = [c for c in grid.cells if c.kind == "teacher" and c.dataset == ref["dataset"]
                 and c.row == ref["method"]]
        column = "Clean" if metric == "Clean" or ref["attack"] == "Clean" else ref["attack"]
        if not cells or metric == "W-R" or column not in frame.columns:
            return None
        return float(frame.loc[(ref["dataset"], cells[0].row), column])
    if table.name == "table7":
        labels = {v: k for k, v in _PAPER_ABLATION.items()}
        column = {"Clean": "Clean", "Robust": "PGD_TRADES", "W-R": "W-acc"}[metric]
        if ref["method"] not in labels or ref["dataset"] not in table.datasets:
            return None
        return float(frame.loc[labels[ref["method"]], column])
    if _PAPER_STUDENT.get(table.student) != ref["student"]:
        return None
    key = (ref["attack"], ref["dataset"], metric)
    if key not in frame.columns or ref["method"] not in frame.index:
        return None
    return float(frame.loc[ref["method"], key])
