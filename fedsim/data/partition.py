"""Client partitions: one sorted int64 index array per client into a train split, computed once.

Why once, from (seed, "partition"): every node rebuilds the same partition from the run
config, so client i holds the same samples in every round and on every Ray worker.
Label-skew schemes come from flwr-datasets (Dirichlet, pathological, size); the FedEMD
Maverick constructions (Huang et al. 2023, see shared/papers/fedemd.md) are hand-written,
flwr-datasets has none. Loading images is datasets.py's job; selection is strategies/'s.
labels: (N,) int64 -> num_clients disjoint sorted int64 position arrays, >= min_size each.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedsim.rng import derive

__all__ = ["SCHEMES", "PartitionError", "label_histograms", "partition"]


class PartitionError(ValueError):
    """A partition that cannot be built; the message is one line with the counts involved."""


@dataclass(frozen=True)
class _Opts:  # scheme parameters besides labels, client count and generator
    alpha: float
    classes_per_client: int
    maverick_class: int
    min_size: int
    source: str  # names the data in messages, e.g. "the 'digits' train split"


Parts = list[np.ndarray]
Scheme = Callable[[np.ndarray, int, np.random.Generator, _Opts], Parts]


def _flwr_parts(partitioner, labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> Parts:
    """Run a flwr-datasets partitioner on a seeded shuffle of (label, idx) and read idx back.

    Shuffling first keeps any order in the source file (writer, class blocks) out of the
    contiguous slices flwr-datasets takes. Its warnings (unused classes, redraws) are
    silenced: partition() checks the result itself. Arrow format: ~2x faster reads.
    """
    from datasets import Dataset  # with flwr_datasets: ~3.5 s to import, so only when needed

    perm = rng.permutation(len(labels))
    partitioner.dataset = Dataset.from_dict({"label": labels[perm], "idx": perm})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts = [partitioner.load_partition(i).with_format("arrow")["idx"] for i in range(num_clients)]
    return [np.asarray(p.to_numpy(), dtype=np.int64) for p in parts]


def _top_up(parts: Parts, min_size: int, rng: np.random.Generator) -> Parts:
    """Move random samples from the largest clients to those below min_size.

    Used after a single Dirichlet draw when redrawing cannot reach min_size; changes only
    the few clients concerned. partition() has checked that N * min_size <= len(labels).
    """
    pools = [list(p) for p in parts]
    sizes = np.array([len(p) for p in pools])
    for i in np.flatnonzero(sizes < min_size):
        while sizes[i] < min_size:
            donor = int(np.argmax(sizes))
            pools[i].append(pools[donor].pop(int(rng.integers(sizes[donor]))))
            sizes[donor] -= 1
            sizes[i] += 1
    return [np.asarray(p, dtype=np.int64) for p in pools]


def _iid(labels: np.ndarray, n: int, rng: np.random.Generator, o: _Opts) -> Parts:
    """Uniform random split into n near-equal parts (sizes differ by at most 1).

    Same result as flwr-datasets' IidPartitioner on a shuffled dataset (Dataset.shard,
    contiguous = np.array_split), computed directly: load_partition costs ~1.7 ms per
    client, 1.7 s for 1000 clients.
    """
    return np.array_split(rng.permutation(len(labels)), n)


def _dirichlet(labels: np.ndarray, n: int, rng: np.random.Generator, o: _Opts) -> Parts:
    """Label skew: each class split over clients by proportions ~ Dir(alpha * 1_n) (Hsu et al. 2019).

    flwr-datasets redraws until every client has min_partition_size samples and raises after
    10 redraws; with many clients per sample (e.g. 1000 clients on 1437 digits) that always
    fails, so we then take one draw without the constraint and top up the short clients.
    """
    from flwr_datasets.partitioner import DirichletPartitioner

    def run(min_partition_size: int) -> Parts:
        p = DirichletPartitioner(n, "label", o.alpha, min_partition_size, seed=int(rng.integers(2**31)))
        return _flwr_parts(p, labels, n, rng)

    try:
        return run(o.min_size)
    except ValueError:  # "The max number of attempts (10) was reached"
        return _top_up(run(0), o.min_size, rng)


def _pathological(labels: np.ndarray, n: int, rng: np.random.Generator, o: _Opts) -> Parts:
    """Each client holds classes_per_client classes (McMahan et al. 2017 shards, by class).

    "first-deterministic": client i gets class i mod C first, so every class is used when
    n >= C; the others are drawn at random. A class is split evenly over its clients.
    """
    from flwr_datasets.partitioner import PathologicalPartitioner

    k, present = o.classes_per_client, len(np.unique(labels))
    if not 1 <= k <= present:
        raise PartitionError(f"pathological: classes_per_client={k} but {o.source} has {present} classes")
    p = PathologicalPartitioner(n, "label", k, "first-deterministic", seed=int(rng.integers(2**31)))
    try:
        return _flwr_parts(p, labels, n, rng)
    except ValueError:  # a class was assigned to more clients than it has samples
        raise PartitionError(
            f"pathological: {n} clients x {k} classes each put some class on more clients than "
            f"{o.source} has images of it ({len(labels)} images, {present} classes)"
        ) from None


def _quantity(labels: np.ndarray, n: int, rng: np.random.Generator, o: _Opts) -> Parts:
    """Quantity skew, IID labels: sizes = min_size + Multinomial(N - n * min_size, q), q ~ Dir(alpha * 1_n).

    The Dirichlet-over-sizes construction of Li et al. 2022 (NIID-Bench, "quantity skew");
    the split itself is flwr-datasets' SizePartitioner on a seeded shuffle.
    """
    from datasets import Dataset
    from flwr_datasets.partitioner import SizePartitioner

    q = rng.dirichlet(np.full(n, o.alpha))
    sizes = o.min_size + rng.multinomial(len(labels) - n * o.min_size, q / q.sum())
    p = SizePartitioner([int(s) for s in sizes])
    perm = rng.permutation(len(labels))
    p.dataset = Dataset.from_dict({"label": labels[perm], "idx": perm})
    # partition_id_to_indices is public for SizePartitioner: positions in the shuffled
    # dataset, mapped back through perm (much faster than n load_partition calls).
    return [perm[np.asarray(p.partition_id_to_indices[i], dtype=np.int64)] for i in range(n)]


# --- FedEMD Maverick constructions (fedemd.md, "Maverick partition constructions") ---
# The non-Maverick classes are dealt round-robin over a seeded shuffle (every client,
# Mavericks included, gets its share); the Maverick class(es) are routed as named.


def _split_off(labels: np.ndarray, rng: np.random.Generator, classes: tuple[int, ...], o: _Opts, name: str):
    """Check the classes occur, then seeded shuffle -> (non-Maverick positions, {class: its positions})."""
    missing = [c for c in classes if not np.any(labels == c)]
    if missing:
        raise PartitionError(f"{name}: Maverick class(es) {missing} do not occur in {o.source}")
    perm = rng.permutation(len(labels))
    mav = np.isin(labels[perm], classes)
    return perm[~mav], {c: perm[labels[perm] == c] for c in classes}


def _assemble(n: int, rest: np.ndarray, dealt_to: int, pieces: list[tuple[int, np.ndarray]]) -> Parts:
    """Deal `rest` round-robin over clients 0..dealt_to-1 (j-th index -> client j mod dealt_to),
    then add each (client, positions) piece."""
    buckets = [[rest[j::dealt_to]] if j < dealt_to else [np.empty(0, np.int64)] for j in range(n)]
    for client, idx in pieces:
        buckets[client].append(idx)
    return [np.concatenate(b) for b in buckets]


def _exclusive(k: int) -> Scheme:
    """exclusive-k: Maverick client n-1-j alone holds class c_j; c = (maverick_class,) for
    k = 1 and (0, 1, 2)[:k] otherwise, as in the paper (class 0 -> n-1, class 1 -> n-2, ...)."""

    def scheme(labels: np.ndarray, n: int, rng: np.random.Generator, o: _Opts) -> Parts:
        classes = (o.maverick_class,) if k == 1 else tuple(range(k))
        rest, mav = _split_off(labels, rng, classes, o, f"exclusive-{k}")
        return _assemble(n, rest, n, [(n - 1 - j, mav[c]) for j, c in enumerate(classes)])

    return scheme


def _shared_2(labels: np.ndarray, n: int, rng: np.random.Generator, o: _Opts) -> Parts:
    """Maverick class split 1/1.1 (~91 %) to client n-2 and the rest (~9 %) to client n-1."""
    rest, mav = _split_off(labels, rng, (o.maverick_class,), o, "shared-2")
    m = mav[o.maverick_class]
    cut = int(round(len(m) / 1.1))
    return _assemble(n, rest, n, [(n - 2, m[:cut]), (n - 1, m[cut:])])


def _shared_3(labels: np.ndarray, n: int, rng: np.random.Generator, o: _Opts) -> Parts:
    """Each Maverick-class sample goes to one of clients n-3, n-2, n-1, chosen uniformly."""
    rest, mav = _split_off(labels, rng, (o.maverick_class,), o, "shared-3")
    m = mav[o.maverick_class]
    owner = rng.integers(3, size=len(m))
    return _assemble(n, rest, n, [(n - 3 + j, m[owner == j]) for j in range(3)])


def _quantity_maverick(labels: np.ndarray, n: int, rng: np.random.Generator, o: _Opts) -> Parts:
    """IID labels; n + 9 near-equal shards: clients 0..n-2 one each, client n-1 the last 10 (~10x).

    The paper's code deals n + 10 shards and leaves one unused; n + 9 keeps all the data.
    """
    shards = np.array_split(rng.permutation(len(labels)), n + 9)
    return shards[: n - 1] + [np.concatenate(shards[n - 1 :])]


def _missing_1(labels: np.ndarray, n: int, rng: np.random.Generator, o: _Opts) -> Parts:
    """Control: the Maverick class is dropped; everything else dealt round-robin to all clients."""
    rest, _ = _split_off(labels, rng, (o.maverick_class,), o, "missing-1")
    return _assemble(n, rest, n, [])


def _maverick_only(labels: np.ndarray, n: int, rng: np.random.Generator, o: _Opts) -> Parts:
    """Non-Maverick data dealt over clients 0..n-2; client n-1 holds the Maverick class only."""
    rest, mav = _split_off(labels, rng, (o.maverick_class,), o, "maverick-only")
    return _assemble(n, rest, n - 1, [(n - 1, mav[o.maverick_class])])


MIN_CLIENTS = {"exclusive-2": 2, "exclusive-3": 3, "shared-2": 2, "shared-3": 3, "maverick-only": 2}
SCHEMES: dict[str, Scheme] = {
    "iid": _iid,
    "dirichlet": _dirichlet,
    "pathological": _pathological,
    "quantity": _quantity,
    "exclusive-1": _exclusive(1),
    "exclusive-2": _exclusive(2),
    "exclusive-3": _exclusive(3),
    "shared-2": _shared_2,
    "shared-3": _shared_3,
    "quantity-maverick": _quantity_maverick,
    "missing-1": _missing_1,
    "maverick-only": _maverick_only,
}


MAVERICKS = {"exclusive-1": 1, "exclusive-2": 2, "exclusive-3": 3, "shared-2": 2, "shared-3": 3,
             "quantity-maverick": 1, "maverick-only": 1}


def maverick_ids(scheme: str, num_clients: int) -> list[int]:
    """The Maverick clients a scheme creates (always the last ones), [] for other schemes.
    For logging only: selectors never see it."""
    k = MAVERICKS.get(scheme, 0)
    return list(range(num_clients - k, num_clients)) if num_clients >= k else []


def partition(
    labels: np.ndarray,
    num_clients: int,
    scheme: str = "iid",
    *,
    seed: int,
    alpha: float = 0.5,
    classes_per_client: int = 2,
    maverick_class: int = 1,
    min_size: int = 1,
    source: str = "the dataset",
) -> list[np.ndarray]:
    """Split positions 0..N-1 of `labels` (N,) over num_clients clients by a SCHEMES entry.

    Returns num_clients disjoint, sorted int64 arrays, each with >= min_size entries; all
    positions are used except by "missing-1" (drops the Maverick class) and "pathological"
    (drops classes no client drew, possible when num_clients < num_classes).
    alpha: Dirichlet concentration for "dirichlet" (labels) and "quantity" (sizes); smaller
    is more skewed. maverick_class: the class of exclusive-1, shared-2/3, missing-1 and
    maverick-only. source: how error messages name the data, e.g. "the 'digits' train split".
    Deterministic in (labels, arguments, seed); draws come from derive(seed, "partition").
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
        raise PartitionError(f"labels must be a 1-D array of non-negative ints, got {labels.dtype} {labels.shape}")
    labels = labels.astype(np.int64, copy=False)
    if scheme not in SCHEMES:
        raise PartitionError(f"unknown partition scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    if not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise PartitionError(f"num_clients must be a positive int, got {num_clients!r}")
    if num_clients < MIN_CLIENTS.get(scheme, 1):
        raise PartitionError(f"{scheme}: needs at least {MIN_CLIENTS[scheme]} clients, got {num_clients}")
    if min_size < 1:
        raise PartitionError(f"min_size must be >= 1, got {min_size}")
    if scheme in ("dirichlet", "quantity") and not alpha > 0:
        raise PartitionError(f"{scheme}: alpha must be > 0, got {alpha}")
    n = len(labels)
    if num_clients * min_size > n:
        raise PartitionError(
            f"{num_clients} clients but {source} has only {n} images: need at least {min_size} per client"
        )
    opts = _Opts(alpha, classes_per_client, maverick_class, min_size, source)
    raw = SCHEMES[scheme](labels, int(num_clients), derive(seed, "partition"), opts)
    parts = [np.sort(p).astype(np.int64) for p in raw]
    sizes = np.array([len(p) for p in parts])
    if sizes.min() < min_size:
        i = int(np.argmin(sizes))
        raise PartitionError(
            f"{num_clients} clients but {source} has only {n} images: scheme {scheme!r} "
            f"leaves client {i} with {sizes[i]} (min_size={min_size})"
        )
    return parts


def label_histograms(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """(num_clients, num_classes) int64 class counts per client: row i = bincount(labels[parts[i]]).

    Rows sum to the partition sizes; FedEMD normalises them to the p_i of its EMD scores.
    """
    labels = np.asarray(labels)
    if labels.size and labels.max() >= num_classes:
        raise PartitionError(f"label {labels.max()} does not fit num_classes={num_classes}")
    rows = [np.bincount(labels[p], minlength=num_classes) for p in parts]
    return np.stack(rows).astype(np.int64) if rows else np.zeros((0, num_classes), np.int64)
