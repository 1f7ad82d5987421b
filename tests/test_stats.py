"""Tests for fedsim/records/stats.py against values computed by hand / known tables."""

import math

import numpy as np
import pytest

from fedsim.records.stats import auc_interval, paired_difference, t_interval, verdict, wilson


def test_t_interval_matches_the_t_table():
    # mean 2, sd 1, n = 4: half-width = t_{0.975, 3} * 1 / 2 = 3.1824 / 2
    iv = t_interval([1.0, 2.0, 3.0, 2.0 + 0.0])
    sd = math.sqrt(((1 - 2) ** 2 + 0 + 1 + 0) / 3)
    assert iv.mean == 2.0 and iv.n == 4
    assert iv.half_width == pytest.approx(3.182446 * sd / 2, rel=1e-5)
    assert iv.fmt() == f"2 ± {iv.half_width:.3g} (n = 4)"


def test_single_and_empty_samples_have_no_interval():
    assert t_interval([5.0]).fmt() == "5 (n = 1)" and math.isnan(t_interval([5.0]).low)
    assert t_interval([]).fmt() == "–" and t_interval([float("nan")]).n == 0


def test_paired_difference_uses_only_common_seeds_and_removes_seed_effects():
    base = {0: 100.0, 1: 50.0, 2: 10.0, 3: 70.0}
    better = {0: 90.0, 1: 41.0, 2: 1.0}  # ~9-10 fewer on every seed: big seed effects, tiny spread
    diff = paired_difference(better, base)
    assert diff.n == 3 and diff.mean == pytest.approx(-28 / 3)
    assert diff.significant and verdict(diff, lower_is_better=True) == "better"
    # unpaired, the same numbers would not separate
    assert t_interval(list(better.values())).high > t_interval(list(base.values())[:3]).low


def test_a_difference_whose_interval_contains_zero_is_not_significant():
    # the FedEMD gains 37, 56, -2 of issue 16: paired t = 1.78, df = 2 -> not significant
    diff = paired_difference({0: 37.0, 1: 56.0, 2: -2.0}, {0: 0.0, 1: 0.0, 2: 0.0})
    assert diff.low < 0 < diff.high and verdict(diff) == "not significant"


def test_wilson_interval_of_known_proportions():
    iv = wilson(5, 500)  # the unlearning contrast of issue 16: 1.0 %
    assert iv.mean == 0.01 and iv.low == pytest.approx(0.00427, abs=1e-4) and iv.high == pytest.approx(0.0232, abs=2e-4)
    assert wilson(0, 10).low == 0.0 and wilson(10, 10).high == 1.0


def test_auc_interval_is_delong_by_hand():
    # positives 0.9, 0.8, 0.4 against negatives 0.5, 0.3: V10 = (1, 1, 1/2), V01 = (2/3, 1)
    # AUC = 5/6; Var = var(V10)/3 + var(V01)/2 = (1/12)/3 + (1/18)/2 = 1/18 (sample variances)
    iv = auc_interval([0.9, 0.8, 0.4], [0.5, 0.3])
    assert iv.mean == pytest.approx(5 / 6) and iv.n == 5
    assert iv.low == pytest.approx(5 / 6 - 1.959964 * math.sqrt(1 / 18), abs=1e-5) and iv.high == 1.0
    # ties count half: positives (1, 2), negatives (1, 0): V10 = (3/4, 1), V01 = (3/4, 1), AUC = 7/8
    tie = auc_interval([1.0, 2.0], [1.0, 0.0])
    var = np.var([0.75, 1.0], ddof=1) / 2 + np.var([0.75, 1.0], ddof=1) / 2
    assert tie.mean == pytest.approx(0.875) and tie.low == pytest.approx(0.875 - 1.959964 * math.sqrt(var), abs=1e-5)
    assert math.isnan(auc_interval([1.0], [0.0]).low) and auc_interval([1.0], [0.0]).mean == 1.0


def test_first_hit_reads_the_trailing_moving_average():
    from fedsim.records.stats import first_hit

    # moving averages over up to 3 values: 0.2, 0.4, 0.5, 0.7
    assert first_hit([0.2, 0.6, 0.7, 1.0], 0.5, higher=True) == 2
    assert first_hit([0.2, 0.6, 0.7, 1.0], 0.5, higher=True, window=1) == 1
    assert first_hit([3.0, 1.0, 1.0, 1.0], 1.0, higher=False) == 3  # 3, 2, 1.67, 1
    assert first_hit([0.1, 0.2], 0.5, higher=True) is None


def test_censored_mean_counts_censored_entries_at_their_bound():
    from fedsim.records.stats import censored_mean

    assert censored_mean([True, False, True], [3.0, float("nan"), 1.0], [9.0, 31.0, 9.0]) == ((3 + 31 + 1) / 3, True)
    assert censored_mean([True, True], [2.0, 4.0], [9.0, 9.0]) == (3.0, False)


def test_flat_intervals_spread_each_interval_over_three_columns():
    from fedsim.records.stats import Interval, flat_intervals

    assert flat_intervals([{"m": "a", "x": Interval(1.0, 0.5, 1.5, 3)}]) == [
        {"m": "a", "x_mean": 1.0, "x_low": 0.5, "x_high": 1.5}]
