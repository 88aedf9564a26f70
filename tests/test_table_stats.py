"""Seeds, intervals and the mark rule of the tables (ciard_bench.reports.stats), by hand."""
from __future__ import annotations

import math

import pytest

from ciard_bench.evaluate.engine import wilson
from ciard_bench.reports.frames import Sample
from ciard_bench.reports.stats import MISSING, Entry, entry, marks, t_quantile


def _sample(seed, k, n=200):
    lo, hi = wilson(k, n)
    return Sample(seed, 100.0 * k / n, n, lo, hi)


def test_one_seed_interval_is_the_wilson_interval():
    e = entry([_sample(0, 150)])
    assert (e.mean, e.std, e.seeds) == (75.0, 0.0, 1)
    assert [e.low, e.high] == wilson(150, 200)


def test_three_seeds_join_t_interval_and_wilson_in_quadrature():
    samples = [_sample(0, 150), _sample(1, 160), _sample(2, 170)]    # 75, 80, 85 %
    e = entry(samples)
    assert e.mean == pytest.approx(80.0) and e.std == pytest.approx(5.0)
    seeds = 4.302652729911275 * 5.0 / math.sqrt(3)                  # t(0.975, 2) = 4.3027
    below = 80.0 - sum(s.low for s in samples) / 3
    above = sum(s.high for s in samples) / 3 - 80.0
    assert e.low == pytest.approx(80.0 - math.sqrt(seeds ** 2 + below ** 2))
    assert e.high == pytest.approx(80.0 + math.sqrt(seeds ** 2 + above ** 2))
    assert t_quantile(2) == pytest.approx(4.302652729911275)


def test_interval_is_cut_to_the_range_of_an_accuracy():
    # 90, 97.5, 98.5 %: the t interval alone reaches past 100
    e = entry([_sample(0, 180), _sample(1, 195), _sample(2, 197)])
    assert e.high == 100.0 and 0.0 < e.low < e.mean
    e = entry([_sample(0, 0), _sample(1, 10), _sample(2, 30)])      # 0, 5, 15 %
    assert e.low == 0.0 and e.mean < e.high < 100.0


def _e(mean, half, seeds=3):
    return Entry(mean, 0.0, seeds, mean - half, mean + half)


def test_one_seed_never_marks_however_far_apart():
    # one seed: the interval has no training noise in it, so no method comparison is drawn
    assert marks([_e(90, 1, seeds=1), _e(10, 1, seeds=1)]) == ["", ""]
    assert marks([_e(90, 1), _e(10, 1, seeds=1)]) == ["", ""]    # one such row is enough
    assert marks([_e(90, 1, seeds=2), _e(10, 1, seeds=2)]) == ["best", ""]


def test_marks_only_where_intervals_separate():
    # best separated from all, second separated from those below it
    assert marks([_e(90, 2), _e(80, 2), _e(60, 2)]) == ["best", "second", ""]
    # best overlaps the second: nothing is marked, whatever the order of the means
    assert marks([_e(90, 6), _e(82, 3), _e(60, 2)]) == ["", "", ""]
    # best separated, second overlaps the third: only bold
    assert marks([_e(60, 2), _e(90, 2), _e(70, 5), _e(66, 2)]) == ["", "best", "", ""]
    # missing rows are ignored; one row alone is never marked
    assert marks([_e(90, 1), MISSING, _e(50, 1)]) == ["best", "", ""]
    assert marks([_e(90, 1), MISSING]) == ["", ""]


def test_seed_noise_widens_the_interval_enough_to_drop_a_mark():
    a = entry([_sample(0, 180, 1000), _sample(1, 180, 1000)])           # 18 %, no spread
    b = entry([_sample(0, 100, 1000), _sample(1, 100, 1000)])
    assert marks([a, b]) == ["best", ""]
    noisy = entry([_sample(0, 100, 1000), _sample(1, 260, 1000)])       # mean 18 %, std 11 pp
    assert marks([noisy, b]) == ["", ""]
