"""fedsim/unlearning/generated.py: class shares over recognised samples, Wilson intervals, the
forgotten class's mean probability and entropy, and quality on the remaining classes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedsim.data.datasets import load_dataset
from fedsim.evaluation.evaluator import calibration_split, get_evaluator
from fedsim.unlearning.generated import CLASS_KEYS, class_scores, quality_scores

pytestmark = pytest.mark.usefixtures("one_thread")

# 8 samples, 3 classes; the evaluator recognised 5 of them, 3 as class 0
PRED = np.array([0, 0, -1, -1, 1, 2, -1, 0])
PROB = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.8, 0.1, 0.1],
                 [0.2, 0.8, 0.0], [0.0, 0.0, 1.0], [0.6, 0.2, 0.2], [0.9, 0.1, 0.0]])
COND = np.array([0, 0, 0, 1, 1, 2, 2, 0])  # samples 0, 1, 2, 7 conditioned on class 0


@pytest.fixture(scope="module")
def digits(fedsim_cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDSIM_CACHE", str(fedsim_cache))
        train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
        yield get_evaluator(train, test), train, test


def _entropy(p: list[float]) -> float:
    return -sum(x * math.log(x) for x in p if x > 0)


def test_forget_rate_counts_recognised_samples_only() -> None:
    out = class_scores(PRED, PROB, None, 0)
    assert list(out) == CLASS_KEYS
    assert out["forget_rate"] == pytest.approx(3 / 5)  # not 3 / 8: the 3 rejected count for no class
    assert out["recognised_n"] == 5 and out["unrecognised"] == pytest.approx(3 / 8)
    # Wilson 95 % for 3 of 5, by hand: (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)
    z = 1.959964
    centre, half = (0.6 + z * z / 10) / (1 + z * z / 5), z * math.sqrt(0.6 * 0.4 / 5 + z * z / 100) / (1 + z * z / 5)
    assert out["forget_rate_low"] == pytest.approx(centre - half, abs=1e-5)
    assert out["forget_rate_high"] == pytest.approx(centre + half, abs=1e-5)
    assert math.isnan(out["forget_rate_cond"]) and math.isnan(out["unrecognised_cond"])  # unconditional


def test_unconditional_mean_probability_and_entropy_over_all_samples() -> None:
    out = class_scores(PRED, PROB, None, 0)
    assert out["forget_prob"] == pytest.approx(PROB[:, 0].mean())
    assert out["forget_entropy"] == pytest.approx(np.mean([_entropy(list(p)) for p in PROB]))


def test_conditional_scores_use_the_samples_conditioned_on_the_class() -> None:
    out = class_scores(PRED, PROB, COND, 0)
    assert out["forget_rate"] == pytest.approx(3 / 5)
    # conditioned on 0: samples 0, 1, 7 recognised (all as 0), sample 2 rejected
    assert out["forget_rate_cond"] == 1.0 and out["recognised_cond_n"] == 3
    assert out["unrecognised_cond"] == pytest.approx(1 / 4)
    assert out["forget_prob"] == pytest.approx((0.5 + 1.0 + 0.9 + 0.9) / 4)
    assert out["forget_entropy"] == pytest.approx(
        (_entropy([0.5, 0.5]) + 0 + 2 * _entropy([0.9, 0.1])) / 4)
    other = class_scores(PRED, PROB, COND, 2)
    assert other["forget_rate_cond"] == 1.0 and other["unrecognised_cond"] == 0.5
    assert other["forget_prob"] == pytest.approx(0.6)


def test_no_target_class_leaves_the_class_keys_undefined() -> None:
    out = class_scores(PRED, PROB, COND, -1)
    assert out["unrecognised"] == pytest.approx(3 / 8)
    assert all(math.isnan(out[k]) for k in ("forget_rate", "forget_rate_cond", "forget_prob", "forget_entropy"))


def test_samples_the_evaluator_rejects_never_count_as_the_forgotten_class(digits) -> None:
    ev, _, test = digits
    noise = torch.rand((300, *test.shape), generator=torch.Generator().manual_seed(0)) * 2 - 1
    pred, _, prob = ev.predict_full(noise)
    target = int(np.bincount(prob.argmax(1), minlength=10).argmax())  # the class noise looks most like
    assert (prob.argmax(1) == target).mean() > 0.1  # a plain classifier would count these as the class
    assert (pred == -1).mean() > 0.99
    out = class_scores(pred, prob, None, target)
    assert out["unrecognised"] > 0.99 and out["recognised_n"] <= 3
    assert not out["forget_rate"] > 0  # NaN (nothing recognised) or 0
    # real test images of the class are counted
    real = class_scores(*ev.predict_full(test.images)[::2], None, target)
    assert real["forget_rate"] == pytest.approx(0.1, abs=0.04)


def test_quality_of_real_images_is_at_its_floor_and_noise_is_far(digits) -> None:
    ev, train, test = digits  # real images the evaluator never trained on (its calibration tenth), not 0s
    held_out = calibration_split(train.labels) & (train.labels != 0)
    real = ev.features(train.images[torch.from_numpy(held_out)])
    noise = ev.features(torch.rand((90, *test.shape), generator=torch.Generator().manual_seed(1)) * 2 - 1)
    good, bad = quality_scores(ev, real, test, 0, seed=0), quality_scores(ev, noise, test, 0, seed=0)
    assert bad["fd_remaining"] > 5 * good["fd_remaining"]
    assert bad["kid_remaining"] > 5 * max(good["kid_remaining"], 0.01)
    assert good["fd_remaining"] < 2 * good["fd_floor"] and good["precision"] > 0.8 > bad["precision"]
