"""SalUn's saliency mask as it travels: the top share of weights by a score over all
tensors at once, its bit packing (1 bit per weight), and the server's combination of
several holders' masks. Plain numpy, used by the client (local.py) and the server
wrapper (strategies/unlearning/protocol.py).

Only masks travel, never the forget gradient they come from: a dense gradient of the
forget data is what gradient inversion reconstructs images from (attacks/). Each holder
keeps the top share of its own |g| and sends that mask, one packed uint8 array per
parameter. The server adds the masks (votes: how many holders find a weight salient)
and keeps the top share by votes. The vote sum is also all that a secure-aggregation
server would learn of the masks, so the same rule runs under secure aggregation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pack_mask(mask: dict[str, np.ndarray], keys: Sequence[str]) -> bytes:
    """Boolean arrays, in ``keys`` order, as one bit string (the server's mask, sent down)."""
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


def pack_each(mask: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A holder's mask as it goes up: per parameter, its bits packed into uint8
    (ceil(n / 8) bytes for n weights); the names say which parameter, the server knows the shapes."""
    return {k: np.packbits(np.asarray(m, dtype=bool).ravel()) for k, m in mask.items()}


def unpack_each(packed: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Inverse of pack_each; ValueError if a name is unknown or an array is not the packed size."""
    out = {}
    for key, bits in packed.items():
        if key not in shapes:
            raise ValueError(f"mask names '{key}', which the model does not have")
        n = int(np.prod(shapes[key]))
        if bits.dtype != np.uint8 or bits.ndim != 1 or bits.size != (n + 7) // 8:
            raise ValueError(f"mask of '{key}' must be {(n + 7) // 8} packed bytes (uint8), "
                             f"got {bits.size} of {bits.dtype}")
        out[key] = np.unpackbits(bits, count=n).astype(bool).reshape(shapes[key])
    return out


def top_share(scores: dict[str, np.ndarray], ratio: float, *, rank: np.ndarray | None = None
              ) -> dict[str, np.ndarray]:
    """Keep the round(ratio x total) entries (at least one) with the largest |score|, over all
    tensors at once. Ties at the cut go to the entry first in the tie order: entry i (in the
    tensors' order, each flattened) has place ``rank[i]``; default: its position."""
    flat = np.concatenate([np.abs(np.asarray(g, dtype=np.float64)).ravel() for g in scores.values()])
    keep = max(1, int(round(ratio * flat.size)))
    if rank is None:
        rank = np.arange(flat.size)
    elif rank.shape != flat.shape:
        raise ValueError(f"rank must hold one place per entry ({flat.size}), got shape {rank.shape}")
    chosen = np.zeros(flat.size, dtype=bool)
    chosen[np.lexsort((rank, -flat))[:keep]] = True  # by score (descending), then by place
    out, start = {}, 0
    for key, g in scores.items():
        out[key] = chosen[start:start + g.size].reshape(g.shape)
        start += g.size
    return out


def combine_masks(masks: list[dict[str, np.ndarray]], ratio: float, rng: np.random.Generator
                  ) -> dict[str, np.ndarray]:
    """The server's mask from several holders' masks: votes = sum of the masks per weight,
    then the top ``ratio`` share by votes. Votes tie in large blocks (they take the values
    0..H), so ties at the cut are broken by one random permutation of all entries drawn
    from ``rng`` (seeded by the run: deterministic), not by position, which would favour
    the first layers. One holder: its own mask, whatever the permutation."""
    if not masks:
        raise ValueError("combine_masks needs at least one mask")
    keys = list(masks[0])
    if any(set(m) != set(keys) for m in masks):
        raise ValueError("the masks cover different parameters")
    votes = {k: sum(m[k].astype(np.int64) for m in masks) for k in keys}
    total = sum(v.size for v in votes.values())
    return top_share(votes, ratio, rank=rng.permutation(total))
