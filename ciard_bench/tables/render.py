"""Writing the tables: ``tableN.csv`` (exact values), ``tableN.tex`` (booktabs, best per
column in bold and second underlined, as the paper), ``tableN.md``, each with a caption
that states dataset, student, attack settings, eps, number of test points, preset and
checkpoint; and for the ``paper`` preset ``tableN_vs_paper.*`` (ours, the paper's printed
number, the difference).
"""
from __future__ import annotations

import math
from fractions import Fraction
from importlib import resources
from pathlib import Path

import pandas as pd

from ..attacks import attack_settings
from ..checkpoint import atomic_write_text
from .frames import ATTACK_NAMES, Table
from .grid import Grid
from .presets import ABLATIONS, STUDENT_LABELS

DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "digits": "digits",
                 "tiny_imagenet": "Tiny-ImageNet"}
_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}", "<": r"$<$", ">": r"$>$"}
_TEX_LABELS = {"CW_inf": r"CW$_\infty$", "Transfer_CW_inf": r"Transfer CW$_\infty$",
               "Transfer_PGD_TRADES": r"Transfer PGD\_TRADES"}
_PAPER_STUDENT = {"resnet18": "resnet18", "mobilenet_v2": "mobilenetv2"}
_PAPER_ABLATION = dict(zip(ABLATIONS, ("CIARD w/o ITT w/o push", "CIARD w/o push", "CIARD")))


def tex_escape(text: object) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def _tex_label(text: object) -> str:
    text = DATASET_NAMES.get(str(text), str(text))
    return _TEX_LABELS.get(text, tex_escape(text))


def _step(value: float) -> str:
    frac = Fraction(value).limit_denominator(255)
    if abs(float(frac) - value) < 1e-12:
        return f"{frac.numerator}/{frac.denominator}"
    return f"{value:g}"


def describe_attack(name: str, eps: float, overrides: dict) -> str:
    """One phrase per attack, from the settings the evaluation used."""
    s = attack_settings(name, eps, **overrides.get(name, {}))
    if s["kind"] == "transfer":
        how = describe_attack(s["base"], eps, overrides)
        return f"Transfer {ATTACK_NAMES[s['base']]} ({how}, crafted on the robust teacher)"
    if name == "fgsm":
        return "FGSM: 1 step of eps"
    if name in ("pgd_sat", "pgd_trades"):
        return f"{ATTACK_NAMES[name]}: CE, {s['steps']} steps of {_step(s['alpha'])}, random start"
    if name == "cw_inf":
        return (f"CW_inf: CW margin (kappa {s['kappa']:g}), {s['steps']} steps of "
                f"{_step(s['alpha'])}, zero start, clamped every step (torchattacks convention)")
    if name == "square":
        return f"SA: Square (Linf), {s['n_queries']} queries"
    if name == "aa":
        if s["version"] == "standard":
            return "AA: AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square)"
        return (f"AA: AutoAttack custom ({', '.join(s['attacks']).upper()}, {s['n_iter']} "
                "iterations): cheaper than standard, an upper bound on its robust accuracy")
    return name


def caption(grid: Grid, table: Table, which: str) -> str:
    """What the numbers are: the table, the data, the models, the attacks, the protocol."""
    p = grid.preset
    eps = next((c.config.eps for c in table.cells if c and c.config), 8 / 255)
    data = ", ".join(DATASET_NAMES.get(d, d) for d in table.datasets)
    parts = [f"{table.title} on {data}."]
    if table.student:
        arch, kwargs = p.students[table.student]
        args = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        parts.append(f"Student {STUDENT_LABELS[table.student]} (here {arch}"
                     f"{f'({args})' if args else ''}).")
    parts.append(f"eps = {_step(eps)} (Linf); "
                 + "; ".join(describe_attack(a, eps, p.attack_overrides) for a in table.attacks)
                 + ".")
    points = f"the first {p.n_examples} test points" if p.n_examples else "the whole test set"
    check = ("the teachers' best checkpoints" if table.name == "table2" else
             "best-epoch checkpoints (highest (Clean + PGD_TRADES)/2 on the per-epoch evaluation "
             "subset of the test set, as the released code)" if which == "best" else
             "last-epoch checkpoints")
    parts.append(f"Accuracy in percent on {points}; robust = correct clean and attacked; "
                 f"W-R = (Clean + Robust)/2; {check}.")
    parts.append(f"{p.reductions}.")
    if table.name in p.table_notes:
        parts.append(p.table_notes[table.name])
    missing = int(table.frame.isna().to_numpy().sum())
    parts.append(("Best per column in bold, second underlined. " if table.highlight else "")
                 + (f"-- = not run yet ({missing} values missing)." if missing else
                    "Every value is from a finished run."))
    return " ".join(parts)


def _ranks(col: pd.Series) -> list[str]:
    """``best`` / ``second`` / ``""`` for each value, on the rounded values a reader sees."""
    shown = col.round(2)
    values = sorted({v for v in shown if not math.isnan(v)}, reverse=True)
    best, second = (values + [None, None])[:2]
    return ["best" if v == best else "second" if v == second else "" for v in shown]


def to_latex(table: Table, text: str) -> str:
    frame = table.frame.copy()
    frame.columns = frame.columns.map(lambda c: tuple(map(_tex_label, c)) if isinstance(c, tuple)
                                      else _tex_label(c))
    frame.index = frame.index.map(lambda r: tuple(map(_tex_label, r)) if isinstance(r, tuple)
                                  else _tex_label(r))
    frame.columns.names = [tex_escape(n) if n else n for n in table.frame.columns.names]
    frame.index.names = [tex_escape(n) if n else n for n in table.frame.index.names]
    styler = frame.style.format("{:.2f}", na_rep="--")
    if table.highlight:
        props = {"best": "textbf:--rwrap;", "second": "underline:--rwrap;", "": ""}
        styler = styler.apply(lambda col: [props[r] for r in _ranks(col)], axis=0)
    return styler.to_latex(caption=tex_escape(text), label=f"tab:{table.name}", hrules=True,
                           multicol_align="c", position_float="centering",
                           column_format="l" * frame.index.nlevels + "r" * frame.shape[1])


def to_markdown(table: Table, text: str) -> str:
    frame = table.frame
    flat = lambda v: " / ".join(map(str, v)) if isinstance(v, tuple) else str(v)  # noqa: E731
    names = [n or "" for n in frame.index.names]
    header = names + [flat(c) for c in frame.columns]
    ranks = {c: _ranks(frame[c]) if table.highlight else [""] * len(frame) for c in frame.columns}
    lines = [f"**{table.name}.** {text}", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(names) + "---:|" * frame.shape[1]]
    for i, (idx, row) in enumerate(frame.iterrows()):
        cells = list(idx) if isinstance(idx, tuple) else [idx]
        for col in frame.columns:
            v, r = row[col], ranks[col][i]
            s = "--" if math.isnan(v) else f"{v:.2f}"
            cells.append(f"**{s}**" if r == "best" else f"<u>{s}</u>" if r == "second" else s)
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def write_table(table: Table, text: str, out: Path, suffix: str = "") -> list[Path]:
    """``<name><suffix>.csv/.tex/.md`` in ``out``; returns the paths."""
    stem = out / f"{table.name}{suffix}"
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".tex"), stem.with_suffix(".md")]
    atomic_write_text(paths[0], table.frame.to_csv(float_format=None))
    atomic_write_text(paths[1], to_latex(table, text))
    atomic_write_text(paths[2], to_markdown(table, text))
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
