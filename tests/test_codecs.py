"""Tests for fedsim/compression/codecs.py and fedsim/compression/bitstream.py: hand-checkable
numbers and the invariants of shared/papers/compression.md (L = 1 is STC, MSE
falls with L, error feedback loses nothing, bit formulas match the bytes)."""

import math

import numpy as np
import pytest

from fedsim.compression.bitstream import Reader, Writer
from fedsim.compression.codecs import (DHQ, QSGD, STC, TopK, decode_update, encode_update, make_codec,
                               top_k_indices)

U = np.array([[0.5, -1.0, 0.05], [0.25, 0.0, -0.1]], dtype=np.float32)


def roundtrip(codec, u, rng=None):
    return codec.decode(codec.encode(u, rng), u.shape)


def test_top_k_keeps_the_largest_magnitudes():
    assert top_k_indices(U, 0.5).tolist() == [0, 1, 3]  # |u| 1.0, 0.5, 0.25
    np.testing.assert_array_equal(roundtrip(TopK(0.5), U), [[0.5, -1.0, 0.0], [0.25, 0.0, 0.0]])


def test_stc_by_hand():
    """top-3 magnitudes 1.0, 0.5, 0.25 -> mu = 7/12, signs kept."""
    mu = np.float32(7 / 12)
    np.testing.assert_array_equal(roundtrip(STC(0.5), U), [[mu, -mu, 0.0], [mu, 0.0, 0.0]])


def test_dhq_with_one_level_is_stc_bit_for_bit():
    u = np.random.default_rng(0).normal(size=(64, 33)).astype(np.float32)
    assert DHQ(0.1, levels=1).encode(u) == STC(0.1).encode(u)
    idx = top_k_indices(u, 0.1)  # STC from its definition, not from DHQ's code
    mu = np.abs(u.ravel()[idx]).astype(np.float64).mean()
    expect = np.zeros(u.size, np.float32)
    expect[idx] = np.sign(u.ravel()[idx]) * np.float32(mu)
    np.testing.assert_array_equal(roundtrip(STC(0.1), u).ravel(), expect)


@pytest.mark.parametrize("split", ["quantile", "tree"])
def test_quantization_error_does_not_grow_with_levels(split):
    u = np.random.default_rng(1).standard_t(3, size=(128, 64)).astype(np.float32)
    kept = roundtrip(TopK(0.05), u)
    mse = [float(np.mean((roundtrip(DHQ(0.05, L, split), u) - kept) ** 2)) for L in (1, 2, 4, 8)]
    assert all(a >= b - 1e-12 for a, b in zip(mse, mse[1:])) and mse[-1] < mse[0] / 4


def test_dhq_levels_are_equal_count_and_means_of_their_cells():
    u = np.arange(1, 9, dtype=np.float32)  # keep all: levels {1,2} {3,4} {5,6} {7,8}
    np.testing.assert_array_equal(roundtrip(DHQ(1.0, 4), u), [1.5, 1.5, 3.5, 3.5, 5.5, 5.5, 7.5, 7.5])
    # tree: split at mean 4.5, then at 2.5 and 6.5
    np.testing.assert_array_equal(roundtrip(DHQ(1.0, 4, "tree"), u), [1.5, 1.5, 3.5, 3.5, 5.5, 5.5, 7.5, 7.5])


@pytest.mark.parametrize("codec", [TopK(0.1), STC(0.1), DHQ(0.1, 4), DHQ(0.1, 8, "tree")])
def test_decode_is_zero_off_the_selected_indices(codec):
    u = np.random.default_rng(2).normal(size=(5, 4, 3, 3)).astype(np.float32)
    out = roundtrip(codec, u)
    assert out.shape == u.shape and out.dtype == np.float32
    mask = np.zeros(u.size, bool)
    mask[top_k_indices(u, 0.1)] = True
    assert not out.ravel()[~mask].any() and out.ravel()[mask].all()


def test_error_feedback_loses_nothing():
    rng = np.random.default_rng(3)
    residual, codec = {}, DHQ(0.05, levels=4)
    deltas = [{"w": rng.normal(size=(40, 30)).astype(np.float32)} for _ in range(6)]
    sent = sum(encode_update(codec, d, residual=residual)[1]["w"] for d in deltas)
    np.testing.assert_allclose(sent + residual["w"], sum(d["w"] for d in deltas), atol=1e-4)


def test_qsgd_is_unbiased_and_bounded():
    u = np.array([0.3, -0.4, 0.0, 1.2], dtype=np.float32)
    codec, rng = QSGD(4), np.random.default_rng(4)
    draws = np.stack([roundtrip(codec, u, rng) for _ in range(20000)])
    np.testing.assert_allclose(draws.mean(0), u, atol=0.01)
    assert np.all(np.abs(draws) <= np.linalg.norm(u) + 1e-6) and np.all(draws[:, 2] == 0)


def test_qsgd_buckets_use_their_own_norms():
    u = np.concatenate([np.full(4, 100.0), np.full(3, 0.01)]).astype(np.float32)
    out = roundtrip(QSGD(8, bucket=4), u, np.random.default_rng(0))
    np.testing.assert_allclose(out, u, rtol=0.51)  # one norm for all would round 0.01 to 0


def test_golomb_rice_roundtrip_and_size():
    rng = np.random.default_rng(5)
    for n, k in [(10, 10), (1, 1), (10**6, 10**4), (1000, 3)]:
        idx = np.sort(rng.choice(n, size=k, replace=False))
        w = Writer()
        w.sorted_indices(idx)
        data = w.getvalue()
        np.testing.assert_array_equal(Reader(data).sorted_indices(k), idx)
    bits_per_index = (len(data) - 5) * 8 / 3
    # p = 0.01 (n = 1e6, k = 1e4): the paper's b_idx ~ log2(1/p) + 2 = 8.64
    w = Writer()
    idx = np.sort(rng.choice(10**6, size=10**4, replace=False))
    w.sorted_indices(idx)
    bits_per_index = (len(w.getvalue()) - 5) * 8 / 10**4
    assert 7.5 < bits_per_index < 9.0, bits_per_index


@pytest.mark.parametrize("codec", [TopK(0.01), STC(0.01), DHQ(0.01, 4), DHQ(0.01, 8), QSGD(16)])
def test_bit_formula_matches_the_encoded_size(codec):
    n, p = 10**6, 0.01
    u = np.random.default_rng(6).normal(size=n).astype(np.float32)
    w = Writer()
    w.sorted_indices(top_k_indices(u, p))
    index_bits = 8 * len(w.getvalue()) / math.ceil(p * n)  # b_idx, exact, from the encoder
    measured = 8 * len(codec.encode(u, np.random.default_rng(0)))
    formula = codec.bits(n, index_bits)
    assert abs(measured - formula) / formula < 0.05, (measured, formula)


def test_paper_worked_example_dhq_is_about_275x():
    u = np.random.default_rng(7).normal(size=10**6).astype(np.float32)
    ratio = 4 * u.size / len(DHQ(0.01, 4).encode(u))
    assert 250 < ratio < 300, ratio


def test_update_roundtrip_keeps_names_shapes_dtypes():
    rng = np.random.default_rng(8)
    tensors = {"conv.weight": rng.normal(size=(8, 1, 3, 3)).astype(np.float32),
               "conv.bias": rng.normal(size=8).astype(np.float32),
               "bn.num_batches_tracked": np.array(7, dtype=np.int64),
               "fc.weight": rng.normal(size=(10, 72)).astype(np.float16)}
    layout = {k: (v.shape, v.dtype) for k, v in tensors.items()}
    for name in ("topk", "stc", "dhq", "qsgd"):
        codec = make_codec(name, keep_ratio=0.2)
        data, sent = encode_update(codec, tensors, rng=np.random.default_rng(0))
        out = decode_update(codec, data, layout)
        assert list(out) == list(tensors)
        for k in tensors:
            assert out[k].shape == tensors[k].shape and out[k].dtype == tensors[k].dtype, (name, k)
            np.testing.assert_array_equal(out[k], sent[k])
        assert out["bn.num_batches_tracked"] == 7


def test_decode_rejects_wrong_codec_and_truncation():
    tensors = {"w": np.ones((4, 4), np.float32)}
    layout = {"w": ((4, 4), np.float32)}
    data, _ = encode_update(DHQ(0.5, 2), tensors)
    with pytest.raises(ValueError, match="encoded with 'dhq', expected 'stc'"):
        decode_update(STC(0.5), data, layout)
    with pytest.raises(ValueError, match="truncated"):
        decode_update(DHQ(0.5, 2), data[:-3], layout)
    with pytest.raises(ValueError, match="trailing"):
        decode_update(DHQ(0.5, 2), data + b"\0", layout)


@pytest.mark.parametrize("kwargs, message", [({"keep_ratio": 0}, "keep-ratio"), ({"levels": 0}, "levels"),
                                             ({"levels": 3, "split": "tree"}, "2\\^depth")])
def test_bad_settings_say_which(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_codec("dhq", **kwargs)


def test_fixed_width_fields_match_packbits_bit_for_bit():
    rng = np.random.default_rng(9)
    for width in range(1, 17):
        for n in (0, 1, 7, 8, 9, 1001):
            v = rng.integers(0, 1 << width, size=n)
            w = Writer()
            w.uints(v, width)
            ref = np.packbits(((v[:, None] >> np.arange(width - 1, -1, -1)) & 1).astype(np.uint8).ravel())
            assert w.getvalue() == (ref.tobytes() if n else b""), (width, n)
            np.testing.assert_array_equal(Reader(w.getvalue()).uints(n, width), v)
