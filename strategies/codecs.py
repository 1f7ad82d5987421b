"""Update codecs for uplink compression: top-k, STC, DHQ (hierarchical quantization), QSGD.

Pure numpy, one tensor at a time: ``encode(u) -> payload`` (a dict of small numpy
arrays, what travels) and ``decode(payload, shape) -> float32 array``. Error feedback
(the residual a client keeps across rounds) is the caller's: u = delta + e,
e <- u - decode(encode(u)) (see ``ErrorFeedback``). Designs and bit formulas:
shared/papers/compression.md (DHQ-DS is a reconstruction of Jiang et al. 2022).

- ``TopK(p)``: the k = ceil(p n) largest |u|, sent as (index, float32 value).
- ``STC(p)`` (Sattler et al. 2020): top-k, each kept value replaced by sign * mu,
  mu = mean |top-k|.
- ``DHQ(p, levels)``: top-k, then |v| split into L equal-count (quantile) levels,
  one float32 mean per level, sign bits and level ids. L = 1 is STC exactly.
- ``QSGD(s)`` (Alistarh et al. 2017): unbiased stochastic rounding of |v| / ||v||
  to s levels, per tensor; needs a generator.

Indices are sent as sorted uint32 here; entropy coding of the gaps comes with the
wire format. Written by hand: no maintained library implements these codecs on
numpy/torch tensors for federated updates.
"""

from __future__ import annotations

import math

import numpy as np


def top_k_indices(u: np.ndarray, p: float) -> np.ndarray:
    """Sorted flat indices of the ceil(p * n) largest |u| (ties broken by index order)."""
    flat = np.abs(u.ravel())
    k = max(1, math.ceil(p * flat.size))
    if k >= flat.size:
        return np.arange(flat.size, dtype=np.uint32)
    idx = np.argpartition(flat, flat.size - k)[flat.size - k:]
    return np.sort(idx).astype(np.uint32)


def _scatter(shape: tuple[int, ...], idx: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.zeros(int(np.prod(shape)), dtype=np.float32)
    out[idx] = values
    return out.reshape(shape)


class TopK:
    def __init__(self, p: float = 0.01) -> None:
        if not 0 < p <= 1:
            raise ValueError(f"keep ratio must be in (0, 1], got {p}")
        self.p = p

    def encode(self, u: np.ndarray) -> dict[str, np.ndarray]:
        idx = top_k_indices(u, self.p)
        return {"idx": idx, "values": u.ravel()[idx].astype(np.float32)}

    def decode(self, payload: dict[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        return _scatter(shape, payload["idx"], payload["values"])


class DHQ(TopK):
    """Top-k, then L quantile levels over |v| with one float32 mean per level."""

    def __init__(self, p: float = 0.01, levels: int = 4) -> None:
        super().__init__(p)
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        self.levels = levels

    def level_of(self, mag: np.ndarray) -> np.ndarray:
        """Equal-count levels: rank-based, so level j holds the j-th L-quantile slice of |v|."""
        order = np.argsort(mag, kind="stable")
        level = np.empty(mag.size, dtype=np.int64)
        level[order] = (np.arange(mag.size) * self.levels) // max(mag.size, 1)
        return level

    def encode(self, u: np.ndarray) -> dict[str, np.ndarray]:
        idx = top_k_indices(u, self.p)
        v = u.ravel()[idx].astype(np.float64)
        mag = np.abs(v)
        level = self.level_of(mag)
        sums = np.bincount(level, weights=mag, minlength=self.levels)
        counts = np.bincount(level, minlength=self.levels)
        mu = np.divide(sums, counts, out=np.zeros(self.levels), where=counts > 0).astype(np.float32)
        return {"idx": idx, "signs": np.packbits(v < 0), "levels": level.astype(np.uint8), "mu": mu}

    def decode(self, payload: dict[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        n = payload["idx"].size
        neg = np.unpackbits(payload["signs"], count=n).astype(bool)
        values = payload["mu"][payload["levels"]]
        return _scatter(shape, payload["idx"], np.where(neg, -values, values))


class STC(DHQ):
    """Sparse ternary compression: DHQ with a single level (sign * mean |top-k|)."""

    def __init__(self, p: float = 0.01) -> None:
        super().__init__(p, levels=1)


class QSGD:
    """Unbiased s-level stochastic quantization of u / ||u||_2 (one bucket per tensor)."""

    def __init__(self, s: int = 16) -> None:
        if s < 1:
            raise ValueError(f"QSGD levels must be >= 1, got {s}")
        self.s = s

    def encode(self, u: np.ndarray, *, rng: np.random.Generator) -> dict[str, np.ndarray]:
        v = u.ravel().astype(np.float64)
        norm = float(np.linalg.norm(v))
        scaled = np.abs(v) / norm * self.s if norm > 0 else np.zeros_like(v)
        low = np.floor(scaled)
        level = low + (rng.random(v.size) < scaled - low)
        return {"norm": np.array([norm], dtype=np.float32), "signs": np.packbits(v < 0),
                "levels": level.astype(np.uint8 if self.s < 256 else np.uint16)}

    def decode(self, payload: dict[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape))
        neg = np.unpackbits(payload["signs"], count=n).astype(bool)
        mag = payload["levels"].astype(np.float32) * (payload["norm"][0] / self.s)
        return np.where(neg, -mag, mag).astype(np.float32).reshape(shape)


class ErrorFeedback:
    """The residual e a client keeps across rounds: send decode(encode(delta + e)), keep the rest."""

    def __init__(self) -> None:
        self.residual: dict[str, np.ndarray] = {}

    def step(self, name: str, delta: np.ndarray, codec) -> tuple[dict[str, np.ndarray], np.ndarray]:
        u = delta.astype(np.float32) + self.residual.get(name, 0.0)
        payload = codec.encode(u)
        sent = codec.decode(payload, u.shape)
        self.residual[name] = u - sent
        return payload, sent
