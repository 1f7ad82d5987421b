"""Update codecs for uplink/downlink compression: top-k, STC, DHQ, QSGD.

A codec turns one float32 tensor u into bytes (``write``) and back (``read``);
``write`` also returns what the receiver will decode, so error feedback costs
no second pass. ``encode_update`` / ``decode_update`` do a whole model update
(every tensor, in the order of the global model's keys) with the residual a
client keeps across rounds: u = delta + e, send C(u), e <- u - C(u). Designs and
bit formulas: shared/papers/compression.md (DHQ-DS is a reconstruction of
Jiang et al. 2022, not a reproduction).

- ``TopK(p)``: the k = ceil(p n) largest |u| per tensor, as (index, float32 value).
- ``DHQ(p, levels)``: top-k, then |v| split into L levels, one float32 mean per
  level, a sign bit and a level id (ceil(log2 L) bits) per kept value.
  ``split="quantile"``: equal-count levels; ``split="tree"``: the "deep" form,
  each cell split recursively at its mean, L = 2^depth.
- ``STC(p)`` (Sattler et al. 2020): DHQ with L = 1, i.e. sign * mean |top-k|.
- ``QSGD(s)`` (Alistarh et al. 2017): unbiased stochastic rounding of
  |v| / ||v||_2 to s levels per bucket (a tensor, or ``bucket`` elements);
  needs a generator; no error feedback by default, as in the paper.

Indices are Golomb-Rice coded gaps (strategies/bitstream.py). Written by hand:
no maintained library implements these codecs for federated updates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from strategies.bitstream import Reader, Writer, bits_for

MAGIC = b"FSC1"


def top_k_indices(u: np.ndarray, p: float) -> np.ndarray:
    """Sorted flat indices of the ceil(p * n) largest |u| (O(n) selection)."""
    flat = np.abs(u.ravel())
    k = max(1, math.ceil(p * flat.size))
    if k >= flat.size:
        return np.arange(flat.size, dtype=np.int64)
    return np.sort(np.argpartition(flat, flat.size - k)[flat.size - k:])


def _scatter(n: int, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.zeros(n, dtype=np.float32)
    out[idx] = values
    return out


class Codec:
    name = "codec"
    error_feedback = True  # default; a run can switch it
    needs_rng = False

    def write(self, u: np.ndarray, w: Writer, rng: np.random.Generator | None = None) -> np.ndarray:
        """Append the code of flat float32 ``u``; return what ``read`` will give back."""
        raise NotImplementedError

    def read(self, r: Reader, n: int) -> np.ndarray:
        raise NotImplementedError

    def spec(self) -> str:
        raise NotImplementedError

    # one tensor, for tests and the benchmark
    def encode(self, u: np.ndarray, rng: np.random.Generator | None = None) -> bytes:
        w = Writer()
        self.write(np.ascontiguousarray(u, dtype=np.float32).ravel(), w, rng)
        return w.getvalue()

    def decode(self, data: bytes, shape: tuple[int, ...]) -> np.ndarray:
        return self.read(Reader(data), int(np.prod(shape))).reshape(shape)


class TopK(Codec):
    name = "topk"

    def __init__(self, p: float = 0.01) -> None:
        if not 0 < p <= 1:
            raise ValueError(f"keep-ratio must be in (0, 1], got {p}")
        self.p = p

    def spec(self) -> str:
        return f"topk(p={self.p:g})"

    def write(self, u, w, rng=None):
        idx = top_k_indices(u, self.p)
        values = u[idx]
        w.u32(idx.size)
        w.sorted_indices(idx)
        w.f32(values)
        return _scatter(u.size, idx, values)

    def read(self, r, n):
        k = r.u32()
        idx = r.sorted_indices(k)
        return _scatter(n, idx, r.f32(k))

    def bits(self, n: int, index_bits: float) -> float:
        """Paper formula: k (32 + b_idx)."""
        k = max(1, math.ceil(self.p * n))
        return k * (32 + index_bits)


class DHQ(TopK):
    name = "dhq"

    def __init__(self, p: float = 0.01, levels: int = 4, split: str = "quantile") -> None:
        super().__init__(p)
        if levels < 1 or levels > 256:
            raise ValueError(f"levels must be in 1..256, got {levels}")
        if split not in ("quantile", "tree"):
            raise ValueError(f"dhq-split must be 'quantile' or 'tree', got {split!r}")
        if split == "tree" and levels & (levels - 1):
            raise ValueError(f"dhq-split 'tree' needs levels = 2^depth, got {levels}")
        self.levels, self.split = levels, split

    def spec(self) -> str:
        tree = ",tree" if self.split == "tree" else ""
        return f"{self.name}(p={self.p:g},L={self.levels}{tree})"

    def level_of(self, mag: np.ndarray) -> np.ndarray:
        if self.split == "tree":  # depth log2(L): split every cell at its mean
            level = np.zeros(mag.size, dtype=np.int64)
            for depth in range(bits_for(self.levels)):
                cells = 1 << depth
                sums = np.bincount(level, weights=mag, minlength=cells)
                counts = np.bincount(level, minlength=cells)
                mean = np.divide(sums, counts, out=np.zeros(cells), where=counts > 0)
                level = 2 * level + (mag > mean[level])
            return level
        # equal-count: the value of rank r (ascending) gets level floor(r L / k); one
        # multi-pivot partition (O(k log L)) instead of a sort
        k = mag.size
        cuts = sorted({-(-j * k // self.levels) for j in range(1, self.levels)} - {0, k})
        order = np.argpartition(mag, cuts) if cuts else np.arange(k)
        level = np.empty(k, dtype=np.int64)
        for j, (lo, hi) in enumerate(zip([0, *cuts], [*cuts, k])):
            level[order[lo:hi]] = (lo * self.levels) // k if k else j
        return level

    def write(self, u, w, rng=None):
        idx = top_k_indices(u, self.p)
        v = u[idx]
        mag = np.abs(v).astype(np.float64)
        level = self.level_of(mag)
        sums = np.bincount(level, weights=mag, minlength=self.levels)
        counts = np.bincount(level, minlength=self.levels)
        mu = np.divide(sums, counts, out=np.zeros(self.levels), where=counts > 0).astype(np.float32)
        neg = v < 0
        w.u32(idx.size)
        w.sorted_indices(idx)
        w.flags(neg)
        w.uints(level, bits_for(self.levels))
        w.f32(mu)
        values = mu[level]
        return _scatter(u.size, idx, np.where(neg, -values, values))

    def read(self, r, n):
        k = r.u32()
        idx = r.sorted_indices(k)
        neg = r.flags(k)
        level = r.uints(k, bits_for(self.levels))
        mu = r.f32(self.levels)
        values = mu[level]
        return _scatter(n, idx, np.where(neg, -values, values))

    def bits(self, n: int, index_bits: float) -> float:
        """Paper formula: k (1 + ceil(log2 L) + b_idx) + 32 L."""
        k = max(1, math.ceil(self.p * n))
        return k * (1 + bits_for(self.levels) + index_bits) + 32 * self.levels


class STC(DHQ):
    """Sparse ternary compression: sign * mean |top-k| (DHQ with one level)."""
    name = "stc"

    def __init__(self, p: float = 0.01) -> None:
        super().__init__(p, levels=1)

    def spec(self) -> str:
        return f"stc(p={self.p:g})"


class QSGD(Codec):
    name = "qsgd"
    error_feedback = False
    needs_rng = True

    def __init__(self, s: int = 16, bucket: int = 0) -> None:
        if not 1 <= s <= 65535:
            raise ValueError(f"qsgd-levels must be in 1..65535, got {s}")
        if bucket < 0:
            raise ValueError(f"qsgd-bucket must be >= 0, got {bucket}")
        self.s, self.bucket = s, bucket

    def spec(self) -> str:
        return f"qsgd(s={self.s}" + (f",bucket={self.bucket})" if self.bucket else ")")

    def _rows(self, n: int) -> int:
        return self.bucket if self.bucket and self.bucket < n else n

    def write(self, u, w, rng=None):
        if rng is None:
            raise ValueError("QSGD needs a random generator")
        n, size = u.size, self._rows(u.size)
        padded = np.zeros(-(-n // size) * size, dtype=np.float32)
        padded[:n] = u
        rows = padded.reshape(-1, size)
        norms = np.sqrt(np.einsum("ij,ij->i", rows, rows, dtype=np.float64)).astype(np.float32)
        scale = np.divide(self.s, norms, out=np.zeros_like(norms), where=norms > 0)
        scaled = (np.abs(rows) * scale[:, None]).ravel()[:n]
        low = np.floor(scaled)
        level = (low + (rng.random(n, dtype=np.float32) < scaled - low)).astype(np.int64)
        neg = u < 0
        w.f32(norms)
        w.flags(neg)
        w.uints(level, bits_for(self.s + 1))
        return self._values(level, neg, norms, size)

    def _values(self, level, neg, norms, size):
        step = np.repeat(norms / self.s, size)[:level.size]
        mag = level.astype(np.float32) * step
        return np.where(neg, -mag, mag).astype(np.float32)

    def read(self, r, n):
        size = self._rows(n)
        norms = r.f32(-(-n // size))
        neg = r.flags(n)
        level = r.uints(n, bits_for(self.s + 1))
        return self._values(level, neg, norms, size)

    def bits(self, n: int, index_bits: float = 0.0) -> float:
        """Paper formula: per bucket n_b (1 + ceil(log2(s + 1))) + 32."""
        size = self._rows(n)
        return n * (1 + bits_for(self.s + 1)) + 32 * -(-n // size)


CODECS = ("none", "topk", "stc", "dhq", "qsgd")
_IDS = {name: i for i, name in enumerate(CODECS)}


def make_codec(name: str, *, keep_ratio: float = 0.01, levels: int = 4, split: str = "quantile",
               qsgd_levels: int = 16, qsgd_bucket: int = 0) -> Codec | None:
    """The codec of that name (None for "none"); raises ValueError on a bad setting."""
    if name == "none":
        return None
    if name == "topk":
        return TopK(keep_ratio)
    if name == "stc":
        return STC(keep_ratio)
    if name == "dhq":
        return DHQ(keep_ratio, levels, split)
    if name == "qsgd":
        return QSGD(qsgd_levels, qsgd_bucket)
    raise ValueError(f"unknown codec {name!r}; known: {', '.join(CODECS)}")


def from_settings(settings: Mapping[str, object]) -> tuple[Codec | None, bool]:
    """(codec, error feedback on?) from the kebab-case keys a TRAIN message carries
    (fedsim.config.CODEC_KEYS)."""
    codec = make_codec(str(settings["compression"]), keep_ratio=float(settings["keep-ratio"]),
                       levels=int(settings["dhq-levels"]), split=str(settings["dhq-split"]),
                       qsgd_levels=int(settings["qsgd-levels"]), qsgd_bucket=int(settings["qsgd-bucket"]))
    feedback = str(settings.get("error-feedback", "auto"))
    if feedback not in ("auto", "on", "off"):
        raise ValueError(f"error-feedback must be auto, on or off, got {feedback!r}")
    on = codec is not None and (codec.error_feedback if feedback == "auto" else feedback == "on")
    return codec, on


def encode_update(codec: Codec, tensors: Mapping[str, np.ndarray], *,
                  residual: dict[str, np.ndarray] | None = None,
                  rng: np.random.Generator | None = None) -> tuple[bytes, dict[str, np.ndarray]]:
    """One update as bytes, tensors in the given order. Floating tensors go
    through the codec, others (integer buffers) are sent as they are.
    residual: error-feedback memory, updated in place (None: no feedback).
    Returns (bytes, what the receiver decodes)."""
    w = Writer()
    w.raw(MAGIC)
    w.u8(_IDS[codec.name])
    sent: dict[str, np.ndarray] = {}
    for name, t in tensors.items():
        t = np.asarray(t)
        if not np.issubdtype(t.dtype, np.floating):
            w.raw(np.ascontiguousarray(t).tobytes())
            sent[name] = t
            continue
        u = np.ascontiguousarray(t, dtype=np.float32).ravel()
        if residual is not None and name in residual:
            u = u + residual[name].ravel()
        out = codec.write(u, w, rng)
        if residual is not None:
            residual[name] = (u - out).reshape(t.shape)
        sent[name] = out.reshape(t.shape).astype(t.dtype, copy=False)
    return w.getvalue(), sent


def decode_update(codec: Codec, data: bytes | memoryview,
                  layout: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> dict[str, np.ndarray]:
    """Inverse of ``encode_update``; layout: name -> (shape, dtype), in sending order.
    Raises ValueError on a payload that does not fit the layout."""
    r = Reader(data)
    if r.raw(4) != MAGIC:
        raise ValueError("not a fedsim compressed update")
    sent_id = r.u8()
    if sent_id != _IDS[codec.name]:
        raise ValueError(f"update was encoded with '{CODECS[sent_id] if sent_id < len(CODECS) else sent_id}',"
                         f" expected '{codec.name}'")
    out = {}
    for name, (shape, dtype) in layout.items():
        n = int(np.prod(shape, dtype=np.int64))
        dtype = np.dtype(dtype)
        if not np.issubdtype(dtype, np.floating):
            out[name] = np.frombuffer(r.raw(n * dtype.itemsize), dtype=dtype).reshape(shape)
            continue
        out[name] = codec.read(r, n).reshape(shape).astype(dtype, copy=False)
    if not r.done():
        raise ValueError("compressed update has trailing bytes")
    return out
