"""What a process needs to train or evaluate, built once and reused.

Ray reuses worker processes across many simulated clients, so the dataset,
the partition and the model object are built on first use per process and
config, then shared by every client the worker plays (only weights change
between messages). The partition is a pure function of (labels, scheme, seed),
so every process computes the same index sets.
"""

from __future__ import annotations

import functools
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
    parts: list[np.ndarray]  # what each client trains on (an unlearning request's data left out)
    forget: list[np.ndarray]  # what a request asks each client to forget (empty without a request)
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
    parts = partition(labels, cfg.num_clients, cfg.partition, seed=cfg.seed, alpha=cfg.partition_alpha,
                      classes_per_client=cfg.partition_classes, maverick_class=cfg.maverick_class,
                      source=f"the '{cfg.dataset}' train split")
    gone = parse_ids(cfg.forget_clients, "forget-clients") or set()
    kept, forgotten = [], []
    for i, p in enumerate(parts):
        drop = np.full(len(p), i in gone) | (labels[p] == cfg.forget_class)
        kept.append(p[~drop])
        forgotten.append(p[drop])
    return kept, forgotten


def fresh_model(cfg: RunConfig, data: ImageData) -> nn.Module:
    """The run's initial global model (seeded), or the pretrained one."""
    return build_model(cfg.model, data.shape, data.num_classes, conditional=cfg.conditional,
                       pretrained=cfg.pretrained, seed=cfg.seed)


@functools.lru_cache(maxsize=2)
def workspace(cfg: RunConfig) -> Workspace:
    # Each simulated client gets client-cpus cores: use that many threads, not
    # all of the machine's (two 2-thread actors on 2 cores thrash).
    torch.set_num_threads(cfg.client_cpus)
    train = dataset(cfg, "train")
    device = pick_device(cfg.device)
    model = fresh_model(cfg, train).to(device)
    kept, forgotten = split_request(cfg, train.labels)
    return Workspace(cfg, train, kept, forgotten, model,
                     make_task(cfg.model, cfg.timesteps, cfg.beta_schedule), device)
