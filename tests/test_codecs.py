"""Tests for strategies/codecs.py: hand-checkable numbers and the invariants of
shared/papers/compression.md (L = 1 is STC, MSE falls with L, error feedback loses nothing)."""

import numpy as np
import pytest

from strategies.codecs import DHQ, QSGD, STC, ErrorFeedback, TopK, top_k_indices

U = np.array([[0.5, -1.0, 0.05], [0.25, 0.0, -0.1]], dtype=np.float32)


def test_top_k_keeps_the_largest_magnitudes():
    assert top_k_indices(U, 0.5).tolist() == [0, 1, 3]  # |u| 1.0, 0.5, 0.25
    np.testing.assert_array_equal(TopK(0.5).decode(TopK(0.5).encode(U), U.shape),
                                  [[0.5, -1.0, 0.0], [0.25, 0.0, 0.0]])


def test_stc_by_hand():
    """top-3 magnitudes 1.0, 0.5, 0.25 -> mu = 7/12, signs kept."""
    mu = np.float32(7 / 12)
    np.testing.assert_array_equal(STC(0.5).decode(STC(0.5).encode(U), U.shape),
                                  [[mu, -mu, 0.0], [mu, 0.0, 0.0]])


def test_dhq_with_one_level_is_stc_bit_for_bit():
    rng = np.random.default_rng(0)
    u = rng.normal(size=(64, 33)).astype(np.float32)
    a, b = DHQ(0.1, levels=1).encode(u), STC(0.1).encode(u)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert np.array_equal(DHQ(0.1, levels=1).decode(a, u.shape), STC(0.1).decode(b, u.shape))


def test_quantization_error_does_not_grow_with_levels():
    u = np.random.default_rng(1).standard_t(3, size=(128, 64)).astype(np.float32)
    kept = TopK(0.05).decode(TopK(0.05).encode(u), u.shape)
    mse = [float(np.mean((DHQ(0.05, levels=L).decode(DHQ(0.05, levels=L).encode(u), u.shape) - kept) ** 2))
           for L in (1, 2, 4, 8)]
    assert all(a >= b - 1e-12 for a, b in zip(mse, mse[1:])) and mse[-1] < mse[0] / 4


@pytest.mark.parametrize("codec", [TopK(0.1), STC(0.1), DHQ(0.1, 4)])
def test_decode_is_zero_off_the_selected_indices_and_keeps_shape(codec):
    u = np.random.default_rng(2).normal(size=(5, 4, 3, 3)).astype(np.float32)
    payload = codec.encode(u)
    out = codec.decode(payload, u.shape)
    assert out.shape == u.shape and out.dtype == np.float32
    mask = np.zeros(u.size, bool)
    mask[payload["idx"]] = True
    assert not out.ravel()[~mask].any()


def test_error_feedback_loses_nothing():
    rng = np.random.default_rng(3)
    ef, codec = ErrorFeedback(), DHQ(0.05, levels=4)
    deltas = [rng.normal(size=(40, 30)).astype(np.float32) for _ in range(6)]
    sent = sum(ef.step("w", d, codec)[1] for d in deltas)
    np.testing.assert_allclose(sent + ef.residual["w"], sum(deltas), atol=1e-4)


def test_qsgd_is_unbiased_and_bounded():
    u = np.array([0.3, -0.4, 0.0, 1.2], dtype=np.float32)
    codec, rng = QSGD(4), np.random.default_rng(4)
    draws = np.stack([codec.decode(codec.encode(u, rng=rng), u.shape) for _ in range(20000)])
    np.testing.assert_allclose(draws.mean(0), u, atol=0.01)
    norm = np.linalg.norm(u)
    assert np.all(np.abs(draws) <= norm + 1e-6) and np.all(draws[:, 2] == 0)
