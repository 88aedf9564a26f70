"""Small inline SVG drawings for the HTML pages: an interval as a dot and whisker, and
line charts of training curves. Only numbers and escaped text go into the markup."""
from __future__ import annotations

import html
import math
from typing import Sequence

from markupsafe import Markup

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
           "#7f7f7f")


def _finite(*values: float) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def whisker(low: float, mean: float, high: float, lo: float, hi: float,
            seeds: Sequence[float] = (), width: int = 90, height: int = 14) -> Markup:
    """``low``-``high`` as a whisker and ``mean`` as a dot on the axis ``lo``-``hi`` (the
    column's range, so rows on one scale can be compared by eye); ``seeds`` as ticks."""
    if not _finite(low, mean, high, lo, hi) or hi <= lo:
        return Markup("")
    x = lambda v: 2 + (width - 4) * (min(max(v, lo), hi) - lo) / (hi - lo)  # noqa: E731
    mid = height / 2
    parts = [f'<svg class="whisker" width="{width}" height="{height}" viewBox="0 0 {width} '
             f'{height}" role="img" aria-label="{mean:.2f} in [{low:.1f}, {high:.1f}]">',
             f'<line x1="{x(low):.1f}" x2="{x(high):.1f}" y1="{mid}" y2="{mid}" '
             'stroke="#555" stroke-width="1.5"/>']
    for end in (low, high):
        parts.append(f'<line x1="{x(end):.1f}" x2="{x(end):.1f}" y1="{mid - 4}" y2="{mid + 4}" '
                     'stroke="#555" stroke-width="1.5"/>')
    for value in seeds:
        if _finite(value):
            parts.append(f'<line x1="{x(value):.1f}" x2="{x(value):.1f}" y1="{mid - 6}" '
                         f'y2="{mid - 2}" stroke="#d62728" stroke-width="1"/>')
    parts.append(f'<circle cx="{x(mean):.1f}" cy="{mid}" r="3" fill="#1f77b4"/></svg>')
    return Markup("".join(parts))


def line_chart(series: dict[str, Sequence[tuple[float, float]]], *, title: str,
               xlabel: str, ylabel: str, width: int = 360, height: int = 200) -> Markup:
    """One line per named series of ``(x, y)`` points, with axes, ticks and a legend."""
    points = [(px, py) for s in series.values() for px, py in s if _finite(px, py)]
    if not points:
        return Markup("")
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    left, right, top, bottom = 40, 10, 22, 30 + 11 * len(series)   # the legend goes below
    height += 11 * len(series)
    sx = lambda v: left + (width - left - right) * (v - x0) / (x1 - x0)  # noqa: E731
    sy = lambda v: height - bottom - (height - top - bottom) * (v - y0) / (y1 - y0)  # noqa: E731
    esc = html.escape
    out = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'role="img" aria-label="{esc(title)}">',
           f'<text x="{width / 2:.0f}" y="13" text-anchor="middle" class="t">{esc(title)}</text>',
           f'<line x1="{left}" x2="{width - right}" y1="{height - bottom}" y2="{height - bottom}" '
           'stroke="#999"/>',
           f'<line x1="{left}" x2="{left}" y1="{top}" y2="{height - bottom}" stroke="#999"/>']
    for v in (y0, (y0 + y1) / 2, y1):
        out.append(f'<text x="{left - 3}" y="{sy(v) + 3:.1f}" text-anchor="end">{v:.3g}</text>')
    for v in sorted({x0, x1, round((x0 + x1) / 2)}):
        out.append(f'<text x="{sx(v):.1f}" y="{height - bottom + 12}" text-anchor="middle">'
                   f'{v:g}</text>')
    out.append(f'<text x="{(left + width) / 2:.0f}" y="{height - bottom + 24}" '
               'text-anchor="middle">'
               f'{esc(xlabel)}</text>')
    out.append(f'<text x="10" y="{height / 2:.0f}" text-anchor="middle" transform="rotate(-90 '
               f'10 {height / 2:.0f})">{esc(ylabel)}</text>')
    for i, (name, values) in enumerate(series.items()):
        pts = [(sx(px), sy(py)) for px, py in values if _finite(px, py)]
        colour = COLOURS[i % len(COLOURS)]
        if pts:
            path = " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" '
                       'stroke-width="1.5"/>')
            out += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2" fill="{colour}"/>' for a, b in pts]
        out.append(f'<text x="{left}" y="{height - bottom + 38 + 11 * i}" fill="{colour}">'
                   f'&#9644; {esc(name)}</text>')
    out.append("</svg>")
    return Markup("".join(out))
