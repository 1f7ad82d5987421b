"""Tests for fedsim/evaluation/evaluator.py (Frechet distance) and fedsim/evaluation/server.py (sample grids,
evaluation schedule).

Frechet distance cases with closed forms: identical sets (0), a pure mean shift d
(||d||^2), and a set scaled by 2 (Tr S: the covariance term alone).
"""

import numpy as np
import pytest
import torch
from PIL import Image

from fedsim.config import RunConfig
from fedsim.evaluation.metrics import frechet_distance
from fedsim.evaluation.server import ServerEvaluator, save_grid


@pytest.fixture(scope="module")
def feats():
    return np.random.default_rng(0).standard_normal((2000, 4))


def test_fd_identical_sets_is_zero(feats):
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-4)


def test_fd_same_set_shifted_is_squared_shift(feats):
    d = np.array([3.0, 4.0, 0.0, 0.0])  # ||d||^2 = 25; covariances identical
    assert frechet_distance(feats, feats + d) == pytest.approx(25.0, abs=1e-4)
    assert frechet_distance(feats + d, feats) == pytest.approx(25.0, abs=1e-4)  # symmetric


def test_fd_independent_samples_shifted(feats):
    other = np.random.default_rng(1).standard_normal((20000, 4)) + np.array([1.0, 0.0, -1.0, 2.0])
    # ||d||^2 = 1 + 1 + 4 = 6; sampling error of means and covariances ~ 0.05 at these sizes
    assert frechet_distance(feats, other) == pytest.approx(6.0, abs=0.3)


def test_fd_scaled_set_is_trace_of_covariance(feats):
    a = feats - feats.mean(0)
    # S_b = 4 S_a, (S_a S_b)^(1/2) = 2 S_a: Tr(S_a + 4 S_a - 4 S_a) = Tr(S_a), means both 0
    expected = np.trace(np.cov(a, rowvar=False))
    assert expected == pytest.approx(4.0, abs=0.3)  # unit-variance features in 4-d
    assert frechet_distance(a, 2 * a) == pytest.approx(expected, abs=1e-4)


def test_fd_is_nonnegative_and_finite_for_collapsed_set(feats):
    collapsed = np.zeros((50, 4))  # a generator that always draws the same image: singular covariance
    fd = frechet_distance(collapsed, feats[:50])
    assert np.isfinite(fd) and fd > 0


# --- save_grid ---

def test_save_grid_gray_size_and_pixels(tmp_path):
    images = -torch.ones(5, 1, 8, 8)  # black
    images[1] = 1.0  # white
    images[2] = 0.0  # mid-gray: (0 + 1) * 127.5 = 127.5 -> 128
    path = tmp_path / "sub" / "grid.png"
    save_grid(images, path, ncol=4, scale=2)
    img = Image.open(path)
    # 4 columns x 2 rows of 8x8 with 1-px white borders: 4*9+1 = 37 wide, 2*9+1 = 19 high; x2
    assert img.size == (74, 38) and img.mode == "L"
    px = np.asarray(img)
    assert px[0, 0] == 255  # border
    assert px[2, 2] == 0  # image 0, top-left pixel (grid (1, 1) scaled by 2)
    assert px[2, 2 + 9 * 2] == 255  # image 1
    assert px[2, 2 + 18 * 2] == 128  # image 2
    assert px[2 + 9 * 2, 2] == 0  # image 4, second row
    assert px[2 + 9 * 2, 2 + 9 * 2] == 255  # empty slot stays white


def test_save_grid_rgb(tmp_path):
    images = torch.zeros(3, 3, 4, 4)
    images[:, 0] = 1.0  # red channel full
    save_grid(images, tmp_path / "rgb.png", ncol=16, scale=1)
    img = Image.open(tmp_path / "rgb.png")
    assert img.mode == "RGB" and img.size == (3 * 5 + 1, 1 * 5 + 1)  # ncol capped at n = 3
    assert tuple(np.asarray(img)[1, 1]) == (255, 128, 128)


# --- which rounds get samples + Frechet distance ---

@pytest.mark.parametrize("rounds, every, expected", [
    (10, 5, [5, 10]),
    (10, 4, [4, 8, 10]),  # and at the last round
    (3, 5, [3]),
    (10, 0, []),  # 0: never
])
def test_quality_rounds(rounds, every, expected):
    ev = object.__new__(ServerEvaluator)  # the schedule needs only the config
    ev.cfg = RunConfig(rounds=rounds, eval_every=every)
    assert [r for r in range(1, rounds + 1) if ev.is_quality_round(r)] == expected
