"""Intervals for reports: means over seeds, paired differences, proportions.

../shared/papers/evaluation.md, section 3: across seeds, the mean and a 95 % t-interval
with n - 1 degrees of freedom; against a baseline run on the same seeds, the per-seed
paired difference and its t-interval ("not significant" when it contains 0); within
one run, a proportion's Wilson interval. scipy does the distributions; this module only
shapes the numbers for tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (for differences)."""
        return self.n >= 2 and (self.low > 0 or self.high < 0)

    def fmt(self, digits: int = 3, *, signed: bool = False) -> str:
        """'12.3 ± 4.5 (n = 5)'; a single value has no interval: '12.3 (n = 1)'."""
        if self.n == 0 or not math.isfinite(self.mean):
            return "–"
        sign = "+" if signed else ""
        mean = f"{self.mean:{sign}.{digits}g}"
        if self.n < 2 or not math.isfinite(self.half_width):
            return f"{mean} (n = {self.n})"
        return f"{mean} ± {self.half_width:.{digits}g} (n = {self.n})"


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean and two-sided t-interval of independent values (NaNs dropped)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, 1)
    sem = float(x.std(ddof=1)) / math.sqrt(n)
    if sem == 0:
        return Interval(mean, mean, mean, n)
    low, high = stats.t.interval(level, n - 1, loc=mean, scale=sem)
    return Interval(mean, float(low), float(high), n)


def paired_difference(values: dict[int, float], baseline: dict[int, float], level: float = LEVEL) -> Interval:
    """t-interval of values[seed] - baseline[seed] over the seeds both have."""
    seeds = sorted(set(values) & set(baseline))
    return t_interval([values[s] - baseline[s] for s in seeds], level)


def wilson(successes: int, n: int, level: float = LEVEL) -> Interval:
    """A proportion and its Wilson score interval."""
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return Interval(successes / n, float(ci.low), float(ci.high), int(n))


def verdict(diff: Interval, *, lower_is_better: bool = False) -> str:
    """'better' / 'worse' when the paired interval excludes 0, else 'not significant'."""
    if not diff.significant:
        return "not significant" if diff.n >= 2 else "n < 2"
    better = diff.high < 0 if lower_is_better else diff.low > 0
    return "better" if better else "worse"
