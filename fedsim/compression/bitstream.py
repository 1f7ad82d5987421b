"""The bytes a compressed update is made of: fixed-width fields, bit fields and
Golomb-Rice coded index gaps, written and read back with numpy (no Python loop
over elements).

Written by hand: the codecs need a few bit-level fields in one buffer, and the
libraries that do bit streams (bitarray, bitstring) work element by element in
Python or add a compiled dependency for what ``np.packbits`` already does.

Golomb-Rice code of the sorted indices i_1 < ... < i_k of a sparse mask: the
gaps g_j = i_j - i_{j-1} - 1 (i_0 = -1) split into a quotient g >> m, sent in
unary (q ones then a zero), and a remainder of m bits. The unary parts of all
gaps are stored together, then the remainders, so both decode with vector
operations; the bit count is that of the interleaved code. m is the one that
minimises the size (tried around log2 of the mean gap), sent in one byte.
"""

from __future__ import annotations

import math

import numpy as np

_U32 = np.dtype("<u4")
_F32 = np.dtype("<f4")


def bits_for(count: int) -> int:
    """Bits of a fixed-width code for values 0 .. count - 1 (0 when count <= 1)."""
    return max(0, math.ceil(math.log2(count))) if count > 1 else 0


def rice_parameter(gaps: np.ndarray) -> int:
    """The m in 0..31 giving the fewest bits for these gaps."""
    if gaps.size == 0:
        return 0
    guess = int(math.log2(max(float(gaps.mean()), 1.0)))
    candidates = range(max(0, guess - 2), min(31, guess + 2) + 1)
    return min(candidates, key=lambda m: int((gaps >> m).sum()) + gaps.size * (1 + m))


class Writer:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def u8(self, value: int) -> None:
        self.chunks.append(bytes([value]))

    def u32(self, value: int) -> None:
        self.chunks.append(int(value).to_bytes(4, "little"))

    def f32(self, values: np.ndarray) -> None:
        self.chunks.append(np.ascontiguousarray(values, dtype=_F32).tobytes())

    def raw(self, data: bytes) -> None:
        self.chunks.append(data)

    def flags(self, mask: np.ndarray) -> None:
        """One bit per element (e.g. a sign)."""
        self.chunks.append(np.packbits(mask).tobytes())

    def uints(self, values: np.ndarray, width: int) -> None:
        """Each value in ``width`` bits, most significant first."""
        if width == 0 or values.size == 0:
            return
        if width > 16:
            raise ValueError(f"fields wider than 16 bits are not supported, got {width}")
        if width <= 8:  # 8 values of w bits = w bytes: shift them into one uint64 per group
            groups = -(-values.size // 8)
            padded = np.zeros(groups * 8, dtype=np.uint64)
            padded[:values.size] = values
            padded = padded.reshape(groups, 8)
            acc = np.zeros(groups, dtype=np.uint64)
            for j in range(8):
                acc |= padded[:, j] << np.uint64(width * (7 - j))
            packed = acc.astype(">u8").view(np.uint8).reshape(groups, 8)[:, 8 - width:]
            self.chunks.append(packed.tobytes()[:(values.size * width + 7) // 8])
            return
        as_bytes = values.astype(">u2").view(np.uint8).reshape(-1, 2)
        bits = np.unpackbits(as_bytes, axis=1)[:, 16 - width:]
        self.chunks.append(np.packbits(bits).tobytes())

    def sorted_indices(self, idx: np.ndarray) -> None:
        """Strictly increasing indices, Golomb-Rice coded gaps (count not included)."""
        gaps = np.diff(idx.astype(np.int64), prepend=-1) - 1
        m = rice_parameter(gaps)
        q = gaps >> m
        unary_bits = int(q.sum()) + gaps.size
        self.u8(m)
        self.u32(unary_bits)
        unary = np.ones(unary_bits, dtype=np.uint8)
        unary[np.cumsum(q + 1) - 1] = 0
        self.chunks.append(np.packbits(unary).tobytes())
        self.uints(gaps & ((1 << m) - 1), m)

    def getvalue(self) -> bytes:
        return b"".join(self.chunks)


class Reader:
    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def _take(self, nbytes: int) -> memoryview:
        if self.pos + nbytes > len(self.data):
            raise ValueError("compressed update is truncated")
        out = self.data[self.pos:self.pos + nbytes]
        self.pos += nbytes
        return out

    def u8(self) -> int:
        return self._take(1)[0]

    def u32(self) -> int:
        return int.from_bytes(self._take(4), "little")

    def f32(self, count: int) -> np.ndarray:
        return np.frombuffer(self._take(4 * count), dtype=_F32).astype(np.float32)

    def raw(self, nbytes: int) -> bytes:
        return bytes(self._take(nbytes))

    def flags(self, count: int) -> np.ndarray:
        return np.unpackbits(np.frombuffer(self._take((count + 7) // 8), np.uint8), count=count).astype(bool)

    def uints(self, count: int, width: int) -> np.ndarray:
        if width == 0 or count == 0:
            return np.zeros(count, dtype=np.int64)
        raw = np.frombuffer(self._take((count * width + 7) // 8), np.uint8)
        if width <= 8:  # inverse of Writer.uints: w bytes -> one uint64 -> 8 values
            groups = -(-count // 8)
            full = np.zeros((groups, 8), dtype=np.uint8)
            body = np.zeros(groups * width, dtype=np.uint8)
            body[:raw.size] = raw
            full[:, 8 - width:] = body.reshape(groups, width)
            acc = full.view(">u8").ravel().astype(np.uint64)
            mask = np.uint64((1 << width) - 1)
            out = np.empty((groups, 8), dtype=np.int64)
            for j in range(8):
                out[:, j] = (acc >> np.uint64(width * (7 - j))) & mask
            return out.ravel()[:count]
        bits = np.unpackbits(raw, count=count * width).reshape(count, width)
        out = np.zeros(count, dtype=np.int64)
        for j in range(width):
            out = (out << 1) | bits[:, j]
        return out

    def sorted_indices(self, count: int) -> np.ndarray:
        m = self.u8()
        unary_bits = self.u32()
        unary = np.unpackbits(np.frombuffer(self._take((unary_bits + 7) // 8), np.uint8), count=unary_bits)
        ends = np.flatnonzero(unary == 0)
        if ends.size != count:
            raise ValueError("compressed update is corrupt: index code does not match the count")
        q = np.diff(ends, prepend=-1) - 1
        gaps = (q << m) | self.uints(count, m)
        return np.cumsum(gaps + 1) - 1

    def done(self) -> bool:
        return self.pos == len(self.data)
