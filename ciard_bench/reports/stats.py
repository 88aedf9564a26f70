"""What a table entry's number means: its mean over seeds, spread and 95 % interval, and the
rule that marks a column's best and second value only where the intervals separate them.

The interval of an entry joins the two sources of noise a reader must discount:

* the training seeds: Student's t interval of the mean, ``t(0.975, S-1) * std / sqrt(S)``
  over the ``S`` seeds (absent with one seed: then run-to-run noise is not covered);
* the test points: the seeds' mean 95 % Wilson interval over the ``n`` test points (each
  seed's accuracy is a proportion of the same ``n`` points; W-R takes the mean of the
  Clean and Robust bounds).

The two half-widths add in quadrature on each side, and the interval is cut to the range an
accuracy can take, 0-100 % (cutting never makes or removes a mark: a best entry's low end
would have to exceed 100). The mark rule (:func:`marks`) is a
conservative test: the best value is bold only when its interval lies entirely above the
interval of every other row; the second is underlined only when the best is bold and its
interval lies entirely above those of every row below it. Two 95 % intervals that do not
overlap differ at well below the 5 % level, so a mark is a difference the data support;
rows with overlapping intervals are left unmarked, however their means are ordered.

A column is marked only when every entry in it has at least ``MIN_SEEDS_TO_MARK`` (2)
seeds. With one seed the interval holds the test points' noise only, not the training
run's, and a method comparison needs both: in the smoke preset a mere change of torch's
thread count (float rounding, nothing else) moved single-seed values by up to 12.5
points and made a one-seed rule mark SAT best in four MobileNet columns that the
one-thread run left unmarked (``results/README.md``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from .frames import Sample

MIN_SEEDS_TO_MARK = 2
MARK_RULE = ("bold: the best mean, only when its 95 % interval (seeds' t interval and the "
             "test points' Wilson interval, combined in quadrature) lies above every other "
             "row's; underlined: the second, only when the best is bold and its interval lies "
             "above every row's below it; unmarked values are not separated by the intervals; "
             f"nothing is marked with fewer than {MIN_SEEDS_TO_MARK} seeds (one seed's interval "
             "leaves out run-to-run training noise)")


@dataclass(frozen=True)
class Entry:
    """A table entry over seeds: mean, sample std (0 with one seed), interval, seed count."""

    mean: float
    std: float
    seeds: int
    low: float
    high: float

    @property
    def missing(self) -> bool:
        return math.isnan(self.mean)


MISSING = Entry(math.nan, math.nan, 0, math.nan, math.nan)


def t_quantile(df: int) -> float:
    """Two-sided 95 % quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t  # heavy import (scipy.stats), needed only with several seeds

    return float(t.ppf(0.975, df))


def entry(samples: Sequence[Sample]) -> Entry:
    """Mean, std and the combined 95 % interval of one entry's per-seed samples."""
    if not samples:
        return MISSING
    k = len(samples)
    mean = sum(s.value for s in samples) / k
    std = math.sqrt(sum((s.value - mean) ** 2 for s in samples) / (k - 1)) if k > 1 else 0.0
    seeds = t_quantile(k - 1) * std / math.sqrt(k) if k > 1 else 0.0
    below = mean - sum(s.low for s in samples) / k
    above = sum(s.high for s in samples) / k - mean
    return Entry(mean, std, k, max(0.0, mean - math.hypot(seeds, below)),
                 min(100.0, mean + math.hypot(seeds, above)))


def marks(entries: Sequence[Entry]) -> list[str]:
    """``"best"`` / ``"second"`` / ``""`` per entry of one column (see the module docstring)."""
    out = [""] * len(entries)
    order = sorted((i for i, e in enumerate(entries) if not e.missing),
                   key=lambda i: entries[i].mean, reverse=True)
    if len(order) < 2 or any(entries[i].seeds < MIN_SEEDS_TO_MARK for i in order):
        return out
    for place, label in enumerate(("best", "second")):
        if place >= len(order) - 1:
            break
        top = entries[order[place]]
        if not all(top.low > entries[j].high for j in order[place + 1:]):
            break
        out[order[place]] = label
    return out
