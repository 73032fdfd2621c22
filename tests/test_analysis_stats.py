"""analysis.stats: the t interval of paired differences against scipy and a hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from analysis import stats


@pytest.mark.parametrize("differences", [[2.5, 1.7], [1.0, 2.0, 3.0], [-0.3, 0.1, 0.4, -0.2, 0.05], [6.0, 7.0]])
@pytest.mark.parametrize("confidence", [stats.CONFIDENCE, 0.9])
def test_equals_scipy_t_interval(differences, confidence):
    arr = np.asarray(differences)
    mean, low, high, n = stats.paired_interval(differences, confidence)
    expected = scipy_stats.t.interval(confidence, len(arr) - 1, loc=arr.mean(), scale=scipy_stats.sem(arr))
    assert (mean, n) == (pytest.approx(arr.mean()), len(arr))
    assert (low, high) == pytest.approx(expected, rel=1e-12)


def test_hand_computed_numbers():
    # [1, 2, 3]: mean 2, s = 1, t_{0.975, 2} = 4.302653 (printed t tables), half-width 4.302653 / sqrt(3)
    interval = stats.paired_interval([1.0, 2.0, 3.0])
    assert interval.mean == 2.0 and interval.n == 3
    assert (interval.low, interval.high) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=1e-6)
    assert not interval.significant  # contains 0
    assert stats.paired_interval([2.0, 2.4, 2.2]).significant  # [1.70, 2.70]
    assert stats.paired_interval([-2.0, -2.4, -2.2]).significant  # below 0 counts too
    assert stats.CONFIDENCE == 0.95


def test_one_or_no_pair_has_no_interval():
    one = stats.paired_interval([2.5])
    assert (one.mean, one.n) == (2.5, 1) and math.isnan(one.low) and math.isnan(one.high) and not one.significant
    none = stats.paired_interval([])
    assert none.n == 0 and math.isnan(none.mean) and not none.significant
    # a metric a trial did not log: dropped, the rest counted
    assert stats.paired_interval([math.nan, 3.0, None]).n == 1


def test_zero_spread_and_bad_confidence():
    flat = stats.paired_interval([0.3, 0.3, 0.3])
    assert (flat.low, flat.high) == pytest.approx((0.3, 0.3)) and flat.significant
    assert not stats.paired_interval([0.0, 0.0]).significant
    for bad in (0.0, 1.0, 95):
        with pytest.raises(ValueError, match="confidence"):
            stats.paired_interval([1.0, 2.0], bad)


def test_mean_std_n():
    assert stats.mean_std_n([1.0, 3.0, math.nan]) == (2.0, pytest.approx(math.sqrt(2)), 2)
    mean, std, n = stats.mean_std_n([4.0])
    assert (mean, n) == (4.0, 1) and math.isnan(std)
