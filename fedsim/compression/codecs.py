"""Update codecs for uplink/downlink compression: top-k, STC, DHQ, QSGD.

A codec turns a whole update into bytes (``write``) and back (``read``): every
floating tensor, in the order of the global model's keys, raveled into one
float32 vector; selection and quantization stay per tensor. ``write`` also
returns what the receiver will decode, so error feedback costs no second pass.
``encode_update`` / ``decode_update`` add the framing and the residual a client
keeps across rounds: u = delta + e, send C(u), e <- u - C(u). Designs and
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

The kept indices of all tensors are one sorted list, Golomb-Rice coded gaps
(fedsim/compression/bitstream.py); the receiver derives the count per tensor from p. Written by hand:
no maintained library implements these codecs for federated updates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedsim.compression.bitstream import Reader, Writer, bits_for

MAGIC = b"FSC1"


def keep_count(n: int, p: float) -> int:
    """Entries kept of a tensor of n: ceil(p n), at least 1 (0 for an empty tensor)."""
    return min(n, max(1, math.ceil(p * n))) if n else 0


def segment_top_k(flat: np.ndarray, sizes: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Per segment (tensor) of ``flat``, the keep_count largest |u|: sorted global
    indices and the count per segment. O(n) selection per segment."""
    mag = np.abs(flat)
    parts, counts, off = [], np.zeros(len(sizes), dtype=np.int64), 0
    for i, n in enumerate(sizes):
        n = int(n)
        k = keep_count(n, p)
        counts[i] = k
        if k >= n:
            parts.append(np.arange(off, off + n))
        elif k:
            parts.append(np.sort(np.argpartition(mag[off:off + n], n - k)[n - k:]) + off)
        off += n
    return (np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)), counts


def top_k_indices(u: np.ndarray, p: float) -> np.ndarray:
    """Sorted flat indices of the ceil(p * n) largest |u| of one tensor."""
    return segment_top_k(u.ravel(), np.array([u.size]), p)[0]


def _scatter(n: int, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.zeros(n, dtype=np.float32)
    out[idx] = values
    return out


class Codec:
    """Encodes a whole update at once: ``flat`` is every floating tensor, raveled and
    concatenated, ``sizes`` their lengths (selection and quantization stay per tensor;
    one bit stream for all, so a model of many small tensors costs no per-tensor
    headers or per-tensor Python work)."""

    name = "codec"
    error_feedback = True  # default; a run can switch it
    needs_rng = False

    def write(self, flat: np.ndarray, sizes: np.ndarray, w: Writer,
              rng: np.random.Generator | None = None) -> np.ndarray:
        """Append the code of float32 ``flat``; return what ``read`` will give back."""
        raise NotImplementedError

    def read(self, r: Reader, sizes: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def spec(self) -> str:
        raise NotImplementedError

    # one tensor, for tests and the benchmark
    def encode(self, u: np.ndarray, rng: np.random.Generator | None = None) -> bytes:
        w = Writer()
        self.write(np.ascontiguousarray(u, dtype=np.float32).ravel(), np.array([u.size]), w, rng)
        return w.getvalue()

    def decode(self, data: bytes, shape: tuple[int, ...]) -> np.ndarray:
        return self.read(Reader(data), np.array([int(np.prod(shape))])).reshape(shape)


class TopK(Codec):
    name = "topk"

    def __init__(self, p: float = 0.01) -> None:
        if not 0 < p <= 1:
            raise ValueError(f"keep-ratio must be in (0, 1], got {p}")
        self.p = p

    def spec(self) -> str:
        return f"topk(p={self.p:g})"

    def counts(self, sizes: np.ndarray) -> np.ndarray:
        return np.array([keep_count(int(n), self.p) for n in sizes], dtype=np.int64)

    def write(self, flat, sizes, w, rng=None):
        idx, _ = segment_top_k(flat, sizes, self.p)
        values = flat[idx]
        w.sorted_indices(idx)
        w.f32(values)
        return _scatter(flat.size, idx, values)

    def read(self, r, sizes):
        k = int(self.counts(sizes).sum())
        idx = r.sorted_indices(k)
        return _scatter(int(np.sum(sizes)), idx, r.f32(k))

    def bits(self, n: int, index_bits: float) -> float:
        """Paper formula for one tensor: k (32 + b_idx)."""
        return keep_count(n, self.p) * (32 + index_bits)


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

    def level_of(self, mag: np.ndarray, seg: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Level (0 .. L-1) of each kept magnitude, within its segment."""
        if self.split == "tree":  # depth log2(L): split every cell at its mean
            level = np.zeros(mag.size, dtype=np.int64)
            for depth in range(bits_for(self.levels)):
                cells = len(counts) << depth
                cell = (seg << depth) + level
                sums = np.bincount(cell, weights=mag, minlength=cells)
                n = np.bincount(cell, minlength=cells)
                mean = np.divide(sums, n, out=np.zeros(cells), where=n > 0)
                level = 2 * level + (mag > mean[cell])
            return level
        # equal-count: the value of rank r (ascending, within its segment) of k gets level
        # floor(r L / k); one multi-pivot partition per segment, O(k log L), not a sort
        level = np.zeros(mag.size, dtype=np.int64)
        if self.levels == 1:
            return level
        for start, k in zip((np.cumsum(counts) - counts).tolist(), counts.tolist()):
            cuts = sorted({-(-j * k // self.levels) for j in range(1, self.levels)} - {0, k})
            if not cuts:
                continue
            order = np.argpartition(mag[start:start + k], cuts) + start
            for lo, hi in zip(cuts, [*cuts[1:], k]):
                level[order[lo:hi]] = lo * self.levels // k
        return level

    def write(self, flat, sizes, w, rng=None):
        idx, counts = segment_top_k(flat, sizes, self.p)
        v = flat[idx]
        mag = np.abs(v).astype(np.float64)
        seg = np.repeat(np.arange(len(sizes)), counts)
        level = self.level_of(mag, seg, counts)
        cell = seg * self.levels + level
        cells = len(sizes) * self.levels
        sums = np.bincount(cell, weights=mag, minlength=cells)
        n = np.bincount(cell, minlength=cells)
        mu = np.divide(sums, n, out=np.zeros(cells), where=n > 0).astype(np.float32)
        neg = v < 0
        w.sorted_indices(idx)
        w.flags(neg)
        w.uints(level, bits_for(self.levels))
        w.f32(mu)
        values = mu[cell]
        return _scatter(flat.size, idx, np.where(neg, -values, values))

    def read(self, r, sizes):
        counts = self.counts(sizes)
        k = int(counts.sum())
        idx = r.sorted_indices(k)
        neg = r.flags(k)
        level = r.uints(k, bits_for(self.levels))
        mu = r.f32(len(sizes) * self.levels)
        values = mu[np.repeat(np.arange(len(sizes)), counts) * self.levels + level]
        return _scatter(int(np.sum(sizes)), idx, np.where(neg, -values, values))

    def bits(self, n: int, index_bits: float) -> float:
        """Paper formula for one tensor: k (1 + ceil(log2 L) + b_idx) + 32 L."""
        return keep_count(n, self.p) * (1 + bits_for(self.levels) + index_bits) + 32 * self.levels


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

    def buckets(self, sizes: np.ndarray) -> np.ndarray:
        """Bucket lengths: each tensor whole, or cut into ``bucket``-long pieces."""
        out = []
        for n in (int(n) for n in sizes):
            if not n:
                continue
            if self.bucket and self.bucket < n:
                out += [self.bucket] * (n // self.bucket) + ([n % self.bucket] if n % self.bucket else [])
            else:
                out.append(n)
        return np.array(out, dtype=np.int64)

    def write(self, flat, sizes, w, rng=None):
        if rng is None:
            raise ValueError("QSGD needs a random generator")
        lengths = self.buckets(sizes)
        starts = np.cumsum(lengths) - lengths
        sq = np.square(flat, dtype=np.float64)
        norms = (np.sqrt(np.add.reduceat(sq, starts)) if lengths.size else np.zeros(0)).astype(np.float32)
        scale = np.divide(np.float32(self.s), norms, out=np.zeros_like(norms), where=norms > 0)
        scaled = np.abs(flat) * np.repeat(scale, lengths)
        low = np.floor(scaled)
        level = (low + (rng.random(flat.size, dtype=np.float32) < scaled - low)).astype(np.int64)
        neg = flat < 0
        w.f32(norms)
        w.flags(neg)
        w.uints(level, bits_for(self.s + 1))
        return self._values(level, neg, norms, lengths)

    def _values(self, level, neg, norms, lengths):
        mag = level.astype(np.float32) * np.repeat(norms / np.float32(self.s), lengths)
        return np.where(neg, -mag, mag).astype(np.float32)

    def read(self, r, sizes):
        lengths = self.buckets(sizes)
        n = int(np.sum(sizes))
        norms = r.f32(lengths.size)
        neg = r.flags(n)
        level = r.uints(n, bits_for(self.s + 1))
        return self._values(level, neg, norms, lengths)

    def bits(self, n: int, index_bits: float = 0.0) -> float:
        """Paper formula for one tensor: per bucket n_b (1 + ceil(log2(s + 1))) + 32."""
        return n * (1 + bits_for(self.s + 1)) + 32 * len(self.buckets(np.array([n])))


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


CODEC_KEYS = ("compression", "keep-ratio", "dhq-levels", "dhq-split", "qsgd-levels", "qsgd-bucket",
              "error-feedback")


def codec_settings(mapping: Mapping[str, object]) -> dict[str, object]:
    """The codec keys of a run config (kebab-case), as the server sends them to clients
    with each TRAIN message; checks them by building the codec (ValueError if bad)."""
    settings = {k: mapping[k] for k in CODEC_KEYS}
    from_settings(settings)
    return settings


def from_settings(settings: Mapping[str, object]) -> tuple[Codec | None, bool]:
    """(codec, error feedback on?) from the kebab-case keys a TRAIN message carries
    (CODEC_KEYS)."""
    codec = make_codec(str(settings["compression"]), keep_ratio=float(settings["keep-ratio"]),
                       levels=int(settings["dhq-levels"]), split=str(settings["dhq-split"]),
                       qsgd_levels=int(settings["qsgd-levels"]), qsgd_bucket=int(settings["qsgd-bucket"]))
    feedback = str(settings.get("error-feedback", "auto"))
    if feedback not in ("auto", "on", "off"):
        raise ValueError(f"error-feedback must be auto, on or off, got {feedback!r}")
    on = codec is not None and (codec.error_feedback if feedback == "auto" else feedback == "on")
    return codec, on


def _floating(dtype) -> bool:
    return np.issubdtype(np.dtype(dtype), np.floating)


def encode_update(codec: Codec, tensors: Mapping[str, np.ndarray], *,
                  residual: dict[str, np.ndarray] | None = None,
                  rng: np.random.Generator | None = None) -> tuple[bytes, dict[str, np.ndarray]]:
    """One update as bytes, tensors in the given order. Floating tensors go
    through the codec (as float32, one stream), others (integer buffers) follow
    as they are. residual: error-feedback memory, updated in place (None: no
    feedback). Returns (bytes, what the receiver decodes)."""
    tensors = {k: np.asarray(t) for k, t in tensors.items()}
    floats = [k for k, t in tensors.items() if _floating(t.dtype)]
    sizes = np.array([tensors[k].size for k in floats], dtype=np.int64)
    flat = (np.concatenate([tensors[k].ravel() for k in floats]).astype(np.float32, copy=False)
            if floats else np.zeros(0, np.float32))
    if residual is not None and any(k in residual for k in floats):
        flat = flat + np.concatenate([residual[k].ravel() if k in residual else np.zeros(tensors[k].size, np.float32)
                                      for k in floats])
    w = Writer()
    w.raw(MAGIC)
    w.u8(_IDS[codec.name])
    out = codec.write(flat, sizes, w, rng)
    rest = flat - out if residual is not None else None
    sent: dict[str, np.ndarray] = {}
    off = 0
    for k in floats:
        t = tensors[k]
        sent[k] = out[off:off + t.size].reshape(t.shape).astype(t.dtype, copy=False)
        if rest is not None:
            residual[k] = rest[off:off + t.size].reshape(t.shape)
        off += t.size
    for k, t in tensors.items():
        if k not in sent:
            w.raw(np.ascontiguousarray(t).tobytes())
            sent[k] = t
    return w.getvalue(), {k: sent[k] for k in tensors}


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
    floats = [k for k, (_, dtype) in layout.items() if _floating(dtype)]
    sizes = np.array([int(np.prod(layout[k][0], dtype=np.int64)) for k in floats], dtype=np.int64)
    flat = codec.read(r, sizes)
    out, off = {}, 0
    for k in floats:
        shape, dtype = layout[k]
        n = int(np.prod(shape, dtype=np.int64))
        out[k] = flat[off:off + n].reshape(shape).astype(dtype, copy=False)
        off += n
    for k, (shape, dtype) in layout.items():
        if k not in out:
            dtype = np.dtype(dtype)
            n = int(np.prod(shape, dtype=np.int64))
            out[k] = np.frombuffer(r.raw(n * dtype.itemsize), dtype=dtype).reshape(shape)
    if not r.done():
        raise ValueError("compressed update has trailing bytes")
    return {k: out[k] for k in layout}
