"""Tests for fedsim/evaluation/evaluator.py and references.py: the evaluator's reject option.

Acceptance (issue 16, ../shared/papers/evaluation.md): on MNIST-5k at most 1 % of uniform
noise, Gaussian noise and untrained-DDPM samples are recognised as any class, and at least
95 % of the real test images are recognised and classified correctly. The sets here are
drawn from other seeds than the validation table's, so the checks do not read the table back.
Building the MNIST-5k evaluator takes about a minute once; it is cached (FEDSIM_CACHE).
"""

import numpy as np
import pandas as pd
import pytest
import torch

from fedsim.data.datasets import load_dataset
from fedsim.evaluation.evaluator import calibration_split, evaluator_path, get_evaluator
from fedsim.evaluation.references import gaussian_blur, untrained_ddpm_samples


@pytest.fixture(scope="module")
def mnist():
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    return get_evaluator(train, test), train, test


def test_real_test_images_are_recognised_and_correct(mnist):
    ev, _, test = mnist
    pred = ev.predict(test.images)
    assert (pred == test.labels).mean() >= 0.95
    assert ev.test_accuracy >= 0.95


@pytest.mark.parametrize("kind", ["uniform", "gaussian", "ddpm"])
def test_noise_and_untrained_ddpm_samples_are_not_recognised(mnist, kind):
    ev, _, test = mnist
    g = torch.Generator().manual_seed(2024)
    shape = (500, *test.shape)
    images = {"uniform": lambda: torch.rand(shape, generator=g) * 2 - 1,
              "gaussian": lambda: torch.randn(shape, generator=g).clamp(-1, 1),
              "ddpm": lambda: untrained_ddpm_samples(test.shape, 300)}[kind]()
    pred = ev.predict(images)
    assert (pred >= 0).mean() <= 0.01
    if kind != "ddpm":  # the plain argmax names a class for every noise image: the reject option does the work
        assert (ev.judge(images)[0] >= 0).all() and ev.judge(images)[0].min() < 10


def test_heavily_blurred_digits_are_rejected(mnist):
    ev, _, test = mnist
    blurred = gaussian_blur(test.images[:500], 3.0).clamp(-1, 1)
    assert (ev.predict(blurred) >= 0).mean() <= 0.05


def test_validation_table_is_written_next_to_the_weights(mnist):
    ev, train, _ = mnist
    table = pd.read_csv(evaluator_path(train) / "validation.csv")
    assert list(table["kind"][:3]) == ["real test images", "uniform noise", "gaussian noise"]
    assert "untrained DDPM samples" in set(table["kind"])
    assert table["pass"].all()
    real = table.iloc[0]
    assert real["recognised_correct"] >= 0.95 and real["n"] == 1000


def test_cached_evaluator_gives_the_same_judgements(mnist):
    ev, train, test = mnist
    again = get_evaluator(train, test)
    assert again.max_distance == ev.max_distance and again.min_confidence == ev.min_confidence
    assert np.array_equal(again.predict(test.images[:200]), ev.predict(test.images[:200]))


def test_calibration_images_are_a_fixed_tenth_of_each_class():
    labels = load_dataset("mnist5k", "train").labels
    mask = calibration_split(labels)
    assert (np.bincount(labels[mask], minlength=10) == 40).all()
    assert np.array_equal(mask, calibration_split(labels))


def test_unrecognised_samples_count_for_no_class(mnist):
    ev, _, test = mnist
    images = torch.cat([test.images[:100], torch.rand(100, *test.shape) * 2 - 1])
    pred = ev.predict(images)
    assert (pred[100:] == -1).all() and (pred[:100] >= 0).mean() > 0.9
