"""SalUn's saliency mask as it travels: the top share of weights by |g| over all
tensors at once, and its bit packing (1 bit per weight). Plain numpy, used by the
server wrapper (strategies/unlearning/protocol.py) and the client (local.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pack_mask(mask: dict[str, np.ndarray], keys: Sequence[str]) -> bytes:
    """Boolean arrays, in ``keys`` order, as one bit string."""
    return np.packbits(np.concatenate([mask[k].ravel() for k in keys])).tobytes()


def unpack_mask(data: bytes, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Inverse of pack_mask; ``shapes`` in the order used to pack."""
    total = sum(int(np.prod(s)) for s in shapes.values())
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=total).astype(bool)
    out, start = {}, 0
    for key, shape in shapes.items():
        n = int(np.prod(shape))
        out[key] = bits[start:start + n].reshape(shape)
        start += n
    return out


def top_share(grads: dict[str, np.ndarray], ratio: float) -> dict[str, np.ndarray]:
    """Keep the round(ratio x total) entries with the largest |g|, over all tensors at once."""
    flat = np.concatenate([np.abs(g).ravel() for g in grads.values()])
    keep = max(1, int(round(ratio * flat.size)))
    chosen = np.zeros(flat.size, dtype=bool)
    chosen[np.argpartition(-flat, keep - 1)[:keep]] = True
    out, start = {}, 0
    for key, g in grads.items():
        out[key] = chosen[start:start + g.size].reshape(g.shape)
        start += g.size
    return out
