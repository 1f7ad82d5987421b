"""What a process needs to train or evaluate, built once and reused.

Ray reuses worker processes across many simulated clients, so the dataset,
the partition and the model object are built on first use per process and
config, then shared by every client the worker plays (only weights change
between messages). The partition is a pure function of (labels, scheme, seed),
so every process computes the same index sets.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedsim.config import RunConfig, parse_ids
from fedsim.data import ImageData, load_dataset
from fedsim.model import build_model
from fedsim.partition import label_histograms, partition
from fedsim.train import Task, make_task


def pick_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


@dataclass
class Workspace:
    cfg: RunConfig
    train: ImageData
    # client id -> indices into train; a list in simulation (ids 0..n-1), a one-entry dict on a
    # SuperNode with its own data (fedsim/node_data.py)
    parts: Mapping[int, np.ndarray]  # what each client trains on (an unlearning request's data left out)
    forget: Mapping[int, np.ndarray]  # what a request asks each client to forget (empty without a request)
    model: nn.Module
    task: Task
    device: str

    def client_data(self, pid: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (n, C, H, W), labels (n,)) of partition ``pid``."""
        idx = torch.from_numpy(self.parts[pid])
        return self.train.images[idx], torch.from_numpy(self.train.labels[self.parts[pid]])

    def forget_data(self, pid: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) that partition ``pid`` is asked to forget (0 rows if none)."""
        idx = self.forget[pid]
        return self.train.images[torch.from_numpy(idx)], torch.from_numpy(self.train.labels[idx])

    def label_hist(self, pid: int) -> np.ndarray:
        return label_histograms(self.train.labels, [self.parts[pid]], self.train.num_classes)[0]


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
    request: all of it if the client is in forget-clients, else the forget-class samples."""
    gone = parse_ids(cfg.forget_clients, "forget-clients") or set()
    drop = np.full(len(idx), client in gone) | (labels[idx] == cfg.forget_class)
    return idx[~drop], idx[drop]


def fresh_model(cfg: RunConfig, data: ImageData) -> nn.Module:
    """The run's initial global model (seeded), or the pretrained one."""
    return build_model(cfg.model, data.shape, data.num_classes, conditional=cfg.conditional,
                       pretrained=cfg.pretrained, seed=cfg.seed)


def build_workspace(cfg: RunConfig, train: ImageData, parts: Mapping[int, np.ndarray],
                    forget: Mapping[int, np.ndarray]) -> Workspace:
    """Model, task and device around the given data."""
    # Each simulated client gets client-cpus cores: use that many threads, not
    # all of the machine's (two 2-thread actors on 2 cores thrash).
    torch.set_num_threads(cfg.client_cpus)
    device = pick_device(cfg.device)
    model = fresh_model(cfg, train).to(device)
    return Workspace(cfg, train, parts, forget, model,
                     make_task(cfg.model, cfg.timesteps, cfg.beta_schedule), device)


@functools.lru_cache(maxsize=2)
def workspace(cfg: RunConfig) -> Workspace:
    """Every simulated client's view of the run's dataset (partitioned)."""
    train = dataset(cfg, "train")
    kept, forgotten = split_request(cfg, train.labels)
    return build_workspace(cfg, train, kept, forgotten)
