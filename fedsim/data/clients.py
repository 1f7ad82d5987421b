"""Each client's data in a run: the config's dataset, its partition among the
clients, an unlearning request (forget-clients, forget-class) applied on top
(except in the ``continue`` control, which keeps training on all data: the request
then only names what its model is scored against), a backdoor (backdoor-clients, or malicious
clients of kind backdoor) poisoning some clients' samples (fedsim/data/backdoor.py), and
label-flipping malicious clients (fedsim/data/malicious.py).

Pure functions of (config, labels): every process (server, Ray actor, pre-flight
child) computes the same index sets.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedsim.config import ConfigError, RunConfig, parse_ids
from fedsim.data.backdoor import poison, poisoned_indices
from fedsim.data.datasets import ImageData, load_dataset
from fedsim.data.malicious import flip_labels, malicious_ids
from fedsim.data.partition import partition

KEEPS_FORGET_DATA = ("continue",)  # unlearn-methods whose clients train on the forget data as before


def dataset(cfg: RunConfig, split: str) -> ImageData:
    return load_dataset(cfg.dataset, split, cfg.dataset_path or None, cfg.image_size)


def client_partition(cfg: RunConfig, labels: np.ndarray) -> list[np.ndarray]:
    """Each client's training index set: its partition minus what an unlearning
    request (``forget-clients``, ``forget-class``) removes."""
    return split_request(cfg, labels)[0]


def split_request(cfg: RunConfig, labels: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(kept, forgotten) index sets per client. The request is applied after
    partitioning, so every sample stays with the client that held it in the
    original run: retraining replays the same clients without the data, and
    fine-tuning methods find the forget data where they were."""
    kept, forgotten = [], []
    for i, p in enumerate(run_partition(cfg, labels)):
        k, f = apply_request(cfg, labels, i, p)
        kept.append(k)
        forgotten.append(f)
    return kept, forgotten


def run_partition(cfg: RunConfig, labels: np.ndarray) -> list[np.ndarray]:
    """The run's partition of the train split, before any unlearning request."""
    return partition(labels, cfg.num_clients, cfg.partition, seed=cfg.seed, alpha=cfg.partition_alpha,
                     classes_per_client=cfg.partition_classes, maverick_class=cfg.maverick_class,
                     source=f"the '{cfg.dataset}' train split")


def apply_request(cfg: RunConfig, labels: np.ndarray, client: int, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(kept, forgotten) parts of client ``client``'s index set ``idx`` under the run's
    request: all of it if the client is in forget-clients, else the forget-class samples
    (nothing under a method of KEEPS_FORGET_DATA)."""
    gone = parse_ids(cfg.forget_clients, "forget-clients") or set()
    drop = np.full(len(idx), client in gone) | (labels[idx] == cfg.forget_class)
    drop &= cfg.unlearn_method not in KEEPS_FORGET_DATA
    return idx[~drop], idx[drop]


def as_held(cfg: RunConfig, train: ImageData, parts: Mapping[int, np.ndarray] | None = None) -> ImageData:
    """The train split as the clients hold it: the samples of the backdoor clients (backdoor-clients,
    and the malicious ones under malicious-kind = backdoor) that ``parts`` (default: the run's
    partition) holds poisoned, and those of label-flipping malicious clients relabelled; ``train``
    itself when nobody does either. Partitions and requests are computed from ``train.labels``,
    the true labels."""
    backdoor, flipping = backdoor_clients(cfg), data_attackers(cfg, "label-flip")
    if not backdoor and not flipping:
        return train
    if parts is None:
        parts = dict(enumerate(run_partition(cfg, train.labels)))
        if unknown := sorted(backdoor - set(parts)):
            raise ConfigError(f"backdoor-clients {unknown} are not partition ids (0..{len(parts) - 1})")
    held = train
    if backdoor:
        idx = poisoned_indices(train.labels, parts, [c for c in backdoor if c in parts], target=cfg.backdoor_target,
                               fraction=cfg.backdoor_fraction, seed=cfg.seed)
        held = poison(held, idx, cfg.backdoor_target)
    if flipping:
        idx = [np.asarray(parts[c], dtype=np.int64) for c in sorted(flipping) if c in parts]
        held = flip_labels(held, np.concatenate(idx) if idx else np.zeros(0, np.int64))
    return held


def data_attackers(cfg: RunConfig, kind: str) -> frozenset[int]:
    """The malicious clients (fedsim/data/malicious.py) if they attack with ``kind``, else none."""
    if cfg.malicious_kind != kind:
        return frozenset()
    return malicious_ids(cfg.seed, cfg.num_clients, cfg.malicious_share)


def backdoor_clients(cfg: RunConfig) -> frozenset[int]:
    """Who plants the backdoor: backdoor-clients, and the malicious clients of kind backdoor."""
    return frozenset(parse_ids(cfg.backdoor_clients, "backdoor-clients") or set()) | data_attackers(cfg, "backdoor")
