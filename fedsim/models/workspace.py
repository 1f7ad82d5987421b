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

from fedsim.config import RunConfig
from fedsim.data.clients import dataset, split_request, as_held
from fedsim.data.datasets import ImageData
from fedsim.data.partition import label_histograms
from fedsim.models.diffusion import student_schedule
from fedsim.models.networks import ModelError, build_model
from fedsim.models.train import Task, run_task


def pick_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


@dataclass
class Workspace:
    cfg: RunConfig
    train: ImageData
    # client id -> indices into train; a list in simulation (ids 0..n-1), a one-entry dict on a
    # SuperNode with its own data (fedsim/app/node_data.py)
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


def fresh_model(cfg: RunConfig, data: ImageData) -> nn.Module:
    """The run's initial global model (seeded), or the pretrained one; an SFDDM student only with
    the schedule it was distilled for."""
    if cfg.pretrained and (student := student_schedule(cfg.pretrained)) is not None:
        mine = (cfg.timesteps, cfg.schedule_stride, cfg.beta_schedule)
        if mine != (student.timesteps, student.stride, student.beta_schedule):
            raise ModelError(
                f"pretrained {cfg.pretrained} is an SFDDM student of {student.timesteps} steps: set timesteps = "
                f"{student.timesteps}, schedule-stride = {student.stride}, beta-schedule = '{student.beta_schedule}' "
                f"(the run has {mine[0]}, {mine[1]}, '{mine[2]}')")
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
                     run_task(cfg), device)


@functools.lru_cache(maxsize=2)
def workspace(cfg: RunConfig) -> Workspace:
    """Every simulated client's view of the run's dataset (partitioned, a backdoor applied)."""
    train = dataset(cfg, "train")
    kept, forgotten = split_request(cfg, train.labels)
    return build_workspace(cfg, as_held(cfg, train), kept, forgotten)
