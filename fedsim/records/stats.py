"""Intervals for reports: means over seeds, paired differences, proportions.

../shared/papers/evaluation.md, section 3: across seeds, the mean and a 95 % t-interval
with n - 1 degrees of freedom; against a baseline run on the same seeds, the per-seed
paired difference and its t-interval ("not significant" when it contains 0); within
one run, a proportion's Wilson interval and an ROC AUC's DeLong interval. scipy does the
distributions; this module only shapes the numbers for tables. The DeLong variance is
written by hand (ten lines of midranks): neither scipy nor scikit-learn offers it.
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


def _delong(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(AUC, DeLong variance; 0 when a side has fewer than 2 scores) of positives x against negatives y."""
    m, n = len(x), len(y)
    both = stats.rankdata(np.r_[x, y])
    v10 = (both[:m] - stats.rankdata(x)) / n  # share of negatives below each positive, ties half
    v01 = 1 - (both[m:] - stats.rankdata(y)) / m  # share of positives above each negative
    var = (v10.var(ddof=1) / m if m > 1 else 0.0) + (v01.var(ddof=1) / n if n > 1 else 0.0)
    return float(v10.mean()), float(var)


def auc_interval(positive: Sequence[float], negative: Sequence[float], level: float = LEVEL, *,
                 groups: tuple[Sequence[int], Sequence[int]] | None = None) -> Interval:
    """ROC AUC of scores (higher = more likely positive) and its DeLong interval; n counts both sides.

    DeLong et al. (Biometrics 1988) via midranks (Sun and Xu 2014): V10_i, the share of negatives
    below positive i (ties count half), V01_j, the share of positives above negative j;
    AUC = mean V10 and Var = var(V10) / m + var(V01) / n; normal interval, clipped to [0, 1].
    With ``groups`` (a group id per positive, per negative), only pairs within a group count:
    AUC = sum_g w_g AUC_g with w_g proportional to m_g n_g, Var = sum_g w_g^2 Var_g (groups are
    independent); groups missing on either side are left out. An interval needs 2 scores a side."""
    x, y = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    gx, gy = (np.zeros(len(x)), np.zeros(len(y))) if groups is None else map(np.asarray, groups)
    parts = [(x[gx == g], y[gy == g]) for g in np.unique(gx) if (gy == g).any()]
    if not parts:
        return Interval(math.nan, math.nan, math.nan, len(x) + len(y))
    weights = np.array([len(a) * len(b) for a, b in parts], dtype=np.float64)
    weights /= weights.sum()
    aucs, variances = np.array([_delong(a, b) for a, b in parts]).T
    auc, n = float(weights @ aucs), sum(len(a) + len(b) for a, b in parts)
    if sum(len(a) for a, _ in parts) < 2 or sum(len(b) for _, b in parts) < 2:
        return Interval(auc, math.nan, math.nan, n)
    half = float(stats.norm.ppf(0.5 + level / 2)) * math.sqrt(float(weights ** 2 @ variances))
    return Interval(auc, max(0.0, auc - half), min(1.0, auc + half), n)


def verdict(diff: Interval, *, lower_is_better: bool = False) -> str:
    """'better' / 'worse' when the paired interval excludes 0, else 'not significant'."""
    if not diff.significant:
        return "not significant" if diff.n >= 2 else "n < 2"
    better = diff.high < 0 if lower_is_better else diff.low > 0
    return "better" if better else "worse"


def first_hit(values: Sequence[float], target: float, *, higher: bool, window: int = 3) -> int | None:
    """Index of the first value whose trailing moving average (over up to ``window`` values) meets
    ``target`` (at least it if ``higher``, else at most it); None if none does: "rounds to target"."""
    x = np.asarray(values, dtype=float)
    smooth = np.array([x[max(0, i - window + 1):i + 1].mean() for i in range(len(x))])
    hit = np.flatnonzero(smooth >= target if higher else smooth <= target)
    return int(hit[0]) if hit.size else None


def censored_mean(reached: Sequence[bool], value: Sequence[float], bound: Sequence[float]) -> tuple[float, bool]:
    """Mean with each censored entry (not reached) counted at its bound; True when that makes the
    mean a lower bound (some entry was censored)."""
    ok = np.asarray(reached, dtype=bool)
    x = np.where(ok, np.asarray(value, dtype=float), np.asarray(bound, dtype=float))
    return (float(x.mean()) if len(x) else math.nan), bool((~ok).any())


def flat_intervals(rows: Sequence[dict]) -> list[dict]:
    """Rows for a CSV: each Interval value as three columns KEY_mean, KEY_low, KEY_high."""
    out = []
    for r in rows:
        row = {}
        for key, v in r.items():
            if isinstance(v, Interval):
                row.update({f"{key}_mean": v.mean, f"{key}_low": v.low, f"{key}_high": v.high})
            else:
                row[key] = v
        out.append(row)
    return out
