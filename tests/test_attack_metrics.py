"""Tests for attacks/metrics.py: hand-checkable numbers (0.1 offset -> 20 dB, known-variance noise),
SSIM sanity on digit and CIFAR sizes, Hungarian matching, label accuracy, the `score` dict."""

import math

import pytest
import torch
from skimage.metrics import structural_similarity

from attacks.metrics import label_accuracy, match, mse, psnr, score, ssim, to_unit


def images(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Smooth-ish random images in [0, 1] (float64): (B, C, H, W)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, h // 2, w // 2, generator=g, dtype=torch.float64)
    return torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


def test_to_unit_maps_range_and_clamps():
    x = torch.tensor([-1.0, 0.0, 1.0, -3.0, 2.0]).view(1, 1, 1, 5)
    assert to_unit(x).flatten().tolist() == [0.0, 0.5, 1.0, 0.0, 1.0]
    assert to_unit(torch.tensor([0.0, 255.0]).view(1, 1, 1, 2), (0, 255)).flatten().tolist() == [0.0, 1.0]


def test_identical_images_psnr_inf_ssim_one():
    x = images(2, 3, 32, 32)
    assert torch.all(torch.isinf(psnr(x, x)))
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))
    assert torch.all(mse(x, x) == 0)


def test_constant_offset_gives_20_db():
    a = torch.full((2, 1, 8, 8), 0.4, dtype=torch.float64)
    b = a + 0.1  # MSE = 0.01 -> 10 log10(1 / 0.01) = 20 dB
    assert mse(a, b).tolist() == pytest.approx([0.01, 0.01], abs=1e-12)
    assert psnr(a, b).tolist() == pytest.approx([20.0, 20.0], abs=1e-9)


def test_uniform_noise_of_known_variance():
    g = torch.Generator().manual_seed(1)
    a = torch.full((1, 3, 256, 256), 0.5, dtype=torch.float64)
    h = 0.1  # U(-h, h) has variance h^2 / 3; no clamping needed around 0.5
    b = a + (torch.rand(a.shape, generator=g, dtype=torch.float64) * 2 - 1) * h
    expected = 10 * math.log10(3 / h**2)  # 24.77 dB
    assert psnr(a, b).item() == pytest.approx(expected, abs=0.1)


def test_ssim_negative_image_is_low_and_symmetric():
    x = images(3, 3, 32, 32)
    s = ssim(x, 1 - x)
    assert torch.all(s < 0.5)
    assert torch.allclose(s, ssim(1 - x, x))
    y = images(3, 3, 32, 32, seed=5)
    assert torch.allclose(ssim(x, y), ssim(y, x))


@pytest.mark.parametrize("shape", [(2, 1, 8, 8), (2, 3, 32, 32), (1, 1, 5, 9)])
def test_ssim_shapes_including_tiny_digits(shape):
    x = images(*shape) if shape[2] % 2 == 0 else torch.rand(shape, dtype=torch.float64)
    noisy = (x + 0.05 * torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)).clamp(0, 1)
    s = ssim(x, noisy)
    assert s.shape == (shape[0],)
    assert torch.all((s > 0) & (s < 1))
    assert torch.allclose(ssim(x, x), torch.ones(shape[0], dtype=torch.float64))


def test_match_recovers_permutation():
    truth = images(4, 3, 16, 16, seed=3)
    perm = torch.tensor([2, 0, 3, 1])
    shuffled = torch.empty_like(truth)
    shuffled[perm] = truth  # truth[i] sits at shuffled[perm[i]]
    assert match(shuffled, truth).tolist() == perm.tolist()
    assert match(truth[:1], truth[:1]).tolist() == [0]


def test_score_is_invariant_to_batch_order():
    truth = images(4, 3, 16, 16, seed=4) * 2 - 1  # in [-1, 1]
    g = torch.Generator().manual_seed(6)
    recon = (truth + 0.1 * torch.randn(truth.shape, generator=g, dtype=torch.float64)).clamp(-1, 1)
    shuffled = recon[torch.tensor([3, 1, 0, 2])]
    ordered, mixed = score(recon, truth), score(shuffled, truth)
    assert mixed == ordered
    assert ordered["psnr_sd"] > 0 and 0 < ordered["ssim"] < 1
    assert ordered["psnr"] == pytest.approx(sum(ordered["per_image"]["psnr"]) / 4)


def test_label_accuracy():
    assert label_accuracy([1, 1, 2], [1, 2, 2]) == pytest.approx(1 - 0.5 * 2 / 3)
    assert label_accuracy(torch.tensor([3, 0, 7]), [7, 3, 0]) == 1.0  # order does not matter
    assert label_accuracy([0, 0], [1, 1]) == 0.0


def test_score_with_labels_single_image_and_no_lpips():
    truth = torch.zeros(1, 1, 8, 8)  # value 0 in [-1, 1] -> 0.5
    recon = torch.full((1, 1, 8, 8), 0.2)  # -> 0.6: MSE 0.01, 20 dB
    out = score(recon, truth, recon_labels=[4], true_labels=[4])
    assert out["psnr"] == pytest.approx(20.0, abs=1e-5)
    assert out["psnr_sd"] == 0.0 and out["ssim_sd"] == 0.0
    assert out["mse"] == pytest.approx(0.01, abs=1e-7)
    assert out["label_acc"] == 1.0
    assert out["lpips"] is None  # n/a: no backbone given
    assert score(truth, truth)["psnr"] == math.inf and score(truth, truth)["label_acc"] is None


def test_ssim_of_a_tiny_image_weighs_border_and_centre_alike():
    """8x8 digits: inverting the central 2x2 (4 pixels) or the outer ring (28 pixels) must cost
    about the same SSIM per pixel (measured: 0.028 and 0.028). Wang's 11-tap window cropped to
    the central 2x2 weighed a central pixel 4.6x a border one (0.068 against 0.015); from 32x32
    on the score is Wang's, skimage's Gaussian-window default."""
    x = images(1, 1, 8, 8, seed=5)
    centre, ring = x.clone(), x.clone()
    centre[..., 3:5, 3:5] = 1 - centre[..., 3:5, 3:5]
    border = torch.ones(8, 8, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    ring[..., border] = 1 - ring[..., border]
    per_centre = (1 - ssim(x, centre).item()) / 4
    per_ring = (1 - ssim(x, ring).item()) / 28
    assert 0.5 < per_centre / per_ring < 2
    big, other = images(1, 1, 32, 32, seed=5), images(1, 1, 32, 32, seed=6)
    wang = structural_similarity(big[0, 0].numpy(), other[0, 0].numpy(), data_range=1.0, gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False)
    assert ssim(big, other).item() == pytest.approx(wang, abs=1e-12)
