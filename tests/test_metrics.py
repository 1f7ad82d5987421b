"""Tests for fedsim/evaluation/metrics.py: KID, precision/recall and the real-vs-real floors.

Features are drawn from known distributions, so each metric has an expected value:
KID of a set against itself-distributed data is ~0 (unbiased, may be slightly negative)
and grows with a mean shift; precision/recall are ~1 for matching sets, and a collapsed
generator (all samples near one real point) has high precision and low recall.
"""

import numpy as np
import pytest

from fedsim.evaluation.metrics import kid, precision_recall, real_halves, scores


def _normal(seed, n, d=8, shift=0.0):
    return np.random.default_rng(seed).standard_normal((n, d)) + shift


def test_kid_is_unbiased_near_zero_for_one_distribution_and_grows_with_shift():
    real = _normal(0, 600)
    same, _ = kid(_normal(1, 600), real)
    shifted, std = kid(_normal(2, 600, shift=1.0), real)
    assert abs(same) < 0.02
    assert shifted > 0.3 and std >= 0
    assert kid(_normal(2, 600, shift=2.0), real)[0] > 2 * shifted


def test_kid_is_reproducible_from_its_seed():
    a, b = _normal(0, 300), _normal(1, 300, shift=0.3)
    assert kid(a, b, seed=3) == kid(a, b, seed=3)


def test_precision_recall_matching_sets_and_mode_collapse():
    real = _normal(0, 500)
    p, r = precision_recall(_normal(1, 500), real)
    assert p > 0.8 and r > 0.8
    collapsed = real[:1] + 0.01 * _normal(2, 500)  # every sample near one real image
    p, r = precision_recall(collapsed, real)
    assert p > 0.95 and r < 0.05
    far = _normal(3, 500, shift=10.0)  # nothing looks real, nothing real is covered
    assert precision_recall(far, real) == (0.0, 0.0)


def test_real_halves_are_disjoint_and_class_balanced():
    labels = np.repeat(np.arange(10), 100)
    a, b = real_halves(labels)
    assert len(set(a) & set(b)) == 0 and len(a) + len(b) == 1000
    assert (np.bincount(labels[a]) == 50).all() and (np.bincount(labels[b]) == 50).all()
    # any prefix is balanced too: the floor at N = 200 sees every class, not the first two
    assert (np.bincount(labels[a[:200]], minlength=10) == 20).all()
    assert (np.bincount(labels[b[:30]], minlength=10) == 3).all()


def test_scores_compare_at_equal_n_against_the_floor():
    reference, floor = _normal(0, 500), _normal(1, 500)
    row = scores(_normal(2, 2000, shift=1.0), floor, reference)
    assert row["fd"] == pytest.approx(8.0, rel=0.2)  # ||shift||^2 = 8 in 8-d
    assert row["fd_floor"] < 1.0 and row["kid_floor"] < 0.02 < row["kid"]
    assert row["precision_floor"] > 0.8 and row["recall_floor"] > 0.8
