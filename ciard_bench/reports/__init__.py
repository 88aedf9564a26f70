"""Rendering a results folder: tables, figures, the HTML page and the rehearsal report.

Everything here reads what :mod:`ciard_bench.grid` wrote (``grid.json``, run folders) and
writes files a person reads; it trains and evaluates nothing.

Modules: ``frames`` (results as DataFrames), ``stats`` (seeds, intervals, the marks' rule),
``render`` (CSV, LaTeX and Markdown tables, captions, the paper's numbers), ``figures``,
``written`` (the written tables read back), ``compact`` (``tableN_compact.tex``), ``html``
(``index.html``; ``python -m ciard_bench.reports RESULTS_DIR`` rebuilds it) and
``projection`` and ``rehearsal`` (what a rehearsal's measurements project;
its Markdown and JSON report).
"""
