"""``tableN_compact.tex``: each table as a paper prints it, beside the full ``tableN.tex``:
a short caption, the preset's reductions once in a note under the table, ``mean $\\pm$ std``
per entry (one decimal; one seed: the value), sized to fit the text width of a two-column
page (a ``table*`` at ``\\small``; ``tests/test_latex_compact.py`` compiles every one with
pdflatex and checks its width on the PDF).

Columns are cut where the full tables repeat themselves: a student's clean accuracy is the
same under every attack, so it is shown once per dataset, and W-R = (Clean + Robust)/2 is
left to the reader (the note says so); the attack columns hold robust accuracy.
``table_beyond`` keeps its columns and prints one block of rows per student. Marks are
the full tables' (bold, underline), under the same rule. Built from the tables' Markdown
and seeds CSV (:mod:`.tables`), so a folder without its run folders gets them too.
"""
from __future__ import annotations

import math
import re

from .render import tex_escape
from .written import ReportTable, Value

PACKAGES = ("booktabs",)          # what a document that \input's these needs
_SHORT = {"FGSM": "FGSM", "PGD_SAT": "PGD$_{\\mathrm{SAT}}$",
          "PGD_TRADES": "PGD$_{\\mathrm{TR}}$", "CW_inf": "CW$_\\infty$",
          "Transfer_PGD_TRADES": "T-PGD$_{\\mathrm{TR}}$", "Transfer_CW_inf": "T-CW$_\\infty$",
          "SA": "Square", "AA": "AA", "W-acc": "W-acc", "Clean": "Clean"}
_DATASETS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "tiny_imagenet": "Tiny-ImageNet"}


def _label(text: str) -> str:
    return _SHORT.get(text, tex_escape(text))


def _columns(table: ReportTable) -> list[tuple[str, str, int]]:
    """(group header, column header, index of the full table's column) per compact column."""
    out, seen = [], set()
    for i, flat in enumerate(table.columns):
        parts = flat.split(" / ")
        if len(parts) < 3:                        # table2, table7: one level, kept as it is
            out.append(("", _label(flat), i))
            continue
        head, group, metric = parts[0], tuple(parts[1:-1]), parts[-1]
        if table.base == "table_aa":              # (student, dataset, metric)
            group, head = (head, *group), "AA"
        name = " ".join(_DATASETS.get(g, g) for g in group)
        if metric == "Clean" and group not in seen:
            seen.add(group)
            out.append((name, "Clean", i))
        elif metric == "Robust":
            out.append((name, _label(head), i))
    order = list(dict.fromkeys(group for group, _, _ in out))   # the full table is attack-major
    return sorted(out, key=lambda c: order.index(c[0]))


def _blocks(table: ReportTable) -> list[tuple[str, list[tuple[str, str, int]]]]:
    """(label, compact columns) per block of rows. ``table_beyond`` (columns (student,
    dataset, column), each kept) is printed one student after the other, its rows repeated:
    side by side, the paper preset's two students and datasets are 1.5 text widths wide."""
    if table.base != "table_beyond":
        return [("", _columns(table))]
    blocks: dict[str, list[tuple[str, str, int]]] = {}
    for i, flat in enumerate(table.columns):
        student, dataset, column = flat.split(" / ")
        blocks.setdefault(student, []).append((_DATASETS.get(dataset, dataset), _label(column), i))
    return list(blocks.items())


def _entry(v: Value) -> str:
    if not math.isfinite(v.mean):
        return "--"
    # the std in a smaller size: ten columns of "88.9 +- 12.2" fit the text width at \small
    text = f"{v.mean:.1f}" if len(v.seeds) < 2 else \
        f"{v.mean:.1f}{{\\scriptsize$\\pm${v.std:.1f}}}"
    return {"best": f"\\textbf{{{text}}}", "second": f"\\underline{{{text}}}"}.get(v.mark, text)


def _caption(table: ReportTable, preset: str) -> str:
    title = table.caption.split(". ", 1)[0].rstrip(".")
    seeds = max((len(v.seeds) for _, _, vs in table.rows for v in vs), default=0)
    points = re.search(r"on (the first \d+ test points|the whole test set)", table.caption)
    spread = (f"mean $\\pm$ std over {seeds} seeds" if seeds > 1 else
              "one training seed")
    return (f"{tex_escape(title)} ({tex_escape(preset)} preset): accuracy (\\%) "
            f"{'on ' + points.group(1) if points else ''}, {spread}.")


def compact_latex(table: ReportTable, preset: str, reductions: str | None) -> str:
    """The compact LaTeX of one table (needs ``\\usepackage{booktabs}``)."""
    blocks = _blocks(table)
    cols = blocks[0][1]                   # the header: every block has the same columns
    n_index = len(table.index_names)
    lines = ["\\begin{table*}[t]", "\\centering\\small\\setlength{\\tabcolsep}{3pt}",
             f"\\caption{{{_caption(table, preset)}}}\\label{{tab:{table.name}-compact}}",
             f"\\begin{{tabular}}{{@{{}}{'l' * n_index}{'r' * len(cols)}@{{}}}}", "\\toprule"]
    groups: list[tuple[str, int]] = []
    for group, _, _ in cols:
        if groups and groups[-1][0] == group:
            groups[-1] = (group, groups[-1][1] + 1)
        else:
            groups.append((group, 1))
    if any(g for g, _ in groups):
        cells, rules, start = [""] * n_index, [], n_index + 1
        for group, span in groups:
            cells.append(f"\\multicolumn{{{span}}}{{c}}{{{tex_escape(group)}}}")
            rules.append(f"\\cmidrule(lr){{{start}-{start + span - 1}}}")
            start += span
        lines += [" & ".join(cells) + " \\\\", " ".join(rules)]
    lines.append(" & ".join([tex_escape(n) for n in table.index_names]
                            + [c for _, c, _ in cols]) + " \\\\")
    lines.append("\\midrule")
    for b, (block, block_cols) in enumerate(blocks):
        if b:
            lines.append("\\midrule")
        if block:
            lines.append(f"\\multicolumn{{{n_index + len(cols)}}}{{@{{}}l}}"
                         f"{{\\emph{{{tex_escape(block)}}}}} \\\\")
        for _, labels, values in table.rows:
            lines.append(" & ".join([tex_escape(_DATASETS.get(x, x)) for x in labels]
                                    + [_entry(values[i]) for _, _, i in block_cols]) + " \\\\")
    lines.append("\\bottomrule")
    lines.append("\\end{tabular}")
    wr = "" if table.base == "table_beyond" else "; W-R = (Clean + Robust)/2"
    note = (f"Attack columns: robust accuracy{wr}. Bold/underlined: "
            "the best/second where the 95 \\% intervals separate them (rule and intervals: "
            f"{tex_escape(table.name)}.tex). ")
    note += (f"Reductions: {tex_escape(reductions)}." if reductions else
             f"Reductions: see the caption of {tex_escape(table.name)}.tex.")
    lines += [f"\\par\\smallskip\\parbox{{\\linewidth}}{{\\footnotesize {note}}}",
              "\\end{table*}", ""]
    return "\n".join(lines)
