"""Distribution metrics between generated and real features, and their real-vs-real floors.

All take features (N, D) from the evaluator (evaluator.py), never pixels:
- FD, the Frechet distance (Heusel et al. 2017, eq. 6); biased for small N, so compare at equal N;
- KID (Binkowski et al. 2018): unbiased MMD^2 with the kernel (x.y/d + 1)^3, mean and std over
  random subsets; torchmetrics' KernelInceptionDistance with the features passed straight through;
- precision and recall (Kynkaanniemi et al. 2019): k-nearest-neighbour balls around each real
  (generated) feature; precision = share of generated features inside some real ball, recall =
  share of real features inside some generated ball. Written by hand: torchmetrics has no
  implementation of it, and it is ten lines of torch.cdist.
``scores`` computes all of them for one generated set against a real reference set, and the
floor of each: the same metric between a second, disjoint real set and the reference, at the
same N. A number means little until it is read against its floor.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import linalg

KID_SUBSETS = 50
PR_K = 3


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2}) for features (N, D)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Add a small ridge before the matrix square root, as pytorch-fid does for
    # near-singular products (few samples, or a collapsed generator).
    eps = np.eye(s_a.shape[0]) * 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm((s_a + eps) @ (s_b + eps))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))


def kid(gen: np.ndarray, real: np.ndarray, *, seed: int = 0, subsets: int = KID_SUBSETS) -> tuple[float, float]:
    """(mean, std) of the unbiased polynomial-kernel MMD^2 over `subsets` random subsets of
    min(N_gen, N_real, 500) features each; the subsets come from `seed`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "will save all extracted features": there are few
        from torchmetrics.image.kid import KernelInceptionDistance

        size = min(len(gen), len(real), 500)
        metric = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=subsets, subset_size=size)
    metric.update(torch.as_tensor(real, dtype=torch.float64), real=True)
    metric.update(torch.as_tensor(gen, dtype=torch.float64), real=False)
    with torch.random.fork_rng(devices=[]):  # torchmetrics draws its subsets from the global generator
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def _kth_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each row to its k-th nearest other row."""
    d = torch.cdist(x, x)
    return d.kthvalue(k + 1, dim=1).values  # +1: the row itself is its own nearest neighbour


def _coverage(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    """Share of queries inside at least one ball (centre, radius)."""
    return float((torch.cdist(queries, centres) <= radii[None]).any(1).double().mean())


def precision_recall(gen: np.ndarray, real: np.ndarray, *, k: int = PR_K) -> tuple[float, float]:
    """Improved precision and recall with k-nearest-neighbour balls (k = 3)."""
    g, r = torch.as_tensor(gen, dtype=torch.float64), torch.as_tensor(real, dtype=torch.float64)
    if min(len(g), len(r)) <= k:
        return float("nan"), float("nan")
    return _coverage(g, r, _kth_radius(r, k)), _coverage(r, g, _kth_radius(g, k))


def real_halves(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint, class-balanced halves of a real split (every other image of each class):
    indices (A, B). B is the reference of every metric; A against B is the floor. Each half is
    ordered round-robin over the classes, so any prefix A[:n] is class-balanced too (datasets
    stored class by class would otherwise give a floor of two or three classes)."""
    halves: list[list[np.ndarray]] = [[], []]
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        halves[0].append(idx[0::2])
        halves[1].append(idx[1::2])
    return tuple(_round_robin(h) for h in halves)


def _round_robin(groups: list[np.ndarray]) -> np.ndarray:
    """[a0, b0, c0, a1, b1, c1, ...] over groups of unequal length."""
    order = [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]
    return np.asarray(order, dtype=np.int64)


def scores(gen: np.ndarray, floor_set: np.ndarray, reference: np.ndarray, *, seed: int = 0) -> dict[str, float]:
    """fd, kid, kid_std, precision, recall of `gen` against `reference`, and fd_floor, kid_floor,
    precision_floor, recall_floor of `floor_set` (real, disjoint from the reference) against it.
    Both sides use the same N = min(len(gen), len(floor_set)): the first N of each."""
    n = min(len(gen), len(floor_set))
    out: dict[str, float] = {}
    for prefix, feats in (("", gen[:n]), ("_floor", floor_set[:n])):
        k_mean, k_std = kid(feats, reference, seed=seed)
        p, r = precision_recall(feats, reference)
        out.update({f"fd{prefix}": frechet_distance(feats, reference), f"kid{prefix}": k_mean,
                    f"kid_std{prefix}": k_std, f"precision{prefix}": p, f"recall{prefix}": r})
    return out
