"""Distances between label distributions, for FedEMD client selection.

FedEMD (Huang et al., PAKDD 2023) scores each client by the Earth Mover's
distance between its label distribution and a reference one. Three modes
(shared/papers/fedemd.md, "Correct label EMD"):

- ``categorical-l1`` (default): EMD under the 0/1 ground metric between
  classes, sum_c |p(c) - q(c)|, range [0, 2]. This is the label distance of the
  weight-divergence bound of Zhao et al. 2018; labels have no order.
- ``ordinal-w1``: 1-D Wasserstein over class indices 0..C-1 with weights p and
  q, sum_c |CDF_p(c) - CDF_q(c)|; only for comparison (it orders the labels).
- ``scipy-values``: the authors' code, for replication only. It runs
  ``scipy.stats.wasserstein_distance`` on the *values* of two count vectors
  (treated as samples, so which class holds which count is lost), with client
  counts divided by their count of the last class and the reference left raw.

All functions take count vectors (any non-negative numbers) and normalise them
here, except ``scipy-values``, which keeps the authors' scaling.
"""

from __future__ import annotations

import numpy as np

DISTANCES = ("categorical-l1", "ordinal-w1", "scipy-values")


def normalise(counts: np.ndarray) -> np.ndarray:
    """Rows of counts -> distributions; an all-zero row stays zero (no 0/0)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=-1, keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


def categorical_l1(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """sum_c |p(c) - q(c)| for p (N, C) (or (C,)) against q (C,)."""
    return np.abs(normalise(p) - normalise(q)).sum(axis=-1)


def ordinal_w1(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """sum_c |CDF_p(c) - CDF_q(c)|: W1 on the class indices 0..C-1."""
    return np.abs(np.cumsum(normalise(p), axis=-1) - np.cumsum(normalise(q), axis=-1)).sum(axis=-1)


def authors_profiles(counts: np.ndarray) -> np.ndarray:
    """The authors' client profiles: counts divided by the client's count of the last class."""
    counts = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    ref = counts[:, -1]
    if np.any(ref <= 0):
        bad = np.flatnonzero(ref <= 0).tolist()
        raise ValueError(f"scipy-values mode divides by each client's count of class {counts.shape[1] - 1} "
                         f"(as the authors' code does), but clients {bad[:10]} hold none; "
                         "use categorical-l1")
    return counts / ref[:, None]


def scipy_values(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Authors' form: wasserstein_distance(values of profile_i, values of q), q used as given."""
    rows = authors_profiles(p)
    q = np.asarray(q, dtype=np.float64)
    from scipy.stats import wasserstein_distance  # on use: scipy.stats costs ~1.5 s to import

    out = np.array([wasserstein_distance(row, q) for row in rows])
    return out if np.ndim(p) > 1 else out[0]


def label_distance(mode: str, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Distance of each row of p (N, C) to q (C,) under ``mode`` (one of DISTANCES)."""
    if mode == "categorical-l1":
        return categorical_l1(p, q)
    if mode == "ordinal-w1":
        return ordinal_w1(p, q)
    if mode == "scipy-values":
        return scipy_values(p, q)
    raise ValueError(f"unknown label distance {mode!r}; known: {', '.join(DISTANCES)}")
