"""Tests for fedsim/compression/codecs.py and fedsim/compression/bitstream.py: hand-checkable
numbers and the invariants of shared/papers/compression.md (L = 1 is STC, MSE
falls with L, error feedback delivers the cumulative update where a codec that drops mass
does not, bit formulas with an independently computed index cost match the bytes)."""

import functools
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


class DropsEverything(TopK):
    """A codec that sends nothing: with error feedback the invariant sent + residual =
    sum of deltas still holds (the residual absorbs all), so that invariant alone cannot
    tell it from a working codec; tracking the cumulative sum can."""

    def write(self, flat, sizes, w, rng=None):
        return np.zeros_like(flat)

    def read(self, r, sizes):
        return np.zeros(int(np.sum(sizes)), np.float32)


def feedback_run(codec, feedback: bool, rounds: int = 200):
    """Rounds of drift + noise deltas through encode_update, the receiver decoding the
    bytes. Returns (sum of deltas, sum decoded, final residual, ||sum deltas - sum decoded||
    per round)."""
    rng = np.random.default_rng(3)
    drift = rng.normal(size=(40, 30)).astype(np.float32)  # every round pushes the same way
    layout, residual = {"w": ((40, 30), np.float32)}, ({} if feedback else None)
    true, decoded, gap = np.zeros((40, 30)), np.zeros((40, 30)), []
    for _ in range(rounds):
        delta = {"w": (drift + 2 * rng.normal(size=(40, 30))).astype(np.float32)}
        data, sent = encode_update(codec, delta, residual=residual)
        got = decode_update(codec, data, layout)["w"]
        np.testing.assert_array_equal(got, sent["w"])  # error feedback subtracts what is decoded
        true, decoded = true + delta["w"], decoded + got
        gap.append(float(np.linalg.norm(true - decoded)))
    return true, decoded, (residual or {}).get("w"), np.array(gap)


def tracks(true, gap) -> bool:
    """The decoded sum follows the true sum: the gap is a few per cent of it at the end and
    does not grow (second half no larger than the first, up to noise). Working codecs with
    feedback: ~4 %, growth ~1.05; dropping mass: 70-100 %, growth ~2 (linear)."""
    half = len(gap) // 2
    return gap[-1] < 0.1 * np.linalg.norm(true) and gap[half:].max() < 1.25 * gap[:half].max()


@pytest.mark.parametrize("codec", [TopK(0.05), STC(0.05), DHQ(0.05, 4), DHQ(0.05, 8, "tree")])
def test_error_feedback_delivers_the_cumulative_update(codec):
    """u = delta + e, send C(u), e <- u - C(u): what is left out returns in later rounds, so
    sum decoded + residual = sum deltas, and the residual stays bounded while the sum grows."""
    true, decoded, residual, gap = feedback_run(codec, feedback=True)
    np.testing.assert_allclose(decoded + residual, true, atol=1e-3)
    assert tracks(true, gap), (gap[-1] / np.linalg.norm(true), gap[len(gap) // 2:].max() / gap[:len(gap) // 2].max())


@pytest.mark.parametrize("codec, feedback", [(DropsEverything(0.05), True), (TopK(0.05), False),
                                             (DHQ(0.05, 4), False)])
def test_codecs_that_drop_mass_fail_the_tracking_check(codec, feedback):
    """The check above is not vacuous: sending zeros (error feedback on) or top-k that
    forgets what it left out (off) lose a fixed share of every round, and it says so."""
    true, _, _, gap = feedback_run(codec, feedback)
    assert not tracks(true, gap)


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
    # p = 0.01 (n = 1e6, k = 1e4): the paper's b_idx ~ log2(1/p) + 2 = 8.64
    w = Writer()
    idx = np.sort(rng.choice(10**6, size=10**4, replace=False))
    w.sorted_indices(idx)
    bits_per_index = (len(w.getvalue()) - 5) * 8 / 10**4
    assert 7.5 < bits_per_index < 9.0, bits_per_index


def golomb_rice_bits_per_index(idx: np.ndarray) -> float:
    """b_idx from the format bitstream.py documents, not from its encoder: gaps
    g = i_j - i_{j-1} - 1, the best m over 0..31 of sum (g >> m) + k (1 + m) bits, plus
    the 8-bit m and 32-bit unary length in front."""
    gaps = np.diff(np.asarray(idx, np.int64), prepend=-1) - 1
    best = min(int((gaps >> m).sum()) + gaps.size * (1 + m) for m in range(32))
    return (best + 40) / gaps.size


# shared/papers/compression.md, "Bit accounting", one tensor of n values (k = p n kept)
SPEC_BITS = {"topk": lambda c, k, b: k * (32 + b),
             "stc": lambda c, k, b: k * (1 + b) + 32,
             "dhq": lambda c, k, b: k * (1 + math.ceil(math.log2(c.levels)) + b) + 32 * c.levels,
             "qsgd": lambda c, k, b: N_BITS * (1 + math.ceil(math.log2(c.s + 1)))
             + 32 * math.ceil(N_BITS / (c.bucket or N_BITS))}
N_BITS = 10**6


@functools.cache
def bits_case():
    """One tensor of 10^6 normal values; k = 1 % of them; b_idx of their top-k mask."""
    u = np.random.default_rng(6).normal(size=N_BITS).astype(np.float32)
    k = math.ceil(0.01 * N_BITS)
    return u, k, golomb_rice_bits_per_index(np.sort(np.argsort(-np.abs(u), kind="stable")[:k]))


@pytest.mark.parametrize("codec", [TopK(0.01), STC(0.01), DHQ(0.01, 4), DHQ(0.01, 8), DHQ(0.01, 8, "tree"),
                                   QSGD(16), QSGD(16, bucket=512)])
def test_bit_formula_matches_the_encoded_size(codec):
    """Measured bytes = the spec's formula with an independently computed b_idx, up to the
    byte padding of at most four fields (indices' unary and remainder parts, signs, level
    ids): a wrong index width (m off by one costs >= 0.06 bit per index, 600 bits here)
    or a wrong field width shows."""
    n, p = N_BITS, 0.01
    u, k, b_idx = bits_case()
    entropy = -(p * math.log2(p) + (1 - p) * math.log2(1 - p)) / p  # 8.08 bits: no code of the mask does better
    assert entropy < b_idx < entropy + 0.1 < math.log2(1 / p) + 2  # Rice codes of geometric gaps are near it
    formula = SPEC_BITS[codec.name](codec, k, b_idx)
    assert codec.bits(n, b_idx) == pytest.approx(formula, rel=1e-12)
    measured = 8 * len(codec.encode(u, np.random.default_rng(0)))
    assert 0 <= measured - formula < 32, (measured, formula)


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
