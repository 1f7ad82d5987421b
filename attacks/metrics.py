"""Reconstruction quality vs ground truth: PSNR, SSIM, MSE, label accuracy, batch matching.

With attacks/scoring.py (which pairs a reconstruction with its targets once and applies the
pairs to every per-sample metric), the only code of the attack module that compares with the
true images and labels (STYLE rule 6); attacks return a reconstruction, `score` compares it
with the truth. Conventions follow docs "Metrics conventions" (shared/papers/attacks.md): per
image, on denormalised images clamped to [0, 1], after a Hungarian match, then mean and SD
over the images.
LPIPS (attacks/lpips.py) needs a local AlexNet checkpoint (config key ``lpips-backbone``); without
one it is "n/a" (None).
"""

from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from skimage.metrics import structural_similarity

SSIM_VARIANT = ("SSIM (Wang et al. 2004; Gaussian sigma 1.5, 11x11, K1=0.01, K2=0.03, channel mean; "
                "images with a side < 32: sigma 1.5 * side / 32, the whole map averaged)")
SSIM_SIDE = 32  # from this side on, Wang's window; below it the window shrinks with the image


def to_unit(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Map images from `value_range` = (lo, hi) to [0, 1]: x' = clamp((x - lo) / (hi - lo), 0, 1).

    images: (B, C, H, W) any float dtype; returns the same shape, detached, float64 on CPU
    (float64 so that a 0.1 offset gives MSE 0.01 to rounding error)."""
    lo, hi = float(value_range[0]), float(value_range[1])
    if not hi > lo:
        raise ValueError(f"value_range must have hi > lo, got {value_range}")
    x = images.detach().to("cpu", torch.float64)
    return ((x - lo) / (hi - lo)).clamp(0.0, 1.0)


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"expected two (B, C, H, W) tensors of one shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    return a.detach().to("cpu", torch.float64), b.detach().to("cpu", torch.float64)


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error MSE_i = mean_{c,h,w} (a_i - b_i)^2.

    a, b: (B, C, H, W) in [0, 1] (see `to_unit`); returns (B,) float64."""
    a, b = _check_pair(a, b)
    return (a - b).pow(2).flatten(1).mean(dim=1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR_i = 10 log10(MAX^2 / MSE_i) with MAX = 1 (images in [0, 1]); +inf where MSE_i = 0.

    The GIDM code computes 20 log10(255 / sqrt(MSE)) on [0, 1] images, i.e. our value plus
    20 log10(255) = 48.13 dB; we do NOT add that offset, so subtract 48.13 dB from GIDM
    numbers before comparing. a, b: (B, C, H, W); returns (B,) float64."""
    m = mse(a, b)
    return torch.where(m > 0, -10.0 * torch.log10(m), torch.full_like(m, float("inf")))


def _ssim_sigma(h: int, w: int) -> float:
    """Wang's sigma 1.5 (an 11-tap window) from a side of SSIM_SIDE on; below, scaled with the
    side (0.375 for 8x8 digits, floored at 0.5), so the window covers the same share of the image."""
    side = min(h, w)
    return 1.5 if side >= SSIM_SIDE else max(1.5 * side / SSIM_SIDE, 0.5)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004, eq. 13), averaged over the image and then over channels:

        SSIM(x, y) = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2)),
        C1 = (K1 L)^2, C2 = (K2 L)^2, K1 = 0.01, K2 = 0.03, L = data_range = 1,

    with local moments from a Gaussian window (population covariance) via
    skimage.metrics.structural_similarity, one call per image. From a side of 32 on: sigma 1.5
    (11 taps) and skimage's mean over the map without its (11 - 1) / 2 border pixels, the
    literature's setting. Smaller images: that crop would leave an 8x8 image's central 2x2, so
    the window shrinks with the image (`_ssim_sigma`) and the whole map (borders by reflect
    padding) is averaged: every pixel counts. Not CW-SSIM (breaching) nor pytorch_ssim (GIDM);
    see SSIM_VARIANT.

    a, b: (B, C, H, W) in [0, 1]; returns (B,) float64, 1.0 for identical images. Symmetric in a, b."""
    a, b = _check_pair(a, b)
    sigma = _ssim_sigma(a.shape[2], a.shape[3])
    out = []
    for x, y in zip(a.numpy(), b.numpy()):
        if sigma == 1.5:
            out.append(structural_similarity(x, y, data_range=1.0, gaussian_weights=True, sigma=sigma,
                                              use_sample_covariance=False, channel_axis=0))
        else:
            _, full = structural_similarity(x, y, data_range=1.0, gaussian_weights=True, sigma=sigma,
                                            use_sample_covariance=False, channel_axis=0, full=True)
            out.append(float(full.mean()))
    return torch.tensor(out, dtype=torch.float64)


def label_accuracy(pred: Sequence[int] | torch.Tensor, true: Sequence[int] | torch.Tensor) -> float:
    """Permutation-invariant label accuracy (breaching): 1 - 0.5 * ||bincount(pred) - bincount(true)||_1 / B.

    pred, true: B integer labels each, in any order; 1.0 when the multisets agree, 0.0 when disjoint."""
    p = torch.as_tensor(pred, dtype=torch.long).flatten().cpu()
    t = torch.as_tensor(true, dtype=torch.long).flatten().cpu()
    if len(p) != len(t) or len(t) == 0:
        raise ValueError(f"need equally many (>0) predicted and true labels, got {len(p)} and {len(t)}")
    n = int(max(p.max(), t.max())) + 1
    diff = torch.bincount(p, minlength=n) - torch.bincount(t, minlength=n)
    return 1.0 - 0.5 * float(diff.abs().sum()) / len(t)


def assign(recon: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hungarian assignment, one to one: (truth_idx, recon_idx), min(N, B) pairs minimising
    sum_k MSE(truth[truth_idx[k]], recon[recon_idx[k]]), truth_idx ascending.

    scipy.optimize.linear_sum_assignment on the (N, B) matrix C[i, j] = MSE(truth[i], recon[j]),
    exact (no matmul shortcut). N = B: a permutation of the batch; N > B (more true images than
    reconstructions): the B true images the reconstructions match best; N < B: the N
    reconstructions that match best. recon (B, C, H, W), truth (N, C, H, W) on one scale
    (the metrics' [0, 1], see `to_unit`); returns two (min(N, B),) int64 tensors."""
    r = recon.detach().to("cpu", torch.float64).flatten(1)
    t = truth.detach().to("cpu", torch.float64).flatten(1)
    if r.shape[1] != t.shape[1]:
        raise ValueError(f"images of different sizes: {tuple(recon.shape)} and {tuple(truth.shape)}")
    cost = torch.cdist(t, r, compute_mode="donot_use_mm_for_euclid_dist").pow(2) / t.shape[1]
    rows, cols = linear_sum_assignment(cost.numpy())  # rows ascending
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)


def match(recon: torch.Tensor, truth: torch.Tensor, cost: str = "mse") -> torch.Tensor:
    """Hungarian assignment of a batch: perm minimising sum_i cost(recon[perm[i]], truth[i]).

    A batch is recovered as an unordered set, so each true image i is paired with the
    reconstruction perm[i] before scoring (`assign` on equally many images). Only cost="mse".
    recon, truth: (B, C, H, W) on one scale; returns (B,) int64 indices,
    [0] for B = 1."""
    if cost != "mse":
        raise ValueError(f"unknown matching cost {cost!r}; known: 'mse'")
    recon, truth = _check_pair(recon, truth)
    return assign(recon, truth)[1]


def _mean_sd(v: torch.Tensor) -> tuple[float, float]:
    """Mean and population SD (ddof=0, so 0 for B=1) over images. A +inf PSNR (exact match) makes
    the mean inf; the SD is then 0 if all values are equal, else nan (undefined)."""
    x = v.numpy()
    if np.all(x == x[0]):
        return float(x[0]), 0.0
    if not np.all(np.isfinite(x)):
        return float(np.mean(x)), float("nan")
    return float(np.mean(x)), float(np.std(x))


def score(
    recon: torch.Tensor,
    truth: torch.Tensor,
    *,
    recon_labels: Sequence[int] | torch.Tensor | None = None,
    true_labels: Sequence[int] | torch.Tensor | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0),
    matched: bool = False,
    lpips_net: torch.nn.Module | None = None,
) -> dict:
    """Score a reconstructed batch against the truth.

    1. to_unit both (B, C, H, W) tensors from `value_range` to [0, 1];
    2. match: recon[perm[i]] pairs with truth[i] (Hungarian on MSE); skipped when
       ``matched`` (the caller paired them already, recon[i] with truth[i]: attacks/scoring.py
       does, to apply one assignment to every per-sample metric);
    3. per image MSE, PSNR, SSIM, and LPIPS with ``lpips_net`` (attacks/lpips.py ``load_lpips``;
       else None: "n/a"); mean and SD (ddof=0) over the B images.
    Labels are compared as multisets (`label_accuracy`), so they are not reordered; label_acc
    is None unless both label lists are given. per_image lists follow the order of `truth`.

    Returns {"psnr", "psnr_sd", "ssim", "ssim_sd", "mse", "label_acc", "lpips",
    "per_image": {"psnr": [...], "ssim": [...], "mse": [...](, "lpips": [...])}} with Python floats."""
    r, t = to_unit(recon, value_range), to_unit(truth, value_range)
    if not matched:
        r = r[match(r, t)]
    per = {"psnr": psnr(r, t), "ssim": ssim(r, t), "mse": mse(r, t)}
    if lpips_net is not None:
        from attacks.lpips import lpips

        per["lpips"] = lpips(lpips_net, r, t)
    psnr_m, psnr_sd = _mean_sd(per["psnr"])
    ssim_m, ssim_sd = _mean_sd(per["ssim"])
    label_acc = None
    if recon_labels is not None and true_labels is not None:
        label_acc = label_accuracy(recon_labels, true_labels)
    return {
        "psnr": psnr_m,
        "psnr_sd": psnr_sd,
        "ssim": ssim_m,
        "ssim_sd": ssim_sd,
        "mse": float(per["mse"].mean()),
        "label_acc": label_acc,
        "lpips": float(per["lpips"].mean()) if "lpips" in per else None,  # None: n/a (no backbone file)
        "per_image": {k: [float(x) for x in v] for k, v in per.items()},
    }
