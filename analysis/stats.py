"""Summaries over seeds, and the confidence interval of a paired difference.

A sweep runs each setting with a handful of seeds (one to five), and two settings with the same
seed share data, points and corruption. The difference of a setting to the baseline is therefore
taken per seed and summarised by the t distribution over those paired seeds: with so few seeds
a normal (z) interval would be far too narrow, and pairing removes the seeds' common effect that
an unpaired interval would count as noise. One paired seed has no spread to estimate, so it has
no interval at all (never a made-up ±).

:data:`CONFIDENCE` is the one confidence level every table and comparison uses.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
from scipy import special

#: Confidence level of every interval the tables print (and the mark ``*``: it excludes 0).
CONFIDENCE = 0.95


class PairedInterval(NamedTuple):
    """Mean of the paired differences, the bounds of its interval and the number of pairs.

    ``low`` and ``high`` are NaN when fewer than two pairs exist (no interval).
    """

    mean: float
    low: float
    high: float
    n: int

    @property
    def significant(self) -> bool:
        """Whether the interval exists and excludes 0 (False without an interval)."""
        return bool(self.low > 0 or self.high < 0)  # NaN compares False


def finite(values: Iterable[float | None]) -> np.ndarray:
    """The finite values (None, NaN and inf dropped: a metric a trial did not log)."""
    return np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)


def mean_std_n(values: Iterable[float | None]) -> tuple[float, float, int]:
    """Mean, sample std (ddof=1; NaN for one value) and count of the finite values."""
    arr = finite(values)
    n = int(arr.size)
    if n == 0:
        return math.nan, math.nan, 0
    return float(arr.mean()), float(arr.std(ddof=1)) if n > 1 else math.nan, n


def paired_interval(differences: Iterable[float | None], confidence: float = CONFIDENCE) -> PairedInterval:
    """The t interval of the mean of per-seed differences: mean ± t_{(1+c)/2, n-1} · s / sqrt(n).

    ``differences`` are one value per seed (a setting minus the baseline on the same seed);
    non-finite ones are dropped and ``n`` counts the rest. The t distribution with n - 1 degrees
    of freedom, not the normal, because the seeds are few and the spread ``s`` is estimated from
    them. With n < 2 there is no interval: ``low`` and ``high`` are NaN (n = 0: the mean too).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    arr = finite(differences)
    n = int(arr.size)
    if n == 0:
        return PairedInterval(math.nan, math.nan, math.nan, 0)
    mean = float(arr.mean())
    if n == 1:
        return PairedInterval(mean, math.nan, math.nan, 1)
    # the t quantile by scipy.special (what scipy.stats.t.ppf calls): importing scipy.stats costs
    # ~0.5 s, paid at the end of every sweep that attaches its table
    half = float(special.stdtrit(n - 1, (1.0 + confidence) / 2.0)) * float(arr.std(ddof=1)) / math.sqrt(n)
    return PairedInterval(mean, mean - half, mean + half, n)
